"""Snakemake script: per-frame spectra of one sequence."""
import numba

from xfel_reduce import steps, techniques

numba.set_num_threads(max(1, snakemake.threads))
steps.setup_logging(snakemake.log[0])
techniques.spectroscopy_reduce(snakemake.config, int(snakemake.wildcards.run), int(snakemake.wildcards.seq),
                               snakemake.input.corr, snakemake.input.da, snakemake.input.curvature,
                               snakemake.output.partial, snakemake.output.frames)
