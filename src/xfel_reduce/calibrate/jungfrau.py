"""JUNGFRAU calibration: dark runs → constants file; RAW sequence → CORR file.

The same design as the AGIPD pipeline (:mod:`xfel_reduce.calibrate.agipd`): dark
statistics per memory cell with :class:`~xfel_reduce.calibrate.dark.CellMoments`,
constants and bad pixels from :func:`~xfel_reduce.calibrate.dark.characterise`, and
the fused correction kernel of :func:`~xfel_reduce.calibrate.correct.correct`, here in
:data:`~xfel_reduce.calibrate.correct.DECODE_GAIN_BITS` mode (the gain stage comes
from bits 14–15 of each ADC word, so no digital statistics or thresholds exist).

JUNGFRAU data come one row per train with all memory cells, ``data.adc`` of shape
``(n_trains, n_cells, 512, 1024)``; this module flattens them to frames
``(n_frames, 512, 1024)`` with a memory cell per frame, and writes corrected data
back in the facility's layout (same keys, ``data.adc`` float32 photons, plus
``data.gain`` and ``data.mask``) under the ``…/CORR/JNGFR01:daqOutput`` source that
``extra_data.components.JUNGFRAU`` recognises.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from ..io import sources
from ..io.euxfel import EuXFELWriter, write_h5
from ..io.runs import InputDataError, open_file, read_dataset
from .badpixels import BadPixels
from .correct import DECODE_GAIN_BITS, CorrectionConstants, correct
from .dark import BadPixelRules, CellMoments, DarkConstants, characterise, dark_run_files

log = logging.getLogger(__name__)
JF_SHAPE = (512, 1024)
ANALOG_BITS = 0x3FFF
#: Gain stage of each value of bits 14–15 (2 does not exist: decoded as G2 and flagged).
STAGE_OF_BITS = np.array([0, 1, 2, 2], np.uint8)
_WRONG_GAIN = np.uint32(BadPixels.WRONG_GAIN_VALUE)
_OUT_OF_RANGE = np.uint32(BadPixels.VALUE_OUT_OF_RANGE)
_IS_NAN = np.uint32(BadPixels.VALUE_IS_NAN)


@dataclass
class JungfrauChunk:
    """Frames of one JUNGFRAU module for a set of trains (train × cell flattened)."""

    module: int
    train_ids: np.ndarray  # per frame
    frame_in_train: np.ndarray  # position of the frame in its train (0..n_cells-1)
    cell_ids: np.ndarray
    frame_numbers: np.ndarray
    data: np.ndarray  # raw: (n, 512, 1024) uint16 ADC words; corrected: float32 photons
    mask: np.ndarray | None = None
    gain: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.train_ids.size)


def iter_jungfrau_chunks(
    path: Path,
    module: int = 1,
    raw: bool = True,
    trains_per_chunk: int = 2,
    source: str | None = None,
) -> Iterator[JungfrauChunk]:
    """Stream a JUNGFRAU sequence file (RAW or CORR) in chunks of trains.

    Memory is bounded by ``trains_per_chunk`` (one train is 16 frames, 16 MB raw,
    32 MB corrected).  Trains whose row is missing are skipped with a warning, as the
    DAQ does not guarantee every train.
    """
    f = open_file(path)
    src = source or (sources.JF_RAW_SOURCE if raw else sources.JF_CORR_SOURCE).format(module=module)
    if src not in f.instrument_sources:
        raise InputDataError(
            f"{path} has no source {src} (found {sorted(f.instrument_sources)}): wrong JUNGFRAU "
            "module or source name in the config (spectroscopy.module / sources), or not a "
            f"{'RAW' if raw else 'CORR'} JUNGFRAU file."
        )
    sd = f[src]
    adc = sd["data.adc"]
    if adc.entry_shape[-2:] != JF_SHAPE or len(adc.entry_shape) != 3:
        raise InputDataError(
            f"{path}: {src} data.adc has rows of shape {adc.entry_shape}, expected "
            f"(memory cells, 512, 1024): not JUNGFRAU burst-mode data"
        )
    counts = np.asarray(adc.data_counts(labelled=False), np.int64)
    tids_all = np.asarray(adc.train_id_coordinates(), np.uint64)
    if np.any(counts == 0):
        log.warning("%s: %d trains without JUNGFRAU data are skipped", path, int((counts == 0).sum()))
    if np.any(counts > 1):
        bad = np.asarray(adc.train_ids)[counts > 1][0]
        raise InputDataError(f"{path}: train {bad} has {counts.max()} JUNGFRAU rows (expected one per train)")
    from extra_data import by_id

    for start in range(0, tids_all.size, trains_per_chunk):
        tids = tids_all[start:start + trains_per_chunk]
        part = sd.select_trains(by_id[list(tids)])
        keys = ["data.adc", "data.memoryCell", "data.frameNumber"]
        if not raw:
            keys += ["data.mask", "data.gain"]
        arr = {k: read_dataset(part[k], path, k) for k in keys}
        n_t, n_c = arr["data.adc"].shape[:2]
        cells = arr["data.memoryCell"].reshape(-1).astype(np.uint8)
        frame_shape = (n_t * n_c,) + JF_SHAPE
        yield JungfrauChunk(
            module=module,
            train_ids=np.repeat(tids, n_c),
            frame_in_train=np.tile(np.arange(n_c, dtype=np.int16), n_t),
            cell_ids=cells,
            frame_numbers=arr["data.frameNumber"].reshape(-1).astype(np.uint64),
            data=arr["data.adc"].reshape(frame_shape),
            mask=arr["data.mask"].reshape(frame_shape) if not raw else None,
            gain=arr["data.gain"].reshape(frame_shape) if not raw else None,
        )


def _check_gain_mode(run_path: Path, stage: int) -> None:
    """Refuse a dark run whose recorded JUNGFRAU gain mode is not the stage it is used for."""
    das = sorted(Path(run_path).glob("*-DA01-S*.h5"))
    if not das:
        return  # no slow data: the gain bits are still checked frame by frame
    f = open_file(das[0])
    if sources.JF_CONTROL not in f.control_sources:
        return
    mode = f.get_run_value(sources.JF_CONTROL, "gainMode")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    want = sources.JF_GAIN_MODE[stage]
    if mode.lower() != want:
        raise InputDataError(
            f"JUNGFRAU dark run {run_path} was recorded with gainMode={mode!r} but the config "
            f"uses it for gain stage G{stage} (needs {want!r}): fix calibration.jungfrau.dark_runs"
        )


def characterise_jungfrau(
    dark_runs: Mapping[int, Path],
    module: int = 1,
    n_cells: int = 16,
    rules: BadPixelRules | None = None,
    trains_per_chunk: int = 2,
    max_wrong_gain_fraction: float = 1e-3,
) -> DarkConstants:
    """Dark constants of one JUNGFRAU module from one dark run per gain stage.

    Parameters
    ----------
    dark_runs
        ``{stage: run directory}`` for stages 0 (dynamic gain, no light), 1 (forced G1)
        and 2 (forced G2).
    max_wrong_gain_fraction
        Tolerated fraction of samples whose gain bits differ from the run's stage
        (e.g. a few pixels hit by stray light in a G0 dark).  Those samples are left
        out of the statistics; more than this fraction means the run is not a dark
        of that stage and raises :class:`InputDataError`.

    Returns
    -------
    DarkConstants
        ``offset``, ``noise``, ``badpixels``, ``count`` of shape ``(3, n_cells, 512, 1024)``;
        no thresholds (JUNGFRAU encodes its gain in the data).
    """
    per_stage = []
    for stage, run_path, files in dark_run_files(
            dark_runs, f"RAW-*-JNGFR{module:02d}-S*.h5", _check_gain_mode,
            f"JUNGFRAU dark run {{run}} has no files for module JNGFR{module:02d}: check "
            "calibration.jungfrau.dark_runs and spectroscopy.module in the config"):
        acc = CellMoments(n_cells, JF_SHAPE)
        wrong = total = 0
        for path in files:
            for chunk in iter_jungfrau_chunks(path, module, raw=True, trains_per_chunk=trains_per_chunk):
                stage_of = STAGE_OF_BITS[chunk.data >> 14]
                off_stage = stage_of != stage
                analog = (chunk.data & ANALOG_BITS).astype(np.float32)
                n_wrong = int(off_stage.sum())
                if n_wrong:
                    analog[off_stage] = np.nan  # Moments ignores NaN per element
                wrong += n_wrong
                total += off_stage.size
                acc.add(analog, chunk.cell_ids)
        if total and wrong / total > max_wrong_gain_fraction:
            raise InputDataError(
                f"JUNGFRAU dark run {run_path}: {100 * wrong / total:.2f} % of samples have gain "
                f"bits of another stage than G{stage}: it is not a G{stage} dark (wrong run in "
                "calibration.jungfrau.dark_runs, or light on the detector)"
            )
        # One stage at a time keeps only one set of per-cell moments in memory
        # (16 cells × 512 × 1024 × 24 bytes ≈ 200 MB); outlier rules work per gain
        # and cell, so this gives the same constants as characterising all at once.
        per_stage.append(characterise([acc], None, rules))
        del acc
    return DarkConstants(
        offset=np.concatenate([d.offset for d in per_stage]),
        noise=np.concatenate([d.noise for d in per_stage]),
        badpixels=np.concatenate([d.badpixels for d in per_stage]),
        count=np.concatenate([d.count for d in per_stage]),
    )


def read_gain_constants(path: Path, module: int, n_cells: int) -> np.ndarray:
    """ADU per photon ``(gain, cell, 512, 1024)`` of one module from a gain constants file.

    The file holds ``adu_per_photon`` either per cell ``(gain, cell, module, ss, fs)``
    or cell-independent ``(gain, module, ss, fs)`` (broadcast to every cell).
    """
    if not Path(path).is_file():
        raise InputDataError(
            f"JUNGFRAU gain constants file {path} not found: set calibration.jungfrau.gain_constants "
            "to the relative-gain constants (ADU per photon per gain stage) of the detector"
        )
    with h5py.File(path, "r") as f:
        mods = [int(m) for m in f["modules"][()]]
        if module not in mods:
            raise InputDataError(f"{path} has no gain constants for JUNGFRAU module {module} (has {mods})")
        ds = f["adu_per_photon"]
        j = mods.index(module)
        if ds.ndim == 4:
            g = ds[:, j]
            return np.ascontiguousarray(np.broadcast_to(g[:, None], (g.shape[0], n_cells) + g.shape[1:]))
        g = ds[:, :, j]
        if g.shape[1] < n_cells:
            raise InputDataError(f"{path}: gain constants for {g.shape[1]} memory cells, darks have {n_cells}")
        return g[:, :n_cells]


def write_constants(path: Path, module: int, dark: DarkConstants, adu_per_photon: np.ndarray, prov: dict) -> None:
    """Write one module's constants (HDF5 datasets ``(gain, cell, ss, fs)``)."""
    write_h5(path, prov, {
        "offset": dark.offset.astype(np.float32),
        "noise": dark.noise.astype(np.float32),
        "adu_per_photon": adu_per_photon.astype(np.float32),
        "badpixels": dark.badpixels,
        "count": dark.count.astype(np.uint32),
    }, attrs={"module": module, "detector": "JUNGFRAU", "axes": "gain, cell, slow_scan, fast_scan"},
        compressed=("badpixels", "count"))


