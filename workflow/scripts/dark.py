"""Snakemake script: dark characterisation of one module."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.dark_module(snakemake.config, int(snakemake.wildcards.module), snakemake.params.dark_dirs,
                  snakemake.output[0], inputs=snakemake.input.files)
