# XPCS (xfel_reduce.techniques.xpcs): correlation sums in each sequence's one pass,
# g2 / fits / D per run.

use rule reduce as xpcs_reduce with:
    output: **reduce_outputs("xpcs")
    wildcard_constraints:
        run=runs_pattern(lambda r: technique(r) == "xpcs"),


rule xpcs_run:
    input: unpack(gather_inputs("xpcs"))
    output: **gather_outputs("xpcs")
    params: technique="xpcs"
    log: os.path.join(RESULTS, "logs", "r{run}", "xpcs_run.log")
    benchmark: os.path.join(RESULTS, "benchmarks", "r{run}", "xpcs_run.tsv")
    resources: mem_mb=scaled(2000), runtime=scaled(10)
    priority: PRIORITY_TECHNIQUE
    conda: CONDA_ENV
    script: "../scripts/gather.py"
