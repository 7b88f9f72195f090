"""Snakemake script: JUNGFRAU dark characterisation."""
from xfel_reduce import steps
from xfel_reduce.techniques import spectroscopy

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
spectroscopy.jungfrau_dark(snakemake.config, snakemake.params.dark_dirs, snakemake.output[0], snakemake.input.files)
