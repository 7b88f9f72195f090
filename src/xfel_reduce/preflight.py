"""Pre-flight inspection of a EuXFEL run folder (``xfel-reduce inspect RUN_DIR``).

Before a config is written, a user wants to know what a run holds: which detector
and modules, how many trains, sequences and frames, the memory cells, which
timeserver / pulse-pattern decoder and XGM, where the detector's control device is
recorded, the instrument and photon energy, and what is wrong with it (missing
modules or files, trains without data, ``trainId == 0`` rows). `inspect_run`
gathers that from the run's source list, ``INDEX`` counts and a few small keys,
through ``extra_data.RunDirectory`` — no detector image data are read, so it takes
well under a second on a small run. Works on RAW and on proc (CORR) folders.

The source look-ups live in `xfel_reduce.io.discovery`, which the workflow reuses.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import discovery as disc

#: Open files in parallel (extra-data's loky pool) only above this many files: the
#: pool costs ~1.5–2 s to start, far more than opening a small run serially.
PARALLEL_OPEN_FILES = 200
#: Trains sampled at each end of the run for memory-cell and pulse-id ranges.
SAMPLE_TRAINS = 8

#: Detector control keys worth showing, per family (read only if present).
CONTROL_KEYS = {
    "AGIPD": ("bunchStructure.nPulses", "bunchStructure.firstPulse", "bunchStructure.repetitionRate",
              "integrationTime", "gainModeIndex", "patternTypeIndex", "patternType"),
    "JUNGFRAU": ("storageCells", "storageCellStart", "exposureTime", "exposureTimer",
                 "gainMode", "settings"),
}
_FILE_RE = re.compile(r"^(?P<prefix>[A-Z]+)-R(?P<run>\d{4})-(?P<agg>\w+?)-S(?P<seq>\d{5})\.h5$")


class InspectError(ValueError):
    """The path is not a readable EuXFEL run folder (the message says what to point at)."""


# -- result records ---------------------------------------------------------------------

@dataclass
class ModuleInfo:
    """One detector module: its source, aggregator and data coverage."""

    module: int
    source: str
    aggregator: str
    sequences: int
    trains_with_data: int
    trains_without_data: int
    frames_per_train: dict[str, int | None]


@dataclass
class ControlInfo:
    """A detector control device, the aggregators it is recorded in, and its settings."""

    source: str
    aggregators: list[str]
    reason: str
    rank: int
    settings: dict[str, Any]


@dataclass
class DetectorInfo:
    """A detector found in the run."""

    name: str
    family: str
    label: str
    corrected: bool
    n_modules: int
    modules_present: list[int]
    missing_modules: list[int]
    modules: list[ModuleInfo]
    trains_with_data: int
    trains_all_modules: int
    trains_some_modules: int
    trains_inconsistent_frames: int
    frames_per_train: dict[str, int | None]
    memory_cells: dict[str, Any]
    pulse_ids: dict[str, Any]
    controls: list[ControlInfo]


@dataclass
class SourceInfo:
    """A train-level source (timeserver, pulse-pattern decoder, lit-frame finder)."""

    source: str
    aggregators: list[str]
    reason: str
    rank: int
    trains_with_data: int | None

    def describe(self) -> str:
        return f"{self.source} in {', '.join(self.aggregators)} ({self.reason})"


@dataclass
class XgmInfo:
    """An XGM and what it records."""

    source: str
    control: str | None
    output: str | None
    device_class: str | None
    aggregators: list[str]
    reason: str
    rank: int
    sase_resolved: bool
    sase_keys: list[str]
    trains_with_data: int | None
    wavelength_nm: float | None
    photon_energy_kev: float | None


@dataclass
class RunInfo:
    """What `inspect_run` found; `to_dict` for JSON, `format` for people."""

    path: str
    run: int | None
    proposal: int | None
    data_kind: str
    format_version: str | None
    format_versions: dict[str, int]
    n_files: int
    unreadable_files: list[dict[str, str]]
    aggregators: dict[str, dict[str, Any]]
    n_trains: int
    first_train: int | None
    last_train: int | None
    train_id_zero_rows: int
    train_id_padding_rows: int
    suspect_trains: int
    instrument: str | None
    instrument_reason: str
    sase: int | None
    detectors: list[DetectorInfo]
    timeservers: list[SourceInfo]
    pulse_pattern_decoders: list[SourceInfo]
    lit_frame_finders: list[SourceInfo]
    xgms: list[XgmInfo]
    photon_energy_kev: float | None
    wavelength_nm: float | None
    photon_energy_source: str | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: NaN and infinities become None, numpy types Python."""
        return _jsonable(asdict(self))

    def format(self) -> str:
        """Human-readable multi-line report."""
        return _format(self)


