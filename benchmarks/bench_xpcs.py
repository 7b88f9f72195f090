"""Benchmark xfel_reduce.xpcs against scikit-beam (same inputs, same run).

* multi-tau g2: 2048 frames × 16,384 pixels (128 × 128), 8 q-rings,
  ``num_levels=8, num_bufs=16`` — vs ``skbeam.core.correlation.multi_tau_auto_corr``.
* two-time: one 352-pulse train × 100,000 pixels, 8 rings —
  vs ``skbeam.core.correlation.two_time_corr`` (``num_bufs = 352``, one level).

Prints wall times, speed ratios (target ≥ 10×), the max |difference| (must be ≤ 1e-8)
and peak traced memory of each implementation.  ``--skbeam-frames N`` times
scikit-beam's two-time on the first N frames only and scales by the pair count
(N²), for quick runs on a busy machine; the default runs it in full.

Usage: ``python benchmarks/bench_xpcs.py [--skbeam-frames N]``
"""
from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from xfel_reduce import xpcs


def _timed(fn, *args):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak / 2**20


def _rings(shape, n_rings=8):
    y, x = np.indices(shape)
    r = np.hypot(y - shape[0] / 2, x - shape[1] / 2)
    edges = np.linspace(0.05, 0.98, n_rings + 1) * r.max() / np.sqrt(2)
    lab = np.searchsorted(edges, r, side="right")
    lab[(r < edges[0]) | (r >= edges[-1])] = 0
    return lab.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skbeam-frames", type=int, default=0)
    args = ap.parse_args()
    from skbeam.core import correlation as skb

    rng = np.random.default_rng(0)
    # --- multi-tau ---------------------------------------------------------------------
    frames = rng.poisson(0.5, size=(2048, 128, 128)).astype(np.float64)
    labels = _rings((128, 128))
    xpcs.multi_tau_g2(frames[:32], labels, 2, 16)  # compile the numba kernel first
    (g, lags), t_ours, m_ours = _timed(xpcs.multi_tau_g2, frames, labels, 8, 16)
    (g_ref, lags_ref), t_ref, m_ref = _timed(skb.multi_tau_auto_corr, 8, 16, labels, frames)
    diff = np.max(np.abs(g - g_ref))
    print(f"multi-tau 2048 frames x 16384 px: xfel_reduce {t_ours:.3f} s "
          f"(peak {m_ours:.0f} MiB), scikit-beam {t_ref:.3f} s (peak {m_ref:.0f} MiB), "
          f"ratio {t_ref / t_ours:.1f}x, max|diff| {diff:.1e}, lags equal "
          f"{np.array_equal(lags, lags_ref)}")
    del frames
    # --- two-time ----------------------------------------------------------------------
    n_px = 100_000
    shape = (250, 400)
    train = rng.poisson(0.3, size=(352,) + shape).astype(np.float64)
    labels = _rings(shape)
    assert labels.size == n_px
    c, t_ours, m_ours = _timed(xpcs.two_time, train, labels)
    n_ref = args.skbeam_frames or 352
    res, t_ref, m_ref = _timed(skb.two_time_corr, labels, train[:n_ref], n_ref, n_ref, 1)
    scale = (352 * 353) / (n_ref * (n_ref + 1))  # pairs computed by scikit-beam
    diff = np.max(np.abs(c[:, :n_ref, :n_ref] - res.g2))
    note = "" if n_ref == 352 else f" (scikit-beam timed on {n_ref} frames, scaled x{scale:.1f})"
    print(f"two-time 352 frames x {n_px} px: xfel_reduce {t_ours:.3f} s "
          f"(peak {m_ours:.0f} MiB), scikit-beam {t_ref * scale:.3f} s (peak {m_ref:.0f} MiB), "
          f"ratio {t_ref * scale / t_ours:.1f}x, max|diff| {diff:.1e}{note}")
    print(f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
