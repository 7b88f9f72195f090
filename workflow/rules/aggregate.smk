# Aggregation per run: merge the mergeable partials, then the run summary.

rule aggregate:
    input:
        partials=lambda w: expand(PARTIAL_FILE, run=w.run, seq=sequences(w.run)),
        annotation=lambda w: annotation_files(w.run),
        peaks=lambda w: technique_products(w.run).get("peak_tables", []),
    output: AGGREGATE_FILE
    log: os.path.join(RESULTS, "logs", "r{run}", "aggregate.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "aggregate.tsv")
    resources: mem_mb=scaled(4000), runtime=scaled(20)
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/aggregate.py"


def summary_inputs(w):
    run = int(w.run)
    products = technique_products(run)
    if is_jungfrau_run(run):
        table = expand(os.path.join(RESULTS, "r{run}", "spectroscopy", "partials", "S{seq}.h5"),
                       run=w.run, seq=sequences(run))
    else:
        table = products["aggregate"]
    out = {"raw": run_raw_files(run), "table": table,
           "products": [f for files in products.values() for f in files]}
    if truth_file(run) and technique(run) in ("spi", "sfx"):
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
