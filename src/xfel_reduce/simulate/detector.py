"""AGIPD response model: photons → raw (analog, digital) ADU with gain switching.

Each module has, per pixel and memory cell, for each of the three gain stages
(high, medium, low): an analog offset, a Gaussian noise, a digital (gain-bit) level
and an ADU-per-photon gain.  A pixel switches to a lower gain stage when the charge
it collects would exceed the range of the current stage.  Dead, hot and noisy pixels
and pixels whose gain levels cannot be told apart are drawn with known fractions and
are part of the truth.  All constants are drawn from a generator seeded by
``(seed, module)``, so any module can be rebuilt on its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np

from .counter_rng import key_from, normal_pair

N_GAINS = 3
MODULE_SHAPE = (512, 128)
ADC_MAX = 16383  # 14-bit ADC

#: Default detector truth (ADU unless stated); every value is a config parameter.
DEFAULT_DETECTOR: dict[str, Any] = {
    "offset_mean": [5000.0, 5600.0, 5300.0],
    "offset_pixel_sigma": 150.0,
    "offset_cell_sigma": 30.0,
    "noise_mean": [10.0, 6.0, 4.0],
    "noise_pixel_sigma_rel": 0.08,
    "digital_mean": [4600.0, 6400.0, 8200.0],
    "digital_pixel_sigma": 120.0,
    "digital_noise": 25.0,
    "adu_per_photon_hg": 60.0,
    "gain_ratio_hg_mg": 28.0,
    "gain_ratio_mg_lg": 6.5,
    "relative_gain_sigma": 0.05,
    "switch_photons_hg": 80.0,
    "switch_photons_mg": 2500.0,
    "dead_fraction": 0.001,
    "hot_fraction": 0.001,
    "noisy_fraction": 0.0005,  # per (pixel, cell): ~0.8 % of pixels over 16 cells
    "gain_fault_fraction": 0.0005,
    "hot_offset": 3000.0,
    "noisy_factor": 8.0,
}


@dataclass
class ModuleTruth:
    """True constants of one module, arrays ``(3, n_cells, 512, 128)`` unless stated."""

    module: int
    offset: np.ndarray
    noise: np.ndarray
    digital: np.ndarray
    adu_per_photon: np.ndarray
    dead: np.ndarray  # (512, 128) bool: no response, no noise
    hot: np.ndarray  # (512, 128) bool: offset far above the others
    noisy: np.ndarray  # (n_cells, 512, 128) bool: noise far above the others
    gain_fault: np.ndarray  # (512, 128) bool: medium-gain digital level = high-gain level
    params: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return self.offset.shape[1]

    def bad(self) -> np.ndarray:
        """Truly bad (pixel, cell) combinations, ``(n_cells, 512, 128)`` bool."""
        per_pixel = self.dead | self.hot | self.gain_fault
        return per_pixel[None, :, :] | self.noisy


def make_module_truth(module: int, n_cells: int, seed: int, params: dict | None = None) -> ModuleTruth:
    """Draw the constants of one module."""
    p = {**DEFAULT_DETECTOR, **(params or {})}
    rng = np.random.default_rng([int(seed), 7919, int(module)])
    shape = (n_cells,) + MODULE_SHAPE
    f32 = np.float32

    offset = np.empty((N_GAINS,) + shape, f32)
    noise = np.empty_like(offset)
    digital = np.empty_like(offset)
    gain = np.empty_like(offset)
    g_hg = p["adu_per_photon_hg"]
    nominal_gain = [g_hg, g_hg / p["gain_ratio_hg_mg"], g_hg / p["gain_ratio_hg_mg"] / p["gain_ratio_mg_lg"]]

    def normal(out_or_shape, loc: float, scale: float) -> np.ndarray:
        # float32 draws into place: every simulation job rebuilds all 16 modules'
        # constants, and float64 temporaries made that the slowest part of a dark run.
        out = (rng.standard_normal(out_or_shape, dtype=f32) if isinstance(out_or_shape, tuple)
               else rng.standard_normal(dtype=f32, out=out_or_shape))
        out *= f32(scale)
        out += f32(loc)
        return out

    for g in range(N_GAINS):
        normal(offset[g], 0.0, p["offset_cell_sigma"])
        offset[g] += normal(MODULE_SHAPE, p["offset_mean"][g], p["offset_pixel_sigma"])
        noise[g] = normal(MODULE_SHAPE, p["noise_mean"][g], p["noise_mean"][g] * p["noise_pixel_sigma_rel"])
        normal(digital[g], 0.0, 10.0)
        digital[g] += normal(MODULE_SHAPE, p["digital_mean"][g], p["digital_pixel_sigma"])
        normal(gain[g], 1.0, 0.005)
        gain[g] *= normal(MODULE_SHAPE, nominal_gain[g], nominal_gain[g] * p["relative_gain_sigma"])

    def pick(fraction: float, s: tuple = MODULE_SHAPE) -> np.ndarray:
        return rng.random(s) < fraction

    dead = pick(p["dead_fraction"])
    hot = pick(p["hot_fraction"]) & ~dead
    gain_fault = pick(p["gain_fault_fraction"]) & ~dead & ~hot
    noisy = pick(p["noisy_fraction"], shape) & ~(dead | hot | gain_fault)[None]

    offset[:, :, hot] += p["hot_offset"]
    noise[:, :, dead] = 0.0
    gain[:, :, dead] = 0.0
    noise[:, noisy] *= p["noisy_factor"]
    digital[1][:, gain_fault] = digital[0][:, gain_fault]
    return ModuleTruth(module, offset, noise, digital, gain, dead, hot, noisy, gain_fault, params=p)


def switching_stage(photons: np.ndarray, first: float, second: float) -> np.ndarray:
    """Stage (0, 1, 2) an adaptive-gain pixel switches to for a charge in photons,
    given the charges at which it leaves the first and the second stage."""
    stage = np.zeros(photons.shape, np.uint8)
    stage[photons >= first] = 1
    stage[photons >= second] = 2
    return stage


def gain_stage_for(photons: np.ndarray, params: dict) -> np.ndarray:
    """The AGIPD stage for a charge (in photons)."""
    return switching_stage(photons, params["switch_photons_hg"], params["switch_photons_mg"])


def raw_frames(
    truth: ModuleTruth,
    photons: np.ndarray,
    cells: np.ndarray,
    rng: np.random.Generator,
    forced_gain: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate raw AGIPD frames of one module.

    Parameters
    ----------
    photons
        Photons per pixel, ``(n_frames, 512, 128)``.
    cells
        Memory cell of each frame.
    forced_gain
        For dark runs taken in fixed-gain mode: the stage (0, 1, 2); ``None`` for
        adaptive gain.

    Returns
    -------
    raw
        ``(n_frames, 2, 512, 128)`` uint16: analog and digital (gain) samples.
    stage
        ``(n_frames, 512, 128)`` uint8: the true gain stage.
    """
    n = photons.shape[0]
    cells = np.ascontiguousarray(cells, dtype=np.int64)
    p = truth.params
    # One draw from the caller's generator keys a counter-based generator inside the
    # kernel: noise is then reproducible whatever the number of threads, and costs
    # no temporary arrays.
    key = key_from(rng)
    raw = np.empty((n, 2) + MODULE_SHAPE, np.uint16)
    stage = np.empty((n,) + MODULE_SHAPE, np.uint8)
    _raw_kernel(np.ascontiguousarray(photons, dtype=np.float32), cells,
                -1 if forced_gain is None else int(forced_gain),
                np.float32(p["switch_photons_hg"]), np.float32(p["switch_photons_mg"]),
                truth.offset, truth.adu_per_photon, truth.noise, truth.digital,
                np.float32(p["digital_noise"]), key, raw, stage)
    return raw, stage


@numba.njit(parallel=True, cache=True, nogil=True)
def _raw_kernel(photons, cells, forced, sw_hg, sw_mg, offset, gain, noise, digital, d_noise,
                key, raw, stage):  # pragma: no cover - compiled
    n, ny, nx = photons.shape
    for k in numba.prange(n * ny):
        i = k // ny
        y = k % ny
        c = cells[i]
        for x in range(nx):
            ph = photons[i, y, x]
            if forced >= 0:
                g = forced
            elif ph >= sw_mg:
                g = 2
            elif ph >= sw_hg:
                g = 1
            else:
                g = 0
            za, zd = normal_pair(key, np.uint64((i * ny + y) * nx + x))
            a = offset[g, c, y, x] + ph * gain[g, c, y, x] + noise[g, c, y, x] * za
            d = digital[g, c, y, x] + d_noise * zd
            a = min(max(np.rint(a), 0.0), 16383.0)
            d = min(max(np.rint(d), 0.0), 16383.0)
            raw[i, 0, y, x] = np.uint16(a)
            raw[i, 1, y, x] = np.uint16(d)
            stage[i, y, x] = g
