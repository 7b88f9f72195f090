"""Snakemake script: run averages, on/off difference and line fits."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.spectroscopy_run(snakemake.config, int(snakemake.wildcards.run), snakemake.input.partials,
                            snakemake.input.curvature, snakemake.output.spectra, snakemake.output.summary)
