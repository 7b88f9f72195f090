"""Snakemake script: RAW -> CORR for all modules of one sequence."""
import numba

from xfel_reduce import steps

numba.set_num_threads(max(1, snakemake.threads))
steps.setup_logging(snakemake.log[0])
for module, raw, constants, out in zip(snakemake.params.modules, snakemake.input.raw,
                                       snakemake.input.constants, snakemake.output):
    steps.correct_file(snakemake.config, int(module), raw, constants, out)
