"""Snakemake script: RAW -> CORR for one JUNGFRAU sequence."""
import numba

from xfel_reduce import steps, techniques

numba.set_num_threads(max(1, snakemake.threads))
steps.setup_logging(snakemake.log[0])
techniques.jungfrau_correct(snakemake.config, snakemake.input.raw, snakemake.input.constants, snakemake.output[0])
