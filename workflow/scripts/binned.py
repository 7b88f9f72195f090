"""Snakemake script: a technique's products per bin (inputs named as its sequence_files)."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
inputs = {k: [v] if isinstance(v, str) else list(v) for k, v in snakemake.input.items() if k != "binning"}
steps.binned_run(snakemake.config, int(snakemake.wildcards.run), snakemake.params.technique,
                 snakemake.input.binning, inputs, snakemake.output.binned)
