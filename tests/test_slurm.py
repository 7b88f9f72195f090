"""End-to-end runs of the workflow through a real single-node SLURM cluster.

The cluster (munged + slurmctld + slurmd, no accounting database) is brought
up by :mod:`slurm_cluster` and torn down by PID.  These tests never skip: if
SLURM is not installed they fail and say how to install it (CI installs it
with ``.ci/slurm-deps.sh``).

What is checked against the real scheduler:

* every workflow job reaches SLURM through ``sbatch`` (slurmctld logs one
  ``_slurm_rpc_submit_batch_job`` per submission) and completes there;
* job grouping packs the per-sequence jobs into fewer submissions;
* outputs are identical to a local run of the same workflow;
* a corrupt input sequence fails only its own job group, is reported with
  the SLURM log path, is retried with more memory, and every other job of the
  run still completes (``keep-going`` in the profile);
* after the bad input is replaced, the next invocation finishes the run with
  results identical to an uninterrupted local run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import (
    SlurmCluster,
    output_digest,
    slurm_cluster_fixture,
    snakemake_cmd,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

slurm = slurm_cluster_fixture(scope="module")

# Two runs, three (module, sequence) chains; run 2's chain is corrupt in the
# failure scenario.  `chunk=2` packs two chains per SLURM job: the failing
# group may take one run-1 chain with it, never more (blast radius = group).
RUNS = {1: {"modules": 1, "sequences": 2}, 2: {"modules": 1, "sequences": 1}}
CHUNK = 2
CORRUPT = "2/0/0"
CORRUPT_FILE = "raw/r0002/RAW-R0002-AGIPD00-S00000.npy"
N_CHAIN_RULES = 3  # simulate -> calibrate -> saxs_chunk per (run, module, seq)
N_RUN_RULES = 2  # aggregate -> report per run
SNAKEMAKE_TIMEOUT_S = 1800  # generous: CI runners may be slow; the demo takes ~6 min


def _write_config(path: Path, corrupt: list[str]) -> Path:
    path.write_text(yaml.safe_dump({
        "runs": RUNS, "frames": 4, "saxs": {"nbins": 8}, "corrupt": corrupt,
    }))
    return path


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=SNAKEMAKE_TIMEOUT_S)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Output digest of an uninterrupted local run without corrupt input."""
    wd = tmp_path_factory.mktemp("local")
    cfg = _write_config(wd / "config.yaml", corrupt=[])
    res = _run(snakemake_cmd(wd, cfg), cwd=wd)
    assert res.returncode == 0, res.stderr[-4000:]
    digest = output_digest(wd)
    n_chains = sum(r["modules"] * r["sequences"] for r in RUNS.values())
    # 3 files per chain (raw, proc, partial) + iq.json and report.json per run.
    assert len(digest) == 3 * n_chains + 2 * len(RUNS)
    return digest


