# Spectroscopy (XES on a JUNGFRAU module, xfel_reduce.techniques.spectroscopy): darks ->
# constants, then two passes over each RAW sequence, corrected in memory: ROI image
# (curvature fit per run) and per-frame spectra.  CORR files only with
# calibration.write_corr: all (rule jungfrau_correct).


def jf_frame_inputs(w):
    return {"frames": jf_raw_file(w.run, w.seq),
            "constants": os.path.join(RESULTS, "calibration", "constants", f"JNGFR{JF_MODULE:02d}.h5")}

rule jungfrau_dark:
    input:
        files=lambda w: [jf_raw_file(r, s) for r in JF_DARK_RUNS for s in sequences(r)] + [f for r in JF_DARK_RUNS for f in train_files(r)],
        gain=JF_CFG.get("gain_constants", "jungfrau_gain_constants.h5"),
    output: os.path.join(RESULTS, "calibration", "constants", f"JNGFR{JF_MODULE:02d}.h5")
    params: dark_dirs=[raw_dir(r) for r in JF_DARK_RUNS]
    log: os.path.join(RESULTS, "logs", "dark", f"JNGFR{JF_MODULE:02d}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "dark", f"JNGFR{JF_MODULE:02d}.tsv")
    resources: mem_mb=scaled(3000), runtime=scaled(30)
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/jungfrau_dark.py"


rule jungfrau_correct:
    input:
        raw=lambda w: jf_raw_file(w.run, w.seq),
        constants=os.path.join(RESULTS, "calibration", "constants", f"JNGFR{JF_MODULE:02d}.h5"),
    output: os.path.join(RESULTS, "proc", "r{run}", f"CORR-R{{run}}-JNGFR{JF_MODULE:02d}-S{{seq}}.h5")
    log: os.path.join(RESULTS, "logs", "r{run}", "correct", "JNGFR-S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "correct", "JNGFR-S{seq}.tsv")
    group: "chunk"
    threads: 1
    resources: mem_mb=scaled(2000), runtime=scaled(30)
    priority: PRIORITY_SPINE
    conda: CONDA_ENV
    script: "../scripts/jungfrau_correct.py"


rule spectroscopy_image:
    input:
        unpack(jf_frame_inputs),
        train=lambda w: train_files(w.run),
    output: os.path.join(RESULTS, "r{run}", "spectroscopy", "partials", "image-S{seq}.h5")
    log: os.path.join(RESULTS, "logs", "r{run}", "spectroscopy", "image-S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "spectroscopy", "image-S{seq}.tsv")
    # Not "technique_chunk": the per-run curvature fit sits between this pass and
    # spectroscopy_reduce, so one group holding both would depend on itself.
    group: "technique_prepass"
    resources: mem_mb=scaled(3000), runtime=scaled(30)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/spectroscopy_image.py"


rule spectroscopy_curvature:
    input: lambda w: expand(os.path.join(RESULTS, "r{run}", "spectroscopy", "partials", "image-S{seq}.h5"), run=w.run, seq=sequences(w.run))
    output: os.path.join(RESULTS, "r{run}", "spectroscopy", "curvature.h5")
    log: os.path.join(RESULTS, "logs", "r{run}", "spectroscopy_curvature.log")
    resources: mem_mb=scaled(2000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/spectroscopy_curvature.py"


rule spectroscopy_reduce:
    input:
        unpack(jf_frame_inputs),
        train=lambda w: train_files(w.run),
        curvature=os.path.join(RESULTS, "r{run}", "spectroscopy", "curvature.h5"),
    output:
        partial=os.path.join(RESULTS, "r{run}", "spectroscopy", "partials", "S{seq}.h5"),
        frames=os.path.join(RESULTS, "r{run}", "spectroscopy", "REDU-R{run}-SPEC-S{seq}.h5"),
    log: os.path.join(RESULTS, "logs", "r{run}", "spectroscopy", "S{seq}.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "spectroscopy", "S{seq}.tsv")
    group: "technique_chunk"
    threads: 1
    resources: mem_mb=scaled(3000), runtime=scaled(30)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/spectroscopy_reduce.py"


rule spectroscopy_run:
    input:
        partials=lambda w: expand(os.path.join(RESULTS, "r{run}", "spectroscopy", "partials", "S{seq}.h5"), run=w.run, seq=sequences(w.run)),
        curvature=os.path.join(RESULTS, "r{run}", "spectroscopy", "curvature.h5"),
    output:
        spectra=os.path.join(RESULTS, "r{run}", "spectroscopy", "spectra.h5"),
        summary=os.path.join(RESULTS, "r{run}", "spectroscopy", "spectra_summary.json"),
    log: os.path.join(RESULTS, "logs", "r{run}", "spectroscopy_run.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "spectroscopy_run.tsv")
    resources: mem_mb=scaled(2000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/spectroscopy_run.py"
