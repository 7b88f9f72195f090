"""Snakemake script: one sequence's kept frames."""
import os

from xfel_reduce import steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
steps.kept_frames(snakemake.config, int(snakemake.wildcards.run), int(snakemake.wildcards.seq),
                  snakemake.params.technique, list(snakemake.input.frames), snakemake.input.aggregate,
                  os.path.dirname(snakemake.output.table), constants=list(snakemake.input.get("constants", [])))
