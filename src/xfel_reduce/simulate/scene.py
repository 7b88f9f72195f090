"""What a simulated sample puts on the detector.

A *scene* turns the beam of one train (which pulses carry X-rays, which are pumped,
how much energy each has) into expected or sampled photon counts per pixel.  The
detector model (:mod:`xfel_reduce.simulate.detector`) then turns photons into raw ADU
with gain switching, offsets and noise.  Scenes never know about ADU; the detector
never knows about samples.

Scenes are called train by train, in train order, so a scene may carry state from one
train to the next (XPCS needs that).  Each scene owns a ``numpy.random.Generator``
seeded from the run seed so a run is reproducible bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SceneContext:
    """Everything a scene may need to know about the experiment.

    Attributes
    ----------
    positions
        Pixel-centre positions in metres, ``(n_modules, 512, 128, 3)``, z includes
        the sample–detector distance (see :func:`xfel_reduce.geometry.pixel_positions`).
    modules
        Module numbers (0–15) in the order of ``positions``.
    photon_energy_kev
        Photon energy.
    pulses_per_train
        Number of detector frames (memory cells used) per train.
    pulse_spacing_s, train_spacing_s
        Time between frames in a train, and between trains.
    seed
        Seed for this run's random generator.
    params
        The technique's section of the simulate config (truth values).
    """

    positions: np.ndarray
    modules: list[int]
    photon_energy_kev: float
    pulses_per_train: int
    pulse_spacing_s: float
    train_spacing_s: float
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.positions.shape[:3])  # type: ignore[return-value]


@dataclass
class TrainBeam:
    """The beam of one train as seen by the detector frames.

    All arrays have one entry per frame (pulse) of the train.
    """

    train_index: int
    train_id: int
    xray: np.ndarray  # bool: an X-ray pulse hit the sample in this frame
    ppl: np.ndarray  # bool: the pump laser fired for this frame
    pulse_energy_uj: np.ndarray  # float: XGM pulse energy, 0 where no X-rays
    delay_ps: float = float("nan")  # pump-probe delay of the train (delay scans), NaN otherwise


class Scene:
    """Base class: a scene with no sample (dark or empty beam)."""

    name = "empty"

    def __init__(self, ctx: SceneContext):
        self.ctx = ctx
        self.rng = np.random.default_rng(ctx.seed)

    def photons(self, beam: TrainBeam) -> np.ndarray:
        """Photon counts per frame and pixel, float32 ``(n_frames, n_modules, 512, 128)``.

        Frames without X-rays must be zero.  Counts may be integers (Poisson-sampled)
        or, for scenes that want it, fractional expected values.
        """
        return np.zeros((len(beam.xray),) + self.ctx.frame_shape, dtype=np.float32)

    def truth(self) -> dict[str, Any]:
        """Ground truth of this scene, written into ``truth.json``."""
        return {"scene": self.name}
