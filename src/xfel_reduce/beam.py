"""Pulses per detector frame, pump-laser flag and pulse energy, as the facility computes them.

GitHub issue 12, item 2. An AGIPD memory cell is not a bunch-table slot: which X-ray
pulses a frame integrated follows from the detector's timing (control device
``…/MDL/FPGA_COMP``: ``bunchStructure.nPulses/firstPulse/repetitionRate``,
``integrationTime``) and an alignment of frames to pulses. This module reproduces
extra-redu's lit-frame finder (``extra_redu.litfrm.AgipdLitFrameFinderOffline``,
extra-redu 1.1.0) exactly, vectorised over trains, and prefers the online lit-frame
finder's recorded output (``…/REDU/LITFRM:output``) for every train it covers:

* frame *k* of a train integrates the bunch slots
  ``first_xray_pulse - shift + k·stride + j`` for ``j < exposure``, where ``stride`` is
  1/2/4/8 for 4.5/2.2/1.1/0.5 MHz, ``exposure = min(ceil(integrationTime / 22), stride)``
  and ``shift = referenceFrame·stride`` ("by first pulse", frame 1 holds the first
  X-ray pulse) or the trigger-delay shift ("by reference delay");
* a frame's pulse energy is the sum of the XGM energies of the X-ray pulses in it (µJ);
  the XGM's ``data.intensitySa1TD``/``intensitySa3TD`` are used when present (EXtra's
  ``XGM``), otherwise ``data.intensityTD`` — all pulses of the XGM's tunnel, SASE1 and
  SASE3 together in order — is split with the bunch pattern (extra-redu's way);
* the pump-laser (PPL) flag of a frame says whether a pump-laser pulse falls in the
  bunch slots it integrates, the laser pattern being placed as EXtra's
  ``PumpProbePulses`` places it (it starts at slot 0 in the table; it is shifted to a
  fixed position or relative to the first X-ray pulse).

Train-level data are read by train ID from the whole run (an ``extra_data``
``DataCollection`` opened on the RAW run folder), never by pairing sequence files.
A frame whose train lacks the data needed is *flagged*, not zeroed silently: `FrameBeam`
carries ``beam_data`` (all known) and ``reason`` bits (`REASON_TEXT`); energies of such
frames are 0, never NaN.

EXtra and extra-redu are not imported here (EXtra alone takes ~2.5 s to import); the
tests use both as the oracle, on every frame. Where extra-redu has a quirk, this
module follows it or says why not (see `Alignment`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import euxfel_bunch_pattern as ebp

from .detectors.agipd import AGIPD1M, CONTROL_CLASSES
from .io import discovery as disc
from .io import sources as _sources

# -- the facility's constants (extra_redu.base.litfrm; FACILITY.md) ----------------------
#: ``bunchStructure.repetitionRate`` (MHz, formatted with one decimal) → bunch slots per frame.
RATE_TO_STRIDE = _sources.RATE_TO_STRIDE
#: AGIPD timing: ``integrationTime`` is in 10 ns clocks, 22 of them per 4.5 MHz slot.
CLOCKS_PER_PULSE = 22
#: Timeserver timing: 24 ticks of 9.23 ns per bunch slot.
TICKS_PER_PULSE = 24
#: Light travel per timeserver tick (m), for the detector-distance correction.
SPEED_OF_LIGHT_M_PER_TICK = 2.76708438734
#: AGIPD memory cells (frames per train at most).
MAX_FRAMES = 352
#: Slots of the bunch pattern table.
N_SLOTS = 2700
#: Energy per pulse the lit-frame finder writes when it had no XGM data for a train.
MISSED_XGM_ENERGY = 10000.0
#: Timing-system event codes of the reference delays, per SASE (extra_redu.base.bunches).
EVENT_CODES = {1: {"dynamic": 180, "static": 16}, 2: {"dynamic": 181, "static": 16},
               3: {"dynamic": 182, "static": 16}}
#: Pump-laser seed of each instrument (EXtra's ``OpticalLaserPulses``).
INSTRUMENT_PPL = {"FXE": ebp.PPL_BITS.LP_FXE, "SPB": ebp.PPL_BITS.LP_SPB, "MID": ebp.PPL_BITS.LP_SASE2,
                  "HED": ebp.PPL_BITS.LP_SASE2, "SCS": ebp.PPL_BITS.LP_SCS, "SQS": ebp.PPL_BITS.LP_SQS}
#: SASE of tunnel-device prefixes (XGMs such as ``SA1_XTD2_XGM``).
TUNNEL_SASE = {"SA1": 1, "LA1": 1, "SA2": 2, "LA2": 2, "SA3": 3, "LA3": 3}

# -- why a frame lacks beam data: bits of FrameBeam.reason --------------------------------
NO_PATTERN = 1
NO_XGM = 2
NO_FRAME = 4
NO_MAPPING = 8
PPL_UNKNOWN = 16
REASON_TEXT = {
    NO_PATTERN: "no bunch pattern (timeserver or pulse-pattern decoder) for the train",
    NO_XGM: "no XGM energy for the frame's pulses (pulse energy set to 0)",
    NO_FRAME: "frame index beyond the frames the detector recorded in the train",
    NO_MAPPING: "no detector control (bunchStructure) and no lit-frame finder for the train: "
                "frames cannot be placed among the pulses",
    PPL_UNKNOWN: "pump-laser position unknown for this X-ray frame",
}
#: What decided a frame's X-ray pulses (values of FrameBeam.decided_by).
DECIDED_BY = ("none", "LITFRM", "timeserver+AGIPD control", "decoder+AGIPD control")
BY_NONE, BY_LITFRM, BY_TIMESERVER, BY_DECODER = range(4)

#: Trains per vectorised block: bounds the (trains × frames × slots) work arrays.
BLOCK_TRAINS = 256


class BeamError(ValueError):
    """A beam source or setting is unusable (the message says what and what to set)."""


# -- settings -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BeamSources:
    """The sources the per-frame beam data come from.

    Attributes
    ----------
    sase
        The instrument's SASE (1, 2 or 3): its pulses are the X-ray pulses.
    detector_control
        AGIPD control device (``SPB_IRU_AGIPD1M1/MDL/FPGA_COMP``), read from ``RUN``.
    timeserver
        Instrument source with ``data.bunchPatternTable`` (``…/TSYS/TIMESERVER:outputBunchPattern``).
    pp_decoder
        Pulse-pattern decoder control source (``SPB_RR_SYS/MDL/BUNCH_PATTERN``), used
        when there is no timeserver (or for the trains it lacks).
    xgm
        XGM device or its ``:output`` (``SPB_XTD9_XGM/XGM/DOOCS``); None: energies unknown.
    xgm_sase
        SASE the XGM sits on (1 or 3: the SASE1/3 tunnel, 2: SASE2); None: from its name.
    litfrm
        Online lit-frame finder device or its ``:output`` (``SPB_IRU_AGIPD1M1/REDU/LITFRM``).
    ppl_bit
        Bunch-table bit of the pump laser (``euxfel_bunch_pattern.PPL_BITS``).
    instrument
        For messages and the PPL default only.
    """

    sase: int = 1
    detector_control: str | None = None
    timeserver: str | None = None
    pp_decoder: str | None = None
    xgm: str | None = None
    xgm_sase: int | None = None
    litfrm: str | None = None
    ppl_bit: int = int(ebp.PPL_BITS.LP_SPB)
    instrument: str | None = None

    def __post_init__(self):
        if self.sase not in (1, 2, 3):
            raise BeamError(f"sase must be 1, 2 or 3, not {self.sase!r} (the instrument's SASE)")
        if int(self.ppl_bit) not in {int(b) for b in ebp.PPL_BITS}:
            raise BeamError(f"ppl_bit {self.ppl_bit!r} is not a pump-laser bit; use one of "
                            + ", ".join(f"{b.name}={int(b)}" for b in ebp.PPL_BITS))

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_run_sources(cls, rs: Any, xgm_sase: int | None = None) -> "BeamSources":
        """From `xfel_reduce.io.trains.RunSources` (the workflow's resolved sources)."""
        inst = getattr(rs.instrument, "name", rs.instrument)
        return cls(sase=int(rs.sase), detector_control=rs.agipd_control, timeserver=rs.timeserver,
                   pp_decoder=rs.pulse_pattern_decoder, xgm=rs.xgm, xgm_sase=xgm_sase,
                   litfrm=rs.lit_frame_finder, ppl_bit=int(rs.ppl_bit), instrument=inst)


@dataclass(frozen=True)
class ReferenceDelay:
    """A reference delay of the lit-frame finder (``referenceDelay.dynamic|static.*``)."""

    delay: float
    pulse: int = 0
    frame: int = 1
    repetition_rate: float = 4.5
    position: float = 0.0


@dataclass(frozen=True)
class Alignment:
    """How detector frames are aligned to X-ray pulses (the lit-frame finder's settings).

    ``"by first pulse"``: the first X-ray pulse of each train lands in frame
    ``reference_frame`` (default 1; frame 0 is dark). ``"by reference delay"``: the
    frames are shifted by ``round((ref.delay + ref.frame·stride_ref·24 − trigger delay
    − distance term) / 24)`` slots, ``ref`` being the reference delay of the trigger's
    event (``trigger_name.event``/``.delay`` read from ``trigger_device``).

    extra-redu quirks followed here (extra-redu 1.1.0): the shift is counted from the
    first X-ray pulse of the train in both methods (the reference delay's ``pulse`` is
    not used), and the detector-distance term is applied even when the device says
    ``useDistanceDelay = False`` (it tests the attribute, not its value) — set
    ``use_distance=True`` to match that; this module honours the flag.
    """

    method: str = "by first pulse"
    reference_frame: int = 1
    trigger_device: str | None = None
    trigger_name: str | None = None
    motor_device: str | None = None
    motor_property: str | None = None
    motor_coef: float = 1.0
    detector_distance: float = 0.0
    use_distance: bool = True
    reference_delays: Mapping[str, ReferenceDelay] = field(default_factory=dict)
    origin: str = "default"

    def __post_init__(self):
        if self.method not in ("by first pulse", "by reference delay"):
            raise BeamError(f"alignment method must be 'by first pulse' or 'by reference delay', "
                            f"not {self.method!r}")

    def describe(self) -> str:
        if self.method == "by first pulse":
            return f"by first pulse, reference frame {self.reference_frame} ({self.origin})"
        return f"by reference delay, trigger {self.trigger_device}.{self.trigger_name} ({self.origin})"


@dataclass(frozen=True)
class PplOffset:
    """Where the pump-laser pattern sits (EXtra's ``PumpProbePulses`` anchoring).

    mode
        ``"bunch_table_offset"``: slots after the first X-ray pulse (default 0: the
        laser's first pulse on the first X-ray pulse); ``"bunch_table_position"``: a fixed
        slot; ``"pulse_offset"``: in units of the spacing of the first two X-ray pulses.
    extrapolate
        A train without enough X-ray pulses to anchor takes the previous train's anchor.
    """

    mode: str = "bunch_table_offset"
    value: float = 0
    extrapolate: bool = True

    def __post_init__(self):
        if self.mode not in ("bunch_table_offset", "bunch_table_position", "pulse_offset"):
            raise BeamError(f"PPL offset mode must be bunch_table_offset, bunch_table_position or "
                            f"pulse_offset, not {self.mode!r}")


@dataclass(frozen=True)
class DetectorTiming:
    """The AGIPD control's frame settings (``RUN`` values, as the lit-frame finder reads them)."""

    control: str
    n_frames: int
    first_pulse: int
    repetition_rate: float
    stride: int
    integration_time: float
    exposure: int
    device_class: str | None = None
    pattern_type: str | None = None
    notes: tuple[str, ...] = ()


# -- results ------------------------------------------------------------------------------

@dataclass
class FrameBeam:
    """Beam data per detector frame (all arrays of the frames' length).

    Attributes
    ----------
    train_ids, cell_ids
        The frames asked for.
    xray
        The frame integrated at least one X-ray pulse of the instrument's SASE.
    n_pulses
        X-ray pulses integrated.
    pulse_energy, pulse_energy_sigma
        Sum of the XGM energies of those pulses (µJ) and the quadrature sum of their
        XGM sigmas; 0 when unknown (see ``reason``), never NaN.
    ppl
        A pump-laser pulse falls in the slots the frame integrates.
    detector_pulse_id
        ``firstPulse + cell·stride`` (the lit-frame finder's ``detectorPulseId``).
    beam_data
        Everything above is known for the frame (``reason == 0``).
    reason
        Bits `NO_PATTERN`, `NO_XGM`, `NO_FRAME`, `NO_MAPPING`, `PPL_UNKNOWN`.
    decided_by
        Index into `DECIDED_BY`: what decided the X-ray pulses of the frame.
    """

    train_ids: np.ndarray
    cell_ids: np.ndarray
    xray: np.ndarray
    n_pulses: np.ndarray
    pulse_energy: np.ndarray
    pulse_energy_sigma: np.ndarray
    ppl: np.ndarray
    detector_pulse_id: np.ndarray
    reason: np.ndarray
    decided_by: np.ndarray
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.train_ids.size)

    @property
    def beam_data(self) -> np.ndarray:
        return self.reason == 0

    @property
    def xray_known(self) -> np.ndarray:
        """X-ray flag and pulse count are known (energy or PPL may still be missing)."""
        return (self.decided_by != BY_NONE) & ((self.reason & NO_FRAME) == 0)

    @property
    def energy_known(self) -> np.ndarray:
        return self.xray_known & ((self.reason & NO_XGM) == 0)

    @property
    def ppl_known(self) -> np.ndarray:
        return self.xray_known & ((self.reason & (PPL_UNKNOWN | NO_PATTERN)) == 0)

    def decided_by_names(self) -> np.ndarray:
        """`decided_by` as strings (object array; for tables and reports)."""
        return np.asarray(DECIDED_BY, dtype=object)[self.decided_by]

    def reason_text(self, i: int) -> str:
        """Why frame *i* lacks beam data ('' if it does not)."""
        return describe_reason(int(self.reason[i]))

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts: frames, X-ray frames, deciders, frames per missing-data reason."""
        out: dict[str, Any] = {
            "frames": len(self),
            "xray_frames": int(self.xray.sum()),
            "ppl_xray_frames": int((self.xray & self.ppl).sum()),
            "frames_with_beam_data": int(self.beam_data.sum()),
            "decided_by": {DECIDED_BY[k]: int(v) for k, v in
                           sorted(Counter(self.decided_by.tolist()).items())},
            "without_beam_data": {REASON_TEXT[bit]: int(((self.reason & bit) != 0).sum())
                                  for bit in REASON_TEXT if ((self.reason & bit) != 0).any()},
            "notes": list(self.notes),
        }
        return out


@dataclass
class TrainBeam:
    """Beam data per (train, frame) for a set of trains: the table `FrameBeam` is cut from.

    Arrays are ``(n_trains, n_frames_max)`` unless stated; trains are sorted.
    ``window_start`` (per train) is the bunch slot where frame 0's integration window
    starts (frame *k*: ``window_start + k·stride``, ``exposure`` slots; it may be
    negative), valid where ``mapped`` (the train has X-ray pulses and a detector control).
    """

    train_ids: np.ndarray
    n_frames: np.ndarray
    n_pulses: np.ndarray
    energy: np.ndarray
    energy_sigma: np.ndarray
    ppl: np.ndarray
    reason: np.ndarray
    decided_by: np.ndarray          # per train
    detector_pulse_id: np.ndarray
    window_start: np.ndarray        # per train
    mapped: np.ndarray              # per train
    stride: int
    exposure: int
    sources: BeamSources
    alignment: Alignment
    timing: DetectorTiming | None
    notes: tuple[str, ...] = ()

    def frames(self, train_ids: Sequence[int] | np.ndarray, cell_ids: Sequence[int] | np.ndarray) -> FrameBeam:
        """Beam data of the frames ``(train_ids[i], cell_ids[i])``.

        ``cell_ids`` are the frame indices within the train — the detector's
        ``image.cellId``, which is what the facility indexes lit-frame finder output
        with. Trains not in this table raise `BeamError`.
        """
        tid = np.asarray(train_ids, np.uint64).ravel()
        cell = np.asarray(cell_ids).ravel().astype(np.int64)
        if tid.shape != cell.shape:
            raise BeamError(f"{tid.size} train IDs but {cell.size} cell IDs: give one of each per frame")
        row = np.searchsorted(self.train_ids, tid)
        rowc = np.minimum(row, max(self.train_ids.size - 1, 0))
        found = (row < self.train_ids.size) & (self.train_ids[rowc] == tid) if self.train_ids.size else \
            np.zeros(tid.shape, bool)
        if not found.all():
            missing = np.unique(tid[~found])
            raise BeamError(f"{missing.size} train(s) not in the beam table (e.g. {missing[:5].tolist()}): "
                            "build it with train_beam(..., train_ids=...) covering the frames' trains")
        inside = (cell >= 0) & (cell < self.n_frames[rowc]) & (cell < self.n_pulses.shape[1])
        c = np.where(inside, cell, 0)
        n_pulses = np.where(inside, self.n_pulses[rowc, c], 0).astype(np.uint16)
        energy = np.where(inside, self.energy[rowc, c], 0).astype(np.float32)
        sigma = np.where(inside, self.energy_sigma[rowc, c], 0).astype(np.float32)
        ppl = np.where(inside, self.ppl[rowc, c], False)
        train_bits = self.reason[rowc, 0] & (NO_PATTERN | NO_MAPPING)
        reason = np.where(inside, self.reason[rowc, c], train_bits | NO_FRAME).astype(np.uint8)
        dpid = np.where(inside, self.detector_pulse_id[rowc, c], 0).astype(np.uint16)
        return FrameBeam(tid, cell, n_pulses > 0, n_pulses, energy, sigma, ppl, dpid, reason,
                         self.decided_by[rowc].astype(np.uint8), self.notes)

    def summary(self) -> dict[str, Any]:
        return {
            "trains": int(self.train_ids.size),
            "decided_by": {DECIDED_BY[k]: int(v) for k, v in
                           sorted(Counter(self.decided_by.tolist()).items())},
            "stride": self.stride, "exposure_slots": self.exposure,
            "alignment": self.alignment.describe(),
            "sources": self.sources.as_dict(),
            "notes": list(self.notes),
        }


@dataclass
class PulseEnergies:
    """XGM energy of every X-ray pulse of the instrument's SASE, per train.

    ``energy[t, i]`` is the *i*-th X-ray pulse of train ``train_ids[t]`` (µJ; 0 beyond
    ``n_pulses[t]`` or where ``ok`` is False). The pulses are counted from the bunch
    pattern: a train without one (``pattern_data`` False) has none. ``key`` names the
    XGM key used.
    """

    train_ids: np.ndarray
    energy: np.ndarray
    sigma: np.ndarray
    ok: np.ndarray
    n_pulses: np.ndarray
    xgm_data: np.ndarray
    pattern_data: np.ndarray
    key: str


def describe_reason(code: int) -> str:
    """The text of a `FrameBeam.reason` value ('' for 0)."""
    return "; ".join(text for bit, text in REASON_TEXT.items() if code & bit)


# -- reading by train ID ------------------------------------------------------------------

def _by_train(run, source: str, key: str, train_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of one key for the given trains, read by train ID across the whole run.

    Returns ``(values, present)``; trains without an entry get zeros and False. A train
    with several entries (rare in real data) takes its first.
    """
    from extra_data import by_id

    kd = run[source, key].select_trains(by_id[train_ids])
    tids = np.asarray(kd.train_id_coordinates(), np.uint64)
    data = kd.ndarray()
    out = np.zeros((train_ids.size,) + data.shape[1:], data.dtype)
    present = np.zeros(train_ids.size, bool)
    if tids.size == 0:
        return out, present
    utids, first = np.unique(tids, return_index=True)
    row = np.searchsorted(train_ids, utids)
    ok = (row < train_ids.size)
    ok[ok] = train_ids[row[ok]] == utids[ok]
    out[row[ok]] = data[first[ok]]
    present[row[ok]] = True
    return out, present


