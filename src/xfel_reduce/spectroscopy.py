"""X-ray emission spectroscopy on a JUNGFRAU module (von Hamos geometry).

Per frame, the corrected image (photons) is cut to a region of interest, optionally
photon-thresholded, and projected along the non-dispersive axis onto a spectrum.
Because emission lines are tilted and curved across the band, each ROI row ``y`` is
first moved by ``-s(y)`` along the dispersive axis, with

    s(y) = c1 (y - y_ref) + c2 (y - y_ref)^2,

a shift map either given in the config or fitted from the run-averaged image.  The
re-binning is exact in flux: a pixel ``[x - 1/2, x + 1/2]`` moved by a fractional
shift overlaps two output bins and is split between them by overlap length, so the
total is preserved and line positions are not biased.

Per run, spectra of X-ray frames whose XGM pulse energy lies in the I0 filter range
are normalised by that energy and averaged for laser-on and laser-off frames (mean
of per-frame ratios with the standard error from the frame-to-frame scatter, which
is what the experiment's noise really is); the difference on − off carries the
combined error.  All per-chunk results are mergeable partials
(:class:`xfel_reduce.aggregate.Moments`), so the run result does not depend on how
the run was split.  Beside the empirical scatter, the chunks accumulate the
shot-noise expectation of each bin (Σ counts / I0² per frame), so the report can
show whether the spectra are as good as photon statistics allow.

The two-pass design: the curvature must be known before frames are projected.  With
``curvature.mode: fit`` a first pass (:func:`image_partial`) averages the ROI image
per sequence, the run's image gives the shift map (:func:`fit_curvature`), then the
second pass (:func:`reduce_sequence`) projects.  With given coefficients the first
pass is skipped.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numba
import numpy as np
from scipy import optimize
from scipy.interpolate import CubicSpline
from scipy.special import erf

from . import annotate
from .aggregate import Moments
from .io import sources
from .io.euxfel import AtomicH5File
from .io.provenance import attach_provenance
from .io.redu import read_frame_table, read_partials, write_frame_table, write_partials
from .io.runs import InputDataError, read_dataset

log = logging.getLogger(__name__)

JF_SHAPE = (512, 1024)
#: Classes of frames averaged per run.
CLASSES = ("all", "laser_on", "laser_off")


# -- configuration ---------------------------------------------------------------------
@dataclass
class SpectroscopyConfig:
    """Settings of the spectroscopy reduction (config section ``spectroscopy``).

    Attributes
    ----------
    module
        JUNGFRAU module number (``JNGFR01`` → 1).
    roi
        ``[y0, y1, x0, x1]`` (slow-scan rows y0:y1, dispersive columns x0:x1).
    photon_threshold
        Pixel values below this (photons) are set to 0 before projection; ``None``
        projects the analog signal (read noise then adds to every bin).
    photon_counting
        Round values at or above the threshold to whole photons.
    curvature
        ``"fit"`` or the coefficients ``[c1]`` / ``[c1, c2]`` of the shift map (px per
        row, px per row²).
    curvature_order, row_group, max_shift_px
        Polynomial order, rows per group and search range of the curvature fit.
    reference_row
        Row in which shifts are zero (line positions refer to it); default ROI centre.
    energy_calibration
        ``[e0, e1]`` or ``[e0, e1, e2]``: E(x) = e0 + e1 x + e2 x² (eV, x in module
        columns) for the corrected coordinate.
    i0_range
        ``[lo, hi]`` µJ: frames outside are excluded from the averages (``None`` = open).
    frame_pulses
        ``"auto"``: frame k of a train is pulse ``first + k·stride`` with first and
        stride read from the train's bunch pattern; or ``{"first": p0, "stride": s}``.
    sase, ppl_bit
        Bunch-pattern decoding; ``None`` (default) takes them from the run's instrument
        (``instrument`` / ``sources`` in the config, :func:`xfel_reduce.io.trains.resolve_sources`).
    trains_per_chunk
        Trains read at once (one train is 16 frames = 32 MB corrected).
    min_coverage
        Output bins whose good-pixel coverage is below this fraction of the ROI rows
        are NaN (edges of the shifted ROI, masked columns).
    """

    module: int = 1
    roi: tuple[int, int, int, int] = (140, 372, 0, 1024)
    photon_threshold: float | None = 0.5
    photon_counting: bool = False
    curvature: Any = "fit"
    curvature_order: int = 2
    row_group: int = 8
    max_shift_px: float = 20.0
    reference_row: float | None = None
    energy_calibration: tuple[float, ...] = (0.0, 1.0)
    i0_range: tuple[float | None, float | None] = (None, None)
    frame_pulses: Any = "auto"
    sase: int | None = None
    ppl_bit: int | None = None
    trains_per_chunk: int = 2
    min_coverage: float = 0.5

    @classmethod
    def from_dict(cls, d: dict | None) -> "SpectroscopyConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown spectroscopy settings: {sorted(unknown)} "
                             f"(known: {sorted(cls.__dataclass_fields__)})")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        y0, y1, x0, x1 = (int(v) for v in self.roi)
        if not (0 <= y0 < y1 <= JF_SHAPE[0] and 0 <= x0 < x1 <= JF_SHAPE[1]):
            raise ValueError(f"spectroscopy.roi {list(self.roi)} must satisfy 0 <= y0 < y1 <= 512 "
                             "and 0 <= x0 < x1 <= 1024")
        self.roi = (y0, y1, x0, x1)
        if len(self.energy_calibration) not in (2, 3):
            raise ValueError("spectroscopy.energy_calibration needs 2 (linear) or 3 (quadratic) coefficients")
        if self.curvature != "fit" and not (isinstance(self.curvature, (list, tuple))
                                            and 1 <= len(self.curvature) <= 2):
            raise ValueError("spectroscopy.curvature must be 'fit' or [c1] / [c1, c2]")
        if self.curvature_order not in (1, 2):
            raise ValueError("spectroscopy.curvature_order must be 1 or 2")

    @property
    def ref_row(self) -> float:
        y0, y1 = self.roi[:2]
        return float(self.reference_row) if self.reference_row is not None else 0.5 * (y0 + y1 - 1)

    @property
    def columns(self) -> np.ndarray:
        """Module column of each output bin (corrected coordinate at the reference row)."""
        return np.arange(self.roi[2], self.roi[3], dtype=np.float64)

    def energy_axis(self, x: np.ndarray | None = None) -> np.ndarray:
        """Energy (eV) of column coordinates ``x`` (default: the output bins)."""
        x = self.columns if x is None else np.asarray(x, np.float64)
        return np.polynomial.polynomial.polyval(x, np.asarray(self.energy_calibration, np.float64))

    def dispersion(self, x: np.ndarray | float) -> np.ndarray:
        """dE/dx (eV per pixel) at ``x``."""
        c = np.asarray(self.energy_calibration, np.float64)
        return np.polynomial.polynomial.polyval(np.asarray(x, np.float64), np.polynomial.polynomial.polyder(c))


# -- shift map and projection --------------------------------------------------------
def row_shifts(coefficients: Sequence[float], rows: np.ndarray, reference_row: float) -> np.ndarray:
    """``s(y) = Σ_k c_k (y - y_ref)^k`` (k ≥ 1): where a feature sits relative to the reference row."""
    d = np.asarray(rows, np.float64) - reference_row
    return sum(float(c) * d ** (k + 1) for k, c in enumerate(coefficients)) + 0.0 * d


def _split(shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer part and fraction of ``-s``: a pixel at column x lands in bins
    ``x + k`` (weight 1 - f) and ``x + k + 1`` (weight f)."""
    neg = -np.asarray(shifts, np.float64)
    k = np.floor(neg)
    return k.astype(np.int64), (neg - k).astype(np.float32)


