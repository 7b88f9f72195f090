# Aggregation per run: merge the mergeable partials, then the run summary.

rule aggregate:
    input:
        partials=lambda w: expand(PARTIAL_FILE, run=w.run, seq=sequences(w.run)),
        annotation=lambda w: annotation_files(w.run),
        # the technique's per-sequence tables that decide the run's hits (SFX peaks)
        hit_tables=lambda w: (plugin(w.run).sequence_paths(RESULTS, int(w.run), sequences(w.run))[plugin(w.run).hit_table]
                              if plugin(w.run).hit_table else []),
    output: AGGREGATE_FILE
    params: technique=lambda w: technique(w.run)
    log: os.path.join(RESULTS, "logs", "r{run}", "aggregate.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "aggregate.tsv")
    resources: mem_mb=scaled(4000), runtime=scaled(20)
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/aggregate.py"


def summary_inputs(w):
    run = int(w.run)
    products = technique_products(run)
    out = {"raw": run_raw_files(run), "table": run_table_files(run),
           "products": [f for files in products.values() for f in files]}
    if truth_file(run) and plugin(run).hit_finding:
        out["truth"] = truth_file(run)
    return out


rule summary:
    input: unpack(summary_inputs)
    output: os.path.join(RESULTS, "r{run}", "summary.json")
    params:
        technique=lambda w: technique(w.run),
        products=lambda w: technique_products(w.run),
        benchmark_dir=lambda w: os.path.join(RESULTS, "benchmarks", f"r{w.run}"),
    log: os.path.join(RESULTS, "logs", "r{run}", "summary.log")
    resources: mem_mb=scaled(500), runtime=scaled(5)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/summary.py"
