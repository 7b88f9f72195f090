"""Snakemake script: ROI image moments of one sequence (curvature fit input)."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
techniques.spectroscopy_image(snakemake.config, int(snakemake.wildcards.run), snakemake.input.corr,
                              snakemake.input.train, snakemake.output[0])
