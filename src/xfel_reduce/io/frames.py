"""Aligned frames of all modules of one sequence, streamed in chunks of trains.

Modules are written by separate DAQ aggregators, so a frame may be missing from
some modules.  Frames are identified by (trainId, pulseId); the reader builds the
union over modules, fills missing module data with NaN and a mask bit, and reports
which modules contributed to each frame.  Beam data (X-ray pulses, XGM, laser) are
not read here: they come from the whole run by train ID (:mod:`xfel_reduce.beam`,
:mod:`xfel_reduce.io.trains`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..calibrate.badpixels import BadPixels
from .runs import InputDataError, open_file, read_dataset

MODULE_SHAPE = (512, 128)
_NO_DATA = np.uint32(BadPixels.MODULE_MISSING | BadPixels.VALUE_IS_NAN)
#: Corrected-module source names: facility proc (``…/CORR/3CH0:output``) and legacy proc,
#: which kept the raw name (``…/DET/3CH0:xtdf``, extra-data's legacy sources).
_CORR_SOURCE_RE = re.compile(r"^(?P<det>[^/]+)/(CORR/(?P<m1>\d+)CH0:output|DET/(?P<m2>\d+)CH0:xtdf)$")


def frame_key(train_ids: np.ndarray, pulse_ids: np.ndarray) -> np.ndarray:
    """One sortable uint64 per frame, ``trainId·2¹⁶ + pulseId`` (pulse IDs index the
    2700-bucket bunch pattern, so they fit in 16 bits)."""
    return np.asarray(train_ids, np.uint64) * np.uint64(1 << 16) + np.asarray(pulse_ids, np.uint64)


def split_frame_key(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(trainId, pulseId)`` of :func:`frame_key` values."""
    keys = np.asarray(keys, np.uint64)
    return keys >> np.uint64(16), keys & np.uint64(0xFFFF)


