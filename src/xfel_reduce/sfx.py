"""Serial femtosecond crystallography: peakfinder8-class Bragg peak finding and hit finding.

The algorithm follows the *peakfinder8* strategy of Cheetah (Barty et al., J. Appl.
Cryst. 47, 1118 (2014)) as implemented in OM, so that peak lists agree with OM run at
the same parameters:

1. **Radial background statistics.**  Pixels are binned by their rounded distance from
   the beam centre (``rint(radius)``, in pixels).  For every bin the mean and standard
   deviation of the good pixels are computed ``n_iterations`` times, each time using
   only pixels below the previous threshold, so Bragg peaks and hot pixels are clipped
   away from the background estimate.  The threshold per bin is
   ``max(adc_threshold, mean + min_snr·σ)``.
2. **Connected components.**  Panels (AGIPD tiles of 64×128 pixels) are scanned in
   order; a pixel above its radial threshold that is not yet part of a peak seeds a
   flood fill (8-connectivity, confined to the panel) over all pixels above threshold.
   Seeds are taken from the panel interior only (not the outermost row/column), as
   in peakfinder8.  Components with fewer than ``min_pix_count`` or more than
   ``max_pix_count`` pixels are rejected.
3. **Local background.**  Around the component's first centre of mass, the good
   pixels inside a disc of radius ``2·local_bg_radius`` (same panel) that are neither
   part of a peak nor above their radial threshold (so unfound neighbouring peaks do
   not inflate it) give a local offset and σ.  The peak is re-integrated against the
   local offset (total intensity, maximum); its position is the centre of mass
   weighted by the raw pixel values, which is what OM reports.
4. **Acceptance.**  ``SNR = total / σ_local ≥ min_snr`` and the peak maximum must be at
   least as high above the local offset as the brightest background pixel of the
   ring, which rejects peaks sitting on a bright, noisy neighbourhood.

Resolution limits (``min_res``/``max_res``, radii in pixels) and the bad-pixel map
enter through the pixel mask: masked pixels take part neither in the background
statistics nor in peaks.  Everything works on the stacked module layout
``(n_modules, 512, 128)`` of EuXFEL CORR data; positions are reported per module
(``module`` index into the stack, fractional ``ss``/``fs`` with pixel centres at
integers, the convention of Cheetah's and OM's peak lists).

The kernels are compiled with numba; a batch of frames is processed in parallel over
frames (``numba.set_num_threads`` controls the number of threads).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numba
import numpy as np

from . import geometry

#: AGIPD panel (ASIC pair) shape in (ss, fs): the unit inside which peaks are searched.
AGIPD_TILE_SHAPE = (64, 128)

#: AGIPD pixel size in metres, for radius maps in pixels.
AGIPD_PIXEL_SIZE_M = 200e-6


@dataclass(frozen=True)
class PeakFinderParams:
    """Parameters of the peakfinder8-class peak finder.

    Intensities are in the units of the data (photons for CORR data).

    Attributes
    ----------
    adc_threshold
        Absolute minimum pixel value for a peak pixel.  Protects against Poisson
        tails at low background, where ``mean + min_snr·σ`` falls below a few photons.
    min_snr
        Signal-to-noise ratio for both the radial pixel threshold and the integrated
        peak (``total / σ_local``).
    min_pix_count, max_pix_count
        Allowed number of connected pixels above threshold in a peak.
    local_bg_radius
        Local background is taken in a disc of radius ``2·local_bg_radius`` pixels.
    min_res, max_res
        Radial range (pixels from the beam centre) searched for peaks.
    max_num_peaks
        At most this many peaks are kept per frame (the first in scan order).
    min_peaks
        A frame is a hit when it holds at least this many peaks.
    n_iterations
        Sigma-clipping iterations of the radial statistics (5 in peakfinder8).
    """

    adc_threshold: float = 3.0
    min_snr: float = 5.0
    min_pix_count: int = 2
    max_pix_count: int = 200
    local_bg_radius: int = 3
    min_res: float = 0.0
    max_res: float = 10000.0
    max_num_peaks: int = 2048
    min_peaks: int = 10
    n_iterations: int = 5

    def __post_init__(self) -> None:
        problems = []
        if self.min_snr <= 0:
            problems.append(f"min_snr={self.min_snr} must be > 0")
        if not 1 <= self.min_pix_count <= self.max_pix_count:
            problems.append(
                f"need 1 <= min_pix_count ({self.min_pix_count}) <= max_pix_count ({self.max_pix_count})"
            )
        if self.local_bg_radius < 1:
            problems.append(f"local_bg_radius={self.local_bg_radius} must be >= 1")
        if not 0 <= self.min_res < self.max_res:
            problems.append(f"need 0 <= min_res ({self.min_res}) < max_res ({self.max_res})")
        if self.max_num_peaks < 1 or self.min_peaks < 1 or self.n_iterations < 1:
            problems.append("max_num_peaks, min_peaks and n_iterations must be >= 1")
        if problems:
            raise ValueError("invalid sfx peak-finder parameters: " + "; ".join(problems))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "PeakFinderParams":
        """Build from the ``sfx.peakfinder`` config section; unknown keys are an error."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(
                f"unknown sfx peak-finder parameter(s) {unknown}; allowed: {sorted(known)}"
            )
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_om(self) -> dict[str, Any]:
        """The same parameters named as OM's ``crystallography`` parameter group."""
        return {
            "max_num_peaks": self.max_num_peaks,
            "adc_threshold": self.adc_threshold,
            "minimum_snr": self.min_snr,
            "min_pixel_count": self.min_pix_count,
            "max_pixel_count": self.max_pix_count,
            "local_bg_radius": self.local_bg_radius,
            "min_res": int(self.min_res),
            "max_res": int(self.max_res),
        }


