"""The beam as the facility records it: bunch pattern, XGM pulse energies, frame exposure.

What is written follows the facility (``shared/FACILITY.md``):

* the timeserver's ``bunchPatternTable`` (2700 buckets at 4.5 MHz) carries the pulses of
  the run's SASE and those of the other SASE of the same electron line: SASE1 and
  SASE3 share destination T4D (SASE3 pulses have PHOTON_LINE_DEFLECTION), SASE2 is T5D.
  The other SASE's pulses come first in the train, so that an XGM's combined
  ``intensityTD`` lists them before the run's own pulses;
* the XGM's ``intensityTD`` holds every pulse through its tunnel in bucket order (SASE1
  and SASE3 together on T4D), ``intensitySa1TD``/``intensitySa3TD`` split them, and
  unused slots hold 1.0; ``intensitySigmaTD`` is the pulse energy's uncertainty;
* detector frame *f* integrates the buckets ``first + (f − reference_frame)·stride …
  + exposure`` where *first* is the run's first X-ray pulse: the lit-frame finder's
  "by first pulse" alignment with reference frame 1, so frame 0 of an AGIPD train is
  dark. JUNGFRAU bursts use reference frame 0 (frame *k* follows trigger *k*);
* the pump-probe laser's bits sit in the table from bucket 0 on, in the laser's own
  pattern: EXtra's ``PumpProbePulses`` anchors them on the first X-ray pulse.
"""
from __future__ import annotations

from dataclasses import dataclass

import euxfel_bunch_pattern as bp
import numpy as np

from ..io.sources import REPETITION_RATE_MHZ
from .scene import TrainBeam

BUNCH_TABLE_SIZE = 2700  # entries per train, one per 4.5 MHz bucket (222 ns)
XGM_SLOTS = 1000  # pulses the XGM reports per train; unused slots hold 1.0
XGM_UNUSED = 1.0
BUCKET_S = 1.0 / 4.5e6
CHARGE_250PC = 8  # index into bp.CHARGE_VALUES (0.25 nC)
#: AGIPD clock ticks (10 ns) per 4.5 MHz bucket (extra-redu's CLOCKS_PER_PULSE).
AGIPD_CLOCKS_PER_BUCKET = 22


def sase_code(sase: int) -> tuple[int, int]:
    """(bunch-table bits of a pulse to ``sase``, mask to test them with)."""
    if sase == 1:
        return bp.DESTINATION_T4D, bp.DESTINATION_MASK | bp.PHOTON_LINE_DEFLECTION
    if sase == 3:
        return bp.DESTINATION_T4D | bp.PHOTON_LINE_DEFLECTION, bp.DESTINATION_MASK | bp.PHOTON_LINE_DEFLECTION
    if sase == 2:
        return bp.DESTINATION_T5D, bp.DESTINATION_MASK
    raise ValueError(f"SASE must be 1, 2 or 3, not {sase!r}")


@dataclass
class BeamConfig:
    """Pulse structure and XGM statistics of a simulated run.

    Attributes
    ----------
    frames_per_train
        Detector frames (memory cells used) per train.
    first_pulse, pulse_stride
        AGIPD ``bunchStructure.firstPulse`` (the detector's own count) and the frame
        spacing in 4.5 MHz buckets (1, 2, 4, 8: 4.5, 2.2, 1.1, 0.5 MHz).
    reference_frame
        Frame that sees the first X-ray pulse (AGIPD: 1, frame 0 is dark).
    dark_frames_per_train
        Frames without X-rays: the frames before ``reference_frame`` count, the rest
        are at the end of the train.
    sase, ppl_bit
        SASE of the instrument (1–3) and the bunch-table bit of its pump-probe laser.
    first_bucket
        Bucket of the first X-ray pulse of the train.
    other_sase_pulses
        Pulses to the other SASE of the same line (SASE3 beside SASE1 and vice versa),
        in front of the run's own pulses; 0 for SASE2 runs.
    integration_clocks
        AGIPD ``integrationTime`` (10 ns clock ticks); a frame integrates
        ``ceil(integration / 22)`` buckets, at most ``pulse_stride``.
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
    reference_frame: int = 1
    dark_frames_per_train: int = 1
    sase: int = 1
    ppl_bit: int = int(bp.PPL_BITS.LP_SPB)
    first_bucket: int = 200
    other_sase_pulses: int = 10
    integration_clocks: int = 12
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

    def __post_init__(self) -> None:
        if self.pulse_stride not in REPETITION_RATE_MHZ:
            raise ValueError(f"pulse_stride {self.pulse_stride}: AGIPD runs at strides "
                             f"{sorted(REPETITION_RATE_MHZ)} (4.5, 2.2, 1.1, 0.5 MHz)")
        if self.reference_frame > self.dark_frames_per_train and self.xray:
            raise ValueError(f"reference_frame {self.reference_frame} needs at least as many "
                             f"dark frames (dark_frames_per_train {self.dark_frames_per_train})")

    @property
    def pulse_spacing_s(self) -> float:
        return self.pulse_stride * BUCKET_S

    @property
    def repetition_rate_mhz(self) -> float:
        return REPETITION_RATE_MHZ[self.pulse_stride]

    @property
    def n_xray_pulses(self) -> int:
        return max(0, self.frames_per_train - self.dark_frames_per_train) if self.xray else 0

    def pulse_ids(self) -> np.ndarray:
        """The detector's ``image.pulseId`` of each frame (its own numbering)."""
        return self.first_pulse + self.pulse_stride * np.arange(self.frames_per_train, dtype=np.uint64)

    def xray_buckets(self) -> np.ndarray:
        """Buckets of the run's X-ray pulses (one per lit frame)."""
        return self.first_bucket + self.pulse_stride * np.arange(self.n_xray_pulses)

    def other_buckets(self) -> np.ndarray:
        """Buckets of the other SASE's pulses on the same line (before ours)."""
        n = self.other_sase_pulses if self.xray and self.sase != 2 else 0
        start = self.first_bucket - 4 * n - 40
        if start < 0:
            raise ValueError("first_bucket too small for the other SASE's pulses")
        return start + 4 * np.arange(n)

    def lit_frames(self) -> np.ndarray:
        """Frame index of each X-ray pulse (the lit-frame finder's alignment)."""
        return self.reference_frame + np.arange(self.n_xray_pulses)