class FrameIndex:
    """Rows of a per-frame table (e.g. the annotation) by (trainId, pulseId), sorted once."""

    def __init__(self, train_ids: np.ndarray, pulse_ids: np.ndarray):
        self.keys = frame_key(train_ids, pulse_ids)
        self.order = np.argsort(self.keys, kind="stable")

    def find(self, train_ids: np.ndarray, pulse_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, found) for each given frame; ``row`` is meaningless where not found."""
        k = frame_key(train_ids, pulse_ids)
        if self.keys.size == 0:
            return np.zeros(k.size, np.intp), np.zeros(k.size, bool)
        pos = np.minimum(np.searchsorted(self.keys, k, sorter=self.order), self.keys.size - 1)
        idx = self.order[pos]
        return idx, self.keys[idx] == k

    def rows(self, train_ids: np.ndarray, pulse_ids: np.ndarray, where: str) -> np.ndarray:
        """Row of each given frame; a frame the table lacks is an error naming it and
        ``where``: table and frames are then out of sync (re-run the step that wrote it)."""
        idx, ok = self.find(train_ids, pulse_ids)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"{where}: frame trainId={int(np.asarray(train_ids)[bad])} "
                f"pulseId={int(np.asarray(pulse_ids)[bad])} is not in the annotation; annotation and "
                "CORR files are out of sync — re-run the annotation for this sequence")
        return idx


def corr_source(f, module: int, path: Path) -> str:
    """The corrected source of ``module`` in a CORR file (modern or legacy name).

    A modern proc file may carry both (extra-data links the legacy name to the new
    one); the ``CORR`` name wins.
    """
    found = {}
    for src in f.instrument_sources:
        m = _CORR_SOURCE_RE.match(src)
        if m and int(m.group("m1") or m.group("m2")) == module:
            found["legacy" if m.group("m2") else "modern"] = src
    if not found:
        raise InputDataError(f"{path} has no corrected source of module {module} "
                             "(…/CORR/{module}CH0:output or legacy …/DET/{module}CH0:xtdf): "
                             "not a CORR file of that module")
    src = found.get("modern") or found["legacy"]
    if "modern" not in found and np.issubdtype(f[src, "image.data"].dtype, np.integer):
        raise InputDataError(f"{path}: {src} holds raw (integer) data, not corrected frames: "
                             "point calibration.proc_dir at the proc folder, or use calibration.source: raw")
    return src


@dataclass
class FrameChunk:
    """Frames of a few trains, all modules stacked.

    Attributes
    ----------
    train_ids, pulse_ids, cell_ids
        Per frame.
    data, mask
        ``(n_frames, n_modules, 512, 128)`` float32 photons / uint32 bad-pixel bits.
    present
        ``(n_frames, n_modules)``: module recorded this frame.
    nan_pixels
        Per frame: pixels of present modules whose value is NaN (facility proc data
        mark some bad pixels so); they carry VALUE_IS_NAN in ``mask``.
    chunk_train_ids
        The trains of the chunk.
    gain
        ``(n_frames, n_modules, 512, 128)`` uint8 gain stage, when the reader was asked.
    """

    train_ids: np.ndarray
    pulse_ids: np.ndarray
    cell_ids: np.ndarray
    data: np.ndarray
    mask: np.ndarray
    present: np.ndarray
    nan_pixels: np.ndarray
    chunk_train_ids: np.ndarray
    gain: np.ndarray | None = None

    def __len__(self) -> int:
        return self.train_ids.size


class SequenceFrames:
    """Reader of one sequence: the CORR files of several modules.

    Parameters
    ----------
    corr_files
        ``{module: CORR file path}``; a module whose file is missing raises
        :class:`InputDataError` (drop it from the config's ``modules`` on purpose).
    train_ids
        Optional subset of trains (e.g. to test split invariance).
    with_gain
        Also deliver each pixel's gain stage (``FrameChunk.gain``; CORR ``image.gain``).

    Subclasses deliver frames from other files by overriding :meth:`_source_of` and
    :meth:`_fill` (the RAW reader of :mod:`xfel_reduce.calibrate.agipd`
    corrects there); alignment of the modules is done here, once.
    """

    #: what the files hold, for messages
    kind = "CORR"

    def __init__(self, corr_files: dict[int, Path], train_ids: Sequence[int] | None = None,
                 with_gain: bool = False):
        self.modules = sorted(corr_files)
        self.with_gain = with_gain
        self.files = {m: open_file(corr_files[m]) for m in self.modules}
        self.paths = {m: Path(corr_files[m]) for m in self.modules}
        self.sources = {m: f[self._source_of(f, m, self.paths[m])] for m, f in self.files.items()}
        tids = np.unique(np.concatenate([np.asarray(f.train_ids, np.uint64) for f in self.files.values()]))
        if train_ids is not None:
            tids = np.intersect1d(tids, np.asarray(train_ids, np.uint64))
        self.train_ids = tids

    def _source_of(self, f, module: int, path: Path) -> str:
        return corr_source(f, module, path)

    def _fill(self, module: int, sd, cells: np.ndarray, rows: np.ndarray, slot: int, data: np.ndarray,
              mask: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
        """Read the module's selected frames into ``data[rows, slot]`` (and ``mask``,
        ``gain``); returns the NaN pixels per frame (flagged VALUE_IS_NAN, never a value)."""
        path = self.paths[module]
        block = read_dataset(sd["image.data"], path, "image.data")
        bits = read_dataset(sd["image.mask"], path, "image.mask")
        nan = np.isnan(block)
        counts = np.zeros(block.shape[0], np.int32)
        if nan.any():
            bits |= nan.astype(np.uint32) * np.uint32(BadPixels.VALUE_IS_NAN)
            counts = nan.sum(axis=(1, 2), dtype=np.int32)
        data[rows, slot] = block
        mask[rows, slot] = bits
        if gain is not None:
            gain[rows, slot] = read_dataset(sd["image.gain"], path, "image.gain")
        return counts

    @classmethod
    def from_files(cls, corr_files: Sequence[Path], train_ids: Sequence[int] | None = None,
                   with_gain: bool = False) -> "SequenceFrames":
        """Reader of CORR files whose modules are read from their sources (one module per file)."""
        by_module = {}
        for p in map(Path, corr_files):
            mods = {int(m.group("m1") or m.group("m2")) for m in map(_CORR_SOURCE_RE.match, open_file(p).instrument_sources)
                    if m}
            if len(mods) != 1:
                raise InputDataError(f"{p}: expected the corrected source of one module, found modules {sorted(mods)}")
            m = mods.pop()
            if m in by_module:
                raise InputDataError(f"{p} and {by_module[m]} both hold module {m}")
            by_module[m] = p
        return cls(by_module, train_ids, with_gain)

    def frame_ids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(trainId, pulseId, cellId)`` of every frame of the sequence, in the order
        :meth:`iter_chunks` yields them (union over modules, by train then pulse).

        Reads only the small per-frame keys, so the beam columns of a whole sequence
        are known before its first image is read.
        """
        from extra_data import by_id

        keys, cells = [], []
        for m in self.modules:
            sd = self.sources[m].select_trains(by_id[list(self.train_ids)])
            keys.append(self._module_keys(m, sd))
            cells.append(read_dataset(sd["image.cellId"], self.paths[m], "image.cellId").reshape(-1))
        # the union over modules; a frame's cell is its last module's, as in _chunk
        k, c = np.concatenate(keys)[::-1], np.concatenate(cells)[::-1]
        union, last = np.unique(k, return_index=True)
        tid, pid = split_frame_key(union)
        return tid, pid, c[last].astype(np.uint16)

    def _module_keys(self, module: int, sd) -> np.ndarray:
        """Frame keys (:func:`frame_key`) of a module's selected rows."""
        have_t = np.asarray(sd["image.pulseId"].train_id_coordinates(), np.uint64)
        pid = read_dataset(sd["image.pulseId"], self.paths[module], "image.pulseId").reshape(-1)
        return frame_key(have_t, pid)

    def iter_chunks(self, trains_per_chunk: int = 4, prefetch: bool = False) -> Iterator[FrameChunk]:
        """Chunks of ``trains_per_chunk`` trains, all modules aligned.

        With ``prefetch`` a reader thread reads (and, for RAW, corrects) the next chunk
        while the caller works on this one: h5py and the numba kernels release the
        GIL, so reading overlaps with compute.
        """
        starts = range(0, self.train_ids.size, trains_per_chunk)
        tids = (self.train_ids[s:s + trains_per_chunk] for s in starts)
        if not prefetch:
            for t in tids:
                yield self._chunk(t)
            return
        yield from _prefetched(map(self._chunk, tids))

    def _chunk(self, tids: np.ndarray) -> FrameChunk:
        from extra_data import by_id

        n_mod = len(self.modules)
        per_mod = {}
        for m in self.modules:
            sd = self.sources[m].select_trains(by_id[list(tids)])
            per_mod[m] = (sd, self._module_keys(m, sd))
        # (train, pulse) as one sortable key: the union over modules, by train then pulse
        key_all = np.unique(np.concatenate([k for _, k in per_mod.values()]))
        n = key_all.size
        # Filled module by module below; only what no module delivered is
        # set to NaN / NO_DATA afterwards (a full pre-fill costs a second pass).
        data = np.empty((n, n_mod) + MODULE_SHAPE, np.float32)
        mask = np.empty((n, n_mod) + MODULE_SHAPE, np.uint32)
        gain = np.empty((n, n_mod) + MODULE_SHAPE, np.uint8) if self.with_gain else None
        present = np.zeros((n, n_mod), bool)
        cells = np.zeros(n, np.uint16)
        nan_pixels = np.zeros(n, np.int32)
        for j, m in enumerate(self.modules):
            sd, keys = per_mod[m]
            if keys.size == 0:
                continue
            rows = np.searchsorted(key_all, keys)
            mod_cells = read_dataset(sd["image.cellId"], self.paths[m], "image.cellId").reshape(-1)
            nan_pixels[rows] += self._fill(m, sd, mod_cells, rows, j, data, mask, gain)
            cells[rows] = mod_cells
            present[rows, j] = True
        if not present.all():
            data[~present] = np.nan
            mask[~present] = _NO_DATA
            if gain is not None:
                gain[~present] = 0
        train_ids, pulse_ids = split_frame_key(key_all)
        return FrameChunk(
            train_ids=train_ids,
            pulse_ids=pulse_ids,
            cell_ids=cells,
            data=data,
            mask=mask,
            present=present,
            nan_pixels=nan_pixels,
            chunk_train_ids=tids,
            gain=gain,
        )


def _prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead; an exception
    in the thread is raised in the caller at the item where it happened."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        while not stop.is_set():  # the consumer may have stopped early: never block for ever
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, re-raised there
            put((done, exc))
            return
        put((done, None))

    t = threading.Thread(target=work, name="frame-reader", daemon=True)
    t.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        t.join(timeout=5)
