"""End to end against the I/O limit: a reduced run's job times vs the raw read rate.

For each run of a reduced beamtime (default: the demo's SPI, XPCS and SAXS runs) this
prints, measured now in this process, the rate at which one core reads the run's RAW
module files with h5py (module frames per second), and, from the run's ``benchmark:``
records, the workflow's module frames per core-second over the per-sequence chain
(correct, annotate, annotation, technique chunks, kept frames; every such job is
single-threaded), their ratio, the bytes the workflow wrote for the run (CORR files
and the run's results) over the RAW bytes, and the largest job's peak RSS.

Issue 14's targets: end to end ≥ 0.3× (goal 0.5×) the read rate; bytes written
≤ 0.2× RAW for SAXS and XPCS runs.  Run after ``./run.sh demo``:

    python benchmarks/bench_end_to_end.py [--results results] [--proposal data/p900001] [--runs 10 12 13]

The read is cold for files not in the page cache (drop caches to measure the disk).
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import h5py
import numpy as np

#: Per-sequence job records (benchmarks/rNNNN/<step>/SNNNNN.tsv) counted as the chain.
CHAIN_STEPS = ("correct", "annotate", "annotation", "saxs", "xpcs", "sfx", "kept", "spectroscopy")


def read_rate(raw_files: list[Path]) -> tuple[float, int, float]:
    """(module frames per second, module frames, MB) reading ``image.data`` of every module file."""
    frames = 0
    nbytes = 0
    t0 = time.perf_counter()
    for p in raw_files:
        with h5py.File(p, "r") as f:
            for name in f["INSTRUMENT"]:
                det = f["INSTRUMENT"][name]
                for ch in det["DET"]:
                    ds = det["DET"][ch]["image"]["data"]
                    buf = np.empty(ds.shape, ds.dtype)
                    ds.read_direct(buf)
                    frames += ds.shape[0]
                    nbytes += buf.nbytes
    dt = time.perf_counter() - t0
    return frames / dt, frames, nbytes / 1e6


def chain_seconds(bench_dir: Path) -> tuple[float, float, int]:
    """(summed seconds, max RSS MB, jobs) of the run's per-sequence jobs."""
    total, rss, n = 0.0, 0.0, 0
    for step in CHAIN_STEPS:
        for tsv in sorted((bench_dir / step).glob("S*.tsv")):
            lines = tsv.read_text().splitlines()
            row = dict(zip(lines[0].split("\t"), lines[1].split("\t")))
            total += float(row["s"])
            rss = max(rss, float(row["max_rss"]))
            n += 1
    return total, rss, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--proposal", type=Path, default=Path("data/p900001"))
    ap.add_argument("--runs", type=int, nargs="+", default=[10, 12, 13])
    args = ap.parse_args()
    print(f"{'run':<6}{'read mf/s':>11}{'e2e mf/core-s':>15}{'ratio':>8}{'written/RAW':>13}"
          f"{'jobs':>6}{'job s':>8}{'max RSS MB':>12}")
    for run in args.runs:
        r = f"r{run:04d}"
        raw_dir = args.proposal / "raw" / r
        det = sorted(raw_dir.glob("RAW-*-AGIPD[0-9][0-9]-S*.h5"))
        if not det:
            raise SystemExit(f"{raw_dir}: no AGIPD RAW files; run ./run.sh demo first")
        rate, frames, _ = read_rate(det)
        seconds, rss, n_jobs = chain_seconds(args.results / "benchmarks" / r)
        e2e = frames / seconds if seconds else float("nan")
        raw_bytes = sum(p.stat().st_size for p in raw_dir.glob("*.h5"))
        written = sum(p.stat().st_size for p in (args.results / "proc" / r).glob("*.h5"))
        written += sum(p.stat().st_size for p in (args.results / r).rglob("*") if p.is_file()
                       and "reports" not in p.parts)
        print(f"{r:<6}{rate:>11.0f}{e2e:>15.0f}{e2e / rate:>8.3f}{written / raw_bytes:>13.2f}"
              f"{n_jobs:>6}{seconds:>8.1f}{rss:>12.0f}")
    print(f"this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
