"""Detector geometry: extra-geom → pixel positions, q-maps and pyFAI integrators.

Every technique that needs to know where a pixel is in the lab goes through this
module, so that the simulator (which projects physics onto the detector) and the
reduction (which integrates it back) use exactly the same geometry.

Conventions
-----------
* Pixel positions come from extra-geom in metres, beam axis along z, beam centre at
  (x, y) = (0, 0).  The sample–detector distance is added to z.
* q is the modulus of the scattering vector in nm⁻¹: q = 4π sin(θ) / λ.
* Arrays are in the stacked module layout ``(n_modules, 512, 128)`` used by EuXFEL
  CORR data; pyFAI works on the same pixels reshaped to ``(n_modules·512, 128)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .detectors.agipd import MODULE_SHAPE as AGIPD_MODULE_SHAPE
from .detectors.agipd import configured as configured_detector
from .detectors.agipd import detector as agipd_detector

#: h·c in keV·nm, so λ[nm] = HC_KEV_NM / E[keV].
HC_KEV_NM = 1.2398419843320026

MODULE_SHAPE = AGIPD_MODULE_SHAPE


def wavelength_nm(photon_energy_kev: float) -> float:
    """Photon wavelength in nm for an energy in keV."""
    return HC_KEV_NM / float(photon_energy_kev)


def agipd_geometry(
    quad_positions: Sequence[Sequence[float]] | None = None,
    geom_file: str | Path | None = None,
    detector: str = "AGIPD1M",
    origin_px: Sequence[float] | None = None,
):
    """Build an AGIPD 1M or 500K geometry.

    Parameters
    ----------
    quad_positions
        AGIPD 1M: four (x, y) quadrant corner positions in mm (extra-geom convention).
    geom_file
        A CrystFEL ``.geom`` file; takes precedence over the positions.
    detector
        ``AGIPD1M`` or ``AGIPD500K`` (:mod:`xfel_reduce.detectors.agipd`).
    origin_px
        AGIPD 500K: extra-geom's ``from_origin`` argument in pixels (default: the beam
        in the middle of the detector).

    Returns
    -------
    extra_geom.AGIPD_1MGeometry or extra_geom.AGIPD_500K2GGeometry
    """
    return agipd_detector(detector).geometry(quad_positions, origin_px, geom_file)


def detector_of_config(config: dict):
    """The AGIPD kind of the config (``geometry.detector``, default AGIPD 1M)."""
    return configured_detector(config.get("geometry"))


def geometry_from_config(geometry_cfg: dict):
    """Geometry from the ``geometry`` section of the workflow config."""
    return configured_detector(geometry_cfg).geometry(
        quad_positions=geometry_cfg.get("quad_positions"),
        origin_px=geometry_cfg.get("origin_px"),
        geom_file=geometry_cfg.get("geom_file") or None,
    )


def pixel_positions(geom, distance_m: float, modules: Sequence[int] | None = None) -> np.ndarray:
    """Pixel-centre positions in metres, shape ``(n_modules, 512, 128, 3)``.

    ``z`` includes the sample–detector distance.  ``modules`` selects a subset of
    module numbers (0–15 on an AGIPD 1M, 0–7 on a 500K) in the given order.
    """
    pos = np.asarray(geom.get_pixel_positions(), dtype=np.float64).copy()
    pos[..., 2] += float(distance_m)
    if modules is not None:
        bad = [int(m) for m in modules if not 0 <= int(m) < pos.shape[0]]
        if bad:
            raise ValueError(f"modules {bad} are not in the {type(geom).__name__} ({pos.shape[0]} modules): "
                             "check `modules` and geometry.detector in the config")
        pos = pos[list(modules)]
    return pos


def two_theta(positions: np.ndarray) -> np.ndarray:
    """Scattering angle 2θ (rad) of each pixel from its lab position."""
    r = np.hypot(positions[..., 0], positions[..., 1])
    return np.arctan2(r, positions[..., 2])


def azimuth(positions: np.ndarray) -> np.ndarray:
    """Azimuthal angle χ (rad) of each pixel around the beam."""
    return np.arctan2(positions[..., 1], positions[..., 0])


def q_map(positions: np.ndarray, photon_energy_kev: float) -> np.ndarray:
    """Momentum transfer q (nm⁻¹) of each pixel."""
    return 4.0 * np.pi * np.sin(two_theta(positions) / 2.0) / wavelength_nm(photon_energy_kev)


def solid_angle(positions: np.ndarray, pixel_size_m: float = 200e-6) -> np.ndarray:
    """Solid angle (sr) seen by each pixel, for a flat detector normal to the beam."""
    r2 = np.sum(positions**2, axis=-1)
    cos_a = positions[..., 2] / np.sqrt(r2)
    return pixel_size_m**2 * cos_a / r2


def polarisation_factor(positions: np.ndarray, horizontal_fraction: float = 0.99) -> np.ndarray:
    """Polarisation factor P for a beam polarised mostly horizontally (x).

    Uses the same convention as pyFAI: ``P = ½(1 + cos²2θ − f·cos 2χ·sin²2θ)`` with
    ``f = 2·horizontal_fraction − 1``.
    """
    tth = two_theta(positions)
    chi = azimuth(positions)
    f = 2.0 * horizontal_fraction - 1.0
    return 0.5 * (1.0 + np.cos(tth) ** 2 - f * np.cos(2.0 * chi) * np.sin(tth) ** 2)


def pyfai_integrator(geom, distance_m: float, photon_energy_kev: float, modules: Sequence[int] | None = None):
    """A pyFAI ``AzimuthalIntegrator`` for the geometry, beam centre at the origin.

    The detector is extra-geom's ``to_pyfai_detector()`` (shape ``(16·512, 128)``);
    when ``modules`` is given, a detector holding only those modules is built so that
    the integrator's pixel order matches data stacked in that order.
    """
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    detector = pyfai_detector(geom, modules)
    return AzimuthalIntegrator(
        dist=float(distance_m),
        poni1=0.0,
        poni2=0.0,
        detector=detector,
        wavelength=wavelength_nm(photon_energy_kev) * 1e-9,
    )


def pyfai_detector(geom, modules: Sequence[int] | None = None):
    """A pyFAI detector for all modules of ``geom`` or only the listed ones.

    extra-geom's ``to_pyfai_detector()`` always describes the full detector; data
    stacked from a subset of modules (tests, partial runs, a module that failed
    calibration) needs a detector whose pixel order matches that stack.  The pixel
    corners are extra-geom's own distortion array, so a subset detector puts every
    pixel exactly where the full one does.

    Parameters
    ----------
    geom
        An extra-geom detector geometry (e.g. ``AGIPD_1MGeometry``).
    modules
        Module numbers in the order the data are stacked; ``None`` for all.

    Returns
    -------
    pyFAI.detectors.Detector
        Shape ``(n_modules·512, 128)`` for AGIPD.
    """
    det = geom.to_pyfai_detector()
    if modules is None or list(modules) == list(range(geom.n_modules)):
        return det
    from pyFAI.detectors import Detector

    corners = geom.to_distortion_array(allow_negative_xy=True)
    rows_per_module = corners.shape[0] // geom.n_modules
    bad = [m for m in modules if not 0 <= int(m) < geom.n_modules]
    if bad:
        raise ValueError(f"module numbers {bad} outside 0..{geom.n_modules - 1}")
    idx = np.concatenate([np.arange(int(m) * rows_per_module, (int(m) + 1) * rows_per_module) for m in modules])
    sub = np.ascontiguousarray(corners[idx])
    out = Detector(pixel1=det.pixel1, pixel2=det.pixel2, max_shape=sub.shape[:2])
    out.set_pixel_corners(sub)
    return out
