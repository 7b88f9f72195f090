# Aggregation per run: merge the mergeable partials, then the run summary.

rule aggregate:
    input:
        partials=lambda w: expand(os.path.join(RESULTS, "r{run}", "partials", "S{seq}.h5"),
                                  run=w.run, seq=sequences(w.run)),
        annotation=lambda w: annotation_files(w.run),
        peaks=lambda w: technique_products(w.run).get("peak_tables", []),
    output: os.path.join(RESULTS, "r{run}", "aggregate", "run.h5")
    log: os.path.join(RESULTS, "logs", "r{run}", "aggregate.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "aggregate.tsv")
    resources: mem_mb=4000, runtime=20
    conda: CONDA_ENV
    script: "../scripts/aggregate.py"


rule summary:
    input:
        raw=lambda w: [raw_file(w.run, m, s) for s in sequences(w.run) for m in MODULES]
                      + [da_file(w.run, s) for s in sequences(w.run)],
        aggregate=os.path.join(RESULTS, "r{run}", "aggregate", "run.h5"),
        annotation=lambda w: annotation_files(w.run),
        products=lambda w: [f for files in technique_products(w.run).values() for f in files],
    output: os.path.join(RESULTS, "r{run}", "summary.json")
    params:
        technique=lambda w: technique(w.run),
        products=lambda w: technique_products(w.run),
        benchmark_dir=lambda w: os.path.join(RESULTS, "benchmarks", f"r{w.run}"),
    log: os.path.join(RESULTS, "logs", "r{run}", "summary.log")
    resources: mem_mb=500, runtime=5
    conda: CONDA_ENV
    script: "../scripts/summary.py"
