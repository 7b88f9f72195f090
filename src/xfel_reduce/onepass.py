"""One pass per sequence: RAW read once, corrected in memory, annotated and reduced.

Per chunk of trains the frames of all modules are read (a reader thread reads and
corrects the next chunk meanwhile), corrected with the constants of the memory cells
the sequence uses, and handed to

1. the annotation (:class:`xfel_reduce.annotate.AnnotationReducer`: frame table and
   image moments → the sequence's partial file, hit flags follow per run);
2. the run's technique (:class:`xfel_reduce.techniques.SequenceReducer`: SAXS
   profiles, XPCS sums, SFX peaks and hit frames …);
3. the correction check (:class:`xfel_reduce.calibrate.check.CorrectionHistogram`,
   stored in the partial, read by the calibration report);
4. CORR files, only when asked (``calibration.write_corr: all``).

Facility proc data (``calibration.source: proc``) take the same pass with the CORR
files as the reader.  A failure while reading, correcting or reducing leaves no output
file (each is written under a temporary name and published only at the end).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping, Sequence


from . import annotate, techniques
from .config import modules_of, trains_per_chunk
from .io.provenance import provenance
from .io.redu import write_partials

log = logging.getLogger("xfel_reduce")

#: ``calibration.write_corr`` values
WRITE_CORR = ("none", "all")
#: frames per module and sequence in the correction histograms: 4 M values per module
#: and sequence place the zero-photon peak to 0.01 photon; 200 sequences merge to 800 M
CHECK_FRAMES = 64


def write_corr(config: dict) -> bool:
    """Whether the one pass also writes CORR files (``calibration.write_corr``)."""
    value = (config.get("calibration") or {}).get("write_corr", "none")
    if value not in WRITE_CORR:
        from .config import ConfigError

        raise ConfigError(f"calibration.write_corr must be one of {WRITE_CORR}, not {value!r}")
    return value == "all"


def sequence_reader(config: dict, frame_files: Sequence[Path], constants: Sequence[Path] = (),
                    with_gain: bool = False):
    """The sequence's frames: RAW files corrected in memory (with ``constants``), or CORR files."""
    from .calibrate import agipd
    from .io.frames import SequenceFrames

    mods = modules_of(config)
    if len(frame_files) != len(mods):
        raise ValueError(f"{len(frame_files)} detector files for {len(mods)} modules")
    files = dict(zip(mods, map(Path, frame_files)))
    if constants:
        return agipd.RawSequenceFrames(files, dict(zip(mods, map(Path, constants))), with_gain=with_gain,
                                       common_mode=agipd.common_mode_of(config))
    return SequenceFrames(files)


