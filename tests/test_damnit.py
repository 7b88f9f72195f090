"""The DAMNIT context file (damnit/context.py), loaded and run by DAMNIT's own code.

DAMNIT reads a context file with ``python -m ctxrunner ctx`` (``get_context_file``)
and evaluates it per run with ``python -m ctxrunner exec`` in the database
directory; in-process, the same loader is ``damnit.context.ContextFile``.  The
values are checked against the products of the workflow run shared with
test_workflow.py (``tech_run``: SFX r11, XPCS r12, SAXS r13, spectroscopy r14).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import extra_data
import h5py
import numpy as np
import pytest
from damnit.backend.extract_data import get_context_file, load_reduced_data, prepare_env
from damnit.context import ContextFile, Skip

from xfel_reduce import xpcs
from xfel_reduce.report_index import collect_runs

REPO = Path(__file__).resolve().parents[1]
CONTEXT = REPO / "damnit" / "context.py"
PROPOSAL = 900001
TECH_RUNS = (11, 12, 13, 14)
DARK_RUN = 1  # raw data in the proposal, but no results/r0001: a run without products

# Stored columns of the context and which technique each belongs to (None: every run).
COLUMNS = {
    "xfel_reduce_run_type": None, "xfel_reduce_frames_in": None, "xfel_reduce_frames_kept": None,
    "xfel_reduce_hit_rate": None, "xfel_reduce_reduction_ratio": None, "xfel_reduce_verdict": None,
    "xfel_reduce_reports": None,
    "xfel_reduce_saxs_radius": "saxs", "xfel_reduce_saxs_radius_change": "saxs",
    "xfel_reduce_xpcs_diffusion": "xpcs", "xfel_reduce_xpcs_contrast": "xpcs",
    "xfel_reduce_spectra_lines": "spectroscopy", "xfel_reduce_spectra_shift": "spectroscopy",
    "xfel_reduce_sfx_hits": "sfx", "xfel_reduce_sfx_peaks": "sfx",
}
TECHNIQUE = {11: "sfx", 12: "xpcs", 13: "saxs", 14: "spectroscopy"}
VERDICT_RGB = {"pass": [0xe6, 0xf4, 0xea], "warn": [0xff, 0xf4, 0xe0], "missing": [0xee, 0xee, 0xee],
               "fail": [0xfd, 0xe8, 0xe8], "error": [0xfd, 0xe8, 0xe8]}
PRODUCT = {"sfx": "SFX", "xpcs": "XPCS", "saxs": "SAXS", "spectroscopy": "spectroscopy"}


def _evaluate(ctx: ContextFile, proposal_dir: Path, run: int, out_dir: Path):
    """(results, stored) of one run: DAMNIT's execute() on the real raw run, then its
    fragment file written and read back the way DAMNIT's database ingests it."""
    data = extra_data.RunDirectory(proposal_dir / "raw" / f"r{run:04d}")
    res = ctx.execute(data, run, PROPOSAL, {})
    stored = load_reduced_data(res.save(out_dir, PROPOSAL, run))
    return res, stored


@pytest.fixture(scope="module")
def evaluated(tech_run, tmp_path_factory):
    """{run: (Results, stored values)} for the technique runs and a dark run."""
    tmp, cfg = tech_run
    ctx = ContextFile.from_py_file(CONTEXT)
    out = tmp_path_factory.mktemp("damnit")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XFEL_REDUCE_RESULTS", str(tmp / "results"))
        return {r: _evaluate(ctx, tmp / "p900001", r, out) for r in (*TECH_RUNS, DARK_RUN)}


def _value(evaluated, run: int, name: str):
    res, _ = evaluated[run]
    assert name not in res.errors, f"r{run} {name}: {res.errors.get(name)}"
    return res.cells[name].data


def _skip_message(res, name: str) -> str:
    assert name not in res.cells, f"{name} has a value ({res.cells[name].data!r}), expected a skip"
    err = res.errors[name]
    assert isinstance(err, Skip), f"{name}: {type(err).__name__}: {err}"
    return str(err)


def test_context_loads_with_damnits_loader(tmp_path):
    """DAMNIT's extractor reads the context in a subprocess (ctxrunner ctx) without errors."""
    db_dir = tmp_path / "amore"
    db_dir.mkdir()
    shutil.copy(CONTEXT, db_dir / "context.py")
    pipe, error_info = get_context_file(db_dir / "context.py")
    assert error_info is None, error_info[0]
    stored = pipe.vars_to_dict()  # the variables DAMNIT puts in its database
    assert set(stored) == set(COLUMNS)
    assert all(v["title"].startswith("xfel-reduce ") and v["description"] for v in stored.values())
    assert all(name.startswith("xfel_reduce_") for name in pipe.vars)


