"""SPI hit finding: a lit-pixel score normalised by pulse energy, with an adaptive threshold.

Why normalise
-------------
In single-particle imaging both the background (gas, jet, aerosol carrier) and the
particle's diffraction scale with the photons of the pulse.  SASE pulse energies
fluctuate by 20–35 % from shot to shot, so a threshold on *raw* lit-pixel counts must
sit above the whole energy spread of the background and misses weak hits: on the demo
run the raw adaptive threshold (:func:`xfel_reduce.annotate.hit_thresholds`) missed 5 of
21 hits at 18–20.5 k lit pixels against a 10 k background.  Dividing by the frame's
pulse energy removes that spread; what is left is counting noise.

The score
---------
For frame *i* with ``lit`` lit pixels over ``u`` unmasked pixels (of the ROI) and XGM
pulse energy ``E``::

    lit_lin = -u·ln(1 - lit/u)          # occupancy correction (optional): lit pixels
                                        # grow as 1-exp(-photons/pixel), not linearly
    lit_n   = lit_lin · U_ref/u - c     # per unmasked pixel, scaled to a typical frame;
                                        # c: lit pixels without X-rays (detector noise),
                                        # the median of the run's dark frames
    score   = lit_n · E_ref/E           # per unit pulse energy, scaled to E_ref

``U_ref`` and ``E_ref`` are run-wide medians, so the score reads as "lit pixels of a
typical frame at the typical pulse energy".  A particle's excess score does not depend
on the pulse energy (its signal ∝ E), but the background's noise in score units does:
Poisson noise gives σ² ∝ 1/E, XGM error and background fluctuations give σ² = const and
an energy-independent count noise σ² ∝ 1/E².  The run-wide noise shape
``g(E) = σ(E)/σ(E_ref)`` is fitted to the robust widths of the residuals in
pulse-energy bins (non-negative least squares on ``1/E``, ``1``, ``1/E²``).

The threshold
-------------
Per train, over the frames of the trains within ±``window_trains``/2 (widened to at
least ``min_frames`` usable frames): ``m`` = median of the score and ``σ`` = robust
width of ``(score - m)/g(E)``; the frame's threshold is ``m + k·σ·g(E)``, a k-σ test at
the frame's own pulse energy.  The width is taken from the lower half of the
distribution (``sigma="lower"``, (median - Q1)/0.6745) so that the hits themselves,
all on the high side, do not widen it; ``sigma="iqr"`` uses IQR/1.349 as extra-redu
does by default.  Everything is computed on the concatenated run table, sorted by
(trainId, pulseId), so the result does not depend on how the run was split.

Frames without a usable pulse energy
------------------------------------
X-ray frames whose pulse energy is missing, NaN, not positive, without beam data, or
below ``max(energy_min_uj, energy_min_rel·E_ref)`` cannot be normalised.  The policy is
explicit (``no_energy``):

* ``"raw"`` (default): they are scored without energy normalisation and tested
  against the window's raw statistics (median + k·σ of ``lit_n`` of all X-ray frames,
  which includes the SASE spread): only hits strong enough to stand out of the raw
  spread are found.  Flags ``NO_ENERGY``/``LOW_ENERGY`` and ``UNNORMALISED``.
* ``"undecided"``: no decision; ``hit`` is False and ``decided`` False, flag
  ``UNDECIDED`` — count them neither as hits nor as misses.

Frames without X-rays are never scored (``NO_XRAY``; ``decided`` False).

The facility's hit finder
-------------------------
``extra_redu.spi.SpiHitfinder`` (extra-redu 1.1.0) scores ``lit/unmasked·N·⟨E⟩/E``
with ``⟨E⟩`` a moving median, takes per train ``median + snr·IQR/1.349`` of the
scores of at least ``min_scores`` frames, ignores frames with ``E <= xgm_min`` and
keeps a random fraction of misses.  This module differs in the dark-offset and
occupancy corrections, the energy-dependent noise model (its threshold is one value
per train for all energies), the train window, and an explicit policy for frames
without energy.  :func:`write_redu` writes the result in that hit finder's REDU
layout, which ``SpiHitfinder.from_datacollection`` reads back.
"""
from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numba
import numpy as np

from .io.frames import frame_key

#: AGIPD module: 512 × 128 pixels (extra-redu's ``num_px_per_module`` default).
AGIPD_PIXELS_PER_MODULE = 512 * 128

#: Table columns of the ROI counts (:func:`count_lit_pixels` with :func:`roi_from_config`).
ROI_COLUMNS = ("lit_pixels_roi", "unmasked_pixels_roi")

#: Facility name of the hit finder's device (``<detector>/REDU/SPI_HITFINDER``); its
#: per-frame data are in ``…:output`` (groups ``data`` and ``threshold``).
HITFINDER_SOURCE = "{detector}/REDU/SPI_HITFINDER"

# Normal-distribution constants of the robust widths.
_IQR_SIGMA = 1.3489795003921634      # IQR of N(0, 1)
_LOWER_SIGMA = 0.6744897501960817    # median - Q1 of N(0, 1)


