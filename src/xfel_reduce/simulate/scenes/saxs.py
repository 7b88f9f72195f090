"""SAXS scene: dilute monodisperse spheres in a solvent, with a pump-probe change.

Expected photons per pixel and X-ray pulse::

    λ = N_ph · T · L · dΣ/dΩ(q) · ΔΩ · P

with N_ph the incident photons of the pulse (XGM energy / photon energy, times the
beamline transmission ``transmission``), L the sample thickness, dΣ/dΩ the
scattering cross-section of the spheres plus the solvent background
(:func:`xfel_reduce.saxs.sphere_intensity`), ΔΩ the pixel solid angle and P the
polarisation factor of the real AGIPD pixel positions.  Counts are Poisson
samples of λ.  Because ΔΩ and P are applied here, an integration that divides
them out (pyFAI's relative solid angle, 1 at normal incidence) recovers
``N_ph·T·L·(p/d)²·dΣ/dΩ(q)`` — the sphere form factor — which is what the truth
records as ``profile_scale``.

Frames with the pump laser use radius ``R·(1 + radius_change)`` (same number
of particles and contrast, so the volume fraction grows with V and the forward
scattering with V²).  In a delay scan (the run's ``delay_scan``) with ``kinetics:
{t0_ps, tau_ps}`` the change follows the delay: ``radius_change · (1 − exp(−(t −
t0)/τ))`` after time zero, none before (:func:`xfel_reduce.simulate.scan.rise`).

Config (``runs: [{type: saxs, ...}]``), all optional:

``radius_nm`` (20), ``radius_change`` (0.02), ``volume_fraction`` (1e-4),
``contrast_sld`` (Δρ in 10⁻⁶ Å⁻², 100: gold-like nanoparticles in water),
``background_cm1`` (0.02, water), ``background_q2`` (0), ``thickness_mm`` (1),
``transmission`` (1e-4: beam attenuators keep the AGIPD out of saturation),
``polarisation`` (0.99, pyFAI convention), ``pixel_size_m`` (200e-6).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...geometry import polarisation_factor, q_map, solid_angle
from ...saxs import sphere_intensity
from ..counter_rng import poisson
from ..scan import PumpKinetics
from ..scene import Scene, SceneContext, TrainBeam

#: Joules per keV.
KEV_J = 1.602176634e-16

DEFAULTS: dict[str, Any] = {
    "radius_nm": 20.0,
    "radius_change": 0.02,
    "volume_fraction": 1e-4,
    "contrast_sld": 100.0,
    "background_cm1": 0.02,
    "background_q2": 0.0,
    "thickness_mm": 1.0,
    "transmission": 1e-4,
    "polarisation": 0.99,
    "pixel_size_m": 200e-6,
    "kinetics": None,  # {t0_ps, tau_ps}: the change rises with the pump-probe delay
}


class SaxsScene(Scene):
    """Dilute spheres + solvent on the AGIPD; laser-on frames see a radius change."""

    name = "saxs"

    def __init__(self, ctx: SceneContext):
        super().__init__(ctx)
        unknown = set(ctx.params) - set(DEFAULTS) - {"type", "name", "run", "trains", "pulses"}
        p = {**DEFAULTS, **{k: v for k, v in ctx.params.items() if k in DEFAULTS}}
        self.unknown_params = sorted(unknown)
        if p["radius_nm"] <= 0 or p["volume_fraction"] < 0 or p["transmission"] < 0:
            raise ValueError(
                f"saxs scene: radius_nm must be > 0, volume_fraction and transmission ≥ 0 (got {p})"
            )
        if not -1.0 <= p["polarisation"] <= 1.0:
            raise ValueError(f"saxs scene: polarisation must be in [-1, 1] (pyFAI convention), got {p['polarisation']}")
        self.p = p
        pos = ctx.positions
        self.q = q_map(pos, ctx.photon_energy_kev)
        horizontal_fraction = (p["polarisation"] + 1.0) / 2.0
        # ΔΩ·P per pixel; the same functions the reduction's geometry uses.
        self._omega_pol = solid_angle(pos, p["pixel_size_m"]) * polarisation_factor(pos, horizontal_fraction)
        # photons per µJ of XGM pulse energy reaching the sample, times L (cm)
        self._photons_per_uj = 1e-6 / (ctx.photon_energy_kev * KEV_J) * p["transmission"]
        self._length_cm = p["thickness_mm"] / 10.0
        r_on = p["radius_nm"] * (1.0 + p["radius_change"])
        self._rate_off = self._expected_per_uj(p["radius_nm"]).astype(np.float32)
        self._rate_on = self._expected_per_uj(r_on).astype(np.float32)
        self._frames = {"xray": 0, "laser_on": 0}
        # laser-on rates per delay of a scan: radius change times the kinetics' rise
        self._pump = PumpKinetics(p["kinetics"], lambda f: self._expected_per_uj(
            p["radius_nm"] * (1.0 + p["radius_change"] * f)).astype(np.float32), self._rate_on)

    def _cross_section(self, radius_nm: float, q: np.ndarray) -> np.ndarray:
        p = self.p
        # The pump changes the particles, not their number: the volume fraction
        # scales with the particle volume, so forward scattering grows with V².
        phi = p["volume_fraction"] * (radius_nm / p["radius_nm"]) ** 3
        return sphere_intensity(q, radius_nm, phi, p["contrast_sld"], p["background_cm1"], p["background_q2"])

    def _expected_per_uj(self, radius_nm: float) -> np.ndarray:
        """Expected photons per pixel per µJ of pulse energy."""
        return self._photons_per_uj * self._length_cm * self._cross_section(radius_nm, self.q) * self._omega_pol

    def expected(self, pulse_energy_uj: float, laser_on: bool = False, delay_ps: float = float("nan")) -> np.ndarray:
        """Expected photons per pixel (n_mod, 512, 128) for one pulse."""
        return (self._pump.pattern(delay_ps) if laser_on else self._rate_off) * np.float32(pulse_energy_uj)

    def photons(self, beam: TrainBeam) -> np.ndarray:
        """Poisson photon counts for the frames of one train."""
        n = len(beam.xray)
        out = np.zeros((n,) + self.ctx.frame_shape, dtype=np.float32)
        energy = np.asarray(beam.pulse_energy_uj, dtype=np.float64)
        for i in np.flatnonzero(np.asarray(beam.xray, bool)):
            if not energy[i] > 0:
                continue
            on = bool(beam.ppl[i])
            lam = self.expected(energy[i], on, beam.delay_ps)
            out[i] = poisson(self.rng, lam)
            self._frames["xray"] += 1
            self._frames["laser_on"] += int(on)
        return out

    def profile_scale(self) -> float:
        """I(q)/dΣ/dΩ(q) per µJ after dividing by pyFAI's relative solid angle and P.

        pyFAI's relative solid angle of a pixel is ΔΩ·d²/p², so the integrated
        intensity per µJ is ``photons_per_uj · L · (p/d)² · dΣ/dΩ``.
        """
        pos = self.ctx.positions
        # the distance is the z of the beam axis: the z of any pixel of a flat
        # detector normal to the beam (extra-geom puts modules at z = distance)
        distance = float(np.median(pos[..., 2]))
        return self._photons_per_uj * self._length_cm * (self.p["pixel_size_m"] / distance) ** 2

    def truth(self) -> dict[str, Any]:
        p = self.p
        r_on = p["radius_nm"] * (1.0 + p["radius_change"])
        drho = p["contrast_sld"] * 1e10  # cm⁻²
        v = 4.0 / 3.0 * np.pi * (p["radius_nm"] * 1e-7) ** 3
        return {
            "scene": self.name,
            **{k: (float(v_) if isinstance(v_, (int, float)) else v_) for k, v_ in p.items()},
            "radius_on_nm": float(r_on),
            "forward_cross_section_cm1": float(p["volume_fraction"] * drho**2 * v),
            "profile_scale_per_uj": float(self.profile_scale()),
            "q_min_nm": float(np.min(self.q)),
            "q_max_nm": float(np.max(self.q)),
            "model": ("dSigma/dOmega = phi*drho^2*V*P_sphere(q,R) + b0 + b2*q^2; laser on: R*(1+radius_change) "
                      "at constant particle number (phi*(1+radius_change)^3)"),
            "frames_xray": int(self._frames["xray"]),
            "frames_laser_on": int(self._frames["laser_on"]),
            "ignored_params": self.unknown_params,
            **({"kinetics": {**p["kinetics"], "observable": "relative radius change of laser-on frames",
                             "amplitude": float(p["radius_change"]),
                             "model": "radius_change * (1 - exp(-(t - t0_ps) / tau_ps)) for t > t0_ps, else 0"}}
               if p["kinetics"] else {}),
        }
