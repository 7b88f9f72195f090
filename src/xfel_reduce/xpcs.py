"""X-ray photon correlation spectroscopy (XPCS) at the European XFEL.

What it computes
----------------
* **q-ring ROIs** from a pixel q-map and a bad-pixel mask (:func:`ring_labels`).
* **Intra-train two-time correlation** ``C(t1, t2) = ⟨I(t1) I(t2)⟩_p / (⟨I(t1)⟩_p ⟨I(t2)⟩_p)``
  per ring, where ``⟨⟩_p`` averages over the ring's pixels (:func:`two_time`; the same
  symmetric normalisation as scikit-beam's ``two_time_corr``).  One matrix product per
  ring and train (BLAS ``syrk``-like ``Fᵀ F``) replaces a Python loop over frame pairs.
* **g2(τ)** per ring from the two-time map (mean over the diagonal at lag τ), averaged
  over trains, with errors from the train-to-train scatter.
* **Multi-tau g2** for long frame sequences (:func:`multi_tau_g2`), identical in lags,
  binning and normalisation to scikit-beam's ``multi_tau_auto_corr`` but computed by
  a compiled per-pixel lag kernel.
* **Inter-train g2** at multiples of the train spacing (100 ms) from train-mean images.
* **Speckle contrast β** from photon-count statistics (XSVS): a factorial-moment
  estimator that is unbiased for any intensity distribution and insensitive to
  frame-to-frame intensity (pulse energy) changes, plus a negative-binomial fit.
* **Fits** ``g2 = baseline + β exp(−2Γτ)`` per ring and ``Γ = D q²`` → ``D``.

Mergeable partials
------------------
:class:`XpcsPartial` holds only sums, sums of squares and counts (plus, for the
inter-train correlation, the train-mean images of at most ``max_train_lag`` trains at
each end of the chunk so that pairs straddling two chunks can be added when merging).
A run split over any number of chunk jobs therefore gives the same result as one job,
up to floating-point summation order.

Conventions: ``q`` in nm⁻¹, times in seconds, ``D`` in m²/s, ``Γ`` in s⁻¹.  Bad-pixel
masks follow EuXFEL ``BadPixels``: nonzero means *bad*.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numba
import numpy as np

__all__ = [
    "ring_labels",
    "ring_q",
    "RingIndex",
    "photonize",
    "two_time",
    "g2_from_two_time",
    "multi_tau_lags",
    "multi_tau_g2",
    "XpcsPartial",
    "fit_g2",
    "fit_diffusion",
    "ring_average",
    "negative_binomial_contrast",
    "analyse",
    "write_xpcs_h5",
]


# ---------------------------------------------------------------------------------------
# ROIs
# ---------------------------------------------------------------------------------------
def ring_labels(
    q_map: np.ndarray,
    mask: np.ndarray | None,
    rings: Sequence[Sequence[float]] | np.ndarray,
) -> np.ndarray:
    """Label pixels by q-ring.

    Parameters
    ----------
    q_map
        q (nm⁻¹) of each pixel, any shape (e.g. ``(n_modules, 512, 128)``).
    mask
        Bad-pixel mask of the same shape, nonzero = bad (EuXFEL BadPixels), or None.
    rings
        Either ``(n, 2)`` pairs ``(q_lo, q_hi)`` or a 1-D array of ``n + 1`` edges.
        Intervals are half-open ``[q_lo, q_hi)``; pairs must not overlap.

    Returns
    -------
    numpy.ndarray
        int32 labels of ``q_map``'s shape: 0 = in no ring or bad, ``k`` = ring ``k``
        (1-based, in the order given).
    """
    q = np.asarray(q_map, dtype=np.float64)
    r = np.asarray(rings, dtype=np.float64)
    if r.ndim == 1:
        if r.size < 2 or np.any(np.diff(r) <= 0):
            raise ValueError(f"ring edges must be ≥ 2 increasing values, got {r}")
        r = np.stack([r[:-1], r[1:]], axis=1)
    if r.ndim != 2 or r.shape[1] != 2 or np.any(r[:, 1] <= r[:, 0]):
        raise ValueError(f"rings must be (q_lo, q_hi) pairs with q_hi > q_lo, got {r.tolist()}")
    order = np.argsort(r[:, 0])
    if np.any(r[order][1:, 0] < r[order][:-1, 1]):
        raise ValueError(f"q-rings overlap: {r.tolist()}")
    if mask is not None and np.shape(mask) != q.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from q-map shape {q.shape}")
    labels = np.zeros(q.shape, dtype=np.int32)
    for k, (lo, hi) in enumerate(r, start=1):
        labels[(q >= lo) & (q < hi)] = k
    if mask is not None:
        labels[np.asarray(mask) != 0] = 0
    labels[~np.isfinite(q)] = 0
    return labels


def ring_q(q_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Effective q (nm⁻¹) of each ring label present: ``sqrt(⟨q²⟩)`` over its pixels.

    Diffusive rates scale as q², so the pixel average of q² (not the ring centre,
    which ignores that outer pixels outnumber inner ones) is what ``Γ = D q²`` needs.
    """
    lab = np.asarray(labels).ravel()
    q2 = np.asarray(q_map, dtype=np.float64).ravel() ** 2
    ids = np.unique(lab[lab > 0])
    sums = np.bincount(lab, weights=np.where(lab > 0, q2, 0.0), minlength=ids.max() + 1)
    counts = np.bincount(lab, minlength=ids.max() + 1)
    return np.sqrt(sums[ids] / counts[ids])


