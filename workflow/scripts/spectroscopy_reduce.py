"""Snakemake script: per-frame spectra of one sequence."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.spectroscopy_reduce(snakemake.config, int(snakemake.wildcards.run), int(snakemake.wildcards.seq),
                               snakemake.input.corr, snakemake.input.train, snakemake.input.curvature,
                               snakemake.output.partial, snakemake.output.frames)
