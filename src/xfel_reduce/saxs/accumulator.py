"""Mergeable SAXS run sums (all, laser on, off) and the sphere model and fit."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


# --------------------------------------------------------------------------
# run averages
# --------------------------------------------------------------------------
GROUPS = ("all", "on", "off")


@dataclass
class SaxsAccumulator:
    """Mergeable per-chunk partial of a SAXS run.

    For each group (``all`` X-ray frames, laser ``on``, laser ``off``) and bin:
    number of frames with a valid value, ΣI, ΣI² and Σσ² (float64).  Plus per-pixel
    Σ photons and number of valid frames for the 2-D average image.

    Parameters
    ----------
    radial
        Bin centres; partials with different axes refuse to merge.
    frame_shape
        Detector frame shape for the 2-D sum image (``None`` to skip it).
    xgm_normalised
        Whether the profiles given to :meth:`add` are divided by pulse energy
        (recorded so a gather cannot mix normalised and raw partials).
    poisson_k
        :attr:`AzimuthalEngine.poisson_k`; enables the counting-statistics error
        of the mean (see :meth:`mean`).
    """

    radial: np.ndarray
    frame_shape: tuple[int, ...] | None = None
    xgm_normalised: bool = False
    n: dict[str, np.ndarray] = field(default_factory=dict)
    s1: dict[str, np.ndarray] = field(default_factory=dict)
    s2: dict[str, np.ndarray] = field(default_factory=dict)
    sv: dict[str, np.ndarray] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    image_sum: np.ndarray | None = None
    image_count: np.ndarray | None = None
    energy_sum: dict[str, float] = field(default_factory=dict)
    poisson_k: np.ndarray | None = None
    inv_energy_sum: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.radial = np.asarray(self.radial, dtype=np.float64)
        npt = self.radial.size
        for g in GROUPS:
            self.n.setdefault(g, np.zeros(npt, np.int64))
            self.s1.setdefault(g, np.zeros(npt, np.float64))
            self.s2.setdefault(g, np.zeros(npt, np.float64))
            self.sv.setdefault(g, np.zeros(npt, np.float64))
            self.frames.setdefault(g, 0)
            self.energy_sum.setdefault(g, 0.0)
            self.inv_energy_sum.setdefault(g, 0.0)
        if self.poisson_k is not None:
            self.poisson_k = np.asarray(self.poisson_k, dtype=np.float64)
        if self.frame_shape is not None and self.image_sum is None:
            self.frame_shape = tuple(self.frame_shape)
            self.image_sum = np.zeros(self.frame_shape, np.float64)
            self.image_count = np.zeros(self.frame_shape, np.int64)

    def add(
        self,
        intensity: np.ndarray,
        sigma: np.ndarray,
        laser_on: np.ndarray,
        pulse_energy: np.ndarray | None = None,
        frames: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> None:
        """Add integrated X-ray frames (NaN bins are skipped per frame).

        ``laser_on`` is a bool per frame; ``pulse_energy`` is summed for the
        record; ``frames``/``mask`` (optional) feed the 2-D average image.
        """
        # float64 before any sum: float32 sums would round differently for every
        # split of a run (the partials must merge to the same result)
        intensity = np.atleast_2d(np.asarray(intensity, np.float64))
        sigma = np.atleast_2d(np.asarray(sigma, np.float64))
        on = np.asarray(laser_on, dtype=bool)
        if on.shape[0] != intensity.shape[0]:
            raise ValueError("laser_on needs one flag per frame")
        sel = {"all": np.ones_like(on), "on": on, "off": ~on}
        valid = np.isfinite(intensity) & np.isfinite(sigma)
        i0 = np.where(valid, intensity, 0.0)
        v0 = np.where(valid, sigma, 0.0) ** 2
        for g, s in sel.items():
            self.n[g] += valid[s].sum(axis=0)
            self.s1[g] += i0[s].sum(axis=0)
            self.s2[g] += (i0[s] ** 2).sum(axis=0)
            self.sv[g] += v0[s].sum(axis=0)
            self.frames[g] += int(s.sum())
            if pulse_energy is not None:
                self.energy_sum[g] += float(np.asarray(pulse_energy, dtype=np.float64)[s].sum())
            if self.xgm_normalised:
                if pulse_energy is None:
                    raise ValueError("XGM-normalised profiles need their pulse energies")
                self.inv_energy_sum[g] += float((1.0 / np.asarray(pulse_energy, dtype=np.float64)[s]).sum())
            else:
                self.inv_energy_sum[g] += float(s.sum())
        if frames is not None and self.image_sum is not None:
            x = np.asarray(frames).reshape((-1,) + self.frame_shape)
            good = np.isfinite(x)
            if mask is not None:
                good &= np.asarray(mask).reshape(x.shape) == 0
            self.image_sum += np.where(good, x, 0.0).sum(axis=0, dtype=np.float64)
            self.image_count += good.sum(axis=0)

    def merge(self, other: "SaxsAccumulator") -> "SaxsAccumulator":
        """Add another partial into this one (in place) and return self."""
        if other.radial.shape != self.radial.shape or not np.allclose(other.radial, self.radial, rtol=1e-9):
            raise ValueError("cannot merge SAXS partials with different radial axes (npt/range/geometry differ)")
        if other.xgm_normalised != self.xgm_normalised:
            raise ValueError("cannot merge XGM-normalised with un-normalised SAXS partials")
        for g in GROUPS:
            self.n[g] += other.n[g]
            self.s1[g] += other.s1[g]
            self.s2[g] += other.s2[g]
            self.sv[g] += other.sv[g]
            self.frames[g] += other.frames[g]
            self.energy_sum[g] += other.energy_sum[g]
            self.inv_energy_sum[g] += other.inv_energy_sum[g]
        if (self.poisson_k is None) != (other.poisson_k is None) or (
                self.poisson_k is not None and not np.allclose(self.poisson_k, other.poisson_k, equal_nan=True)):
            raise ValueError("cannot merge SAXS partials integrated with different engines (poisson_k differs)")
        if self.image_sum is not None and other.image_sum is not None:
            self.image_sum += other.image_sum
            self.image_count += other.image_count
        return self

    def mean(self, group: str = "all") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Average profile, its standard error and its counting-statistics error.

        Returns
        -------
        mean, sem, poisson_err : numpy.ndarray
            ``sem`` comes from the frame-to-frame scatter (includes beam and sample
            fluctuations); NaN where fewer than 2 frames contributed.
            ``poisson_err`` is the Poisson error of the mean predicted from the
            mean itself, ``√(Ī·K·Σ1/e) / n`` (K from the engine, e the pulse
            energies when XGM-normalised, else 1).  Unlike the frame scatter it is
            not biased low in bins where most frames count nothing.  Without
            ``poisson_k`` it falls back to pyFAI's per-frame model propagated,
            ``√Σσ² / n`` (σ² floored at one count per pixel: an over-estimate for
            sparse data).
        """
        n = self.n[group].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = self.s1[group] / n
            var = (self.s2[group] - n * mean**2) / (n - 1)
            sem = np.sqrt(np.maximum(var, 0.0) / n)
            if self.poisson_k is not None:
                # per-frame Σ1/e scaled by the fraction of frames valid in the bin
                inv_e = self.inv_energy_sum[group] * n / max(self.frames[group], 1)
                perr = np.sqrt(np.maximum(mean, 0.0) * self.poisson_k * inv_e) / n
            else:
                perr = np.sqrt(self.sv[group]) / n
        bad = n < 2
        return (np.where(n > 0, mean, np.nan), np.where(bad, np.nan, sem), np.where(n > 0, perr, np.nan))

    def error(self, group: str = "all") -> np.ndarray:
        """Error of the mean used for fits and NXcanSAS ``Idev``: max(sem, poisson_err).

        The larger of the two keeps extra (non-Poisson) scatter when there is some
        and protects low-count bins from the downward bias of the frame scatter.
        """
        _, sem, perr = self.mean(group)
        return np.fmax(sem, perr)

    def difference(self) -> tuple[np.ndarray, np.ndarray]:
        """Laser on − off and its standard error."""
        m_on, m_off = self.mean("on")[0], self.mean("off")[0]
        return m_on - m_off, np.hypot(self.error("on"), self.error("off"))

    def mean_image(self) -> np.ndarray | None:
        """Average photons per pixel over valid frames (NaN where never valid)."""
        if self.image_sum is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.image_count > 0, self.image_sum / self.image_count, np.nan)

    # -- persistence -------------------------------------------------------
    def to_h5(self, group) -> None:
        """Write the partial into an open h5py group."""
        group.attrs["kind"] = "xfel_reduce.saxs.SaxsAccumulator"
        group.attrs["xgm_normalised"] = bool(self.xgm_normalised)
        group.create_dataset("radial", data=self.radial)
        for g in GROUPS:
            sub = group.create_group(g)
            sub.create_dataset("n", data=self.n[g])
            sub.create_dataset("sum", data=self.s1[g])
            sub.create_dataset("sum_sq", data=self.s2[g])
            sub.create_dataset("sum_var", data=self.sv[g])
            sub.attrs["frames"] = int(self.frames[g])
            sub.attrs["energy_sum"] = float(self.energy_sum[g])
            sub.attrs["inv_energy_sum"] = float(self.inv_energy_sum[g])
        if self.poisson_k is not None:
            group.create_dataset("poisson_k", data=self.poisson_k)
        if self.image_sum is not None:
            group.create_dataset("image_sum", data=self.image_sum, compression="gzip", compression_opts=1)
            group.create_dataset("image_count", data=self.image_count, compression="gzip", compression_opts=1)

    @classmethod
    def from_h5(cls, group) -> "SaxsAccumulator":
        """Read a partial written by :meth:`to_h5`."""
        if group.attrs.get("kind") != "xfel_reduce.saxs.SaxsAccumulator":
            raise ValueError(f"{group.file.filename}:{group.name} is not a SAXS partial")
        img = group["image_sum"][()] if "image_sum" in group else None
        acc = cls(
            radial=group["radial"][()],
            frame_shape=None if img is None else img.shape,
            xgm_normalised=bool(group.attrs["xgm_normalised"]),
            image_sum=img,
            image_count=group["image_count"][()] if img is not None else None,
            poisson_k=group["poisson_k"][()] if "poisson_k" in group else None,
        )
        for g in GROUPS:
            sub = group[g]
            acc.n[g] = sub["n"][()]
            acc.s1[g] = sub["sum"][()]
            acc.s2[g] = sub["sum_sq"][()]
            acc.sv[g] = sub["sum_var"][()]
            acc.frames[g] = int(sub.attrs["frames"])
            acc.energy_sum[g] = float(sub.attrs["energy_sum"])
            acc.inv_energy_sum[g] = float(sub.attrs.get("inv_energy_sum", 0.0))
        return acc


