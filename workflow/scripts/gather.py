"""Snakemake script: a technique's run-level gather (inputs and outputs named as the
technique's sequence_files / run_files)."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.get(snakemake.params.technique).gather(
    snakemake.config, int(snakemake.wildcards.run),
    steps.named_inputs(snakemake.input),
    dict(snakemake.output.items()))
