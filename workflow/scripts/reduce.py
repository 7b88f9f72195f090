"""Snakemake script: the one pass over a sequence (annotation + the run's technique)."""
from xfel_reduce import onepass, steps

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
named = {k: v for k, v in snakemake.output.items() if k not in ("partial_annotation", "corr")}
onepass.reduce_sequence(snakemake.config, int(snakemake.wildcards.run), int(snakemake.wildcards.seq),
                        list(snakemake.input.frames), list(snakemake.input.train),
                        snakemake.output.partial_annotation, constants=list(snakemake.input.get("constants", [])),
                        technique=snakemake.params.technique, outputs=named,
                        corr_out=list(snakemake.output.get("corr", [])),
                        static_mask_inputs=list(snakemake.input.static_mask), raw_dir=snakemake.params.raw_dir)
