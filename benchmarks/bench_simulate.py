"""Benchmark: the simulator's Poisson sampler and raw-frame kernel vs numpy.

Times, in the same process on 1-Mpx frames (16 AGIPD modules):

* :func:`xfel_reduce.simulate.counter_rng.poisson` against ``Generator.poisson``
  on the same expected-count array (a weak, SPI-like background, mean 0.3);
* the raw AGIPD kernel (gain switching, offsets, polar-method noise) against a
  numpy reference that draws the noise with ``Generator.standard_normal``.

Prints frames/s, the ratios and the peak resident memory.

Usage::

    python benchmarks/bench_simulate.py [--frames 16] [--repeat 3]
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from xfel_reduce.simulate.counter_rng import poisson
from xfel_reduce.simulate.detector import make_module_truth, raw_frames


def best_of(fn, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def numpy_raw(truth, photons, cells, rng):
    """Reference: the same model with numpy arrays (no gain switching above stage 0)."""
    c = np.asarray(cells)
    a = truth.offset[0][c] + photons * truth.adu_per_photon[0][c] \
        + truth.noise[0][c] * rng.standard_normal(photons.shape, dtype=np.float32)
    d = truth.digital[0][c] + truth.params["digital_noise"] * rng.standard_normal(photons.shape, dtype=np.float32)
    return np.stack([np.clip(np.rint(a), 0, 16383), np.clip(np.rint(d), 0, 16383)], axis=1).astype(np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=16, help="1-Mpx frames")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.frames
    rng = np.random.default_rng(0)
    lam = rng.exponential(0.3, (n, 16, 512, 128)).astype(np.float32)
    poisson(rng, lam[:1])  # compile or load the numba cache outside the timing
    t_ours = best_of(lambda: poisson(rng, lam), args.repeat)
    t_np = best_of(lambda: rng.poisson(lam), args.repeat)
    print(f"Poisson   : {n / t_ours:8.1f} frames/s (counter-based, numba) "
          f"{n / t_np:8.1f} frames/s (numpy Generator.poisson)  ratio {t_np / t_ours:5.1f}x")

    truth = make_module_truth(0, 16, 1)
    photons = poisson(rng, lam[:, 0])  # one module, n frames
    cells = np.arange(n) % 16
    raw_frames(truth, photons[:1], cells[:1], rng)
    t_ours = best_of(lambda: raw_frames(truth, photons, cells, rng), args.repeat)
    t_np = best_of(lambda: numpy_raw(truth, photons, cells, rng), args.repeat)
    # per module frame: a 1-Mpx frame is 16 of them
    print(f"raw frames: {n / t_ours / 16:8.1f} frames/s (fused kernel)            "
          f"{n / t_np / 16:8.1f} frames/s (numpy reference)          ratio {t_np / t_ours:5.1f}x")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