@dataclass
class PeakList:
    """Peaks of a batch of frames, stored flat (one row per peak) for speed.

    Peaks of frame ``i`` are rows ``offsets[i]:offsets[i+1]``.  ``module`` indexes the
    stacked module axis of the input; ``ss``/``fs`` are fractional pixel coordinates
    inside that module with pixel centres at integers.
    """

    n_peaks: np.ndarray  # (N,) int32
    offsets: np.ndarray  # (N+1,) int64
    frame: np.ndarray  # (P,) int64: frame index within the batch
    module: np.ndarray  # (P,) int16
    ss: np.ndarray  # (P,) float32
    fs: np.ndarray  # (P,) float32
    intensity: np.ndarray  # (P,) float32: total above local background
    snr: np.ndarray  # (P,) float32
    npix: np.ndarray  # (P,) int32
    max_intensity: np.ndarray  # (P,) float32: brightest pixel above local background
    local_sigma: np.ndarray  # (P,) float32
    min_peaks: int = 10

    PEAK_FIELDS = ("frame", "module", "ss", "fs", "intensity", "snr", "npix", "max_intensity", "local_sigma")

    @property
    def hit(self) -> np.ndarray:
        """Per-frame hit flag: at least ``min_peaks`` peaks."""
        return self.n_peaks >= self.min_peaks

    def __len__(self) -> int:
        return int(self.n_peaks.size)

    def frame_peaks(self, i: int) -> dict[str, np.ndarray]:
        """The peaks of frame ``i`` as a dict of arrays."""
        sl = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        return {k: getattr(self, k)[sl] for k in self.PEAK_FIELDS}

    def select(self, frames: np.ndarray) -> "PeakList":
        """The peak list of a subset of frames (bool mask or indices), renumbered."""
        idx = np.flatnonzero(frames) if np.asarray(frames).dtype == bool else np.asarray(frames, np.int64)
        rows = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]
        rows_a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        n = self.n_peaks[idx]
        new = {k: getattr(self, k)[rows_a] for k in self.PEAK_FIELDS}
        new["frame"] = np.repeat(np.arange(idx.size), n)
        return PeakList(n_peaks=n.copy(), offsets=np.concatenate([[0], np.cumsum(n)]).astype(np.int64),
                        min_peaks=self.min_peaks, **new)

    @classmethod
    def concatenate(cls, parts: Sequence["PeakList"]) -> "PeakList":
        """Join the peak lists of consecutive batches (frame indices are shifted)."""
        if not parts:
            raise ValueError("no peak lists to concatenate")
        shift = np.cumsum([0] + [len(p) for p in parts[:-1]])
        new = {k: np.concatenate([getattr(p, k) for p in parts]) for k in cls.PEAK_FIELDS}
        new["frame"] = np.concatenate([p.frame + s for p, s in zip(parts, shift)])
        n = np.concatenate([p.n_peaks for p in parts])
        return cls(n_peaks=n, offsets=np.concatenate([[0], np.cumsum(n)]).astype(np.int64),
                   min_peaks=parts[0].min_peaks, **new)


