"""Snakemake script: SFX peak finding for one sequence."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.sfx_chunk(snakemake.config, int(snakemake.wildcards.run), snakemake.input.corr,
                     snakemake.input.annotation, snakemake.output.cxi, snakemake.output.table)
