"""When did each stage of a workflow run finish?  Reads a Snakemake log.

Usage::

    python benchmarks/demo_timeline.py [.snakemake/log/<run>.snakemake.log]

Without an argument the newest log under ``.snakemake/log`` is used.  Prints,
per rule, the number of jobs and the time (from the first job's start) at which
its last job finished, then the time at which the *spine* — simulation,
calibration, annotation and aggregation of every run — was complete, and the
time of the last job.  The spine's rules run first (see ``PRIORITY_SPINE`` in
``workflow/rules/common.smk``), so that time is what a user waits before every
run is calibrated, annotated and aggregated.
"""
from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

#: Rules of the spine; ``simulate_rNNNN`` rules are matched by prefix.
SPINE = {"simulate_detector", "dark", "correct", "annotate_chunk", "hit_thresholds",
         "annotation", "aggregate", "jungfrau_dark", "jungfrau_correct", "sfx_chunk"}

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_FINISHED = re.compile(r"^Finished jobid: \d+ \(Rule: (\w+)\)")


def is_spine(rule: str) -> bool:
    return rule in SPINE or rule.startswith("simulate_")


def timeline(log: Path) -> tuple[datetime, list[tuple[datetime, str]]]:
    """First timestamp of the log and (time, rule) of every finished job."""
    start = None
    stamp = None
    done = []
    for line in log.read_text().splitlines():
        m = _STAMP.match(line.strip())
        if m:
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            start = start or stamp
            continue
        m = _FINISHED.match(line.strip())
        if m and stamp is not None:
            done.append((stamp, m.group(1)))
    if start is None:
        raise SystemExit(f"{log}: no timestamped jobs found; is it a Snakemake log?")
    return start, done


def main(argv: list[str]) -> None:
    if argv:
        log = Path(argv[0])
    else:
        logs = sorted(Path(".snakemake/log").glob("*.snakemake.log"))
        if not logs:
            raise SystemExit("no .snakemake/log/*.snakemake.log here: run the workflow first")
        log = logs[-1]
    start, done = timeline(log)
    last: dict[str, float] = {}
    count: dict[str, int] = {}
    for t, rule in done:
        key = "simulate_rNNNN" if rule.startswith("simulate_r") else rule
        last[key] = max(last.get(key, 0.0), (t - start).total_seconds())
        count[key] = count.get(key, 0) + 1
    print(f"{log}: {len(done)} jobs")
    print(f"{'rule':24s} {'jobs':>5s} {'last done [s]':>14s}")
    for rule, t in sorted(last.items(), key=lambda kv: kv[1]):
        print(f"{rule:24s} {count[rule]:5d} {t:14.0f}")
    spine = [(t - start).total_seconds() for t, r in done if is_spine(r)]
    if spine:
        print(f"spine (simulate -> calibrate -> annotate -> aggregate) complete after "
              f"{max(spine):.0f} s ({max(spine) / 60:.1f} min)")
    if done:
        end = max((t - start).total_seconds() for t, _ in done)
        print(f"last job finished after {end:.0f} s ({end / 60:.1f} min)")


if __name__ == "__main__":
    main(sys.argv[1:])