def radius_map_px(geom, modules: Sequence[int] | None = None,
                  pixel_size_m: float = AGIPD_PIXEL_SIZE_M) -> np.ndarray:
    """Distance of each pixel from the beam axis in pixels, ``(n_mod, 512, 128)``.

    The beam centre is the origin of the extra-geom geometry, as everywhere in
    :mod:`xfel_reduce.geometry`.
    """
    pos = geometry.pixel_positions(geom, 0.0, modules)
    return (np.hypot(pos[..., 0], pos[..., 1]) / pixel_size_m).astype(np.float32)


# --------------------------------------------------------------------------- kernels
# The kernels work on one frame as a 2-D array (n_mod·512, 128): panels are
# consecutive blocks of `tile_ny` rows, which is how the stacked layout is ordered.


@numba.njit(cache=True, nogil=True)
def _radial_thresholds(data, good, rbin, nbins, adc_threshold, min_snr, n_iter):
    """Iteratively sigma-clipped mean, σ and threshold per radial bin."""
    roffset = np.zeros(nbins, np.float64)
    rsigma = np.zeros(nbins, np.float64)
    rthreshold = np.full(nbins, 1e9, np.float64)
    s1 = np.zeros(nbins, np.float64)
    s2 = np.zeros(nbins, np.float64)
    cnt = np.zeros(nbins, np.int64)
    ny, nx = data.shape
    for _ in range(n_iter):
        s1[:] = 0.0
        s2[:] = 0.0
        cnt[:] = 0
        for y in range(ny):
            for x in range(nx):
                if good[y, x]:
                    b = rbin[y, x]
                    v = data[y, x]
                    # NaN fails the comparison; the lower bound drops -inf.
                    if v < rthreshold[b] and v > -np.inf:
                        s1[b] += v
                        s2[b] += v * v
                        cnt[b] += 1
        for b in range(nbins):
            if cnt[b] == 0:
                roffset[b] = 0.0
                rsigma[b] = 0.0
                rthreshold[b] = 1e9
            else:
                m = s1[b] / cnt[b]
                var = s2[b] / cnt[b] - m * m
                sd = np.sqrt(var) if var > 0.0 else 0.0
                roffset[b] = m
                rsigma[b] = sd
                thr = m + min_snr * sd
                rthreshold[b] = thr if thr > adc_threshold else adc_threshold
    return roffset, rsigma, rthreshold


