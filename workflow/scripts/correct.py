"""Snakemake script: RAW -> CORR for all modules of one sequence."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
for module, raw, constants, out in zip(snakemake.params.modules, snakemake.input.raw,
                                       snakemake.input.constants, snakemake.output):
    steps.correct_file(snakemake.config, int(module), raw, constants, out)
