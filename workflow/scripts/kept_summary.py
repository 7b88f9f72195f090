"""Snakemake script: the run's kept-frames summary."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.kept_summary(snakemake.config, int(snakemake.wildcards.run), snakemake.params.technique,
                   list(snakemake.input.kept), list(snakemake.input.raw), snakemake.input.aggregate,
                   snakemake.output[0])