class HitFlag(enum.IntFlag):
    """Per-frame data-quality bits of :class:`HitResult` (``flags``, uint16)."""

    NO_XRAY = 1          #: frame without X-rays: not scored
    NO_ENERGY = 2        #: X-ray frame without a usable pulse energy (missing/NaN/≤0/no beam data)
    LOW_ENERGY = 4       #: pulse energy below the minimum for normalisation
    UNNORMALISED = 8     #: score not normalised by pulse energy (policy ``no_energy: raw``)
    UNDECIDED = 16       #: no hit decision (policy ``undecided``, or no statistics at all)
    MODULES_MISSING = 32  #: fewer modules than the run's maximum contributed (score per unmasked pixel)
    NO_PIXELS = 64       #: no unmasked pixel in the ROI: not scored
    WIDE_WINDOW = 128    #: window widened beyond ``window_trains`` to reach ``min_frames``


_SIGMA_METHODS = ("lower", "iqr")
_NOISE_MODELS = ("energy", "constant")
_NO_ENERGY_POLICIES = ("raw", "undecided")
_MODES = ("adaptive", "fixed")


@dataclass
class SpiHitConfig:
    """Parameters of :func:`find_hits` (config block ``annotation.spi``).

    Attributes
    ----------
    mode
        ``"adaptive"``: threshold from the window's robust statistics; ``"fixed"``:
        ``fixed_threshold`` in score units (lit pixels at ``E_ref`` over ``U_ref``).
    k
        Threshold in robust σ of the background at the frame's pulse energy
        (extra-redu's ``snr``).
    fixed_threshold
        Threshold of ``mode: fixed``.
    window_trains
        Trains of the adaptive window, centred on the frame's train.
    min_frames
        Minimum usable frames of a window; fewer: widened to the nearest
        ``min_frames`` (flag ``WIDE_WINDOW``); extra-redu's ``min_scores``.
    sigma
        ``"lower"``: (median − Q1)/0.6745, insensitive to the hits (all above the
        background); ``"iqr"``: IQR/1.349.
    noise_model
        ``"energy"``: σ of the score depends on the pulse energy (fitted, see the
        module docstring); ``"constant"``: one σ for all energies (as extra-redu).
    energy_min_uj, energy_min_rel
        Frames below ``max(energy_min_uj, energy_min_rel·E_ref)`` are not normalised
        (flag ``LOW_ENERGY``), handled by ``no_energy``.
    reference_energy_uj
        ``E_ref``; ``None``: the run's median usable pulse energy.
    no_energy
        Policy for X-ray frames without usable pulse energy: ``"raw"`` or
        ``"undecided"`` (module docstring).
    dark_offset
        Lit pixels without X-rays, subtracted before normalising: ``"dark"`` (median of
        the run's frames without X-rays, 0 when there are none) or a number (lit pixels
        of a whole frame of ``U_ref`` pixels).
    occupancy_correction
        Linearise lit-pixel counts, ``-u·ln(1 - lit/u)``.
    pixels_per_module
        Pixels of one module (AGIPD 65536, JUNGFRAU 524288): unmasked-pixel estimate
        when the table has no ``unmasked_column``.
    roi_modules, roi_q_range_nm
        Region of interest of the per-sequence counting (:func:`roi_from_config`,
        :func:`count_lit_pixels`): modules to use, and the q range (nm⁻¹).  With either
        set, the finder reads the ROI columns ``lit_pixels_roi``/``unmasked_pixels_roi``.
    lit_column, unmasked_column
        Table columns of lit and unmasked pixels without ROI.  Without the unmasked
        column: ``modules_present·pixels_per_module − nan_pixels`` (the static bad
        pixels are then not counted out; only the ratio between frames matters).
    miss_fraction, miss_fraction_min
        Random misses kept for analysis (``miss`` / REDU ``missFlag``): about
        ``max(miss_fraction·hits, miss_fraction_min·decided frames)``.
    seed
        Seed of the miss selection (a hash of (trainId, pulseId): reproducible and
        independent of how the run was split).
    """

    mode: str = "adaptive"
    k: float = 5.0
    fixed_threshold: float = 0.0
    window_trains: int = 50
    min_frames: int = 100
    sigma: str = "lower"
    noise_model: str = "energy"
    energy_min_uj: float = 0.0
    energy_min_rel: float = 0.1
    reference_energy_uj: float | None = None
    no_energy: str = "raw"
    dark_offset: object = "dark"
    occupancy_correction: bool = True
    pixels_per_module: int = AGIPD_PIXELS_PER_MODULE
    roi_modules: list | None = None
    roi_q_range_nm: list | None = None
    lit_column: str = "lit_pixels"
    unmasked_column: str = "unmasked_pixels"
    miss_fraction: float = 1.0
    miss_fraction_min: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        where = "annotation.spi"
        for name, allowed in (("mode", _MODES), ("sigma", _SIGMA_METHODS),
                              ("noise_model", _NOISE_MODELS), ("no_energy", _NO_ENERGY_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{where}.{name} must be one of {list(allowed)}, not {getattr(self, name)!r}")
        if not self.k > 0:
            raise ValueError(f"{where}.k must be > 0, not {self.k!r}")
        if int(self.window_trains) < 1 or int(self.min_frames) < 3:
            raise ValueError(f"{where}: window_trains must be >= 1 and min_frames >= 3 "
                             f"(got {self.window_trains}, {self.min_frames})")
        if not (isinstance(self.dark_offset, (int, float)) or self.dark_offset == "dark"):
            raise ValueError(f"{where}.dark_offset must be 'dark' or a number, not {self.dark_offset!r}")
        if self.reference_energy_uj is not None and not self.reference_energy_uj > 0:
            raise ValueError(f"{where}.reference_energy_uj must be > 0 (or null), not {self.reference_energy_uj!r}")
        if not (0 <= self.miss_fraction and 0 <= self.miss_fraction_min <= 1):
            raise ValueError(f"{where}: miss_fraction must be >= 0 and miss_fraction_min in [0, 1]")
        if int(self.pixels_per_module) < 1:
            raise ValueError(f"{where}.pixels_per_module must be >= 1")
        if self.roi_q_range_nm is not None and (len(self.roi_q_range_nm) != 2
                                                or not self.roi_q_range_nm[0] < self.roi_q_range_nm[1]):
            raise ValueError(f"{where}.roi_q_range_nm must be [q_min, q_max] with q_min < q_max, "
                             f"not {self.roi_q_range_nm!r}")
        if self.roi_modules is not None and len(self.roi_modules) == 0:
            raise ValueError(f"{where}.roi_modules must list at least one module (or be null for all)")

    @property
    def roi(self) -> bool:
        """Whether lit pixels are counted in a region of interest."""
        return self.roi_modules is not None or self.roi_q_range_nm is not None

    def count_columns(self) -> tuple[str, str]:
        """(lit, unmasked) pixel columns the finder reads."""
        if self.roi:
            return ROI_COLUMNS
        return self.lit_column, self.unmasked_column

    @classmethod
    def from_dict(cls, d: Mapping | None) -> SpiHitConfig:
        """From a config block; unknown keys are an error naming them."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown annotation.spi settings: {sorted(unknown)} "
                             f"(known: {sorted(names)})")
        return cls(**d)


@dataclass
class HitResult:
    """Per-frame result of :func:`find_hits`, in the order of the input table.

    Attributes
    ----------
    score
        Normalised score (NaN where not scored).
    threshold
        The frame's threshold in score units (NaN where undecided).
    significance
        ``(score - m)/(σ·g(E))``: the frame's excess in background σ.
    hit, miss
        Hit; randomly kept miss.  ``data = hit | miss``: frames kept for analysis.
    decided
        A decision was made (X-ray frame with statistics; policy ``raw`` included).
    flags
        :class:`HitFlag` bits.
    train_ids, train_mu, train_sigma, train_threshold
        Per train of the run: window median, width, threshold at ``E_ref`` (what the
        facility's REDU files store per train).
    params
        The configuration and the derived values (``reference_energy_uj``,
        ``reference_pixels``, ``dark_offset_lit_pixels``, noise-model coefficients…).
    """

    score: np.ndarray
    threshold: np.ndarray
    significance: np.ndarray
    hit: np.ndarray
    miss: np.ndarray
    decided: np.ndarray
    flags: np.ndarray
    train_ids: np.ndarray
    train_mu: np.ndarray
    train_sigma: np.ndarray
    train_threshold: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def data(self) -> np.ndarray:
        return self.hit | self.miss

    def columns(self) -> dict[str, np.ndarray]:
        """Columns for the annotation table (same row order as the input)."""
        return {"hit": self.hit, "hit_threshold": self.threshold.astype(np.float32),
                "hit_score": self.score.astype(np.float32),
                "hit_significance": self.significance.astype(np.float32),
                "hit_decided": self.decided, "hit_flags": self.flags,
                "kept": self.hit | self.miss}

    def summary(self) -> dict:
        """Counts for ``summary.json`` (hit rate over decided frames only)."""
        n_dec = int(self.decided.sum())
        per_flag = {f.name: int(((self.flags & f) != 0).sum()) for f in HitFlag}
        return {"frames": int(self.hit.size), "decided": n_dec, "hits": int(self.hit.sum()),
                "misses_kept": int(self.miss.sum()),
                "hit_rate": (float(self.hit.sum()) / n_dec) if n_dec else None,
                "flags": per_flag, "method": "spi (pulse-energy normalised lit pixels)"}


_RESULT_ARRAYS = ("score", "threshold", "significance", "hit", "miss", "decided", "flags",
                  "train_ids", "train_mu", "train_sigma", "train_threshold")


def save_result(group, result: HitResult) -> None:
    """Store a :class:`HitResult` in an HDF5 group (arrays, parameters as JSON)."""
    import json

    for name in _RESULT_ARRAYS:
        group[name] = getattr(result, name)
    group.attrs["params"] = json.dumps(result.params, default=str)


def load_result(group) -> HitResult:
    """Read back what :func:`save_result` stored."""
    import json

    return HitResult(**{name: group[name][()] for name in _RESULT_ARRAYS},
                     params=json.loads(group.attrs["params"]))


# -- ROI lit-pixel counting (per-sequence pass) ------------------------------------
def roi_mask(n_modules: int, modules: Sequence[int] | None = None, module_ids: Sequence[int] | None = None,
             q_map: np.ndarray | None = None, q_range: tuple[float, float] | None = None,
             pixel_mask: np.ndarray | None = None, module_shape: tuple[int, int] = (512, 128)) -> np.ndarray:
    """Region of interest of the hit finder: ``(n_modules, ny, nx)`` bool, True = use.

    Parameters
    ----------
    n_modules
        Modules of the data arrays (in the order of ``module_ids``).
    modules
        Module numbers to use (``None``: all).
    module_ids
        Module number of each data module (default ``0..n_modules-1``).
    q_map, q_range
        Per-pixel q (nm⁻¹, e.g. :func:`xfel_reduce.geometry.q_map`) and the
        ``(q_min, q_max)`` to keep.
    pixel_mask
        Any further pixel selection (True = use), same shape.
    """
    shape = (n_modules,) + tuple(module_shape)
    roi = np.ones(shape, bool)
    ids = np.arange(n_modules) if module_ids is None else np.asarray(module_ids)
    if ids.size != n_modules:
        raise ValueError(f"module_ids has {ids.size} entries for {n_modules} modules")
    if modules is not None:
        unknown = sorted({int(m) for m in modules} - set(ids.tolist()))
        if unknown:
            raise ValueError(f"ROI modules {unknown} are not among the data's modules {ids.tolist()}")
        roi &= np.isin(ids, np.asarray(modules))[:, None, None]
    if q_range is not None:
        if q_map is None:
            raise ValueError("a q_range needs the pixels' q_map (xfel_reduce.geometry.q_map)")
        q = np.asarray(q_map).reshape(shape)
        lo, hi = q_range
        if not lo < hi:
            raise ValueError(f"q_range must be (q_min, q_max) with q_min < q_max, not {q_range!r}")
        roi &= (q >= lo) & (q <= hi)
    if pixel_mask is not None:
        pm = np.asarray(pixel_mask, bool)
        if pm.shape != shape:
            raise ValueError(f"pixel_mask has shape {pm.shape}, expected {shape}")
        roi &= pm
    return roi


def roi_from_config(cfg: SpiHitConfig, module_ids: Sequence[int], q_map: np.ndarray | None = None,
                    module_shape: tuple[int, int] = (512, 128)) -> np.ndarray | None:
    """The ROI mask of ``cfg`` for data of the given modules (``None`` without ROI).

    ``q_map`` (per pixel, nm⁻¹, same module order) is needed when ``roi_q_range_nm``
    is set: e.g. ``geometry.q_map(geometry.pixel_positions(geom, distance_m, modules),
    photon_energy_kev)``.
    """
    if not cfg.roi:
        return None
    if cfg.roi_q_range_nm is not None and q_map is None:
        raise ValueError("annotation.spi.roi_q_range_nm needs the detector geometry, distance and "
                         "photon energy of the run (set the run's distance_m and photon_energy_kev)")
    q_range = tuple(cfg.roi_q_range_nm) if cfg.roi_q_range_nm is not None else None
    return roi_mask(len(module_ids), modules=cfg.roi_modules, module_ids=module_ids, q_map=q_map,
                    q_range=q_range, module_shape=module_shape)


@numba.njit(parallel=True, cache=True, nogil=True)
def _roi_count_kernel(data, mask, present, roi, lit_thr, lit, unmasked):  # pragma: no cover
    n_frames, n_mod, ny, nx = data.shape
    for i in numba.prange(n_frames):
        n_lit = 0
        n_ok = 0
        for m in range(n_mod):
            if not present[i, m]:
                continue
            for y in range(ny):
                for x in range(nx):
                    if roi[m, y, x] and mask[i, m, y, x] == 0:
                        n_ok += 1
                        if data[i, m, y, x] >= lit_thr:  # NaN compares False
                            n_lit += 1
        lit[i] = n_lit
        unmasked[i] = n_ok


def count_lit_pixels(data: np.ndarray, mask: np.ndarray, present: np.ndarray, lit_threshold: float,
                     roi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lit and unmasked pixels per frame, over good pixels of present modules in the ROI.

    Parameters
    ----------
    data, mask
        ``(n_frames, n_modules, ny, nx)`` photons and bad-pixel bits (0 = good).
    present
        ``(n_frames, n_modules)``: the module recorded the frame.
    lit_threshold
        A pixel is lit when its value is at least this (photons).
    roi
        ``(n_modules, ny, nx)`` bool from :func:`roi_mask`; ``None``: all pixels.

    Returns
    -------
    lit, unmasked
        int32 per frame: the table columns :data:`ROI_COLUMNS` (with a ROI) or
        ``lit_pixels``/``unmasked_pixels``.
    """
    n = data.shape[0]
    if roi is None:
        roi = np.ones(data.shape[1:], bool)
    if roi.shape != data.shape[1:]:
        raise ValueError(f"ROI shape {roi.shape} does not match the frames' {data.shape[1:]}")
    lit = np.zeros(n, np.int64)
    unmasked = np.zeros(n, np.int64)
    _roi_count_kernel(data, mask, present.astype(np.bool_), roi.astype(np.bool_),
                      np.float32(lit_threshold), lit, unmasked)
    return lit.astype(np.int32), unmasked.astype(np.int32)


# -- robust window statistics ----------------------------------------------------------
def _robust(vals: np.ndarray, method: str) -> tuple[float, float]:
    """(median, σ) of a sample by the chosen robust width."""
    q1, med, q3 = np.percentile(vals, [25.0, 50.0, 75.0])
    if method == "lower":
        return float(med), float((med - q1) / _LOWER_SIGMA)
    return float(med), float((q3 - q1) / _IQR_SIGMA)


def _train_windows(train_pos: np.ndarray, n_trains: int, half: int, min_frames: int):
    """For each train: ``[lo, hi)`` into ``train_pos`` (sorted train index of the usable
    frames) covering trains ``t ± half``, widened to ``min_frames`` frames; and whether
    it was widened."""
    n = train_pos.size
    t = np.arange(n_trains)
    lo = np.searchsorted(train_pos, t - half, "left")
    hi = np.searchsorted(train_pos, t + half, "right")
    wide = (hi - lo) < min_frames
    if wide.any() and n:
        # The nearest min_frames usable frames around the train's own position.
        c = (np.searchsorted(train_pos, t, "left") + np.searchsorted(train_pos, t, "right")) // 2
        m = min(min_frames, n)
        wlo = np.clip(c - m // 2, 0, n - m)
        lo = np.where(wide, wlo, lo)
        hi = np.where(wide, wlo + m, hi)
    return lo, hi, wide


def _window_stats(train_pos: np.ndarray, values: np.ndarray, n_trains: int, cfg: SpiHitConfig):
    """Per train: robust (median, σ) of ``values`` (sorted by train) in its window, and
    whether the window had to be widened."""
    lo, hi, wide = _train_windows(train_pos, n_trains, max(1, int(cfg.window_trains) // 2), int(cfg.min_frames))
    mu = np.full(n_trains, np.nan)
    sig = np.full(n_trains, np.nan)
    last: tuple[int, int, float, float] | None = None
    for t in range(n_trains):
        a, b = int(lo[t]), int(hi[t])
        if b - a < 3:
            continue
        if last is not None and last[:2] == (a, b):
            mu[t], sig[t] = last[2:]  # same window (widened windows at the run's ends)
            continue
        mu[t], sig[t] = _robust(values[a:b], cfg.sigma)
        last = (a, b, mu[t], sig[t])
    return mu, sig, wide


def _noise_shape(e_rel: np.ndarray, r_pix: np.ndarray, resid: np.ndarray, dark_var: float | None,
                 cfg: SpiHitConfig) -> tuple[np.ndarray, dict]:
    """Run-wide relative noise ``g`` of the score per frame, ``g = 1`` at ``E_ref``.

    The background's variance in score units is ``A·r/E + B + C·r/E²`` (``E`` relative
    to ``E_ref``, ``r = U_ref/u``): counting (Poisson) noise, fluctuations proportional
    to the signal (XGM error, gas density) and lit pixels without X-rays.  ``C`` is the
    measured variance of the frames without X-rays (``dark_var``; 0 without such
    frames) — fitting it too makes ``A/E`` and ``C/E²`` trade off over the SASE range.
    ``A`` and ``B`` are fitted by non-negative least squares to the robust variance of
    the residuals in pulse-energy quantile bins, weighted by their precision.
    """
    from scipy.optimize import nnls

    n = e_rel.size
    n_bins = min(10, n // 150)
    info: dict = {"noise_model": cfg.noise_model}
    if cfg.noise_model == "constant" or n_bins < 3:
        if cfg.noise_model == "energy":
            info["noise_model"] = "constant (too few frames to fit the energy dependence)"
        return np.ones(n), info
    c = float(dark_var) if dark_var is not None else 0.0
    x_p = r_pix / e_rel
    x_a = r_pix / e_rel**2
    edges = np.quantile(e_rel, np.linspace(0, 1, n_bins + 1))
    b = np.clip(np.searchsorted(edges, e_rel, "right") - 1, 0, n_bins - 1)
    rows, s2, w = [], [], []
    for j in range(n_bins):
        sel = b == j
        if sel.sum() < 30:
            continue
        _, s = _robust(resid[sel], cfg.sigma)
        rows.append((float(np.mean(x_p[sel])), 1.0, float(np.mean(x_a[sel]))))
        s2.append(s * s)
        # Var(σ̂²) ∝ σ⁴/n: weight √n/σ².
        w.append(math.sqrt(sel.sum()) / max(s * s, 1e-30))
    if len(rows) < 3:
        info["noise_model"] = "constant (too few frames per energy bin)"
        return np.ones(n), info
    rows, s2, w = map(np.asarray, (rows, s2, w))
    target = s2 - c * rows[:, 2]
    coef, _ = nnls(rows[:, :2] * w[:, None], target * w)
    a, bb = (float(v) for v in coef)
    norm = a + bb + c
    if not norm > 0:
        info["noise_model"] = "constant (degenerate fit)"
        return np.ones(n), info
    g = np.sqrt((a * x_p + bb + c * x_a) / norm)
    info.update(noise_poisson=a / norm, noise_constant=bb / norm, noise_additive=c / norm,
                noise_sigma_ref=math.sqrt(norm))
    return g, info


def _hash_uniform(train_ids: np.ndarray, pulse_ids: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per frame from (trainId, pulseId, seed): split-invariant randomness."""
    with np.errstate(over="ignore"):
        z = (np.asarray(train_ids, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ (np.asarray(pulse_ids, np.uint64) + np.uint64(int(seed) & 0xFFFFFFFF) * np.uint64(0x100000001B3)))
        # splitmix64 finaliser
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# -- the hit finder -------------------------------------------------------------------
_REQUIRED = ("trainId", "pulseId", "xray", "pulse_energy")


def find_hits(table: Mapping[str, np.ndarray], cfg: SpiHitConfig | Mapping | None = None) -> HitResult:
    """SPI hits of a whole run from its per-frame annotation columns.

    Parameters
    ----------
    table
        Per-frame columns (see :data:`xfel_reduce.annotate.COLUMNS`): ``trainId``,
        ``pulseId``, ``xray``, ``pulse_energy`` (µJ), the lit-pixel column, and either
        its unmasked-pixel column or ``modules_present`` (+ ``nan_pixels``); optional
        ``beam_data``.  Rows in any order (the result follows the input order); give
        the *whole* run (the concatenated sequences) for a split-invariant result.
    cfg
        :class:`SpiHitConfig` or its dict.

    Returns
    -------
    HitResult
    """
    if cfg is None or isinstance(cfg, Mapping):
        cfg = SpiHitConfig.from_dict(cfg)
    lit_col, unm_col = cfg.count_columns()
    missing = [c for c in _REQUIRED + (lit_col,) if c not in table]
    if missing:
        raise KeyError(f"find_hits: the table lacks column(s) {missing} (has {sorted(table)})")
    tid_in = np.asarray(table["trainId"], np.uint64)
    n = tid_in.size
    pid_in = np.asarray(table["pulseId"], np.uint64)
    order = np.lexsort((pid_in, tid_in))
    key = frame_key(tid_in[order], pid_in[order])
    if n > 1 and np.any(key[1:] == key[:-1]):
        raise ValueError("find_hits: duplicate (trainId, pulseId) rows: give each frame once "
                         "(concatenate the sequences, do not repeat them)")

    def col(name, dtype=np.float64):
        return np.asarray(table[name])[order].astype(dtype)

    tid, pid = tid_in[order], pid_in[order]
    xray = col("xray", bool)
    lit = col(lit_col)
    energy = col("pulse_energy")
    beam_ok = col("beam_data", bool) if "beam_data" in table else np.ones(n, bool)
    flags = np.zeros(n, np.uint16)

    # -- unmasked pixels -------------------------------------------------------------
    if unm_col in table:
        unmasked = col(unm_col)
        unmasked_source = unm_col
    elif lit_col != "lit_pixels":
        raise KeyError(f"find_hits: lit pixels from {lit_col!r} need their unmasked-pixel "
                       f"column {unm_col!r} in the table")
    elif "modules_present" in table:
        nan_px = col("nan_pixels") if "nan_pixels" in table else np.zeros(n)
        unmasked = col("modules_present") * float(cfg.pixels_per_module) - nan_px
        unmasked_source = "modules_present*pixels_per_module-nan_pixels"
    else:
        raise KeyError(f"find_hits: the table needs {unm_col!r} or 'modules_present' "
                       "to normalise by unmasked pixels")
    if "modules_present" in table:
        mp = col("modules_present")
        if mp.size and mp.max() > 0:
            flags[mp < mp.max()] |= np.uint16(HitFlag.MODULES_MISSING)
    has_px = unmasked > 0
    flags[~has_px] |= np.uint16(HitFlag.NO_PIXELS)
    flags[~xray] |= np.uint16(HitFlag.NO_XRAY)
    scored = xray & has_px
    u_ref = float(np.median(unmasked[scored])) if scored.any() else float("nan")

    # -- linearised, per-pixel-normalised lit pixels minus the dark offset ------------
    lit_n = np.full(n, np.nan)
    if cfg.occupancy_correction:
        frac = np.clip(lit[has_px] / unmasked[has_px], 0.0, 1.0 - 1e-9)
        lit_lin = -unmasked[has_px] * np.log1p(-frac)
    else:
        lit_lin = lit[has_px]
    lit_n[has_px] = lit_lin * (u_ref / unmasked[has_px])
    dark = ~xray & beam_ok & has_px
    # The spread of frames without X-rays: the additive part of the noise model.
    dark_var = (_robust(lit_n[dark], cfg.sigma)[1] ** 2) if dark.sum() >= 30 else None
    if cfg.dark_offset == "dark":
        offset = float(np.median(lit_n[dark])) if dark.any() else 0.0
        offset_source = f"median of {int(dark.sum())} frames without X-rays" if dark.any() else "none (no dark frames)"
    else:
        offset, offset_source = float(cfg.dark_offset), "configured"
    lit_n = lit_n - offset

    # -- pulse energy ---------------------------------------------------------------------
    e_usable = scored & beam_ok & np.isfinite(energy) & (energy > 0)
    if cfg.reference_energy_uj is not None:
        e_ref = float(cfg.reference_energy_uj)
    else:
        e_ref = float(np.median(energy[e_usable])) if e_usable.any() else float("nan")
    e_min = max(float(cfg.energy_min_uj), float(cfg.energy_min_rel) * e_ref) if e_usable.any() else 0.0
    low = e_usable & (energy < e_min)
    e_ok = e_usable & ~low
    flags[xray & ~(beam_ok & np.isfinite(energy) & (energy > 0))] |= np.uint16(HitFlag.NO_ENERGY)
    flags[low] |= np.uint16(HitFlag.LOW_ENERGY)

    score = np.full(n, np.nan)
    score[e_ok] = lit_n[e_ok] * (e_ref / energy[e_ok])
    unnorm = scored & ~e_ok
    score[unnorm] = lit_n[unnorm]
    flags[unnorm] |= np.uint16(HitFlag.UNNORMALISED)

    # -- statistics per train window --------------------------------------------------------
    trains, tpos = np.unique(tid, return_inverse=True)
    n_tr = trains.size
    threshold = np.full(n, np.nan)
    signif = np.full(n, np.nan)
    decided = np.zeros(n, bool)
    mu_t = np.full(n_tr, np.nan)
    sig_t = np.full(n_tr, np.nan)
    info: dict = {"noise_model": cfg.noise_model}
    if cfg.mode == "fixed":
        threshold[scored] = float(cfg.fixed_threshold)
        decided[scored] = True
        thr_t = np.full(n_tr, float(cfg.fixed_threshold))
    else:
        idx = np.flatnonzero(e_ok)  # sorted by train already
        if idx.size >= 3:
            mu_t, _, _ = _window_stats(tpos[idx], score[idx], n_tr, cfg)
            g_all = np.ones(n)
            resid = score[idx] - mu_t[tpos[idx]]
            g, info = _noise_shape(energy[idx] / e_ref, u_ref / unmasked[idx], resid, dark_var, cfg)
            g_all[idx] = g
            _, sig_t, wide = _window_stats(tpos[idx], resid / g, n_tr, cfg)
            ok = e_ok & np.isfinite(mu_t[tpos]) & np.isfinite(sig_t[tpos])
            threshold[ok] = mu_t[tpos[ok]] + cfg.k * sig_t[tpos[ok]] * g_all[ok]
            with np.errstate(divide="ignore", invalid="ignore"):
                signif[ok] = (score[ok] - mu_t[tpos[ok]]) / (sig_t[tpos[ok]] * g_all[ok])
            decided[ok] = True
            flags[e_ok & wide[tpos]] |= np.uint16(HitFlag.WIDE_WINDOW)
        thr_t = mu_t + cfg.k * sig_t
        # Frames not normalised: raw statistics of all X-ray frames' lit_n (SASE spread included).
        if cfg.no_energy == "raw" and unnorm.any():
            ridx = np.flatnonzero(scored)
            rmu, rsig, rwide = _window_stats(tpos[ridx], lit_n[ridx], n_tr, cfg)
            ok = unnorm & np.isfinite(rmu[tpos]) & np.isfinite(rsig[tpos])
            threshold[ok] = rmu[tpos[ok]] + cfg.k * rsig[tpos[ok]]
            with np.errstate(divide="ignore", invalid="ignore"):
                signif[ok] = (score[ok] - rmu[tpos[ok]]) / rsig[tpos[ok]]
            decided[ok] = True
            flags[unnorm & rwide[tpos]] |= np.uint16(HitFlag.WIDE_WINDOW)
    if cfg.no_energy == "undecided":
        decided[unnorm] = False
        threshold[unnorm] = np.nan
        signif[unnorm] = np.nan
    flags[xray & ~decided] |= np.uint16(HitFlag.UNDECIDED)
    hit = decided & (score > threshold)

    # -- randomly kept misses --------------------------------------------------------------
    misses = decided & ~hit
    n_keep = max(cfg.miss_fraction * hit.sum(), cfg.miss_fraction_min * decided.sum())
    p_keep = min(1.0, n_keep / misses.sum()) if misses.any() else 0.0
    miss = misses & (_hash_uniform(tid, pid, cfg.seed) < p_keep)

    params = {**asdict(cfg), **info, "lit_pixels_from": lit_col,
              "reference_energy_uj": e_ref, "energy_min_effective_uj": e_min,
              "reference_pixels": u_ref, "unmasked_pixels_from": unmasked_source,
              "dark_offset_lit_pixels": offset, "dark_offset_from": offset_source,
              "miss_keep_probability": p_keep,
              "frames": int(n), "xray_frames": int(xray.sum()), "energy_normalised": int(e_ok.sum())}

    inv = np.empty(n, np.intp)
    inv[order] = np.arange(n)

    def back(a):
        return a[inv]

    return HitResult(score=back(score).astype(np.float32), threshold=back(threshold).astype(np.float32),
                     significance=back(signif).astype(np.float32), hit=back(hit), miss=back(miss),
                     decided=back(decided), flags=back(flags), train_ids=trains,
                     train_mu=mu_t.astype(np.float32), train_sigma=sig_t.astype(np.float32),
                     train_threshold=thr_t.astype(np.float32), params=params)


# -- the facility's REDU layout ---------------------------------------------------------
def redu_filename(run: int, sequence: int = 0, aggregator: str = "REDU00") -> str:
    """File name extra-redu's ``exdf_save`` gives the hit finder's output."""
    return f"CORR-R{run:04d}-{aggregator}-S{sequence:05d}.h5"


def write_redu(path: str | os.PathLike, table: Mapping[str, np.ndarray], result: HitResult,
               detector: str = "SPB_DET_AGIPD1M-1", modules: Sequence[int] = tuple(range(16)),
               max_modules: int = 16, provenance: dict | None = None, proposal: int = 0,
               run: int = 0, sequence: int = 0, train_ids: Sequence[int] | None = None) -> Path:
    """Write the hit finder's result as the facility's REDU hit-finder source.

    Layout (what ``extra_redu.spi.SpiHitfinder.from_datacollection`` reads):

    * control source ``<detector>/REDU/SPI_HITFINDER``: the parameters as run values
      (``modules``, ``numModules``, ``mode``, ``snr``, ``minScores``, ``lqr``,
      ``fixedThreshold``, ``hitrateWindowSize``, ``xgmNormalization``,
      ``xgmMinimalEnergy``, ``missFraction``, ``missFractionBase``,
      ``missFractionAbs``), plus this module's own (``windowTrains``, ``noiseModel``,
      ``referenceEnergy``, …);
    * instrument source ``…:output``, group ``data`` per frame: ``pulseId``,
      ``hitscore``, ``hitFlag``, ``missFlag``, ``dataFlag`` (uint8, as extra-redu writes
      booleans) and ``threshold``, ``significance``, ``decided``, ``qualityFlags``,
      ``cellId``, ``pulseEnergy``, ``litPixels``; group ``threshold`` per train:
      ``value``, ``mu``, ``sig`` (the threshold at the reference pulse energy).

    Parameters
    ----------
    table
        The per-frame table given to :func:`find_hits` (same rows, same order).
    detector, modules, max_modules
        Detector name of the source, and the modules the lit pixels came from.
    train_ids
        Write only these trains (e.g. one sequence's); default all.
    """
    from .io.euxfel import EuXFELWriter

    tid = np.asarray(table["trainId"], np.uint64)
    pid = np.asarray(table["pulseId"], np.uint64)
    if tid.shape != result.hit.shape:
        raise ValueError(f"table has {tid.size} rows, the hit result {result.hit.size}")
    order = np.lexsort((pid, tid))
    if train_ids is not None:
        order = order[np.isin(tid[order], np.asarray(train_ids, np.uint64))]
    trains, counts = np.unique(tid[order], return_counts=True)
    if trains.size == 0:
        raise ValueError("write_redu: no frames to write (train_ids selects none)")
    t_idx = np.searchsorted(result.train_ids, trains)
    p = result.params
    mods = [int(m) for m in modules]
    if len(mods) > max_modules:
        raise ValueError(f"{len(mods)} modules for max_modules {max_modules}")
    mod_arr = np.zeros(max_modules, np.int8)
    mod_arr[:len(mods)] = mods
    ctrl_name = HITFINDER_SOURCE.format(detector=detector)
    n_tr = trains.size
    numeric = {
        "modules": np.broadcast_to(mod_arr, (n_tr, max_modules)).copy(),
        "numModules": np.full(n_tr, len(mods), np.int32),
        "snr": np.full(n_tr, p["k"], np.float64),
        "minScores": np.full(n_tr, p["min_frames"], np.int64),
        "lqr": np.full(n_tr, p["sigma"] == "lower", np.uint8),
        "fixedThreshold": np.full(n_tr, p["fixed_threshold"], np.float64),
        "hitrateWindowSize": np.full(n_tr, p["window_trains"], np.int64),
        "xgmNormalization": np.ones(n_tr, np.uint8),
        "xgmMinimalEnergy": np.full(n_tr, p["energy_min_effective_uj"], np.float64),
        "missFraction": np.full(n_tr, p["miss_fraction"], np.float64),
        "missFractionAbs": np.full(n_tr, p["miss_fraction_min"], np.float64),
        # this module's own parameters (extra-redu ignores them)
        "windowTrains": np.full(n_tr, p["window_trains"], np.int64),
        "referenceEnergy": np.full(n_tr, p["reference_energy_uj"], np.float64),
        "referencePixels": np.full(n_tr, p["reference_pixels"], np.float64),
        "darkOffset": np.full(n_tr, p["dark_offset_lit_pixels"], np.float64),
        "occupancyCorrection": np.full(n_tr, bool(p["occupancy_correction"]), np.uint8),
    }
    strings = {"mode": p["mode"], "missFractionBase": "hit", "sigmaMethod": p["sigma"],
               "noiseModel": str(p["noise_model"]), "noEnergyPolicy": p["no_energy"],
               "scoreDefinition": "(-u*ln(1-lit/u)*U_ref/u - darkOffset)*referenceEnergy/pulseEnergy",
               "qualityFlagBits": ",".join(f"{f.name}={int(f)}" for f in HitFlag)}
    out = f"{ctrl_name}:output"
    cols = result.columns()
    data = {
        "data.pulseId": pid[order],
        "data.cellId": np.asarray(table["cellId"], np.uint16)[order] if "cellId" in table else None,
        "data.hitscore": result.score[order].astype(np.float32),
        "data.hitFlag": result.hit[order].astype(np.uint8),
        "data.missFlag": result.miss[order].astype(np.uint8),
        "data.dataFlag": result.data[order].astype(np.uint8),
        "data.threshold": cols["hit_threshold"][order],
        "data.significance": cols["hit_significance"][order],
        "data.decided": result.decided[order].astype(np.uint8),
        "data.qualityFlags": result.flags[order].astype(np.uint16),
        "data.pulseEnergy": np.asarray(table["pulse_energy"], np.float32)[order],
        "data.litPixels": np.asarray(table[p["lit_pixels_from"]], np.int32)[order],
    }
    data = {k: v for k, v in data.items() if v is not None}
    thr = {"threshold.value": result.train_threshold[t_idx].astype(np.float64),
           "threshold.mu": result.train_mu[t_idx].astype(np.float64),
           "threshold.sig": result.train_sigma[t_idx].astype(np.float64)}
    with EuXFELWriter(path, trains, provenance=provenance, proposal=proposal, run=run,
                      sequence=sequence, run_type="spi hit finding") as w:
        w.add_instrument(out, counts, {k: (v.dtype, v.shape[1:]) for k, v in data.items()})
        w.fill(out, data)
        w.add_instrument(out, np.ones(n_tr, np.uint64), {k: (v.dtype, v.shape[1:]) for k, v in thr.items()})
        w.fill(out, thr)
        w.add_control(ctrl_name, numeric, run_values=strings)
    return Path(path)
