"""A von Hamos X-ray emission (XES) pattern on one JUNGFRAU module.

A cylindrically bent crystal disperses the sample's Kα emission along the long
(fast-scan, 1024-pixel) axis of the module and focuses it onto a band of rows along
the short axis.  Each emission line is a pseudo-Voigt in the dispersive direction
(Lorentzian natural width and Gaussian instrumental broadening); because the crystal
and detector are never perfectly aligned the lines are tilted and slightly curved
across the band: the centre of a line in row ``y`` is

    x_c(y) = x_0 + t1 (y - y_ref) + t2 (y - y_ref)^2,

so ``x_0`` (the truth "position") is the line position in the reference row.  The
integrated intensity of every frame is proportional to its XGM pulse energy; in
pumped (laser-on) frames all lines move by a known shift.  A bright scatter spot away
from the band drives pixels into the medium and low gain stages so that the gain
decoding is exercised, and a flat background covers the whole module.

Expected counts are integrated over each pixel (difference of the line's cumulative
distribution), so that the truth positions are exact whatever the pixel phase.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import erf

from ..scan import PumpKinetics
from ..scene import Scene, SceneContext, TrainBeam

DEFAULT_PARAMS: dict[str, Any] = {
    # Fe Kα1 / Kα2 at a dispersion of ~0.25 eV per pixel.
    "lines": [
        {"name": "Ka1", "position_px": 600.0, "fwhm_px": 11.0, "eta": 0.6, "area": 1.0},
        {"name": "Ka2", "position_px": 548.0, "fwhm_px": 13.0, "eta": 0.6, "area": 0.5},
    ],
    "band_center_row": 256.0,
    "band_halfwidth_rows": 100.0,
    "band_edge_rows": 4.0,  # Gaussian roll-off of the band edges
    "tilt_px_per_row": 0.02,
    "curvature_px_per_row2": 1.0e-4,
    "photons_per_uj": 2.0,  # photons in all lines per µJ of pulse energy
    "background_per_pixel_per_uj": 2.0e-6,
    "laser_shift_px": 0.8,
    # {t0_ps, tau_ps}: in a delay scan the shift rises as 1 - exp(-(t - t0)/tau) after t0
    "kinetics": None,
    "laser_intensity_factor": 1.0,
    # Energy calibration E(x) = e0 + e1 x + e2 x² (eV) of the spectrometer: only used
    # to express the truth in eV (the reduction gets it from its config).
    "energy_calibration": [6253.84, 0.25, 0.0],
    "spot": {"row": 60.0, "col": 900.0, "sigma_px": 3.0, "photons_per_uj": 60.0},
}


def _cdf_pseudo_voigt(x: np.ndarray, centre: np.ndarray, fwhm: float, eta: float) -> np.ndarray:
    """Cumulative distribution of a unit-area pseudo-Voigt."""
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    gamma = fwhm / 2.0
    d = x - centre
    gauss = 0.5 * (1.0 + erf(d / (np.sqrt(2.0) * sigma)))
    lorentz = 0.5 + np.arctan(d / gamma) / np.pi
    return eta * lorentz + (1.0 - eta) * gauss


class SpectroscopyScene(Scene):
    """Kα1/Kα2 von Hamos pattern on a JUNGFRAU module (``ctx.frame_shape == (1, 512, 1024)``).

    Parameters (``ctx.params``, defaults in :data:`DEFAULT_PARAMS`) are the truth.
    """

    name = "spectroscopy"

    def __init__(self, ctx: SceneContext):
        super().__init__(ctx)
        p = {**DEFAULT_PARAMS, **(ctx.params or {})}
        p["spot"] = {**DEFAULT_PARAMS["spot"], **(p.get("spot") or {})} if p.get("spot") is not None else None
        self.p = p
        n_mod, ny, nx = ctx.frame_shape
        if n_mod != 1:
            raise ValueError(f"the spectroscopy scene is for one JUNGFRAU module, got {n_mod} modules")
        self.shape = (ny, nx)
        yc, hw, edge = p["band_center_row"], p["band_halfwidth_rows"], p["band_edge_rows"]
        rows = np.arange(ny, dtype=np.float64)
        # Flat band with Gaussian edges; only rows with non-negligible weight are
        # simulated line by line (the rest only gets background).
        dist = np.maximum(np.abs(rows - yc) - hw, 0.0)
        weight = np.exp(-0.5 * (dist / max(edge, 1e-6)) ** 2)
        self.band_rows = np.nonzero(weight > 1e-4)[0]
        w = weight[self.band_rows]
        self.row_weight = w / w.sum()
        self.line_frames: list[np.ndarray] = []
        self.spot_map = self._spot_map()
        self._off = self._band_pattern(0.0)
        self._on = self._band_pattern(float(p["laser_shift_px"]))
        # laser-on patterns per delay of a scan: the shift times the kinetics' rise
        self._pump = PumpKinetics(p["kinetics"], lambda f: self._band_pattern(float(p["laser_shift_px"]) * f),
                                  self._on)

    def _centres(self, rows: np.ndarray, shift: float) -> np.ndarray:
        d = rows - self.p["band_center_row"]
        return shift + self.p["tilt_px_per_row"] * d + self.p["curvature_px_per_row2"] * d * d

    def _band_pattern(self, shift: float) -> np.ndarray:
        """Expected line photons per µJ in the band rows, ``(n_band_rows, nx)``."""
        nx = self.shape[1]
        edges = np.arange(nx + 1, dtype=np.float64) - 0.5
        offs = self._centres(self.band_rows.astype(np.float64), shift)[:, None]
        total_area = sum(float(line["area"]) for line in self.p["lines"])
        out = np.zeros((self.band_rows.size, nx))
        for line in self.p["lines"]:
            cdf = _cdf_pseudo_voigt(edges[None, :], line["position_px"] + offs, line["fwhm_px"], line["eta"])
            out += (line["area"] / total_area) * np.diff(cdf, axis=1)
        return out * self.row_weight[:, None] * self.p["photons_per_uj"]

    def _spot_map(self) -> tuple[slice, slice, np.ndarray] | None:
        s = self.p.get("spot")
        if not s:
            return None
        r, c, sig = float(s["row"]), float(s["col"]), float(s["sigma_px"])
        h = int(np.ceil(6 * sig))
        ys = slice(max(0, int(r) - h), min(self.shape[0], int(r) + h + 1))
        xs = slice(max(0, int(c) - h), min(self.shape[1], int(c) + h + 1))
        yy, xx = np.mgrid[ys, xs]
        g = np.exp(-0.5 * (((yy - r) / sig) ** 2 + ((xx - c) / sig) ** 2)) / (2 * np.pi * sig**2)
        return ys, xs, g * float(s["photons_per_uj"])

    def photons(self, beam: TrainBeam) -> np.ndarray:
        n = len(beam.xray)
        ny, nx = self.shape
        out = np.zeros((n, 1, ny, nx), np.float32)
        energy = np.where(beam.xray, beam.pulse_energy_uj, 0.0).astype(np.float64)
        expected_lines = np.zeros(n)
        for i in np.nonzero(beam.xray)[0]:
            e = energy[i]
            pattern = self._pump.pattern(beam.delay_ps) * self.p["laser_intensity_factor"] if beam.ppl[i] else self._off
            lam = pattern * e
            expected_lines[i] = lam.sum()
            out[i, 0, self.band_rows] = self.rng.poisson(lam)
            # Sparse flat background: draw the number of photons, then their pixels.
            n_bg = self.rng.poisson(self.p["background_per_pixel_per_uj"] * e * ny * nx)
            flat = self.rng.integers(0, ny * nx, n_bg)
            np.add.at(out[i, 0].reshape(-1), flat, 1.0)
            if self.spot_map is not None:
                ys, xs, g = self.spot_map
                out[i, 0, ys, xs] += self.rng.poisson(g * e)
        self.line_frames.append(expected_lines)
        return out

    def truth(self) -> dict[str, Any]:
        p = self.p
        e = np.polynomial.polynomial.Polynomial(p["energy_calibration"])
        lines = []
        for line in p["lines"]:
            x0 = float(line["position_px"])
            lines.append({**line, "energy_ev": float(e(x0)),
                          "laser_on_position_px": x0 + float(p["laser_shift_px"])})
        total_area = sum(float(line["area"]) for line in p["lines"])
        return {
            "scene": self.name,
            "lines": lines,
            "ratio_line2_line1": float(p["lines"][1]["area"]) / float(p["lines"][0]["area"])
            if len(p["lines"]) > 1 else None,
            "reference_row": float(p["band_center_row"]),
            "band_rows": [int(self.band_rows[0]), int(self.band_rows[-1]) + 1],
            "band_halfwidth_rows": float(p["band_halfwidth_rows"]),
            "tilt_px_per_row": float(p["tilt_px_per_row"]),
            "curvature_px_per_row2": float(p["curvature_px_per_row2"]),
            "shift_coefficients": [float(p["tilt_px_per_row"]), float(p["curvature_px_per_row2"])],
            "photons_per_uj": float(p["photons_per_uj"]),
            "line_fraction": [float(line["area"]) / total_area for line in p["lines"]],
            "background_per_pixel_per_uj": float(p["background_per_pixel_per_uj"]),
            "laser_shift_px": float(p["laser_shift_px"]),
            "laser_shift_ev": float(e.deriv()(p["lines"][0]["position_px"]) * p["laser_shift_px"]),
            "laser_intensity_factor": float(p["laser_intensity_factor"]),
            "energy_calibration": [float(c) for c in p["energy_calibration"]],
            "spot": p["spot"],
            **({"kinetics": {**p["kinetics"], "observable": "Ka1 shift of laser-on frames (px)",
                             "amplitude": float(p["laser_shift_px"]),
                             "model": "laser_shift_px * (1 - exp(-(t - t0_ps) / tau_ps)) for t > t0_ps, else 0"}}
               if p["kinetics"] else {}),
        }

    def frame_truth(self) -> dict[str, np.ndarray]:
        """Expected line photons of every frame (before Poisson sampling)."""
        return {"expected_line_photons": np.concatenate(self.line_frames) if self.line_frames else np.zeros(0)}