@numba.njit(parallel=True, cache=True, nogil=True)
def _project_kernel(data, mask, y0, x0, kshift, frac, threshold, counting, out, coverage, out_w2):  # pragma: no cover
    n = data.shape[0]
    ny = kshift.shape[0]
    nb = out.shape[1]
    for i in numba.prange(n):
        for r in range(ny):
            y = y0 + r
            k = kshift[r]
            f = frac[r]
            for b in range(nb):
                x = x0 + b
                if mask[i, y, x] != 0:
                    continue
                v = data[i, y, x]
                if not np.isfinite(v):
                    continue
                if v < threshold:
                    v = np.float32(0.0)
                elif counting:
                    v = np.float32(np.floor(v + 0.5))
                t = b + k
                if 0 <= t < nb:
                    out[i, t] += (1 - f) * v
                    out_w2[i, t] += (1 - f) * (1 - f) * v
                    coverage[i, t] += 1 - f
                if 0 <= t + 1 < nb:
                    out[i, t + 1] += f * v
                    out_w2[i, t + 1] += f * f * v
                    coverage[i, t + 1] += f


def project(data: np.ndarray, mask: np.ndarray, cfg: SpectroscopyConfig, shifts: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curvature-corrected projection of frames onto spectra.

    Parameters
    ----------
    data, mask
        ``(n, 512, 1024)`` photons and bad-pixel bits (0 = good).
    shifts
        ``s(y)`` per ROI row.

    Returns
    -------
    spectra
        ``(n, n_bins)`` float32 photons per bin, scaled up for masked pixels
        (``raw_sum × n_rows / coverage``), NaN where coverage < ``min_coverage``.
    coverage
        ``(n, n_bins)`` float32 rows of good pixels that contributed to each bin.
    poisson_var
        ``(n, n_bins)`` float32 estimate of the photon-counting variance of each bin:
        a pixel split with weights w and 1 - w adds w²·v to a bin's variance, not
        w·v, so neighbouring bins are correlated and each is sub-Poissonian.
    """
    y0, y1, x0, x1 = cfg.roi
    k, f = _split(shifts)
    if k.size != y1 - y0:
        raise ValueError(f"{k.size} row shifts for an ROI of {y1 - y0} rows")
    n = data.shape[0]
    out = np.zeros((n, x1 - x0), np.float32)
    cov = np.zeros((n, x1 - x0), np.float32)
    w2 = np.zeros((n, x1 - x0), np.float32)
    thr = -np.inf if cfg.photon_threshold is None else cfg.photon_threshold
    _project_kernel(data, mask, y0, x0, k, f, np.float32(thr), bool(cfg.photon_counting), out, cov, w2)
    spectra = _normalise_coverage(out, cov, y1 - y0, cfg.min_coverage)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = w2 * (np.float32(y1 - y0) / cov) ** 2
    var[~np.isfinite(spectra)] = np.nan
    return spectra, cov, var


def _normalise_coverage(raw: np.ndarray, cov: np.ndarray, n_rows: int, min_cov: float) -> np.ndarray:
    # Missing (masked) pixels are replaced by the mean of the bin's good pixels: this
    # keeps static masks from carving notches into the spectrum.
    with np.errstate(invalid="ignore", divide="ignore"):
        s = raw * (np.float32(n_rows) / cov)
    s[cov < min_cov * n_rows] = np.nan
    return s.astype(np.float32)


def project_reference_numpy(data: np.ndarray, mask: np.ndarray, cfg: SpectroscopyConfig, shifts: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain numpy version of :func:`project` (benchmark reference and test oracle)."""
    y0, y1, x0, x1 = cfg.roi
    k, f = _split(shifts)
    roi = data[:, y0:y1, x0:x1].astype(np.float32)
    good = (mask[:, y0:y1, x0:x1] == 0) & np.isfinite(roi)
    roi = np.where(good, roi, 0.0)
    if cfg.photon_threshold is not None:
        roi = np.where(roi < cfg.photon_threshold, 0.0, roi)
        if cfg.photon_counting:
            roi = np.floor(roi + 0.5)
    nb = x1 - x0
    out = np.zeros((data.shape[0], nb), np.float64)
    cov = np.zeros((data.shape[0], nb), np.float64)
    w2 = np.zeros((data.shape[0], nb), np.float64)
    g = good.astype(np.float32)
    for r in range(y1 - y0):
        for t_off, w in ((k[r], 1 - f[r]), (k[r] + 1, f[r])):
            lo, hi = max(0, -t_off), min(nb, nb - t_off)
            if lo < hi:
                out[:, lo + t_off:hi + t_off] += w * roi[:, r, lo:hi]
                w2[:, lo + t_off:hi + t_off] += w * w * roi[:, r, lo:hi]
                cov[:, lo + t_off:hi + t_off] += w * g[:, r, lo:hi]
    cov = cov.astype(np.float32)
    spectra = _normalise_coverage(out.astype(np.float32), cov, y1 - y0, cfg.min_coverage)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (w2 * (float(y1 - y0) / cov) ** 2).astype(np.float32)
    var[~np.isfinite(spectra)] = np.nan
    return spectra, cov, var


# -- beam data (I0, laser) -------------------------------------------------------------
@dataclass
class BeamData:
    """Bunch pattern and XGM of a run's trains, with the SASE and laser bit to decode them."""

    train_ids: np.ndarray
    bunch_tables: np.ndarray
    xgm: np.ndarray
    sase: int = 1
    ppl_bit: int = annotate.PPL_BIT
    decided: dict | None = None

    @classmethod
    def from_files(cls, paths: Path | Sequence[Path], config: dict | None = None) -> "BeamData":
        """Read the run's train-level files (every non-detector aggregator) by train ID.

        ``config`` (the workflow config) gives ``instrument`` and ``sources``; where it
        is silent the instrument profile and the run's own source list decide.
        """
        from extra_data import by_id

        from .io.trains import open_train_data, resolve_sources

        paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
        where = str(paths[0].parent) if paths else "the run"
        dc = open_train_data(paths[0].parent if paths else ".", paths)
        rs = resolve_sources(config or {}, dc, where)
        if rs.timeserver is None or rs.xgm is None:
            missing = " and ".join(n for n, v in (("timeserver", rs.timeserver), ("XGM", rs.xgm)) if v is None)
            raise InputDataError(
                f"{where} has no {missing}: I0 and the laser flag are unknown. Set "
                "`sources.timeserver` / `sources.xgm` in the config if the run has them under "
                "other names.")
        xgm_kd = dc[rs.xgm, "data.intensityTD"]
        bp_kd = dc[rs.timeserver, "data.bunchPatternTable"]
        tids = np.intersect1d(np.asarray(xgm_kd.train_id_coordinates(), np.uint64),
                              np.asarray(bp_kd.train_id_coordinates(), np.uint64))
        tids = tids[tids > 0]  # trainId 0 rows are padding or DAQ faults, never beam data
        sel = dc.select_trains(by_id[list(tids)])
        xgm = read_dataset(sel[rs.xgm, "data.intensityTD"], paths[0], "XGM intensityTD")
        tables = read_dataset(sel[rs.timeserver, "data.bunchPatternTable"], paths[0], "bunch pattern")
        return cls(tids, tables.astype(np.uint32), xgm.astype(np.float32), rs.sase, rs.ppl_bit,
                   rs.as_dict())


def frame_beam(train_ids: np.ndarray, frame_in_train: np.ndarray, beam: BeamData,
               cfg: SpectroscopyConfig) -> dict[str, np.ndarray]:
    """Pulse ID, X-ray and laser flags and XGM energy of each JUNGFRAU frame.

    JUNGFRAU records no pulse ID: frame k of a train follows the k-th trigger of the
    burst, at ``first + k·stride`` in the bunch pattern.  Frames of trains without
    beam data get ``beam_data = False`` and are never averaged.
    """
    row = np.searchsorted(beam.train_ids, train_ids)
    row_c = np.minimum(row, max(beam.train_ids.size - 1, 0))
    ok = (row < beam.train_ids.size) & (beam.train_ids[row_c] == train_ids) if beam.train_ids.size else \
        np.zeros(train_ids.shape, bool)
    k = frame_in_train.astype(np.int64)
    if isinstance(cfg.frame_pulses, dict):
        pid = int(cfg.frame_pulses.get("first", 0)) + int(cfg.frame_pulses.get("stride", 1)) * k
    elif cfg.frame_pulses == "auto":
        import euxfel_bunch_pattern as bp
        pid = np.zeros(k.shape, np.int64)
        sase = np.asarray(bp.is_sase(beam.bunch_tables, beam.sase if cfg.sase is None else cfg.sase)) \
            if beam.train_ids.size else None
        for r in np.unique(row_c[ok]):
            p = np.nonzero(sase[r])[0]
            first = int(p[0]) if p.size else 0
            stride = int(np.min(np.diff(p))) if p.size > 1 else 1
            sel = ok & (row_c == r)
            pid[sel] = first + stride * k[sel]
    else:
        raise ValueError("spectroscopy.frame_pulses must be 'auto' or {first, stride}")
    pid = np.clip(pid, 0, beam.bunch_tables.shape[1] - 1 if beam.train_ids.size else 0)
    acfg = annotate.AnnotationConfig(sase=beam.sase if cfg.sase is None else cfg.sase,
                                     ppl_bit=beam.ppl_bit if cfg.ppl_bit is None else cfg.ppl_bit)
    xray = np.zeros(k.shape, bool)
    ppl = np.zeros(k.shape, bool)
    energy = np.zeros(k.shape, np.float32)
    if ok.any():
        x, p, e = annotate.pulse_flags(pid[ok].astype(np.uint64), row_c[ok], beam.bunch_tables, beam.xgm, acfg)
        xray[ok], ppl[ok], energy[ok] = x, p, e
    return {"pulseId": pid.astype(np.uint64), "xray": xray, "ppl": ppl & xray,
            "pulse_energy": energy, "beam_data": ok}


def i0_selection(energy: np.ndarray, xray: np.ndarray, cfg: SpectroscopyConfig) -> np.ndarray:
    """X-ray frames whose pulse energy lies in the I0 filter range (and is positive)."""
    lo, hi = cfg.i0_range
    sel = xray & (energy > 0)
    if lo is not None:
        sel &= energy >= lo
    if hi is not None:
        sel &= energy <= hi
    return sel


# -- per-sequence passes ---------------------------------------------------------------
def _thresholded_roi(data: np.ndarray, mask: np.ndarray, sel: np.ndarray, cfg: SpectroscopyConfig) -> np.ndarray:
    """ROI of the selected frames, NaN where masked, thresholded like the projection."""
    y0, y1, x0, x1 = cfg.roi
    roi = data[sel, y0:y1, x0:x1].astype(np.float32)  # ROI first: never copy whole frames
    roi[mask[sel, y0:y1, x0:x1] != 0] = np.nan
    if cfg.photon_threshold is not None:
        with np.errstate(invalid="ignore"):
            roi[roi < cfg.photon_threshold] = 0.0
        if cfg.photon_counting:
            roi = np.floor(roi + 0.5)
    return roi


def image_partial(chunks: Iterable, beam: BeamData, cfg: SpectroscopyConfig) -> Moments:
    """Pass 1: per-pixel moments of the ROI image of X-ray frames in the I0 range.

    Frames are normalised by pulse energy (photons per µJ) so that XGM drifts do not
    weigh some frames more than others.
    """
    y0, y1, x0, x1 = cfg.roi
    acc = Moments((y1 - y0, x1 - x0))
    for chunk in chunks:
        fb = frame_beam(chunk.train_ids, chunk.frame_in_train, beam, cfg)
        sel = i0_selection(fb["pulse_energy"], fb["xray"], cfg)
        if sel.any():
            acc.add(_thresholded_roi(chunk.data, chunk.mask, sel, cfg) / fb["pulse_energy"][sel, None, None])
    return acc


def reduce_chunks(chunks: Iterable, beam: BeamData, cfg: SpectroscopyConfig, shifts: np.ndarray,
                  progress: logging.Logger | None = None) -> tuple[dict[str, np.ndarray], dict[str, Moments]]:
    """Pass 2: per-frame spectra and the mergeable partials of one sequence.

    Returns
    -------
    table
        Per frame: trainId, pulseId, cellId, frameNumber, xray, ppl, pulse_energy,
        beam_data, i0_ok, roi_photons, and ``spectrum`` ``(n, n_bins)`` (photons).
    moments
        ``spectrum_<class>``: I0-normalised spectra (photons/µJ per bin);
        ``shotvar_<class>``: per-frame Poisson variance estimate of those
        (Σ w² v / I0²); ``image``: ROI image per µJ of all selected frames.
    """
    y0, y1, x0, x1 = cfg.roi
    nb = x1 - x0
    moments = {f"spectrum_{c}": Moments((nb,)) for c in CLASSES}
    moments.update({f"shotvar_{c}": Moments((nb,)) for c in CLASSES})
    moments["image"] = Moments((y1 - y0, nb))
    parts: list[dict[str, np.ndarray]] = []
    t0 = time.monotonic()
    n_done = 0
    for chunk in chunks:
        fb = frame_beam(chunk.train_ids, chunk.frame_in_train, beam, cfg)
        spectra, _, pvar = project(chunk.data, chunk.mask, cfg, shifts)
        sel = i0_selection(fb["pulse_energy"], fb["xray"], cfg)
        e = fb["pulse_energy"].astype(np.float64)
        with np.errstate(invalid="ignore"):
            roi_photons = np.nansum(spectra, axis=1)
        parts.append({
            "trainId": chunk.train_ids.astype(np.uint64), "pulseId": fb["pulseId"],
            "cellId": chunk.cell_ids.astype(np.uint8), "frameNumber": chunk.frame_numbers.astype(np.uint64),
            "xray": fb["xray"], "ppl": fb["ppl"], "pulse_energy": fb["pulse_energy"],
            "beam_data": fb["beam_data"], "i0_ok": sel, "roi_photons": roi_photons.astype(np.float32),
            "spectrum": spectra,
        })
        if sel.any():
            norm = spectra[sel] / e[sel, None]
            # Poisson: var(C/I0) = Σ w² E[v] / I0², estimated without bias by Σ w² v / I0².
            shot = pvar[sel] / e[sel, None] ** 2
            on = fb["ppl"][sel]
            for name, m in (("all", slice(None)), ("laser_on", on), ("laser_off", ~on)):
                moments[f"spectrum_{name}"].add(norm[m])
                moments[f"shotvar_{name}"].add(shot[m])
            moments["image"].add(_thresholded_roi(chunk.data, chunk.mask, sel, cfg) / e[sel, None, None])
        n_done += len(chunk)
        if progress is not None:
            progress.info("spectroscopy: %d frames projected (%.0f frames/s)", n_done,
                          n_done / max(time.monotonic() - t0, 1e-9))
    if parts:
        table = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        table = {"trainId": np.zeros(0, np.uint64), "spectrum": np.zeros((0, nb), np.float32)}
    return table, moments


# -- curvature ---------------------------------------------------------------------------
@dataclass
class Curvature:
    """Shift map ``s(y) = Σ c_k (y - y_ref)^k`` and how it was obtained."""

    coefficients: list[float]
    reference_row: float
    source: str  # "config" or "fit"
    group_rows: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_shifts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    group_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rms_residual_px: float = float("nan")

    def shifts(self, cfg: SpectroscopyConfig) -> np.ndarray:
        y0, y1 = cfg.roi[:2]
        return row_shifts(self.coefficients, np.arange(y0, y1), self.reference_row)

    def to_h5(self, g: h5py.Group) -> None:
        g["coefficients"] = np.asarray(self.coefficients, np.float64)
        g.attrs["reference_row"] = self.reference_row
        g.attrs["source"] = self.source
        g.attrs["rms_residual_px"] = self.rms_residual_px
        g.attrs["definition"] = "s(y) = sum_k c_k (y - reference_row)^k, k = 1..; corrected x = x - s(y)"
        for name in ("group_rows", "group_shifts", "group_errors"):
            g[name] = np.asarray(getattr(self, name), np.float64)

    @classmethod
    def from_h5(cls, g: h5py.Group) -> "Curvature":
        return cls(list(g["coefficients"][()]), float(g.attrs["reference_row"]), str(g.attrs["source"]),
                   g["group_rows"][()], g["group_shifts"][()], g["group_errors"][()],
                   float(g.attrs["rms_residual_px"]))


def curvature_from_config(cfg: SpectroscopyConfig) -> Curvature | None:
    """The given shift map, or ``None`` when it has to be fitted."""
    if cfg.curvature == "fit":
        return None
    return Curvature([float(c) for c in cfg.curvature], cfg.ref_row, "config")


def _profile_shift(profile: np.ndarray, template: CubicSpline, x: np.ndarray, max_shift: float
                   ) -> tuple[float, float]:
    """Shift s minimising Σ (p(x) - a·T(x - s) - b)², and its standard error.

    For each trial shift the scale ``a`` and offset ``b`` are solved linearly; a coarse
    scan in quarter pixels finds the basin, a bounded 1-D minimisation refines it.
    """
    ok = np.isfinite(profile)
    p, xx = profile[ok], x[ok]

    def chi2(s: float) -> float:
        t = template(xx - s)
        a_mat = np.stack([t, np.ones_like(t)], axis=1)
        coef, *_ = np.linalg.lstsq(a_mat, p, rcond=None)
        r = p - a_mat @ coef
        return float(r @ r)

    grid = np.arange(-max_shift, max_shift + 1e-9, 0.25)
    vals = [chi2(s) for s in grid]
    s0 = grid[int(np.argmin(vals))]
    res = optimize.minimize_scalar(chi2, bounds=(s0 - 0.5, s0 + 0.5), method="bounded",
                                   options={"xatol": 1e-4})
    s = float(res.x)
    # Error from the curvature of χ² (Gauss–Newton): var(s) = 2σ²/χ''(s) with σ² = χ²/dof.
    h = 0.05
    d2 = (chi2(s + h) - 2 * chi2(s) + chi2(s - h)) / h**2
    sigma2 = chi2(s) / max(p.size - 3, 1)
    err = float(np.sqrt(2 * sigma2 / d2)) if d2 > 0 else float("inf")
    return s, err


def fit_curvature(image: Moments | np.ndarray, cfg: SpectroscopyConfig, iterations: int = 3) -> Curvature:
    """Fit the shift map from the run-averaged ROI image.

    Rows are summed in groups of ``row_group``; each group's profile is matched to a
    template (the curvature-corrected projection of the whole ROI, rebuilt after each
    iteration so it sharpens) by a least-squares shift.  A weighted polynomial of
    ``curvature_order`` in ``y - y_ref`` (with a constant term that is then dropped)
    gives the shift map; groups without signal get no weight.
    """
    mean = image.mean if isinstance(image, Moments) else np.asarray(image, np.float64)
    if isinstance(image, Moments):
        mean = np.where(image.count > 0, mean, np.nan)
    y0, y1, x0, x1 = cfg.roi
    if mean.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"image of shape {mean.shape} does not match the ROI {cfg.roi}")
    ref = cfg.ref_row
    g = max(1, int(cfg.row_group))
    starts = np.arange(0, y1 - y0, g)
    # Fill masked pixels by the mean of their column so they do not bias group sums.
    col_mean = np.nanmean(np.where(np.isfinite(mean), mean, np.nan), axis=0)
    filled = np.where(np.isfinite(mean), mean, np.nan_to_num(col_mean)[None, :])
    groups = np.stack([filled[s:s + g].sum(axis=0) for s in starts])
    rows = np.array([y0 + s + 0.5 * (min(g, y1 - y0 - s) - 1) for s in starts])
    x = np.arange(x0, x1, dtype=np.float64)
    coeffs = np.zeros(cfg.curvature_order)
    shifts_g = np.zeros(rows.size)
    errs = np.full(rows.size, np.inf)
    signal = groups.sum(axis=1)
    for _ in range(iterations):
        s_rows = row_shifts(coeffs, np.arange(y0, y1), ref)
        k, f = _split(s_rows)
        template = np.zeros(x1 - x0)
        for r in range(y1 - y0):
            for t_off, w in ((k[r], 1 - f[r]), (k[r] + 1, f[r])):
                lo, hi = max(0, -t_off), min(x1 - x0, x1 - x0 - t_off)
                if lo < hi:
                    template[lo + t_off:hi + t_off] += w * filled[r, lo:hi]
        spline = CubicSpline(x, template, extrapolate=False)

        def tpl(u, spline=spline):
            return np.nan_to_num(spline(u))

        for j in range(rows.size):
            if signal[j] <= 0:
                continue
            shifts_g[j], errs[j] = _profile_shift(groups[j], tpl, x, cfg.max_shift_px)
        w = np.where(np.isfinite(errs) & (errs > 0), 1.0 / np.where(errs > 0, errs, 1.0) ** 2, 0.0)
        if (w > 0).sum() <= cfg.curvature_order + 1:
            raise InputDataError(
                f"curvature fit: only {(w > 0).sum()} row groups have signal in the ROI {list(cfg.roi)}: "
                "the ROI misses the spectrometer band, or set spectroscopy.curvature explicitly")
        d = rows - ref
        design = np.stack([d**p for p in range(cfg.curvature_order + 1)], axis=1)
        sw = np.sqrt(w)
        sol, *_ = np.linalg.lstsq(design * sw[:, None], shifts_g * sw, rcond=None)
        coeffs = sol[1:]
    resid = shifts_g - design @ sol
    good = w > 0
    rms = float(np.sqrt(np.average(resid[good] ** 2, weights=w[good])))
    return Curvature([float(c) for c in coeffs], ref, "fit", rows, shifts_g - sol[0], errs, rms)