def _has(run, source: str | None, key: str) -> bool:
    return bool(source) and source in run.all_sources and disc.has_key(run, source, key)


_MISSING = object()


def _run_value(run, source: str, key: str, default: Any = _MISSING) -> Any:
    try:
        value = run.get_run_value(source, key)
    except Exception:
        if default is _MISSING:
            raise BeamError(f"{source} has no RUN value {key!r}") from None
        return default
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _device(name: str | None) -> str | None:
    return name.partition(":")[0] if name else None


def _check_sources(run, sources: BeamSources) -> None:
    """Every named source is in the run (devices also by their ``:output``)."""
    for name, what, key in ((sources.detector_control, "detector control", "sources.detector_control"),
                            (sources.timeserver, "timeserver", "sources.timeserver"),
                            (sources.pp_decoder, "pulse-pattern decoder", "sources.pulse_pattern_decoder"),
                            (sources.xgm, "XGM", "sources.xgm"),
                            (sources.litfrm, "lit-frame finder", "sources.lit_frame_finder")):
        if name and name not in run.all_sources and f"{_device(name)}:output" not in run.all_sources:
            raise BeamError(f"{what} {name!r} is not a source of the run; correct or remove `{key}` "
                            "(without it the source is discovered)")


# -- detector timing and alignment ------------------------------------------------------------

