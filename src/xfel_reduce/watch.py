"""``xfel-reduce watch``: reduce each run of a proposal once its files have arrived.

The DAQ writes a run's files into ``<proposal>/raw/rNNNN/`` while the run is taken and
for a while after (several aggregators, one sequence file after the other).  A run is
taken as complete when

* none of its files has changed size or modification time for ``stable_seconds``, and
* every HDF5 file opens and has its ``INDEX/trainId`` and ``METADATA`` (a file still
  being written, or cut short, does not).

Each complete run is then reduced once, by one snakemake invocation (Snakemake locks its
working directory, so invocations run one after the other), through the local or a
cluster profile.  The state — which runs were seen, triggered, done or failed, and the
log of each invocation — is kept in ``<results>/.xfel-reduce/watch.json`` so that a
restarted watch neither reduces a run twice nor forgets a failure.  Dark runs named in
the config are calibration inputs, not runs to reduce.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import yaml

from . import runner
from .config import validate_config
from .io.atomic import write_json
from .status import read_watch_state, watch_state_file

log = logging.getLogger("xfel_reduce.watch")

_RUN_DIR = re.compile(r"^r(\d{4})$")
Snapshot = dict[str, tuple[int, int]]


def snapshot(run_dir: Path) -> Snapshot:
    """``{file name: (size, mtime_ns)}`` of the run's HDF5 files."""
    out: Snapshot = {}
    for p in run_dir.glob("*.h5"):
        try:
            st = p.stat()
        except FileNotFoundError:  # renamed or removed while listing
            continue
        out[p.name] = (st.st_size, st.st_mtime_ns)
    return out


def unreadable_files(run_dir: Path) -> list[str]:
    """Files of the run that do not open as complete EuXFEL HDF5 files, with the reason."""
    bad = []
    for p in sorted(run_dir.glob("*.h5")):
        try:
            with h5py.File(p, "r") as f:
                missing = [k for k in ("INDEX/trainId", "METADATA") if k not in f]
        except OSError as exc:
            bad.append(f"{p.name} ({exc.__class__.__name__}: {str(exc)[:80]})")
            continue
        if missing:
            bad.append(f"{p.name} (no {', '.join(missing)})")
    return bad


@dataclass
class _Seen:
    snap: Snapshot
    since: float


