"""Snakemake script: CrystFEL event list, geometry and hit statistics of a run."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.sfx_run(snakemake.config, int(snakemake.wildcards.run), snakemake.input.cxi, snakemake.input.tables,
                   snakemake.output.lst, snakemake.output.geom, snakemake.output.stats)