# --------------------------------------------------------------------------
# sphere model and fit
# --------------------------------------------------------------------------
def sphere_form_factor(q: np.ndarray, radius: float) -> np.ndarray:
    """Normalised form factor P(q) = [3(sin qR − qR cos qR)/(qR)³]², P(0) = 1.

    ``q`` and ``radius`` in reciprocal/direct units of each other (nm⁻¹ and nm).
    """
    x = np.asarray(q, dtype=np.float64) * float(radius)
    out = np.ones_like(x)
    big = np.abs(x) > 1e-3
    xb = x[big]
    out[big] = (3.0 * (np.sin(xb) - xb * np.cos(xb)) / xb**3) ** 2
    # Taylor series below 1e-3 avoids the catastrophic cancellation of sin − x cos.
    xs = x[~big]
    out[~big] = (1.0 - xs**2 / 10.0) ** 2
    return out


def sphere_volume_nm3(radius_nm: float) -> float:
    """Volume of a sphere in nm³."""
    return 4.0 / 3.0 * math.pi * float(radius_nm) ** 3


def sphere_intensity(
    q: np.ndarray,
    radius_nm: float,
    volume_fraction: float,
    contrast_sld: float,
    background_cm1: float = 0.0,
    background_q2: float = 0.0,
) -> np.ndarray:
    """Differential scattering cross-section dΣ/dΩ (cm⁻¹) of dilute spheres.

    dΣ/dΩ = φ·Δρ²·V·P(q) + b₀ + b₂·q².

    Parameters
    ----------
    q
        nm⁻¹.
    radius_nm
        Sphere radius.
    volume_fraction
        φ, volume fraction of spheres (dilute: no structure factor).
    contrast_sld
        Δρ in 10⁻⁶ Å⁻² (X-ray scattering-length-density contrast).
    background_cm1, background_q2
        Solvent background b₀ (cm⁻¹) and its slow q² term b₂ (cm⁻¹·nm²).
    """
    drho_cm2 = float(contrast_sld) * 1e-6 * 1e16  # 1e-6 Å⁻² → cm⁻²
    v_cm3 = sphere_volume_nm3(radius_nm) * 1e-21
    q = np.asarray(q, dtype=np.float64)
    return volume_fraction * drho_cm2**2 * v_cm3 * sphere_form_factor(q, radius_nm) + background_cm1 + background_q2 * q**2


