# xfel-reduce: European XFEL runs -> reduced, validated science data.
# Entry point: validates the config, then includes one rule file per stage.
from pathlib import Path

from xfel_reduce.config import validate_config

configfile: "config/config.yaml"

validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")

include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/annotation.smk"
include: "workflow/rules/sfx.smk"
include: "workflow/rules/kept.smk"
include: "workflow/rules/xpcs.smk"
include: "workflow/rules/saxs.smk"
include: "workflow/rules/spectroscopy.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/binning.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        expand(f"{RESULTS}/r{{run}}/summary.json", run=RUN_IDS),
        f"{RESULTS}/index.html",
