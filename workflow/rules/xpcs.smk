# XPCS: correlation sums per sequence, g2 / fits / D per run.

rule xpcs_chunk:
    input:
        corr=lambda w: [corr_file(w.run, m, w.seq) for m in MODULES],
        annotation=ANNOTATION_FILE,
        reference=run_reference_corr,
    output: os.path.join(RESULTS, "r{run}", "xpcs", "partials", "S{seq}.h5")
    log: os.path.join(RESULTS, "logs", "r{run}", "xpcs", "S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "xpcs", "S{seq}.tsv")
    group: "technique_chunk"
    threads: 1
    resources: mem_mb=scaled(4000), runtime=scaled(30)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/xpcs_chunk.py"


rule xpcs_run:
    input:
        partials=lambda w: expand(os.path.join(RESULTS, "r{run}", "xpcs", "partials", "S{seq}.h5"), run=w.run, seq=sequences(w.run)),
        reference=run_reference_corr,
        train=lambda w: train_files(w.run),
    output: os.path.join(RESULTS, "r{run}", "xpcs", "xpcs.h5")
    log: os.path.join(RESULTS, "logs", "r{run}", "xpcs_run.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "xpcs_run.tsv")
    resources: mem_mb=scaled(2000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/xpcs_run.py"
