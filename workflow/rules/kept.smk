# Kept frames of SPI/SFX runs (xfel_reduce.kept): per sequence, the hits, undecided
# frames and a seeded sample of misses in the CORR layout, and for SPI runs the hit
# finder's REDU file; per run, what was kept against RAW and the missed-hit estimate.
# Everything lands in <results>/r{run}/kept/, which extra_data.RunDirectory opens.

def kept_inputs(w):
    # the second, partial read: only the kept frames are read (and corrected)
    return {**frame_inputs(w.run, w.seq), "aggregate": AGGREGATE_FILE.format(run=w.run)}


rule kept_frames:
    input: unpack(kept_inputs)
    output:
        corr=[os.path.join(RESULTS, "r{run}", "kept", f"CORR-R{{run}}-AGIPD{m:02d}-S{{seq}}.h5") for m in MODULES],
        table=os.path.join(RESULTS, "r{run}", "kept", "REDU-R{run}-KEPT-S{seq}.h5"),
    params: technique=lambda w: technique(w.run)
    log: os.path.join(RESULTS, "logs", "r{run}", "kept", "S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "kept", "S{seq}.tsv")
    # its own group: the kept frames come after the run's aggregate, which comes after
    # every sequence's one pass (group chunk)
    group: "kept"
    threads: 1
    resources: mem_mb=scaled(2000), runtime=scaled(20)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/kept_frames.py"


rule spi_redu:
    input:
        frames=lambda w: frame_inputs(w.run, w.seq)["frames"][0],
        aggregate=AGGREGATE_FILE,
        thresholds=HIT_THRESHOLDS_FILE,
    output: os.path.join(RESULTS, "r{run}", "kept", "CORR-R{run}-REDU00-S{seq}.h5")
    group: "kept"
    log: os.path.join(RESULTS, "logs", "r{run}", "spi_redu", "S{seq}.log")
    resources: mem_mb=scaled(1000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/spi_redu.py"


rule kept_summary:
    input:
        kept=lambda w: kept_files(w.run),
        raw=lambda w: run_raw_files(w.run),
        aggregate=AGGREGATE_FILE,
    output: os.path.join(RESULTS, "r{run}", "kept", "kept_summary.json")
    params: technique=lambda w: technique(w.run)
    log: os.path.join(RESULTS, "logs", "r{run}", "kept_summary.log")
    resources: mem_mb=scaled(1000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/kept_summary.py"
