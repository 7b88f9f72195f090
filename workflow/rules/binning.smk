# Time-resolved aggregation (xfel_reduce.binning) of the runs with `bins`: the run's
# bins from its train data (delay line, scan motor, XGM, train ranges) and per-frame
# table, then its technique's products per bin (techniques.<name>.binned_files), made
# from the technique's per-sequence files: per-bin partial sums, so split-invariant.


rule binning:
    input:
        table=lambda w: run_table_files(w.run),
        train=lambda w: train_files(w.run),
        # the one pass's partials hold the images per bin (not for JUNGFRAU runs)
        partials=lambda w: [] if is_jungfrau_run(int(w.run)) else expand(PARTIAL_FILE, run=w.run, seq=sequences(w.run)),
    output: BINNING_FILE
    params: technique=lambda w: technique(w.run)
    wildcard_constraints:
        run=runs_pattern(has_bins),
    log: os.path.join(RESULTS, "logs", "r{run}", "binning.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "binning.tsv")
    resources: mem_mb=scaled(2000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/binning.py"


def binned_inputs(w):
    return {**gather_inputs(technique(w.run))(w), "binning": expand(BINNING_FILE, run=w.run)[0]}


# One rule per technique with binned products (`saxs_binned`, `spectroscopy_binned`):
# the outputs are the plug-in's, the body is shared.
for _name in techniques.names():
    if techniques.get(_name).binned_files:
        rule:
            name: f"{_name}_binned"
            input: unpack(binned_inputs)
            output: **{k: os.path.join(RESULTS, t) for k, t in techniques.get(_name).binned_files.items()}
            params: technique=_name
            wildcard_constraints:
                run=runs_pattern(lambda r, n=_name: has_bins(r) and technique(r) == n),
            log: os.path.join(RESULTS, "logs", "r{run}", f"{_name}_binned.log")
            benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", f"{_name}_binned.tsv")
            resources: mem_mb=scaled(2000), runtime=scaled(10)
            priority: PRIORITY_TECHNIQUE
            conda: CONDA_ENV
            script: "../scripts/binned.py"
