"""Snakemake script: g2, fits and diffusion coefficient of an XPCS run."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.xpcs_run(snakemake.config, int(snakemake.wildcards.run), snakemake.input.partials,
                    snakemake.input.reference, snakemake.input.train, snakemake.output[0])