# -- line fitting ------------------------------------------------------------------------
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def pseudo_voigt_binned(x: np.ndarray, centre: float, area: float, fwhm: float, eta: float) -> np.ndarray:
    """Pseudo-Voigt integrated over unit bins centred on ``x`` (area-normalised shape × area)."""
    sigma = fwhm * _FWHM_TO_SIGMA
    gamma = fwhm / 2.0
    hi, lo = x + 0.5 - centre, x - 0.5 - centre
    g = 0.5 * (erf(hi / (np.sqrt(2) * sigma)) - erf(lo / (np.sqrt(2) * sigma)))
    lz = (np.arctan(hi / gamma) - np.arctan(lo / gamma)) / np.pi
    return area * (eta * lz + (1 - eta) * g)


def _two_lines(p: np.ndarray, x: np.ndarray, x_ref: float) -> np.ndarray:
    c1, a1, w1, c2, a2, w2, eta, b0, b1 = p
    return (pseudo_voigt_binned(x, c1, a1, w1, eta) + pseudo_voigt_binned(x, c2, a2, w2, eta)
            + b0 + b1 * (x - x_ref))


def _initial_lines(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    from scipy.signal import find_peaks

    ys = np.convolve(np.nan_to_num(y), np.ones(5) / 5, mode="same")
    peaks, props = find_peaks(ys, prominence=0.05 * np.nanmax(ys))
    if peaks.size < 2:
        raise ValueError("fewer than two emission lines found in the spectrum (check ROI and threshold)")
    top = peaks[np.argsort(props["prominences"])[::-1][:2]]
    return float(x[top[0]]), float(ys[top[0]]), float(x[top[1]]), float(ys[top[1]])


@dataclass
class LineFit:
    """Two-line pseudo-Voigt fit: ``line 1`` is the stronger line (Kα1)."""

    positions_px: list[float]
    position_errors_px: list[float]
    areas: list[float]
    area_errors: list[float]
    fwhm_px: list[float]
    eta: float
    ratio: float  # area line 2 / area line 1
    ratio_error: float
    shift_px: float = float("nan")  # laser on − off (joint fit)
    shift_error_px: float = float("nan")
    intensity_factor: float = float("nan")  # on / off area ratio (joint fit)
    reduced_chi2: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_lines(x: np.ndarray, y: np.ndarray, sigma: np.ndarray | None = None,
              y_on: np.ndarray | None = None, sigma_on: np.ndarray | None = None) -> LineFit:
    """Fit two pseudo-Voigt lines (+ linear background) to a spectrum.

    With ``y_on`` the laser-on spectrum is fitted jointly: same line shapes, all
    lines moved by a common shift and scaled by a common factor, own background.
    This uses both spectra for the shape and makes the shift the only free position
    parameter of the difference, which is what the pump–probe question asks.

    Parameters
    ----------
    x
        Bin coordinates (px); ``y`` the (laser-off or all) spectrum, ``sigma`` its errors.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    sig = np.ones_like(y) if sigma is None else np.asarray(sigma, np.float64)
    ok = np.isfinite(y) & np.isfinite(sig) & (sig > 0)
    if y_on is not None:
        sig_on = np.ones_like(y) if sigma_on is None else np.asarray(sigma_on, np.float64)
        ok &= np.isfinite(y_on) & np.isfinite(sig_on) & (sig_on > 0)
    xr = float(np.mean(x[ok]))
    c1, h1, c2, h2 = _initial_lines(x, np.where(ok, y, np.nan))
    bg = float(np.nanpercentile(y[ok], 5))
    w0 = 8.0
    p0 = [c1, max(h1 - bg, 1e-12) * w0, w0, c2, max(h2 - bg, 1e-12) * w0, w0, 0.5, bg, 0.0]
    lo = [x[ok].min(), 0, 0.5, x[ok].min(), 0, 0.5, 0.0, -np.inf, -np.inf]
    hi = [x[ok].max(), np.inf, 200, x[ok].max(), np.inf, 200, 1.0, np.inf, np.inf]
    if y_on is not None:
        p0 += [0.0, 1.0, bg, 0.0]
        lo += [-20.0, 0.0, -np.inf, -np.inf]
        hi += [20.0, np.inf, np.inf, np.inf]

    def resid(p):
        r = (_two_lines(p[:9], x[ok], xr) - y[ok]) / sig[ok]
        if y_on is None:
            return r
        d, fac, b0, b1 = p[9:]
        q = p[:9].copy()
        q[0] += d
        q[3] += d
        q[1] *= fac
        q[4] *= fac
        q[7], q[8] = b0, b1
        r_on = (_two_lines(q, x[ok], xr) - y_on[ok]) / sig_on[ok]
        return np.concatenate([r, r_on])

    res = optimize.least_squares(resid, np.asarray(p0), bounds=(lo, hi), x_scale="jac", method="trf")
    dof = max(res.fun.size - res.x.size, 1)
    red = float(res.fun @ res.fun / dof)
    jac = res.jac
    try:
        cov = np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        cov = np.full((res.x.size, res.x.size), np.nan)
    # Without errors the residual scatter sets the scale; with errors, inflate only
    # when the model does not describe the data (reduced χ² > 1).
    cov = cov * (red if sigma is None else max(red, 1.0))
    p = res.x
    e = np.sqrt(np.clip(np.diag(cov), 0, None))
    # Order lines by area: line 1 = strongest.
    i1, i2 = (0, 3) if p[1] >= p[4] else (3, 0)
    a1, a2 = p[i1 + 1], p[i2 + 1]
    ratio = a2 / a1
    j = np.zeros(p.size)
    j[i1 + 1], j[i2 + 1] = -a2 / a1**2, 1 / a1
    ratio_err = float(np.sqrt(max(j @ cov @ j, 0.0)))
    fit = LineFit([float(p[i1]), float(p[i2])], [float(e[i1]), float(e[i2])], [float(a1), float(a2)],
                  [float(e[i1 + 1]), float(e[i2 + 1])], [float(p[i1 + 2]), float(p[i2 + 2])],
                  float(p[6]), float(ratio), ratio_err, reduced_chi2=red)
    if y_on is not None:
        fit.shift_px, fit.shift_error_px = float(p[9]), float(e[9])
        fit.intensity_factor = float(p[10])
    return fit


# -- run results ---------------------------------------------------------------------------
def merge_partials(paths: Sequence[Path]) -> tuple[dict[str, np.ndarray], dict[str, Moments]]:
    """Merge per-sequence partial files (tables concatenated in train order)."""
    tables, merged = [], {}
    for p in paths:
        t, moms = read_partials(Path(p))
        tables.append(t)
        for k, m in moms.items():
            merged[k] = merged[k].merge(m) if k in merged else m
    if not tables:
        raise ValueError("no spectroscopy partials to merge")
    table = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    order = np.lexsort((table["frameNumber"], table["trainId"]))
    return {k: v[order] for k, v in table.items()}, merged


def run_result(moments: dict[str, Moments], cfg: SpectroscopyConfig, curvature: Curvature) -> dict[str, Any]:
    """Averages on/off/all, difference, noise ratio and line fits from merged partials."""
    x = cfg.columns
    out: dict[str, Any] = {"pixel": x, "energy_ev": cfg.energy_axis(x)}
    for c in CLASSES:
        m, sv = moments[f"spectrum_{c}"], moments[f"shotvar_{c}"]
        out[c] = {"mean": m.mean, "sem": m.sem, "std": m.std, "count": m.count,
                  # Expected SEM from photon statistics alone: sqrt(mean(C/I0²)/N).
                  "shot_noise_sem": np.sqrt(np.where(sv.count > 0, sv.mean, np.nan) / np.maximum(sv.count, 1))}
    on, off = out["laser_on"], out["laser_off"]
    out["difference"] = {"mean": on["mean"] - off["mean"], "sem": np.sqrt(on["sem"] ** 2 + off["sem"] ** 2)}
    a = out["all"]
    # Noise of the difference spectrum against its photon-statistics expectation.
    # Within-class scatter is what matters: pooling on and off frames in one class
    # would count the pump-induced change itself as noise.
    have_both = int(np.max(on["count"], initial=0)) > 1 and int(np.max(off["count"], initial=0)) > 1
    with np.errstate(invalid="ignore", divide="ignore"):
        if have_both:
            ratio = out["difference"]["sem"] / np.sqrt(on["shot_noise_sem"] ** 2 + off["shot_noise_sem"] ** 2)
        else:
            ratio = a["sem"] / a["shot_noise_sem"]
    # Bins with a few photons per frame: there the Poisson estimate is reliable.
    strong = np.isfinite(ratio) & (a["mean"] > 0.5 * np.nanmax(a["mean"]) * 0.1)
    out["noise_ratio"] = ratio
    out["noise_ratio_median"] = float(np.nanmedian(ratio[strong])) if strong.any() else float("nan")
    fits: dict[str, Any] = {}
    try:
        fits["all"] = fit_lines(x, a["mean"], a["sem"]).to_dict()
        if int(np.max(on["count"], initial=0)) > 1 and int(np.max(off["count"], initial=0)) > 1:
            fits["on_off"] = fit_lines(x, off["mean"], off["sem"], on["mean"], on["sem"]).to_dict()
            fits["laser_off"] = fit_lines(x, off["mean"], off["sem"]).to_dict()
            fits["laser_on"] = fit_lines(x, on["mean"], on["sem"]).to_dict()
    except ValueError as err:
        log.warning("line fit failed: %s", err)
        fits["error"] = str(err)
    for f in fits.values():
        if isinstance(f, dict) and "positions_px" in f:
            f["energies_ev"] = [float(v) for v in cfg.energy_axis(np.asarray(f["positions_px"]))]
            if np.isfinite(f.get("shift_px", np.nan)):
                d = float(cfg.dispersion(f["positions_px"][0]))
                f["shift_ev"], f["shift_error_ev"] = f["shift_px"] * d, f["shift_error_px"] * abs(d)
    out["fits"] = fits
    out["curvature"] = curvature
    return out


def write_run_result(path: Path, result: dict[str, Any], moments: dict[str, Moments],
                     table: dict[str, np.ndarray], cfg: SpectroscopyConfig, prov: dict) -> Path:
    """Per-run HDF5: energy axis, averages with errors, difference, fits, curvature,
    average ROI image and the per-frame scalars (for the I0 scatter)."""
    with AtomicH5File(path) as f:
        attach_provenance(f, prov)
        g = f.create_group("spectroscopy")
        g.attrs["config"] = json.dumps(asdict(cfg), default=list)
        g.attrs["units"] = "spectra: photons per µJ of XGM pulse energy per bin; pixel: module column"
        g["pixel"] = result["pixel"]
        g["energy_ev"] = result["energy_ev"]
        g["energy_ev"].attrs["calibration"] = np.asarray(cfg.energy_calibration, np.float64)
        for c in CLASSES + ("difference",):
            sub = g.create_group(c)
            for k, v in result[c].items():
                sub[k] = np.asarray(v)
        g["noise_ratio"] = result["noise_ratio"]
        g["noise_ratio"].attrs["median"] = result["noise_ratio_median"]
        g.attrs["fits"] = json.dumps(result["fits"])
        result["curvature"].to_h5(g.create_group("curvature"))
        img = moments["image"]
        g.create_dataset("image/mean", data=np.where(img.count > 0, img.mean, np.nan).astype(np.float32),
                         compression="gzip", compression_opts=1)
        g.create_dataset("image/count", data=img.count.astype(np.int32), compression="gzip", compression_opts=1)
        g["image"].attrs["roi"] = np.asarray(cfg.roi)
        for k in ("trainId", "pulseId", "cellId", "xray", "ppl", "pulse_energy", "i0_ok", "roi_photons",
                  "beam_data"):
            if k in table:
                g[f"frames/{k}"] = table[k]
    return Path(path)


# -- what the workflow calls -------------------------------------------------------------
def _chunks(input_path: Path, cfg: SpectroscopyConfig, constants: Path | None):
    from .calibrate import jungfrau as jfcal

    if constants is None:  # CORR file
        return jfcal.iter_jungfrau_chunks(Path(input_path), cfg.module, raw=False,
                                          trains_per_chunk=cfg.trains_per_chunk)
    consts = jfcal.load_constants(Path(constants))
    return jfcal.iter_corrected_from_raw(Path(input_path), cfg.module, consts, cfg.trains_per_chunk)


def image_sequence(input_path: Path, train_files: Path | Sequence[Path], cfg: SpectroscopyConfig,
                   output: Path, prov: dict, constants: Path | None = None,
                   sources_config: dict | None = None) -> Path:
    """Pass 1 of one sequence: ROI image moments → ``output`` (for the curvature fit).

    ``input_path`` is a CORR file, or a RAW file when ``constants`` is given (then
    frames are corrected on the fly); ``train_files`` are the run's train-level files
    (:meth:`BeamData.from_files`, with ``sources_config``).
    """
    beam = BeamData.from_files(train_files, sources_config)
    acc = image_partial(_chunks(input_path, cfg, constants), beam, cfg)
    with AtomicH5File(output) as f:
        attach_provenance(f, prov)
        acc.to_h5(f.create_group("image"))
    return Path(output)


def curvature_run(image_partials: Sequence[Path], cfg: SpectroscopyConfig, output: Path, prov: dict) -> Curvature:
    """Per run: merge the pass-1 images and fit (or take from the config) the shift map."""
    curv = curvature_from_config(cfg)
    if curv is None:
        parts = []
        for p in image_partials:
            with h5py.File(p, "r") as f:
                parts.append(Moments.from_h5(f["image"]))
        curv = fit_curvature(Moments.merged(parts), cfg)
    with AtomicH5File(output) as f:
        attach_provenance(f, prov)
        curv.to_h5(f.create_group("curvature"))
    return curv


def load_curvature(path: Path) -> Curvature:
    with h5py.File(path, "r") as f:
        return Curvature.from_h5(f["curvature"])


def reduce_sequence(input_path: Path, train_files: Path | Sequence[Path], cfg: SpectroscopyConfig,
                    curvature: Curvature,
                    partial_out: Path, frames_out: Path, prov: dict, constants: Path | None = None,
                    run: int = 0, sequence: int = 0, proposal: int = 0,
                    progress: logging.Logger | None = None,
                    sources_config: dict | None = None) -> dict[str, int]:
    """Pass 2 of one sequence: per-frame spectra (REDU file) and mergeable partials."""
    beam = BeamData.from_files(train_files, sources_config)
    table, moments = reduce_chunks(_chunks(input_path, cfg, constants), beam, cfg, curvature.shifts(cfg), progress)
    write_frame_table(Path(frames_out), sources.SPECTRA_SOURCE.format(module=cfg.module), table, prov,
                      proposal=proposal, run=run, sequence=sequence, run_type="spectroscopy")
    scalars = {k: v for k, v in table.items() if k != "spectrum"}
    write_partials(Path(partial_out), scalars, moments, prov)
    return {"frames": int(table["trainId"].size), "selected": int(table["i0_ok"].sum())}


def gather_run(partials: Sequence[Path], curvature_file: Path, cfg: SpectroscopyConfig, output: Path,
               prov: dict) -> dict[str, Any]:
    """Per run: merge partials, average, fit lines, write ``output`` (HDF5).

    Returns a small JSON-able summary (frames, selected frames, fit results, noise ratio).
    """
    table, moments = merge_partials(partials)
    curv = load_curvature(Path(curvature_file))
    result = run_result(moments, cfg, curv)
    write_run_result(Path(output), result, moments, table, cfg, prov)
    return {"frames": int(table["trainId"].size), "selected_frames": int(table["i0_ok"].sum()),
            "laser_on_frames": int((table["i0_ok"] & table["ppl"]).sum()),
            "noise_ratio_median": result["noise_ratio_median"], "fits": result["fits"],
            "curvature": curv.coefficients}


def binned_run(frame_files: Sequence[Path], binning_file: Path, cfg: SpectroscopyConfig, output: Path,
               prov: dict) -> dict[str, Any]:
    """Spectra per bin of the run's binning (laser on, off, all, on − off, photons per
    µJ per bin) from the per-frame spectra, and the line shift per bin.

    Per bin and sequence file one set of :class:`Moments`, merged (split-invariant as
    the run averages).  The observable is the shift of the laser-on lines against the
    laser-off lines of the same bin, from the joint fit of :func:`fit_lines`.
    """
    from .binning import read_binning, write_binned

    binning = read_binning(Path(binning_file))
    n, nb = binning.n_bins, cfg.roi[3] - cfg.roi[2]
    acc = {c: [Moments((nb,)) for _ in range(n)] for c in CLASSES}
    source = sources.SPECTRA_SOURCE.format(module=cfg.module)
    for path in frame_files:
        t = read_frame_table(Path(path), source)
        b = binning.bins_of(t["trainId"], t["pulseId"], str(path))
        sel = np.asarray(t["i0_ok"], bool) & (b >= 0)
        norm = t["spectrum"][sel] / t["pulse_energy"][sel, None].astype(np.float64)
        on, bb = np.asarray(t["ppl"], bool)[sel], b[sel]
        for k in np.unique(bb):
            for c, m in (("all", bb == k), ("laser_on", (bb == k) & on), ("laser_off", (bb == k) & ~on)):
                if m.any():
                    acc[c][k].merge(Moments((nb,)).add(norm[m]))
    x = cfg.columns
    # named as every technique's binned groups (binning.write_binned): on, off, all, on_minus_off
    groups = {g: (np.stack([m.mean for m in acc[c]]), np.stack([m.sem for m in acc[c]]))
              for g, c in (("on", "laser_on"), ("off", "laser_off"), ("all", "all"))}
    groups["on_minus_off"] = (groups["on"][0] - groups["off"][0], np.hypot(groups["on"][1], groups["off"][1]))
    obs = {"name": "line_shift", "unit": "px", "values": np.full(n, np.nan), "errors": np.full(n, np.nan)}
    for k in range(n):
        on_m, off_m = acc["laser_on"][k], acc["laser_off"][k]
        if int(on_m.count.max(initial=0)) < 2 or int(off_m.count.max(initial=0)) < 2:
            continue
        try:
            f = fit_lines(x, off_m.mean, off_m.sem, on_m.mean, on_m.sem)
        except ValueError as err:
            log.warning("bin %d: line fit failed: %s", k, err)
            continue
        obs["values"][k], obs["errors"][k] = f.shift_px, f.shift_error_px
    counts = {g: np.array([int(m.count.max(initial=0)) for m in acc[c]]) for g, c in (("on", "laser_on"), ("off", "laser_off"))}
    out = write_binned(Path(output), binning, "spectroscopy", cfg.energy_axis(x), "energy", "eV", groups, counts,
                       obs, prov, attrs={"dispersion_ev_per_px": float(cfg.dispersion(x[x.size // 2]))})
    return {**out, "counts": {k: v.tolist() for k, v in counts.items()}}