def test_context_needs_only_numpy_h5py_and_damnit():
    """DAMNIT runs the context in the facility's environment: no xfel_reduce import."""
    tree = ast.parse(CONTEXT.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert mods <= {"json", "math", "os", "pathlib", "h5py", "numpy", "damnit_ctx"}, mods


def test_run_level_values_match_the_summary_and_index(evaluated, tech_run):
    tmp, _ = tech_run
    results = tmp / "results"
    index_verdict = {e.run: e.verdict for e in collect_runs(results)}
    for run in TECH_RUNS:
        s = json.loads((results / f"r{run:04d}" / "summary.json").read_text())
        assert _value(evaluated, run, "xfel_reduce_run_type") == s["run_type"] == TECHNIQUE[run]
        assert _value(evaluated, run, "xfel_reduce_frames_in") == s["frames_in"]
        ratio = s["bytes_in"] / sum(s["bytes_out"].values())
        assert _value(evaluated, run, "xfel_reduce_reduction_ratio") == pytest.approx(ratio, rel=1e-12)
        assert _value(evaluated, run, "xfel_reduce_verdict") == index_verdict[run]
        reports = {}
        for v in sorted((results / f"r{run:04d}" / "reports").glob("*.verdict.json")):
            reports[v.name.removesuffix(".verdict.json")] = json.loads(v.read_text())["overall"]
        text = _value(evaluated, run, "xfel_reduce_reports")
        assert dict(item.split(": ") for item in text.split(", ")) == reports
        _, stored = evaluated[run]
        assert stored["xfel_reduce_frames_in"].value == s["frames_in"]
        verdict = stored["xfel_reduce_verdict"]
        assert verdict.value == index_verdict[run]
        # Anything but a pass is bold, on the verdict's colour (as in the reports).
        assert verdict.attributes["bold"] == (verdict.value != "pass")
        assert list(verdict.attributes["background"]) == VERDICT_RGB[verdict.value]


def test_hit_rate_and_kept_frames_only_where_hit_finding_ran(evaluated, tech_run):
    tmp, _ = tech_run
    s = json.loads((tmp / "results" / "r0011" / "summary.json").read_text())
    assert _value(evaluated, 11, "xfel_reduce_hit_rate") == pytest.approx(s["hit_rate"])
    # the kept-frames set (hits + sampled misses) where the run writes one, else the hits
    assert "kept" in s["frames_out"]
    assert _value(evaluated, 11, "xfel_reduce_frames_kept") == s["frames_out"]["kept"] == s["kept_frames"]["frames_kept"]
    for run in (12, 13, 14):  # every frame reduced: a lit-pixel "hit" selects nothing
        res, _ = evaluated[run]
        assert "not applicable" in _skip_message(res, "xfel_reduce_hit_rate")
        assert "not applicable" in _skip_message(res, "xfel_reduce_frames_kept")


def test_sfx_hits_and_peaks(evaluated, tech_run):
    tmp, cfg = tech_run
    base = tmp / "results" / "r0011"
    stats = json.loads((base / "sfx" / "hit_statistics.json").read_text())
    n_lst = len((base / "sfx" / "hits.lst").read_text().splitlines())
    assert _value(evaluated, 11, "xfel_reduce_sfx_hits") == stats["n_hits"] == n_lst > 0
    n_peaks = []
    for cxi in sorted((base / "sfx").glob("hits-S*.cxi")):
        with h5py.File(cxi, "r") as f:
            n_peaks.append(f["entry_1/result_1/nPeaks"][()])
    n_peaks = np.concatenate(n_peaks)
    peaks = _value(evaluated, 11, "xfel_reduce_sfx_peaks")
    assert np.array_equal(peaks, n_peaks) and peaks.size == stats["n_hits"]
    assert (peaks >= cfg["sfx"]["peakfinder"]["min_peaks"]).all()
    # The table shows the mean (summary="mean"); DAMNIT keeps every hit's count.
    assert evaluated[11][1]["xfel_reduce_sfx_peaks"].value == pytest.approx(n_peaks.mean())


def test_saxs_radius_and_change(evaluated, tech_run):
    tmp, cfg = tech_run
    fits = json.loads((tmp / "results" / "r0013" / "saxs" / "saxs_summary.json").read_text())["fits"]
    r = _value(evaluated, 13, "xfel_reduce_saxs_radius")
    dr = _value(evaluated, 13, "xfel_reduce_saxs_radius_change")
    assert r == fits["off"]["radius_nm"]  # the laser-off fit, as in the SAXS report
    assert dr == pytest.approx(fits["on"]["radius_nm"] - fits["off"]["radius_nm"], rel=1e-12)
    sim = next(x for x in cfg["simulate"]["runs"] if x["run"] == 13)["params"]
    assert r == pytest.approx(sim["radius_nm"], rel=0.02)
    assert dr / r == pytest.approx(sim["radius_change"], abs=0.005)


def test_xpcs_diffusion_and_contrast(evaluated, tech_run):
    tmp, _ = tech_run
    with h5py.File(tmp / "results" / "r0012" / "xpcs" / "xpcs.h5", "r") as f:
        d = float(f["xpcs/diffusion/D_m2_per_s"][()])
        beta, _ = xpcs.ring_average(f["xpcs/fit/beta"][()], f["xpcs/fit/beta_err"][()])
    assert _value(evaluated, 12, "xfel_reduce_xpcs_diffusion") == d
    assert _value(evaluated, 12, "xfel_reduce_xpcs_contrast") == pytest.approx(beta, rel=1e-12)
    assert 0 < beta < 1 and d > 0


def test_spectroscopy_lines_and_shift(evaluated, tech_run):
    tmp, _ = tech_run
    path = tmp / "results" / "r0014" / "spectroscopy" / "spectra_summary.json"
    fit = json.loads(path.read_text())["fits"]["on_off"]
    lines = _value(evaluated, 14, "xfel_reduce_spectra_lines")
    assert np.array_equal(lines, fit["energies_ev"]) and lines.size == 2
    assert _value(evaluated, 14, "xfel_reduce_spectra_shift") == fit["shift_ev"]
    stored = evaluated[14][1]["xfel_reduce_spectra_lines"].value  # what the table shows
    assert stored == ", ".join(f"{e:.2f}" for e in fit["energies_ev"])


def test_other_techniques_and_unreduced_runs_are_skipped(evaluated):
    """Every column of a run either has a value or a Skip; nothing else goes wrong."""
    for run, (res, stored) in evaluated.items():
        assert not [n for n, e in res.errors.items() if not isinstance(e, Skip)], res.errors
        assert set(res.cells) | set(res.errors) == set(COLUMNS) | {"start_time"}
        for name, technique in COLUMNS.items():
            if run == DARK_RUN:
                assert "run 1 has no xfel-reduce results" in _skip_message(res, name)
            elif technique is not None and technique != TECHNIQUE[run]:
                assert f"no {PRODUCT[technique]} product" in _skip_message(res, name)
            if name in res.errors:  # stored for DAMNIT's table as a grey "Skipped" cell
                assert stored[name].attributes["error_cls"] == "Skip"


def _results_copy(tech_run, tmp_path: Path, run: int, files: list[str]) -> Path:
    """A results folder holding only ``files`` of ``run`` (a run the workflow has not finished)."""
    tmp, _ = tech_run
    src, dst = tmp / "results" / f"r{run:04d}", tmp_path / "results" / f"r{run:04d}"
    for name in files:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / name, dst / name)
    return tmp_path / "results"


