"""Snakemake script: simulated detector truth and facility gain constants."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.simulate_detector(snakemake.config)