@numba.njit(cache=True, nogil=True)
def _peaks_one_frame(data, good, rbin, nbins, tile_ny, tile_nx, adc_threshold, min_snr,
                     min_pix, max_pix, bg_radius, n_iter, max_peaks,
                     o_x, o_y, o_int, o_snr, o_npix, o_max, o_sigma):
    """peakfinder8 on one frame; fills the output rows and returns the peak count."""
    roffset, _rsigma, rthr = _radial_thresholds(data, good, rbin, nbins, adc_threshold, min_snr, n_iter)
    ny, nx = data.shape
    in_peak = np.zeros((ny, nx), np.uint8)
    cap = tile_ny * tile_nx
    px = np.empty(cap, np.int64)  # flood-fill queue, panel-local coordinates
    py = np.empty(cap, np.int64)
    ring = 2 * bg_radius
    n_found = 0
    n_tiles_y = ny // tile_ny
    n_tiles_x = nx // tile_nx
    for ty in range(n_tiles_y):
        y0 = ty * tile_ny
        for tx in range(n_tiles_x):
            x0 = tx * tile_nx
            for j in range(1, tile_ny - 1):
                for i in range(1, tile_nx - 1):
                    ys = y0 + j
                    xs = x0 + i
                    v0 = data[ys, xs]
                    # `not v0 > thr` also rejects NaN; +inf is rejected explicitly.
                    if in_peak[ys, xs] or not good[ys, xs] or not v0 > rthr[rbin[ys, xs]] or v0 == np.inf:
                        continue
                    # --- flood fill of the connected component above threshold
                    in_peak[ys, xs] = 1
                    px[0] = i
                    py[0] = j
                    n = 1
                    head = 0
                    sum_i = 0.0
                    sum_x = 0.0
                    sum_y = 0.0
                    while head < n:
                        ci = px[head]
                        cj = py[head]
                        head += 1
                        b = rbin[y0 + cj, x0 + ci]
                        v = data[y0 + cj, x0 + ci] - roffset[b]
                        sum_i += v
                        sum_x += v * (x0 + ci)
                        sum_y += v * (y0 + cj)
                        for dj in range(-1, 2):
                            nj = cj + dj
                            if nj < 0 or nj >= tile_ny:
                                continue
                            for di in range(-1, 2):
                                ni = ci + di
                                if ni < 0 or ni >= tile_nx:
                                    continue
                                yy = y0 + nj
                                xx = x0 + ni
                                if in_peak[yy, xx] or not good[yy, xx]:
                                    continue
                                vn = data[yy, xx]
                                if vn > rthr[rbin[yy, xx]] and vn < np.inf:
                                    in_peak[yy, xx] = 1
                                    px[n] = ni
                                    py[n] = nj
                                    n += 1
                    if n < min_pix or n > max_pix:
                        continue
                    if abs(sum_i) < 1e-10:
                        continue
                    # --- local background in a disc around the first centre of mass
                    cx = int(np.rint(sum_x / abs(sum_i))) - x0
                    cy = int(np.rint(sum_y / abs(sum_i))) - y0
                    nb = 0
                    b1 = 0.0
                    b2 = 0.0
                    bmax = 0.0
                    for bj in range(-ring, ring):
                        yj = cy + bj
                        if yj < 0 or yj >= tile_ny:
                            continue
                        for bi in range(-ring, ring):
                            xi = cx + bi
                            if xi < 0 or xi >= tile_nx:
                                continue
                            if bi * bi + bj * bj > ring * ring:
                                continue
                            yy = y0 + yj
                            xx = x0 + xi
                            v = data[yy, xx]
                            if in_peak[yy, xx] or not good[yy, xx] or not v < rthr[rbin[yy, xx]] or v == -np.inf:
                                continue
                            nb += 1
                            b1 += v
                            b2 += v * v
                            if v > bmax:
                                bmax = v
                    if nb > 0:
                        loff = b1 / nb
                        var = b2 / nb - loff * loff
                        lsig = np.sqrt(var) if var > 0.0 else 0.0
                    else:
                        cyg = min(max(cy, 0), tile_ny - 1) + y0
                        cxg = min(max(cx, 0), tile_nx - 1) + x0
                        loff = roffset[rbin[cyg, cxg]]
                        lsig = 0.01
                    # --- re-integrate against the local background
                    tot = 0.0
                    raw = 0.0
                    mx = 0.0
                    sx = 0.0
                    sy = 0.0
                    for k in range(n):
                        xx = x0 + px[k]
                        yy = y0 + py[k]
                        r = data[yy, xx]
                        v = r - loff
                        tot += v
                        raw += r
                        sx += r * xx
                        sy += r * yy
                        if v > mx:
                            mx = v
                    if tot == 0.0:
                        continue
                    if lsig > 0.0:
                        snr = tot / lsig
                    else:
                        # A perfectly flat background (all zeros in sparse photon data):
                        # any positive peak is infinitely significant.
                        snr = np.inf if tot > 0 else -np.inf
                    if snr < min_snr:
                        continue
                    if mx < bmax - loff:
                        continue
                    if n_found < max_peaks:
                        o_x[n_found] = sx / raw
                        o_y[n_found] = sy / raw
                        o_int[n_found] = tot
                        o_snr[n_found] = snr
                        o_npix[n_found] = n
                        o_max[n_found] = mx
                        o_sigma[n_found] = lsig
                        n_found += 1
    return n_found


