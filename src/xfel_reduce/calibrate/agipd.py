"""AGIPD calibration pipeline: dark runs → constants file; RAW sequence → CORR file."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from ..config import TRAINS_PER_CHUNK
from ..io import sources
from ..io.euxfel import EuXFELWriter, write_h5
from ..io.frames import SequenceFrames
from ..io.runs import (InputDataError, corr_name_of, iter_module_chunks, open_file, raw_module_source,
                       read_dataset)
from .correct import CommonMode, CorrectionConstants, correct, correct_into
from .dark import BadPixelRules, CellMoments, DarkConstants, characterise, dark_run_files

log = logging.getLogger(__name__)
MODULE_SHAPE = (512, 128)


def _check_gain_mode(run_path: Path, expected_stage: int) -> None:
    """Refuse a dark run whose recorded gain mode is not the stage it is used for."""
    from ..io.trains import open_train_data, train_files

    files = train_files(run_path)
    controls = []
    if files:  # the control device lives in its own aggregator (AGIPD1MCTRL00) at the facility
        dc = open_train_data(run_path, files)
        controls = [s for s in dc.control_sources if s.endswith("/MDL/FPGA_COMP")
                    and "gainModeIndex" in dc[s]]
    if len(controls) != 1:
        log.warning("dark run %s: %s AGIPD control device with gainModeIndex, so its gain stage "
                    "cannot be checked against the config", run_path, "no" if not controls else "more than one")
        return
    mode = int(dc[controls[0], "gainModeIndex"].as_single_value())
    want = sources.GAIN_MODE_FIXED[expected_stage]
    if mode != want:
        raise InputDataError(
            f"dark run {run_path} was recorded with gainModeIndex={mode} but the config uses "
            f"it for gain stage {expected_stage} (needs gainModeIndex={want}): fix "
            "calibration.dark_runs in the config"
        )


def characterise_module(
    dark_runs: Mapping[int, Path],
    module: int,
    n_cells: int,
    rules: BadPixelRules | None = None,
    trains_per_chunk: int = 16,
) -> DarkConstants:
    """Dark constants of one module from one fixed-gain dark run per stage.

    Parameters
    ----------
    dark_runs
        ``{gain_stage: run directory}`` for stages 0, 1, 2.
    """
    analog, digital = [], []
    for _, _, files in dark_run_files(
            dark_runs, f"RAW-*-AGIPD{module:02d}-S*.h5", _check_gain_mode,
            f"dark run {{run}} has no files for module {module}: the module was not "
            "recorded; remove it from `modules` in the config or take a new dark"):
        a, d = CellMoments(n_cells, MODULE_SHAPE), CellMoments(n_cells, MODULE_SHAPE)
        for path in files:
            for _, _, chunk in iter_module_chunks(path, module, raw=True, trains_per_chunk=trains_per_chunk):
                a.add(chunk.data[:, 0], chunk.cell_ids)
                d.add(chunk.data[:, 1], chunk.cell_ids)
        analog.append(a)
        digital.append(d)
    return characterise(analog, digital, rules)


def write_constants(path: Path, module: int, dark: DarkConstants, adu_per_photon: np.ndarray, prov: dict) -> None:
    """Write one module's constants (HDF5, datasets ``(gain, cell, ss, fs)``)."""
    names = ("offset", "noise", "badpixels", "thresholds", "digital_mean", "digital_std", "count")
    arrays = {name: getattr(dark, name) for name in names if getattr(dark, name) is not None}
    arrays["adu_per_photon"] = adu_per_photon.astype(np.float32)
    # the static mask of the q-based techniques, computed once here instead of from all
    # cells' bad-pixel maps in every sequence job (352 cells: 277 MB per module)
    arrays["badpixels_any"] = np.bitwise_or.reduce(dark.badpixels.reshape(-1, *MODULE_SHAPE), axis=0)
    # Only the integer arrays are compressed: a float map would cost every
    # correction job a decompression for almost no space.
    write_h5(path, prov, arrays, attrs={"module": module, "axes": "gain, cell, slow_scan, fast_scan"},
             compressed=[k for k, a in arrays.items() if a.dtype.kind in "iub"])


