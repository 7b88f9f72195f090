"""The config schema and Snakemake-level checks."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from xfel_reduce.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_and_example_configs_are_valid():
    validate_config(copy.deepcopy(DEFAULT))
    validate_config(yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text()))


@pytest.mark.parametrize("path, value, needle", [
    (("calibration", "source"), "rawish", "calibration.source"),
    (("annotation", "hit_mode"), "sometimes", "annotation.hit_mode"),
    (("calibration", "memory_cells"), 0, "calibration.memory_cells"),
    (("annotation", "lit_treshold"), 1.0, "annotation"),
])
def test_schema_rejects_bad_config_naming_the_key(path, value, needle):
    cfg = copy.deepcopy(DEFAULT)
    cfg[path[0]][path[1]] = value
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert needle in str(err.value)


def _snakemake(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_workflow_rejects_bad_config_at_start(tmp_path):
    cfg = copy.deepcopy(DEFAULT)
    cfg["calibration"]["source"] = "rawish"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = _snakemake("-n", "--configfile", str(p))
    assert res.returncode != 0
    assert "calibration.source" in res.stdout + res.stderr


def test_nonexistent_run_stops_the_workflow_with_a_message(tmp_path):
    cfg = copy.deepcopy(DEFAULT)
    cfg["simulate"]["enabled"] = False
    cfg["proposal_dir"] = str(tmp_path / "p1")
    cfg["runs"] = [{"run": 99, "technique": "spi"}]
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = _snakemake("-n", "--configfile", str(p))
    assert res.returncode != 0
    assert "run 99: no AGIPD00 files" in res.stdout + res.stderr


def test_dag_of_16_modules_x_50_sequences_without_reading_data(tmp_path):
    """Empty placeholder files: the DAG is built from the listing alone."""
    pd = tmp_path / "p1"
    runs = {10: 50}
    for run, n in list(runs.items()) + [(r, 1) for r in (1, 2, 3)]:
        d = pd / "raw" / f"r{run:04d}"
        d.mkdir(parents=True)
        for s in range(n):
            for m in range(16):
                (d / f"RAW-R{run:04d}-AGIPD{m:02d}-S{s:05d}.h5").touch()
            (d / f"RAW-R{run:04d}-DA01-S{s:05d}.h5").touch()
    (pd / "calib").mkdir()
    (pd / "calib" / "agipd_gain_constants.h5").touch()
    cfg = copy.deepcopy(DEFAULT)
    cfg.update(proposal_dir=str(pd), results_dir=str(tmp_path / "results"))
    cfg["runs"] = [{"run": 10, "technique": "spi"}]
    cfg["simulate"]["enabled"] = False
    cfg["calibration"]["gain_constants"] = str(pd / "calib" / "agipd_gain_constants.h5")
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    res = _snakemake("-n", "--configfile", str(p), "--quiet", "rules")
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["reduce"] == 50 and "correct" not in counts  # one pass per sequence, no CORR
    assert counts["dark"] == 16
    assert elapsed < 120


def shipped_configs() -> list[Path]:
    """Every config a user can start from: the demo, the examples and the test configs."""
    return ([REPO / "config" / "config.yaml"] + sorted((REPO / "config" / "examples").glob("*.yaml"))
            + sorted((REPO / "tests" / "data").glob("*.yaml")))


def _placeholder_proposal(cfg: dict, tmp: Path) -> dict:
    """A config for real data pointed at empty placeholder files laid out as the
    facility does (the DAG is built from file listings alone)."""
    cfg = copy.deepcopy(cfg)
    pd = tmp / "proposal"
    cal = cfg["calibration"]
    mods = cfg["modules"] if isinstance(cfg["modules"], list) else range(cfg["modules"])
    runs = [r["run"] for r in cfg["runs"]] + list(cal.get("dark_runs", []))
    for run in runs:
        raw = pd / "raw" / f"r{run:04d}"
        raw.mkdir(parents=True, exist_ok=True)
        for agg in ("DA01", "AGIPD1MCTRL00"):
            (raw / f"RAW-R{run:04d}-{agg}-S00000.h5").touch()
        for seq in range(2):
            for m in mods:
                name = f"R{run:04d}-AGIPD{m:02d}-S{seq:05d}.h5"
                if cal["source"] == "proc":
                    (pd / "proc" / f"r{run:04d}").mkdir(parents=True, exist_ok=True)
                    (pd / "proc" / f"r{run:04d}" / f"CORR-{name}").touch()
                else:
                    (raw / f"RAW-{name}").touch()
    if "gain_constants" in cal:
        cal["gain_constants"] = str(pd / "agipd_gain_constants.h5")
        Path(cal["gain_constants"]).touch()
    cal.pop("proc_dir", None)
    cfg.update(proposal_dir=str(pd), results_dir=str(tmp / "results"))
    return cfg


@pytest.mark.parametrize("profile", ["local", "slurm"])
@pytest.mark.parametrize("config", shipped_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_builds_its_dag(config, profile, tmp_path):
    """The DAG, job groups included (a group left and re-entered is an error only
    Snakemake's group logic sees), builds for each shipped config and profile.
    Configs for real data get a placeholder proposal tree."""
    cfg = yaml.safe_load(config.read_text())
    if not cfg.get("simulate", {}).get("enabled", False):
        config = tmp_path / config.name
        config.write_text(yaml.safe_dump(_placeholder_proposal(cfg, tmp_path)))
    args = ["-n", "--nolock", "--configfile", str(config)]
    args += ["--profile", "slurm"] if profile == "slurm" else ["--cores", "2"]
    res = _snakemake(*args)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Job stats" in out or "Nothing to be done" in out


@pytest.mark.parametrize("write_corr", ["none", "all"])
def test_corr_files_only_when_asked(write_corr, tmp_path):
    """The one pass corrects in memory: no rule writes CORR files unless
    ``calibration.write_corr: all``, and then every technique's pass (and the JUNGFRAU
    correction) writes them, for both profiles' group logic."""
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny_techniques.yaml").read_text())
    cfg["calibration"]["write_corr"] = write_corr
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    for profile in (["--cores", "2"], ["--profile", "slurm"]):
        res = _snakemake("-n", "--nolock", "--configfile", str(p), *profile)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-3000:]
        corr = {r for r in (11, 12, 13) if re.search(rf"proc/r{r:04d}/CORR-R{r:04d}-AGIPD\d\d-S00000\.h5", out)}
        assert corr == ({11, 12, 13} if write_corr == "all" else set())
        assert ("jungfrau_correct" in out) == (write_corr == "all")


