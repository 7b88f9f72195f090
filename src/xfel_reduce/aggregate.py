"""Mergeable accumulators: the per-chunk partials that make runs split-invariant.

Every per-chunk job writes partials (counts, means, second central moments,
histograms); the run result is the merge of all partials.  The merge rules are
exact (Chan, Golub & LeVeque's pairwise update for moments), so a run gives the
same result — to float rounding — however it was split into chunks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import h5py
import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def _batch_moments(batch, count, mean, m2):  # pragma: no cover - compiled
    """Count, mean and M2 over axis 0 of ``batch`` (n, p), NaN skipped, one pass."""
    n, p = batch.shape
    for j in numba.prange(p):
        c = 0
        mu = 0.0
        s2 = 0.0
        for i in range(n):
            v = batch[i, j]
            if v == v:  # not NaN
                c += 1
                d = v - mu
                mu += d / c
                s2 += d * (v - mu)
        count[j] = c
        mean[j] = mu
        m2[j] = s2


@dataclass
class Moments:
    """Count, mean and sum of squared deviations (M2) per element.

    Values are accumulated over a batch axis (axis 0 of what is added); NaNs are
    ignored per element, so masked pixels can be passed as NaN.

    Parameters
    ----------
    shape
        Shape of one sample (e.g. an image ``(16, 512, 128)`` or a profile ``(npt,)``).
    """

    shape: tuple[int, ...]
    count: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.count = np.zeros(self.shape, dtype=np.int64)
        self.mean = np.zeros(self.shape, dtype=np.float64)
        self.m2 = np.zeros(self.shape, dtype=np.float64)

    def add(self, batch: np.ndarray) -> "Moments":
        """Add samples ``batch[i]`` (shape ``(n,) + shape``)."""
        batch = np.asarray(batch)
        if batch.shape[1:] != self.shape:
            raise ValueError(f"batch of shape {batch.shape} does not fit samples of {self.shape}")
        if batch.shape[0] == 0:
            return self
        # One compiled pass (Welford per element) instead of several array-sized
        # temporaries: this runs on every image of every run.
        flat = np.ascontiguousarray(batch.reshape(batch.shape[0], -1))
        if flat.dtype not in (np.float32, np.float64):
            flat = flat.astype(np.float64)
        other = Moments(self.shape)
        count, mean, m2 = other.count.reshape(-1), other.mean.reshape(-1), other.m2.reshape(-1)
        _batch_moments(flat, count, mean, m2)
        return self.merge(other)

    def merge(self, other: "Moments") -> "Moments":
        """Merge ``other`` into this accumulator (in place) and return self."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge moments of shape {other.shape} into {self.shape}")
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = other.mean - self.mean
            frac_b = np.where(n > 0, n_b / np.maximum(n, 1), 0.0)
            self.mean = self.mean + delta * frac_b
            self.m2 = self.m2 + other.m2 + delta**2 * n_a * frac_b
        self.count = n
        return self

    @property
    def var(self) -> np.ndarray:
        """Unbiased sample variance (NaN where fewer than 2 samples)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 1, self.m2 / (self.count - 1), np.nan)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    @property
    def sem(self) -> np.ndarray:
        """Standard error of the mean."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.var / self.count)

    @property
    def total(self) -> np.ndarray:
        return self.mean * self.count

    def to_h5(self, group: h5py.Group) -> None:
        """Store in an HDF5 group (datasets ``count``, ``mean``, ``m2``)."""
        for name in ("count", "mean", "m2"):
            if name in group:
                del group[name]
            group.create_dataset(name, data=getattr(self, name), compression="gzip", compression_opts=1)
        group.attrs["accumulator"] = "Moments"

    @classmethod
    def from_h5(cls, group: h5py.Group) -> "Moments":
        obj = cls(group["mean"].shape)
        obj.count = group["count"][()]
        obj.mean = group["mean"][()]
        obj.m2 = group["m2"][()]
        return obj

    @classmethod
    def merged(cls, parts: Iterable["Moments"]) -> "Moments":
        """Merge many partials (in the given order)."""
        parts = list(parts)
        if not parts:
            raise ValueError("no partials to merge")
        out = cls(parts[0].shape)
        for p in parts:
            out.merge(p)
        return out


@dataclass
class Histogram:
    """Fixed-bin histogram; merging adds counts, so it is exactly split-invariant."""

    edges: np.ndarray
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64)
        self.counts = np.zeros(self.edges.size - 1, dtype=np.int64)

    def add(self, values: np.ndarray) -> "Histogram":
        values = np.asarray(values, dtype=np.float64).ravel()
        self.counts += np.histogram(values[np.isfinite(values)], bins=self.edges)[0]
        return self

    def merge(self, other: "Histogram") -> "Histogram":
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("histograms with different bins cannot be merged")
        self.counts += other.counts
        return self

    def to_h5(self, group: h5py.Group) -> None:
        group["edges"] = self.edges
        group["counts"] = self.counts
        group.attrs["accumulator"] = "Histogram"

    @classmethod
    def from_h5(cls, group: h5py.Group) -> "Histogram":
        obj = cls(group["edges"][()])
        obj.counts = group["counts"][()]
        return obj