def read_detector_timing(run, control: str) -> DetectorTiming:
    """The AGIPD control's frame settings, from the ``RUN`` section as extra-redu reads them.

    Agipd2Composite (AGIPD 500K) has no ``firstPulse``: 0, as extra-redu. A missing
    ``repetitionRate`` (early AGIPD runs) is taken as 4.5 MHz and a missing
    ``integrationTime`` as one slot, each with a note.
    """
    notes = []
    cls = disc.device_class(run, control)
    n_frames = int(_run_value(run, control, "bunchStructure.nPulses"))
    n_frames = min(n_frames, MAX_FRAMES)
    kind = CONTROL_CLASSES.get(cls, AGIPD1M)  # an unrecorded class: the 1M's keys
    first = 0 if kind.first_pulse_key is None else int(_run_value(run, control, kind.first_pulse_key, 0))
    rate = _run_value(run, control, "bunchStructure.repetitionRate", None)
    if rate is None:
        rate = 4.5
        notes.append(f"{control} has no bunchStructure.repetitionRate: 4.5 MHz assumed")
    stride = RATE_TO_STRIDE.get(f"{float(rate):.1f}")
    if stride is None:
        raise BeamError(f"{control}: bunchStructure.repetitionRate = {rate} MHz is not one of "
                        f"{', '.join(RATE_TO_STRIDE)} MHz")
    itime = _run_value(run, control, "integrationTime", None)
    if itime is None:
        itime = CLOCKS_PER_PULSE
        notes.append(f"{control} has no integrationTime: one bunch slot per frame assumed")
    exposure = min(int(math.ceil(float(itime) / CLOCKS_PER_PULSE)), stride)
    ptype = _run_value(run, control, kind.pattern_type_key, None)
    return DetectorTiming(control, n_frames, first, float(rate), stride, float(itime), exposure,
                          cls, ptype, tuple(notes))


