# Calibration: dark characterisation per module, then RAW -> CORR per (run, module, sequence).

def dark_inputs(wildcards):
    m = int(wildcards.module)
    return [raw_file(r, m, s) for r in DARK_RUNS for s in sequences(r)] + \
           [f for r in DARK_RUNS for f in train_files(r)]


rule dark:
    input:
        files=dark_inputs,
        gain=config["calibration"].get("gain_constants", "agipd_gain_constants.h5"),
    output: os.path.join(RESULTS, "calibration", "constants", "AGIPD{module}.h5")
    params: dark_dirs=[raw_dir(r) for r in DARK_RUNS]
    log: os.path.join(RESULTS, "logs", "dark", "AGIPD{module}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "dark", "AGIPD{module}.tsv")
    resources: mem_mb=scaled(3000), runtime=scaled(30)
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/dark.py"


if not USE_PROC:
    # One job per (run, sequence) corrects all modules: per-module jobs would spend
    # more time starting Python than correcting on a small run.
    rule correct:
        input:
            raw=lambda w: [raw_file(w.run, m, w.seq) for m in MODULES],
            constants=expand(os.path.join(RESULTS, "calibration", "constants", "AGIPD{module:02d}.h5"), module=MODULES),
        output:
            [os.path.join(RESULTS, "proc", "r{run}", f"CORR-R{{run}}-AGIPD{m:02d}-S{{seq}}.h5") for m in MODULES]
        params: modules=MODULES
        log: os.path.join(RESULTS, "logs", "r{run}", "correct", "S{seq}.log")
        benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "correct", "S{seq}.tsv")
        group: "chunk"
        resources: mem_mb=scaled(2000), runtime=scaled(30)
        threads: 1
        priority: PRIORITY_SPINE
        conda: CONDA_ENV
        script: "../scripts/correct.py"
