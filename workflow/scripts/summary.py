"""Snakemake script: the run's summary.json."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
table = techniques.get(snakemake.params.technique).frame_table(list(snakemake.input.table))
steps.run_summary(snakemake.config, int(snakemake.wildcards.run), snakemake.params.technique,
                  snakemake.input.raw, snakemake.params.products, table,
                  snakemake.params.benchmark_dir, snakemake.output[0], inputs=snakemake.input.table,
                  kept_summary_file=next((p for p in snakemake.input.products if p.endswith("kept_summary.json")), None),
                  truth_file=snakemake.input.get("truth"))