def alignment_from_litfrm(run, litfrm: str) -> Alignment:
    """The alignment configured on the online lit-frame finder device (its ``RUN`` values).

    Reads the keys extra-redu reads (``alignMethod``, ``referenceFrame``,
    ``trigger.deviceId/name``, ``motor.*``, ``referenceDelay.{dynamic,static}.*``,
    ``useDistanceDelay``, ``detectorDistance``; older devices: ``trigger``, ``Timer``).
    """
    dev = _device(litfrm)
    if dev not in run.control_sources:
        raise BeamError(f"lit-frame finder device {dev} has no control data in the run")
    get = lambda k, d=_MISSING: _run_value(run, dev, k, d)  # noqa: E731
    method = get("alignMethod", "by first pulse")
    ref_frame = int(get("referenceFrame", 1))
    trig_dev = get("trigger.deviceId", None)
    trig_name = get("trigger.name", None)
    if trig_dev is None:  # device version 0.3
        trig_dev, trig_name = get("Timer", None), get("trigger", None)
    delays = {}
    for event in ("dynamic", "static"):
        d = get(f"referenceDelay.{event}.delay", None)
        if d is not None and d != -1:
            delays[event] = ReferenceDelay(
                float(d), int(get(f"referenceDelay.{event}.pulse", 0)), int(get(f"referenceDelay.{event}.frame", 1)),
                float(get(f"referenceDelay.{event}.repetitionRate", 4.5)),
                float(get(f"referenceDelay.{event}.position", 0.0)))
    return Alignment(
        method=method, reference_frame=ref_frame, trigger_device=trig_dev, trigger_name=trig_name,
        motor_device=get("motor.deviceId", None) or None, motor_property=get("motor.positionProperty", None),
        motor_coef=float(get("motor.unitConversionCoef", 1.0)),
        detector_distance=float(get("detectorDistance", 0.0)), use_distance=bool(get("useDistanceDelay", True)),
        reference_delays=delays, origin=f"configured on {dev}")


def alignment_shift(run, alignment: Alignment, stride: int, sase: int) -> int:
    """Slots between the first X-ray pulse and the start of frame 0's window."""
    if alignment.method == "by first pulse":
        return alignment.reference_frame * stride
    if not alignment.trigger_device or alignment.trigger_device not in run.control_sources:
        raise BeamError(f"alignment 'by reference delay' needs the trigger device "
                        f"{alignment.trigger_device!r}, which the run does not have; align "
                        "'by first pulse' instead")
    event = int(_run_value(run, alignment.trigger_device, f"{alignment.trigger_name}.event"))
    delay = float(_run_value(run, alignment.trigger_device, f"{alignment.trigger_name}.delay"))
    by_code = {EVENT_CODES[sase][name]: ref for name, ref in alignment.reference_delays.items()}
    ref = by_code.get(event)
    if ref is None:
        raise BeamError(f"no reference delay for timing event {event} of {alignment.trigger_device}."
                        f"{alignment.trigger_name} (have: {sorted(by_code)}); align 'by first pulse' instead")
    ref_stride = RATE_TO_STRIDE.get(f"{ref.repetition_rate:.1f}")
    if ref_stride is None:
        raise BeamError(f"reference delay repetition rate {ref.repetition_rate} MHz is not one of "
                        f"{', '.join(RATE_TO_STRIDE)} MHz")
    shift = ref.delay + ref.frame * ref_stride * TICKS_PER_PULSE - delay
    if alignment.use_distance:
        position = alignment.detector_distance * 1e-3
        if alignment.motor_device and alignment.motor_device in run.control_sources:
            position += alignment.motor_coef * float(_run_value(run, alignment.motor_device,
                                                                alignment.motor_property))
        shift -= (ref.position * 1e-3 - position) / SPEED_OF_LIGHT_M_PER_TICK
    return int(round(shift / TICKS_PER_PULSE))


# -- bunch pattern ----------------------------------------------------------------------------

def _line_code(sase: int) -> int:
    return ebp.DESTINATION_T5D if sase == 2 else ebp.DESTINATION_T4D


