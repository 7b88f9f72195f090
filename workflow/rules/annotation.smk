# Annotation: the one pass over each sequence (RAW read once, corrected in memory,
# annotated, and reduced by the run's technique: xfel_reduce.onepass), run-wide hit
# thresholds, then one EuXFEL-layout REDU file per sequence.
#
# `reduce` serves runs whose technique has no per-sequence files of its own (SPI, no
# technique); each technique's rule file adds its outputs with `use rule reduce as
# <technique>_reduce`.

rule reduce:
    input: unpack(reduce_inputs)
    output: **reduce_outputs()
    params:
        raw_dir=lambda w: raw_dir(w.run),
        technique=lambda w: technique(w.run),
    wildcard_constraints:
        run=runs_pattern(lambda r: not is_jungfrau_run(r) and not plugin(r).sequence_files),
    log: os.path.join(RESULTS, "logs", "r{run}", "reduce", "S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "reduce", "S{seq}.tsv")
    group: "chunk"
    # constants of the used cells (2.9 MB per cell and module) + two chunks in flight
    resources: mem_mb=scaled(4000), runtime=scaled(30)
    threads: 1
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/reduce.py"


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
