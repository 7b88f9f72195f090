"""Snakemake script: merge a run's partials."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.aggregate_run(snakemake.config, int(snakemake.wildcards.run), snakemake.input.partials,
                    snakemake.input.annotation, snakemake.output[0],
                    hit_tables=snakemake.input.hit_tables, technique=snakemake.params.technique)
