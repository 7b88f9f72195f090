"""Snakemake glue of rule ``report_index``: write results/index.html."""
import time

from xfel_reduce.report_index import build_index

smk = snakemake  # noqa: F821 - injected by Snakemake
t0 = time.perf_counter()
out = build_index(smk.params.results, smk.output[0], runs=smk.params.runs, title=smk.params.title)
with open(smk.log[0], "a") as fh:
    fh.write(f"wrote {out} for {len(smk.params.runs)} runs in {time.perf_counter() - t0:.2f} s\n")
