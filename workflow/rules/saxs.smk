# SAXS/WAXS (xfel_reduce.techniques.saxs): per-frame I(q) in each sequence's one pass,
# NXcanSAS run averages with fits.

use rule reduce as saxs_reduce with:
    output: **reduce_outputs("saxs")
    wildcard_constraints:
        run=runs_pattern(lambda r: technique(r) == "saxs"),


rule saxs_run:
    input: unpack(gather_inputs("saxs"))
    output: **gather_outputs("saxs")
    params: technique="saxs"
    log: os.path.join(RESULTS, "logs", "r{run}", "saxs_run.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "saxs_run.tsv")
    resources: mem_mb=scaled(2000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/gather.py"
