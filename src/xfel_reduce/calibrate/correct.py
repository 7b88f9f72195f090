"""Correction of raw frames: gain stage → offset → gain → photons, with bad-pixel mask.

Two fused, parallel kernels, one per gain encoding: a separate digital sample
compared with per-pixel thresholds (AGIPD), or the two top bits of the ADC word
(JUNGFRAU).  Each pixel is read once and written once, with the constants of its
cell and gain stage, instead of the many temporaries of an array-at-a-time
implementation (``benchmarks/bench_foundation.py`` states bytes per pixel and GB/s).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .badpixels import BadPixels

DECODE_THRESHOLDS = 0  # AGIPD: digital sample vs. thresholds
DECODE_GAIN_BITS = 1  # JUNGFRAU: bits 14–15 of the ADC word (0→G0, 1→G1, 3→G2)

_OUT_OF_RANGE = np.uint32(BadPixels.VALUE_OUT_OF_RANGE)
_IS_NAN = np.uint32(BadPixels.VALUE_IS_NAN)
_WRONG_GAIN = np.uint32(BadPixels.WRONG_GAIN_VALUE)


@numba.njit(inline="always", cache=True)
def _store(orow, grow, mrow, x, v, g, m) -> int:  # pragma: no cover - compiled
    """Write one corrected pixel; a non-finite value is NaN and flagged VALUE_IS_NAN
    (returns 1 then, else 0: the caller counts NaN pixels per frame)."""
    fin = np.isfinite(v)
    orow[x] = v if fin else np.float32(np.nan)
    grow[x] = g
    mrow[x] = m if fin else m | _IS_NAN
    return 0 if fin else 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _correct_agipd(raw, cells, thresholds, offset, inv_gain, badpix, saturation,
                   out, gain_out, mask_out, dest, slot, nan_rows):  # pragma: no cover - compiled
    # One image row per iteration: the row's constants of the frame's cell are taken
    # once as 1-D views, so the pixel loop indexes contiguous rows (what lets the
    # compiler keep it tight; 3x faster than 4-D indexing per pixel), and the raw
    # (analog, digital) pair is read in place, without the copies a slice costs.
    # Frame i goes to out[dest[i], slot]: the one pass writes each module straight
    # into its place in the chunk (n_frames, n_modules, ny, nx), no second copy.
    n, _, ny, nx = raw.shape
    for k in numba.prange(n * ny):
        i = k // ny
        y = k % ny
        c = cells[i]
        a_row, d_row = raw[i, 0, y], raw[i, 1, y]
        t0, o0, g0, b0 = thresholds[0, c, y], offset[0, c, y], inv_gain[0, c, y], badpix[0, c, y]
        r = dest[i]
        orow, grow, mrow = out[r, slot, y], gain_out[r, slot, y], mask_out[r, slot, y]
        # Nearly all rows hold high-gain pixels only (96.6 % of the rows, 99.97 % of
        # the pixels in the demo's SAXS run): correct the row as high gain with the
        # high-gain constants alone, 29 bytes per pixel read and written instead of
        # the 57 of selecting among the stages (a select loads every stage's
        # constants), and count the pixels that are not; only a row with such pixels
        # is corrected again with the selects.  Measured on the demo's SAXS module
        # frames, one thread: 0.49 -> 0.13 ms per module frame, bit-identical; a row
        # mix with 30 % low-gain pixels everywhere costs 1.16x the select-only loop.
        n_low = 0
        bad = 0
        for x in range(nx):
            n_low += 0 if np.float32(d_row[x]) < t0[x] else 1
            bad += _store(orow, grow, mrow, x, (np.float32(a_row[x]) - o0[x]) * g0[x], 0, b0[x])
        if n_low:
            bad = 0
            # the stage picked by selects, not branches: the stage changes from pixel
            # to pixel with the signal, and mispredicted jumps cost more than the loads
            t1 = thresholds[1, c, y]
            o1, o2 = offset[1, c, y], offset[2, c, y]
            g1, g2 = inv_gain[1, c, y], inv_gain[2, c, y]
            b1, b2 = badpix[1, c, y], badpix[2, c, y]
            for x in range(nx):
                a = a_row[x]
                d = np.float32(d_row[x])
                s0 = d < t0[x]
                s1 = d < t1[x]
                o = o0[x] if s0 else (o1[x] if s1 else o2[x])
                gi = g0[x] if s0 else (g1[x] if s1 else g2[x])
                m = b0[x] if s0 else (b1[x] if s1 else b2[x])
                g = 0 if s0 else (1 if s1 else 2)
                m |= _OUT_OF_RANGE if (g == 2) & (a >= saturation) else np.uint32(0)
                bad += _store(orow, grow, mrow, x, (np.float32(a) - o) * gi, g, m)
        nan_rows[k] = bad


@numba.njit(parallel=True, cache=True, nogil=True)
def _correct_gain_bits(raw, cells, offset, inv_gain, badpix, saturation,
                       out, gain_out, mask_out, dest, slot, nan_rows):  # pragma: no cover - compiled
    # JUNGFRAU: the gain stage is in bits 14-15 of the ADC word (0 -> G0, 1 -> G1,
    # 3 -> G2; 2 is not a valid stage and flagged), row by row as above.
    n, ny, nx = raw.shape
    for k in numba.prange(n * ny):
        i = k // ny
        y = k % ny
        c = cells[i]
        w_row = raw[i, y]
        r = dest[i]
        orow, grow, mrow = out[r, slot, y], gain_out[r, slot, y], mask_out[r, slot, y]
        bad = 0
        for x in range(nx):
            word = np.int64(w_row[x])
            a = word & 0x3FFF
            bits = word >> 14
            g = 2 if bits >= 2 else bits
            m = badpix[g, c, y, x]
            v = (np.float32(a) - offset[g, c, y, x]) * inv_gain[g, c, y, x]
            if bits == 2:
                m |= _WRONG_GAIN
            if a >= saturation and g == 2:
                m |= _OUT_OF_RANGE
            bad += _store(orow, grow, mrow, x, v, g, m)
        nan_rows[k] = bad


@numba.njit(parallel=True, cache=True, nogil=True)
def _common_mode_kernel(data, gain, mask, asic_ny, asic_nx, window, min_fraction):  # pragma: no cover
    n, ny, nx = data.shape
    n_ay = ny // asic_ny
    n_ax = nx // asic_nx
    for t in numba.prange(n * n_ay * n_ax):
        i = t // (n_ay * n_ax)
        rem = t % (n_ay * n_ax)
        y0 = (rem // n_ax) * asic_ny
        x0 = (rem % n_ax) * asic_nx
        buf = np.empty(asic_ny * asic_nx, np.float32)
        m = 0
        for y in range(y0, y0 + asic_ny):
            for x in range(x0, x0 + asic_nx):
                v = data[i, y, x]
                if gain[i, y, x] == 0 and mask[i, y, x] == 0 and np.isfinite(v):
                    buf[m] = v
                    m += 1
        if m < min_fraction * asic_ny * asic_nx:
            continue  # too few usable pixels: leave the ASIC untouched
        # First a median of all pixels (robust while most pixels see no photon), then
        # a median of those near it, so that photon hits cannot pull the estimate.
        cm0 = np.median(buf[:m])
        k = 0
        for j in range(m):
            if abs(buf[j] - cm0) < window:
                buf[k] = buf[j]
                k += 1
        if k < min_fraction * asic_ny * asic_nx:
            continue
        cm = np.median(buf[:k])
        for y in range(y0, y0 + asic_ny):
            for x in range(x0, x0 + asic_nx):
                if gain[i, y, x] == 0:
                    data[i, y, x] -= cm


@dataclass
class CorrectionConstants:
    """Constants of one module, arrays ``(n_gains, n_cells, ny, nx)``."""

    offset: np.ndarray
    adu_per_photon: np.ndarray
    badpixels: np.ndarray
    thresholds: np.ndarray | None = None  # (2, n_cells, ny, nx) for DECODE_THRESHOLDS
    saturation: int = 16383

    def __post_init__(self) -> None:
        self.offset = np.ascontiguousarray(self.offset, np.float32)
        self.adu_per_photon = np.ascontiguousarray(self.adu_per_photon, np.float32)
        # photons = (ADU - offset) * (1 / gain): a multiply per pixel instead of a
        # division (1.5x the kernel's speed; results within 1 ulp of the division)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.inv_adu_per_photon = (np.float32(1) / self.adu_per_photon).astype(np.float32)
        self.badpixels = np.ascontiguousarray(self.badpixels, np.uint32)
        if self.thresholds is not None:
            self.thresholds = np.ascontiguousarray(self.thresholds, np.float32)

    @property
    def n_cells(self) -> int:
        return self.offset.shape[1]


@dataclass
class CommonMode:
    """Per-ASIC common-mode correction (median of dark high-gain pixels per frame).

    Pixels within ±``window`` photons of the ASIC's overall median count as dark;
    ASICs with fewer than ``min_fraction`` dark pixels are left alone because their
    median would be biased by signal.
    """

    enabled: bool = False
    asic_shape: tuple[int, int] = (64, 64)
    window: float = 0.5
    min_fraction: float = 0.3


def correct(
    raw: np.ndarray,
    cells: np.ndarray,
    constants: CorrectionConstants,
    mode: int = DECODE_THRESHOLDS,
    common_mode: CommonMode | None = None,
    user_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correct raw frames of one module to photons.

    Parameters
    ----------
    raw
        AGIPD: ``(n, 2, ny, nx)`` uint16 (analog, digital); JUNGFRAU: ``(n, ny, nx)``
        uint16 ADC words with gain bits.
    cells
        Memory cell of each frame.
    constants
        Offsets, gains, bad pixels (and thresholds for AGIPD).
    mode
        :data:`DECODE_THRESHOLDS` or :data:`DECODE_GAIN_BITS`.
    common_mode
        Optional per-ASIC common-mode correction.
    user_mask
        Optional ``(ny, nx)`` bool, True = exclude; OR-ed into the mask as USER_MASK.

    Returns
    -------
    data, gain, mask
        float32 photons, uint8 gain stage, uint32 EuXFEL bad-pixel bits.
    """
    shape = raw.shape[2:] if mode == DECODE_THRESHOLDS else raw.shape[1:]
    n = raw.shape[0]
    data = np.empty((n, 1) + shape, np.float32)
    gain = np.empty((n, 1) + shape, np.uint8)
    mask = np.empty((n, 1) + shape, np.uint32)
    correct_into(raw, cells, constants, data, gain, mask, np.arange(n), 0, mode)
    data, gain, mask = data[:, 0], gain[:, 0], mask[:, 0]
    if user_mask is not None:
        mask[:, user_mask] |= np.uint32(BadPixels.USER_MASK)
    if common_mode is not None and common_mode.enabled:
        _common_mode_kernel(data, gain, mask, common_mode.asic_shape[0], common_mode.asic_shape[1],
                            np.float32(common_mode.window), common_mode.min_fraction)
    return data, gain, mask


