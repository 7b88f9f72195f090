"""What the corrected frames say about the calibration, kept without keeping the frames.

The one pass (:mod:`xfel_reduce.onepass`) writes no CORR files by default, so the
calibration report cannot sample them.  Instead each sequence's pass histograms the
corrected values of good pixels per module and gain stage over its first frames; the
histograms merge over sequences, and the report reads the zero-photon peak (residual
offset and noise in photons), the gain-stage populations and the masked fraction from
them.  Facility CORR files (or ``calibration.write_corr: all``) give the same
histograms through :meth:`CorrectionHistogram.from_corr_files`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numba
import numpy as np

#: bin width (photons) and range of the histograms; values beyond go to the end bins
BIN = 0.01
LOW, HIGH = -2.0, 20.0
N_BINS = int(round((HIGH - LOW) / BIN))
N_GAINS = 3


@numba.njit(cache=True, nogil=True)
def _histogram(data, mask, gain, counts):  # pragma: no cover - compiled
    """Add good values (mask 0, finite) of ``data[i]`` to ``counts[gain, bin]``; returns
    the number of bad values."""
    bad = 0
    n, ny, nx = data.shape
    for i in range(n):
        for y in range(ny):
            for x in range(nx):
                v = data[i, y, x]
                if mask[i, y, x] != 0 or not np.isfinite(v):
                    bad += 1
                    continue
                b = int(np.floor((v - LOW) / BIN))
                b = min(max(b, 0), N_BINS - 1)
                counts[gain[i, y, x], b] += 1
    return bad


class CorrectionHistogram:
    """Mergeable histograms of corrected values (good pixels), per module and gain stage.

    Parameters
    ----------
    modules
        Module numbers, in the order of the frames' module axis.
    max_frames
        Frames per module and sequence that are histogrammed (the first ones): 256
        module frames are 16 M values, plenty for a peak position to 0.01 photon.
    """

    def __init__(self, modules: Sequence[int], max_frames: int = 256):
        self.modules = [int(m) for m in modules]
        self.max_frames = int(max_frames)
        n = len(self.modules)
        self.counts = np.zeros((n, N_GAINS, N_BINS), np.int64)
        self.masked = np.zeros(n, np.int64)
        self.pixels = np.zeros(n, np.int64)
        self.frames = np.zeros(n, np.int64)

    def add(self, data: np.ndarray, mask: np.ndarray, gain: np.ndarray, present: np.ndarray | None = None) -> None:
        """Frames ``(n, n_modules, ny, nx)`` with their mask bits and gain stages."""
        for j in range(len(self.modules)):
            budget = self.max_frames - int(self.frames[j])
            if budget <= 0:
                continue
            rows = np.flatnonzero(present[:, j]) if present is not None else np.arange(data.shape[0])
            rows = rows[:budget]
            if rows.size == 0:
                continue
            bad = _histogram(np.ascontiguousarray(data[rows, j]), np.ascontiguousarray(mask[rows, j]),
                             np.ascontiguousarray(gain[rows, j]), self.counts[j])
            self.masked[j] += bad
            self.pixels[j] += rows.size * data.shape[2] * data.shape[3]
            self.frames[j] += rows.size

    def merge(self, other: "CorrectionHistogram") -> "CorrectionHistogram":
        if other.modules != self.modules:
            raise ValueError(f"histograms of modules {self.modules} and {other.modules} cannot be merged")
        out = CorrectionHistogram(self.modules, self.max_frames)
        for k in ("counts", "masked", "pixels", "frames"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        return out

    @property
    def edges(self) -> np.ndarray:
        return LOW + BIN * np.arange(N_BINS + 1)

    def gain_fractions(self) -> np.ndarray:
        """``(n_modules, 3)``: share of good pixels in each gain stage."""
        tot = self.counts.sum(axis=2)
        return tot / np.maximum(tot.sum(axis=1, keepdims=True), 1)

    def masked_fraction(self) -> np.ndarray:
        return self.masked / np.maximum(self.pixels, 1)

    def zero_peak(self, j: int) -> tuple[float, float]:
        """Position and width (photons) of module ``j``'s zero-photon peak, high gain.

        Most pixels of most frames see no photon, so the distribution has a sharp peak
        whose centre is the residual offset and whose width is the noise in photons.
        A Gaussian (a parabola in the log) is fitted around the maximum within ±0.7
        photons, within the bins above 40 % of the peak, which ignores the one-photon
        shoulder.
        """
        lo_bin = int(round((-0.7 - LOW) / BIN))
        hist = self.counts[j, 0, lo_bin:lo_bin + 140]
        if hist.sum() < 100:
            return float("nan"), float("nan")
        centres = -0.7 + BIN * (np.arange(140) + 0.5)
        k = int(np.argmax(hist))
        above = hist >= 0.4 * hist[k]
        lo = k
        while lo > 0 and above[lo - 1]:
            lo -= 1
        hi = k
        while hi < len(hist) - 1 and above[hi + 1]:
            hi += 1
        if hi - lo < 2:
            lo, hi = max(k - 2, 0), min(k + 2, len(hist) - 1)
        x, y = centres[lo:hi + 1], np.log(np.maximum(hist[lo:hi + 1], 1).astype(float))
        a, b, _ = np.polyfit(x, y, 2)
        if a >= 0:
            return float(centres[k]), float("nan")
        return float(-b / (2 * a)), float(np.sqrt(-1 / (2 * a)))

    def to_h5(self, g: h5py.Group) -> None:
        g.attrs.update(bin_photons=BIN, low=LOW, high=HIGH, max_frames=self.max_frames)
        g["modules"] = np.asarray(self.modules, np.int64)
        for k in ("counts", "masked", "pixels", "frames"):
            g.create_dataset(k, data=getattr(self, k), compression="gzip" if k == "counts" else None)

    @classmethod
    def from_h5(cls, g: h5py.Group) -> "CorrectionHistogram":
        if int(round((float(g.attrs["high"]) - float(g.attrs["low"])) / float(g.attrs["bin_photons"]))) != N_BINS:
            raise ValueError(f"{g.file.filename}: correction histogram with other bins than this version's")
        out = cls(g["modules"][()].tolist(), int(g.attrs["max_frames"]))
        for k in ("counts", "masked", "pixels", "frames"):
            setattr(out, k, g[k][()])
        return out

    @classmethod
    def from_partials(cls, paths: Sequence[Path]) -> "CorrectionHistogram | None":
        """Merged histograms of the sequences' partial files (``None`` if they hold none)."""
        merged = None
        for p in paths:
            with h5py.File(p, "r") as f:
                if "correction_check" not in f:
                    continue
                h = cls.from_h5(f["correction_check"])
            merged = h if merged is None else merged.merge(h)
        return merged

    @classmethod
    def from_corr_files(cls, paths: Sequence[Path], max_frames: int = 256) -> "CorrectionHistogram | None":
        """Histograms of CORR files (facility proc, or written with ``write_corr``), the first
        ``max_frames`` frames of each module over the files."""
        from ..io.frames import SequenceFrames

        by_module: dict[int, list] = {}
        for p in sorted(map(Path, paths)):
            reader = SequenceFrames.from_files([p], with_gain=True)
            by_module.setdefault(reader.modules[0], []).append(reader)
        if not by_module:
            return None
        modules = sorted(by_module)
        out = cls(modules, max_frames)
        for j, m in enumerate(modules):
            part = cls([m], max_frames)
            for reader in by_module[m]:
                for chunk in reader.iter_chunks(4):
                    if part.frames[0] >= max_frames:
                        break
                    part.add(chunk.data, chunk.mask, chunk.gain, chunk.present)
            for k in ("counts", "masked", "pixels", "frames"):
                getattr(out, k)[j] = getattr(part, k)[0]
        return out
