"""The ``xfel-reduce`` command as users run it: the installed console script, from
directories other than the repository, with the exit codes it promises."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from xfel_reduce import status

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "xfel-reduce"
COMMANDS = ("inspect", "simulate", "run", "watch", "status")


def cli(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _tiny(tmp: Path, proposal: Path, results: Path, simulate: bool = True) -> dict:
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    cfg["proposal_dir"] = str(proposal)
    cfg["results_dir"] = str(results)
    cfg["calibration"]["gain_constants"] = str(proposal / "calib" / "agipd_gain_constants.h5")
    cfg["simulate"]["enabled"] = simulate
    return cfg


def test_help_lists_every_command(tmp_path):
    res = cli("--help", cwd=tmp_path)
    assert res.returncode == 0
    for name in COMMANDS:
        assert name in res.stdout
        sub = cli(name, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and "usage: xfel-reduce " + name in sub.stdout


@pytest.mark.parametrize("args, needle", [
    (("run", "--config", "missing.yaml"), "missing.yaml not found"),
    (("status", "--config", "bad.yaml"), "calibration.source"),
    (("simulate", "--config", "real.yaml"), "simulate.enabled"),
    (("watch", "nowhere", "--config", "real.yaml"), "nowhere/raw does not exist"),
    (("run", "--config", "real.yaml", "--profile", "nope"), "profile 'nope'"),
])
def test_user_mistakes_exit_2_without_traceback(tmp_path, args, needle):
    cfg = _tiny(tmp_path, tmp_path / "p", tmp_path / "r", simulate=False)
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(cfg))
    cfg["calibration"]["source"] = "rawish"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr


def test_run_resolves_config_and_paths_from_the_working_directory(tmp_path):
    """`run` from a directory outside the repo: the config path and the config's relative
    paths are taken from that directory, and Snakemake's state lives there too."""
    work = tmp_path / "beamtime"
    (work / "cfg").mkdir(parents=True)
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    cfg.update(proposal_dir="data/p900001", results_dir="out")
    cfg["calibration"]["gain_constants"] = "data/p900001/calib/agipd_gain_constants.h5"
    (work / "cfg" / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    res = cli("run", "-c", "cfg/tiny.yaml", "-n", cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "out/r0010/summary.json" in out and "data/p900001/raw/r0010" in out
    assert (work / ".snakemake").is_dir()
    assert list((work / "out" / "logs" / "xfel-reduce").glob("*-run.log"))
    # ./config.yaml is the default config
    shutil.copy(work / "cfg" / "tiny.yaml", work / "config.yaml")
    again = cli("run", "-n", "--quiet", cwd=work)
    assert again.returncode == 0 and str(work / "config.yaml") in again.stderr


def _grow(path: Path, stop: threading.Event) -> None:
    """A file the DAQ is still writing: it grows until told to stop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        while not stop.is_set():
            fh.write(b"\0" * 4096)
            fh.flush()
            time.sleep(0.3)


@pytest.mark.slow
def test_watch_reduces_a_new_run_once_and_leaves_a_growing_run_alone(tmp_path):
    staging, proposal, results = tmp_path / "daq", tmp_path / "p900001", tmp_path / "results"
    # The facility side: darks are on disk, run 10 is taken later.
    sim_cfg = _tiny(tmp_path, staging, tmp_path / "sim_results")
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(sim_cfg))
    res = cli("simulate", "-c", "sim.yaml", "--cores", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (proposal / "raw").mkdir(parents=True)
    for r in (1, 2, 3):
        shutil.copytree(staging / "raw" / f"r{r:04d}", proposal / "raw" / f"r{r:04d}")
    shutil.copytree(staging / "calib", proposal / "calib")

    cfg = _tiny(tmp_path, proposal, results, simulate=False)
    (tmp_path / "watch.yaml").write_text(yaml.safe_dump(cfg))
    watch = subprocess.Popen(
        [str(CLI), "watch", str(proposal), "-c", "watch.yaml", "--cores", "2",
         "--stable-seconds", "3", "--poll-seconds", "0.5", "--technique", "spi"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop = threading.Event()
    writer = threading.Thread(target=_grow, args=(proposal / "raw" / "r0011"
                                                  / "RAW-R0011-AGIPD00-S00000.h5", stop))
    try:
        time.sleep(2)
        # run 10 arrives while watch runs, file by file
        (proposal / "raw" / "r0010").mkdir()
        for f in sorted((staging / "raw" / "r0010").iterdir()):
            shutil.copy(f, proposal / "raw" / "r0010" / f.name)
            time.sleep(0.2)
        writer.start()
        summary = results / "r0010" / "summary.json"
        deadline = time.monotonic() + 900

        def run10() -> str | None:
            return status.read_watch_state(results).get(10, {}).get("status")

        while run10() not in ("done", "failed") and time.monotonic() < deadline and watch.poll() is None:
            time.sleep(1)
        assert run10() == "done", (watch.stdout.read() if watch.poll() is not None else "timeout")
        assert summary.exists()
        time.sleep(3)  # a few more polls: the growing run must stay untouched
        state = status.read_watch_state(results)
        assert state[11]["status"] == "waiting" and "still being written" in state[11]["detail"]
        assert not (results / "r0011").exists()
    finally:
        stop.set()
        watch.send_signal(signal.SIGTERM)
        out, _ = watch.communicate(timeout=60)
    assert watch.returncode == 0, out[-3000:]
    assert sum("run 10: running" in line for line in out.splitlines()) == 1, out[-3000:]
    assert json.loads(summary.read_text())["frames_in"] == 32
    assert (results / "index.html").exists()

    st = cli("status", "-c", "watch.yaml", "--json", cwd=tmp_path)
    rows = {r["run"]: r for r in json.loads(st.stdout)}
    assert rows[10]["status"] == "done" and rows[11]["status"] == "waiting"

    # A restarted watch does not reduce run 10 again.
    again = cli("watch", str(proposal), "-c", "watch.yaml", "--stable-seconds", "0",
                "--poll-seconds", "0", "--max-polls", "1", cwd=tmp_path)
    assert again.returncode == 0 and "run 10: running" not in again.stdout + again.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_status_names_failed_runs_with_their_job_log(tmp_path):
    """A failed snakemake job: `status` says which run failed and which log to read."""
    results = tmp_path / "results"
    log = results / status.INVOCATION_LOG_DIR / "20261201T000000-1-run.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "Error in rule correct:\n    jobid: 7\n    input: raw.h5\n"
        "    output: corr.h5\n    log: results/logs/r0010/correct/S00001.log (check log file(s) for error details)\n"
        "    wildcards: run=0010, seq=00001\n\nShutting down\n")
    (results / "r0011").mkdir()
    (results / "r0011" / "summary.json").write_text("{}")
    cfg = _tiny(tmp_path, tmp_path / "p", results, simulate=False)
    cfg["runs"] = [{"run": 10, "technique": "spi"}, {"run": 11, "technique": "spi"},
                   {"run": 12, "technique": "spi"}]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = cli("status", "-c", "c.yaml", cwd=tmp_path)
    assert res.returncode == 1
    rows = {int(line.split()[0]): line for line in res.stdout.splitlines()[1:] if line[:5].strip().isdigit()}
    assert "failed" in rows[10] and "done" in rows[11] and "pending" in rows[12]
    assert "correct: results/logs/r0010/correct/S00001.log" in res.stdout
