"""Resume after interruption and selective reruns of the workflow.

Runs the scatter/gather smoke workflow (tests/data/slurm_smoke) locally with
the repository's workflow profile (profiles/default) and checks that

* after SIGTERM of Snakemake, SIGKILL of one job, or SIGKILL of Snakemake and
  its jobs (a crashed login node), the next invocation finishes with outputs
  identical to an uninterrupted run, and a half-written output is never taken
  as complete;
* ``--forcerun <rule>`` for one run's target reruns only that run's job of the
  rule and what depends on it;
* a changed SAXS binning in the config reruns only the SAXS jobs, the gather
  and the report (``rerun-triggers: params`` in the profile), never the
  simulation or calibration.

The same profile settings govern SLURM runs (tests/test_slurm.py covers resume
after a failed SLURM job).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import output_digest, snakemake_cmd

pytestmark = pytest.mark.slow

RUNS = {1: {"modules": 1, "sequences": 2}, 2: {"modules": 1, "sequences": 1}}
TIMEOUT_S = 600  # per Snakemake invocation; typically seconds
DELAY_S = 60  # calibrate pauses this long half-way through writing


def _config(path: Path, nbins: int = 8, delay_s: float = 0.0) -> Path:
    path.write_text(yaml.safe_dump(
        {"runs": RUNS, "frames": 4, "saxs": {"nbins": nbins}, "delay_s": delay_s}))
    return path


def _snakemake(wd: Path, cfg: Path, *extra: str) -> subprocess.CompletedProcess:
    res = subprocess.run(snakemake_cmd(wd, cfg, *extra), cwd=wd, capture_output=True,
                         text=True, timeout=TIMEOUT_S)
    return res


def _ok(res: subprocess.CompletedProcess) -> str:
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    return log


def _mtimes(wd: Path) -> dict[str, int]:
    return {str(p.relative_to(wd)): p.stat().st_mtime_ns
            for sub in ("raw", "proc", "results") for p in (wd / sub).rglob("*")
            if p.is_file()}


def _job_counts(dry_run_log: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    counts: dict[str, int] = {}
    table = dry_run_log.split("Job stats:", 1)[-1]
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def _descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _start_until_partial(wd: Path, cfg: Path) -> tuple[subprocess.Popen, Path]:
    """Start Snakemake and wait until calibrate has half-written an output."""
    proc = subprocess.Popen(snakemake_cmd(wd, cfg), cwd=wd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        partial = [p for p in (wd / "proc").rglob("*.npy") if p.stat().st_size > 0]
        if partial:
            return proc, partial[0]
        if proc.poll() is not None:
            raise AssertionError("workflow ended before calibrate started:\n"
                                 + proc.stdout.read()[-4000:])
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("calibrate never started writing")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Digest of an uninterrupted run."""
    wd = tmp_path_factory.mktemp("reference")
    _ok(_snakemake(wd, _config(wd / "config.yaml")))
    digest = output_digest(wd)
    assert len(digest) == 3 * 3 + 2 * 2  # 3 chains x (raw, proc, partial) + 2 per run
    return digest


def _assert_partial_not_trusted(wd: Path, partial: Path, reference: dict[str, str]) -> None:
    """A half-written output is gone, or still flagged incomplete by Snakemake."""
    rel = str(partial.relative_to(wd))
    if partial.exists() and output_digest(wd).get(rel) != reference[rel]:
        dry = _snakemake(wd, _config(wd / "config.yaml"), "--dry-run")
        log = _ok(dry)
        assert "Incomplete output files" in log or "incomplete" in log.lower(), (
            f"{rel} is truncated but Snakemake would trust it:\n{log[-3000:]}")


def test_resume_after_sigterm(tmp_path: Path, reference: dict[str, str]) -> None:
    """SIGTERM to Snakemake mid-write; the rerun completes identically."""
    proc, partial = _start_until_partial(tmp_path, _config(tmp_path / "slow.yaml",
                                                           delay_s=DELAY_S))
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode != 0, out[-3000:]
    # Snakemake's own job processes must be gone with it.
    time.sleep(1)
    assert not [p for p in _descendants(proc.pid)], "jobs survived SIGTERM"
    _assert_partial_not_trusted(tmp_path, partial, reference)
    _ok(_snakemake(tmp_path, _config(tmp_path / "config.yaml")))
    assert output_digest(tmp_path) == reference


