"""A pump-probe delay scan as the facility records it: an optical delay line stepped
through set points, recorded per train as a motor device.

The run's trains go step by step through ``delays_ps``; between two steps the stage
moves for ``transition_trains`` trains (its recorded position goes linearly from one set
point to the next, and the pump arrives at whatever delay that position gives).  The
stage is a motor device with ``actualPosition`` and ``targetPosition`` in mm (the
attributes say so, as Karabo writes them), in the run's DA01 aggregator.

Stage position and delay follow EXtra's ``OpticalLaserDelay``: the light passes the
delay line twice, so ``delay = (position − ref_stage_mm) · 2 mm / c``, in ps about
6.67 ps per mm; a positive delay means the X-rays arrive after the pump.

The scene sees each train's delay (:attr:`xfel_reduce.simulate.scene.TrainBeam.delay_ps`)
and applies its kinetics: the pump's effect rises as ``1 − exp(−(t − t0)/τ)`` after
time zero ``t0`` and is absent before it (:func:`rise`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: speed of light, mm per ps
C_MM_PER_PS = 299792458.0 * 1e3 * 1e-12


def rise(delay_ps: np.ndarray | float, t0_ps: float, tau_ps: float) -> np.ndarray:
    """Fraction of the pump's full effect at ``delay_ps``: 0 before ``t0_ps``, then
    ``1 − exp(−(t − t0)/τ)``."""
    t = np.asarray(delay_ps, np.float64) - t0_ps
    return np.where(t > 0, -np.expm1(-np.maximum(t, 0.0) / tau_ps), 0.0)


class PumpKinetics:
    """A scene's pump effect in a delay scan: the fraction of its full size at a delay
    (:func:`rise` with the scene's ``kinetics: {t0_ps, tau_ps}``; 1 without kinetics or
    outside a scan), and what the scene builds for that fraction, built once per delay.

    ``build(fraction)`` makes the scene's laser-on pattern for a fraction of the full
    effect; ``full`` is that pattern at fraction 1 (what runs without a scan use).
    """

    def __init__(self, kinetics: dict | None, build, full: np.ndarray):
        self.kinetics, self._build, self._full = kinetics, build, full
        self._at: dict[float, np.ndarray] = {}

    def fraction(self, delay_ps: float) -> float:
        if not self.kinetics or not np.isfinite(delay_ps):
            return 1.0
        return float(rise(delay_ps, float(self.kinetics["t0_ps"]), float(self.kinetics["tau_ps"])))

    def pattern(self, delay_ps: float) -> np.ndarray:
        """The laser-on pattern at ``delay_ps``."""
        if not self.kinetics or not np.isfinite(delay_ps):
            return self._full
        key = round(float(delay_ps), 6)
        if key not in self._at:
            self._at[key] = self._build(self.fraction(delay_ps))
        return self._at[key]


def stage_mm(delay_ps: np.ndarray | float, ref_stage_mm: float) -> np.ndarray:
    """Stage position of a delay (double pass: ``c · t / 2``)."""
    return ref_stage_mm + np.asarray(delay_ps, np.float64) * C_MM_PER_PS / 2.0


@dataclass
class DelayScan:
    """The ``delay_scan`` section of a simulated run.

    Parameters
    ----------
    delays_ps
        Set points, in scan order.
    trains_per_step
        Trains recorded at each set point.
    transition_trains
        Trains recorded while the stage moves to the next set point.
    stage
        Motor device (default: the instrument's delay stage).
    ref_stage_mm
        Stage position at zero delay.
    jitter_mm
        Encoder noise of the recorded position (rms).
    """

    delays_ps: list[float]
    trains_per_step: int = 10
    transition_trains: int = 2
    stage: str = ""
    ref_stage_mm: float = 25.0
    jitter_mm: float = 2e-5
    _delays: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.delays_ps = [float(d) for d in self.delays_ps]
        if len(self.delays_ps) < 2 or self.trains_per_step < 1 or self.transition_trains < 0:
            raise ValueError("simulate delay_scan: needs ≥ 2 delays_ps, trains_per_step ≥ 1, "
                             f"transition_trains ≥ 0 (got {self})")
        self._delays, self._step = self._per_train()

    @classmethod
    def from_dict(cls, d: dict, default_stage: str) -> "DelayScan":
        known = {"delays_ps", "trains_per_step", "transition_trains", "stage", "ref_stage_mm", "jitter_mm"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"simulate delay_scan: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        out = cls(**{**d, "stage": d.get("stage") or default_stage})
        if not out.stage:
            raise ValueError("simulate delay_scan: no delay stage known for this instrument; set delay_scan.stage")
        return out

    @property
    def n_trains(self) -> int:
        return self._delays.size

    def _per_train(self) -> tuple[np.ndarray, np.ndarray]:
        delays, steps = [], []
        for i, d in enumerate(self.delays_ps):
            delays.append(np.full(self.trains_per_step, d))
            steps.append(np.full(self.trains_per_step, i))
            if i + 1 < len(self.delays_ps) and self.transition_trains:
                frac = np.arange(1, self.transition_trains + 1) / (self.transition_trains + 1)
                delays.append(d + frac * (self.delays_ps[i + 1] - d))
                steps.append(np.full(self.transition_trains, -1))
        return np.concatenate(delays), np.concatenate(steps)

    def train_delays(self) -> np.ndarray:
        """The pump-probe delay of every train (ps), transitions included."""
        return self._delays.copy()

    def train_steps(self) -> np.ndarray:
        """Step index of every train, -1 while the stage moves."""
        return self._step.copy()

    def control_values(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The stage's per-train CONTROL values (mm)."""
        target_delay = np.asarray(self.delays_ps)[np.maximum(self._step, 0)]
        # while moving, the target is already the next set point
        moving = np.flatnonzero(self._step < 0)
        nxt = np.searchsorted(np.flatnonzero(self._step >= 0), moving)
        target_delay[moving] = np.asarray(self.delays_ps)[self._step[np.flatnonzero(self._step >= 0)[nxt]]]
        actual = stage_mm(self._delays, self.ref_stage_mm) + rng.normal(0.0, self.jitter_mm, self.n_trains)
        return {"actualPosition": actual, "targetPosition": stage_mm(target_delay, self.ref_stage_mm)}

    def truth(self) -> dict:
        return {"delays_ps": self.delays_ps, "trains_per_step": self.trains_per_step,
                "transition_trains": self.transition_trains, "stage": self.stage,
                "ref_stage_mm": self.ref_stage_mm, "transitional_trains": int((self._step < 0).sum()),
                "convention": "delay = (actualPosition - ref_stage_mm) * 2 / c; > 0: X-rays after the pump"}


#: Karabo's attributes of a position in mm (what extra-data's KeyData.units reads)
MM_ATTRS = {"unitSymbol": "m", "metricPrefixSymbol": "m", "unitName": "meter", "metricPrefixName": "milli"}
