# Validation reports: one papermill notebook per (run, stage) -> standalone HTML,
# plus results/index.html listing every run.
#
# Needs from common.smk: RESULTS (str), RUNS ({run number: run entry}), run_stages(run) -> list
# of stage names with a template reports/<stage>.ipynb, and stage_inputs(run, stage)
# -> {parameter name: path or list of paths}, the files the stage's notebook reads.
# Extra notebook parameters (acceptance limits, expected hit rate, ...) come from
# config["report"]["params"][<stage>] and, per run, config["report"]["run_params"]
# [<run>][<stage>]; the kernel from config["report"]["kernel"] (default python3), the
# template directory from config["report"]["templates"] (default <Snakefile dir>/reports).

import os

REPORT_CONFIG = config.get("report", {}) or {}
REPORT_TEMPLATES = REPORT_CONFIG.get("templates", os.path.join(workflow.basedir, "reports"))


def report_parameters(run, stage):
    """Notebook parameters of (run, stage) that are not input files."""
    params = dict(stage_defaults(run, stage))
    params.update((REPORT_CONFIG.get("params", {}) or {}).get(stage, {}) or {})
    run_params = (REPORT_CONFIG.get("run_params", {}) or {}).get(run, {}) or {}
    params.update(run_params.get(stage, {}) or {})
    params["run"] = int(run)
    return params


def all_report_files(run=None):
    runs = RUNS if run is None else [run]
    return [f"{RESULTS}/r{r:04d}/reports/{s}.{ext}"
            for r in runs for s in run_stages(r) for ext in ("html", "verdict.json")]


rule report:
    """Execute reports/<stage>.ipynb for one run and publish it as HTML with its verdict."""
    input:
        unpack(lambda wc: stage_inputs(int(wc.run), wc.stage)),
        template=os.path.join(REPORT_TEMPLATES, "{stage}.ipynb"),
    output:
        html=report(
            RESULTS + "/r{run}/reports/{stage}.html",
            category="Run reports",
            subcategory="r{run}",
            labels={"run": "{run}", "stage": "{stage}", "type": "notebook"},
        ),
        figure=report(
            RESULTS + "/r{run}/reports/{stage}.png",
            category="Key plots",
            subcategory="{stage}",
            labels={"run": "{run}", "stage": "{stage}", "type": "figure"},
        ),
        verdict=RESULTS + "/r{run}/reports/{stage}.verdict.json",
    log:
        RESULTS + "/logs/r{run}/report_{stage}.log",
    params:
        parameters=lambda wc: report_parameters(int(wc.run), wc.stage),
        kernel=REPORT_CONFIG.get("kernel", "python3"),
    wildcard_constraints:
        run=r"\d\d\d\d+",
        stage=r"[A-Za-z0-9_]+",
    threads: 1
    resources:
        mem_mb=scaled(4000),
        runtime=scaled(30),
    conda: CONDA_ENV
    script:
        "../scripts/render_report.py"


rule report_index:
    """results/index.html: one row per run with verdicts, links to reports and products."""
    input:
        reports=all_report_files(),
        summaries=[f"{RESULTS}/r{r:04d}/summary.json" for r in RUNS],
    output:
        report(
            RESULTS + "/index.html",
            category="Overview",
            labels={"page": "run index"},
        ),
    log:
        RESULTS + "/logs/report_index.log",
    params:
        runs=list(RUNS),
        title=REPORT_CONFIG.get("title", "xfel-reduce runs"),
        results=RESULTS,
    threads: 1
    resources:
        mem_mb=scaled(1000),
        runtime=scaled(5),
    conda: CONDA_ENV
    script:
        "../scripts/build_index.py"
