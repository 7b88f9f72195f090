"""Storage of kept frames: compression ratio and MB/s per filter, lossless and rounded.

Writes the same corrected module frames with each ``reduction.compression`` filter,
as stored and rounded to integer photons (``reduction.photon_rounding``), through the
kept-frames writer's own filter settings (:func:`xfel_reduce.kept.storage_filters`),
and prints bytes on disk / uncompressed bytes, write and read MB/s (uncompressed
bytes per second) and the peak memory of the process.

Frames: CORR frames of a reduced run when given (``--corr results/proc/r0010/CORR-…``),
else SPI-like frames: 0.01 photons/pixel background, a sphere speckle pattern in 10 %
of them, and 0.15-photon residual detector noise (what corrected AGIPD data carry).

    python benchmarks/bench_kept_storage.py [--frames 64] [--corr FILE]
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from xfel_reduce.kept import round_photons, storage_filters

SHAPE = (512, 128)


def synthetic(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    r = np.hypot(y - 256, x + 40) + 1.0
    speckle = (np.sin(r / 6.0) ** 2) / r ** 2
    speckle *= 5e4 / speckle.sum()
    lam = np.full((n,) + SHAPE, 0.01)
    lam[::10] += speckle
    data = (rng.poisson(lam) + rng.normal(0, 0.15, lam.shape)).astype(np.float32)
    mask = np.zeros(data.shape, np.uint32)
    mask[:, :, :2] = 1 << 3          # an edge column flagged, as bad pixels are
    mask[:, rng.integers(0, 512, 40), rng.integers(0, 128, 40)] = 1 << 0
    return data, mask


def from_corr(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        g = next(iter(f["INSTRUMENT"].values()))
        while "image" not in g:
            g = next(iter(g.values()))
        img = g["image"]
        return img["data"][:n].astype(np.float32), img["mask"][:n].astype(np.uint32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=64, help="module frames")
    ap.add_argument("--corr", type=Path, help="a CORR file to take the frames from")
    args = ap.parse_args()
    data, mask = from_corr(args.corr, args.frames) if args.corr else synthetic(args.frames)
    raw_mb = (data.nbytes + mask.nbytes) / 1e6
    print(f"{data.shape[0]} module frames, {raw_mb:.1f} MB uncompressed (data float32 + mask uint32)")
    print(f"{'filter':<16}{'rounding':<10}{'ratio':>8}{'write MB/s':>12}{'read MB/s':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for comp in ("none", "gzip", "bitshuffle-lz4"):
            for rounding in (False, True):
                d = round_photons(data) if rounding else data
                path = Path(tmp) / f"{comp}-{rounding}.h5"
                t0 = time.perf_counter()
                with h5py.File(path, "w") as f:
                    for name, arr in (("data", d), ("mask", mask)):
                        f.create_dataset(name, data=arr, chunks=(1,) + SHAPE, **storage_filters(comp))
                t_w = time.perf_counter() - t0
                t0 = time.perf_counter()
                with h5py.File(path, "r") as f:
                    back = f["data"][()]
                    f["mask"][()]
                t_r = time.perf_counter() - t0
                assert np.array_equal(back, d, equal_nan=True)  # the filters are lossless
                ratio = path.stat().st_size / 1e6 / raw_mb
                print(f"{comp:<16}{'integer' if rounding else 'none':<10}{ratio:>8.3f}"
                      f"{raw_mb / t_w:>12.0f}{raw_mb / t_r:>11.0f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
