"""Snakemake script: simulate one run of the demo beamtime."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.simulate_run(snakemake.config, snakemake.params.run)
