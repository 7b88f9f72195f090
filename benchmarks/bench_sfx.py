"""Benchmark: peakfinder8-class peak finding on 1-Mpx AGIPD frames vs OM's peakfinder8.

Simulates SFX frames of the full 16-module AGIPD 1M (water ring + Bragg spots, hit
fraction 50 % so both hits and blanks are timed), then times, on the same frames and
with the same parameters:

* OM's ``peakfinder_8`` (C++, single-threaded, called frame by frame as OM does),
* :class:`xfel_reduce.sfx.PeakFinder` with 1 thread (per-core comparison) and with
  all cores (numba threads over frames).

Prints frames/s, the ratios, the peak agreement and the peak resident memory.

Usage::

    python benchmarks/bench_sfx.py [--frames 48] [--repeat 2]
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import numba
import numpy as np

from xfel_reduce import geometry, sfx
from xfel_reduce.simulate.scene import SceneContext, TrainBeam
from xfel_reduce.simulate.scenes.sfx import SfxScene


def simulate(n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    geom = geometry.agipd_geometry()
    mods = list(range(16))
    ctx = SceneContext(positions=geometry.pixel_positions(geom, 0.15, mods), modules=mods,
                       photon_energy_kev=9.3, pulses_per_train=n_frames, pulse_spacing_s=2.2e-7,
                       train_spacing_s=0.1, seed=11, params={"hit_fraction": 0.5})
    beam = TrainBeam(0, 1, np.ones(n_frames, bool), np.zeros(n_frames, bool), np.full(n_frames, 1500.0))
    return SfxScene(ctx).photons(beam), sfx.radius_map_px(geom, mods)


def time_best(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    frames, radius = simulate(args.frames)
    rss_input = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sfx.PeakFinderParams()
    pf = sfx.PeakFinder(radius, params)
    pf.find(frames[:2])  # compile (or load the numba cache) outside the timing
    n = frames.shape[0]
    ncores = len(os.sched_getaffinity(0))

    numba.set_num_threads(1)
    t1 = time_best(lambda: pf.find(frames), args.repeat)
    numba.set_num_threads(ncores)
    tn = time_best(lambda: pf.find(frames), args.repeat)
    ours = pf.find(frames)
    rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"frames: {n} × 16 modules (1 Mpx), {ncores} cores available")
    print(f"xfel-reduce peakfinder, 1 thread : {n / t1:8.1f} frames/s")
    print(f"xfel-reduce peakfinder, {ncores} threads: {n / tn:8.1f} frames/s "
          f"(scaling {t1 / tn:.2f}× on {ncores} cores)")

    try:
        if not hasattr(np, "float_"):
            np.float_ = np.float64  # OM 23.8 still uses the removed alias
        from om.algorithms._crystallography import peakfinder_8
    except ImportError:
        print("OM (ondamonitor) not installed: no peer comparison")
    else:
        h, w = radius.shape[0] * 512, 128
        mask = pf.good.astype(np.int8)
        r2 = radius.reshape(h, w).astype(np.float32)
        data2 = frames.reshape(n, h, w)  # float32 already: a view, no copy

        def run_om():
            return [peakfinder_8(params.max_num_peaks, data2[i], mask, r2, 0, None, None, 0,
                                 128, 64, 1, h // 64, params.adc_threshold, params.min_snr,
                                 params.min_pix_count, params.max_pix_count, params.local_bg_radius)
                    for i in range(n)]

        t_om = time_best(run_om, args.repeat)
        om = run_om()
        n_om = sum(len(o[0]) for o in om)
        agree = 0
        for i, o in enumerate(om):
            p = ours.frame_peaks(i)
            mine = np.c_[p["fs"], p["ss"] + 512.0 * p["module"]]
            for x, y in zip(o[0], o[1]):
                if mine.size and np.min(np.hypot(mine[:, 0] - x, mine[:, 1] - y)) < 0.5:
                    agree += 1
        print(f"OM peakfinder8 (C++), 1 thread   : {n / t_om:8.1f} frames/s")
        print(f"ratio per core (ours / OM)        : {t_om / t1:8.2f}×")
        print(f"ratio all cores (ours / OM 1 core): {t_om / tn:8.2f}×")
        print(f"peaks: OM {n_om}, ours {int(ours.n_peaks.sum())}, OM peaks matched within 0.5 px: "
              f"{agree / max(n_om, 1):.1%}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss_input:.0f} MiB after simulation (input frames {frames.nbytes / 2**20:.0f} MiB), "
          f"{rss_ours:.0f} MiB after our peak finding (+{rss_ours - rss_input:.0f} MiB), {rss:.0f} MiB at the end")


if __name__ == "__main__":
    main()
