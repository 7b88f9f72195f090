"""Snakemake script: write one sequence's annotation REDU file."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.write_annotation(snakemake.config, int(snakemake.wildcards.run), int(snakemake.wildcards.seq),
                       snakemake.input.partial, snakemake.input.thresholds, snakemake.output[0])
