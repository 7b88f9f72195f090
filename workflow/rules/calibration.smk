# Calibration: dark characterisation per module, then RAW -> CORR per (run, module, sequence).

def dark_inputs(wildcards):
    m = int(wildcards.module)
    return [raw_file(r, m, s) for r in DARK_RUNS for s in sequences(r)] + \
           [da_file(r, s) for r in DARK_RUNS for s in sequences(r)]


rule dark:
    input:
        files=dark_inputs,
        gain=config["calibration"]["gain_constants"],
    output: os.path.join(RESULTS, "calibration", "constants", "AGIPD{module}.h5")
    params: dark_dirs=[raw_dir(r) for r in DARK_RUNS]
    log: os.path.join(RESULTS, "logs", "dark", "AGIPD{module}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "dark", "AGIPD{module}.tsv")
    resources: mem_mb=3000, runtime=30
    script: "../scripts/dark.py"


if not USE_PROC:
    rule correct:
        input:
            raw=lambda w: raw_file(w.run, w.module, w.seq),
            constants=os.path.join(RESULTS, "calibration", "constants", "AGIPD{module}.h5"),
        output: os.path.join(RESULTS, "proc", "r{run}", "CORR-R{run}-AGIPD{module}-S{seq}.h5")
        log: os.path.join(RESULTS, "logs", "r{run}", "correct", "AGIPD{module}-S{seq}.log")
        benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "correct", "AGIPD{module}-S{seq}.tsv")
        group: "chunk"
        resources: mem_mb=2000, runtime=30
        threads: 2
        script: "../scripts/correct.py"