@numba.njit(cache=True, parallel=True)
def _peaks_batch(frames, good, rbin, nbins, tile_ny, tile_nx, adc_threshold, min_snr,
                 min_pix, max_pix, bg_radius, n_iter, max_peaks,
                 o_x, o_y, o_int, o_snr, o_npix, o_max, o_sigma, o_n):
    per_frame_mask = good.shape[0] == frames.shape[0]
    for f in numba.prange(frames.shape[0]):
        g = good[f] if per_frame_mask else good[0]
        o_n[f] = _peaks_one_frame(frames[f], g, rbin, nbins, tile_ny, tile_nx, adc_threshold,
                                  min_snr, min_pix, max_pix, bg_radius, n_iter, max_peaks,
                                  o_x[f], o_y[f], o_int[f], o_snr[f], o_npix[f], o_max[f], o_sigma[f])


# --------------------------------------------------------------------------- API


class PeakFinder:
    """peakfinder8-class peak finder bound to a detector layout.

    Parameters
    ----------
    radius
        Radius of each pixel from the beam centre in pixels, ``(n_mod, 512, 128)``
        (see :func:`radius_map_px`).
    params
        Peak-finder parameters.
    bad
        Static bad-pixel map, same shape, nonzero = bad (EuXFEL BadPixels bits or
        bool).  Optional.
    tile_shape
        Panel shape ``(ss, fs)`` inside which peaks are searched (AGIPD: 64×128).
    """

    def __init__(self, radius: np.ndarray, params: PeakFinderParams | None = None,
                 bad: np.ndarray | None = None, tile_shape: tuple[int, int] = AGIPD_TILE_SHAPE):
        self.params = params or PeakFinderParams()
        radius = np.asarray(radius, dtype=np.float64)
        if radius.ndim != 3:
            raise ValueError(f"radius map must be (n_modules, ss, fs), got shape {radius.shape}")
        if not np.all(np.isfinite(radius)) or radius.min() < 0:
            raise ValueError("radius map holds negative or non-finite values: check the geometry")
        self.module_shape = radius.shape
        n_mod, mss, mfs = radius.shape
        if mss % tile_shape[0] or mfs % tile_shape[1]:
            raise ValueError(f"module shape {(mss, mfs)} is not a multiple of tile shape {tile_shape}")
        self.tile_shape = tuple(int(t) for t in tile_shape)
        self.radius = radius.reshape(n_mod * mss, mfs)
        # Bins of rounded radius, as peakfinder8 (round half to even, like C's rint).
        self.rbin = np.rint(self.radius).astype(np.int32)
        self.nbins = int(self.rbin.max()) + 1
        p = self.params
        good = (self.radius >= p.min_res) & (self.radius <= p.max_res)
        if bad is not None:
            bad = np.asarray(bad)
            if bad.shape != self.module_shape:
                raise ValueError(f"bad-pixel map shape {bad.shape} != detector shape {self.module_shape}")
            good &= bad.reshape(self.radius.shape) == 0
        self.good = good.astype(np.uint8)

    def find(self, frames: np.ndarray, bad: np.ndarray | None = None) -> PeakList:
        """Find peaks in a batch of frames.

        Parameters
        ----------
        frames
            ``(N, n_mod, 512, 128)`` (or a single ``(n_mod, 512, 128)`` frame), any
            real dtype; converted to float32.  Non-finite pixels are treated as bad.
        bad
            Optional per-frame (``(N, n_mod, 512, 128)``) or static bad-pixel mask,
            nonzero = bad (e.g. CORR ``image.mask``), combined with the static map.

        Returns
        -------
        PeakList
        """
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.shape[1:] != self.module_shape:
            raise ValueError(
                f"frames have shape {frames.shape[1:]} per frame but the peak finder was set up "
                f"for {self.module_shape}: pass the same module selection as the radius map"
            )
        n = frames.shape[0]
        h, w = self.radius.shape
        data = np.ascontiguousarray(frames, dtype=np.float32).reshape(n, h, w)
        # Non-finite pixels (NaN fill of missing data) are treated as bad inside the
        # kernels, which saves a full pass over the frames here.
        if bad is None:
            good = self.good[None]
        else:
            bad = np.asarray(bad)
            if bad.ndim == 4:
                if bad.shape != (n,) + self.module_shape:
                    raise ValueError(f"bad-pixel mask shape {bad.shape}, expected {(n,) + self.module_shape}")
                good = self.good[None] & (bad.reshape(n, h, w) == 0)
            else:
                if bad.shape != self.module_shape:
                    raise ValueError(f"bad-pixel mask shape {bad.shape}, expected {self.module_shape}")
                good = (self.good & (bad.reshape(h, w) == 0))[None]
        p = self.params
        m = p.max_num_peaks
        out_f = [np.zeros((n, m), np.float32) for _ in range(6)]
        o_npix = np.zeros((n, m), np.int32)
        o_n = np.zeros(n, np.int64)
        _peaks_batch(data, np.ascontiguousarray(good, dtype=np.uint8), self.rbin, self.nbins,
                     self.tile_shape[0], self.tile_shape[1], float(p.adc_threshold), float(p.min_snr),
                     int(p.min_pix_count), int(p.max_pix_count), int(p.local_bg_radius),
                     int(p.n_iterations), m, out_f[0], out_f[1], out_f[2], out_f[3], o_npix,
                     out_f[4], out_f[5], o_n)
        keep = np.arange(m)[None, :] < o_n[:, None]
        x, y = out_f[0][keep], out_f[1][keep]
        mss = self.module_shape[1]
        module = np.floor(y / mss).astype(np.int16)
        # A centre of mass lies inside its panel, so floor() gives the right module;
        # clip guards against rounding at the very last row.
        module = np.clip(module, 0, self.module_shape[0] - 1)
        return PeakList(
            n_peaks=o_n.astype(np.int32),
            offsets=np.concatenate([[0], np.cumsum(o_n)]).astype(np.int64),
            frame=np.repeat(np.arange(n, dtype=np.int64), o_n),
            module=module,
            ss=(y - module.astype(np.float32) * mss).astype(np.float32),
            fs=x.astype(np.float32),
            intensity=out_f[2][keep],
            snr=out_f[3][keep],
            npix=o_npix[keep],
            max_intensity=out_f[4][keep],
            local_sigma=out_f[5][keep],
            min_peaks=p.min_peaks,
        )


