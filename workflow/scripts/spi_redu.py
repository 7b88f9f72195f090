"""Snakemake script: one sequence's SPI hit-finder REDU file."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.spi_redu(snakemake.config, int(snakemake.wildcards.run), int(snakemake.wildcards.seq),
               snakemake.input.frames, snakemake.input.aggregate, snakemake.input.thresholds,
               snakemake.output[0])