def reduce_sequence(config: dict, run: int | None, seq: int | None, frame_files: Sequence[Path], train_files: Sequence[Path],
                    partial_out: Path, constants: Sequence[Path] = (), technique: str | None = None,
                    outputs: Mapping[str, Path] | None = None, corr_out: Sequence[Path] = (),
                    static_mask_inputs: Sequence[Path] = (), raw_dir: Path | None = None,
                    prefetch: bool = True) -> dict:
    """The one pass over a sequence (see the module docstring).

    Parameters
    ----------
    frame_files
        RAW files of the modules (with ``constants``), or their CORR files.
    partial_out
        The annotation partial (frame table, image moments, correction check).
    technique, outputs
        The run's technique and its named per-sequence outputs
        (:attr:`xfel_reduce.techniques.Technique.sequence_files`).
    corr_out
        CORR files to write, one per module (RAW input only).

    Returns
    -------
    dict
        Frames, module frames per second, the technique's summary.
    """
    from .binning import pass_binning
    from .calibrate.agipd import CorrWriter
    from .calibrate.check import CorrectionHistogram
    from .detectors.agipd import check_geometry_detector
    from .steps import sequence_beam

    mods = modules_of(config)
    raw_input = bool(constants)
    reader = sequence_reader(config, frame_files, constants, with_gain=raw_input)
    where = (f"r{int(run):04d} S{int(seq):05d} " if run is not None and seq is not None else "") + \
        f"({Path(frame_files[0]).parent})"
    check_geometry_detector(config.get("geometry"), [sd.source for sd in reader.sources.values()], where)
    cfg = annotate.AnnotationConfig.from_dict(config.get("annotation"))
    beam_table = sequence_beam(config, train_files, reader.train_ids, cfg.xray_frames, raw_dir)
    # bins decided from the run's train data: the same in every sequence
    binning, _ = pass_binning(config, run, train_files)
    annot = annotate.AnnotationReducer(len(mods), cfg, beam_table, binning)
    inputs = list(frame_files) + list(constants) + list(train_files)
    prov = provenance(config, inputs, step="reduce_sequence", run=run, sequence=seq,
                      input_kind=reader.kind, technique=technique,
                      beam=beam_table.summary() if beam_table is not None else "declared",
                      binned_images=annot.binned_why or "made")
    tid, pid, cid = reader.frame_ids()
    frames = {"trainId": tid, "pulseId": pid, "cellId": cid,
              **annotate.frame_beam_columns(beam_table, tid, cid, cfg)}
    if binning is not None:
        # every frame's bin (-1: none), for the technique's products per bin
        frames["bin"] = binning.frame_bins(tid, frames["pulse_energy"])
    plugin = techniques.get(technique)
    red = plugin.reducer(config, run, seq, frames, reader.train_ids, dict(outputs or {}), prov,
                         static_mask_inputs, where)
    check = CorrectionHistogram(mods, CHECK_FRAMES) if raw_input else None
    if corr_out and not raw_input:
        raise ValueError("CORR files are written from RAW input only")
    writers = [CorrWriter(Path(c), Path(r), m, provenance(config, [r, k], step="correct", module=m))
               for m, r, k, c in zip(mods, frame_files, constants, corr_out)]
    t0, c0 = time.monotonic(), time.process_time()
    try:
        for chunk in reader.iter_chunks(trains_per_chunk(config), prefetch=prefetch):
            rows = annot.add(chunk)
            if red is not None:
                red.add(chunk, rows)
            if check is not None:
                check.add(chunk.data, chunk.mask, chunk.gain, chunk.present)
            for j, w in enumerate(writers):
                sel = chunk.present[:, j]
                w.write(chunk.data[sel, j], chunk.mask[sel, j], chunk.gain[sel, j], chunk.cell_ids[sel],
                        chunk.pulse_ids[sel])
            el = max(time.monotonic() - t0, 1e-9)
            log.info("%s: %d frames (%.0f module frames/s)", where, annot.frames, annot.frames * len(mods) / el)
        # CORR writers first: their only failure (rows missing) must still abort the
        # technique's outputs, which are published by finish()
        for w in writers:
            w.close()
        table, images = annot.result()
        summary = red.finish() if red is not None else {}
    except BaseException:
        if red is not None:
            red.abort()
        for w in writers:
            w.close(failed=True)
        raise
    missing = int((table["modules_present"] < len(mods)).sum())
    if missing:
        log.warning("%d frames lack data from some modules (flagged via modules_present and "
                    "MODULE_MISSING mask bits)", missing)
    groups = {"correction_check": check} if check is not None else {}
    binned_images = annot.binned_images()
    if binned_images is not None:
        groups["binned_images"] = binned_images
    write_partials(Path(partial_out), table, images, prov, groups=groups)
    seconds = time.monotonic() - t0
    # CPU of every thread (the reader's included) from the first chunk on: the
    # pass's steady state, without the set-up (imports, constants, engines) before it
    out = {"frames": int(table["trainId"].size), "seconds": seconds, "loop_cpu_seconds": time.process_time() - c0,
           "module_frames_per_s": table["trainId"].size * len(mods) / max(seconds, 1e-9), "technique": summary}
    log.info("%s: done, %s", where, out)
    return out
