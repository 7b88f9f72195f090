"""JUNGFRAU calibration: dark runs → constants file; RAW sequence → CORR file.

The same design as the AGIPD pipeline (:mod:`xfel_reduce.calibrate.agipd`): dark
statistics per memory cell with :class:`~xfel_reduce.calibrate.dark.CellMoments`,
constants and bad pixels from :func:`~xfel_reduce.calibrate.dark.characterise`, and
the fused correction kernel of :func:`~xfel_reduce.calibrate.correct.correct`, here in
:data:`~xfel_reduce.calibrate.correct.DECODE_GAIN_BITS` mode (the gain stage is
encoded per sample, so no digital statistics or thresholds exist).

Input is what the facility records (:mod:`xfel_reduce.detectors.jungfrau`): per
module and train one row of ``data.adc`` (14-bit values) and ``data.gain`` (gain
bits 0, 1, 3) of shape ``(n_cells, 512, 1024)``, with ``data.memoryCell``; the
module's source is found by its number in any of the facility's namings
(``…/DET/JNGFR01:daqOutput``, ``…/DET/MODULE_1``, ``…/DET/RECEIVER-1``), of any
detector (JF4M, JF1M, JF500K, …).  The dark runs' recorded gain mode (control
``gainMode`` since 2022, ``settings`` before) must fit the stage each is used for.
Frames are flattened to ``(n_frames, 512, 1024)`` with a memory cell per frame, and
corrected data are written back in the facility's layout (same keys, ``data.adc``
float32 photons, ``data.gain`` the stage 0/1/2, ``data.mask`` the bad-pixel bits)
under the ``…/CORR/…`` source that ``extra_data.components.JUNGFRAU`` recognises.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np

from ..detectors import jungfrau as jfd
from ..io.euxfel import EuXFELWriter, write_h5
from ..io.runs import InputDataError, open_file, read_dataset
from .badpixels import BadPixels
from .correct import DECODE_GAIN_BITS, CorrectionConstants, correct
from .dark import BadPixelRules, CellMoments, DarkConstants, characterise, dark_run_files

log = logging.getLogger(__name__)
JF_SHAPE = jfd.MODULE_SHAPE
ANALOG_BITS = jfd.ADC_MASK
_WRONG_GAIN = np.uint32(BadPixels.WRONG_GAIN_VALUE)
_OUT_OF_RANGE = np.uint32(BadPixels.VALUE_OUT_OF_RANGE)
_IS_NAN = np.uint32(BadPixels.VALUE_IS_NAN)


@dataclass
class JungfrauChunk:
    """Frames of one JUNGFRAU module for a set of trains (train × cell flattened).

    Raw chunks: ``data`` is ``data.adc`` (uint16 14-bit values) and ``gain`` the raw
    ``data.gain`` bits (0, 1, 3).  Corrected chunks: ``data`` float32 photons,
    ``gain`` the stage (0, 1, 2) and ``mask`` the bad-pixel bits.
    """

    module: int
    train_ids: np.ndarray  # per frame
    frame_in_train: np.ndarray  # position of the frame in its train (0..n_cells-1)
    cell_ids: np.ndarray
    frame_numbers: np.ndarray
    data: np.ndarray
    mask: np.ndarray | None = None
    gain: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.train_ids.size)


def find_source(f, path: Path, module: int, raw: bool = True, source: str | None = None,
                detector: str | None = None) -> jfd.ModuleSource:
    """The JUNGFRAU source of ``module`` in an open file, checked for the expected kind.

    Raw: a ``…/DET/…`` source with uint16 ``data.adc`` and a ``data.gain``.  Corrected:
    a ``…/CORR/…`` source, or else a ``…/DET/…`` one holding float data (proc files
    that kept the raw names, as extra-data's ``make_jungfrau_run`` writes them).
    """
    names = f.instrument_sources
    kind = "RAW" if raw else "CORR"
    if source is not None:
        if source not in names:
            raise InputDataError(
                f"{path} has no source {source} (JUNGFRAU sources found: "
                f"{[s.name for s in jfd.module_sources(names)] or 'none'}): fix the JUNGFRAU source name "
                "in the config or use the right file")
        found = jfd.parse_module_source(source) or jfd.ModuleSource(source, detector or "", int(module), not raw)
    else:
        try:
            try:
                found = jfd.find_module_source(names, module, corrected=not raw, detector=detector)
            except LookupError:
                if raw:
                    raise
                found = jfd.find_module_source(names, module, corrected=False, detector=detector)
        except LookupError as err:
            raise InputDataError(
                f"{path}: {err}: wrong JUNGFRAU module or detector in the config (spectroscopy.module, "
                f"the detector's name), or not a {kind} JUNGFRAU file") from None
    keys = f[found.name].keys()
    if "data.adc" not in keys:
        raise InputDataError(f"{path}: {found.name} has no data.adc: not JUNGFRAU data")
    adc = f[found.name, "data.adc"]
    if len(adc.entry_shape) != 3 or tuple(adc.entry_shape[-2:]) != JF_SHAPE:
        raise InputDataError(
            f"{path}: {found.name} data.adc has rows of shape {adc.entry_shape}, expected "
            "(memory cells, 512, 1024): not JUNGFRAU burst-mode data")
    is_float = np.issubdtype(adc.dtype, np.floating)
    if raw and is_float:
        raise InputDataError(
            f"{path}: {found.name} data.adc is {adc.dtype}: corrected data under a raw source name, "
            "not raw JUNGFRAU data — read it as corrected (proc) data instead of calibrating it")
    if raw and "data.gain" not in keys:
        raise InputDataError(
            f"{path}: {found.name} has no data.gain: the facility records the 14-bit value in data.adc "
            "and the gain bits in data.gain. Files simulated by xfel-reduce before the JUNGFRAU layout "
            "fix kept the gain in bits 14-15 of data.adc: simulate the run again")
    if not raw:
        if not is_float:
            raise InputDataError(
                f"{path}: {found.name} data.adc is {adc.dtype}: raw JUNGFRAU data, not corrected — "
                "correct it first (calibration.source: raw)")
        missing = [k for k in ("data.gain", "data.mask") if k not in keys]
        if missing:
            raise InputDataError(f"{path}: {found.name} has no {', '.join(missing)}: not a JUNGFRAU CORR file")
    return found


def iter_jungfrau_chunks(
    path: Path,
    module: int = 1,
    raw: bool = True,
    trains_per_chunk: int = 2,
    source: str | None = None,
    detector: str | None = None,
) -> Iterator[JungfrauChunk]:
    """Stream a JUNGFRAU sequence file (RAW or CORR) in chunks of trains.

    Memory is bounded by ``trains_per_chunk`` (one train is 16 frames: 24 MB raw,
    72 MB corrected).  Trains whose row is missing are skipped with a warning, as the
    DAQ does not guarantee every train.

    Parameters
    ----------
    module
        Module number as in the source name (``JNGFR01`` → 1).
    source, detector
        The source name, or the detector's name to choose among several JUNGFRAU
        detectors in one file; by default the module's source is found by number.
    """
    f = open_file(path)
    src = find_source(f, Path(path), module, raw, source, detector).name
    sd = f[src]
    adc = sd["data.adc"]
    counts = np.asarray(adc.data_counts(labelled=False), np.int64)
    tids_all = np.asarray(adc.train_id_coordinates(), np.uint64)
    if np.any(counts == 0):
        log.warning("%s: %d trains without JUNGFRAU data are skipped", path, int((counts == 0).sum()))
    if np.any(counts > 1):
        bad = np.asarray(adc.train_ids)[counts > 1][0]
        raise InputDataError(f"{path}: train {bad} has {counts.max()} JUNGFRAU rows (expected one per train)")
    from extra_data import by_id

    keys = ["data.adc", "data.gain", "data.memoryCell", "data.frameNumber"]
    if not raw:
        keys.append("data.mask")
    if "data.timestamp" in sd:
        keys.append("data.timestamp")
    for start in range(0, tids_all.size, trains_per_chunk):
        tids = tids_all[start:start + trains_per_chunk]
        part = sd.select_trains(by_id[list(tids)])
        arr = {k: read_dataset(part[k], path, k) for k in keys}
        n_t, n_c = arr["data.adc"].shape[:2]
        frame_shape = (n_t * n_c,) + JF_SHAPE
        yield JungfrauChunk(
            module=module,
            train_ids=np.repeat(tids, n_c),
            frame_in_train=np.tile(np.arange(n_c, dtype=np.int16), n_t),
            cell_ids=arr["data.memoryCell"].reshape(-1).astype(np.uint8),
            frame_numbers=arr["data.frameNumber"].reshape(-1).astype(np.uint64),
            data=arr["data.adc"].reshape(frame_shape),
            mask=arr["data.mask"].reshape(frame_shape) if not raw else None,
            gain=arr["data.gain"].reshape(frame_shape).astype(np.uint8, copy=False),
            timestamps=arr["data.timestamp"].reshape(-1) if "data.timestamp" in arr else None,
        )


def _gain_mode_checker(module: int, detector: str | None, modes: jfd.DarkGainModes):
    """``check(run directory, stage)`` for :func:`dark_run_files`: the recorded gain mode fits."""

    def check(run_path: Path, stage: int) -> None:
        files = sorted(Path(run_path).glob(jfd.module_file_pattern(module)))
        if not files:
            return  # dark_run_files reports the missing module files
        src = find_source(open_file(files[0]), files[0], module, True, None, detector)
        try:
            mode, looked = jfd.read_run_gain_mode(run_path, src.control_source)
        except ValueError as err:  # a value neither vocabulary knows
            raise InputDataError(f"JUNGFRAU dark run {run_path}, {src.control_source}: {err}") from None
        if mode is None:
            log.warning("JUNGFRAU dark run %s: %s records no gainMode or settings (looked in %s); the "
                        "stage is checked from data.gain only", run_path, src.control_source,
                        [p.name for p in looked] or "no control or DA files")
            return
        try:
            modes.check(stage, mode, str(run_path), src.control_source)
        except ValueError as err:
            raise InputDataError(str(err)) from None
        log.info("JUNGFRAU dark run %s: %s=%r, a G%d dark", run_path, mode.key, mode.recorded, stage)

    return check


def characterise_jungfrau(
    dark_runs: Mapping[int, Path],
    module: int = 1,
    n_cells: int = 16,
    rules: BadPixelRules | None = None,
    trains_per_chunk: int = 2,
    max_wrong_gain_fraction: float = 1e-3,
    detector: str | None = None,
) -> DarkConstants:
    """Dark constants of one JUNGFRAU module from one dark run per gain stage.

    Parameters
    ----------
    dark_runs
        ``{stage: run directory}`` for stages 0 (``dynamic`` or ``fixg0``, no light),
        1 (``forceswitchg1`` or ``fixg1``) and 2 (``forceswitchg2`` or ``fixg2``); the
        pre-2022 ``settings`` names (``dynamicgain``, ``dynamichg0``, ``fixgain1``, …)
        are accepted too.  A run whose recorded mode does not fit its stage, or a set
        mixing forced-switching and fixed-gain darks, raises :class:`InputDataError`.
    detector
        Detector name, only needed if a run holds several JUNGFRAU detectors with
        this module number.
    max_wrong_gain_fraction
        Tolerated fraction of samples whose gain bits differ from the run's stage
        (e.g. a few pixels hit by stray light in a G0 dark).  Those samples are left
        out of the statistics; more than this fraction means the run is not a dark
        of that stage and raises :class:`InputDataError`.

    Returns
    -------
    DarkConstants
        ``offset``, ``noise``, ``badpixels``, ``count`` of shape ``(3, n_cells, 512, 1024)``;
        no thresholds (JUNGFRAU records its gain per sample); ``gain_modes`` the
        recorded mode of each stage's dark.
    """
    modes = jfd.DarkGainModes()
    per_stage = []
    for stage, run_path, files in dark_run_files(
            dark_runs, jfd.module_file_pattern(module), _gain_mode_checker(module, detector, modes),
            f"JUNGFRAU dark run {{run}} has no files for module JNGFR{module:02d}: check "
            "calibration.jungfrau.dark_runs and spectroscopy.module in the config"):
        acc = CellMoments(n_cells, JF_SHAPE)
        wrong = total = 0
        for path in files:
            for chunk in iter_jungfrau_chunks(path, module, raw=True, trains_per_chunk=trains_per_chunk,
                                              detector=detector):
                stage_of, impossible = jfd.decode_gain(chunk.gain)
                off_stage = (stage_of != stage) | impossible
                analog = chunk.data.astype(np.float32)
                n_wrong = int(off_stage.sum())
                if n_wrong:
                    analog[off_stage] = np.nan  # Moments ignores NaN per element
                wrong += n_wrong
                total += off_stage.size
                acc.add(analog, chunk.cell_ids)
        if total and wrong / total > max_wrong_gain_fraction:
            raise InputDataError(
                f"JUNGFRAU dark run {run_path}: {100 * wrong / total:.2f} % of samples have data.gain "
                f"of another stage than G{stage}: it is not a G{stage} dark (wrong run in "
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
        gain_modes=modes.as_dict() or None,
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
    }, attrs={"module": module, "detector": "JUNGFRAU", "axes": "gain, cell, slow_scan, fast_scan",
              "gain_modes": json.dumps(dark.gain_modes or {})},
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


def correct_frames(adc: np.ndarray, gain: np.ndarray, cells: np.ndarray, constants: CorrectionConstants,
                   user_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correct raw JUNGFRAU frames to photons (fused kernel).

    Parameters
    ----------
    adc, gain
        ``(n, 512, 1024)`` ``data.adc`` (14-bit values) and ``data.gain`` (bits 0, 1, 3).
    cells
        Memory cell of each frame.

    Returns
    -------
    data, gain, mask
        float32 photons, uint8 stage (0, 1, 2), uint32 bad-pixel bits
        (``WRONG_GAIN_VALUE`` where ``data.gain`` holds a value no stage produces).
    """
    # The kernel decodes the detector's own 16-bit words, so hand it those: one
    # cheap pass that rebuilds what the facility's receiver split into two keys.
    return correct(jfd.detector_words(adc, gain), cells, constants, mode=DECODE_GAIN_BITS, user_mask=user_mask)


def correct_reference_numpy(adc: np.ndarray, gain: np.ndarray, cells: np.ndarray, constants: CorrectionConstants):
    """Plain numpy JUNGFRAU correction: the benchmark reference and test oracle.

    Same result as :func:`correct_frames`: stage from ``data.gain``, offset and gain of
    that stage and memory cell, bad-pixel bits, WRONG_GAIN_VALUE for impossible gain values.
    """
    cells = np.asarray(cells, np.intp)
    g, impossible = jfd.decode_gain(gain)
    analog = (adc & ANALOG_BITS).astype(np.float32)
    idx = g.astype(np.intp)[:, None]
    # (n, 3, ny, nx) gathers of the per-cell constants, then pick the frame's stage.
    off = np.take_along_axis(constants.offset[:, cells].transpose(1, 0, 2, 3), idx, axis=1)[:, 0]
    gn = np.take_along_axis(constants.adu_per_photon[:, cells].transpose(1, 0, 2, 3), idx, axis=1)[:, 0]
    bp = np.take_along_axis(constants.badpixels[:, cells].transpose(1, 0, 2, 3), idx, axis=1)[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        data = (analog - off) / gn
    bp = bp | np.where(impossible, _WRONG_GAIN, 0).astype(np.uint32)
    bp = bp | np.where((analog >= constants.saturation) & (g == 2), _OUT_OF_RANGE, 0).astype(np.uint32)
    bad = ~np.isfinite(data)
    bp = bp | np.where(bad, _IS_NAN, 0).astype(np.uint32)
    data = np.where(bad, np.float32(np.nan), data).astype(np.float32)
    return data, g, bp


def iter_corrected_from_raw(raw_path: Path, module: int, constants: CorrectionConstants,
                            trains_per_chunk: int = 2, user_mask: np.ndarray | None = None,
                            source: str | None = None, detector: str | None = None) -> Iterator[JungfrauChunk]:
    """Correct a RAW sequence on the fly, chunk by chunk (no CORR file written)."""
    for chunk in iter_jungfrau_chunks(raw_path, module, raw=True, trains_per_chunk=trains_per_chunk,
                                      source=source, detector=detector):
        data, gain, mask = correct_frames(chunk.data, chunk.gain, chunk.cell_ids, constants, user_mask)
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
    source: str | None = None,
    detector: str | None = None,
) -> dict:
    """Correct one RAW JUNGFRAU sequence file into a CORR file (facility proc layout).

    The output source is the raw one with ``/DET/`` → ``/CORR/``
    (``SPB_IRDA_JF4M/CORR/JNGFR03:daqOutput``).  Returns ``{"frames", "seconds", "source"}``.
    """
    progress = progress or log
    f = open_file(raw_path)
    src = find_source(f, Path(raw_path), module, True, source, detector)
    adc = f[src.name, "data.adc"]
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
    out_src = src.corr_name
    keys = {
        "data.adc": (np.float32, (n_cells,) + JF_SHAPE),
        "data.mask": (np.uint32, (n_cells,) + JF_SHAPE),
        "data.gain": (np.uint8, (n_cells,) + JF_SHAPE),
        "data.memoryCell": (np.uint8, (n_cells,)),
        "data.frameNumber": (np.uint64, (n_cells,)),
    }
    has_time = "data.timestamp" in f[src.name]
    if has_time:
        keys["data.timestamp"] = (np.float64, (n_cells,))
    t0 = time.monotonic()
    n_frames = 0
    with EuXFELWriter(corr_path, tids, prov, **meta) as w:
        w.add_instrument(out_src, counts, keys, chunk_rows=1)
        row = 0
        for chunk in iter_corrected_from_raw(raw_path, module, constants, trains_per_chunk, user_mask,
                                             source=src.name):
            nt = len(chunk) // n_cells
            shape = (nt, n_cells) + JF_SHAPE
            parts = [("data.adc", chunk.data.reshape(shape)), ("data.mask", chunk.mask.reshape(shape)),
                     ("data.gain", chunk.gain.reshape(shape)),
                     ("data.memoryCell", chunk.cell_ids.reshape(nt, n_cells)),
                     ("data.frameNumber", chunk.frame_numbers.reshape(nt, n_cells))]
            if has_time:
                parts.append(("data.timestamp", chunk.timestamps.reshape(nt, n_cells)))
            for key, arr in parts:
                w.write_rows(out_src, key, row, arr)
            row += nt
            n_frames += len(chunk)
            el = time.monotonic() - t0
            progress.info("JNGFR%02d: %d frames corrected (%.0f frames/s)", module, n_frames,
                          n_frames / max(el, 1e-9))
    return {"frames": n_frames, "seconds": time.monotonic() - t0, "source": out_src}
