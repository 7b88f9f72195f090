"""XPCS scene: speckle from colloids in Brownian motion.

Physics
-------
A dilute suspension of colloids diffusing with coefficient ``D`` scatters a partially
coherent beam into a speckle pattern.  At each pixel of momentum transfer ``q`` the
normalised field correlation is ``g1(τ) = exp(−Γτ)`` with ``Γ = D q²`` (Brownian
motion), so the intensity correlation is ``g2(τ) = 1 + β exp(−2Γτ)``.

The intensity of one pixel is modelled as the sum of ``δ = 2/β`` squared real
Ornstein–Uhlenbeck field components, each relaxing at rate ``Γ`` (a squared-Bessel or
Cox–Ingersoll–Ross process).  This gives, exactly and for *any* contrast ``0 < β < 2``:

* a gamma-distributed intensity with ``M = 1/β`` modes (Goodman's partially coherent
  speckle), so photon counts are negative-binomial as assumed by XSVS;
* ``⟨I(t)I(t+τ)⟩/⟨I⟩² = 1 + β exp(−2Γτ)`` at every lag.

The transition over a time step ``Δt`` is sampled exactly (no Euler error, so 100 ms
train gaps and 222 ns pulse gaps are treated alike): with ``a = exp(−2ΓΔt)`` and
``c = (1 − a)/δ``,
``X' = c·χ²(δ − 1) + (√c·ξ + √(a X))²`` — the non-central χ² law written in a form
that stays finite when ``Γ Δt → 0``.  Photons are Poisson samples of ``μ·X·s`` where
``μ`` is the mean photon count per pixel and ``s`` the frame's relative pulse energy.

Only pixels inside ``q_range_nm`` carry speckle (the rest of the detector is dark):
this keeps the simulation cheap while covering the rings the reduction uses.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...geometry import q_map
from ..counter_rng import poisson
from ..scene import Scene, SceneContext, TrainBeam

#: Defaults chosen so that g2 decays measurably within one 4.5 MHz train at the inner
#: rings and almost fully at the outer ones: Γ(0.08 nm⁻¹) ≈ 1.3·10⁴ s⁻¹,
#: Γ(0.30 nm⁻¹) ≈ 1.8·10⁵ s⁻¹ (110 nm silica spheres in water have D ≈ 2·10⁻¹² m²/s).
DEFAULTS: dict[str, Any] = {
    "diffusion_m2_per_s": 2.0e-12,
    "beta": 0.2,
    "mean_photons_per_pixel": 0.2,
    "q_range_nm": [0.08, 0.30],
    "follow_pulse_energy": True,
}


class XpcsScene(Scene):
    """Brownian speckle, correlated between pulses and between trains.

    Parameters (``ctx.params``)
    ---------------------------
    diffusion_m2_per_s : float
        Diffusion coefficient D (m²/s); Γ = D q² with q in m⁻¹.
    beta : float
        Speckle contrast, ``0 < β < 2`` (β = 1 fully coherent, single mode).
    mean_photons_per_pixel : float
        Mean photon count per lit pixel and frame at the train's mean pulse energy.
    q_range_nm : [float, float]
        Pixels with q (nm⁻¹) in this range carry speckle; others stay dark.
    follow_pulse_energy : bool
        Scale each frame's intensity with its XGM pulse energy relative to the train
        mean (real data do; normalised correlations must cancel it).
    """

    name = "xpcs"

    def __init__(self, ctx: SceneContext):
        super().__init__(ctx)
        p = {**DEFAULTS, **(ctx.params or {})}
        self.D = float(p["diffusion_m2_per_s"])
        self.beta = float(p["beta"])
        self.mu = float(p["mean_photons_per_pixel"])
        self.q_range = (float(p["q_range_nm"][0]), float(p["q_range_nm"][1]))
        self.follow_energy = bool(p["follow_pulse_energy"])
        if not 0.0 < self.beta < 2.0:
            raise ValueError(f"xpcs scene: beta={self.beta} must be in (0, 2)")
        if self.D < 0 or self.mu <= 0:
            raise ValueError("xpcs scene: diffusion_m2_per_s must be ≥ 0 and "
                             "mean_photons_per_pixel > 0")
        q = q_map(ctx.positions, ctx.photon_energy_kev)
        self.lit = (q >= self.q_range[0]) & (q < self.q_range[1])
        if not self.lit.any():
            raise ValueError(
                f"xpcs scene: no pixel has q in {self.q_range} nm⁻¹ (detector covers "
                f"{q.min():.3g}–{q.max():.3g} nm⁻¹ for modules {ctx.modules}); set "
                "simulate.runs[].q_range_nm inside that range")
        self.lit_idx = np.flatnonzero(self.lit)
        # Γ per lit pixel in s⁻¹ (q from nm⁻¹ to m⁻¹).
        self.gamma = self.D * (q.ravel()[self.lit_idx] * 1e9) ** 2
        self.dof = 2.0 / self.beta  # δ real field components
        # Start in the stationary state: X ~ Gamma(M = 1/β, scale β), mean 1.
        self.x = self.rng.gamma(1.0 / self.beta, self.beta, size=self.lit_idx.size)
        self.t_last: float | None = None
        self._coef_cache: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._n_trains = 0

    def _coefficients(self, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(c, √c, √a)`` of the transition over ``dt``; cached for the pulse spacing."""
        key = round(dt, 15)
        cached = self._coef_cache.get(key)
        if cached is None:
            a = np.exp(-2.0 * self.gamma * dt)
            c = (1.0 - a) / self.dof
            cached = (c, np.sqrt(c), np.sqrt(a))
            if len(self._coef_cache) < 4:
                self._coef_cache[key] = cached
        return cached

    def _advance(self, x: np.ndarray, dt: float, chi2: np.ndarray, xi: np.ndarray) -> np.ndarray:
        """Exact CIR transition of the normalised intensity over ``dt`` seconds."""
        c, sqrt_c, sqrt_a = self._coefficients(dt)
        return c * chi2 + (sqrt_c * xi + sqrt_a * np.sqrt(x)) ** 2

    def photons(self, beam: TrainBeam) -> np.ndarray:
        ctx = self.ctx
        n_frames = len(beam.xray)
        out = np.zeros((n_frames,) + ctx.frame_shape, dtype=np.float32)
        flat = out.reshape(n_frames, -1)
        t0 = beam.train_index * ctx.train_spacing_s
        n = self.lit_idx.size
        # χ²(δ−1) = 2·Gamma((δ−1)/2); drawn for the whole train at once.
        chi2 = 2.0 * self.rng.standard_gamma((self.dof - 1.0) / 2.0, size=(n_frames, n))
        xi = self.rng.standard_normal(size=(n_frames, n))
        energy = np.asarray(beam.pulse_energy_uj, dtype=np.float64)
        xray = np.asarray(beam.xray, dtype=bool)
        scale = np.ones(n_frames)
        if self.follow_energy and xray.any() and energy[xray].mean() > 0:
            scale = energy / energy[xray].mean()
        x = self.x
        intensity = np.empty((n_frames, n))
        for i in range(n_frames):
            t = t0 + i * ctx.pulse_spacing_s
            if self.t_last is not None:
                dt = t - self.t_last
                if dt < 0:
                    raise ValueError(
                        f"xpcs scene: train {beam.train_id} arrives before the previous "
                        "one; scenes must be called in train order")
                x = self._advance(x, dt, chi2[i], xi[i])
            self.t_last = t
            intensity[i] = x
        self.x = x
        # Field evolves through every frame; only X-ray frames get photons.
        lam = self.mu * (scale * xray)[:, None] * intensity
        flat[:, self.lit_idx] = poisson(self.rng, lam)
        self._n_trains += 1
        return out

    def truth(self) -> dict[str, Any]:
        return {
            "scene": self.name,
            "diffusion_m2_per_s": self.D,
            "beta": self.beta,
            "mean_photons_per_pixel": self.mu,
            "q_range_nm": list(self.q_range),
            "follow_pulse_energy": self.follow_energy,
            "pulse_spacing_s": self.ctx.pulse_spacing_s,
            "train_spacing_s": self.ctx.train_spacing_s,
            "lit_pixels": int(self.lit_idx.size),
            "model": "g2(q,tau) = 1 + beta*exp(-2*D*q^2*tau), gamma speckle with 1/beta modes",
        }