def instrument_pulses(tables: np.ndarray, sase: int) -> np.ndarray:
    """Slots holding X-ray pulses of a SASE (SASE3 = T4D with the photon-line kick)."""
    return np.asarray(ebp.is_sase(tables, sase))


def line_pulses(tables: np.ndarray, sase: int) -> np.ndarray:
    """Slots holding pulses sent down the SASE's tunnel: what its XGM's ``intensityTD`` lists."""
    return (tables & np.uint32(ebp.DESTINATION_MASK)) == np.uint32(_line_code(sase))


def _decoder_tables(run, decoder: str, train_ids: np.ndarray, ppl_bit: int
                    ) -> tuple[np.ndarray, np.ndarray, bool, list[str]]:
    """A bunch table rebuilt from the pulse-pattern decoder's pulse lists (as extra-redu does).

    Returns ``(tables, present, laser_ok, notes)``. The decoder decodes one laser seed
    (``laserSource``); if it is not *ppl_bit*'s, the PPL is unknown (``laser_ok`` False).
    """
    notes = []
    tables = np.zeros((train_ids.size, N_SLOTS), np.uint32)
    present = np.zeros(train_ids.size, bool)
    codes = [("sase1", ebp.DESTINATION_T4D), ("sase2", ebp.DESTINATION_T5D),
             ("sase3", ebp.DESTINATION_T4D | ebp.PHOTON_LINE_DEFLECTION)]
    seed = _run_value(run, decoder, "laserSource", None)
    laser_ok = (seed in ebp.PPL_BITS.__members__ and int(ebp.PPL_BITS[seed]) == int(ppl_bit)
                and _has(run, decoder, "laser.pulseIds"))
    if laser_ok:
        codes.append(("laser", int(ppl_bit)))
    else:
        notes.append(f"{decoder} decodes laser {seed!r}, not {ebp.PPL_BITS(ppl_bit).name}: "
                     "PPL unknown in the trains it decides")
    for node, code in codes:
        if not _has(run, decoder, f"{node}.pulseIds"):
            continue
        ids, ok = _by_train(run, decoder, f"{node}.pulseIds", train_ids)
        n, _ = _by_train(run, decoder, f"{node}.nPulses", train_ids)
        ids = ids.astype(np.int64)
        use = (np.arange(ids.shape[1])[None, :] < n[:, None]) & (ids >= 0) & (ids < N_SLOTS) & ok[:, None]
        r, c = np.nonzero(use)
        tables[r, ids[r, c]] |= np.uint32(code)
        if node != "laser":
            present |= ok
    return tables, present, laser_ok, notes


# -- XGM ----------------------------------------------------------------------------------

def on_line(xgm: str, sase: int) -> bool:
    """Whether an XGM (by its name's prefix) measures the pulses of ``sase``: SASE1 and
    SASE3 share one electron line (T4D), SASE2 has its own (T5D)."""
    return _line_code(_name_sase(xgm) or sase) == _line_code(sase)


def _name_sase(name: str) -> int | None:
    """The SASE a device name says it is on (``SA1_…``, ``SPB_…``), or None."""
    p = disc.prefix(name)
    return TUNNEL_SASE.get(p) or disc.INSTRUMENT_SASE.get(p)


def _xgm_sase(xgm: str, given: int | None) -> int:
    if given is not None:
        return given
    sase = _name_sase(xgm)
    if sase is None:
        raise BeamError(f"cannot tell the SASE of XGM {xgm} from its name: set sources.xgm_sase (1, 2 or 3)")
    return sase


class _Xgm:
    """XGM arrays of a set of trains and how to read them (per-SASE key or split)."""

    def __init__(self, run, xgm: str, xgm_sase: int | None, sase: int, train_ids: np.ndarray,
                 prefer_sase_keys: bool = True):
        device = _device(xgm)
        output = xgm if ":" in xgm else f"{device}:output"
        if output not in run.instrument_sources or not disc.has_key(run, output, "data.intensityTD"):
            raise BeamError(f"XGM {xgm}: no pipeline source {output} with data.intensityTD in the run; "
                            "set sources.xgm to the XGM's device or output name")
        line = _xgm_sase(device, xgm_sase)
        if _line_code(line) != _line_code(sase):
            raise BeamError(f"XGM {device} is on the SASE{line} line but the instrument is on SASE{sase}: "
                            "its energies are not of the instrument's pulses; set sources.xgm")
        self.sase = sase
        self.source = output
        sase_key = f"data.intensitySa{sase}TD"
        # `split`: the key lists every pulse of the tunnel, so a pulse's entry is at its
        # rank among the tunnel's pulses; otherwise at its rank among the SASE's pulses.
        self.split = not (prefer_sase_keys and sase in (1, 3) and _has(run, output, sase_key))
        self.key = "data.intensityTD" if self.split else sase_key
        self.td, self.present = _by_train(run, output, self.key, train_ids)
        self.td = self.td.astype(np.float32, copy=False)
        sig_keys = [("data.intensitySigmaTD", True)] if self.split else \
            [(f"data.intensitySa{sase}SigmaTD", False), ("data.intensitySigmaTD", True)]
        sig_key, self.sig_split = next(((k, sp) for k, sp in sig_keys if _has(run, output, k)), (None, self.split))
        self.sig = (_by_train(run, output, sig_key, train_ids)[0].astype(np.float32, copy=False)
                    if sig_key else np.zeros_like(self.td))

    def slot_energies(self, rows: slice, tables: np.ndarray, inst: np.ndarray):
        """Energy and sigma at every X-ray slot of trains ``rows``, and where they are known."""
        width = self.td.shape[1]
        line_rank = np.cumsum(line_pulses(tables, self.sase), axis=1) - 1
        inst_rank = np.cumsum(inst, axis=1) - 1
        e_rank = line_rank if self.split else inst_rank
        s_rank = line_rank if self.sig_split else inst_rank
        ok = inst & (e_rank < width) & self.present[rows, None]
        e = np.take_along_axis(self.td[rows], np.clip(e_rank, 0, width - 1), axis=1)
        s = np.take_along_axis(self.sig[rows], np.clip(s_rank, 0, self.sig.shape[1] - 1), axis=1)
        return np.where(ok, e, 0).astype(np.float32), np.where(ok, s, 0).astype(np.float32), ok


# -- the per-train computation --------------------------------------------------------------

@dataclass
class _Pattern:
    tables: np.ndarray
    present: np.ndarray
    decider: np.ndarray      # per train: BY_TIMESERVER / BY_DECODER / BY_NONE
    ppl_ok: np.ndarray       # per train: the laser pattern is known
    notes: list[str]


