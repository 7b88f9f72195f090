# Annotation: per-sequence pass (frame table + image partials), run-wide hit
# thresholds, then one EuXFEL-layout REDU file per sequence.

rule annotate_chunk:
    input:
        corr=lambda w: [corr_file(w.run, m, w.seq) for m in MODULES],
        train=lambda w: train_files(w.run),
    output: PARTIAL_FILE
    params: raw_dir=lambda w: raw_dir(w.run)
    log: os.path.join(RESULTS, "logs", "r{run}", "annotate", "S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "annotate", "S{seq}.tsv")
    group: "chunk"
    resources: mem_mb=scaled(3000), runtime=scaled(30)
    threads: 1
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/annotate_chunk.py"


rule hit_thresholds:
    input: lambda w: expand(PARTIAL_FILE, run=w.run, seq=sequences(w.run))
    output: HIT_THRESHOLDS_FILE
    log: os.path.join(RESULTS, "logs", "r{run}", "hit_thresholds.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "hit_thresholds.tsv")
    resources: mem_mb=scaled(1000), runtime=scaled(10)
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/hit_thresholds.py"


rule annotation:
    input:
        partial=PARTIAL_FILE,
        thresholds=HIT_THRESHOLDS_FILE,
    output: ANNOTATION_FILE
    log: os.path.join(RESULTS, "logs", "r{run}", "annotation", "S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "annotation", "S{seq}.tsv")
    resources: mem_mb=scaled(1000), runtime=scaled(10)
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/annotation.py"
