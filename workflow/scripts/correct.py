"""Snakemake script: RAW -> CORR for one module sequence file."""
import numba

from xfel_reduce import steps

numba.set_num_threads(max(1, snakemake.threads))
steps.setup_logging(snakemake.log[0])
steps.correct_file(snakemake.config, int(snakemake.wildcards.module), snakemake.input.raw,
                   snakemake.input.constants, snakemake.output[0])