def _read_pattern(run, sources: BeamSources, train_ids: np.ndarray) -> _Pattern:
    tables = np.zeros((train_ids.size, N_SLOTS), np.uint32)
    present = np.zeros(train_ids.size, bool)
    decider = np.full(train_ids.size, BY_NONE, np.uint8)
    ppl_ok = np.zeros(train_ids.size, bool)
    notes: list[str] = []
    if sources.timeserver:
        key = "data.bunchPatternTable" if ":" in sources.timeserver else "bunchPatternTable"
        t, ok = _by_train(run, sources.timeserver, key, train_ids)
        tables[ok] = t[ok, :N_SLOTS]
        present |= ok
        decider[ok] = BY_TIMESERVER
        ppl_ok[ok] = True
        if (~ok).any():
            notes.append(f"timeserver {sources.timeserver} has no data for {int((~ok).sum())} of "
                         f"{train_ids.size} trains")
    if sources.pp_decoder and not present.all():
        t, ok, laser_ok, dnotes = _decoder_tables(run, sources.pp_decoder, train_ids, sources.ppl_bit)
        fill = ok & ~present
        tables[fill] = t[fill]
        present |= fill
        decider[fill] = BY_DECODER
        ppl_ok[fill] = laser_ok
        if fill.any():
            notes += dnotes
        if fill.any() and sources.timeserver:
            notes.append(f"pulse-pattern decoder {sources.pp_decoder} used for {int(fill.sum())} trains "
                         "without timeserver data")
    if not sources.timeserver and not sources.pp_decoder:
        notes.append("no timeserver or pulse-pattern decoder: X-ray pulses unknown except from LITFRM")
    return _Pattern(tables, present, decider, ppl_ok, notes)


def _ppl_offsets(fp: np.ndarray, fp2: np.ndarray, npulse: np.ndarray, usable: np.ndarray,
                 ppl: PplOffset) -> tuple[np.ndarray, np.ndarray]:
    """Slot offset of the laser pattern per train (EXtra's anchoring), and where known."""
    n = fp.size
    if ppl.mode == "bunch_table_position":
        return np.full(n, int(ppl.value), np.int64), usable.copy()
    if ppl.mode == "bunch_table_offset" or ppl.value == 0:
        off = fp.astype(np.int64) + int(ppl.value)
        ok = usable & (npulse >= 1)
    else:
        off = fp.astype(np.int64) + ((fp2.astype(np.int64) - fp) * ppl.value).astype(np.int64)
        ok = usable & (npulse >= 2)
    if ppl.extrapolate:
        # The last anchored train before (in train order) lends its offset.
        last = np.where(ok, np.arange(n), -1)
        last = np.maximum.accumulate(last) if n else last
        got = usable & (last >= 0)
        off = np.where(got, off[np.maximum(last, 0)], 0)
        return off, got
    return np.where(ok, off, 0), ok


@dataclass
class _Table:
    """The (train, frame) arrays `train_beam` fills, before they become a `TrainBeam`."""

    n_frames: np.ndarray
    n_pulses: np.ndarray
    energy: np.ndarray
    sigma: np.ndarray
    ppl: np.ndarray
    reason: np.ndarray
    decided: np.ndarray
    dpid: np.ndarray

    @classmethod
    def empty(cls, n_trains: int, n_cols: int) -> "_Table":
        z = lambda dt: np.zeros((n_trains, n_cols), dt)  # noqa: E731
        return cls(np.zeros(n_trains, np.int64), z(np.uint16), z(np.float32), z(np.float32), z(bool),
                   z(np.uint8), np.full(n_trains, BY_NONE, np.uint8), z(np.uint16))


#: Keys of the lit-frame finder's output that are used (extra-redu's ``read()`` reads them all).
LITFRM_KEYS = ("nFrame", "nPulsePerFrame", "energyPerFrame", "energySigma", "detectorPulseId")


def train_beam(run, sources: BeamSources, train_ids: Sequence[int] | np.ndarray | None = None, *,
               alignment: Alignment | None = None, ppl: PplOffset = PplOffset(),
               prefer_litfrm: bool = True, prefer_sase_keys: bool = True) -> TrainBeam:
    """X-ray pulses, energy and PPL of every frame of the given trains.

    Parameters
    ----------
    run
        ``extra_data.DataCollection`` of the whole RAW run (all aggregators).
    sources
        Source names (`discover_beam_sources` fills them from the run).
    train_ids
        Trains to compute (default: all of the run); read by train ID.
    alignment
        Frame ↔ pulse alignment; default: the lit-frame finder device's configuration
        when the run records it, else "by first pulse" with reference frame 1.
    ppl
        Pump-laser anchoring (default: first laser pulse on the first X-ray pulse).
    prefer_litfrm
        Take the online lit-frame finder's recorded output for the trains it covers.
    prefer_sase_keys
        Use ``data.intensitySa{1,3}TD`` when the XGM has it (else split ``intensityTD``).

    Returns
    -------
    TrainBeam
        Per (train, frame) table; `TrainBeam.frames` cuts it to detector frames.
    """
    _check_sources(run, sources)
    tids = np.unique(np.asarray(run.train_ids if train_ids is None else train_ids, np.uint64))
    notes: list[str] = []
    litfrm_dev = _device(sources.litfrm)
    timing = _timing(run, sources, litfrm_dev, notes)
    if alignment is None:
        alignment = (alignment_from_litfrm(run, litfrm_dev) if litfrm_dev and litfrm_dev in run.control_sources
                     else Alignment())
    pattern = _read_pattern(run, sources, tids)
    notes += pattern.notes
    xgm = _Xgm(run, sources.xgm, sources.xgm_sase, sources.sase, tids, prefer_sase_keys) if sources.xgm else None
    if xgm is None:
        notes.append("no XGM: pulse energies unknown")
    lit = _read_litfrm(run, litfrm_dev, tids, notes) if prefer_litfrm and litfrm_dev else None

    n_cols = max(timing.n_frames if timing else 0, lit["nPulsePerFrame"][0].shape[1] if lit else 0)
    n_cols = min(max(n_cols, 1), MAX_FRAMES)
    T = tids.size
    table = _Table.empty(T, n_cols)
    stride, exposure = (timing.stride, timing.exposure) if timing else (1, 1)

    # Per-train quantities over all trains: the PPL anchor may come from an earlier train.
    inst = instrument_pulses(pattern.tables, sources.sase) & pattern.present[:, None]
    npulse = inst.sum(axis=1)
    fp = inst.argmax(axis=1)
    second = inst.copy()
    second[np.arange(T), fp] = False
    ppl_off, ppl_known = _ppl_offsets(fp, second.argmax(axis=1), npulse, pattern.present, ppl)
    del second
    ppl_known &= pattern.ppl_ok
    mapped = np.zeros(T, bool)
    window_start = np.zeros(T, np.int64)
    if timing:
        mapped = pattern.present & (npulse > 0)
        window_start = np.where(mapped, fp - alignment_shift(run, alignment, stride, sources.sase), 0)
        k = np.arange(n_cols)
        table.dpid[:] = np.where(k < timing.n_frames, timing.first_pulse + k * stride, 0).astype(np.uint16)
        table.n_frames[:] = timing.n_frames
        _offline_pass(table, timing, pattern, inst, xgm, window_start, mapped, ppl_off, ppl_known,
                      sources.ppl_bit)
        offline = pattern.present
        table.decided[offline] = pattern.decider[offline]
        table.reason[(~ppl_known)[:, None] & (table.n_pulses > 0) & offline[:, None]] |= PPL_UNKNOWN
    else:
        table.reason[:] |= NO_MAPPING
    table.reason[~pattern.present] |= NO_PATTERN
    table.ppl[~ppl_known] = False
    if lit is not None:
        _litfrm_pass(table, lit, pattern, timing, ppl_known, f"{litfrm_dev}:output", notes)
    none = table.decided == BY_NONE
    for a in (table.n_pulses, table.energy, table.sigma, table.ppl):
        a[none] = 0
    return TrainBeam(tids, table.n_frames, table.n_pulses, table.energy, table.sigma, table.ppl, table.reason,
                     table.decided, table.dpid, window_start, mapped, stride, exposure, sources, alignment,
                     timing, tuple(notes))


