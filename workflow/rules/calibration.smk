# Calibration: dark characterisation per module.  Correction happens in memory in the
# one pass over each sequence (annotation.smk, rule reduce); CORR files only with
# calibration.write_corr: all.

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
