"""Find the sources a reduction needs in a run's own source list.

Where the config names no source, the workflow and ``xfel-reduce inspect`` look
them up here (GitHub issue 12): the timeserver by key and name pattern, the
pulse-pattern decoder by class, name or keys, XGMs by device class, name or keys,
multi-module detectors by source-name matching in the style of extra-data's
``identify_multimod_detectors``, and each detector's control devices by name and
keys. Every ``find_*`` function returns a list of candidates, best first; `pick`
turns such a list into the one source to use, or raises `DiscoveryError` listing
what was found and the config key to set.

Only the source list, key names, ``RUN`` device classes and dataset shapes are
read here, never detector data, so discovery costs milliseconds even on a long run.
The patterns follow the facility's packages (extra-data's detector classes,
EXtra's ``XrayPulses`` and ``XGM`` discovery) but are written for this project:
EXtra itself is not imported because its import alone takes ~2.5 s.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import numpy as np

#: EuXFEL instrument prefixes and the SASE each one is on (FACILITY.md).
INSTRUMENT_SASE = {"SPB": 1, "FXE": 1, "MID": 2, "HED": 2, "SCS": 3, "SQS": 3, "SXP": 3}
#: Prefixes of tunnel (machine-side) devices shared by the instruments of one SASE:
#: they say which SASE, not which instrument.
TUNNEL_PREFIXES = {"SA1", "SA2", "SA3", "LA1", "LA2", "LA3"}

#: The config keys that override discovery, one per kind (issue 12). The error
#: messages of `pick` name them, so a user knows what to set.
CONFIG_KEYS = {
    "timeserver": "sources.timeserver",
    "pulse-pattern decoder": "sources.pulse_pattern_decoder",
    "XGM": "sources.xgm",
    "detector": "sources.detector",
    "detector control": "sources.detector_control",
}

#: What each kind of discovery looks for, for "none found" messages.
LOOKED_FOR = {
    "timeserver": "sources with the key data.bunchPatternTable (instrument) or "
                  "bunchPatternTable (control), e.g. SPB_RR_SYS/TSYS/TIMESERVER:outputBunchPattern",
    "pulse-pattern decoder": "control sources of class PulsePatternDecoder, named like "
                             "SPB_RR_SYS/MDL/BUNCH_PATTERN, or with the keys sase1.nPulses / "
                             "maindump.pulseIds",
    "XGM": "control sources of class DoocsXGM/DoocsXGMD/DoocsXGMReduced, named "
           "…XGM/DOOCS…, or instrument sources with the key data.intensityTD",
    "detector": "instrument sources of AGIPD 1M/500K, LPD, DSSC, JUNGFRAU or ePix "
                "modules (…/DET/<n>CH0:xtdf, …/CORR/<n>CH0:output, …/DET/JNGFR<nn>:daqOutput, …)",
    "detector control": "control sources of the detector (AGIPD …/MDL/FPGA_COMP with "
                        "bunchStructure.*, JUNGFRAU …/DET/CONTROL, …)",
}

# -- patterns (learnt from EXtra's XrayPulses; written for this project) ----------
#: Timeserver device names as EXtra matches them. Real names outside this pattern
#: exist (``SPB_EXP_SYS/TSYS/TIMESERVER``), so it only ranks candidates found by key.
TIMESERVER_DEVICE_RE = re.compile(r"^\w{3}_(BR|RR)_(UTC|SYS)/TSYS/(TIMESERVER|X2TIMER\d)$")
TIMESERVER_OUTPUT = "outputBunchPattern"
TIMESERVER_CLASS = "TimeServer"
PPDECODER_RE = re.compile(r"^\w{3}_(BR|RR)_(UTC|SYS)/(MDL|TSYS)/(BUNCH|PULSE|PP)\w*_(DECODER|PATTERN)$")
PPDECODER_CLASS = "PulsePatternDecoder"
PPDECODER_KEYS = ("sase1.nPulses", "sase2.nPulses", "sase3.nPulses", "maindump.pulseIds")

XGM_CLASSES = ("DoocsXGM", "DoocsXGMD", "DoocsXGMReduced")
XGM_NAME_RE = re.compile(r"XGMD?/DOOCS")
XGM_DATA_KEY = "data.intensityTD"
#: Keys that make an XGM SASE-resolved (EXtra's ``XGM`` tests the control keys).
XGM_SASE_OUTPUT_KEYS = ("data.intensitySa1TD", "data.intensitySa3TD")
XGM_SASE_CONTROL_KEYS = ("pulseEnergy.numberOfSa1BunchesActual", "pulseEnergy.numberOfSa3BunchesActual")
XGM_WAVELENGTH_KEY = "pulseEnergy.wavelengthUsed"

LIT_FRAME_FINDER_RE = re.compile(r"^[^/]+/REDU/LITFRM(:output)?$")


@dataclass(frozen=True)
class DetectorFamily:
    """One kind of multi-module detector and how its module sources are named."""

    family: str
    label: str
    name_pattern: str          # regex of the detector name (part before /DET/)
    module_pattern: str        # regex after "<name>/(DET|CORR)/", with group "mod"
    n_modules: int             # modules of the full detector (0: from the name / data)
    first_module: int          # number of the first module in source names
    data_key: str              # main data key, checked for raw vs corrected
    control_keys: tuple[str, ...] = ()   # keys that identify its control device

    def source_re(self) -> re.Pattern:
        return re.compile(rf"^(?P<name>{self.name_pattern})/(?P<kind>DET|CORR)/{self.module_pattern}$")


_XTDF_MODULE = r"(?P<mod>\d+)CH\d+:(xtdf|output)"
#: Detector families, after extra-data's ``multimod_detectors`` classes (same name
#: patterns) plus ePix, which extra-data has no component for. Order matters only
#: for names that could match two families, which these patterns avoid.
DETECTOR_FAMILIES: tuple[DetectorFamily, ...] = (
    DetectorFamily("AGIPD1M", "AGIPD 1M", r"[^/]+_AGIPD1M[^/]*", _XTDF_MODULE, 16, 0,
                   "image.data", ("bunchStructure.nPulses",)),
    DetectorFamily("AGIPD500K", "AGIPD 500K", r"[^/]+AGIPD500K[^/]*", _XTDF_MODULE, 8, 0,
                   "image.data", ("bunchStructure.nPulses",)),
    DetectorFamily("LPD1M", "LPD 1M", r"[^/]+_LPD1M[^/]*", _XTDF_MODULE, 16, 0, "image.data"),
    DetectorFamily("LPDMini", "LPD Solo/Mini", r"[^/]+_LPD_?(SOLO|MINI)[^/]*", _XTDF_MODULE, 0, 0,
                   "image.data"),
    DetectorFamily("DSSC1M", "DSSC 1M", r"[^/]+_DSSC1M[^/]*", _XTDF_MODULE, 16, 0, "image.data"),
    DetectorFamily("JUNGFRAU", "JUNGFRAU", r"[^/]+_(JNGFR|JF[14]M|JUNGF|JF|JF500K\d?)[^/]*",
                   r"(MODULE_|RECEIVER-|JNGFR)(?P<mod>\d+)(:daqOutput|:output)?", 0, 1,
                   "data.adc", ("storageCells", "exposureTime")),
    DetectorFamily("EPIX", "ePix", r"[^/]*(EPIX|EPX)[^/]*", r"RECEIVER(-(?P<mod>\d+))?:(daqOutput|output)",
                   1, 0, "data.image.pixels"),
)
_FAMILY = {f.family: f for f in DETECTOR_FAMILIES}
_FAMILY_RES = [(f, f.source_re()) for f in DETECTOR_FAMILIES]
#: Module count from the JUNGFRAU name (JF4M = 8 modules of 0.5 M pixels).
_JF_SIZE_RE = re.compile(r"JF(4M|1M|500K)")
_JF_MODULES = {"4M": 8, "1M": 2, "500K": 1}


class DiscoveryError(ValueError):
    """A source could not be found in the run, or several fit (message says what to set)."""


@dataclass(frozen=True)
class Candidate:
    """A source found by discovery.

    Attributes
    ----------
    kind
        What it is: ``"timeserver"``, ``"XGM"``, ``"detector control"``, …
    source
        The source name to put in the config.
    reason
        Why it was taken for one (which key, class or name pattern matched).
    rank
        0 is best; `pick` chooses among the best-ranked candidates only.
    aggregators
        The aggregators (file groups such as ``DA01``) whose files hold it.
    """

    kind: str
    source: str
    reason: str
    rank: int = 0
    aggregators: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f" in {', '.join(self.aggregators)}" if self.aggregators else ""
        return f"{self.source}{where} ({self.reason})"


@dataclass(frozen=True)
class XgmCandidate(Candidate):
    """An XGM: ``source`` is the device (control) name, ``output`` its pipeline."""

    control: str | None = None
    output: str | None = None
    device_class: str | None = None
    sase_resolved: bool = False
    sase_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class DetectorSources:
    """A multi-module detector found in the run (``source`` is the detector name)."""

    source: str
    family: str
    label: str
    n_modules: int
    first_module: int
    modules: Mapping[int, str]
    aggregators: Mapping[int, str]
    data_key: str
    corrected: bool
    rank: int = 0
    kind: str = "detector"
    reason: str = ""

    @property
    def name(self) -> str:
        return self.source

    @property
    def expected_modules(self) -> list[int]:
        """Module numbers of the full detector, in source-name numbering."""
        expected = list(range(self.first_module, self.first_module + self.n_modules))
        if not set(self.modules) <= set(expected):
            # Numbering we cannot place (e.g. FXE_XAD_JF500K/DET/JNGFR03, a 500K
            # numbered after the JF1M beside it): judge only what is there.
            return sorted(self.modules)
        return expected

    @property
    def missing_modules(self) -> list[int]:
        return sorted(set(self.expected_modules) - set(self.modules))

    def describe(self) -> str:
        state = "corrected" if self.corrected else "raw"
        return (f"{self.source} ({self.label}, {state}, {len(self.modules)} of "
                f"{len(self.expected_modules)} modules)")


C = TypeVar("C")


# -- helpers ----------------------------------------------------------------------------

def _legacy(run) -> Mapping[str, str]:
    # Older extra-data has no legacy sources; modern proc runs alias /DET/ names to
    # /CORR/ ones, and those aliases must not be counted twice (nor touched: access
    # through them warns).
    return getattr(run, "legacy_sources", None) or {}


def instrument_sources(run) -> list[str]:
    """Instrument (pipeline) sources, without legacy aliases, sorted."""
    legacy = _legacy(run)
    return sorted(s for s in run.instrument_sources if s not in legacy)


def control_sources(run) -> list[str]:
    """Control (slow) sources, without legacy aliases, sorted."""
    legacy = _legacy(run)
    return sorted(s for s in run.control_sources if s not in legacy)


def source_aggregators(run, source: str) -> tuple[str, ...]:
    """The aggregators (``AGIPD00``, ``DA01``, ``AGIPD1MCTRL00``, …) holding a source."""
    return tuple(sorted({f.aggregator for f in run[source].files if f.aggregator}))


def has_key(run, source: str, key: str) -> bool:
    """Whether a source has a key (control keys with or without ``.value``)."""
    try:
        return key in run[source]
    except Exception:  # a damaged file must not stop discovery
        return False


def device_class(run, source: str) -> str | None:
    """The Karabo class of a control source (``RUN/<source>/classId``), if recorded."""
    if source not in run.control_sources:
        return None
    try:
        cls = run[source].device_class
    except Exception:
        return None
    if isinstance(cls, bytes):
        cls = cls.decode(errors="replace")
    return cls or None


def domain(source: str) -> str:
    """The first part of a source name, e.g. ``SPB_DET_AGIPD1M-1``."""
    return source.split("/", 1)[0]


def prefix(source: str) -> str:
    """The area prefix of a source name, e.g. ``SPB`` or ``SA1``."""
    return source.split("_", 1)[0].split("/", 1)[0]


# -- timeserver and pulse-pattern decoder -----------------------------------------------

def find_timeservers(run, instrument: str | None = None) -> list[Candidate]:
    """Sources that carry the bunch pattern table, best first.

    Any instrument source with ``data.bunchPatternTable`` (or, in old runs, a control
    source with ``bunchPatternTable``) is a candidate. Names matching EXtra's
    timeserver pattern, or of class ``TimeServer``, rank first; within each, those
    with the run's instrument prefix (when *instrument* is given) rank before the rest.
    """
    found: list[Candidate] = []
    controls = set(run.control_sources)
    for src in instrument_sources(run):
        if not has_key(run, src, "data.bunchPatternTable"):
            continue
        device, _, channel = src.partition(":")
        by_name = bool(TIMESERVER_DEVICE_RE.match(device)) and channel == TIMESERVER_OUTPUT
        by_class = device in controls and device_class(run, device) == TIMESERVER_CLASS
        found.append(_timeserver_candidate(run, src, by_name, by_class, instrument))
    for src in control_sources(run):
        if has_key(run, src, "bunchPatternTable") and f"{src}:{TIMESERVER_OUTPUT}" not in run.instrument_sources:
            by_name = bool(TIMESERVER_DEVICE_RE.match(src))
            by_class = device_class(run, src) == TIMESERVER_CLASS
            found.append(_timeserver_candidate(run, src, by_name, by_class, instrument, control=True))
    return sorted(found, key=lambda c: (c.rank, c.source))


def _timeserver_candidate(run, src: str, by_name: bool, by_class: bool, instrument: str | None,
                          control: bool = False) -> Candidate:
    key = "bunchPatternTable (control)" if control else "data.bunchPatternTable"
    why = [f"key {key}"]
    if by_class:
        why.append(f"class {TIMESERVER_CLASS}")
    why.append("name matches EXtra's timeserver pattern" if by_name
               else "name does not match EXtra's timeserver pattern: pass it to EXtra explicitly")
    rank = 0 if (by_name or by_class) else 2
    if instrument and prefix(src) != instrument:
        rank += 1
    return Candidate("timeserver", src, "; ".join(why), rank, source_aggregators(run, src))


def find_pulse_pattern_decoders(run, instrument: str | None = None) -> list[Candidate]:
    """Pulse-pattern decoder control sources (the timeserver's alternative), best first."""
    found = []
    for src in control_sources(run):
        by_class = device_class(run, src) == PPDECODER_CLASS
        by_name = bool(PPDECODER_RE.match(src))
        keys = [k for k in PPDECODER_KEYS if has_key(run, src, k)]
        if not (by_class or by_name or keys):
            continue
        why = ([f"class {PPDECODER_CLASS}"] if by_class else []) + \
              (["name matches the decoder pattern"] if by_name else []) + \
              ([f"keys {', '.join(keys)}"] if keys else [])
        rank = 0 if (by_class or by_name) and keys else 1 if keys else 2
        if instrument and prefix(src) != instrument:
            rank += 1
        found.append(Candidate("pulse-pattern decoder", src, "; ".join(why), rank,
                               source_aggregators(run, src)))
    return sorted(found, key=lambda c: (c.rank, c.source))


# -- XGM --------------------------------------------------------------------------------

def find_xgms(run, instrument: str | None = None) -> list[XgmCandidate]:
    """XGMs in the run, best first.

    A device is an XGM if its control source has an XGM class, or its name contains
    ``XGM/DOOCS`` or ``XGMD/DOOCS`` (EXtra's two tests), or its ``:output`` pipeline
    has ``data.intensityTD``. With *instrument* given, the instrument's own XGM
    (e.g. ``SPB_XTD9_XGM`` at SPB) ranks before tunnel XGMs (``SA1_XTD2_XGM``).
    """
    controls = control_sources(run)
    inst = set(instrument_sources(run))
    devices: dict[str, list[str]] = {}
    for src in controls:
        cls = device_class(run, src)
        if cls in XGM_CLASSES:
            devices.setdefault(src, []).append(f"class {cls}")
        elif XGM_NAME_RE.search(src):
            devices.setdefault(src, []).append("name …XGM/DOOCS…")
    for src in inst:
        device, _, channel = src.partition(":")
        if channel and has_key(run, src, XGM_DATA_KEY):
            devices.setdefault(device, []).append(f"{src} has {XGM_DATA_KEY}")
    found = []
    for device, why in devices.items():
        control = device if device in run.control_sources else None
        output = f"{device}:output" if f"{device}:output" in inst else None
        if output is None:  # an unusual channel name: take the one with the key
            output = next((s for s in sorted(inst) if s.startswith(device + ":")
                           and has_key(run, s, XGM_DATA_KEY)), None)
        sase_keys = tuple([k for k in XGM_SASE_OUTPUT_KEYS if output and has_key(run, output, k)]
                          + [k for k in XGM_SASE_CONTROL_KEYS if control and has_key(run, control, k)])
        aggs = sorted(set(source_aggregators(run, control) if control else ())
                      | set(source_aggregators(run, output) if output else ()))
        rank = 0 if not instrument or prefix(device) == instrument else 1
        found.append(XgmCandidate(
            "XGM", device, "; ".join(why), rank, tuple(aggs), control=control, output=output,
            device_class=device_class(run, control) if control else None,
            sase_resolved=bool(sase_keys), sase_keys=sase_keys))
    return sorted(found, key=lambda c: (c.rank, c.source))


# -- detectors and their control --------------------------------------------------------

def find_detectors(run) -> list[DetectorSources]:
    """Multi-module detectors (and ePix cameras) in the run, sorted by name.

    Module sources are matched by name as extra-data's detector classes do; where a
    detector has both ``/CORR/`` and ``/DET/`` sources, the corrected ones are taken
    (extra-data's preference). Whether the data are corrected is decided from the
    name (``/CORR/``) or, for older proc runs with raw names, from the data type.
    """
    matches: dict[tuple[str, str], dict[str, dict[int, str]]] = {}
    for src in instrument_sources(run):
        for fam, source_re in _FAMILY_RES:
            m = source_re.match(src)
            if m:
                mod = int(m.group("mod")) if m.group("mod") is not None else fam.first_module
                matches.setdefault((fam.family, m.group("name")), {}).setdefault(m.group("kind"), {})[mod] = src
                break
    found = []
    for (family, name), by_kind in sorted(matches.items(), key=lambda kv: kv[0][1]):
        fam = _FAMILY[family]
        modules = by_kind.get("CORR") or by_kind["DET"]
        corrected = "CORR" in by_kind or all(_looks_corrected(run, fam, s) for s in modules.values())
        n = fam.n_modules
        if family == "JUNGFRAU":
            size = _JF_SIZE_RE.search(name)
            n = _JF_MODULES[size.group(1)] if size else max(modules) - fam.first_module + 1
        elif n == 0:
            n = len(modules)
        aggs = {m: (source_aggregators(run, s) or ("?",))[0] for m, s in modules.items()}
        found.append(DetectorSources(
            name, family, fam.label, n, fam.first_module, dict(sorted(modules.items())),
            dict(sorted(aggs.items())), fam.data_key, corrected,
            reason=f"{len(modules)} module source(s) named like {fam.label} modules"))
    return found


def _looks_corrected(run, fam: DetectorFamily, source: str) -> bool:
    # Old proc runs keep the raw names: raw AGIPD has the extra (data, gain) axis;
    # other raw detector data are integers, corrected are floats.
    try:
        kd = run[source][fam.data_key]
    except Exception:
        return False
    if fam.family.startswith("AGIPD"):
        return len(kd.entry_shape) == 2
    return not np.issubdtype(kd.dtype, np.integer)


def find_detector_controls(run, detector: DetectorSources) -> list[Candidate]:
    """Control devices of a detector, best first, with the aggregators they live in.

    AGIPD: ``…/MDL/FPGA_COMP`` or any control source with ``bunchStructure.nPulses``
    (the class, ``AgipdComposite``/``Agipd2Composite``, is reported when recorded, but
    the facility's mock runs do not record it); JUNGFRAU: ``<name>/DET/CONTROL``
    or control sources of the same device with ``storageCells``/``exposureTime``;
    other families: control sources whose name starts with the detector name.
    Sources on the detector's instrument whose device part shares the detector's
    token (``AGIPD1M``, ``AGIPD500K2G``) rank first.
    """
    fam = _FAMILY[detector.family]
    token = _detector_token(detector.name)
    found = []
    for src in control_sources(run):
        why = []
        rank = 0
        if fam.family.startswith("AGIPD"):
            if src.endswith("/MDL/FPGA_COMP"):
                why.append("name …/MDL/FPGA_COMP")
            keys = [k for k in fam.control_keys if has_key(run, src, k)]
            if keys:
                why.append(f"key {', '.join(keys)}")
            rank = 0 if len(why) == 2 else 1  # both the name and the keys: surely it
        elif fam.family == "JUNGFRAU":
            if src == f"{detector.name}/DET/CONTROL":
                why.append("name <detector>/DET/CONTROL")
            elif domain(src) == detector.name and any(has_key(run, src, k) for k in fam.control_keys):
                why.append(f"device of {detector.name} with {'/'.join(fam.control_keys)}")
                rank = 1
        elif domain(src) == detector.name:
            why.append(f"device of {detector.name}")
        if not why:
            continue
        related = prefix(src) == prefix(detector.name) and (
            domain(src) == detector.name or (token is not None and token in domain(src)))
        if not related:  # e.g. a second AGIPD's FPGA_COMP on another instrument
            rank += 2
        cls = device_class(run, src)
        if cls:
            why.append(f"class {cls}")
        found.append(Candidate("detector control", src, "; ".join(why), rank,
                               source_aggregators(run, src)))
    return sorted(found, key=lambda c: (c.rank, c.source))


def _detector_token(name: str) -> str | None:
    # "SPB_DET_AGIPD1M-1" -> "AGIPD1M"; "HED_DET_AGIPD500K2G" -> "AGIPD500K2G": the
    # control devices are named after the same token (SPB_IRU_AGIPD1M1, HED_EXP_AGIPD500K2G).
    m = re.search(r"(AGIPD\w*?)(-\d+)?$", domain(name))
    return m.group(1) if m else None


def find_lit_frame_finders(run) -> list[Candidate]:
    """Outputs of the online lit-frame finder (``…/REDU/LITFRM``), preferred by FACILITY.md."""
    return [Candidate("lit-frame finder", s, "name …/REDU/LITFRM", 0, source_aggregators(run, s))
            for s in sorted(set(instrument_sources(run)) | set(control_sources(run)))
            if LIT_FRAME_FINDER_RE.match(s)]


# -- instrument -------------------------------------------------------------------------

def instrument_votes(run) -> Counter:
    """Instrument prefixes counted once per device domain (tunnel devices excluded)."""
    domains = {domain(s) for s in set(instrument_sources(run)) | set(control_sources(run))}
    return Counter(p for p in (prefix(d) for d in domains) if p in INSTRUMENT_SASE)


def guess_instrument(run, detectors: Sequence[DetectorSources] | None = None) -> str | None:
    """The instrument a run was taken at, or None if the sources do not say.

    In order: the instrument in the file path (``/gpfs/exfel/exp/SPB/…``), the prefix
    of the detector(s) when they agree, the most common instrument prefix among the
    device names (each device counted once; tunnel devices such as ``SA1_XTD2_XGM``
    do not count). A tie gives None.
    """
    return explain_instrument(run, detectors)[0]


def explain_instrument(run, detectors: Sequence[DetectorSources] | None = None) -> tuple[str | None, str]:
    """`guess_instrument` with the reason, for reports."""
    for f in run.files[:1]:
        inst = getattr(f, "instrument", None)
        if inst in INSTRUMENT_SASE:
            return inst, "from the file path"
    if detectors is None:
        detectors = find_detectors(run)
    dets = {prefix(d.name) for d in detectors} & set(INSTRUMENT_SASE)
    if len(dets) == 1:
        inst = dets.pop()
        return inst, f"from the detector name {', '.join(d.name for d in detectors)}"
    votes = instrument_votes(run).most_common()
    if not votes:
        return None, "no source has an instrument prefix (SPB, FXE, MID, HED, SCS, SQS, SXP)"
    if len(votes) > 1 and votes[0][1] == votes[1][1]:
        return None, f"sources of several instruments: {_votes_text(votes)}"
    return votes[0][0], f"most device names start with it ({_votes_text(votes)})"


def _votes_text(votes: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{k} {n}" for k, n in votes)


# -- choosing one -----------------------------------------------------------------------

def pick(kind: str, candidates: Sequence[C], config_key: str | None = None, *, where: str = "the run") -> C:
    """The one candidate to use, or a `DiscoveryError` that lists them and the key to set.

    Parameters
    ----------
    kind
        What is sought, e.g. ``"timeserver"``; used in the message.
    candidates
        From a ``find_*`` function (best first), or plain source names. Among
        candidates with a ``rank``, only the best-ranked ones compete: a single one
        of them is chosen even if lower-ranked ones exist.
    config_key
        The config key that names the source instead (default `CONFIG_KEYS`).
    where
        The run, for the message (e.g. its folder).
    """
    key = config_key or CONFIG_KEYS.get(kind, "sources")
    if not candidates:
        looked = LOOKED_FOR.get(kind)
        raise DiscoveryError(
            f"no {kind} found in {where}" + (f": looked for {looked}" if looked else "")
            + f". If the run has one under another name, set `{key}` in the config to its source name.")
    if len(candidates) == 1:
        return candidates[0]
    best = min(getattr(c, "rank", 0) for c in candidates)
    top = [c for c in candidates if getattr(c, "rank", 0) == best]
    if len(top) == 1:
        return top[0]
    listing = "\n".join(f"  - {_describe(c)}" for c in candidates)
    raise DiscoveryError(
        f"{len(top)} {kind} candidates in {where} fit equally well:\n{listing}\n"
        f"Set `{key}` in the config to the one to use.")


def _describe(c: Any) -> str:
    return c.describe() if hasattr(c, "describe") else str(c)


def resolve(run, kind: str, configured: str | None, candidates: Sequence[C] | None = None,
            config_key: str | None = None, *, where: str = "the run") -> str:
    """The source name to use for *kind*: the configured one (checked), else discovered.

    A configured name that is not in the run raises `DiscoveryError` listing the
    candidates discovery would offer, so a typo is caught before any data are read.
    """
    key = config_key or CONFIG_KEYS.get(kind, "sources")
    if candidates is None:
        candidates = _FINDERS[kind](run)
    if configured:
        if configured in run.all_sources or any(getattr(c, "source", c) == configured for c in candidates):
            return configured
        offer = ", ".join(getattr(c, "source", str(c)) for c in candidates) or "none"
        raise DiscoveryError(f"`{key}: {configured}` is not a source of {where}; "
                             f"{kind} candidates found: {offer}. Correct `{key}` or remove it to discover.")
    chosen = pick(kind, candidates, key, where=where)
    return getattr(chosen, "source", chosen)


_FINDERS = {
    "timeserver": find_timeservers,
    "pulse-pattern decoder": find_pulse_pattern_decoders,
    "XGM": find_xgms,
    "detector": find_detectors,
}


def photon_energy_kev(wavelength_nm: float) -> float:
    """Photon energy in keV from a wavelength in nm (hc = 1.239841984 keV·nm)."""
    return 1.239841984 / wavelength_nm


__all__ = [
    "CONFIG_KEYS", "Candidate", "DETECTOR_FAMILIES", "DetectorSources", "DiscoveryError",
    "XgmCandidate", "explain_instrument", "find_detector_controls", "find_detectors",
    "find_lit_frame_finders", "find_pulse_pattern_decoders", "find_timeservers", "find_xgms",
    "guess_instrument", "instrument_votes", "photon_energy_kev", "pick", "resolve",
    "source_aggregators",
]
