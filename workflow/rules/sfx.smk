# SFX: peak finding per sequence (hit-only CXI + peak table), CrystFEL files per run.

rule sfx_chunk:
    input:
        corr=lambda w: [corr_file(w.run, m, w.seq) for m in MODULES],
        annotation=ANNOTATION_FILE,
    output:
        cxi=os.path.join(RESULTS, "r{run}", "sfx", "hits-S{seq}.cxi"),
        table=os.path.join(RESULTS, "r{run}", "sfx", "peaks", "REDU-R{run}-SFX-S{seq}.h5"),
    log: os.path.join(RESULTS, "logs", "r{run}", "sfx", "S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "sfx", "S{seq}.tsv")
    group: "technique_chunk"
    threads: 1
    resources: mem_mb=scaled(3000), runtime=scaled(30)
    # the run's aggregate merges the peak-count hit flags, so this is on the spine
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/sfx_chunk.py"


rule sfx_run:
    input:
        cxi=lambda w: expand(os.path.join(RESULTS, "r{run}", "sfx", "hits-S{seq}.cxi"), run=w.run, seq=sequences(w.run)),
        tables=lambda w: expand(os.path.join(RESULTS, "r{run}", "sfx", "peaks", "REDU-R{run}-SFX-S{seq}.h5"), run=w.run, seq=sequences(w.run)),
    output:
        lst=os.path.join(RESULTS, "r{run}", "sfx", "hits.lst"),
        geom=os.path.join(RESULTS, "r{run}", "sfx", "agipd.geom"),
        stats=os.path.join(RESULTS, "r{run}", "sfx", "hit_statistics.json"),
    log: os.path.join(RESULTS, "logs", "r{run}", "sfx_run.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "sfx_run.tsv")
    resources: mem_mb=scaled(1000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/sfx_run.py"
