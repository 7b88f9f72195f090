"""Snakemake script: the run's summary.json."""
from xfel_reduce import steps, techniques

steps.setup_logging(snakemake.log[0], threads=snakemake.threads)
if snakemake.params.technique == "spectroscopy":
    table = techniques.spectroscopy_frame_table(snakemake.input.table)
else:
    table = steps.load_run_table(snakemake.input.table[0])
steps.run_summary(snakemake.config, int(snakemake.wildcards.run), snakemake.params.technique,
                  snakemake.input.raw, snakemake.params.products, table,
                  snakemake.params.benchmark_dir, snakemake.output[0], inputs=snakemake.input.table,
                  kept_summary_file=next((p for p in snakemake.input.products if p.endswith("kept_summary.json")), None),
                  truth_file=snakemake.input.get("truth"))