def read_badpixels_any(path: Path) -> tuple[int, np.ndarray]:
    """``(module, bits)``: a module's bad-pixel bits OR-ed over gain stages and cells
    (``badpixels_any`` of :func:`write_constants`; computed for older files)."""
    with h5py.File(path, "r") as f:
        module = int(f.attrs["module"])
        if "badpixels_any" in f:
            return module, f["badpixels_any"][()]
        bits = np.zeros(MODULE_SHAPE, np.uint32)
        for g in range(f["badpixels"].shape[0]):  # one gain stage at a time bounds memory
            bits |= np.bitwise_or.reduce(f["badpixels"][g], axis=0)
        return module, bits


def read_gain_constants(path: Path, module: int) -> np.ndarray:
    """ADU per photon ``(gain, cell, ss, fs)`` of one module from a gain constants file."""
    if not Path(path).is_file():
        raise InputDataError(
            f"gain constants file {path} not found: set calibration.gain_constants in the "
            "config to the facility's AGIPD gain constants (ADU per photon per gain stage)"
        )
    with h5py.File(path, "r") as f:
        mods = list(f["modules"][()])
        if module not in mods:
            raise InputDataError(f"{path} has no gain constants for module {module} (has {mods})")
        return f["adu_per_photon"][:, :, mods.index(module)]


def load_constants(path: Path, saturation: int = 16383, cells: np.ndarray | None = None) -> CorrectionConstants:
    """One module's correction constants; with ``cells`` only those memory cells (sorted,
    unique), in that order: 11 float32/uint32 maps per cell and module (2.9 MB), so a
    16-module detector with 352 cells would need 16 GB for all of them."""
    sel = slice(None) if cells is None else np.asarray(cells, np.int64)
    with h5py.File(path, "r") as f:
        n_cells = f["offset"].shape[1]
        if cells is not None and sel.size and int(sel.max()) >= n_cells:
            raise InputDataError(
                f"memory cell {int(sel.max())} in the data but {path} has constants for only "
                f"{n_cells} cells: take darks with as many cells as the run")
        return CorrectionConstants(
            offset=f["offset"][:, sel],
            adu_per_photon=f["adu_per_photon"][:, sel],
            badpixels=f["badpixels"][:, sel],
            thresholds=f["thresholds"][:, sel],
            saturation=saturation,
        )


def common_mode_of(config: dict) -> CommonMode:
    """The ``calibration.common_mode`` section as a :class:`CommonMode`."""
    cm = config["calibration"].get("common_mode", {}) or {}
    return CommonMode(enabled=bool(cm.get("enabled", False)), window=float(cm.get("window", 0.5)),
                      min_fraction=float(cm.get("min_fraction", 0.3)))


