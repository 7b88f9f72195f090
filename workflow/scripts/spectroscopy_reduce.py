"""Snakemake script: per-frame spectra of one sequence."""
from xfel_reduce import steps
from xfel_reduce.techniques import spectroscopy

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
spectroscopy.spectroscopy_reduce(snakemake.config, int(snakemake.wildcards.run), int(snakemake.wildcards.seq),
                                 snakemake.input.frames, snakemake.input.train, snakemake.input.curvature,
                                 snakemake.output.partial, snakemake.output.frames,
                                 constants=snakemake.input.get("constants"))