def correct_into(raw: np.ndarray, cells: np.ndarray, constants: CorrectionConstants, data: np.ndarray,
                 gain: np.ndarray, mask: np.ndarray, dest: np.ndarray, slot: int,
                 mode: int = DECODE_THRESHOLDS) -> np.ndarray:
    """Correct raw frames of one module into ``data[dest[i], slot]`` (and ``gain``,
    ``mask``) of C-contiguous ``(n_out, n_slots, ny, nx)`` arrays: the chunk of all
    modules is filled in place, without a per-module array and a copy.

    Returns
    -------
    np.ndarray
        Non-finite (NaN, flagged VALUE_IS_NAN) pixels per frame, int32 ``(n,)``.
    """
    cells = np.ascontiguousarray(cells, dtype=np.int64)
    if cells.size and int(cells.max()) >= constants.n_cells:
        raise ValueError(
            f"memory cell {int(cells.max())} in the data but constants exist for only "
            f"{constants.n_cells} cells: take darks with as many cells as the run"
        )
    if mode == DECODE_THRESHOLDS:
        if raw.ndim != 4 or raw.shape[1] != 2:
            raise ValueError(f"AGIPD raw data must be (n, 2, ny, nx), got {raw.shape}")
        if constants.thresholds is None:
            raise ValueError("threshold decoding needs gain thresholds from dark runs")
        shape = raw.shape[2:]
    else:
        shape = raw.shape[1:]
    for name, a in (("data", data), ("gain", gain), ("mask", mask)):
        if a.ndim != 4 or a.shape[2:] != shape or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous (n, slots) + {shape} array, got {a.shape}")
    dest = np.ascontiguousarray(dest, np.int64)
    if dest.shape != (raw.shape[0],):
        raise ValueError(f"{dest.size} destination rows for {raw.shape[0]} frames")
    n, ny = raw.shape[0], shape[0]
    nan_rows = np.zeros(n * ny, np.int32)
    raw = np.ascontiguousarray(raw)
    if mode == DECODE_THRESHOLDS:
        _correct_agipd(raw, cells, constants.thresholds, constants.offset, constants.inv_adu_per_photon,
                       constants.badpixels, constants.saturation, data, gain, mask, dest, slot, nan_rows)
    else:
        _correct_gain_bits(raw, cells, constants.offset, constants.inv_adu_per_photon, constants.badpixels,
                           constants.saturation, data, gain, mask, dest, slot, nan_rows)
    return nan_rows.reshape(n, ny).sum(axis=1, dtype=np.int32)


