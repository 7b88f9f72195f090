"""Snakemake script: line curvature of a run (fitted or from the config)."""
from xfel_reduce import steps
from xfel_reduce.techniques import spectroscopy

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
spectroscopy.spectroscopy_curvature(snakemake.config, int(snakemake.wildcards.run), list(snakemake.input),
                                  snakemake.output[0])
