"""Snakemake script: azimuthal integration of one sequence."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.saxs_chunk(snakemake.config, int(snakemake.wildcards.run), snakemake.input.corr,
                      snakemake.input.annotation, snakemake.input.reference,
                      snakemake.output.frames, snakemake.output.partial)