def make_train_beam(
    cfg: BeamConfig, train_index: int, train_id: int, n_trains: int, rng: np.random.Generator
) -> tuple[TrainBeam, np.ndarray, dict[str, np.ndarray]]:
    """The beam of one train.

    Returns
    -------
    beam
        Per-frame flags and energies (what the scene and the truth see).
    bunch_table
        ``(2700,)`` uint32 bunch pattern table, as written by the timing system.
    xgm
        The XGM's per-train arrays: ``intensityTD`` (all pulses of the tunnel, in
        bucket order), ``intensitySa1TD``, ``intensitySa3TD``, ``intensitySigmaTD``.
    """
    n = cfg.frames_per_train
    n_x = cfg.n_xray_pulses
    k = np.arange(n_x)
    if cfg.ppl_mode == "pulse":
        ppl_pulse = (k - cfg.ppl_offset) % cfg.ppl_period == 0
    elif cfg.ppl_mode == "train":
        ppl_pulse = np.full(n_x, (train_index - cfg.ppl_offset) % cfg.ppl_period == 0)
    elif cfg.ppl_mode == "none":
        ppl_pulse = np.zeros(n_x, bool)
    else:
        raise ValueError(f"unknown ppl_mode {cfg.ppl_mode!r} (pulse, train or none)")

    drift = 1.0 + cfg.xgm_train_drift * np.sin(2 * np.pi * train_index / max(n_trains, 2))
    shape = 1.0 / cfg.xgm_rel_sigma**2
    energy_x = rng.gamma(shape, cfg.xgm_mean_uj * drift / shape, n_x).astype(np.float32)
    other = cfg.other_buckets()
    energy_o = rng.gamma(shape, cfg.xgm_mean_uj / shape, other.size).astype(np.float32)

    table = np.zeros(BUNCH_TABLE_SIZE, np.uint32)
    buckets = cfg.xray_buckets()
    code, _ = sase_code(cfg.sase)
    table[buckets] |= np.uint32(code | CHARGE_250PC)
    # The pump-probe laser's bits are not at the FEL buckets: its pattern starts at
    # bucket 0 of the table, and analysis anchors it on the first X-ray pulse (EXtra's
    # PumpProbePulses, ``bunch_table_offset`` 0).
    table[buckets[ppl_pulse] - cfg.first_bucket] |= np.uint32(cfg.ppl_bit)
    if other.size:
        table[other] |= np.uint32(sase_code(4 - cfg.sase)[0] | CHARGE_250PC)

    # The XGM of the tunnel sees both SASEs of its line in bucket order.
    order = np.argsort(np.concatenate([other, buckets]), kind="stable")
    td_all = np.concatenate([energy_o, energy_x])[order]
    xgm = {key: np.full(XGM_SLOTS, XGM_UNUSED, np.float32) for key in
           ("intensityTD", "intensitySa1TD", "intensitySa3TD", "intensitySigmaTD")}
    xgm["intensityTD"][: td_all.size] = td_all
    xgm["intensitySigmaTD"][: td_all.size] = 0.05 * td_all
    if cfg.sase in (1, 3):
        own, oth = ("intensitySa1TD", "intensitySa3TD") if cfg.sase == 1 else ("intensitySa3TD", "intensitySa1TD")
        xgm[own][:n_x] = energy_x
        xgm[oth][: energy_o.size] = energy_o

    xray = np.zeros(n, bool)
    ppl = np.zeros(n, bool)
    energy = np.zeros(n, np.float32)
    frames = cfg.lit_frames()
    xray[frames] = True
    ppl[frames] = ppl_pulse
    energy[frames] = energy_x
    beam = TrainBeam(train_index, int(train_id), xray, ppl, energy)
    return beam, table, xgm