# -- entry point ------------------------------------------------------------------------

def inspect_run(path: str | os.PathLike) -> RunInfo:
    """Inspect a run folder (RAW or proc) without reading detector data.

    Parameters
    ----------
    path
        A run folder such as ``<proposal>/raw/r0010`` or ``<proposal>/proc/r0010``.

    Returns
    -------
    RunInfo
        Everything found; ``problems`` lists what needs attention.

    Raises
    ------
    InspectError
        If *path* does not exist, is not a folder, holds no HDF5 files, or none of
        its files can be read as EuXFEL data.
    """
    t0 = time.perf_counter()
    folder = Path(path)
    run, skipped = _open(folder)
    problems: list[str] = []
    notes: list[str] = []

    files = list(run.files)
    versions = Counter(str(f.format_version) for f in files)
    aggregators, kinds = _aggregators(files, skipped)
    data_kind = "proc" if kinds == {"CORR"} else "raw" if kinds == {"RAW"} else \
        "mixed (" + ", ".join(sorted(kinds)) + ")" if kinds else "unknown"
    for name, error in skipped.items():
        problems.append(f"file {name} could not be read ({error}); extra-data skipped it. "
                        "Re-transfer it, or exclude its sequence (`exclude_sequences`).")
    zero_rows, pad_rows, suspect = _train_id_checks(files, problems)
    train_ids = np.asarray(run.train_ids, dtype=np.uint64)
    n_trains = len(train_ids)

    if len(kinds) > 1:
        problems.append(f"the folder mixes {' and '.join(sorted(kinds))} files: keep raw and proc runs apart")
    for agg, info in aggregators.items():
        if info["missing_sequences"]:
            problems.append(f"aggregator {agg}: sequence(s) {_ranges(info['missing_sequences'])} missing "
                            f"(have {_ranges(info['sequences'])})")
    if len(versions) > 1:
        notes.append("files of several format versions: " + ", ".join(
            f"{v} ({n} files)" for v, n in sorted(versions.items())))

    # Proc folders hold only detector data: the timeserver, XGM and detector control
    # are in the raw run, so their absence here is a note, not a problem.
    is_proc = kinds == {"CORR"}
    absent = notes if is_proc else problems
    if is_proc:
        raw = folder.resolve().parent.parent / "raw" / folder.name
        notes.append("proc folder: train-level sources (timeserver, XGM, detector control) are "
                     "recorded in the raw run" + (f" — inspect {raw}" if raw.is_dir() else ""))

    detectors = disc.find_detectors(run)
    instrument, instrument_reason = disc.explain_instrument(run, detectors)
    where = str(folder)
    det_infos = [_detector_info(run, d, train_ids, problems, notes, absent) for d in detectors]
    if not detectors:
        problems.append("no detector found: " + disc.LOOKED_FOR["detector"])
    elif len(detectors) > 1:
        problems.append(f"{len(detectors)} detectors ({', '.join(d.name for d in detectors)}): set "
                        f"`{disc.CONFIG_KEYS['detector']}` to the one to reduce")

    timeservers = [_source_info(run, c, "data.bunchPatternTable") for c in disc.find_timeservers(run, instrument)]
    decoders = [_source_info(run, c, None) for c in disc.find_pulse_pattern_decoders(run, instrument)]
    litfrm = [_source_info(run, c, None) for c in disc.find_lit_frame_finders(run)]
    _check_beam_sources(timeservers, decoders, n_trains, where, problems, notes, absent)

    xgm_cands = disc.find_xgms(run, instrument)
    xgms = [_xgm_info(run, c, problems) for c in xgm_cands]
    sase = disc.INSTRUMENT_SASE.get(instrument) if instrument else None
    chosen_xgm = _check_xgms(xgm_cands, xgms, n_trains, sase, where, problems, notes, absent)

    energy = wavelength = energy_src = None
    for x in ([chosen_xgm] if chosen_xgm else []) + xgms:
        if x.photon_energy_kev is not None:
            energy, wavelength, energy_src = x.photon_energy_kev, x.wavelength_nm, x.source
            break

    meta = _run_metadata(run, files)
    return RunInfo(
        path=str(folder.resolve()), run=meta[0], proposal=meta[1], data_kind=data_kind,
        format_version=versions.most_common(1)[0][0] if versions else None,
        format_versions=dict(sorted(versions.items())), n_files=len(files),
        unreadable_files=[{"file": k, "error": v} for k, v in skipped.items()],
        aggregators=aggregators, n_trains=n_trains,
        first_train=int(train_ids[0]) if n_trains else None,
        last_train=int(train_ids[-1]) if n_trains else None,
        train_id_zero_rows=zero_rows, train_id_padding_rows=pad_rows, suspect_trains=suspect,
        instrument=instrument, instrument_reason=instrument_reason, sase=sase,
        detectors=det_infos, timeservers=timeservers, pulse_pattern_decoders=decoders,
        lit_frame_finders=litfrm, xgms=xgms, photon_energy_kev=energy, wavelength_nm=wavelength,
        photon_energy_source=energy_src, problems=problems, notes=notes,
        elapsed_s=round(time.perf_counter() - t0, 4),
    )


