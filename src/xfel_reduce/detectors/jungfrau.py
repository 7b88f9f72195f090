"""JUNGFRAU as European XFEL records it: sources, files, gain encoding, gain modes, geometry.

Facts, with where they come from:

* **Sources.** One instrument source per module, ``<detector>/DET/JNGFR<nn>:daqOutput``
  (raw) and ``<detector>/CORR/JNGFR<nn>:daqOutput`` (corrected), and one control
  source ``<detector>/DET/CONTROL`` (``storageCells``, ``storageCellStart``,
  ``exposureTime``, ``settings``, ``gainMode``, …).  Detectors: ``SPB_IRDA_JF4M``
  (JNGFR01–08), ``FXE_XAD_JF1M`` (JNGFR01–02), ``FXE_XAD_JF500K`` (JNGFR03),
  ``HED_IA1_JF500K1`` (JNGFR01).  Modules are numbered from 1, and extra-data /
  extra-geom number a detector's modules from 1 however its sources are named
  (``first_modno`` in ``extra_data.components.JUNGFRAU``).  Older runs name module
  sources ``…/DET/MODULE_<n>`` or ``…/DET/RECEIVER-<n>`` (extra-data's JUNGFRAU
  component accepts all three).
* **Files.** Each module has its own aggregator (``RAW-R0012-JNGFR01-S00000.h5``) and the
  control its own (``RAW-R0012-JNGFRCTRL00-S00000.h5``), each with its own sequence
  numbering (``extra_data.tests.make_examples.make_jungfrau_run``, named after
  p002732 r0012).  Sequence *k* of one aggregator says nothing about sequence *k*
  of another: control values are found by source, over the run's control files.
* **Raw words.** ``data.adc`` uint16 ``(cells, 512, 1024)`` holds the **14-bit** value
  and ``data.gain`` uint8 the two gain bits (0 → G0, 1 → G1, 3 → G2; 2 does not
  occur), with ``data.memoryCell``, ``data.frameNumber`` and ``data.timestamp`` per
  cell.  The facility's Karabo receiver splits the detector's 16-bit word into
  these two datasets (``JungfrauReceiver::unpackRawData`` in
  European-XFEL/Karabo-slsDetectors, ``slsReceiver/src/JungfrauReceiver.cc``:
  ``adc = word & 0x3FFF``, ``gain = (word & 0xC000) >> 14``, since 2016); extra-data's
  mock JUNGFRAU module (``extra_data.tests.mockdata.jungfrau``) and EXtra read the
  same two keys, and neither knows of gain bits inside ``data.adc``.  So there is
  no facility "legacy" layout with the gain in bits 14–15 of ``data.adc`` to read.
* **Gain modes.** Since 2022 the control key ``gainMode`` holds ``dynamic``,
  ``fixg0``, ``fixg1``, ``fixg2``, ``forceswitchg1``, ``forceswitchg2`` and
  ``settings`` only the CDS gain (``gain0``, ``highgain0``); before, ``settings``
  held both (``dynamicgain``, ``dynamichg0``, ``fixgain1``, ``fixgain2``,
  ``forceswitchg1``, ``forceswitchg2``; the options of ``JungfrauControl`` in
  Karabo-slsDetectors).  EXtra's ``extra.calibration.JUNGFRAUConditions`` reads
  both; :func:`normalise_gain_mode` is our own reading of the same facts.
* **Darks.** One dark run per gain stage: G0 in ``dynamic`` (no light, so every
  pixel stays in G0) or ``fixg0``; G1 in ``forceswitchg1`` (for dynamic-gain data)
  or ``fixg1`` (for fixed-gain data); G2 likewise.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

FAMILY = "JUNGFRAU"
MODULE_SHAPE = (512, 1024)
PIXEL_SIZE_M = 75e-6
MAX_MEMORY_CELLS = 16
#: JUNGFRAU modules are numbered from 1 (``JNGFR01``), in file names and in extra-geom.
FIRST_MODULE = 1

# -- raw words ------------------------------------------------------------------------
#: ``data.adc`` holds a 14-bit value.
ADC_BITS = 14
ADC_MASK = (1 << ADC_BITS) - 1
#: ``data.gain`` value of each gain stage G0, G1, G2 (the two bits the detector sends).
GAIN_BITS = np.array([0, 1, 3], np.uint8)
#: Gain stage of every possible ``data.gain`` byte: 0 → G0, 1 → G1, 3 → G2; every
#: other value cannot come from the detector and is decoded as G2 and flagged
#: (:data:`WRONG_GAIN`), as the correction of gain bits ``2`` always was.
STAGE_OF_GAIN = np.full(256, 2, np.uint8)
STAGE_OF_GAIN[[0, 1, 3]] = [0, 1, 2]
#: ``data.gain`` bytes that no gain stage produces.
WRONG_GAIN = np.ones(256, bool)
WRONG_GAIN[[0, 1, 3]] = False


def decode_gain(gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gain stage (0, 1, 2) and "impossible value" flag of ``data.gain`` bytes."""
    gain = np.asarray(gain, np.uint8)
    return STAGE_OF_GAIN[gain], WRONG_GAIN[gain]


