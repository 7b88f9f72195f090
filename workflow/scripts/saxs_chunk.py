"""Snakemake script: azimuthal integration of one sequence."""
import numba

from xfel_reduce import steps, techniques

numba.set_num_threads(max(1, snakemake.threads))
steps.setup_logging(snakemake.log[0])
techniques.saxs_chunk(snakemake.config, int(snakemake.wildcards.run), snakemake.input.corr,
                      snakemake.input.annotation, snakemake.input.reference,
                      snakemake.output.frames, snakemake.output.partial)