def _timing(run, sources: BeamSources, litfrm_dev: str | None, notes: list[str]) -> DetectorTiming | None:
    """The detector control's timing: the named control, else the one the LITFRM device names."""
    control = sources.detector_control
    if control is None and litfrm_dev and litfrm_dev in run.control_sources:
        control = _run_value(run, litfrm_dev, "detectorId", None) or _run_value(run, litfrm_dev, "DetectorCtrl", None)
        if control and control not in run.control_sources:
            notes.append(f"lit-frame finder names detector control {control}, which the run lacks")
            control = None
    if not control:
        notes.append("no AGIPD control source: frames cannot be placed among pulses except by LITFRM")
        return None
    timing = read_detector_timing(run, control)
    notes += timing.notes
    return timing


def _read_litfrm(run, device: str, tids: np.ndarray, notes: list[str]) -> dict | None:
    output = f"{device}:output"
    if output not in run.instrument_sources:
        return None
    missing = [k for k in LITFRM_KEYS if not disc.has_key(run, output, f"data.{k}")]
    if missing:
        notes.append(f"LITFRM output {output} lacks {', '.join(missing)}: not used")
        return None
    return {k: _by_train(run, output, f"data.{k}", tids) for k in LITFRM_KEYS}


def _offline_pass(table: _Table, timing: DetectorTiming, pattern: _Pattern, inst: np.ndarray, xgm: _Xgm | None,
                  window_start: np.ndarray, mapped: np.ndarray, ppl_off: np.ndarray, ppl_known: np.ndarray,
                  ppl_bit: int) -> None:
    """extra-redu's lit-frame finding, vectorised over blocks of trains."""
    T, n_cols = table.n_pulses.shape
    slot_k = (np.arange(n_cols) * timing.stride)[:, None] + np.arange(timing.exposure)[None, :]   # (F, E)
    frame_ok = (np.arange(n_cols) < timing.n_frames)[None, :, None]
    for b0 in range(0, T, BLOCK_TRAINS):
        rows = slice(b0, min(b0 + BLOCK_TRAINS, T))
        slots = window_start[rows, None, None] + slot_k[None]                           # (B, F, E)
        valid = mapped[rows, None, None] & (slots >= 0) & (slots < N_SLOTS) & frame_ok
        flat = np.clip(slots, 0, N_SLOTS - 1).reshape(slots.shape[0], -1)

        def at(a: np.ndarray, flat=flat, shape=slots.shape) -> np.ndarray:
            """Values of a (B, 2700) array at the frames' slots, as (B, F, E)."""
            return np.take_along_axis(a, flat, axis=1).reshape(shape)

        hit = at(inst[rows]) & valid
        table.n_pulses[rows] = hit.sum(axis=2)
        if xgm is not None:
            e_slot, s_slot, e_ok = xgm.slot_energies(rows, pattern.tables[rows], inst[rows])
            # Summed in float64 and stored as float32, as the lit-frame finder does.
            e = np.where(hit, at(e_slot), 0).astype(np.float64)
            s = np.where(hit, at(s_slot), 0).astype(np.float64)
            missing = (hit & ~at(e_ok)).any(axis=2) | ~xgm.present[rows, None]
            table.energy[rows] = np.where(missing, 0, e.sum(axis=2))
            table.sigma[rows] = np.where(missing, 0, np.sqrt(np.square(s).sum(axis=2)))
            table.reason[rows] |= np.where(missing, NO_XGM, 0).astype(np.uint8)
        else:
            table.reason[rows] |= NO_XGM
        # Pump laser: the laser's table pattern (it starts at slot 0) moved by the anchor.
        laser = (pattern.tables[rows] & np.uint32(ppl_bit)) != 0
        src = flat - ppl_off[rows, None]
        pumped = np.take_along_axis(laser, np.clip(src, 0, N_SLOTS - 1), axis=1) & (src >= 0) & (src < N_SLOTS)
        table.ppl[rows] = (pumped.reshape(slots.shape) & valid).any(axis=2) & ppl_known[rows, None]


def _litfrm_pass(table: _Table, lit: dict, pattern: _Pattern, timing: DetectorTiming | None,
                 ppl_known: np.ndarray, output: str, notes: list[str]) -> None:
    """Replace the offline values by the recorded lit-frame finder output where it has the train."""
    T, n_cols = table.n_pulses.shape
    use = lit["nFrame"][1]
    w = min(n_cols, lit["nPulsePerFrame"][0].shape[1])
    lp = lit["nPulsePerFrame"][0][:, :w].astype(np.uint16)
    le = lit["energyPerFrame"][0][:, :w].astype(np.float32)
    ls = lit["energySigma"][0][:, :w].astype(np.float32)
    both = use & (table.decided != BY_NONE)
    if both.any():
        differ = (table.n_pulses[both, :w] != lp[both]).any(axis=1)
        if differ.any():
            notes.append(f"LITFRM and the offline lit-frame finding disagree on the X-ray pulses of "
                         f"{int(differ.sum())} of {int(both.sum())} trains; LITFRM is used")
    # The online device writes 10000 µJ per pulse when it had no XGM data.
    no_xgm = (lp > 0) & (le == np.float32(MISSED_XGM_ENERGY) * lp.astype(np.float32))
    reason = np.zeros((T, n_cols), np.uint8)
    reason[:, :w] = np.where(no_xgm, NO_XGM, 0)
    reason[~pattern.present] |= NO_PATTERN
    n_pulses = np.zeros((T, n_cols), np.uint16)
    n_pulses[:, :w] = lp
    # PPL needs the pattern and the offline placement of the frames among the pulses.
    ppl_unknown = ~ppl_known[:, None] if timing else np.ones((T, 1), bool)
    reason[ppl_unknown & (n_pulses > 0)] |= PPL_UNKNOWN
    for dst, src in ((table.n_pulses, lp), (table.energy, np.where(no_xgm, 0, le)),
                     (table.sigma, np.where(no_xgm, 0, ls)),
                     (table.dpid, lit["detectorPulseId"][0][:, :w].astype(np.uint16))):
        dst[use] = 0
        dst[use, :w] = src[use]
    if timing is None:
        table.ppl[use] = False
    table.reason[use] = reason[use]
    table.n_frames[use] = np.minimum(lit["nFrame"][0][use].astype(np.int64), n_cols)
    table.decided[use] = BY_LITFRM
    if (~use).any():
        notes.append(f"LITFRM {output} has no data for {int((~use).sum())} of {T} trains: "
                     "computed offline for those")


