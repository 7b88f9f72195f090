"""Snakemake script: annotate one sequence (frame table + image partials)."""
import numba

from xfel_reduce import steps

numba.set_num_threads(max(1, snakemake.threads))
steps.setup_logging(snakemake.log[0])
steps.annotate_chunk(snakemake.config, snakemake.input.corr, snakemake.input.da, snakemake.output[0])