class RunWatcher:
    """Poll a proposal's raw folder and reduce each new, complete run once.

    Parameters
    ----------
    config_path
        The user's config; ``runs`` in it give each run's technique.
    proposal_dir
        The proposal folder (holding ``raw/``); overrides ``proposal_dir`` of the config.
    workdir
        Where snakemake runs and the config's relative paths point from.
    stable_seconds
        How long no file of a run may have changed before it is taken as complete.
    technique
        Technique for runs the config does not list (``None``: such runs are skipped).
    profile, cores, extra
        As for :func:`xfel_reduce.runner.snakemake_command`.
    clock
        Monotonic clock (tests pass their own).
    """

    def __init__(self, config_path: Path, proposal_dir: Path, *, workdir: Path,
                 stable_seconds: float = 60.0, technique: str | None = None,
                 profile: str | None = None, cores: int | None = None,
                 extra: tuple[str, ...] = (), no_accounting: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = runner.load_config(config_path)
        self.workdir = Path(workdir).resolve()
        self.proposal = Path(proposal_dir).resolve()
        self.raw = self.proposal / "raw"
        if not self.raw.is_dir():
            raise runner.UsageError(f"{self.raw} does not exist: PROPOSAL_DIR is the proposal "
                                    "folder that holds raw/ (e.g. /gpfs/exfel/exp/SPB/202601/p002884)")
        results = Path(self.config["results_dir"])
        self.results = results if results.is_absolute() else self.workdir / results
        self.stable_seconds = float(stable_seconds)
        self.technique = technique
        self.profile, self.cores, self.extra = profile, cores, tuple(extra)
        self.no_accounting = no_accounting
        self.clock = clock
        cal = self.config["calibration"]
        self.dark_runs = {int(r) for r in cal.get("dark_runs", [])} | {
            int(r) for r in (cal.get("jungfrau") or {}).get("dark_runs", [])}
        self.techniques = {int(r["run"]): r for r in self.config["runs"]}
        self.state = read_watch_state(self.results)
        self._seen: dict[int, _Seen] = {}

    # -- state ---------------------------------------------------------------------
    def _save(self) -> None:
        write_json(watch_state_file(self.results),
                   {"proposal_dir": str(self.proposal),
                    "runs": {str(k): v for k, v in sorted(self.state.items())}})

    def _record(self, run: int, status: str, detail: str = "", **extra: str) -> None:
        rec = self.state.setdefault(run, {})
        changed = (rec.get("status"), rec.get("detail")) != (status, detail)
        rec.update(status=status, detail=detail, **extra)
        if changed:
            log.info("run %d: %s %s", run, status, detail)
            self._save()

    # -- one poll --------------------------------------------------------------------
    def poll_once(self) -> list[int]:
        """Look at every run folder once; reduce those that became complete.

        Returns the runs reduced in this poll.
        """
        reduced = []
        now = self.clock()
        for d in sorted(self.raw.iterdir()):
            m = _RUN_DIR.match(d.name)
            if not m or not d.is_dir():
                continue
            run = int(m.group(1))
            if run in self.dark_runs or self.state.get(run, {}).get("status") in (
                    "done", "failed", "skipped"):
                continue
            snap = snapshot(d)
            seen = self._seen.get(run)
            if seen is None or seen.snap != snap:
                self._seen[run] = seen = _Seen(snap, now)
            if not snap:
                continue
            quiet = now - seen.since
            if quiet < self.stable_seconds:
                self._record(run, "waiting", f"files still being written "
                             f"({len(snap)} files, unchanged for {quiet:.0f} s of {self.stable_seconds:.0f} s)")
                continue
            bad = unreadable_files(d)
            if bad:
                self._record(run, "waiting", f"files not complete: {'; '.join(bad[:3])}")
                continue
            technique = self._technique(run)
            if technique is None:
                self._record(run, "skipped", "not in the config's runs and no --technique given")
                continue
            self._reduce(run, technique)
            reduced.append(run)
        return reduced

    def _technique(self, run: int) -> str | None:
        if run in self.techniques:
            return self.techniques[run]["technique"]
        return self.technique

    def _reduce(self, run: int, technique: str) -> None:
        done = {r for r, rec in self.state.items() if rec.get("status") == "done"}
        runs = []
        for r in sorted(done | {run}):
            entry = dict(self.techniques.get(r, {"run": r}))
            entry["technique"] = technique if r == run else self._technique(r) or self.state[r]["technique"]
            runs.append(entry)
        cfg = validate_config({**self.config, "proposal_dir": str(self.proposal), "runs": runs,
                               "simulate": {**self.config.get("simulate", {}), "enabled": False}})
        cfg_path = self.results / ".xfel-reduce" / f"watch-config-r{run:04d}.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        log_file = runner.invocation_log(self.results, f"watch-r{run:04d}")
        self._record(run, "running", f"snakemake started, log {log_file}", technique=technique,
                     log=str(log_file))
        cmd = runner.snakemake_command(cfg_path, workdir=self.workdir, profile=self.profile,
                                       cores=self.cores, extra=self.extra,
                                       no_accounting=self.no_accounting)
        t0 = time.monotonic()
        rc = runner.run_workflow(cmd, log_file, echo=False)
        took = f"{time.monotonic() - t0:.0f} s"
        if rc == 0:
            self._record(run, "done", f"reduced in {took}", log=str(log_file))
        else:
            self._record(run, "failed", f"snakemake exit code {rc} after {took}; see the log",
                         log=str(log_file))

    def run_forever(self, poll_seconds: float = 30.0, max_polls: int | None = None) -> None:
        """Poll until interrupted (or ``max_polls`` polls)."""
        n = 0
        while max_polls is None or n < max_polls:
            self.poll_once()
            n += 1
            time.sleep(poll_seconds)
