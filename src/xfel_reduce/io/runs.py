"""Run discovery and reading EuXFEL files with clear errors.

Everything that opens input data goes through here so that a missing run, a missing
module, a truncated file or a train with missing frames is reported in the same
words: what, where (file, train), and what to do about it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..config import TRAINS_PER_CHUNK


class InputDataError(RuntimeError):
    """Input data are missing, corrupt or inconsistent (message says what to do)."""


_SEQ_RE = re.compile(r"^(RAW|CORR)-R(\d{4})-(\w+?)-S(\d{5})\.h5$")


def run_dir(base: str | Path, kind: str, run: int) -> Path:
    """``<base>/<raw|proc>/r0042``."""
    return Path(base) / kind / f"r{int(run):04d}"


def require_run_dir(path: Path, what: str = "run") -> Path:
    if not path.is_dir():
        raise InputDataError(
            f"{what} directory {path} does not exist: check the run number and "
            "`proposal_dir` in the config (is the run transferred? is it a typo?)"
        )
    return path


def list_sequences(run_path: Path, aggregator: str = "AGIPD00") -> list[int]:
    """Sequence numbers present for one aggregator (file listing only)."""
    seqs = []
    for p in Path(run_path).glob(f"*-{aggregator}-S*.h5"):
        m = _SEQ_RE.match(p.name)
        if m:
            seqs.append(int(m.group(4)))
    return sorted(seqs)


_RAW_MODULE_RE = re.compile(r"^(?P<det>[^/]+)/DET/(?P<m>\d+)CH0:xtdf$")


def raw_module_source(f, module: int, path: Path) -> str:
    """The raw source of AGIPD ``module`` in a RAW file, whatever the detector's name
    (``SPB_DET_AGIPD1M-1/DET/3CH0:xtdf``, ``MID_DET_AGIPD1M-1/…``, ``HED_DET_AGIPD500K2G/…``)."""
    found = [s for s in f.instrument_sources
             if (m := _RAW_MODULE_RE.match(s)) and int(m.group("m")) == int(module)]
    if len(found) != 1:
        raise InputDataError(
            f"{path}: {'no' if not found else 'several'} raw source of module {module} "
            f"(…/DET/{module}CH0:xtdf; found {sorted(f.instrument_sources)}): not module "
            f"{module} of an AGIPD run, or check `modules` in the config")
    return found[0]


def corr_name_of(raw_source: str) -> str:
    """The facility's proc name of a raw module source: ``…/DET/3CH0:xtdf`` → ``…/CORR/3CH0:output``."""
    m = _RAW_MODULE_RE.match(raw_source)
    if not m:
        raise ValueError(f"{raw_source} is not a raw AGIPD module source")
    return f"{m.group('det')}/CORR/{m.group('m')}CH0:output"


def open_file(path: str | Path, train_hint: str = ""):
    """``extra_data.H5File`` with a clear error for missing or corrupt files."""
    import extra_data

    path = Path(path)
    if not path.is_file():
        raise InputDataError(
            f"missing input file {path}{train_hint}: the module or sequence was not "
            "recorded or not transferred. Exclude it in the config "
            "(`modules` / `exclude_sequences`) or restore the file."
        )
    try:
        # Suspect trains (train IDs out of order, as DAQ faults leave them) are left
        # out: their frames are then missing from that module and flagged as such.
        return extra_data.H5File(str(path), inc_suspect_trains=False)
    except Exception as err:  # h5py raises OSError/KeyError variants for damage
        raise InputDataError(
            f"cannot read {path}: {type(err).__name__}: {err}. The file is truncated or "
            "corrupt — re-transfer it, or exclude this sequence in the config "
            "(`exclude_sequences`)."
        ) from err


def read_dataset(keydata, path: Path, what: str) -> np.ndarray:
    """Read an extra-data KeyData, turning HDF5 read failures into clear errors."""
    try:
        return keydata.ndarray()
    except Exception as err:
        trains = keydata.train_ids
        span = f"trains {trains[0]}–{trains[-1]}" if len(trains) else "no trains"
        raise InputDataError(
            f"cannot read {what} from {path} ({span}): {type(err).__name__}: {err}. "
            "The file is truncated or corrupt — re-transfer it or exclude the sequence."
        ) from err


@dataclass
class ModuleChunk:
    """Frames of one module for a set of trains."""

    module: int
    train_ids: np.ndarray  # per frame
    pulse_ids: np.ndarray
    cell_ids: np.ndarray
    data: np.ndarray  # raw: (n, 2, 512, 128) uint16; corr: (n, 512, 128) float32
    mask: np.ndarray | None = None
    gain: np.ndarray | None = None


def iter_module_chunks(
    path: Path,
    module: int,
    raw: bool = True,
    trains_per_chunk: int = TRAINS_PER_CHUNK,
    train_ids: Sequence[int] | None = None,
    source: str | None = None,
) -> Iterable[tuple[np.ndarray, np.ndarray, ModuleChunk]]:
    """Stream one module sequence file in chunks of trains.

    Yields ``(chunk_train_ids, counts_per_train, ModuleChunk)``; memory is bounded
    by ``trains_per_chunk``.
    """
    f = open_file(path)
    if source is None:
        from .frames import corr_source

        src = raw_module_source(f, module, Path(path)) if raw else corr_source(f, module, Path(path))
    else:
        src = source
    if src not in f.instrument_sources:
        raise InputDataError(
            f"{path} has no source {src} (found {sorted(f.instrument_sources)}): "
            "wrong detector/source name in the config, or not an AGIPD file."
        )
    from extra_data import by_id

    if train_ids is not None:
        f = f.select_trains(by_id[list(train_ids)])
    sd = f[src]
    tids_all = np.asarray(f.train_ids, dtype=np.uint64)
    for start in range(0, len(tids_all), trains_per_chunk):
        tids = tids_all[start:start + trains_per_chunk]
        part = sd.select_trains(by_id[list(tids)])
        counts = np.asarray(part["image.data"].data_counts(labelled=False), dtype=np.int64)
        keys = ["image.data", "image.cellId", "image.pulseId"]
        if not raw:
            keys += ["image.mask", "image.gain"]
        arrays = {k: read_dataset(part[k], path, k) for k in keys}
        row_tids = np.repeat(tids, counts)
        yield tids, counts, ModuleChunk(
            module=module,
            train_ids=row_tids,
            pulse_ids=arrays["image.pulseId"].reshape(-1).astype(np.uint64),
            cell_ids=arrays["image.cellId"].reshape(-1).astype(np.uint16),
            data=arrays["image.data"],
            mask=arrays.get("image.mask"),
            gain=arrays.get("image.gain"),
        )
