"""End to end against the I/O limit, in one process run: the one pass vs the raw read rate.

Simulates (in a subprocess, so this process's peak memory is the reduction's) a
beamtime of ``--modules`` AGIPD modules with an SPI, an XPCS and a SAXS run, takes the
darks, then per run measures here, in this process:

* the rate at which one core reads the run's RAW module files with h5py
  (``image.data`` of every module, module frames per second);
* the whole reduction of the run with the library steps the workflow runs — per
  sequence the one pass (:func:`xfel_reduce.onepass.reduce_sequence`: RAW read once,
  corrected in memory, annotation + technique), per run the hit thresholds, the
  annotation files, the aggregate, the technique's gather and, for SPI, the kept
  frames (their second, partial read) — as module frames per wall second and per
  CPU second (all threads: the reader thread overlaps reads with compute; numba
  is limited to one thread), and its ratio to the read rate; "loop" is the one
  pass from its first chunk on (its steady state: without imports, numba cache
  loads, constants and engines, which every sequence job pays once);
* the bytes written for the run over its RAW bytes;
* for comparison, the two-step path it replaces (RAW → CORR files → annotation from
  CORR) on the run's first sequence.

Issue 14's targets: end to end ≥ 0.3× (goal 0.5×) the read rate; bytes written
≤ 0.2× RAW for SAXS and XPCS runs.

    python benchmarks/bench_end_to_end.py [--modules 4] [--trains 40] [--workdir /tmp/e2e] [--keep]

Disk: about 1 GB per module and 100 trains of RAW, removed afterwards unless ``--keep``.
The files are read warm (just written: page cache), which is the I/O limit of the
machine's memory, not of a disk.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNS = {10: "spi", 12: "xpcs", 13: "saxs"}


def make_config(work: Path, modules: int, trains: int) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["proposal_dir"] = str(work / "p900001")
    cfg["results_dir"] = str(work / "results")
    cfg["modules"] = modules
    cfg["calibration"]["gain_constants"] = str(work / "p900001" / "calib" / "agipd_gain_constants.h5")
    cfg["simulate"]["modules"] = modules
    sim_runs = [r for r in cfg["simulate"]["runs"] if r["run"] in RUNS]
    for r in sim_runs:
        r["trains"] = trains
        r["trains_per_sequence"] = trains // 2
    cfg["simulate"]["runs"] = sim_runs
    cfg["runs"] = [e for e in cfg["runs"] if int(e["run"]) in RUNS]
    return cfg


def simulate(cfg: dict, cfg_path: Path) -> None:
    """Detector, darks and runs, written by a subprocess."""
    code = (
        "import sys, yaml\n"
        "from xfel_reduce import steps\n"
        "cfg = yaml.safe_load(open(sys.argv[1]))\n"
        "steps.simulate_detector(cfg)\n"
        "for r in cfg['calibration']['dark_runs'] + [int(x['run']) for x in cfg['simulate']['runs']]:\n"
        "    steps.simulate_run(cfg, r)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(cfg_path)], check=True, cwd=REPO)


def read_rate(raw_files: list[Path], repeat: int = 3) -> tuple[float, int]:
    """(module frames per second, module frames) reading ``image.data`` of every module
    file; the best of ``repeat`` reads (the first warms the page cache)."""
    reads = [_read_once(raw_files) for _ in range(repeat)]
    return max(rate for rate, _ in reads), reads[0][1]


def _read_once(raw_files: list[Path]) -> tuple[float, int]:
    frames = 0
    t0 = time.perf_counter()
    for p in raw_files:
        with h5py.File(p, "r") as f:
            for name in f["INSTRUMENT"]:
                for ch in f["INSTRUMENT"][name]["DET"]:
                    ds = f["INSTRUMENT"][name]["DET"][ch]["image"]["data"]
                    buf = np.empty(ds.shape, ds.dtype)
                    ds.read_direct(buf)
                    frames += ds.shape[0]
    return frames / (time.perf_counter() - t0), frames


class Clock:
    """Wall and CPU (all threads) seconds of a block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def reduce_run(cfg: dict, run: int, technique: str) -> dict:
    """The run's reduction with the workflow's library steps; timings and bytes."""
    from xfel_reduce import onepass, steps, techniques
    from xfel_reduce.config import modules_of
    from xfel_reduce.io import sources
    from xfel_reduce.io.trains import train_files
    from xfel_reduce.simulate.beamtime import iter_runs, run_plan

    res, pd = Path(cfg["results_dir"]), Path(cfg["proposal_dir"])
    mods = modules_of(cfg)
    rd = pd / "raw" / f"r{run:04d}"
    r = f"{run:04d}"
    consts = [res / "calibration" / "constants" / f"AGIPD{m:02d}.h5" for m in mods]
    n_seq = run_plan(cfg["simulate"], next(x for x in iter_runs(cfg["simulate"]) if int(x["run"]) == run))["n_sequences"]
    plugin = techniques.get(technique)
    tfiles = train_files(rd)
    partials, annots, seq_out = [], [], []
    loop_cpu = 0.0
    with Clock() as c_pass:
        for s in range(n_seq):
            raw = [rd / sources.raw_filename(run, m, s) for m in mods]
            outs = {k: Path(v[0]) for k, v in plugin.sequence_paths(res, run, [s]).items()}
            p = res / f"r{r}" / "partials" / f"S{s:05d}.h5"
            done = onepass.reduce_sequence(cfg, run, s, raw, tfiles, p, constants=consts, technique=technique,
                                           outputs=outs, static_mask_inputs=consts, raw_dir=rd)
            loop_cpu += done["loop_cpu_seconds"]
            partials.append(p)
            seq_out.append(outs)
    with Clock() as c_run:
        thr = res / f"r{r}" / "partials" / "hit_thresholds.h5"
        steps.hit_thresholds(cfg, partials, thr)
        for s, p in enumerate(partials):
            a = res / f"r{r}" / "annotation" / f"REDU-R{r}-ANNOT-S{s:05d}.h5"
            steps.write_annotation(cfg, run, s, p, thr, a)
            annots.append(a)
        agg = res / f"r{r}" / "aggregate" / "run.h5"
        steps.aggregate_run(cfg, run, partials, annots, agg, technique=technique)
        if plugin.run_files:
            inputs = {k: [o[k] for o in seq_out] for k in plugin.sequence_files}
            inputs.update(static_mask=consts, train=tfiles)
            plugin.gather(cfg, run, inputs, {k: Path(v) for k, v in plugin.run_paths(res, run).items()})
        if technique in ("spi", "sfx"):
            for s in range(n_seq):
                raw = [rd / sources.raw_filename(run, m, s) for m in mods]
                steps.kept_frames(cfg, run, s, technique, raw, agg, res / f"r{r}" / "kept", constants=consts)
    raw_det = sorted(rd.glob("RAW-*-AGIPD[0-9][0-9]-S*.h5"))
    raw_bytes = sum(p.stat().st_size for p in rd.glob("*.h5"))
    written = sum(p.stat().st_size for p in (res / f"r{r}").rglob("*") if p.is_file())
    return {"pass_wall": c_pass.wall, "pass_cpu": c_pass.cpu, "loop_cpu": loop_cpu, "run_wall": c_run.wall, "run_cpu": c_run.cpu,
            "raw_files": raw_det, "raw_bytes": raw_bytes, "written": written, "n_seq": n_seq}