def frame_beam(run, train_ids: Sequence[int] | np.ndarray, cell_ids: Sequence[int] | np.ndarray,
               sources: BeamSources, **kwargs) -> FrameBeam:
    """`train_beam` for the frames' trains, cut to the frames ``(train_ids[i], cell_ids[i])``.

    Keyword arguments go to `train_beam` (``alignment``, ``ppl``, ``prefer_litfrm``, …).
    """
    tid = np.asarray(train_ids, np.uint64).ravel()
    table = train_beam(run, sources, np.unique(tid), **kwargs)
    return table.frames(tid, cell_ids)


def pulse_energies(run, sources: BeamSources, train_ids: Sequence[int] | np.ndarray | None = None, *,
                   prefer_sase_keys: bool = True) -> PulseEnergies:
    """XGM energy of each X-ray pulse of the instrument's SASE, per train (pulse order).

    The same code path `train_beam` takes; exposed so that it can be compared with
    EXtra's ``XGM.pulse_energy()`` and used for per-pulse work.
    """
    if not sources.xgm:
        raise BeamError("no XGM given: set sources.xgm")
    tids = np.unique(np.asarray(run.train_ids if train_ids is None else train_ids, np.uint64))
    pattern = _read_pattern(run, sources, tids)
    xgm = _Xgm(run, sources.xgm, sources.xgm_sase, sources.sase, tids, prefer_sase_keys)
    inst = instrument_pulses(pattern.tables, sources.sase) & pattern.present[:, None]
    n = inst.sum(axis=1)
    width = int(n.max()) if n.size else 0
    energy = np.zeros((tids.size, width), np.float32)
    sig = np.zeros((tids.size, width), np.float32)
    ok = np.zeros((tids.size, width), bool)
    if width:
        e_slot, s_slot, e_ok = xgm.slot_energies(slice(0, tids.size), pattern.tables, inst)
        r, c = np.nonzero(inst)
        rank = (np.cumsum(inst, axis=1) - 1)[r, c]
        energy[r, rank] = e_slot[r, c]
        sig[r, rank] = s_slot[r, c]
        ok[r, rank] = e_ok[r, c]
    return PulseEnergies(tids, energy, sig, ok, n, xgm.present, pattern.present, xgm.key if not xgm.split
                         else f"{xgm.key} split by the bunch pattern")


# -- discovery --------------------------------------------------------------------------------

def discover_beam_sources(run, *, instrument: str | None = None, detector_control: str | None = None,
                          timeserver: str | None = None, pp_decoder: str | None = None,
                          xgm: str | None = None, xgm_sase: int | None = None, litfrm: str | None = None,
                          ppl_bit: int | str | None = None, where: str = "the run") -> BeamSources:
    """`BeamSources` from the run's source list (`xfel_reduce.io.discovery`), overrides first.

    A source kind the run does not have is left None (its frames are flagged); several
    equally good candidates raise `xfel_reduce.io.discovery.DiscoveryError` naming the
    config key to set. ``ppl_bit`` may be a ``PPL_BITS`` name (``"LP_SPB"``).
    """
    detectors = [d for d in disc.find_detectors(run) if d.family.startswith("AGIPD")]
    if instrument is None:
        instrument = disc.guess_instrument(run, detectors or None)
    if instrument not in disc.INSTRUMENT_SASE:
        raise disc.DiscoveryError(f"cannot tell the instrument of {where} ({instrument!r}): "
                                  "set `instrument` (SPB, FXE, MID, HED, SCS, SQS)")
    sase = disc.INSTRUMENT_SASE[instrument]

    def choose(kind: str, configured: str | None, candidates: Sequence[Any]) -> str | None:
        if configured or candidates:
            return disc.resolve(run, kind, configured, candidates, where=where)
        return None

    timeserver = choose("timeserver", timeserver, disc.find_timeservers(run, instrument))
    pp_decoder = choose("pulse-pattern decoder", pp_decoder, disc.find_pulse_pattern_decoders(run, instrument))
    xgms = disc.find_xgms(run, instrument)
    if xgm:
        xgm = disc.resolve(run, "XGM", xgm if xgm in run.all_sources else _device(xgm), xgms, where=where)
    else:
        # Only XGMs on the instrument's tunnel measure its pulses (SASE1 and 3 share one).
        xgm = choose("XGM", None, [c for c in xgms if c.output and on_line(c.source, sase)])
    if litfrm is None:
        found = disc.find_lit_frame_finders(run)
        devices = sorted({_device(c.source) for c in found})
        ours = [d for d in devices if disc.prefix(d) == instrument] or devices
        if len(ours) > 1:
            raise disc.DiscoveryError(f"{len(ours)} lit-frame finders in {where}: {', '.join(ours)}; "
                                      "set `sources.lit_frame_finder` to the one of the detector")
        litfrm = ours[0] if ours else None
    if detector_control is None:
        cands = [c for d in detectors for c in disc.find_detector_controls(run, d)]
        if cands:
            detector_control = disc.pick("detector control", cands, where=where).source
    if ppl_bit is None:
        ppl_bit = int(INSTRUMENT_PPL.get(instrument, ebp.PPL_BITS.LP_SPB))
    elif isinstance(ppl_bit, str):
        if ppl_bit not in ebp.PPL_BITS.__members__:
            raise BeamError(f"unknown pump-laser bit {ppl_bit!r}: one of {', '.join(ebp.PPL_BITS.__members__)}")
        ppl_bit = int(ebp.PPL_BITS[ppl_bit])
    return BeamSources(sase=sase, detector_control=detector_control, timeserver=timeserver,
                       pp_decoder=pp_decoder, xgm=xgm, xgm_sase=xgm_sase, litfrm=litfrm,
                       ppl_bit=int(ppl_bit), instrument=instrument)


__all__ = [
    "Alignment", "BeamError", "BeamSources", "DECIDED_BY", "DetectorTiming", "FrameBeam", "NO_FRAME",
    "NO_MAPPING", "NO_PATTERN", "NO_XGM", "PPL_UNKNOWN", "PplOffset", "PulseEnergies", "REASON_TEXT",
    "ReferenceDelay", "TrainBeam", "alignment_from_litfrm", "alignment_shift", "describe_reason",
    "discover_beam_sources", "frame_beam", "instrument_pulses", "line_pulses", "on_line", "pulse_energies",
    "read_detector_timing", "train_beam",
]
