"""Snakemake script: run averages, on/off difference and line fits."""
from xfel_reduce import steps
from xfel_reduce.techniques import spectroscopy

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
spectroscopy.spectroscopy_run(snakemake.config, int(snakemake.wildcards.run), snakemake.input.partials,
                            snakemake.input.curvature, snakemake.output.spectra, snakemake.output.summary)
