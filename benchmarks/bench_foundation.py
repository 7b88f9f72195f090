"""Throughput of AGIPD correction and annotation on 1-Mpx frames vs plain numpy.

Prints frames/s for the fused numba kernels and for the numpy references measured
in the same process, their ratio, and the peak memory of the process.

    python benchmarks/bench_foundation.py [--frames 64] [--repeat 3]
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from xfel_reduce.annotate import AnnotationConfig, frame_stats, frame_stats_reference_numpy
from xfel_reduce.calibrate.correct import CorrectionConstants, correct, correct_reference_numpy
from xfel_reduce.simulate.detector import make_module_truth, raw_frames


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=64, help="1-Mpx frames (16 modules each)")
    ap.add_argument("--cells", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    truth = make_module_truth(0, args.cells, 1)
    const = CorrectionConstants(truth.offset, truth.adu_per_photon, np.zeros(truth.offset.shape, np.uint32),
                                0.5 * (truth.digital[:-1] + truth.digital[1:]))
    rng = np.random.default_rng(0)
    n_mod_frames = args.frames * 16  # a 1-Mpx frame is 16 module frames
    cells = np.arange(n_mod_frames) % args.cells
    shape = (n_mod_frames, 512, 128)
    # Two photon mixes: "mixed" puts a third of all pixels at 150 photons (every row
    # holds medium- and low-gain pixels: the kernel's select path everywhere, its
    # worst case); "sparse" is scattering-like, 0.05 photon per pixel with 0.1 % of
    # the pixels bright (2000 photons) at random places (12 % of the rows leave the
    # high-gain-only fast path).
    sparse = rng.poisson(0.05, size=shape).astype(np.float32)
    sparse[rng.random(shape) < 1e-3] = 2000.0
    mixes = {"mixed": rng.poisson(rng.choice([0.05, 2.0, 150.0], size=shape)).astype(np.float32),
             "sparse": sparse}
    big = np.ones(256 * 2**20 // 4, np.float32)
    dst = np.empty_like(big)
    t_copy = best_of(lambda: np.copyto(dst, big), args.repeat)
    bw = 2 * big.nbytes / t_copy / 1e9
    for name, photons in mixes.items():
        raw, _ = raw_frames(truth, photons, cells, rng)
        correct(raw[:16], cells[:16], const)  # compile
        t_fast = best_of(lambda: correct(raw, cells, const), args.repeat)
        t_ref = best_of(lambda: correct_reference_numpy(raw, cells, const), args.repeat)
        print(f"correction ({name:6s}): {args.frames / t_fast:8.1f} frames/s (fused kernel)  "
              f"{args.frames / t_ref:8.1f} frames/s (numpy np.where reference)  ratio {t_ref / t_fast:5.1f}x")
        # Memory traffic of the kernel per pixel: analog + digital words in, the
        # high-gain threshold, offset, 1/gain and bad-pixel bits, then data, gain stage
        # and mask out; a row with any pixel past the first threshold is done again
        # with every stage's constants (second threshold, two more offsets, 1/gains,
        # bad-pixel words)
        n_pix = raw.shape[0] * 512 * 128
        redo = float(np.mean((raw[:, 1] >= const.thresholds[0][cells]).any(axis=2)))
        word = const.offset.itemsize
        per_pixel = raw.itemsize * 2 + 4 * word + 4 + 1 + 4 + redo * (7 * word + 4 + 1 + 4)
        achieved = n_pix * per_pixel / t_fast / 1e9
        print(f"             {per_pixel:.1f} bytes moved per pixel ({redo:.0%} of the rows twice) -> "
              f"{achieved:5.1f} GB/s; numpy copy in this process {bw:5.1f} GB/s (read + write): "
              f"{achieved / bw:4.2f} of it")

    data, _, mask = correct(raw, cells, const)
    data = data.reshape(args.frames, 16, 512, 128)
    mask = mask.reshape(args.frames, 16, 512, 128)
    present = np.ones((args.frames, 16), bool)
    cfg = AnnotationConfig()
    frame_stats(data[:1], mask[:1], present[:1], cfg)  # compile
    t_fast = best_of(lambda: frame_stats(data, mask, present, cfg), args.repeat)
    t_ref = best_of(lambda: frame_stats_reference_numpy(data, mask, present, cfg), args.repeat)
    print(f"annotation : {args.frames / t_fast:8.1f} frames/s (fused kernel)  "
          f"{args.frames / t_ref:8.1f} frames/s (plain numpy pass)        ratio {t_ref / t_fast:5.1f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak:.0f} MiB (input {raw.nbytes / 2**20:.0f} MiB raw for {args.frames} frames)")


if __name__ == "__main__":
    main()
