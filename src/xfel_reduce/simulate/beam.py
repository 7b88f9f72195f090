"""The beam: bunch pattern (X-ray and pump-laser pulses) and XGM pulse energies."""
from __future__ import annotations

from dataclasses import dataclass

import euxfel_bunch_pattern as bp
import numpy as np

from .scene import TrainBeam

BUNCH_TABLE_SIZE = 2700  # entries per train, one per 4.5 MHz bucket (222 ns)
XGM_SLOTS = 1000  # pulses the XGM reports per train; unused slots hold 1.0
BUCKET_S = 1.0 / 4.5e6
PPL_BIT = int(bp.PPL_BITS.LP_SPB)
SASE1_DESTINATION = bp.DESTINATION_T4D
CHARGE_250PC = 8  # index into bp.CHARGE_VALUES (0.25 nC)


@dataclass
class BeamConfig:
    """Pulse structure and XGM statistics of a simulated run.

    Attributes
    ----------
    frames_per_train
        Detector frames (memory cells used) per train.
    first_pulse, pulse_stride
        Bunch-table index of the first frame and spacing in 4.5 MHz buckets.
    dark_frames_per_train
        Frames at the end of each train recorded without X-rays (detector darks).
    ppl_mode
        ``"pulse"``: every ``ppl_period``-th X-ray pulse is pumped; ``"train"``: every
        ``ppl_period``-th train is pumped; ``"none"``: no pump laser.
    xgm_mean_uj, xgm_rel_sigma, xgm_train_drift
        Mean pulse energy (µJ), SASE fluctuation (relative σ, gamma-distributed) and
        a slow relative drift amplitude over the run.
    """

    frames_per_train: int = 8
    first_pulse: int = 0
    pulse_stride: int = 1
    dark_frames_per_train: int = 1
    ppl_mode: str = "pulse"
    ppl_period: int = 2
    ppl_offset: int = 0
    xgm_mean_uj: float = 1500.0
    xgm_rel_sigma: float = 0.2
    xgm_train_drift: float = 0.1
    xray: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "BeamConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def pulse_spacing_s(self) -> float:
        return self.pulse_stride * BUCKET_S

    def pulse_ids(self) -> np.ndarray:
        return self.first_pulse + self.pulse_stride * np.arange(self.frames_per_train, dtype=np.uint64)


def make_train_beam(
    cfg: BeamConfig, train_index: int, train_id: int, n_trains: int, rng: np.random.Generator
) -> tuple[TrainBeam, np.ndarray, np.ndarray]:
    """The beam of one train.

    Returns
    -------
    beam
        Per-frame flags and energies (what the scene and the truth see).
    bunch_table
        ``(2700,)`` uint32 bunch pattern table, as written by the timing system.
    xgm_td
        ``(1000,)`` float32 XGM ``intensityTD`` (µJ per SASE1 pulse, then 1.0 padding).
    """
    n = cfg.frames_per_train
    xray = np.zeros(n, bool)
    if cfg.xray:
        xray[: max(0, n - cfg.dark_frames_per_train)] = True
    ppl = np.zeros(n, bool)
    if cfg.ppl_mode == "pulse":
        k = np.cumsum(xray) - 1
        ppl = xray & ((k - cfg.ppl_offset) % cfg.ppl_period == 0)
    elif cfg.ppl_mode == "train":
        ppl[:] = xray & ((train_index - cfg.ppl_offset) % cfg.ppl_period == 0)
    elif cfg.ppl_mode != "none":
        raise ValueError(f"unknown ppl_mode {cfg.ppl_mode!r} (pulse, train or none)")

    drift = 1.0 + cfg.xgm_train_drift * np.sin(2 * np.pi * train_index / max(n_trains, 2))
    shape = 1.0 / cfg.xgm_rel_sigma**2
    energy = np.zeros(n, np.float32)
    energy[xray] = rng.gamma(shape, cfg.xgm_mean_uj * drift / shape, int(xray.sum()))

    table = np.zeros(BUNCH_TABLE_SIZE, np.uint32)
    pids = cfg.pulse_ids().astype(np.intp)
    table[pids[xray]] |= np.uint32(SASE1_DESTINATION | CHARGE_250PC)
    table[pids[ppl]] |= np.uint32(PPL_BIT)
    xgm = np.ones(XGM_SLOTS, np.float32)
    xgm[: int(xray.sum())] = energy[xray]
    beam = TrainBeam(train_index, int(train_id), xray, ppl, energy)
    return beam, table, xgm
