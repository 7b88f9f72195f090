"""Single-particle hits on a weak background: the oracle for lit-pixel hit finding.

A jet of particles crosses the beam; in a known fraction of X-ray frames a spherical
particle (radius drawn from a range) is hit and scatters a sphere diffraction pattern
with a known number of photons.  Every X-ray frame also carries weak, flat gas and
jet background.  Photon numbers scale with the XGM pulse energy.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ... import geometry
from ..counter_rng import poisson
from ..scene import Scene, SceneContext, TrainBeam

DEFAULTS: dict[str, Any] = {
    "hit_fraction": 0.1,
    "background_photons": 0.01,  # per pixel at the mean pulse energy
    "radius_nm": [20.0, 50.0],
    "hit_photons": [2.0e4, 2.0e5],  # total photons on the detector per hit
    "xgm_mean_uj": 1500.0,
}


def sphere_form_factor(q: np.ndarray, radius: float) -> np.ndarray:
    """|F(q)|² of a homogeneous sphere, normalised to 1 at q = 0."""
    x = np.asarray(q, dtype=np.float64) * radius
    out = np.ones_like(x)
    nz = x > 1e-6
    xs = x[nz]
    out[nz] = (3.0 * (np.sin(xs) - xs * np.cos(xs)) / xs**3) ** 2
    return out


class SpiScene(Scene):
    name = "spi"

    def __init__(self, ctx: SceneContext):
        super().__init__(ctx)
        self.p = {**DEFAULTS, **ctx.params}
        self.q = geometry.q_map(ctx.positions, ctx.photon_energy_kev)
        self.weights = geometry.solid_angle(ctx.positions)
        self.weights /= self.weights.sum()
        self._hit: list[np.ndarray] = []
        self._radius: list[np.ndarray] = []

    def photons(self, beam: TrainBeam) -> np.ndarray:
        p, rng = self.p, self.rng
        n = len(beam.xray)
        out = np.zeros((n,) + self.ctx.frame_shape, np.float32)
        hit = beam.xray & (rng.random(n) < p["hit_fraction"])
        radius = np.where(hit, rng.uniform(*p["radius_nm"], n), 0.0)
        scale = beam.pulse_energy_uj / p["xgm_mean_uj"]
        for i in np.flatnonzero(beam.xray):
            lam_bg = p["background_photons"] * scale[i]
            out[i] = poisson(rng, lam_bg, self.ctx.frame_shape)
            if hit[i]:
                total = rng.uniform(*p["hit_photons"]) * scale[i]
                pattern = sphere_form_factor(self.q, radius[i]) * self.weights
                pattern *= total / pattern.sum()
                out[i] += poisson(rng, pattern)
        self._hit.append(hit)
        self._radius.append(radius)
        return out

    def truth(self) -> dict[str, Any]:
        hits = np.concatenate(self._hit) if self._hit else np.zeros(0, bool)
        return {"scene": self.name, **self.p, "n_hits": int(hits.sum())}

    def frame_truth(self) -> dict[str, np.ndarray]:
        return {
            "hit": np.concatenate(self._hit) if self._hit else np.zeros(0, bool),
            "radius_nm": np.concatenate(self._radius) if self._radius else np.zeros(0),
        }