@dataclass
class RingIndex:
    """Pixels of each ring, gathered contiguously so a ring is a column slice.

    Attributes
    ----------
    labels
        The label image (0 = unused).
    ring_ids
        The label values present, ascending (rings with no pixel are absent).
    pixel_index
        Flat pixel indices of all ROI pixels, grouped by ring in ``ring_ids`` order.
    bounds
        ``bounds[k]:bounds[k+1]`` is ring ``ring_ids[k]`` in ``pixel_index``.
    """

    labels: np.ndarray
    ring_ids: np.ndarray = field(init=False)
    pixel_index: np.ndarray = field(init=False)
    bounds: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        flat = np.asarray(self.labels).ravel()
        if flat.size and flat.min() < 0:
            raise ValueError("ring labels must be ≥ 0 (0 = not in any ring)")
        roi = np.flatnonzero(flat > 0)
        if roi.size == 0:
            raise ValueError("no pixel is in any q-ring: check the ring limits against the "
                             "q-map and the bad-pixel mask")
        # Stable sort keeps raster order inside a ring (matches scikit-beam's pixel list).
        order = np.argsort(flat[roi], kind="stable")
        self.pixel_index = roi[order]
        lab = flat[self.pixel_index]
        self.ring_ids, starts = np.unique(lab, return_index=True)
        self.bounds = np.append(starts, lab.size).astype(np.int64)

    @property
    def n_rings(self) -> int:
        return int(self.ring_ids.size)

    @property
    def n_pixels(self) -> np.ndarray:
        """Pixels per ring."""
        return np.diff(self.bounds)

    def take(self, frames: np.ndarray) -> np.ndarray:
        """Gather ROI pixels: ``(n_frames, *labels.shape)`` → float64 ``(n_frames, n_roi)``."""
        frames = np.asarray(frames)
        if frames.shape[1:] != self.labels.shape:
            raise ValueError(f"frames of shape {frames.shape[1:]} do not match the ring "
                             f"labels' shape {self.labels.shape}")
        return frames.reshape(frames.shape[0], -1)[:, self.pixel_index].astype(np.float64)

    def ring_sums(self, values: np.ndarray) -> np.ndarray:
        """Sum the last axis (ROI pixels in ring order) per ring → ``(..., n_rings)``."""
        return np.add.reduceat(values, self.bounds[:-1], axis=-1)


