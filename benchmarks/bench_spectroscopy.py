"""Throughput of JUNGFRAU correction + XES projection against plain numpy.

Simulates a few trains of raw JUNGFRAU frames (16 memory cells, von Hamos pattern),
then times, on the same frames:

* xfel-reduce: the fused numba correction kernel (gain bits → offset → gain → mask)
  followed by the fused threshold + curvature-corrected projection kernel;
* reference: ``correct_reference_numpy`` followed by ``project_reference_numpy``.

Both must give the same spectra (checked).  Prints frames/s, the speed ratio and the
peak resident memory.  Usage: ``python benchmarks/bench_spectroscopy.py [trains]``.
"""
from __future__ import annotations

import resource
import sys
import time

import numpy as np

from xfel_reduce import spectroscopy as sp
from xfel_reduce.calibrate import jungfrau as jfc
from xfel_reduce.calibrate.correct import CorrectionConstants
from xfel_reduce.simulate import jungfrau as jfsim
from xfel_reduce.simulate.beam import BeamConfig, make_train_beam
from xfel_reduce.simulate.scene import SceneContext
from xfel_reduce.simulate.scenes.spectroscopy import SpectroscopyScene


def main(n_trains: int = 4, repeats: int = 2) -> dict:
    truth = jfsim.make_jungfrau_truth(1, 16, 5)
    consts = CorrectionConstants(truth.offset, np.broadcast_to(truth.adu_per_photon[:, None], truth.offset.shape),
                                 np.zeros(truth.offset.shape, np.uint32))
    ctx = SceneContext(jfsim._flat_module_positions(1.0), [1], 9.3, 16, 2.2e-7, 0.1, 5)
    scene = SpectroscopyScene(ctx)
    beam_cfg = BeamConfig(frames_per_train=16)
    rng = np.random.default_rng(0)
    cells = np.array(jfsim.jungfrau_settings({})["cell_order"], np.uint8)
    raws, gains = [], []
    for t in range(n_trains):
        beam, _, _ = make_train_beam(beam_cfg, t, 1000 + t, n_trains, rng)
        adc, gain, _ = jfsim.raw_frames(truth, scene.photons(beam)[:, 0], cells, rng)
        raws.append(adc)
        gains.append(gain)
    raw, gain = np.concatenate(raws), np.concatenate(gains)
    cell_ids = np.tile(cells, n_trains)
    cfg = sp.SpectroscopyConfig(roi=(140, 372, 0, 1024), photon_threshold=0.5)
    shifts = sp.row_shifts([0.02, 1e-4], np.arange(140, 372), 256.0)
    n = raw.shape[0]

    def fast():
        data, _, mask = jfc.correct_frames(raw, gain, cell_ids, consts)
        return sp.project(data, mask, cfg, shifts)[0]

    def ref():
        data, _, mask = jfc.correct_reference_numpy(raw, gain, cell_ids, consts)
        return sp.project_reference_numpy(data, mask, cfg, shifts)[0]

    fast()  # compile / warm caches
    t_fast = min(_timed(fast) for _ in range(repeats))
    t_ref = min(_timed(ref) for _ in range(repeats))
    np.testing.assert_allclose(fast(), ref(), rtol=1e-4, atol=1e-3)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"frames": n, "fast_fps": n / t_fast, "numpy_fps": n / t_ref, "speedup": t_ref / t_fast,
           "peak_rss_mb": peak_mb}
    print(f"JUNGFRAU correction + projection, {n} frames of 512x1024 (ROI 232x1024):")
    print(f"  xfel-reduce (numba): {out['fast_fps']:8.1f} frames/s")
    print(f"  plain numpy        : {out['numpy_fps']:8.1f} frames/s")
    print(f"  ratio              : {out['speedup']:8.2f}x   peak RSS {peak_mb:.0f} MB")
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
