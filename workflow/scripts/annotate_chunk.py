"""Snakemake script: annotate one sequence (frame table + image partials)."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.annotate_chunk(snakemake.config, snakemake.input.corr, snakemake.input.train, snakemake.output[0],
                     raw_dir=snakemake.params.raw_dir)