def test_partly_reduced_run_and_unreadable_product(tech_run, tmp_path, monkeypatch):
    tmp, _ = tech_run
    results = _results_copy(tech_run, tmp_path, 13, ["summary.json", "reports/saxs.html"])
    (results / "r0013" / "saxs").mkdir()
    (results / "r0013" / "saxs" / "saxs_summary.json").write_text("{")  # truncated
    monkeypatch.setenv("XFEL_REDUCE_RESULTS", str(results))
    res, _ = _evaluate(ContextFile.from_py_file(CONTEXT), tmp / "p900001", 13, tmp_path / "damnit")
    assert res.cells["xfel_reduce_frames_in"].data == 64
    assert res.cells["xfel_reduce_verdict"].data == "missing"  # a report without its verdict file
    assert res.cells["xfel_reduce_reports"].data == "saxs: missing"
    # A broken file is an error (orange in DAMNIT, with the reason), not a silent skip.
    err = res.errors["xfel_reduce_saxs_radius"]
    assert not isinstance(err, Skip) and "saxs_summary.json is not valid JSON" in str(err)
    assert "no XPCS product" in _skip_message(res, "xfel_reduce_xpcs_diffusion")


def test_results_directory_setting(tech_run, tmp_path, monkeypatch):
    """XFEL_REDUCE_RESULTS_DIR at the top of the file, overridden by $XFEL_REDUCE_RESULTS."""
    tmp, _ = tech_run
    proposal, results = tmp / "p900001", tmp / "results"
    db_dir = tmp_path / "amore"
    db_dir.mkdir()
    code = CONTEXT.read_text()
    default = 'XFEL_REDUCE_RESULTS_DIR = "{proposal_path}/scratch/xfel-reduce/results"'
    assert code.count(default) == 1

    def evaluate(setting: str):
        path = db_dir / "context.py"
        path.write_text(code.replace(default, f"XFEL_REDUCE_RESULTS_DIR = {setting!r}"))
        res, _ = _evaluate(ContextFile.from_py_file(path), proposal, 13, tmp_path / "out")
        return res

    monkeypatch.delenv("XFEL_REDUCE_RESULTS", raising=False)
    # A relative path is taken from the context file's folder, not from the working directory.
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(results, db_dir)
    assert evaluate(rel).cells["xfel_reduce_frames_in"].data == 64
    assert evaluate("{proposal_path}/../results").cells["xfel_reduce_frames_in"].data == 64
    msg = _skip_message(evaluate("/nonexistent/results"), "xfel_reduce_frames_in")
    assert "/nonexistent/results does not exist (from XFEL_REDUCE_RESULTS_DIR in the context file)" in msg
    # The environment variable wins over the file's setting, with the same placeholders.
    monkeypatch.setenv("XFEL_REDUCE_RESULTS", "{proposal_path}/../results")
    assert evaluate("/nonexistent/results").cells["xfel_reduce_frames_in"].data == 64
    monkeypatch.setenv("XFEL_REDUCE_RESULTS", str(tmp_path / "elsewhere"))
    msg = _skip_message(evaluate(str(results)), "xfel_reduce_frames_in")
    assert "(from environment variable XFEL_REDUCE_RESULTS)" in msg
    monkeypatch.setenv("XFEL_REDUCE_RESULTS", "{proposal_dir}/results")
    err = evaluate(str(results)).errors["xfel_reduce_frames_in"]
    assert "bad placeholder" in str(err) and "{proposal_path}" in str(err)