def detector_words(adc: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """The detector's 16-bit words (value | gain bits << 14) from ``data.adc`` and ``data.gain``.

    The inverse of the facility receiver's split; it feeds the fused correction
    kernel, which decodes the gain from the top two bits.  Impossible ``data.gain``
    values become the never-sent code ``2`` (decoded as G2 and flagged).
    """
    gain = np.asarray(gain, np.uint8)
    words = np.bitwise_and(adc, np.uint16(ADC_MASK), dtype=np.uint16)
    # Two vectorised passes (~1 ms per frame); a lookup table would take twice as long.
    words |= np.left_shift(gain, np.uint16(ADC_BITS), dtype=np.uint16)
    if gain.size and int(gain.max()) > 3:  # bytes the detector cannot send: rare, patch them
        bad = gain > 3
        words[bad] = (words[bad] & np.uint16(ADC_MASK)) | np.uint16(2 << ADC_BITS)
    return words


# -- detectors, sources, files ----------------------------------------------------------
RAW_SOURCE = "{detector}/DET/JNGFR{module:02d}:daqOutput"
CORR_SOURCE = "{detector}/CORR/JNGFR{module:02d}:daqOutput"
CONTROL_SOURCE = "{detector}/DET/CONTROL"
RAW_AGGREGATOR = "JNGFR{module:02d}"
CONTROL_AGGREGATOR = "JNGFRCTRL00"
#: Detector used when neither the config nor the data name one (the XES spectrometer at HED).
DEFAULT_DETECTOR = "HED_IA1_JF500K1"


@dataclass(frozen=True)
class JungfrauDetector:
    """One JUNGFRAU detector: its name and the module numbers in its source names."""

    name: str
    modules: tuple[int, ...]
    instrument: str = ""

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    def raw_source(self, module: int) -> str:
        return RAW_SOURCE.format(detector=self.name, module=int(module))

    def corr_source(self, module: int) -> str:
        return CORR_SOURCE.format(detector=self.name, module=int(module))

    @property
    def control_source(self) -> str:
        return CONTROL_SOURCE.format(detector=self.name)

    def geometry_index(self, module: int) -> int:
        """Index of a module in the detector's extra-geom geometry (modules counted from 1)."""
        if int(module) not in self.modules:
            raise ValueError(f"{self.name} has modules {list(self.modules)}, not JNGFR{int(module):02d}")
        return self.modules.index(int(module))


#: The JUNGFRAU detectors named in the facility's data (FACILITY.md, extra-data's mock runs).
DETECTORS: dict[str, JungfrauDetector] = {d.name: d for d in (
    JungfrauDetector("SPB_IRDA_JF4M", tuple(range(1, 9)), "SPB"),
    JungfrauDetector("FXE_XAD_JF1M", (1, 2), "FXE"),
    JungfrauDetector("FXE_XAD_JF500K", (3,), "FXE"),
    JungfrauDetector("HED_IA1_JF500K1", (1,), "HED"),
)}


def detector(name: str | None = None, modules: Sequence[int] | None = None) -> JungfrauDetector:
    """A detector by name; unknown names (other setups) get ``modules``, default ``(1,)``."""
    name = name or DEFAULT_DETECTOR
    known = DETECTORS.get(name)
    if modules is None:
        return known or JungfrauDetector(name, (FIRST_MODULE,))
    return JungfrauDetector(name, tuple(int(m) for m in modules), known.instrument if known else "")


def raw_filename(run: int, module: int, sequence: int) -> str:
    """``RAW-R0012-JNGFR01-S00000.h5``."""
    return f"RAW-R{int(run):04d}-{RAW_AGGREGATOR.format(module=int(module))}-S{int(sequence):05d}.h5"


def corr_filename(run: int, module: int, sequence: int) -> str:
    """``CORR-R0012-JNGFR01-S00000.h5``."""
    return f"CORR-R{int(run):04d}-{RAW_AGGREGATOR.format(module=int(module))}-S{int(sequence):05d}.h5"


def control_filename(run: int, sequence: int = 0) -> str:
    """``RAW-R0012-JNGFRCTRL00-S00000.h5``: the control aggregator's own sequence numbering."""
    return f"RAW-R{int(run):04d}-{CONTROL_AGGREGATOR}-S{int(sequence):05d}.h5"


def module_file_pattern(module: int, kind: str = "RAW") -> str:
    """Glob of one module's sequence files in a run directory."""
    return f"{kind}-R*-{RAW_AGGREGATOR.format(module=int(module))}-S*.h5"


def control_files(run_dir: str | os.PathLike) -> list[Path]:
    """The run's JUNGFRAU control aggregator files (all sequences), sorted."""
    return sorted(Path(p) for p in glob.glob(os.path.join(str(run_dir), f"RAW-R*-{CONTROL_AGGREGATOR}-S*.h5")))


# Module sources in every naming the facility has used (JNGFR03, MODULE_3, RECEIVER-3);
# the detector part must look like a JUNGFRAU name (…JF4M, …JF500K1, …JNGFR, …JUNGF…).
_MODULE_SOURCE_RE = re.compile(
    r"^(?P<detector>[^/]*(?:JNGFR|JUNGF|_JF)[^/]*)/(?P<kind>DET|CORR)/"
    r"(?:JNGFR|MODULE_|RECEIVER-)(?P<module>\d+)(?::[A-Za-z]+)?$")


@dataclass(frozen=True)
class ModuleSource:
    """A JUNGFRAU module source name, parsed."""

    name: str
    detector: str
    module: int
    corrected: bool

    @property
    def control_source(self) -> str:
        return CONTROL_SOURCE.format(detector=self.detector)

    @property
    def corr_name(self) -> str:
        """The name the corrected data of this raw source get (``/DET/`` → ``/CORR/``)."""
        return self.name.replace("/DET/", "/CORR/", 1)


def parse_module_source(name: str) -> ModuleSource | None:
    """Detector, module number and kind of a JUNGFRAU module source, or None."""
    m = _MODULE_SOURCE_RE.match(name)
    if not m:
        return None
    return ModuleSource(name, m["detector"], int(m["module"]), m["kind"] == "CORR")


def module_sources(names: Iterable[str]) -> list[ModuleSource]:
    """The JUNGFRAU module sources among source names, sorted by detector and module."""
    found = [s for s in map(parse_module_source, names) if s is not None]
    return sorted(found, key=lambda s: (s.detector, s.module, s.corrected))


def find_module_source(names: Iterable[str], module: int, corrected: bool | None = None,
                       detector: str | None = None) -> ModuleSource:
    """The one source of JUNGFRAU module ``module`` among ``names``.

    Parameters
    ----------
    corrected
        True: only ``…/CORR/…`` sources; False: only ``…/DET/…``; None: either,
        preferring ``CORR``.
    detector
        Detector name, needed only when several JUNGFRAU detectors have this module.

    Raises
    ------
    LookupError
        No such source, or several (message lists what there is).
    """
    names = list(names)
    cands = [s for s in module_sources(names) if s.module == int(module)
             and (detector is None or s.detector == detector)
             and (corrected is None or s.corrected == corrected)]
    if corrected is None and any(s.corrected for s in cands):
        cands = [s for s in cands if s.corrected]
    if len(cands) == 1:
        return cands[0]
    all_jf = [s.name for s in module_sources(names)]
    if not cands:
        raise LookupError(f"no JUNGFRAU source of module JNGFR{int(module):02d}"
                          + (f" of detector {detector}" if detector else "")
                          + f" (JUNGFRAU sources found: {all_jf or 'none'})")
    raise LookupError(f"{len(cands)} JUNGFRAU sources of module JNGFR{int(module):02d}: "
                      f"{[s.name for s in cands]}; name the detector to choose one")


# -- gain modes ------------------------------------------------------------------------
#: ``gainMode`` values of the control (since 2022).
GAIN_MODES = ("dynamic", "fixg0", "fixg1", "fixg2", "forceswitchg1", "forceswitchg2")
#: ``settings`` values of the control before 2022 (gain mode and CDS gain in one key),
#: with the gain mode and the CDS-gain setting each stands for today.
LEGACY_SETTINGS: dict[str, tuple[str, str]] = {
    "dynamicgain": ("dynamic", "gain0"),
    "dynamichg0": ("dynamic", "highgain0"),
    "fixgain1": ("fixg1", "gain0"),
    "fixgain2": ("fixg2", "gain0"),
    "forceswitchg1": ("forceswitchg1", "gain0"),
    "forceswitchg2": ("forceswitchg2", "gain0"),
}
#: ``settings`` values since 2022 (the CDS gain only).
SETTINGS = ("gain0", "highgain0")
#: Gain stage a dark taken in each gain mode characterises.
DARK_STAGE_OF_MODE = {"dynamic": 0, "fixg0": 0, "forceswitchg1": 1, "fixg1": 1,
                      "forceswitchg2": 2, "fixg2": 2}
#: Gain modes of the usual darks for dynamic-gain data, per stage (what the simulator records).
DARK_MODE = {0: "dynamic", 1: "forceswitchg1", 2: "forceswitchg2"}


@dataclass(frozen=True)
class GainMode:
    """A recorded JUNGFRAU gain mode, in today's vocabulary.

    Attributes
    ----------
    mode
        ``dynamic``, ``fixg0``, ``fixg1``, ``fixg2``, ``forceswitchg1`` or ``forceswitchg2``.
    setting
        CDS gain: ``gain0`` or ``highgain0``.
    recorded
        The value as recorded, and ``key`` the control key it was read from
        (``gainMode`` since 2022, ``settings`` before).
    """

    mode: str
    setting: str
    recorded: str
    key: str

    @property
    def dark_stage(self) -> int:
        return DARK_STAGE_OF_MODE[self.mode]

    @property
    def family(self) -> str:
        """``adaptive`` (forced switching, for dynamic-gain data), ``fixed`` or ``any`` (dynamic G0)."""
        if self.mode.startswith("forceswitch"):
            return "adaptive"
        return "fixed" if self.mode.startswith("fix") else "any"


def normalise_gain_mode(gain_mode: str | bytes | None = None, settings: str | bytes | None = None) -> GainMode:
    """Today's gain mode from the recorded ``gainMode`` and/or ``settings`` values.

    ``gainMode`` (recorded since 2022) wins; without it, ``settings`` must hold one
    of the pre-2022 values (:data:`LEGACY_SETTINGS`).

    Raises
    ------
    ValueError
        Unknown values, or neither key recorded.
    """
    gm, st = _text(gain_mode), _text(settings)
    if gm is not None:
        if gm.lower() not in GAIN_MODES:
            raise ValueError(f"unknown JUNGFRAU gainMode {gm!r} (known: {', '.join(GAIN_MODES)})")
        setting = st.lower() if st and st.lower() in SETTINGS else (
            LEGACY_SETTINGS[st.lower()][1] if st and st.lower() in LEGACY_SETTINGS else "gain0")
        return GainMode(gm.lower(), setting, gm, "gainMode")
    if st is not None:
        if st.lower() in LEGACY_SETTINGS:
            mode, setting = LEGACY_SETTINGS[st.lower()]
            return GainMode(mode, setting, st, "settings")
        if st.lower() in SETTINGS:
            raise ValueError(f"JUNGFRAU settings={st!r} is the post-2022 CDS-gain setting, but no "
                             "gainMode was recorded: the gain mode is unknown")
        raise ValueError(f"unknown JUNGFRAU settings value {st!r} (pre-2022 values: "
                         f"{', '.join(LEGACY_SETTINGS)}; since 2022: {', '.join(SETTINGS)} with gainMode)")
    raise ValueError("neither gainMode nor settings recorded: the JUNGFRAU gain mode is unknown")


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else None
        if value is None:
            return None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode()
    return str(value).strip()


def read_gain_mode(data, control: str) -> GainMode | None:
    """The gain mode recorded by a JUNGFRAU control source of an extra-data collection.

    Returns None when the collection has no such source or it records neither
    ``gainMode`` nor ``settings`` (e.g. extra-data's mock control device).
    """
    from extra_data import PropertyNameError

    if control not in data.control_sources:
        return None
    values = {}
    for key in ("gainMode", "settings"):
        try:
            values[key] = data.get_run_value(control, key)
        except PropertyNameError:  # not recorded (older devices, extra-data's mock control)
            values[key] = None
    if values["gainMode"] is None and values["settings"] is None:
        return None
    return normalise_gain_mode(values["gainMode"], values["settings"])


def read_run_gain_mode(run_dir: str | os.PathLike, control: str) -> tuple[GainMode | None, list[Path]]:
    """The gain mode recorded in a run directory, and the files it was looked for in.

    Looks in the control aggregator (``*-JNGFRCTRL*-S*.h5``, every sequence), then, for
    runs written without one, in the ``DA`` aggregators — by source name, never by
    pairing sequence numbers with the module files.
    """
    from ..io.runs import open_file

    files = control_files(run_dir) or sorted(Path(run_dir).glob("RAW-R*-DA*-S*.h5"))
    for path in files:
        mode = read_gain_mode(open_file(path), control)
        if mode is not None:
            return mode, files
    return None, files


def gain_mode_value(stage: int, vocabulary: str = "current", mode: str | None = None) -> tuple[str, str]:
    """``(gainMode, settings)`` values a control records for a dark of ``stage``.

    ``vocabulary``: ``current`` (since 2022: ``gainMode`` + ``settings='gain0'``) or
    ``legacy`` (before: ``settings`` only, e.g. ``dynamicgain``; returned as ``("", settings)``).
    """
    mode = mode or DARK_MODE[int(stage)]
    if mode not in GAIN_MODES:
        raise ValueError(f"unknown JUNGFRAU gain mode {mode!r} (known: {', '.join(GAIN_MODES)})")
    if vocabulary == "current":
        return mode, "gain0"
    if vocabulary == "legacy":
        legacy = [k for k, (m, s) in LEGACY_SETTINGS.items() if m == mode and s == "gain0"]
        if not legacy:
            raise ValueError(f"gain mode {mode!r} has no pre-2022 settings value")
        return "", legacy[0]
    raise ValueError(f"gain-mode vocabulary must be 'current' or 'legacy', not {vocabulary!r}")


class DarkGainModes:
    """Checks that each dark run's recorded gain mode fits the stage it is used for.

    All darks of one set must also belong to one family: forced switching
    (``forceswitchg1/2``, for dynamic-gain data) or fixed gain (``fixg0/1/2``).
    """

    def __init__(self, config_key: str = "calibration.jungfrau.dark_runs"):
        self.config_key = config_key
        self.modes: dict[int, tuple[GainMode, str]] = {}

    def check(self, stage: int, mode: GainMode, where: str, control: str) -> None:
        """Raise ``ValueError`` (what, where, what to set) if ``mode`` does not fit ``stage``."""
        if mode.dark_stage != int(stage):
            expected = [m for m, s in DARK_STAGE_OF_MODE.items() if s == int(stage)]
            legacy = [k for k, (m, _) in LEGACY_SETTINGS.items() if DARK_STAGE_OF_MODE[m] == int(stage)]
            raise ValueError(
                f"JUNGFRAU dark run {where} was recorded with {control}.{mode.key}={mode.recorded!r} "
                f"(a G{mode.dark_stage} dark) but {self.config_key} uses it for gain stage G{stage}, "
                f"which needs gainMode {' or '.join(expected)} (before 2022: settings "
                f"{' or '.join(legacy)}): list the dark runs in the order G0, G1, G2")
        families = {m.family for m, _ in self.modes.values()} | {mode.family}
        if {"adaptive", "fixed"} <= families:
            seen = ", ".join(f"G{s}: {m.recorded!r} ({w})" for s, (m, w) in sorted(self.modes.items()))
            raise ValueError(
                f"JUNGFRAU dark run {where} ({mode.key}={mode.recorded!r}) mixes fixed-gain and "
                f"forced-switching darks with {seen}: take G1 and G2 darks in forceswitchg1/2 for "
                f"dynamic-gain data or in fixg1/2 for fixed-gain data, and set {self.config_key}")
        self.modes[int(stage)] = (mode, where)

    def as_dict(self) -> dict[str, str]:
        """``{"G0": "dynamic", …}`` of the checked darks."""
        return {f"G{s}": m.mode for s, (m, _) in sorted(self.modes.items())}


# -- geometry --------------------------------------------------------------------------
def geometry(n_modules: int = 1, geom_file: str | os.PathLike | None = None):
    """An ``extra_geom.JUNGFRAUGeometry`` of ``n_modules`` modules.

    From a CrystFEL geometry file when given, else extra-geom's example layout (modules
    side by side with the facility's ASIC gaps) — enough where only the modules'
    relative placement matters.
    """
    from extra_geom import JUNGFRAUGeometry

    if geom_file:
        geom = JUNGFRAUGeometry.from_crystfel_geom(str(geom_file))
    else:
        geom = JUNGFRAUGeometry.example(int(n_modules))
    if geom.n_modules != int(n_modules):
        raise ValueError(f"JUNGFRAU geometry {geom_file or 'example'} has {geom.n_modules} modules, "
                         f"the detector {n_modules}")
    return geom


def module_pixel_positions(det: JungfrauDetector, modules: Sequence[int], distance_m: float,
                           geom=None) -> np.ndarray:
    """Pixel centres ``(len(modules), 512, 1024, 3)`` in metres, z = sample distance.

    Module ``m`` of the detector is entry ``det.geometry_index(m)`` of its extra-geom
    geometry (modules counted from 1, as extra-data's JUNGFRAU component does).
    """
    geom = geom if geom is not None else geometry(det.n_modules)
    pos = np.asarray(geom.get_pixel_positions(), np.float64)
    out = np.stack([pos[det.geometry_index(m)] for m in modules]).astype(np.float32)
    out[..., 2] += np.float32(distance_m)
    return out


def flat_module_positions(distance_m: float) -> np.ndarray:
    """One flat module centred on the beam, ``(1, 512, 1024, 3)`` metres (a spectrometer's)."""
    yy, xx = np.mgrid[0:MODULE_SHAPE[0], 0:MODULE_SHAPE[1]].astype(np.float32)
    pos = np.empty((1,) + MODULE_SHAPE + (3,), np.float32)
    pos[0, ..., 0] = (xx - (MODULE_SHAPE[1] - 1) / 2) * PIXEL_SIZE_M
    pos[0, ..., 1] = (yy - (MODULE_SHAPE[0] - 1) / 2) * PIXEL_SIZE_M
    pos[0, ..., 2] = distance_m
    return pos
