"""Dark characterisation: offset, noise, gain thresholds and bad pixels.

Detector-independent: statistics are accumulated per memory cell and pixel for each
gain stage (one dark run per stage, as taken at EuXFEL in fixed-gain mode), then
turned into constants.  Detectors whose gain stage is encoded in a separate digital
sample (AGIPD) also get switching thresholds; detectors that record the stage per
sample (JUNGFRAU's ``data.gain``) pass no digital statistics.  Bad-pixel reasons are
the facility's :class:`~xfel_reduce.calibrate.badpixels.BadPixels` bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..aggregate import Moments
from ..io.runs import InputDataError
from .badpixels import BadPixels


def dark_run_files(dark_runs: Mapping[int, str | Path], pattern: str,
                   check_gain_mode: Callable[[Path, int], None],
                   missing: str) -> Iterator[tuple[int, Path, list[Path]]]:
    """The sequence files of each dark run, in gain-stage order.

    Parameters
    ----------
    dark_runs : mapping
        ``{gain stage: run directory}``.
    pattern : str
        Glob of the detector's files in a run directory (one module).
    check_gain_mode : callable
        ``(run directory, stage)``; raises if the run was not taken in that stage.
    missing : str
        Error message when a run has no files; ``{run}`` is replaced by its directory.

    Yields
    ------
    (stage, run directory, sorted files)
    """
    for stage in sorted(dark_runs):
        run_path = Path(dark_runs[stage])
        check_gain_mode(run_path, stage)
        files = sorted(run_path.glob(pattern))
        if not files:
            raise InputDataError(missing.format(run=run_path))
        yield stage, run_path, files


class CellMoments:
    """Per-memory-cell :class:`~xfel_reduce.aggregate.Moments` of frames.

    Parameters
    ----------
    n_cells
        Number of memory cells.
    pixel_shape
        Shape of one frame (e.g. ``(512, 128)``).
    """

    def __init__(self, n_cells: int, pixel_shape: tuple[int, ...]):
        self.cells = [Moments(pixel_shape) for _ in range(n_cells)]

    def add(self, frames: np.ndarray, cell_ids: np.ndarray) -> "CellMoments":
        cell_ids = np.asarray(cell_ids)
        if cell_ids.size and int(cell_ids.max()) >= len(self.cells):
            raise ValueError(
                f"memory cell {int(cell_ids.max())} in the data but only {len(self.cells)} "
                "cells configured (calibration.memory_cells)"
            )
        for c in np.unique(cell_ids):
            self.cells[int(c)].add(frames[cell_ids == c].astype(np.float32))
        return self

    def merge(self, other: "CellMoments") -> "CellMoments":
        for a, b in zip(self.cells, other.cells):
            a.merge(b)
        return self

    @property
    def count(self) -> np.ndarray:
        return np.stack([m.count for m in self.cells])

    @property
    def mean(self) -> np.ndarray:
        return np.stack([m.mean for m in self.cells])

    @property
    def std(self) -> np.ndarray:
        return np.stack([np.sqrt(np.where(m.count > 1, m.m2 / np.maximum(m.count - 1, 1), np.nan))
                         for m in self.cells])


@dataclass
class DarkConstants:
    """Constants of one module, arrays ``(n_gains, n_cells, *pixel_shape)``."""

    offset: np.ndarray
    noise: np.ndarray
    badpixels: np.ndarray  # uint32
    count: np.ndarray  # int64 samples per (gain, cell, pixel)
    thresholds: np.ndarray | None = None  # (n_gains - 1, n_cells, ...): digital switching levels
    digital_mean: np.ndarray | None = None
    digital_std: np.ndarray | None = None
    #: Recorded gain mode of each stage's dark, e.g. ``{"G0": "dynamic", "G1": "forceswitchg1"}``
    #: (JUNGFRAU; None where the detector records no such mode).
    gain_modes: dict[str, str] | None = None


@dataclass
class BadPixelRules:
    """Outlier rules for bad-pixel flags.

    Offsets and noise are compared with the median of their memory cell and gain
    stage over the module; a pixel is flagged when it lies more than ``k`` robust
    standard deviations (1.4826·MAD) away.  Gain stages whose digital levels are
    closer than ``gain_separation_sigma`` combined digital noise cannot be told
    apart and are flagged GAIN_THRESHOLDING_ERROR in every stage.
    """

    offset_sigma: float = 6.0
    noise_sigma: float = 6.0
    gain_separation_sigma: float = 5.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "BadPixelRules":
        d = d or {}
        return cls(**{k: float(v) for k, v in d.items() if k in cls.__dataclass_fields__})


def _robust_outliers(values: np.ndarray, k: float) -> np.ndarray:
    """Outliers per leading index (gain, cell) of ``values`` (NaN counts as outlier)."""
    flat = values.reshape(values.shape[:2] + (-1,))
    med = np.nanmedian(flat, axis=-1, keepdims=True)
    mad = np.nanmedian(np.abs(flat - med), axis=-1, keepdims=True) * 1.4826
    mad = np.where(mad > 0, mad, np.finfo(np.float32).tiny)
    out = ~(np.abs(flat - med) <= k * mad)
    return out.reshape(values.shape)


def characterise(
    analog: Sequence[CellMoments],
    digital: Sequence[CellMoments] | None = None,
    rules: BadPixelRules | None = None,
) -> DarkConstants:
    """Constants from per-gain dark statistics.

    Parameters
    ----------
    analog
        One :class:`CellMoments` per gain stage (high, medium, low).
    digital
        Same for the digital (gain) sample, for detectors that have one.
    rules
        Bad-pixel rules.
    """
    rules = rules or BadPixelRules()
    offset = np.stack([a.mean for a in analog]).astype(np.float32)
    noise = np.stack([a.std for a in analog]).astype(np.float32)
    count = np.stack([a.count for a in analog])
    bad = np.zeros(offset.shape, np.uint32)
    no_data = count == 0
    bad[no_data] |= np.uint32(BadPixels.NO_DARK_DATA)
    bad[(count == 1) | ~np.isfinite(noise)] |= np.uint32(BadPixels.OFFSET_NOISE_EVAL_ERROR)
    bad[noise == 0] |= np.uint32(BadPixels.DATA_STD_IS_ZERO)
    bad[_robust_outliers(offset, rules.offset_sigma) & ~no_data] |= np.uint32(BadPixels.OFFSET_OUT_OF_THRESHOLD)
    bad[_robust_outliers(noise, rules.noise_sigma) & ~no_data] |= np.uint32(BadPixels.NOISE_OUT_OF_THRESHOLD)

    thresholds = d_mean = d_std = None
    if digital is not None:
        d_mean = np.stack([d.mean for d in digital]).astype(np.float32)
        d_std = np.stack([d.std for d in digital]).astype(np.float32)
        thresholds = 0.5 * (d_mean[:-1] + d_mean[1:])
        sep = np.diff(d_mean, axis=0)
        width = np.sqrt(d_std[:-1] ** 2 + d_std[1:] ** 2)
        unresolved = ~(sep > rules.gain_separation_sigma * width)  # NaN → unresolved
        bad_gain = unresolved.any(axis=0)
        bad[:, bad_gain] |= np.uint32(BadPixels.GAIN_THRESHOLDING_ERROR)
    return DarkConstants(offset, noise, bad, count, thresholds, d_mean, d_std)
