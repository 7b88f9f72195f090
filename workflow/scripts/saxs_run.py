"""Snakemake script: SAXS run averages, fits and NXcanSAS file."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.saxs_run(snakemake.config, int(snakemake.wildcards.run), list(snakemake.input),
                    snakemake.output.nxcansas, snakemake.output.summary)