def photonize(data: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Integer photon counts from corrected data in photon units.

    Rounds to the nearest integer with the first photon counted above ``threshold``
    (detector noise of AGIPD in high gain is ≈ 0.1 photon at 9 keV, so a 0.5 cut
    mis-assigns a negligible fraction).  NaNs (masked pixels) stay NaN.
    """
    d = np.asarray(data, dtype=np.float32)
    # NaN compares False, so NaNs fall into the second branch and stay NaN.
    return np.where(d < threshold, np.float32(0), np.floor(d - threshold) + np.float32(1))


# ---------------------------------------------------------------------------------------
# Two-time
# ---------------------------------------------------------------------------------------
def _two_time_gathered(x: np.ndarray, index: RingIndex) -> tuple[np.ndarray, np.ndarray]:
    """Two-time maps from gathered data ``x`` (n_frames, n_roi) float64.

    Returns ``(C, ring_mean)`` with C ``(n_rings, n_frames, n_frames)`` and
    ring_mean ``(n_rings, n_frames)``.
    """
    n_frames = x.shape[0]
    c = np.empty((index.n_rings, n_frames, n_frames))
    means = np.empty((index.n_rings, n_frames))
    # Pixel-major copy: each ring becomes one contiguous (n_pix, n_frames) block, so
    # BLAS sees a plain matrix instead of a strided column slice.
    xt = np.ascontiguousarray(x.T)
    for k in range(index.n_rings):
        block = xt[index.bounds[k]:index.bounds[k + 1]]
        n = block.shape[0]
        m = block.mean(axis=0)
        # One matrix product per ring: Σ_p I(t1,p) I(t2,p) for all frame pairs at once.
        with np.errstate(divide="ignore", invalid="ignore"):
            c[k] = (block.T @ block) / (n * np.outer(m, m))
        means[k] = m
    return c, means


def two_time(frames: np.ndarray, labels: np.ndarray | RingIndex) -> np.ndarray:
    """Two-time correlation per ring.

    ``C[r, t1, t2] = mean_p(I[t1,p] I[t2,p]) / (mean_p I[t1,p] · mean_p I[t2,p])`` over
    the pixels ``p`` of ring ``r`` — scikit-beam's ``two_time_corr`` normalisation with
    ``num_bufs = num_frames`` and one level.

    Parameters
    ----------
    frames
        ``(n_frames, *labels.shape)`` intensities (photons).
    labels
        Ring label image (0 = unused) or a prepared :class:`RingIndex`.

    Returns
    -------
    numpy.ndarray
        float64 ``(n_rings, n_frames, n_frames)``, symmetric; NaN where a ring has no
        intensity in a frame.
    """
    index = labels if isinstance(labels, RingIndex) else RingIndex(np.asarray(labels))
    return _two_time_gathered(index.take(frames), index)[0]


def g2_from_two_time(c: np.ndarray) -> np.ndarray:
    """g2 at integer frame lags: mean of each upper diagonal of the two-time map.

    ``c`` is ``(..., n, n)``; returns ``(..., n)`` where entry τ averages
    ``C[t, t+τ]`` over ``t`` (NaN entries ignored).
    """
    c = np.asarray(c)
    n = c.shape[-1]
    i, j = np.triu_indices(n)
    lag = j - i
    vals = c[..., i, j]
    ok = np.isfinite(vals)
    flat = vals.reshape(-1, lag.size)
    okf = ok.reshape(-1, lag.size)
    out = np.empty((flat.shape[0], n))
    for r in range(flat.shape[0]):
        s = np.bincount(lag, weights=np.where(okf[r], flat[r], 0.0), minlength=n)
        cnt = np.bincount(lag, weights=okf[r].astype(float), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[r] = s / cnt
    return out.reshape(c.shape[:-2] + (n,))


# ---------------------------------------------------------------------------------------
# Multi-tau (scikit-beam semantics)
# ---------------------------------------------------------------------------------------
def multi_tau_lags(num_levels: int, num_bufs: int) -> np.ndarray:
    """Lag steps (frames) of the multi-tau scheme: level 0 has lags ``0 … num_bufs−1``,
    each further level ``l`` the lags ``(num_bufs/2 … num_bufs−1)·2^l``."""
    if num_bufs % 2 or num_bufs < 2:
        raise ValueError(f"num_bufs must be even and ≥ 2, got {num_bufs}")
    if num_levels < 1:
        raise ValueError(f"num_levels must be ≥ 1, got {num_levels}")
    lags = [np.arange(num_bufs)]
    for level in range(1, num_levels):
        lags.append(np.arange(num_bufs // 2, num_bufs) * 2**level)
    return np.concatenate(lags).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _lag_products(x: np.ndarray, lag_lo: int, lag_hi: int) -> np.ndarray:
    """``out[p, i] = Σ_k x[p, k]·x[p, k + lag_lo + i]`` for one pixel time series per row."""
    n_pix, n_t = x.shape
    n_lag = lag_hi - lag_lo
    out = np.zeros((n_pix, n_lag))
    for p in range(n_pix):
        row = x[p]
        acc = out[p]
        # Time outer, lag inner: independent accumulators per lag vectorise (SIMD)
        # without reassociating any single sum, so results stay deterministic.
        for k in range(n_t - lag_lo):
            xk = row[k]
            top = min(n_lag, n_t - lag_lo - k)
            for i in range(top):
                acc[i] += xk * row[k + lag_lo + i]
    return out


def multi_tau_g2(
    frames: np.ndarray | Iterable[np.ndarray],
    labels: np.ndarray | RingIndex,
    num_levels: int,
    num_bufs: int,
    block_pixels: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-tau one-time correlation g2 per ring.

    Same lags, frame binning (non-overlapping pair averages per level), symmetric
    normalisation ``G / (past · future)`` and NaN-frame handling as scikit-beam's
    ``multi_tau_auto_corr(num_levels, num_bufs, labels, images)``; the result is
    truncated at the first lag with no data exactly as scikit-beam does.

    Parameters
    ----------
    frames
        ``(n_frames, *labels.shape)`` array (or an iterable of frames, stacked first).
    labels
        Ring label image or :class:`RingIndex`.
    num_levels, num_bufs
        Multi-tau depth and channels per level (``num_bufs`` even).
    block_pixels
        Pixels processed together; bounds the working copy to
        ``block_pixels × n_frames`` float64.

    Returns
    -------
    g2 : numpy.ndarray
        ``(n_lags, n_rings)`` (scikit-beam's orientation).
    lag_steps : numpy.ndarray
        Lags in frames.
    """
    index = labels if isinstance(labels, RingIndex) else RingIndex(np.asarray(labels))
    if not isinstance(frames, np.ndarray):
        frames = np.stack(list(frames))
    lags = multi_tau_lags(num_levels, num_bufs)
    flat = frames.reshape(frames.shape[0], -1)
    if flat.shape[1] != index.labels.size:
        raise ValueError(f"frames of shape {frames.shape[1:]} do not match the labels' "
                         f"shape {index.labels.shape}")
    n_rings = index.n_rings
    npix = index.n_pixels.astype(np.float64)
    lab_flat = np.asarray(index.labels).ravel()
    roi = lab_flat > 0
    # Sequential ring position (0 … n_rings−1) of every pixel; −1 outside the ROI.
    ring_pos = np.where(roi, np.searchsorted(index.ring_ids, lab_flat), -1)
    # A frame with any NaN ROI pixel is excluded (scikit-beam's bad-image rule);
    # NaNs outside the ROI are ignored, as there.
    valid0 = ~(np.isnan(flat) & roi[None, :]).any(axis=1)
    g_sum = np.zeros((lags.size, n_rings))
    past = np.zeros((lags.size, n_rings))
    future = np.zeros((lags.size, n_rings))
    n_pairs = np.zeros(lags.size)
    ring_prod_all = [np.zeros((num_bufs - (num_bufs // 2 if lv else 0), n_rings))
                     for lv in range(num_levels)]
    means_all: list[np.ndarray] = []
    valid_all: list[np.ndarray] = []
    # Contiguous column blocks of the image: a strided slice + one transpose copy is
    # far cheaper than a fancy-index gather, and bounds memory to
    # block_pixels × n_frames × 8 bytes.
    for start in range(0, flat.shape[1], block_pixels):
        cols = np.flatnonzero(roi[start:start + block_pixels])
        if cols.size == 0:
            continue
        blk = np.ascontiguousarray(flat[:, start:start + block_pixels].T, dtype=np.float64)
        x = blk[cols] if cols.size < blk.shape[0] else blk
        onehot = np.zeros((cols.size, n_rings))
        onehot[np.arange(cols.size), ring_pos[start + cols]] = 1.0
        valid = valid0
        x[:, ~valid] = 0.0
        for level in range(num_levels):
            if level:
                n_t = x.shape[1] // 2
                x = np.ascontiguousarray(0.5 * (x[:, 0:2 * n_t:2] + x[:, 1:2 * n_t:2]))
                valid = valid[0:2 * n_t:2] & valid[1:2 * n_t:2]
                x[:, ~valid] = 0.0
            lo = 0 if level == 0 else num_bufs // 2
            ring_prod_all[level] += _lag_products(x, lo, num_bufs).T @ onehot
            if len(means_all) <= level:
                means_all.append(np.zeros((x.shape[1], n_rings)))
                valid_all.append(valid)
            means_all[level] += x.T @ onehot
    row = 0
    for level in range(num_levels):
        lo = 0 if level == 0 else num_bufs // 2
        ring_prod = ring_prod_all[level] / npix  # (lags, rings)
        ring_mean = means_all[level] / npix  # (n_t, rings)
        vf = valid_all[level].astype(np.float64)
        n_t = vf.size
        for i in range(num_bufs - lo):
            lag = lo + i
            if lag < n_t:
                w = vf[: n_t - lag] * vf[lag:]
                n_pairs[row] = w.sum()
                past[row] = w @ ring_mean[: n_t - lag]
                future[row] = w @ ring_mean[lag:]
                g_sum[row] = ring_prod[i]
            row += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        past_mean = past / n_pairs[:, None]
        future_mean = future / n_pairs[:, None]
        g_mean = g_sum / n_pairs[:, None]
    past_mean[n_pairs == 0] = 0.0
    zero_rows = np.nonzero((past_mean == 0).any(axis=1))[0]
    g_max = int(zero_rows[0]) if zero_rows.size else lags.size
    g2 = g_mean[:g_max] / (past_mean[:g_max] * future_mean[:g_max])
    return g2, lags[:g_max]


# ---------------------------------------------------------------------------------------
# Mergeable per-chunk partial
# ---------------------------------------------------------------------------------------
_SUM_FIELDS = (
    "tt_sum", "tt_sq", "tt_n",
    "g2t_sum", "g2t_sq", "g2t_n",
    "frame_mean_sum", "frame_mean_n",
    "fm_num", "fm_den", "fm_beta_sum", "fm_beta_sq", "fm_beta_n",
    "hist",
    "it_sum", "it_sq", "it_n",
)


class XpcsPartial:
    """Mergeable XPCS sums for one chunk (or a merged set of chunks) of a run.

    Parameters
    ----------
    labels
        Ring label image of the frame shape, e.g. ``(n_modules, 512, 128)``.
    n_frames
        Maximum number of frames per train (two-time matrix size).
    max_train_lag
        Longest inter-train lag (in train IDs) to correlate.
    hist_max
        Photon-count histogram covers ``0 … hist_max`` (larger counts in the last bin).
    photonize_threshold
        Frames are converted to integer photons with :func:`photonize`; None keeps the
        values as given (e.g. for already integer data).
    """

    def __init__(
        self,
        labels: np.ndarray,
        n_frames: int,
        max_train_lag: int = 10,
        hist_max: int = 20,
        photonize_threshold: float | None = 0.5,
    ) -> None:
        self.index = RingIndex(np.asarray(labels))
        self.n_frames = int(n_frames)
        self.max_train_lag = int(max_train_lag)
        self.hist_max = int(hist_max)
        self.photonize_threshold = photonize_threshold
        r, p, k = self.index.n_rings, self.n_frames, self.max_train_lag
        self.tt_sum = np.zeros((r, p, p))
        self.tt_sq = np.zeros((r, p, p))
        self.tt_n = np.zeros((r, p, p))
        self.g2t_sum = np.zeros((r, p))
        self.g2t_sq = np.zeros((r, p))
        self.g2t_n = np.zeros((r, p))
        self.frame_mean_sum = np.zeros((r, p))
        self.frame_mean_n = np.zeros((r, p))
        self.fm_num = np.zeros(r)
        self.fm_den = np.zeros(r)
        self.fm_beta_sum = np.zeros(r)
        self.fm_beta_sq = np.zeros(r)
        self.fm_beta_n = np.zeros(r)
        self.hist = np.zeros((r, self.hist_max + 1))
        self.it_sum = np.zeros((r, k))
        self.it_sq = np.zeros((r, k))
        self.it_n = np.zeros((r, k))
        self.train_ids = np.zeros(0, dtype=np.uint64)
        self.train_ring_mean = np.zeros((0, r))
        # Train-mean ROI images of the trains within max_train_lag of either chunk end.
        self.edge_ids = np.zeros(0, dtype=np.uint64)
        self.edge_imgs = np.zeros((0, self.index.pixel_index.size))

    # -- accumulation -------------------------------------------------------------------
    def add_train(self, train_id: int, frames: np.ndarray, *also: "XpcsPartial") -> None:
        """Add one train's X-ray frames ``(n, *labels.shape)``, ``n ≤ n_frames``, in
        pulse order (equally spaced).  Trains must be added in increasing train ID.
        ``also``: further partials with the same rings (e.g. the train's bin of a binned
        run) that get the same train, computed once."""
        frames = np.asarray(frames)
        n = frames.shape[0]
        if n == 0:
            return
        for t in (self, *also):
            if n > t.n_frames:
                raise ValueError(f"train {train_id}: {n} frames but the partial was set up for "
                                 f"at most {t.n_frames}; raise n_frames")
            if t.train_ids.size and int(train_id) <= int(t.train_ids[-1]):
                raise ValueError(f"train {train_id} added after train {int(t.train_ids[-1])}: "
                                 "add trains in increasing train ID order")
        x = self.index.take(frames)  # only ROI pixels from here on
        if self.photonize_threshold is not None:
            x = photonize(x, self.photonize_threshold).astype(np.float64)
        c, means = _two_time_gathered(x, self.index)
        ok = np.isfinite(c)
        cz = np.where(ok, c, 0.0)
        g2t = g2_from_two_time(c)  # (rings, n)
        okg = np.isfinite(g2t)
        g2z = np.where(okg, g2t, 0.0)
        okm = np.isfinite(means)
        contrast = self._contrast_terms(x)
        img = np.nanmean(x, axis=0)
        ring_mean = self.index.ring_sums(img) / self.index.n_pixels
        for t in (self, *also):
            t.tt_sum[:, :n, :n] += cz
            t.tt_sq[:, :n, :n] += cz * cz
            t.tt_n[:, :n, :n] += ok
            t.g2t_sum[:, :n] += g2z
            t.g2t_sq[:, :n] += g2z * g2z
            t.g2t_n[:, :n] += okg
            t.frame_mean_sum[:, :n] += np.where(okm, means, 0.0)
            t.frame_mean_n[:, :n] += okm
            for name, v in contrast.items():
                setattr(t, name, getattr(t, name) + v)
            t.train_ring_mean = np.vstack([t.train_ring_mean, ring_mean])
            t._add_inter_train(np.array([train_id], dtype=np.uint64), img[None])

    def add_trains(self, train_ids: Sequence[int], frames: np.ndarray) -> None:
        """Add several trains: ``frames`` is ``(n_trains, n, *labels.shape)``."""
        if len(train_ids) != len(frames):
            raise ValueError(f"{len(train_ids)} train IDs for {len(frames)} trains of frames")
        for tid, f in zip(train_ids, frames):
            self.add_train(int(tid), f)

    def _contrast_terms(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Factorial-moment contrast sums and count histogram of photon counts ``x``
        (what one train adds to the ``fm_*`` sums and ``hist``)."""
        good = np.isfinite(x).all(axis=1)
        x = x[good]
        if not x.size:
            return {}
        s1 = self.index.ring_sums(x)  # (frames, rings)
        s2 = self.index.ring_sums(x * x)
        n = self.index.n_pixels.astype(np.float64)
        # ⟨k(k−1)⟩ = ⟨I²⟩ and, for distinct pixels, ⟨k_p k_q⟩ = ⟨I⟩²: both unbiased
        # per frame, so β = Σ⟨I²⟩ / Σ⟨I⟩² − 1 is immune to frame-to-frame intensity
        # changes and to the 1/n bias of squaring a sample mean.
        num = (s2 - s1) / n
        den = (s1 * s1 - s2) / (n * (n - 1.0))
        tn, td = num.sum(axis=0), den.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            beta_t = tn / td - 1.0
        okb = np.isfinite(beta_t)
        counts = np.clip(np.rint(x), 0, self.hist_max).astype(np.int64)
        ring_of_pix = np.repeat(np.arange(self.index.n_rings), self.index.n_pixels)
        flat = (ring_of_pix[None, :] * (self.hist_max + 1) + counts).ravel()
        return {"fm_num": tn, "fm_den": td, "fm_beta_sum": np.where(okb, beta_t, 0.0),
                "fm_beta_sq": np.where(okb, beta_t, 0.0) ** 2, "fm_beta_n": okb,
                "hist": np.bincount(flat, minlength=self.hist.size).reshape(self.hist.shape)}

    def _pair_values(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Symmetric-normalised correlation of train-mean images, per ring."""
        n = self.index.n_pixels
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.index.ring_sums(a * b) / n) / (
                (self.index.ring_sums(a) / n) * (self.index.ring_sums(b) / n))

    def _add_pairs(self, ids_a, imgs_a, ids_b, imgs_b) -> None:
        k_max = self.max_train_lag
        for ia, tid_a in enumerate(ids_a):
            for ib, tid_b in enumerate(ids_b):
                lag = abs(int(tid_b) - int(tid_a))  # the pair value is symmetric
                if 1 <= lag <= k_max:
                    v = self._pair_values(imgs_a[ia], imgs_b[ib])
                    ok = np.isfinite(v)
                    self.it_sum[:, lag - 1] += np.where(ok, v, 0.0)
                    self.it_sq[:, lag - 1] += np.where(ok, v, 0.0) ** 2
                    self.it_n[:, lag - 1] += ok

    def _trim_edges(self) -> None:
        # A train can still pair with a train of another chunk only if some train ID
        # within ±max_train_lag is not covered yet; keep exactly those.  (True gaps in
        # the run keep a few extra images; that costs memory, never correctness.)
        if not self.edge_ids.size:
            return
        covered = np.sort(self.train_ids.astype(np.int64))
        ids = self.edge_ids.astype(np.int64)
        k = self.max_train_lag
        n_near = (np.searchsorted(covered, ids + k, side="right")
                  - np.searchsorted(covered, ids - k, side="left"))
        keep = n_near < 2 * k + 1
        self.edge_ids, self.edge_imgs = self.edge_ids[keep], self.edge_imgs[keep]

    def _add_inter_train(self, ids: np.ndarray, imgs: np.ndarray) -> None:
        # Only the last max_train_lag trains can pair with a newer one.
        self._add_pairs(self.edge_ids, self.edge_imgs, ids, imgs)
        self.train_ids = np.concatenate([self.train_ids, ids])
        self.edge_ids = np.concatenate([self.edge_ids, ids])
        self.edge_imgs = np.concatenate([self.edge_imgs, imgs])
        self._trim_edges()

    # -- merging ------------------------------------------------------------------------
    def merge(self, other: "XpcsPartial") -> "XpcsPartial":
        """Add another chunk's partial in place.

        Chunks may be merged in any order and grouping (associative, commutative up to
        float summation order); they must not share trains.
        """
        if (other.index.pixel_index.shape != self.index.pixel_index.shape
                or np.any(other.index.pixel_index != self.index.pixel_index)
                or other.tt_sum.shape != self.tt_sum.shape
                or other.max_train_lag != self.max_train_lag
                or other.hist_max != self.hist_max):
            raise ValueError("cannot merge XPCS partials made with different rings, frame "
                             "counts, max_train_lag or hist_max; rerun the chunks with one config")
        if np.intersect1d(self.train_ids, other.train_ids).size:
            raise ValueError("XPCS partials share trains: a chunk was included twice")
        # Every cross-chunk pair within max_train_lag involves edge trains of both
        # partials (a train next to a train of the other chunk is next to an uncovered
        # ID in its own partial), so correlating edges with edges completes the sums.
        self._add_pairs(self.edge_ids, self.edge_imgs, other.edge_ids, other.edge_imgs)
        for name in _SUM_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        order = np.argsort(np.concatenate([self.train_ids, other.train_ids]), kind="stable")
        self.train_ids = np.concatenate([self.train_ids, other.train_ids])[order]
        self.train_ring_mean = np.vstack([self.train_ring_mean, other.train_ring_mean])[order]
        eid = np.concatenate([self.edge_ids, other.edge_ids])
        eo = np.argsort(eid, kind="stable")
        self.edge_ids = eid[eo]
        self.edge_imgs = np.vstack([self.edge_imgs, other.edge_imgs])[eo]
        self._trim_edges()
        return self

    # -- persistence --------------------------------------------------------------------
    def to_h5(self, group) -> None:
        """Write into an h5py group (all sums, the labels and the edge images)."""
        group.attrs["n_frames"] = self.n_frames
        group.attrs["max_train_lag"] = self.max_train_lag
        group.attrs["hist_max"] = self.hist_max
        group.attrs["photonize_threshold"] = (
            -1.0 if self.photonize_threshold is None else float(self.photonize_threshold))
        group.create_dataset("labels", data=self.index.labels, compression="gzip")
        for name in _SUM_FIELDS + ("train_ids", "train_ring_mean", "edge_ids", "edge_imgs"):
            group.create_dataset(name, data=getattr(self, name))

    @classmethod
    def from_h5(cls, group) -> "XpcsPartial":
        """Read a partial written by :meth:`to_h5`."""
        thr = float(group.attrs["photonize_threshold"])
        obj = cls(group["labels"][()], int(group.attrs["n_frames"]),
                  int(group.attrs["max_train_lag"]), int(group.attrs["hist_max"]),
                  None if thr < 0 else thr)
        for name in _SUM_FIELDS + ("train_ids", "train_ring_mean", "edge_ids", "edge_imgs"):
            setattr(obj, name, group[name][()])
        return obj

    # -- results ------------------------------------------------------------------------
    def result(self) -> dict[str, np.ndarray]:
        """Means and errors from the accumulated sums.

        Returns a dict with ``two_time`` and ``two_time_sem`` (rings, P, P),
        ``g2``/``g2_err`` (rings, P) at frame lags 0…P−1 (error = scatter of the
        per-train g2 / √n_trains), ``g2_inter``/``g2_inter_err`` (rings, K) at train
        lags 1…K, ``beta_moments``/``beta_moments_err``, ``frame_mean`` (rings, P),
        ``train_ids`` and ``train_ring_mean`` (n_trains, rings), ``hist``.
        """
        def mean_sem(s, sq, n):
            with np.errstate(invalid="ignore", divide="ignore"):
                m = s / n
                var = (sq / n - m * m) * n / (n - 1.0)
                return m, np.sqrt(np.clip(var, 0, None) / n)

        tt, tt_sem = mean_sem(self.tt_sum, self.tt_sq, self.tt_n)
        g2, g2_err = mean_sem(self.g2t_sum, self.g2t_sq, self.g2t_n)
        git, git_err = mean_sem(self.it_sum, self.it_sq, self.it_n)
        _, beta_err = mean_sem(self.fm_beta_sum, self.fm_beta_sq, self.fm_beta_n)
        with np.errstate(invalid="ignore", divide="ignore"):
            beta = self.fm_num / self.fm_den - 1.0
            frame_mean = self.frame_mean_sum / self.frame_mean_n
        return {
            "two_time": tt, "two_time_sem": tt_sem,
            "g2": g2, "g2_err": g2_err, "g2_trains": self.g2t_n.max(axis=0),
            "g2_inter": git, "g2_inter_err": git_err, "g2_inter_pairs": self.it_n,
            "beta_moments": beta, "beta_moments_err": beta_err,
            "frame_mean": frame_mean,
            "train_ids": self.train_ids, "train_ring_mean": self.train_ring_mean,
            "hist": self.hist,
            "ring_ids": self.index.ring_ids, "ring_pixels": self.index.n_pixels,
        }


# ---------------------------------------------------------------------------------------
# Contrast and fits
# ---------------------------------------------------------------------------------------
def negative_binomial_contrast(hist: np.ndarray) -> tuple[float, float]:
    """XSVS: maximum-likelihood speckle contrast from a photon-count histogram.

    Fits the negative-binomial law ``P(k; k̄, M)`` with ``k̄`` the histogram mean and
    ``M = 1/β`` modes.  Pooling frames of different mean intensity broadens the
    histogram; prefer :class:`XpcsPartial`'s moment estimator when pulse energies vary.

    Returns
    -------
    (beta, beta_err)
        Contrast and its error from the curvature of the log-likelihood.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import gammaln

    h = np.asarray(hist, dtype=np.float64)
    k = np.arange(h.size)
    n = h.sum()
    if n == 0:
        return float("nan"), float("nan")
    kbar = (h * k).sum() / n

    def nll(log_m: float) -> float:
        m = np.exp(log_m)
        logp = (gammaln(k + m) - gammaln(m) - gammaln(k + 1)
                + k * np.log(kbar / (kbar + m)) + m * np.log(m / (kbar + m)))
        return -(h * logp).sum()

    res = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e4)), method="bounded",
                          options={"xatol": 1e-8})
    lm = res.x
    step = 1e-3
    curv = (nll(lm + step) - 2 * nll(lm) + nll(lm - step)) / step**2
    beta = float(np.exp(-lm))
    err = float(beta / np.sqrt(curv)) if curv > 0 else float("nan")
    return beta, err


def _g2_model(tau, baseline, beta, gamma):
    return baseline + beta * np.exp(-2.0 * gamma * tau)


def fit_g2(
    tau: np.ndarray,
    g2: np.ndarray,
    err: np.ndarray | None = None,
    min_lag: float = 0.0,
    fix_baseline: float | None = None,
) -> dict[str, np.ndarray]:
    """Fit ``g2 = baseline + β exp(−2Γτ)`` per ring.

    Parameters
    ----------
    tau
        Lag times (s), shape ``(n_lags,)``.  Lags ``≤ min_lag`` are excluded (use the
        default to drop τ = 0, which carries the shot-noise/self term).
    g2, err
        ``(n_rings, n_lags)`` values and 1σ errors (NaN entries ignored).
    fix_baseline
        Hold the baseline at this value (e.g. 1.0 for inter-train data that do not
        reach the decay plateau).

    Returns
    -------
    dict
        ``baseline, beta, gamma`` and their ``*_err`` (n_rings,), ``chi2_red``.
    """
    from scipy.optimize import curve_fit

    tau = np.asarray(tau, dtype=np.float64)
    g2 = np.atleast_2d(np.asarray(g2, dtype=np.float64))
    err = None if err is None else np.atleast_2d(np.asarray(err, dtype=np.float64))
    keys = ("baseline", "beta", "gamma")
    out = {k: np.full(g2.shape[0], np.nan) for k in keys}
    out.update({k + "_err": np.full(g2.shape[0], np.nan) for k in keys})
    out["chi2_red"] = np.full(g2.shape[0], np.nan)
    for r in range(g2.shape[0]):
        sel = (tau > min_lag) & np.isfinite(g2[r])
        if err is not None:
            sel &= np.isfinite(err[r]) & (err[r] > 0)
        if sel.sum() < 4:
            continue
        t, y = tau[sel], g2[r, sel]
        s = None if err is None else err[r, sel]
        base0 = fix_baseline if fix_baseline is not None else float(np.median(y[-max(3, y.size // 5):]))
        beta0 = max(float(y[0] - base0), 1e-3)
        half = np.nonzero(y - base0 < 0.5 * beta0)[0]
        gamma0 = np.log(2) / (2 * t[half[0]]) if half.size else 1.0 / (2 * t[-1])
        try:
            if fix_baseline is None:
                p, cov = curve_fit(_g2_model, t, y, p0=(base0, beta0, gamma0), sigma=s,
                                   absolute_sigma=s is not None,
                                   bounds=([0.5, 0.0, 0.0], [2.0, 2.0, np.inf]), maxfev=20000)
                perr = np.sqrt(np.diag(cov))
            else:
                f = lambda tt, b, g: _g2_model(tt, fix_baseline, b, g)  # noqa: E731
                p2, cov2 = curve_fit(f, t, y, p0=(beta0, gamma0), sigma=s,
                                     absolute_sigma=s is not None,
                                     bounds=([0.0, 0.0], [2.0, np.inf]), maxfev=20000)
                p = np.array([fix_baseline, *p2])
                perr = np.array([0.0, *np.sqrt(np.diag(cov2))])
        except (RuntimeError, ValueError):
            continue
        for k, v, e in zip(keys, p, perr):
            out[k][r], out[k + "_err"][r] = v, e
        resid = (y - _g2_model(t, *p)) / (s if s is not None else 1.0)
        out["chi2_red"][r] = float((resid**2).sum() / max(1, t.size - 3))
    return out


def fit_diffusion(q_nm: np.ndarray, gamma: np.ndarray, gamma_err: np.ndarray | None = None) -> dict[str, float]:
    """Brownian diffusion from relaxation rates: ``Γ = D q²``.

    Returns ``D`` (m²/s, weighted least squares through the origin in q², q converted
    to m⁻¹) with its error, and the exponent ``n`` of a free power law ``Γ ∝ qⁿ``
    (weighted fit in log–log) with its error, which tests the q² scaling.
    """
    q = np.asarray(q_nm, dtype=np.float64) * 1e9
    g = np.asarray(gamma, dtype=np.float64)
    e = np.ones_like(g) if gamma_err is None else np.asarray(gamma_err, dtype=np.float64)
    ok = np.isfinite(g) & np.isfinite(e) & (e > 0) & (g > 0)
    if ok.sum() < 2:
        raise ValueError("need Γ from at least two rings to fit D and the q exponent")
    q, g, e = q[ok], g[ok], e[ok]
    x = q**2
    w = 1.0 / e**2
    d = float((w * x * g).sum() / (w * x * x).sum())
    d_err = float(1.0 / np.sqrt((w * x * x).sum()))
    if gamma_err is not None:
        chi2 = float((w * (g - d * x) ** 2).sum() / max(1, g.size - 1))
        d_err *= max(1.0, np.sqrt(chi2))
    lw = (g / e) ** 2  # weights of log Γ
    coef, cov = np.polyfit(np.log(q), np.log(g), 1, w=np.sqrt(lw), cov="unscaled") if g.size > 2 else (
        np.polyfit(np.log(q), np.log(g), 1), np.full((2, 2), np.nan))
    return {"D_m2_per_s": d, "D_err": d_err, "q_exponent": float(coef[0]),
            "q_exponent_err": float(np.sqrt(cov[0, 0]))}


def ring_average(values: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """Inverse-variance mean of a per-ring quantity (e.g. β) and its error.

    Weighting by pixel count would be wrong for speckle statistics: the error of
    a contrast estimate grows as 1/⟨k⟩ at low counts, so the outer, dim rings
    carry many pixels but little information.  The error is scaled up by
    √χ²_red when the rings scatter more than their errors say.
    """
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(e) & (e > 0)
    if not ok.any():
        return float("nan"), float("nan")
    w = 1.0 / e[ok] ** 2
    mean = float((w * v[ok]).sum() / w.sum())
    err = float(1.0 / np.sqrt(w.sum()))
    if ok.sum() > 1:
        chi2 = float((w * (v[ok] - mean) ** 2).sum() / (ok.sum() - 1))
        err *= max(1.0, np.sqrt(chi2))
    return mean, err


# ---------------------------------------------------------------------------------------
# Run-level analysis and output
# ---------------------------------------------------------------------------------------
def analyse(
    partial: XpcsPartial,
    q_centres_nm: np.ndarray,
    pulse_spacing_s: float,
    train_spacing_s: float,
    fit_inter_train: bool | None = None,
    min_decay: float = 3.0,
) -> dict[str, Any]:
    """Turn merged sums into g2 curves, fits, D and contrast for one run.

    Parameters
    ----------
    partial
        The merged :class:`XpcsPartial` of the run.
    q_centres_nm
        q of each ring *label* in ``partial.index.ring_ids`` order (nm⁻¹).
    pulse_spacing_s, train_spacing_s
        Frame spacing within a train and train spacing.
    fit_inter_train
        Also fit the inter-train g2 (baseline fixed to 1); default: only when the
        intra-train fits fail to find decay for any ring.
    min_decay
        Rings whose free fit decays by less than ``2Γτ_max < min_decay`` within the
        train are refitted with the baseline fixed at 1 (``fit["baseline_fixed"]``).

    Returns
    -------
    dict
        Result arrays (see :meth:`XpcsPartial.result`), ``tau_s``, ``tau_inter_s``,
        ``fit`` (intra-train per-ring fit), ``fit_inter``, ``diffusion`` (D fit),
        ``beta_nb`` (negative-binomial contrast per ring), ``q_nm``.
    """
    res = partial.result()
    q = np.asarray(q_centres_nm, dtype=np.float64)
    if q.size != partial.index.n_rings:
        raise ValueError(f"{q.size} q values for {partial.index.n_rings} rings")
    tau = np.arange(partial.n_frames) * pulse_spacing_s
    tau_inter = np.arange(1, partial.max_train_lag + 1) * train_spacing_s
    fit = fit_g2(tau, res["g2"], res["g2_err"])
    # A free baseline is degenerate with β and Γ when the correlation has not decayed
    # within the train (inner rings); for an ergodic sample the baseline is 1, so
    # those rings are refitted with it held there.
    slow = ~(2.0 * fit["gamma"] * tau[-1] >= min_decay)
    fit["baseline_fixed"] = slow.copy()
    if slow.any():
        fixed = fit_g2(tau, res["g2"][slow], res["g2_err"][slow], fix_baseline=1.0)
        for k, v in fixed.items():
            fit[k][slow] = v
    out: dict[str, Any] = {**res, "q_nm": q, "tau_s": tau, "tau_inter_s": tau_inter, "fit": fit}
    try:
        out["diffusion"] = fit_diffusion(q, fit["gamma"], fit["gamma_err"])
    except ValueError:
        out["diffusion"] = {}
    if fit_inter_train is None:
        fit_inter_train = not out["diffusion"]
    if fit_inter_train:
        fi = fit_g2(tau_inter, res["g2_inter"], res["g2_inter_err"], fix_baseline=1.0)
        out["fit_inter"] = fi
        try:
            out["diffusion_inter"] = fit_diffusion(q, fi["gamma"], fi["gamma_err"])
        except ValueError:
            out["diffusion_inter"] = {}
    nb = np.array([negative_binomial_contrast(h) for h in res["hist"]])
    out["beta_nb"], out["beta_nb_err"] = nb[:, 0], nb[:, 1]
    return out


def _write_tree(group, d: dict) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            _write_tree(group.require_group(k), v)
        else:
            group.create_dataset(k, data=np.asarray(v))


def write_xpcs_h5(path: str | os.PathLike, analysis: dict[str, Any], provenance: dict | None = None) -> Path:
    """Write an :func:`analyse` result to HDF5 atomically (temp file + rename).

    Layout: ``/xpcs/{q_nm, tau_s, g2, g2_err, tau_inter_s, g2_inter, g2_inter_err,
    two_time, two_time_sem, beta_moments, beta_nb, frame_mean, train_ids,
    train_ring_mean, ...}``, ``/xpcs/fit/{baseline, beta, gamma, *_err, chi2_red}``,
    ``/xpcs/diffusion/{D_m2_per_s, D_err, q_exponent, q_exponent_err}``; provenance as
    a JSON attribute on the root (``xfel_reduce_provenance``).
    """
    import h5py

    from .io.provenance import attach_provenance

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("xpcs")
            _write_tree(g, {k: v for k, v in analysis.items() if v is not None})
            g["g2"].attrs["axes"] = "ring, lag (tau_s)"
            g["two_time"].attrs["axes"] = "ring, frame t1, frame t2"
            g["g2_inter"].attrs["axes"] = "ring, train lag (tau_inter_s)"
            g["diffusion"].attrs["units"] = json.dumps({"D_m2_per_s": "m^2/s"})
            attach_provenance(f, provenance or {})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