# -- opening ----------------------------------------------------------------------------

def _open(folder: Path):
    """``RunDirectory`` with clear errors; also returns the files extra-data skipped."""
    import extra_data

    if not folder.exists():
        raise InspectError(f"{folder} does not exist: give a run folder such as <proposal>/raw/r0010")
    if folder.is_file():
        raise InspectError(f"{folder} is a file, not a run folder: give the folder that holds it "
                           f"({folder.parent})")
    try:
        listed = sorted(p.name for p in folder.iterdir()
                        if p.suffix == ".h5" and p.name.lower() != "overview.h5")
    except OSError as err:
        raise InspectError(f"cannot list {folder}: {err}") from err
    if not listed:
        sub = sorted(p.name for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"r\d{4}", p.name))
        hint = (f" It holds run folders ({', '.join(sub[:3])}{', …' if len(sub) > 3 else ''}): "
                f"give one of them." if sub else
                " Give a run folder such as <proposal>/raw/r0010 (files RAW-R0010-AGIPD00-S00000.h5, …).")
        raise InspectError(f"{folder} is not a run folder: it has no HDF5 (.h5) files." + hint)
    # extra-data reports the files it cannot open on stderr and carries on; catch
    # those lines to list them as problems, and pass anything else through.
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run = extra_data.RunDirectory(str(folder), parallelize=len(listed) > PARALLEL_OPEN_FILES)
    except Exception as err:
        raise InspectError(
            f"{folder} is not a readable run folder: none of its {len(listed)} HDF5 files could be "
            f"opened as EuXFEL data ({type(err).__name__}: {err}). Details:\n"
            + _indent(buf.getvalue().strip() or "(no details)")) from err
    skipped = _skipped_files(buf.getvalue())
    opened = {Path(f.filename).name for f in run.files}
    for name in listed:
        # A file can be missing without a message (e.g. filtered out); say so anyway.
        if name not in opened and name not in skipped:
            skipped[name] = "not opened by extra-data"
    return run, skipped


def _skipped_files(text: str) -> dict[str, str]:
    skipped: dict[str, str] = {}
    name = None
    rest = []
    for line in text.splitlines():
        m = re.match(r"^Skipping file (.+)$", line)
        e = re.match(r"^\s+\(error was: (.*)\)$", line)
        if m:
            name = m.group(1).strip()
            skipped[name] = "unreadable"
        elif e and name:
            skipped[name] = e.group(1)
        else:
            rest.append(line)
    if rest:
        print("\n".join(rest), file=sys.stderr)
    return skipped