def load_constants(path: Path, saturation: int = ANALOG_BITS) -> CorrectionConstants:
    """Constants written by :func:`write_constants` (no gain thresholds for JUNGFRAU)."""
    if not Path(path).is_file():
        raise InputDataError(f"JUNGFRAU constants file {path} not found: run the dark step first")
    with h5py.File(path, "r") as f:
        if f.attrs.get("detector") != "JUNGFRAU":
            raise InputDataError(f"{path} is not a JUNGFRAU constants file")
        return CorrectionConstants(
            offset=f["offset"][()],
            adu_per_photon=f["adu_per_photon"][()],
            badpixels=f["badpixels"][()],
            thresholds=None,
            saturation=saturation,
        )


def correct_frames(raw: np.ndarray, cells: np.ndarray, constants: CorrectionConstants,
                   user_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correct raw JUNGFRAU frames ``(n, 512, 1024)`` to photons (fused kernel)."""
    return correct(raw, cells, constants, mode=DECODE_GAIN_BITS, user_mask=user_mask)


def correct_reference_numpy(raw: np.ndarray, cells: np.ndarray, constants: CorrectionConstants):
    """Plain numpy JUNGFRAU correction: the benchmark reference and test oracle.

    Same result as :func:`correct_frames`: gain from bits 14–15, offset and gain of
    that stage and memory cell, bad-pixel bits, WRONG_GAIN_VALUE for bits ``2``.
    """
    cells = np.asarray(cells, np.intp)
    bits = (raw >> 14).astype(np.intp)
    g = STAGE_OF_BITS[bits]
    analog = (raw & ANALOG_BITS).astype(np.float32)
    idx = g.astype(np.intp)[:, None]
    # (n, 3, ny, nx) gathers of the per-cell constants, then pick the frame's stage.
    off = np.take_along_axis(constants.offset[:, cells].transpose(1, 0, 2, 3), idx, axis=1)[:, 0]
    gn = np.take_along_axis(constants.adu_per_photon[:, cells].transpose(1, 0, 2, 3), idx, axis=1)[:, 0]
    bp = np.take_along_axis(constants.badpixels[:, cells].transpose(1, 0, 2, 3), idx, axis=1)[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        data = (analog - off) / gn
    bp = bp | np.where(bits == 2, _WRONG_GAIN, 0).astype(np.uint32)
    bp = bp | np.where((analog >= constants.saturation) & (g == 2), _OUT_OF_RANGE, 0).astype(np.uint32)
    bad = ~np.isfinite(data)
    bp = bp | np.where(bad, _IS_NAN, 0).astype(np.uint32)
    data = np.where(bad, np.float32(np.nan), data).astype(np.float32)
    return data, g, bp


def iter_corrected_from_raw(raw_path: Path, module: int, constants: CorrectionConstants,
                            trains_per_chunk: int = 2, user_mask: np.ndarray | None = None
                            ) -> Iterator[JungfrauChunk]:
    """Correct a RAW sequence on the fly, chunk by chunk (no CORR file written)."""
    for chunk in iter_jungfrau_chunks(raw_path, module, raw=True, trains_per_chunk=trains_per_chunk):
        data, gain, mask = correct_frames(chunk.data, chunk.cell_ids, constants, user_mask)
        chunk.data, chunk.gain, chunk.mask = data, gain, mask
        yield chunk


def correct_sequence(
    raw_path: Path,
    corr_path: Path,
    module: int,
    constants: CorrectionConstants,
    prov: dict,
    user_mask: np.ndarray | None = None,
    trains_per_chunk: int = 2,
    progress: logging.Logger | None = None,
) -> dict:
    """Correct one RAW JUNGFRAU sequence file into a CORR file (facility proc layout).

    Returns ``{"frames", "seconds"}``.
    """
    progress = progress or log
    f = open_file(raw_path)
    src = sources.JF_RAW_SOURCE.format(module=module)
    if src not in f.instrument_sources:
        raise InputDataError(f"{raw_path} has no source {src}: not module {module} of a JUNGFRAU run")
    adc = f[src, "data.adc"]
    n_cells = adc.entry_shape[0]
    if n_cells > constants.n_cells:
        raise InputDataError(
            f"{raw_path}: {n_cells} memory cells in the data but constants for {constants.n_cells}: "
            "take JUNGFRAU darks with the same number of storage cells")
    counts = np.asarray(adc.data_counts(labelled=False), np.uint64)
    tids = np.asarray(f.train_ids, np.uint64)
    with h5py.File(raw_path, "r") as h5:
        md = h5["METADATA"]
        meta = dict(proposal=int(md["proposalNumber"][0]) if "proposalNumber" in md else 0,
                    run=int(md["runNumber"][0]) if "runNumber" in md else 0,
                    sequence=int(md["sequenceNumber"][0]) if "sequenceNumber" in md else 0,
                    run_type="corrected")
    out_src = sources.JF_CORR_SOURCE.format(module=module)
    t0 = time.monotonic()
    n_frames = 0
    with EuXFELWriter(corr_path, tids, prov, **meta) as w:
        w.add_instrument(out_src, counts, {
            "data.adc": (np.float32, (n_cells,) + JF_SHAPE),
            "data.mask": (np.uint32, (n_cells,) + JF_SHAPE),
            "data.gain": (np.uint8, (n_cells,) + JF_SHAPE),
            "data.memoryCell": (np.uint8, (n_cells,)),
            "data.frameNumber": (np.uint64, (n_cells,)),
        }, chunk_rows=1)
        row = 0
        for chunk in iter_corrected_from_raw(raw_path, module, constants, trains_per_chunk, user_mask):
            nt = len(chunk) // n_cells
            shape = (nt, n_cells) + JF_SHAPE
            for key, arr in (("data.adc", chunk.data.reshape(shape)), ("data.mask", chunk.mask.reshape(shape)),
                             ("data.gain", chunk.gain.reshape(shape)),
                             ("data.memoryCell", chunk.cell_ids.reshape(nt, n_cells)),
                             ("data.frameNumber", chunk.frame_numbers.reshape(nt, n_cells))):
                w.write_rows(out_src, key, row, arr)
            row += nt
            n_frames += len(chunk)
            el = time.monotonic() - t0
            progress.info("JNGFR%02d: %d frames corrected (%.0f frames/s)", module, n_frames,
                          n_frames / max(el, 1e-9))
    return {"frames": n_frames, "seconds": time.monotonic() - t0}
