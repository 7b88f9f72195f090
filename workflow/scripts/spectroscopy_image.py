"""Snakemake script: ROI image moments of one sequence (curvature fit input)."""
from xfel_reduce import steps
from xfel_reduce.techniques import spectroscopy

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
spectroscopy.spectroscopy_image(snakemake.config, int(snakemake.wildcards.run), snakemake.input.frames,
                                snakemake.input.train, snakemake.output[0],
                                constants=snakemake.input.get("constants"))