def find_peaks(frames: np.ndarray, radius: np.ndarray, params: PeakFinderParams | None = None,
               bad: np.ndarray | None = None) -> PeakList:
    """Find Bragg peaks in frames ``(N, n_mod, 512, 128)``; see :class:`PeakFinder`.

    ``bad`` may be static ``(n_mod, 512, 128)`` or per frame; nonzero = bad.  For many
    batches build one :class:`PeakFinder` and call :meth:`PeakFinder.find` instead.
    """
    return PeakFinder(radius, params).find(frames, bad)


# --------------------------------------------------------------------------- run statistics


def hit_statistics(train_ids: np.ndarray, pulse_ids: np.ndarray, n_peaks: np.ndarray,
                   hit: np.ndarray, xray: np.ndarray | None = None,
                   max_peaks_hist: int = 512) -> dict[str, Any]:
    """Per-run hit statistics from per-frame results.

    Counts (not only rates) are returned so that results of run chunks can be merged
    by summing counts over equal train/pulse ids.

    Parameters
    ----------
    train_ids, pulse_ids, n_peaks, hit
        Per-frame arrays (annotation / peak-finder output).
    xray
        Optional per-frame X-ray flag: only X-ray frames count as frames that could
        be hits (dark frames are left out of the rates).
    max_peaks_hist
        Peak counts ≥ this value go into the last histogram bin.

    Returns
    -------
    dict
        ``n_frames``, ``n_hits``, ``hit_rate``; ``trains``, ``frames_per_train``,
        ``hits_per_train``, ``hit_rate_per_train``; ``pulses``, ``frames_per_pulse``,
        ``hits_per_pulse``, ``hit_rate_per_pulse``; ``peak_hist_counts`` (bins 0 …
        ``max_peaks_hist``, one per peak count).
    """
    train_ids = np.asarray(train_ids)
    pulse_ids = np.asarray(pulse_ids)
    n_peaks = np.asarray(n_peaks)
    hit = np.asarray(hit, bool)
    n = train_ids.size
    if not (pulse_ids.size == n_peaks.size == hit.size == n):
        raise ValueError(f"per-frame arrays differ in length: trainId {n}, pulseId {pulse_ids.size}, "
                         f"n_peaks {n_peaks.size}, hit {hit.size}")
    use = np.ones(n, bool) if xray is None else np.asarray(xray, bool)
    trains, t_inv = np.unique(train_ids[use], return_inverse=True)
    pulses, p_inv = np.unique(pulse_ids[use], return_inverse=True)
    h = hit[use].astype(np.int64)
    ft = np.bincount(t_inv, minlength=trains.size)
    ht = np.bincount(t_inv, weights=h, minlength=trains.size).astype(np.int64)
    fp = np.bincount(p_inv, minlength=pulses.size)
    hp = np.bincount(p_inv, weights=h, minlength=pulses.size).astype(np.int64)
    hist = np.bincount(np.minimum(n_peaks[use], max_peaks_hist).astype(np.int64), minlength=max_peaks_hist + 1)
    n_use = int(use.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "n_frames": n_use,
            "n_hits": int(h.sum()),
            "hit_rate": float(h.sum() / n_use) if n_use else float("nan"),
            "trains": trains, "frames_per_train": ft, "hits_per_train": ht, "hit_rate_per_train": ht / ft,
            "pulses": pulses, "frames_per_pulse": fp, "hits_per_pulse": hp, "hit_rate_per_pulse": hp / fp,
            "peak_hist_counts": hist,
        }


