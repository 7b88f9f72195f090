"""Which runs of a proposal are done, failed (with the log to read) or pending.

Sources, in this order of trust:

* the run's products: ``summary.json`` and its report verdicts exist → done;
* the logs of the snakemake invocations that ``xfel-reduce run`` and ``watch`` keep in
  ``<results>/logs/xfel-reduce/``: Snakemake names every failed job there with its
  rule, wildcards and ``log:`` file → failed, with that log path;
* the watch state (``<results>/.xfel-reduce/watch.json``): runs waiting for their
  files to settle, running, skipped (no technique), or failed as a whole.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

#: Where the CLI keeps its own bookkeeping below the results directory.
STATE_DIR = ".xfel-reduce"
INVOCATION_LOG_DIR = Path("logs") / "xfel-reduce"

_ERROR_BLOCK = re.compile(r"^Error in rule (\S+?):\s*$", re.M)
_FIELD = re.compile(r"^\s+(\w+):\s*(.*)$")


@dataclass
class RunStatus:
    """One run's state as ``xfel-reduce status`` shows it."""

    run: int
    technique: str | None
    status: str  # done | failed | running | waiting | skipped | pending
    detail: str = ""
    logs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def watch_state_file(results: Path) -> Path:
    return Path(results) / STATE_DIR / "watch.json"


def read_watch_state(results: Path) -> dict[int, dict[str, Any]]:
    """The watch state, ``{run: record}`` (empty when watch never ran)."""
    path = watch_state_file(results)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {int(k): v for k, v in data.get("runs", {}).items()}


def failed_jobs(log_text: str) -> dict[int, list[tuple[str, str]]]:
    """``{run: [(rule, job log path), ...]}`` of the jobs a snakemake log reports failed."""
    out: dict[int, list[tuple[str, str]]] = {}
    for m in _ERROR_BLOCK.finditer(log_text):
        fields: dict[str, str] = {}
        for line in log_text[m.end():].splitlines()[1:40]:
            f = _FIELD.match(line)
            if not f:
                break
            fields[f.group(1)] = f.group(2)
        run = re.search(r"\brun=(\d+)", fields.get("wildcards", ""))
        if not run:
            continue
        log = fields.get("log", "").split(" (check", 1)[0].strip()
        out.setdefault(int(run.group(1)), []).append((m.group(1), log))
    return out


def latest_failures(results: Path) -> dict[int, tuple[str, list[str]]]:
    """Per run, the newest invocation log that mentions it failing, and its job logs.

    A run that failed in an older invocation and has been rerun since (its summary
    exists) is not failed; the caller checks products first.
    """
    found: dict[int, tuple[str, list[str]]] = {}
    logs = sorted((Path(results) / INVOCATION_LOG_DIR).glob("*.log"),
                  key=lambda p: p.stat().st_mtime)
    for path in logs:  # oldest first: newer invocations overwrite
        for run, jobs in failed_jobs(path.read_text(errors="replace")).items():
            found[run] = (str(path), [f"{rule}: {log}" if log else rule for rule, log in jobs])
    return found


def run_status(config: dict, workdir: Path, runs: Iterable[int] | None = None) -> list[RunStatus]:
    """Status of the config's runs and of every run the watch has seen.

    Parameters
    ----------
    config
        The validated workflow config (``results_dir``, ``runs``).
    workdir
        Directory the config's relative paths are relative to.
    runs
        Restrict to these runs.
    """
    results = Path(config["results_dir"])
    results = results if results.is_absolute() else Path(workdir) / results
    techniques = {int(r["run"]): r.get("technique") for r in config.get("runs", [])}
    watch = read_watch_state(results)
    failures = latest_failures(results)
    wanted = sorted(set(techniques) | set(watch)) if runs is None else sorted(set(runs))
    out = []
    for run in wanted:
        rec = watch.get(run, {})
        technique = techniques.get(run, rec.get("technique"))
        rdir = results / f"r{run:04d}"
        summary = rdir / "summary.json"
        if summary.is_file():
            missing = [p.name for p in (rdir / "reports").glob("*.html")
                       if not p.with_suffix("").with_suffix(".verdict.json").exists()]
            detail = "summary and reports written" if not missing else f"reports without verdict: {missing}"
            out.append(RunStatus(run, technique, "done", detail))
        elif rec.get("status") == "running":
            out.append(RunStatus(run, technique, "running", rec.get("detail", ""), [rec.get("log", "")]))
        elif run in failures:
            inv, jobs = failures[run]
            out.append(RunStatus(run, technique, "failed", f"snakemake log {inv}", jobs))
        elif rec.get("status") == "failed":
            out.append(RunStatus(run, technique, "failed", rec.get("detail", ""), [rec.get("log", "")]))
        elif rec.get("status") in ("waiting", "skipped"):
            out.append(RunStatus(run, technique, rec["status"], rec.get("detail", "")))
        else:
            out.append(RunStatus(run, technique, "pending", "not reduced yet"))
    return out


def format_status(rows: list[RunStatus]) -> str:
    """A plain-text table, one line per run, job logs indented below failed runs."""
    if not rows:
        return "no runs in the config and none seen by watch"
    lines = [f"{'run':>5}  {'technique':<13} {'status':<8} detail"]
    for r in rows:
        lines.append(f"{r.run:>5}  {r.technique or '-':<13} {r.status:<8} {r.detail}")
        lines.extend(f"{'':>30}{log}" for log in r.logs if log and r.status == "failed")
    return "\n".join(lines)