def test_resume_after_job_sigkill(tmp_path: Path, reference: dict[str, str]) -> None:
    """SIGKILL of one job mid-write (OOM killer): that job fails, rerun is clean."""
    proc, partial = _start_until_partial(tmp_path, _config(tmp_path / "slow.yaml",
                                                           delay_s=DELAY_S))
    jobs = [p for p in _descendants(proc.pid) if "steps.py" in _cmdline(p)]
    assert jobs, "no running job process found"
    for pid in jobs:
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode != 0, "a killed job must fail the invocation"
    assert "Error in rule calibrate" in out, out[-3000:]
    _assert_partial_not_trusted(tmp_path, partial, reference)
    _ok(_snakemake(tmp_path, _config(tmp_path / "config.yaml")))
    assert output_digest(tmp_path) == reference


def test_resume_after_crash(tmp_path: Path, reference: dict[str, str]) -> None:
    """SIGKILL of Snakemake and its jobs (node crash): unlock, rerun, identical."""
    proc, partial = _start_until_partial(tmp_path, _config(tmp_path / "slow.yaml",
                                                           delay_s=DELAY_S))
    # The whole session we started: Snakemake gets no chance to clean up.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert partial.exists(), "the half-written file should survive a crash"
    rel = str(partial.relative_to(tmp_path))
    assert output_digest(tmp_path)[rel] != reference[rel], "file should be truncated"
    # Snakemake recorded the job as started but not finished ...
    marker = base64.b64encode(rel.encode()).decode()
    assert marker in os.listdir(tmp_path / ".snakemake" / "incomplete")
    # ... so the next invocation schedules it again (rerun-incomplete in the
    # profile) instead of trusting the truncated file.
    cfg = _config(tmp_path / "config.yaml")
    dry = _ok(_snakemake(tmp_path, cfg, "--dry-run"))
    m = re.search(rf"output: {re.escape(rel)}\n\s+jobid: \d+\n\s+reason: ([^\n]+)", dry)
    assert m, f"truncated {rel} not rescheduled:\n{dry[-3000:]}"
    assert "Forced" in m.group(1) or "ncomplete" in m.group(1), m.group(1)
    res = _snakemake(tmp_path, cfg)
    if res.returncode != 0:
        # The crashed instance left its lock: documented recovery is --unlock.
        assert "unlock" in (res.stdout + res.stderr).lower(), (res.stdout + res.stderr)[-3000:]
        _ok(_snakemake(tmp_path, cfg, "--unlock"))
        _ok(_snakemake(tmp_path, cfg))
    assert output_digest(tmp_path) == reference


def test_selective_reruns(tmp_path: Path, reference: dict[str, str]) -> None:
    """--forcerun of one rule for one run; config change reruns only downstream."""
    cfg = _config(tmp_path / "config.yaml")
    _ok(_snakemake(tmp_path, cfg))
    assert output_digest(tmp_path) == reference
    assert _job_counts(_ok(_snakemake(tmp_path, cfg, "--dry-run"))) == {}, "not up to date"

    # 1. Force the gather of run 1 only: aggregate(r1) and report(r1) rerun.
    before = _mtimes(tmp_path)
    target = "results/r0001/report.json"
    dry = _ok(_snakemake(tmp_path, cfg, "--dry-run", "--forcerun", "aggregate", "--", target))
    assert _job_counts(dry) == {"aggregate": 1, "report": 1}, dry[-2000:]
    _ok(_snakemake(tmp_path, cfg, "--forcerun", "aggregate", "--", target))
    after = _mtimes(tmp_path)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"results/r0001/saxs/iq.json", target}
    assert output_digest(tmp_path) == reference

    # 2. New SAXS binning: SAXS partials, gathers and reports rerun; the
    #    simulated raw data and the calibration are untouched.
    before = after
    cfg12 = _config(tmp_path / "config12.yaml", nbins=12)
    dry = _ok(_snakemake(tmp_path, cfg12, "--dry-run"))
    assert _job_counts(dry) == {"saxs_chunk": 3, "aggregate": 2, "report": 2, "all": 1}, \
        dry[-2000:]
    _ok(_snakemake(tmp_path, cfg12))
    after = _mtimes(tmp_path)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {k for k in after if k.startswith("results/")}
    for run in (1, 2):
        with open(tmp_path / f"results/r{run:04d}/report.json") as f:
            assert yaml.safe_load(f)["nbins"] == 12