def peak_positions_lab(geom, module_numbers: np.ndarray, ss: np.ndarray, fs: np.ndarray) -> np.ndarray:
    """Lab positions ``(P, 3)`` in metres of peaks given in module pixel coordinates.

    Uses the geometry's own panel transforms (extra-geom ``data_coords_to_positions``);
    positions are those of the pixel-centre convention used by the peak lists.
    """
    m = np.asarray(module_numbers, np.int64)
    if m.size == 0:
        return np.zeros((0, 3))
    # extra-geom maps the pixel *corner* at integer coordinates; our centres are at
    # integers, hence the half-pixel shift.
    return np.asarray(geom.data_coords_to_positions(m, np.asarray(ss, np.float64) + 0.5,
                                                     np.asarray(fs, np.float64) + 0.5))


# --------------------------------------------------------------------------- workflow step


def process_sequence(reader, finder: PeakFinder, writer=None, trains_per_chunk: int = 4,
                     progress=None) -> dict[str, np.ndarray]:
    """Find peaks in one sequence of corrected data and stream its hits to a CXI file.

    Parameters
    ----------
    reader
        Object with ``modules`` and ``iter_chunks(trains_per_chunk)`` yielding chunks
        with ``train_ids``, ``pulse_ids``, ``cell_ids``, ``data`` (float32 photons,
        ``(n, n_mod, 512, 128)``) and ``mask`` (BadPixels bits, nonzero = bad), as
        :class:`xfel_reduce.io.frames.SequenceFrames`.
    finder
        Peak finder set up for the same modules, in the same order.
    writer
        Optional :class:`xfel_reduce.io.cxi.CxiHitWriter` receiving the hit frames.
    trains_per_chunk
        Trains read per chunk (bounds memory: ~1 MiB × frames × modules / 16).
    progress
        Optional logger (``.info``) for progress messages.

    Returns
    -------
    dict
        Per-frame ``trainId``, ``pulseId``, ``cellId``, ``n_peaks`` (int32) and ``hit``,
        in reader order, ready to merge into the annotation table.
    """
    import time

    parts: list[dict[str, np.ndarray]] = []
    t0 = time.monotonic()
    n_frames = 0
    for chunk in reader.iter_chunks(trains_per_chunk):
        pl = finder.find(chunk.data, bad=chunk.mask)
        hit = pl.hit
        if writer is not None and hit.any():
            writer.append(chunk.data[hit], chunk.mask[hit], chunk.train_ids[hit], chunk.pulse_ids[hit],
                          chunk.cell_ids[hit], pl.select(hit))
        parts.append({"trainId": np.asarray(chunk.train_ids), "pulseId": np.asarray(chunk.pulse_ids),
                      "cellId": np.asarray(chunk.cell_ids), "n_peaks": pl.n_peaks, "hit": hit})
        n_frames += len(pl)
        if progress is not None:
            el = max(time.monotonic() - t0, 1e-9)
            progress.info("sfx: %d frames, %d hits so far (%.1f frames/s)", n_frames,
                          sum(int(p["hit"].sum()) for p in parts), n_frames / el)
    keys = ("trainId", "pulseId", "cellId", "n_peaks", "hit")
    if not parts:
        return {k: np.zeros(0) for k in keys}
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}
