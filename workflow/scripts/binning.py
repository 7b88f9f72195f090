"""Snakemake script: the run's bins (binning.h5)."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.binning_run(snakemake.config, int(snakemake.wildcards.run), list(snakemake.input.table),
                  list(snakemake.input.train), snakemake.output[0], technique=snakemake.params.technique,
                  partials=list(snakemake.input.partials))