class ModuleCorrector:
    """RAW → photons for one module, with the constants of the memory cells it uses.

    Parameters
    ----------
    constants_file
        The module's constants (:func:`write_constants`).
    cells
        Memory cells the data will contain; only their constants are loaded.
    """

    def __init__(self, constants_file: Path, cells: np.ndarray, common_mode: CommonMode | None = None):
        self.cells = np.unique(np.asarray(cells, np.int64))
        self.constants = load_constants(Path(constants_file), cells=self.cells)
        self.lut = np.full(int(self.cells.max()) + 1 if self.cells.size else 1, -1, np.int64)
        self.lut[self.cells] = np.arange(self.cells.size)
        self.common_mode = common_mode
        self.path = Path(constants_file)

    def __call__(self, raw: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(data, gain, mask)`` of raw frames ``(n, 2, 512, 128)`` (see :func:`correct`)."""
        return correct(raw, self._rows(cells), self.constants, common_mode=self.common_mode)

    def into(self, raw: np.ndarray, cells: np.ndarray, data: np.ndarray, gain: np.ndarray, mask: np.ndarray,
             dest: np.ndarray, slot: int) -> np.ndarray:
        """Correct into ``data[dest, slot]`` … of a chunk (:func:`correct_into`, no common
        mode); NaN pixels per frame."""
        return correct_into(raw, self._rows(cells), self.constants, data, gain, mask, dest, slot)

    def _rows(self, cells: np.ndarray) -> np.ndarray:
        """Rows of the loaded constants for memory cells ``cells``."""
        cells = np.asarray(cells, np.int64)
        rows = self.lut[np.minimum(cells, self.lut.size - 1)] if cells.size else cells
        if cells.size and ((cells >= self.lut.size) | (rows < 0)).any():
            bad = int(cells[(cells >= self.lut.size) | (rows < 0)][0])
            raise InputDataError(f"memory cell {bad} was not among the cells the corrector of "
                                 f"{self.path.name} was set up for")
        return rows


class RawSequenceFrames(SequenceFrames):
    """Frames of one sequence corrected in memory from the RAW module files: the same
    chunks as :class:`~xfel_reduce.io.frames.SequenceFrames` gives for CORR files, with
    no CORR file written or read.

    Parameters
    ----------
    raw_files, constants_files
        ``{module: path}`` of the sequence's RAW files and the modules' constants.
    """

    kind = "RAW"

    def __init__(self, raw_files: Mapping[int, Path], constants_files: Mapping[int, Path],
                 train_ids=None, with_gain: bool = False, common_mode: CommonMode | None = None):
        super().__init__(dict(raw_files), train_ids, with_gain)
        missing = sorted(set(self.modules) - set(constants_files))
        if missing:
            raise InputDataError(f"no constants for modules {missing}: run the dark rule for them")
        self._gain_buf: np.ndarray | None = None  # see _scratch_gain
        self.correctors = {}
        for m in self.modules:
            cells = read_dataset(self.sources[m]["image.cellId"], self.paths[m], "image.cellId").reshape(-1)
            self.correctors[m] = ModuleCorrector(Path(constants_files[m]), cells, common_mode)

    def _source_of(self, f, module: int, path: Path) -> str:
        return raw_module_source(f, module, path)

    def _fill(self, module: int, sd, cells: np.ndarray, rows: np.ndarray, slot: int, data: np.ndarray,
              mask: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
        raw = read_dataset(sd["image.data"], self.paths[module], "image.data")
        if raw.ndim != 4 or raw.shape[1] != 2:
            raise InputDataError(f"{self.paths[module]}: image.data has shape {raw.shape[1:]} per frame, "
                                 "expected AGIPD RAW (2, 512, 128) (analog, digital)")
        corrector = self.correctors[module]
        if corrector.common_mode is not None and corrector.common_mode.enabled:
            # common mode works on a module's own frames: correct apart, then place
            d, g, mk = corrector(raw, cells)
            data[rows, slot], mask[rows, slot] = d, mk
            if gain is not None:
                gain[rows, slot] = g
            return np.isnan(d).sum(axis=(1, 2), dtype=np.int32)
        if gain is None:  # the kernel decodes the stage anyway; a scratch slot for it
            gain = self._scratch_gain(data.shape)
        return corrector.into(raw, cells, data, gain, mask, rows, slot)

    def _scratch_gain(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._gain_buf is None or self._gain_buf.shape != shape:
            self._gain_buf = np.empty(shape, np.uint8)
        return self._gain_buf


class CorrWriter:
    """One module's CORR file (facility proc layout), written row by row as corrected.

    Rows of a train follow the INDEX order: the caller writes frames by train, as the
    RAW file has them.
    """

    def __init__(self, corr_path: Path, raw_path: Path, module: int, prov: dict):
        f = open_file(raw_path)
        src = raw_module_source(f, module, Path(raw_path))
        self.train_ids = np.asarray(f.train_ids, np.uint64)
        counts = np.asarray(f[src, "image.data"].data_counts(labelled=False), np.uint64)
        with h5py.File(raw_path, "r") as h5:
            md = h5["METADATA"]
            meta = dict(
                proposal=int(md["proposalNumber"][0]) if "proposalNumber" in md else 0,
                run=int(md["runNumber"][0]) if "runNumber" in md else 0,
                sequence=int(md["sequenceNumber"][0]) if "sequenceNumber" in md else 0,
                run_type="corrected",
            )
        self.source = corr_name_of(src)
        self.expected = int(counts.sum())
        self.row = 0
        self.path = Path(corr_path)
        self._w = EuXFELWriter(corr_path, self.train_ids, prov, **meta)
        self._w.add_instrument(self.source, counts, {
            "image.data": (np.float32, MODULE_SHAPE),
            "image.mask": (np.uint32, MODULE_SHAPE),
            "image.gain": (np.uint8, MODULE_SHAPE),
            "image.cellId": (np.uint16, ()),
            "image.pulseId": (np.uint64, ()),
        }, chunk_rows=1, compression=None)

    def write(self, data, mask, gain, cell_ids, pulse_ids) -> None:
        for key, arr in (("image.data", data), ("image.mask", mask), ("image.gain", gain),
                         ("image.cellId", cell_ids), ("image.pulseId", pulse_ids)):
            self._w.write_rows(self.source, key, self.row, arr)
        self.row += data.shape[0]

    def close(self, failed: bool = False) -> None:
        """Finish the file; rows missing (or ``failed``) leave no CORR file behind."""
        if failed or self.row != self.expected:
            self._w.abort()
            if not failed:
                raise RuntimeError(f"{self.path}: wrote {self.row} of {self.expected} frames")
            return
        self._w.close()


def correct_sequence(
    raw_path: Path,
    corr_path: Path,
    module: int,
    constants: CorrectionConstants,
    prov: dict,
    common_mode: CommonMode | None = None,
    user_mask: np.ndarray | None = None,
    trains_per_chunk: int = TRAINS_PER_CHUNK,
    progress: logging.Logger | None = None,
) -> dict:
    """Correct one RAW module sequence file into a CORR file (facility proc layout).

    Returns a small dict of statistics (frames, seconds).
    """
    progress = progress or log
    t0 = time.monotonic()
    n_frames = 0
    w = CorrWriter(Path(corr_path), Path(raw_path), module, prov)
    try:
        for _, _, chunk in iter_module_chunks(raw_path, module, True, trains_per_chunk):
            data, gain, mask = correct(chunk.data, chunk.cell_ids, constants,
                                       common_mode=common_mode, user_mask=user_mask)
            w.write(data, mask, gain, chunk.cell_ids, chunk.pulse_ids)
            n_frames += data.shape[0]
            el = time.monotonic() - t0
            progress.info("module %d: %d frames corrected (%.0f frames/s)", module, n_frames, n_frames / max(el, 1e-9))
    except BaseException:
        w.close(failed=True)
        raise
    w.close()
    return {"frames": n_frames, "seconds": time.monotonic() - t0}


class ModuleConstantsView:
    """Read-only view of per-module constants files as one detector.

    ``view["offset"][g, cells, i]`` reads gain ``g``, cells ``cells`` of the
    ``i``-th module, so code written for a stacked ``(gain, cell, module, ss, fs)``
    array reads one module slab at a time (memory stays at one module).
    """

    class _Stacked:
        def __init__(self, datasets):
            self._ds = datasets
            g, c, ny, nx = datasets[0].shape
            self.shape = (g, c, len(datasets), ny, nx)

        def __getitem__(self, key):
            g, cells, i = key
            return self._ds[i][g, cells]

    def __init__(self, paths):
        self.files = [h5py.File(p, "r") for p in paths]
        self.attrs = {"modules": [int(f.attrs["module"]) for f in self.files]}

    def __contains__(self, key: str) -> bool:
        return all(key in f for f in self.files)

    def __getitem__(self, key: str):
        return self._Stacked([f[key] for f in self.files])

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
