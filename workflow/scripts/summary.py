"""Snakemake script: the run's summary.json."""
from xfel_reduce import steps

steps.setup_logging(snakemake.log[0])
steps.run_summary(snakemake.config, int(snakemake.wildcards.run), snakemake.params.technique,
                  snakemake.input.raw, {"annotation": list(snakemake.input.annotation),
                                        "aggregate": [snakemake.input.aggregate],
                                        **snakemake.params.products},
                  snakemake.input.aggregate, snakemake.params.benchmark_dir, snakemake.output[0])
