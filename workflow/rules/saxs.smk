# SAXS/WAXS: azimuthal integration per sequence, NXcanSAS run averages with fits.

rule saxs_chunk:
    input:
        corr=lambda w: [corr_file(w.run, m, w.seq) for m in MODULES],
        annotation=ANNOTATION_FILE,
        reference=run_reference_corr,
    output:
        frames=os.path.join(RESULTS, "r{run}", "saxs", "REDU-R{run}-SAXS-S{seq}.h5"),
        partial=os.path.join(RESULTS, "r{run}", "saxs", "partials", "S{seq}.h5"),
    log: os.path.join(RESULTS, "logs", "r{run}", "saxs", "S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "saxs", "S{seq}.tsv")
    group: "technique_chunk"
    threads: 1
    resources: mem_mb=scaled(4000), runtime=scaled(30)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/saxs_chunk.py"


rule saxs_run:
    input:
        lambda w: expand(os.path.join(RESULTS, "r{run}", "saxs", "partials", "S{seq}.h5"), run=w.run, seq=sequences(w.run)),
    output:
        nxcansas=os.path.join(RESULTS, "r{run}", "saxs", "saxs_nxcansas.h5"),
        summary=os.path.join(RESULTS, "r{run}", "saxs", "saxs_summary.json"),
    log: os.path.join(RESULTS, "logs", "r{run}", "saxs_run.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "saxs_run.tsv")
    resources: mem_mb=scaled(2000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/saxs_run.py"
