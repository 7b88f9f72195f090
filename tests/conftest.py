"""Shared fixtures: small simulated beamtimes reduced with the library steps or the workflow."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xfel_reduce import steps
from xfel_reduce.config import modules_of
from xfel_reduce.io import sources
from xfel_reduce.io.trains import train_files

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp: Path, name: str = "tiny.yaml") -> dict:
    """A config of ``tests/data`` with its proposal, results and gain constants in ``tmp``."""
    cfg = yaml.safe_load((REPO / "tests" / "data" / name).read_text())
    cfg["proposal_dir"] = str(tmp / "p900001")
    cfg["results_dir"] = str(tmp / "results")
    cfg["calibration"]["gain_constants"] = str(tmp / "p900001" / "calib" / "agipd_gain_constants.h5")
    return cfg


def simulate_and_reduce(cfg: dict, run: int) -> dict:
    """Simulate the config's darks and ``run``, reduce the run in process
    (:func:`xfel_reduce.steps.reduce_run_in_process`); its outputs, config, truth.json
    and RAW folder."""
    import json

    pd = Path(cfg["proposal_dir"])
    if not (pd / "calib" / "agipd_gain_constants.h5").exists():
        steps.simulate_detector(cfg)
    for r in (*cfg["calibration"]["dark_runs"], run):
        if not (pd / "truth" / f"r{r:04d}" / "truth.json").exists():  # darks: once per proposal
            steps.simulate_run(cfg, r)
    out = steps.reduce_run_in_process(cfg, run)
    truth = json.loads((pd / "truth" / f"r{run:04d}" / "truth.json").read_text())
    return {**out, "cfg": cfg, "truth": truth, "raw_dir": pd / "raw" / f"r{run:04d}"}


def reduce_run(cfg: dict, run: int) -> dict:
    """Simulate and reduce one run with the library steps (no Snakemake)."""
    from xfel_reduce.simulate.beamtime import iter_runs, run_plan

    pd, res = Path(cfg["proposal_dir"]), Path(cfg["results_dir"])
    mods = modules_of(cfg)
    out: dict = {"cfg": cfg, "proposal": pd, "results": res}
    if not (pd / "calib" / "agipd_gain_constants.h5").exists():
        steps.simulate_detector(cfg)
    sim_runs = {int(r["run"]): r for r in iter_runs(cfg["simulate"])}
    for r in cfg["calibration"]["dark_runs"] + [run]:
        if not (pd / "truth" / f"r{r:04d}" / "truth.json").exists():
            steps.simulate_run(cfg, r)
    dark_dirs = [pd / "raw" / f"r{r:04d}" for r in cfg["calibration"]["dark_runs"]]
    consts = {}
    for m in mods:
        consts[m] = res / "calibration" / "constants" / f"AGIPD{m:02d}.h5"
        if not consts[m].exists():
            steps.dark_module(cfg, m, dark_dirs, consts[m])
    n_seq = run_plan(cfg["simulate"], sim_runs[run])["n_sequences"]
    raw_dir = pd / "raw" / f"r{run:04d}"
    corr_dir = res / "proc" / f"r{run:04d}"
    partials, annots = [], []
    for s in range(n_seq):
        corr = []
        for m in mods:
            c = corr_dir / sources.corr_filename(run, m, s)
            steps.correct_file(cfg, m, raw_dir / sources.raw_filename(run, m, s), consts[m], c)
            corr.append(c)
        p = res / f"r{run:04d}" / "partials" / f"S{s:05d}.h5"
        steps.annotate_chunk(cfg, corr, train_files(raw_dir), p)
        partials.append(p)
    thr = res / f"r{run:04d}" / "partials" / "hit_thresholds.h5"
    steps.hit_thresholds(cfg, partials, thr)
    for s, p in enumerate(partials):
        a = res / f"r{run:04d}" / "annotation" / f"REDU-R{run:04d}-ANNOT-S{s:05d}.h5"
        steps.write_annotation(cfg, run, s, p, thr, a)
        annots.append(a)
    agg = res / f"r{run:04d}" / "aggregate" / "run.h5"
    steps.aggregate_run(cfg, run, partials, annots, agg)
    raw_files = sorted(raw_dir.glob("*.h5"))
    summary = res / f"r{run:04d}" / "summary.json"
    steps.run_summary(cfg, run, "spi", raw_files, {"annotation": annots, "aggregate": [agg]},
                      steps.load_run_table(agg), None, summary, inputs=[agg])
    out.update(constants=consts, corr_dir=corr_dir, partials=partials, annotation=annots,
               aggregate=agg, summary=summary, raw_dir=raw_dir, thresholds=thr)
    return out


@pytest.fixture(scope="session")
def tiny_reduced(tmp_path_factory) -> dict:
    """The tiny beamtime (2 modules, 4 cells, 8 trains in 2 sequences), reduced."""
    tmp = tmp_path_factory.mktemp("tiny")
    return reduce_run(tiny_config(tmp), 10)


@pytest.fixture()
def tiny_cfg(tmp_path) -> dict:
    return copy.deepcopy(tiny_config(tmp_path))


def run_workflow(config_name: str, tmp: Path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    """Run the Snakemake workflow on ``tests/data/<config_name>`` with proposal and results in ``tmp``."""
    cfg = yaml.safe_load((REPO / "tests" / "data" / config_name).read_text())
    cfg["proposal_dir"] = str(tmp / "p900001")
    cfg["results_dir"] = str(tmp / "results")
    cfg["calibration"]["gain_constants"] = str(tmp / "p900001" / "calib" / "agipd_gain_constants.h5")
    if "jungfrau" in cfg["calibration"]:
        cfg["calibration"]["jungfrau"]["gain_constants"] = str(tmp / "p900001" / "calib" / "jungfrau_gain_constants.h5")
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(path),
                          "--workflow-profile", "profiles/default", *extra],
                         cwd=REPO, capture_output=True, text=True, timeout=1500)
    return cfg, res


@pytest.fixture(scope="session")
def tech_run(tmp_path_factory) -> tuple[Path, dict]:
    """(folder, config) of the workflow run on tiny_techniques.yaml: SFX r11, XPCS r12, SAXS r13,
    spectroscopy r14, under ``folder/p900001`` and ``folder/results``.

    Session-scoped: the workflow takes minutes, and every test reading its products
    (test_workflow, test_damnit) shares the one run.  Tests must not modify it.
    """
    tmp = tmp_path_factory.mktemp("tech")
    cfg, res = run_workflow("tiny_techniques.yaml", tmp)
    assert res.returncode == 0, res.stderr[-5000:]
    return tmp, cfg