def correct_reference_numpy(raw: np.ndarray, cells: np.ndarray, constants: CorrectionConstants):
    """Plain numpy (``np.where``-style) AGIPD correction: the benchmark reference.

    Gives the same result as :func:`correct` without common mode; used to check the
    fused kernel and to measure its speed-up.
    """
    analog = raw[:, 0].astype(np.float32)
    digital = raw[:, 1].astype(np.float32)
    thr = constants.thresholds[:, cells]
    g = np.where(digital < thr[0], 0, np.where(digital < thr[1], 1, 2)).astype(np.uint8)
    off = np.where(g == 0, constants.offset[0, cells],
                   np.where(g == 1, constants.offset[1, cells], constants.offset[2, cells]))
    gn = np.where(g == 0, constants.adu_per_photon[0, cells],
                  np.where(g == 1, constants.adu_per_photon[1, cells], constants.adu_per_photon[2, cells]))
    bp = np.where(g == 0, constants.badpixels[0, cells],
                  np.where(g == 1, constants.badpixels[1, cells], constants.badpixels[2, cells]))
    with np.errstate(divide="ignore", invalid="ignore"):
        data = (analog - off) / gn
    bp = bp | np.where((raw[:, 0] >= constants.saturation) & (g == 2), _OUT_OF_RANGE, 0).astype(np.uint32)
    bad_value = ~np.isfinite(data)
    bp = bp | np.where(bad_value, _IS_NAN, 0).astype(np.uint32)
    data = np.where(bad_value, np.float32(np.nan), data).astype(np.float32)
    return data, g, bp
