"""Snakemake script: a technique's products per bin (inputs named as its sequence_files)."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.binned_run(snakemake.config, int(snakemake.wildcards.run), snakemake.params.technique,
                 snakemake.input.binning, steps.named_inputs(snakemake.input, exclude=["binning"]),
                 snakemake.output.binned)