def _aggregators(files, skipped: dict[str, str]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    seqs: dict[str, set[int]] = {}
    kinds: set[str] = set()
    for f in files:
        m = _FILE_RE.match(Path(f.filename).name)
        if m:
            seqs.setdefault(m.group("agg"), set()).add(int(m.group("seq")))
            kinds.add(m.group("prefix"))
    for name in skipped:  # unreadable files still belong to their aggregator's numbering
        m = _FILE_RE.match(name)
        if m:
            seqs.setdefault(m.group("agg"), set())
    out = {}
    for agg in sorted(seqs):
        have = sorted(seqs[agg])
        bad = sorted(int(m.group("seq")) for n in skipped if (m := _FILE_RE.match(n)) and m.group("agg") == agg)
        top = max(have + bad) if (have or bad) else -1
        out[agg] = {"sequences": have, "n_files": len(have), "unreadable_sequences": bad,
                    "missing_sequences": sorted(set(range(top + 1)) - set(have) - set(bad))}
    return out, kinds


def _train_id_checks(files, problems: list[str]) -> tuple[int, int, int]:
    """Rows with ``trainId == 0`` inside the data, padding rows, and suspect trains.

    Files are allocated in chunks, so zero rows after the last train are padding
    and normal; a zero *between* trains is a train the DAQ could not label.
    """
    zero_total = pad_total = suspect_total = 0
    zero_files, suspect_files = [], []
    for f in files:
        try:
            tids = f.file["INDEX/trainId"][:]
        except Exception as err:  # noqa: BLE001 - report, never crash the inspection
            problems.append(f"cannot read INDEX/trainId of {Path(f.filename).name}: {err}")
            continue
        nonzero = np.flatnonzero(tids)
        end = int(nonzero[-1]) + 1 if nonzero.size else 0
        zero = int(np.count_nonzero(tids[:end] == 0))
        pad_total += int(tids.size - end)
        if zero:
            zero_total += zero
            zero_files.append(Path(f.filename).name)
        flag = getattr(f, "validity_flag", None)
        bad = int(np.count_nonzero(~np.asarray(flag, bool))) if flag is not None else 0
        if bad:
            suspect_total += bad
            suspect_files.append(Path(f.filename).name)
    if zero_total:
        problems.append(f"{zero_total} INDEX row(s) with trainId 0 between trains in {_few(zero_files)}: "
                        "extra-data skips them, so their data are not used")
    if suspect_total:
        problems.append(f"{suspect_total} train(s) flagged suspect (INDEX/flag 0, or out of order in "
                        f"format 0.5) in {_few(suspect_files)}: extra-data keeps them by default")
    return zero_total, pad_total, suspect_total


def _run_metadata(run, files) -> tuple[int | None, int | None]:
    run_no = proposal = None
    try:
        meta = run.run_metadata()
        run_no = meta.get("runNumber")
        proposal = meta.get("proposalNumber")
    except Exception:  # format 0.5 has no METADATA run fields
        pass
    if run_no is None and files:
        m = _FILE_RE.match(Path(files[0].filename).name)
        run_no = int(m.group("run")) if m else None
    if proposal is None and files:
        proposal = getattr(files[0], "proposal", None)
    return (int(run_no) if run_no is not None else None,
            int(proposal) if proposal is not None else None)


# -- detectors --------------------------------------------------------------------------

def _detector_info(run, det: disc.DetectorSources, train_ids: np.ndarray, problems: list[str],
                   notes: list[str], absent: list[str]) -> DetectorInfo:
    counts = {}
    modules = []
    per_entry = 1
    for mod, src in det.modules.items():
        kd = run[src][det.data_key]
        c = np.asarray(kd.data_counts(labelled=False), dtype=np.int64)
        if det.family in ("JUNGFRAU",):
            # JUNGFRAU stores (cells, y, x) per train: frames per train = cells.
            per_entry = int(kd.entry_shape[0]) if len(kd.entry_shape) == 3 else 1
        counts[mod] = c * per_entry
        nz = counts[mod][counts[mod] > 0]
        modules.append(ModuleInfo(
            module=mod, source=src, aggregator=det.aggregators.get(mod, "?"),
            sequences=len(kd.files), trains_with_data=int(nz.size),
            trains_without_data=int(len(train_ids) - nz.size), frames_per_train=_spread(nz)))
    table = np.stack([counts[m] for m in det.modules]) if counts else np.zeros((0, len(train_ids)))
    present = table > 0
    n_present = present.sum(axis=0)
    any_data = n_present > 0
    all_mods = n_present == len(det.modules)
    # Within a train, every module with data should hold the same number of frames.
    masked = np.where(present, table, -1)
    hi = masked.max(axis=0)
    lo = np.where(present, table, np.iinfo(np.int64).max).min(axis=0)
    inconsistent = int(np.count_nonzero(any_data & (hi != lo)))
    frames = _spread(hi[any_data]) if any_data.any() else _spread(np.zeros(0))

    label = f"{det.name} ({det.label})"
    if det.missing_modules:
        problems.append(f"{label}: module(s) {_ranges(det.missing_modules)} missing — "
                        f"{len(det.modules)} of {len(det.expected_modules)} present; set `modules` "
                        "in the config to the ones recorded")
    for m in modules:
        if m.trains_without_data:
            problems.append(f"{label}: module {m.module} ({m.aggregator}) has no data in "
                            f"{m.trains_without_data} of {len(train_ids)} trains")
    partial = int(np.count_nonzero(any_data & ~all_mods))
    if partial and len(det.modules) > 1:
        problems.append(f"{label}: {partial} train(s) with data from only some modules")
    if inconsistent:
        problems.append(f"{label}: {inconsistent} train(s) where modules hold different frame counts")
    if not any_data.any():
        problems.append(f"{label}: no module has any data")

    cells, pulses = _id_ranges(run, det, counts, train_ids, problems)
    controls = []
    for c in disc.find_detector_controls(run, det):
        controls.append(ControlInfo(c.source, list(c.aggregators), c.reason, c.rank,
                                    _control_settings(run, c.source, det.family, problems)))
    if not controls and det.family in ("AGIPD1M", "AGIPD500K", "JUNGFRAU"):
        absent.append(f"{label}: no control source found ({disc.LOOKED_FOR['detector control']}): "
                        "bunch structure / gain settings cannot be read; set "
                        f"`{disc.CONFIG_KEYS['detector control']}` if it is recorded under another name")
    elif len([c for c in controls if c.rank == min(x.rank for x in controls)]) > 1:
        notes.append(f"{label}: several control candidates: {', '.join(c.source for c in controls)}")
    return DetectorInfo(
        name=det.name, family=det.family, label=det.label, corrected=det.corrected,
        n_modules=len(det.expected_modules), modules_present=sorted(det.modules),
        missing_modules=det.missing_modules, modules=modules,
        trains_with_data=int(any_data.sum()), trains_all_modules=int(all_mods.sum()),
        trains_some_modules=partial, trains_inconsistent_frames=inconsistent,
        frames_per_train=frames, memory_cells=cells, pulse_ids=pulses, controls=controls)


def _id_ranges(run, det: disc.DetectorSources, counts: dict[int, np.ndarray], train_ids: np.ndarray,
               problems: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Memory-cell and pulse-id ranges from a few trains at each end of the run."""
    keys = {"AGIPD1M": ("image.cellId", "image.pulseId"), "AGIPD500K": ("image.cellId", "image.pulseId"),
            "LPD1M": ("image.cellId", "image.pulseId"), "LPDMini": ("image.cellId", "image.pulseId"),
            "DSSC1M": ("image.cellId", "image.pulseId"), "JUNGFRAU": ("data.memoryCell", None)}
    cell_key, pulse_key = keys.get(det.family, (None, None))
    empty: dict[str, Any] = {"min": None, "max": None, "n": None, "key": cell_key, "sampled_trains": 0}
    with_data = [m for m in det.modules if counts[m].any()]
    if cell_key is None or not with_data:
        return empty, {"min": None, "max": None, "key": pulse_key}
    mod = with_data[0]
    idx = np.flatnonzero(counts[mod])
    idx = np.unique(np.concatenate([idx[:SAMPLE_TRAINS], idx[-SAMPLE_TRAINS:]]))
    from extra_data import by_id

    out = []
    for key in (cell_key, pulse_key):
        if key is None:
            out.append({"min": None, "max": None, "key": None})
            continue
        try:
            sd = run[det.modules[mod]]
            if key not in sd:
                out.append({"min": None, "max": None, "key": key})
                continue
            vals = sd[key].select_trains(by_id[train_ids[idx]]).ndarray().ravel()
        except Exception as err:  # noqa: BLE001
            problems.append(f"{det.name}: cannot read {key} of module {mod}: {type(err).__name__}: {err}")
            out.append({"min": None, "max": None, "key": key})
            continue
        rec: dict[str, Any] = {"min": int(vals.min()) if vals.size else None,
                               "max": int(vals.max()) if vals.size else None, "key": key}
        if key == cell_key:
            rec.update(n=int(np.unique(vals).size), sampled_trains=int(idx.size), module=mod)
        out.append(rec)
    return out[0], out[1]


def _control_settings(run, source: str, family: str, problems: list[str]) -> dict[str, Any]:
    keys = CONTROL_KEYS["AGIPD" if family.startswith("AGIPD") else family] if (
        family.startswith("AGIPD") or family in CONTROL_KEYS) else ()
    out: dict[str, Any] = {}
    sd = run[source]
    for key in keys:
        if key not in sd:
            continue
        try:
            kd = sd[key]
            if kd.entry_shape != ():
                continue
            vals = kd.ndarray()
        except Exception as err:  # noqa: BLE001
            problems.append(f"cannot read {source} {key}: {type(err).__name__}: {err}")
            continue
        out[key] = _summarise_values(vals)
    return out


def _summarise_values(vals: np.ndarray) -> Any:
    """One value if constant, a short list if few, else min/max."""
    if vals.size == 0:
        return None
    if vals.dtype.kind in "SO":
        vals = np.array([v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in vals])
    uniq = np.unique(vals)
    if uniq.size == 1:
        return uniq[0].item() if hasattr(uniq[0], "item") else uniq[0]
    if uniq.size <= 4 or vals.dtype.kind not in "iuf":
        return [u.item() if hasattr(u, "item") else u for u in uniq[:8]]
    return {"min": vals.min().item(), "max": vals.max().item()}


# -- beam sources -----------------------------------------------------------------------

def _trains_with(run, source: str, key: str | None) -> int | None:
    try:
        sd = run[source]
        kd = sd[key] if key and key in sd else sd[sd.one_key()] if sd.one_key() else None
        if kd is None:
            return None
        return int(np.count_nonzero(kd.data_counts(labelled=False)))
    except Exception:  # noqa: BLE001 - coverage is informative only
        return None


def _source_info(run, c: disc.Candidate, key: str | None) -> SourceInfo:
    if key and c.source in run.control_sources and ":" not in c.source:
        key = key.split(".", 1)[-1]  # old control timeservers: bunchPatternTable
    return SourceInfo(c.source, list(c.aggregators), c.reason, c.rank, _trains_with(run, c.source, key))


def _check_beam_sources(timeservers: list[SourceInfo], decoders: list[SourceInfo], n_trains: int,
                        where: str, problems: list[str], notes: list[str], absent: list[str]) -> None:
    if not timeservers and not decoders:
        absent.append("no timeserver or pulse-pattern decoder found: X-ray and pump-laser pulses "
                        "cannot be told from the bunch pattern (" + disc.LOOKED_FOR["timeserver"] + ")")
        return
    if timeservers:
        try:
            chosen = disc.pick("timeserver", timeservers, where=where)
        except disc.DiscoveryError as err:
            problems.append(str(err))
            return
        if chosen.trains_with_data is not None and chosen.trains_with_data < n_trains:
            problems.append(f"timeserver {chosen.source} has no data in "
                            f"{n_trains - chosen.trains_with_data} of {n_trains} trains")
        if chosen.rank >= 2:
            notes.append(f"timeserver {chosen.source} was found by its key; its name does not match "
                         "EXtra's pattern, so pass it explicitly to EXtra's XrayPulses (source=…)")


def _xgm_info(run, c: disc.XgmCandidate, problems: list[str]) -> XgmInfo:
    wl = energy = None
    if c.control and c.control in run.control_sources and disc.XGM_WAVELENGTH_KEY in run[c.control]:
        try:
            vals = np.asarray(run[c.control][disc.XGM_WAVELENGTH_KEY].ndarray(), dtype=np.float64)
            good = vals[np.isfinite(vals) & (vals > 0)]
            if good.size:
                wl = float(np.median(good))
                energy = round(disc.photon_energy_kev(wl), 4)
                wl = round(wl, 6)
        except Exception as err:  # noqa: BLE001
            problems.append(f"cannot read {c.control} {disc.XGM_WAVELENGTH_KEY}: {err}")
    trains = _trains_with(run, c.output, disc.XGM_DATA_KEY) if c.output else None
    return XgmInfo(c.source, c.control, c.output, c.device_class, list(c.aggregators), c.reason, c.rank,
                   c.sase_resolved, list(c.sase_keys), trains, wl, energy)


def _check_xgms(cands: Sequence[disc.XgmCandidate], xgms: list[XgmInfo], n_trains: int, sase: int | None,
                where: str, problems: list[str], notes: list[str], absent: list[str]) -> XgmInfo | None:
    if not cands:
        absent.append("no XGM found: pulse energies will be missing (" + disc.LOOKED_FOR["XGM"] + ")")
        return None
    try:
        chosen_c = disc.pick("XGM", cands, where=where)
    except disc.DiscoveryError as err:
        problems.append(str(err))
        return None
    chosen = xgms[list(cands).index(chosen_c)]
    if chosen.output is None:
        problems.append(f"XGM {chosen.source} has no pipeline output with {disc.XGM_DATA_KEY}: "
                        "no pulse-resolved energies")
    elif chosen.trains_with_data is not None and chosen.trains_with_data < n_trains:
        problems.append(f"XGM {chosen.output} has no data in {n_trains - chosen.trains_with_data} "
                        f"of {n_trains} trains")
    if sase in (1, 3) and not chosen.sase_resolved:
        resolved = [x.source for x in xgms if x.sase_resolved]
        notes.append(f"XGM {chosen.source} is not SASE-resolved (no intensitySa1TD/Sa3TD): on the "
                     "SASE1/3 line its intensityTD may count SASE1 and SASE3 pulses together"
                     + (f"; SASE-resolved: {', '.join(resolved)}" if resolved else ""))
    return chosen


# -- output helpers ---------------------------------------------------------------------

def _spread(values: np.ndarray) -> dict[str, int | None]:
    if values.size == 0:
        return {"min": None, "max": None, "most_common": None}
    uniq, n = np.unique(values, return_counts=True)
    return {"min": int(values.min()), "max": int(values.max()), "most_common": int(uniq[np.argmax(n)])}


def _ranges(nums: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0–2, 5"``."""
    nums = sorted(nums)
    if not nums:
        return "none"
    parts, start, prev = [], nums[0], nums[0]
    for n in list(nums[1:]) + [None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)


def _few(names: Sequence[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def _fmt_settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "no known settings keys"


def _format_aggregators(aggs: dict[str, dict[str, Any]]) -> str:
    # Group AGIPD00…AGIPD15 (same stem, same sequences) into one entry.
    groups: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for name, v in aggs.items():
        groups.setdefault((re.sub(r"\d+$", "", name), tuple(v["sequences"])), []).append(name)
    parts = []
    for (_, seqs), names in groups.items():
        who = ", ".join(names) if len(names) <= 3 else f"{names[0]} … {names[-1]} ({len(names)})"
        parts.append(f"{who}: {len(seqs)} seq" + (f" (S{_ranges(list(seqs))})" if len(seqs) > 1 else ""))
    return "; ".join(parts)


def _format(info: RunInfo) -> str:
    lines = []
    add = lines.append
    head = f"run {info.run}" if info.run is not None else "run ?"
    if info.proposal is not None:
        head += f", proposal {info.proposal}"
    add(f"Run folder    {info.path}")
    add(f"              {head}; {info.data_kind} data; format {info.format_version}; "
        f"{info.n_files} files in {len(info.aggregators)} aggregators")
    add(f"Instrument    {info.instrument or 'unknown'} ({info.instrument_reason})"
        + (f"; SASE{info.sase}" if info.sase else ""))
    trains = f"{info.n_trains}"
    if info.n_trains:
        trains += f" ({info.first_train} … {info.last_train})"
    add(f"Trains        {trains}")
    add("Aggregators   " + _format_aggregators(info.aggregators))
    for d in info.detectors:
        state = "corrected" if d.corrected else "raw"
        add(f"Detector      {d.name} ({d.label}, {state}): {len(d.modules_present)} of {d.n_modules} "
            f"modules ({_ranges(d.modules_present)})"
            + (f"; missing {_ranges(d.missing_modules)}" if d.missing_modules else ""))
        fpt = d.frames_per_train
        cells = d.memory_cells
        cell_txt = (f"memory cells {cells['min']}–{cells['max']} ({cells['n']} distinct)"
                    if cells.get("min") is not None else "memory cells unknown")
        pulse_txt = (f"; pulse ids {d.pulse_ids['min']}–{d.pulse_ids['max']}"
                     if d.pulse_ids.get("min") is not None else "")
        fpt_txt = (f"{fpt['min']}" if fpt["min"] == fpt["max"] else f"{fpt['min']}–{fpt['max']} "
                   f"(mostly {fpt['most_common']})") if fpt["min"] is not None else "none"
        add(f"              frames/train {fpt_txt}; {cell_txt}{pulse_txt}; trains with data "
            f"{d.trains_with_data}/{info.n_trains} (all modules {d.trains_all_modules})")
        groups: dict[tuple[int, int, int], list[ModuleInfo]] = {}
        for m in d.modules:  # one line per group of modules that look alike
            groups.setdefault((m.sequences, m.trains_with_data, m.trains_without_data), []).append(m)
        for (n_seq, n_with, n_without), mods in groups.items():
            aggs = mods[0].aggregator if len(mods) == 1 else f"{mods[0].aggregator}…{mods[-1].aggregator}"
            add(f"    module{'s' if len(mods) > 1 else ' '} {_ranges([m.module for m in mods]):<6} {aggs:<17} "
                f"{n_seq} seq, data in {n_with} trains" + (f", {n_without} without" if n_without else ""))
        for c in d.controls:
            add(f"    control   {c.source} in {', '.join(c.aggregators)}: {_fmt_settings(c.settings)}")
        if not d.controls:
            add("    control   none found")
    if not info.detectors:
        add("Detector      none found")
    for label, items in (("Timeserver", info.timeservers), ("PP decoder", info.pulse_pattern_decoders),
                         ("Lit frames", info.lit_frame_finders)):
        if not items and label == "Lit frames":
            continue
        if not items:
            add(f"{label:<14}none found")
        for s in items:
            cover = f"; data in {s.trains_with_data}/{info.n_trains} trains" if s.trains_with_data is not None else ""
            add(f"{label:<14}{s.source} in {', '.join(s.aggregators)}{cover}")
    for x in info.xgms:
        sase = ("SASE-resolved (" + ", ".join(x.sase_keys) + ")") if x.sase_resolved else "not SASE-resolved"
        cover = f"; data in {x.trains_with_data}/{info.n_trains} trains" if x.trains_with_data is not None else ""
        add(f"XGM           {x.source} (output {x.output or 'none'}) in {', '.join(x.aggregators)}; "
            f"{sase}{cover}")
    if not info.xgms:
        add("XGM           none found")
    if info.photon_energy_kev is not None:
        add(f"Photon energy {info.photon_energy_kev:.3f} keV (λ = {info.wavelength_nm:.5f} nm, "
            f"{info.photon_energy_source} pulseEnergy.wavelengthUsed)")
    else:
        add("Photon energy not recorded")
    if info.notes:
        add("Notes")
        lines.extend(f"  - {n}" for n in info.notes)
    add(f"Problems      {len(info.problems) or 'none'}")
    for p in info.problems:
        first, *rest = p.splitlines()
        add(f"  - {first}")
        lines.extend(f"    {r}" for r in rest)
    add(f"(inspected in {info.elapsed_s:.2f} s)")
    return "\n".join(lines)


__all__ = ["InspectError", "RunInfo", "inspect_run"]