@pytest.mark.parametrize("instrument", ["SPB", "FXE", "HED"])
def test_jungfrau_spectroscopy_dag_at_instrument(instrument, tmp_path):
    """A JUNGFRAU spectroscopy run on real-data placeholders (module, control and DA
    aggregators as the facility names them) builds its DAG at each JUNGFRAU instrument."""
    pd = tmp_path / "proposal"
    for run in (4, 5, 6, 20):
        raw = pd / "raw" / f"r{run:04d}"
        raw.mkdir(parents=True)
        for agg in ("JNGFR01", "JNGFRCTRL00", "DA01"):
            (raw / f"RAW-R{run:04d}-{agg}-S00000.h5").touch()
    (pd / "jf_gain.h5").touch()
    cfg = {
        "proposal_dir": str(pd), "results_dir": str(tmp_path / "results"), "modules": 1,
        "instrument": instrument, "runs": [{"run": 20, "technique": "spectroscopy"}],
        "calibration": {"source": "raw", "dark_runs": [1, 2, 3], "memory_cells": 16,
                        "gain_constants": str(pd / "jf_gain.h5"),
                        "jungfrau": {"dark_runs": [4, 5, 6], "memory_cells": 16,
                                     "gain_constants": str(pd / "jf_gain.h5")}},
        "annotation": {}, "spectroscopy": {"module": 1}, "simulate": {"enabled": False},
    }
    p = tmp_path / "jf.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = _snakemake("-n", "--nolock", "--configfile", str(p), "--cores", "2")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    for rule in ("jungfrau_dark", "spectroscopy_image", "spectroscopy_reduce", "spectroscopy_run"):
        assert rule in out
    # both passes correct the RAW files in memory: no JUNGFRAU CORR file by default
    assert "jungfrau_correct" not in out and "CORR-R0020-JNGFR" not in out
    assert "RAW-R0020-JNGFRCTRL00-S00000.h5" in out
