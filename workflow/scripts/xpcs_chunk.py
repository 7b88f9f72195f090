"""Snakemake script: XPCS correlation sums of one sequence."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.xpcs_chunk(snakemake.config, int(snakemake.wildcards.run), snakemake.input.corr,
                      snakemake.input.annotation, snakemake.input.reference, snakemake.output[0])