def test_damnit_extraction_of_a_run(tech_run, tmp_path):
    """What DAMNIT's extraction job runs: ``ctxrunner exec`` in the database directory,
    opening the run through extra-data, with the context file as shipped (no edits,
    no environment variable) in a facility-like proposal layout."""
    tmp, _ = tech_run
    # <root>/<instrument>/<cycle>/p900001 as extra_data.open_run finds proposals, results in
    # the default place (<proposal>/scratch/xfel-reduce/results).
    prop = tmp_path / "exp" / "SPB" / "202601" / f"p{PROPOSAL:06d}"
    (prop / "scratch" / "xfel-reduce").mkdir(parents=True)
    (prop / "raw").symlink_to(tmp / "p900001" / "raw")
    (prop / "scratch" / "xfel-reduce" / "results").symlink_to(tmp / "results")
    db_dir = prop / "usr" / "Shared" / "amore"
    db_dir.mkdir(parents=True)
    shutil.copy(CONTEXT, db_dir / "context.py")
    env = prepare_env()  # DAMNIT's: puts its ctxsupport folder on PYTHONPATH
    env.pop("XFEL_REDUCE_RESULTS", None)
    env["EXTRA_DATA_DATA_ROOT"] = str(tmp_path / "exp")
    for run in (13, DARK_RUN):
        record = tmp_path / f"r{run}.txt"
        p = subprocess.run([sys.executable, "-m", "ctxrunner", "exec", str(PROPOSAL), str(run), "raw",
                            "--record-output", str(record)], cwd=db_dir, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        stored = load_reduced_data(Path(record.read_text().strip()))
        if run == 13:
            fits = json.loads((tmp / "results" / "r0013" / "saxs" / "saxs_summary.json").read_text())["fits"]
            assert stored["xfel_reduce_saxs_radius"].value == fits["off"]["radius_nm"]
            assert stored["xfel_reduce_verdict"].value == collect_runs(tmp / "results", [13])[0].verdict
            assert stored["xfel_reduce_xpcs_diffusion"].attributes["error_cls"] == "Skip"
        else:
            assert all(stored[n].attributes.get("error_cls") == "Skip" for n in COLUMNS)