def _linear_fit(design: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    a = design * w[:, None]
    coef, *_ = np.linalg.lstsq(a, y * w, rcond=None)
    chi2 = float(np.sum((a @ coef - y * w) ** 2))
    return coef, chi2


def fit_sphere(
    q: np.ndarray,
    intensity: np.ndarray,
    sigma: np.ndarray,
    *,
    q_range: tuple[float, float] | None = None,
    radius_bounds_nm: tuple[float, float] | None = None,
    background: str = "constant",
    smear: str | float | None = "bin",
    variance: str = "model",
) -> dict[str, Any]:
    """Least-squares fit of monodisperse spheres: I = s·P(q, R) + b (+ b₂q²).

    A coarse scan over R (with the linear parameters solved exactly at each R)
    finds the global minimum — the χ² surface of a sphere has one local minimum
    per fringe — before a Levenberg–Marquardt refinement of all parameters.

    Parameters
    ----------
    q, intensity, sigma
        Profile (q in nm⁻¹); bins with non-finite values or σ ≤ 0 are ignored.
    q_range
        Fit only within this q range.
    radius_bounds_nm
        Scan range for R; default from the q range (π/q_max … 2π/q_min·…).
    background
        ``"constant"`` or ``"quadratic"`` (adds b₂·q²) or ``"none"``.
    smear
        Instrumental smearing of the model: ``"bin"`` averages P(q) uniformly over
        the width of each bin (the integration itself averages over the bin, which
        matters near the sharp fringe minima of large spheres); a number is an
        explicit full width in nm⁻¹ (e.g. bin width + pixel width); ``None`` evaluates
        the model at the bin centre.
    variance
        ``"model"`` (default): after a first fit, each bin's variance is its
        σ²/I ratio times the *model* intensity (iterated), which removes the
        downward bias of counting errors estimated from sparse data; χ²_red,
        residuals and errors then refer to these variances.  ``"data"`` uses σ
        as given.

    Returns
    -------
    dict
        ``radius_nm``, ``radius_err_nm``, ``scale``, ``scale_err``, ``background``,
        ``background_q2``, ``chi2_red``, ``n_points``, ``q_min``, ``q_max``,
        ``model`` (I at the given q, NaN outside the fit range), ``residuals``
        ((I − model)/σ).
    """
    from scipy.optimize import least_squares

    if variance not in ("model", "data"):
        raise ValueError(f"variance must be 'model' or 'data', got {variance!r}")
    n_lin = {"none": 1, "constant": 2, "quadratic": 3}.get(background)
    if n_lin is None:
        raise ValueError(f"background must be 'none', 'constant' or 'quadratic', got {background!r}")
    q = np.asarray(q, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    counted = np.isfinite(q) & np.isfinite(y) & np.isfinite(s) & (q > 0)
    if q_range is not None:
        counted &= (q >= q_range[0]) & (q <= q_range[1])
    # Bins that counted nothing (σ = 0) carry information too; they enter once the
    # weights come from the model.
    use = counted & ((s > 0) | ((s == 0) & (variance == "model")))
    n_weighted = int((use & (s > 0)).sum())
    if n_weighted < n_lin + 3:
        raise ValueError(f"only {n_weighted} usable points for the sphere fit: widen q_range or check the data")
    qq, yy = q[use], y[use]
    with np.errstate(divide="ignore"):
        ww = np.where(s[use] > 0, 1.0 / s[use], 0.0)
    q_lo, q_hi = float(qq.min()), float(qq.max())
    if smear == "bin":
        width = np.gradient(q)[use] if q.size > 1 else np.zeros_like(qq)
    elif smear is None:
        width = np.zeros_like(qq)
    else:
        width = np.broadcast_to(np.asarray(smear, dtype=np.float64), q.shape)[use] if np.ndim(smear) else np.full_like(qq, float(smear))
    # uniform average over the width with a 7-point midpoint rule
    offsets = (np.arange(7) + 0.5) / 7.0 - 0.5
    q_sub = np.abs(qq[:, None] + width[:, None] * offsets[None, :])

    def form(radius: float) -> np.ndarray:
        return sphere_form_factor(q_sub, radius).mean(axis=1)
    if radius_bounds_nm is None:
        # A sphere is only identifiable if the data see its Guinier region or a
        # fringe: R from ~1/q_max (fringes beyond the data) to ~6/q_min.
        radius_bounds_nm = (1.0 / q_hi, 6.0 / q_lo)

    def design(radius: float) -> np.ndarray:
        cols = [form(radius)]
        if n_lin >= 2:
            cols.append(np.ones_like(qq))
        if n_lin == 3:
            cols.append(qq**2)
        return np.stack(cols, axis=1)

    # Fringe spacing in R is ~π/q_max, so sample R several times finer than that.
    step = np.pi / q_hi / 8.0
    grid = np.arange(radius_bounds_nm[0], radius_bounds_nm[1] + step, step)
    chis = np.array([_linear_fit(design(r), yy, ww)[1] for r in grid])
    r0 = float(grid[int(np.argmin(chis))])
    lin0, _ = _linear_fit(design(r0), yy, ww)

    def resid(p: np.ndarray) -> np.ndarray:
        return (design(p[0]) @ p[1:] - yy) * ww

    sol = least_squares(resid, np.concatenate([[r0], lin0]), method="lm", x_scale="jac")
    if variance == "model":
        # Counting errors taken from the data make low-count bins that fluctuated
        # down weigh more, which biases the fit low (most visibly the flat
        # background at high q, by ~25 % on a 32-frame run).  Pearson-style
        # reweighting: keep each bin's variance-to-intensity ratio (it carries the
        # pixel count, frames and normalisation) but apply it to the model.
        pos = (yy > 0) & (ww > 0)
        if pos.sum() >= 2:
            from scipy.ndimage import median_filter

            # the ratio varies slowly with q (pixels per bin); a running median
            # keeps its noise from feeding back into the weights
            ratio = median_filter(np.interp(qq, qq[pos], (1.0 / ww[pos]) ** 2 / yy[pos]), size=9,
                                  mode="nearest")
            for _ in range(3):
                m = design(sol.x[0]) @ sol.x[1:]
                floor = 0.1 * np.min(np.abs(m[m != 0])) if np.any(m != 0) else 1.0
                ww = 1.0 / np.sqrt(ratio * np.maximum(m, floor))
                sol = least_squares(resid, sol.x, method="lm", x_scale="jac")
    dof = max(1, qq.size - sol.x.size)
    chi2_red = float(np.sum(sol.fun**2) / dof)
    try:
        cov = np.linalg.inv(sol.jac.T @ sol.jac)
        # Scale by χ²_red so the errors stay honest when σ is under/over-estimated.
        err = np.sqrt(np.diag(cov) * max(chi2_red, 1.0))
    except np.linalg.LinAlgError:
        err = np.full(sol.x.size, np.nan)
    model = np.full(q.shape, np.nan)
    model[use] = design(sol.x[0]) @ sol.x[1:]
    s_fit = np.full(q.shape, np.nan)
    s_fit[use] = 1.0 / ww
    with np.errstate(invalid="ignore", divide="ignore"):
        residuals = np.where(use, (y - model) / s_fit, np.nan)
    return {
        "radius_nm": float(sol.x[0]),
        "radius_err_nm": float(err[0]),
        "scale": float(sol.x[1]),
        "scale_err": float(err[1]),
        "background": float(sol.x[2]) if n_lin >= 2 else 0.0,
        "background_q2": float(sol.x[3]) if n_lin == 3 else 0.0,
        "chi2_red": chi2_red,
        "n_points": int(qq.size),
        "q_min": q_lo,
        "q_max": q_hi,
        "success": bool(sol.success),
        "model": model,
        "residuals": residuals,
    }