def test_slurm_profile_end_to_end(slurm: SlurmCluster, local_reference: dict[str, str],
                                  tmp_path: Path) -> None:
    """--profile slurm: sbatch submissions, grouping, failure isolation, resume."""
    wd = tmp_path / "slurm"
    cfg = _write_config(tmp_path / "config.yaml", corrupt=[CORRUPT])
    extra = ("--group-components", f"chunk={CHUNK}", "--retries", "1",
             "--latency-wait", "5", *slurm.group_caps())

    t0 = time.monotonic()
    first = _run(snakemake_cmd(wd, cfg, *extra, slurm=True), cwd=wd, env=slurm.env())
    t_first = time.monotonic() - t0
    log = first.stdout + first.stderr

    # -- the corrupt sequence fails its group, reported with its SLURM log ----
    assert first.returncode != 0, "a corrupt input must make the invocation fail"
    logs = sorted(set(re.findall(r"(\S*logs/slurm/\S+?\.log)", log)))
    assert logs, f"no SLURM log path reported:\n{log[-4000:]}"
    failed_logs = [Path(p) if Path(p).is_absolute() else wd / p for p in logs]
    failed_text = "".join(p.read_text(errors="replace") for p in failed_logs if p.exists())
    assert f"corrupt raw sequence file {CORRUPT_FILE}" in failed_text

    # -- every job went through sbatch and the run-1 jobs completed -----------
    jobs = slurm.jobs()
    assert [int(j["id"]) for j in jobs] == slurm.submitted_job_ids(), (
        "squeue and the slurmctld submission log disagree")
    states = [j["state"] for j in jobs]
    assert "FAILED" in states and "COMPLETED" in states, jobs
    groups = [j for j in jobs if j["comment"].startswith("rule_chunk")]
    failed_groups = [j for j in groups if j["state"] == "FAILED"]
    # The failing group is submitted twice (retries: 1) with memory doubled.
    assert len(failed_groups) == 2, jobs
    mem = [int(slurm.run("squeue", "--states=all", "--noheader", "--format=%m",
                         "--jobs", j["id"]).strip().rstrip("M"))
           for j in failed_groups]
    assert mem[1] == 2 * mem[0], f"retry did not double memory: {mem}"

    # Nothing partial or corrupt survives: every file left on disk is
    # identical to the local run, and only the failing group's chains are
    # missing.  Run 1's gather ran iff none of its chains shared that group.
    digest = output_digest(wd)
    assert {k: local_reference.get(k) for k in digest} == digest
    chains = {k for k in local_reference if k.startswith("results/") and "partial" in k}
    missing = chains - set(digest)
    assert 1 <= len(missing) <= CHUNK, f"failure spread beyond its group: {missing}"
    assert "results/r0002/report.json" not in digest
    run1_hit = any("r0001" in k for k in missing)
    assert ("results/r0001/report.json" in digest) == (not run1_hit)
    completed = [j for j in jobs if j["state"] == "COMPLETED"]
    n_groups = -(-sum(r["modules"] * r["sequences"] for r in RUNS.values()) // CHUNK)
    # One submission per group + aggregate & report per completed run, far
    # fewer than the number of jobs (3 per chain + 2 per run).
    assert len(completed) == (n_groups - 1) + (0 if run1_hit else N_RUN_RULES), jobs

    # -- replace the bad file: the next invocation completes the run ----------
    cfg_fixed = _write_config(tmp_path / "config_fixed.yaml", corrupt=[])
    bad = wd / CORRUPT_FILE
    if bad.exists():
        bad.unlink()  # the operator re-transfers the sequence
    n_before = len(slurm.submitted_job_ids())
    t0 = time.monotonic()
    second = _run(snakemake_cmd(wd, cfg_fixed, *extra, slurm=True), cwd=wd, env=slurm.env())
    t_second = time.monotonic() - t0
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert output_digest(wd) == local_reference, "SLURM results differ from the local run"
    new_jobs = [j for j in slurm.jobs() if int(j["id"]) > n_before]
    assert new_jobs and all(j["state"] == "COMPLETED" for j in new_jobs), new_jobs
    # Only what failed is resubmitted: the failed group and the gathers of
    # the runs it touched.
    assert len(new_jobs) == 1 + N_RUN_RULES * (2 if run1_hit else 1), new_jobs

    print(f"\nSLURM cluster up in {slurm.startup_seconds:.1f} s; first invocation "
          f"{t_first:.0f} s ({len(jobs)} sbatch submissions, {len(missing)} "
          f"chains lost with the failing group), resume {t_second:.0f} s "
          f"({len(new_jobs)} submissions).")


def _demo_config(tmp: Path) -> Path:
    """The default config (the demo beamtime: all techniques) redirected to tmp, with the
    SPI, SFX, XPCS and SAXS runs and the darks at half their trains and the delay scan
    at half its trains per step."""
    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    cfg["proposal_dir"] = str(tmp / "p900001")
    cfg["results_dir"] = str(tmp / "results")
    # Fewer trains in the SPI, SFX, XPCS and SAXS runs (same sequences per run, so the DAG,
    # rules and groups are those of the default config): the test is about scheduling
    # and identical results, and the full demo twice took 25 min of the suite.
    for r in cfg["simulate"]["runs"]:
        if "delay_scan" in r:  # a delay scan's trains are its steps: fewer per step
            r["delay_scan"]["trains_per_step"] = max(3, r["delay_scan"]["trains_per_step"] // 2)
        elif r.get("type") in ("spi", "sfx", "xpcs", "saxs"):
            n_seq = -(-r["trains"] // r["trains_per_sequence"])
            r["trains"] = max(n_seq, r["trains"] // 2)
            r["trains_per_sequence"] = -(-r["trains"] // n_seq)
    dark = cfg["simulate"]["dark"]
    dark["trains"] = max(8, dark["trains"] // 2)
    cal = cfg["calibration"]
    cal["gain_constants"] = str(tmp / "p900001" / "calib" / "agipd_gain_constants.h5")
    cal["jungfrau"]["gain_constants"] = str(tmp / "p900001" / "calib" / "jungfrau_gain_constants.h5")
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_default_config_on_slurm_matches_local(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The default config (SPI, SFX, XPCS, SAXS, spectroscopy at demo sizes, reports and
    index): every job through sbatch, grouped technique chunks included, results
    identical to a local run of the same config."""
    from slurm_cluster import REPO, results_digest

    snakefile = REPO / "Snakefile"
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    local_dir.mkdir()
    slurm_dir.mkdir()

    def cmd(d: Path, slurm_run: bool, *extra: str) -> list[str]:
        # Run from the repo root like a user does (configfile and scripts are
        # relative to it); all outputs go to the tmp dirs named in the config.
        base = snakemake_cmd(REPO, _demo_config(d), snakefile=snakefile, slurm=slurm_run)
        return base + ["--slurm-logdir", str(d / "slurm_logs")] * slurm_run + list(extra)

    try:
        t0 = time.monotonic()
        local = _run(cmd(local_dir, False), cwd=REPO)
        t_local = time.monotonic() - t0
        assert local.returncode == 0, local.stderr[-4000:]

        n_before = len(slurm.submitted_job_ids())
        t0 = time.monotonic()
        remote = _run(cmd(slurm_dir, True, *slurm.group_caps(), "--latency-wait", "5"),
                      cwd=REPO, env=slurm.env())
        t_slurm = time.monotonic() - t0
        log = remote.stdout + remote.stderr
        assert remote.returncode == 0, log[-4000:]

        new = [j for j in slurm.jobs() if int(j["id"]) > n_before]
        assert new and all(j["state"] == "COMPLETED" for j in new), new
        assert len(new) == len(slurm.submitted_job_ids()) - n_before
        n_jobs = int(re.search(r"^total\s+(\d+)", log, re.M).group(1))
        assert len(new) < n_jobs, "grouping should need fewer submissions than jobs"
        comments = " ".join(j["comment"] for j in new)
        for group in ("chunk", "technique_chunk", "technique_prepass", "kept", "annot"):
            assert f"group_{group}" in comments or f"rule_{group}" in comments, (group, new)

        a = results_digest(local_dir / "results")
        b = results_digest(slurm_dir / "results")
        assert a.keys() == b.keys()
        differ = sorted(k for k in a if a[k] != b[k])
        assert not differ, f"SLURM and local results differ: {differ}"
        for run in ("r0010", "r0011", "r0012", "r0013", "r0014", "r0015"):
            assert f"{run}/summary.json" in a
        assert "r0015/reports/binning.verdict.json" in a and "r0015/saxs/saxs_binned.h5" in a
        assert results_digest(local_dir / "p900001") == results_digest(slurm_dir / "p900001")
        print(f"\ndefault config: {n_jobs} jobs, {len(new)} sbatch submissions; "
              f"local {t_local:.0f} s, SLURM {t_slurm:.0f} s")
    finally:
        # the demo writes many GB per copy; pytest would keep them in its basetemp
        shutil.rmtree(tmp_path, ignore_errors=True)
