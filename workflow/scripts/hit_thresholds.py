"""Snakemake script: run-wide hit thresholds."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.hit_thresholds(snakemake.config, list(snakemake.input), snakemake.output[0])
