# Aggregation per run: merge the mergeable partials, then the run summary.

def annotation_files(run):
    return expand(os.path.join(RESULTS, "r{run}", "annotation", "REDU-R{run}-ANNOT-S{seq}.h5"),
                  run=run, seq=sequences(run))


rule aggregate:
    input:
        partials=lambda w: expand(os.path.join(RESULTS, "r{run}", "partials", "S{seq}.h5"),
                                  run=w.run, seq=sequences(w.run)),
        annotation=lambda w: annotation_files(w.run),
    output: os.path.join(RESULTS, "r{run}", "aggregate", "run.h5")
    log: os.path.join(RESULTS, "logs", "r{run}", "aggregate.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "aggregate.tsv")
    resources: mem_mb=4000, runtime=20
    script: "../scripts/aggregate.py"


rule summary:
    input:
        raw=lambda w: [raw_file(w.run, m, s) for s in sequences(w.run) for m in MODULES]
                      + [da_file(w.run, s) for s in sequences(w.run)],
        aggregate=os.path.join(RESULTS, "r{run}", "aggregate", "run.h5"),
        annotation=lambda w: annotation_files(w.run),
    output: os.path.join(RESULTS, "r{run}", "summary.json")
    params:
        technique=lambda w: technique(w.run),
        benchmarks=lambda w: sorted(glob.glob(os.path.join(RESULTS, "benchmarks", f"r{w.run}", "**", "*.tsv"), recursive=True)),
    log: os.path.join(RESULTS, "logs", "r{run}", "summary.log")
    resources: mem_mb=500, runtime=5
    script: "../scripts/summary.py"
