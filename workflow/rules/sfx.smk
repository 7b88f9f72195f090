# SFX (xfel_reduce.techniques.sfx): peak finding in each sequence's one pass (hit-only
# CXI + peak table), CrystFEL files and hit statistics per run.

use rule reduce as sfx_reduce with:
    output: **reduce_outputs("sfx")
    wildcard_constraints:
        run=runs_pattern(lambda r: technique(r) == "sfx"),


rule sfx_run:
    input: unpack(gather_inputs("sfx"))
    output: **gather_outputs("sfx")
    params: technique="sfx"
    log: os.path.join(RESULTS, "logs", "r{run}", "sfx_run.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "sfx_run.tsv")
    resources: mem_mb=scaled(1000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/gather.py"
