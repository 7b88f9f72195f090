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


@numba.njit(inline="always", cache=True, nogil=True)
def merge_block(count, mean, m2, lo, ref, nb, s1, s2):  # pragma: no cover - compiled
    """Merge one block of pixels' batch sums into the running moments (in place).

    ``nb``, ``s1``, ``s2``: per pixel ``lo + j`` the batch's count and the sums of
    ``v - ref[j]`` and of its square.  Shifted sums from a reference near the mean (the
    running mean, or a first value) keep ``s2 - s1²/n`` free of cancellation, so one
    pass over the batch is enough; the batch then merges by Chan et al.'s pairwise
    update, which is what makes any split of a run give the same moments.
    """
    for j in range(nb.size):
        k = nb[j]
        if k == 0:
            continue
        mb = ref[j] + s1[j] / k
        qb = max(s2[j] - s1[j] * s1[j] / k, 0.0)
        c = count[lo + j]
        n = c + k
        delta = mb - mean[lo + j]
        mean[lo + j] += delta * k / n
        m2[lo + j] += qb + delta * delta * c * k / n
        count[lo + j] = n


@numba.njit(inline="always", cache=True, nogil=True)
def block_reference(batch, mask, first, count, mean, lo, ref):  # pragma: no cover - compiled
    """``ref`` of :func:`merge_block`: the running mean where there is one, else the
    batch's row ``first`` (if valid there), else 0."""
    use_mask = mask.shape[0] > 0
    for j in range(ref.size):
        if count[lo + j] > 0:
            ref[j] = mean[lo + j]
        else:
            ref[j] = 0.0
            if first >= 0:
                v = batch[first, lo + j]
                if v == v and (not use_mask or mask[first, lo + j] == 0):
                    ref[j] = v


@numba.njit(parallel=True, cache=True, nogil=True)
def _add_moments(batch, mask, rows, count, mean, m2):  # pragma: no cover - compiled
    """Add ``batch[rows]`` to (count, mean, M2) in place; values that are NaN or whose
    ``mask`` is non-zero are skipped (``mask`` may be empty).

    Per block of pixels one pass over the rows (shifted sums, :func:`merge_block`),
    the block's sums staying in cache, then one pairwise merge: one division per
    pixel per batch instead of one per value (Welford).
    """
    p = batch.shape[1]
    use_mask = mask.shape[0] > 0
    block = 2048
    first = rows[0] if rows.size else -1
    for b in numba.prange((p + block - 1) // block):
        lo = b * block
        hi = min(p, lo + block)
        ref = np.empty(hi - lo, np.float64)
        block_reference(batch, mask, first, count, mean, lo, ref)
        nb = np.zeros(hi - lo, np.int64)
        s1 = np.zeros(hi - lo, np.float64)
        s2 = np.zeros(hi - lo, np.float64)
        for i in rows:
            for j in range(hi - lo):
                v = batch[i, lo + j]
                if v == v and (not use_mask or mask[i, lo + j] == 0):
                    d = v - ref[j]
                    nb[j] += 1
                    s1[j] += d
                    s2[j] += d * d
        merge_block(count, mean, m2, lo, ref, nb, s1, s2)


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
        """Add samples ``batch[i]`` (shape ``(n,) + shape``); NaNs are skipped."""
        return self.add_masked(batch)

    def add_masked(self, batch: np.ndarray, mask: np.ndarray | None = None,
                   rows: np.ndarray | None = None) -> "Moments":
        """Add ``batch[rows]`` skipping elements where ``mask != 0`` (and NaNs).

        The same as adding ``np.where(mask == 0, batch, nan)[rows]``, in one
        compiled pass (Welford per element) without copies of the batch: the
        annotation adds every frame of a run to several image classes this way.
        """
        batch = np.asarray(batch)
        if batch.shape[1:] != self.shape:
            raise ValueError(f"batch of shape {batch.shape} does not fit samples of {self.shape}")
        flat = np.ascontiguousarray(batch.reshape(batch.shape[0], -1))
        if flat.dtype not in (np.float32, np.float64):
            flat = flat.astype(np.float64)
        if mask is None:
            m = np.zeros((0, flat.shape[1]), np.uint32)
        else:
            if mask.shape != batch.shape:
                raise ValueError(f"mask of shape {mask.shape} does not match the batch {batch.shape}")
            m = np.ascontiguousarray(mask.reshape(mask.shape[0], -1))
        idx = np.arange(flat.shape[0]) if rows is None else np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        _add_moments(flat, m, idx.astype(np.int64), self.count.reshape(-1), self.mean.reshape(-1),
                     self.m2.reshape(-1))
        return self

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

    def to_h5(self, group: h5py.Group, dtype: type = np.float64) -> None:
        """Store in an HDF5 group (datasets ``count``, ``mean``, ``m2``; the moments as
        ``dtype``: float32 halves large partials, at 1e-7 relative precision)."""
        for name in ("count", "mean", "m2"):
            if name in group:
                del group[name]
            # counts compress ~100x; float moments hardly, and gzip on them cost
            # seconds per partial
            kw = {"compression": "gzip", "compression_opts": 1, "shuffle": True} if name == "count" else {}
            v = getattr(self, name)
            group.create_dataset(name, data=v if name == "count" else v.astype(dtype, copy=False), **kw)
        group.attrs["accumulator"] = "Moments"

    @classmethod
    def from_h5(cls, group: h5py.Group) -> "Moments":
        obj = cls(group["mean"].shape)
        obj.count = group["count"][()]
        obj.mean = group["mean"][()].astype(np.float64, copy=False)
        obj.m2 = group["m2"][()].astype(np.float64, copy=False)
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