def two_step(cfg: dict, run: int, work: Path) -> tuple[float, float, int]:
    """(CPU seconds, bytes written, module frames) of RAW → CORR → annotation for sequence 0."""
    from xfel_reduce import steps
    from xfel_reduce.config import modules_of
    from xfel_reduce.io import sources
    from xfel_reduce.io.trains import train_files

    res, pd = Path(cfg["results_dir"]), Path(cfg["proposal_dir"])
    rd = pd / "raw" / f"r{run:04d}"
    out = work / "two_step"
    corr = []
    with Clock() as c:
        for m in modules_of(cfg):
            dst = out / sources.corr_filename(run, m, 0)
            steps.correct_file(cfg, m, rd / sources.raw_filename(run, m, 0),
                               res / "calibration" / "constants" / f"AGIPD{m:02d}.h5", dst)
            corr.append(dst)
        steps.annotate_chunk(cfg, corr, train_files(rd), out / "S00000.h5")
    written = sum(p.stat().st_size for p in out.glob("*.h5"))
    frames = 0
    for p in corr:
        with h5py.File(p) as f:
            frames += sum(g["image/data"].shape[0] for g in _module_groups(f))
    shutil.rmtree(out)
    return c.cpu, written, frames


def _module_groups(f):
    for det in f["INSTRUMENT"].values():
        for kind in det.values():
            yield from kind.values()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", type=int, default=4)
    ap.add_argument("--trains", type=int, default=40, help="trains per run (2 sequences)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the simulated data and results")
    args = ap.parse_args()

    import numba

    from xfel_reduce import steps
    from xfel_reduce.config import modules_of

    numba.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xfel-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = make_config(work, args.modules, args.trains)
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    try:
        t0 = time.perf_counter()
        simulate(cfg, cfg_path)
        dark_dirs = [Path(cfg["proposal_dir"]) / "raw" / f"r{r:04d}" for r in cfg["calibration"]["dark_runs"]]
        for m in modules_of(cfg):
            steps.dark_module(cfg, m, dark_dirs,
                              Path(cfg["results_dir"]) / "calibration" / "constants" / f"AGIPD{m:02d}.h5")
        print(f"{args.modules} modules, {args.trains} trains per run; simulated and darks in "
              f"{time.perf_counter() - t0:.0f} s (not counted)\n")
        rows = {}
        hdr = (f"{'run':<6}{'technique':<11}{'read mf/s':>10}{'loop mf/cpu-s':>15}{'pass mf/cpu-s':>15}"
               f"{'e2e mf/cpu-s':>14}{'e2e mf/wall-s':>15}{'ratio (cpu)':>12}{'written/RAW':>13}")
        print(hdr)
        for run, tech in RUNS.items():
            # read first: the pass then finds the files as warm as the read did
            rd = Path(cfg["proposal_dir"]) / "raw" / f"r{run:04d}"
            rate, frames = read_rate(sorted(rd.glob("RAW-*-AGIPD[0-9][0-9]-S*.h5")))
            out = reduce_run(cfg, run, tech)
            cpu = out["pass_cpu"] + out["run_cpu"]
            wall = out["pass_wall"] + out["run_wall"]
            row = {"technique": tech, "read_mf_per_s": rate, "module_frames": frames,
                   "loop_mf_per_cpu_s": frames / out["loop_cpu"],
                   "pass_mf_per_cpu_s": frames / out["pass_cpu"], "e2e_mf_per_cpu_s": frames / cpu,
                   "e2e_mf_per_wall_s": frames / wall, "ratio_cpu": frames / cpu / rate,
                   "written_over_raw": out["written"] / out["raw_bytes"], "raw_bytes": out["raw_bytes"],
                   "sequences": out["n_seq"]}
            rows[run] = row
            print(f"r{run:04d} {tech:<11}{rate:>10.0f}{row['loop_mf_per_cpu_s']:>15.0f}"
                  f"{row['pass_mf_per_cpu_s']:>15.0f}{row['e2e_mf_per_cpu_s']:>14.0f}"
                  f"{row['e2e_mf_per_wall_s']:>15.0f}{row['ratio_cpu']:>12.3f}{row['written_over_raw']:>13.3f}")
        cpu2, written2, frames2 = two_step(cfg, 13, work)
        raw0 = sum(p.stat().st_size for p in (Path(cfg["proposal_dir"]) / "raw" / "r0013").glob("RAW-*AGIPD*-S00000.h5"))
        print(f"\ntwo-step path (RAW → CORR → annotation from CORR), r0013 S00000: {frames2 / cpu2:.0f} module "
              f"frames per CPU second, wrote {written2 / raw0:.2f}× its RAW bytes")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"this process (reduction only): peak RSS {peak:.0f} MB")
        (work / "bench_end_to_end.json").write_text(json.dumps(
            {"runs": rows, "two_step_mf_per_cpu_s": frames2 / cpu2, "two_step_written_over_raw": written2 / raw0,
             "peak_rss_mb": peak, "modules": args.modules, "trains": args.trains}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
