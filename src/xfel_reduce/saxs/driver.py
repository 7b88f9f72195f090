"""A SAXS sequence's part of the one pass (per-frame REDU rows, partial) and the
run-level gather (NXcanSAS with fits)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .accumulator import GROUPS, SaxsAccumulator, fit_sphere
from .engine import AzimuthalEngine


# --------------------------------------------------------------------------
# reading CORR / annotation and the per-chunk / per-run drivers
# --------------------------------------------------------------------------
def read_annotation(path: str | Path) -> dict[str, np.ndarray]:
    """Per-frame annotation of one sequence (the annotation stage's REDU file)."""
    from ..io.redu import read_frame_table
    from ..io.sources import ANNOTATION_SOURCE

    return read_frame_table(Path(path), ANNOTATION_SOURCE)


def integrate_frames(engine: AzimuthalEngine, acc: SaxsAccumulator, chunk, frames: Mapping[str, np.ndarray],
                     where: str, *, xgm_normalise: bool = False, user_mask: np.ndarray | None = None,
                     keep_image: bool = True) -> dict[str, np.ndarray] | None:
    """Integrate the X-ray frames of one chunk into ``acc``; their per-frame rows (or
    ``None`` when the chunk has no X-ray frame).

    ``frames`` holds the chunk's ``xray``, ``ppl`` and ``pulse_energy`` (annotation
    columns, in chunk order).
    """
    xray = np.asarray(frames["xray"], bool)
    if not xray.any():
        return None
    ppl = np.asarray(frames["ppl"], bool)[xray]
    energy = np.asarray(frames["pulse_energy"], np.float64)[xray]
    data = mask = None
    if keep_image or user_mask is not None:
        data, mask = chunk.data[xray], chunk.mask[xray]
        if user_mask is not None:
            mask = mask | (np.asarray(user_mask).reshape(engine.frame_shape) != 0).astype(np.uint32)
        intensity, sigma = engine.integrate(data, mask)
    else:
        # the X-ray frames integrated where they are in the chunk: no copy of them
        intensity, sigma = engine.integrate(chunk.data, chunk.mask, index=np.flatnonzero(xray))
    if xgm_normalise:
        if np.any(~(energy > 0)):
            bad = int(np.flatnonzero(~(energy > 0))[0])
            raise ValueError(
                f"{where}: X-ray frame trainId={int(chunk.train_ids[xray][bad])} has pulse energy "
                f"{energy[bad]}; cannot normalise by XGM — check the XGM data or disable xgm_normalise"
            )
        intensity = intensity / energy[:, None]
        sigma = sigma / energy[:, None]
    acc.add(intensity, sigma, ppl, energy, data if keep_image else None, mask if keep_image else None)
    return {"trainId": chunk.train_ids[xray], "pulseId": chunk.pulse_ids[xray],
            "cellId": chunk.cell_ids[xray], "ppl": ppl, "pulse_energy": energy,
            "intensity": intensity.astype(np.float32), "sigma": sigma.astype(np.float32)}


def integrate_chunk(
    engine: AzimuthalEngine,
    reader,
    annotation: Mapping[str, np.ndarray],
    *,
    xgm_normalise: bool = False,
    trains_per_chunk: int = 4,
    user_mask: np.ndarray | None = None,
    keep_image: bool = True,
    sink: Callable[[dict[str, np.ndarray]], None] | None = None,
    collect: bool = True,
) -> tuple[SaxsAccumulator, dict[str, np.ndarray]]:
    """Integrate the X-ray frames of one sequence chunk.

    Memory is bounded by ``trains_per_chunk`` trains unless ``collect`` is true (then
    the per-frame profiles of the whole sequence are returned); for production use
    :func:`integrate_sequence`, which streams them into the REDU file.

    Parameters
    ----------
    engine
        Built once per run (same modules as the CORR files).
    reader
        The sequence's frames, :class:`xfel_reduce.io.frames.SequenceFrames` (same
        modules as the engine); frames missing from a module are masked there.
    annotation
        From :func:`read_annotation` (per-frame xray, ppl, pulse_energy).
    xgm_normalise
        Divide each frame's I and σ by its XGM pulse energy (µJ).
    user_mask
        Extra static mask (frame shape), non-zero = bad, applied per frame.
    sink
        Called with each chunk's per-frame arrays (same keys as ``per_frame``).
    collect
        Return the concatenated per-frame arrays (else they are empty).

    Returns
    -------
    partial, per_frame
        The mergeable :class:`SaxsAccumulator` and per-frame arrays ``trainId``,
        ``pulseId``, ``cellId``, ``ppl``, ``pulse_energy``, ``intensity``,
        ``sigma`` (float32, X-ray frames only, in file order).
    """
    from ..io.frames import FrameIndex

    acc = SaxsAccumulator(engine.radial, engine.frame_shape if keep_image else None, xgm_normalised=xgm_normalise,
                          poisson_k=engine.poisson_k)
    out: dict[str, list] = {k: [] for k in ("trainId", "pulseId", "cellId", "ppl", "pulse_energy", "intensity", "sigma")}
    where = str(next(iter(reader.paths.values())).name) if getattr(reader, "paths", None) else "?"
    if len(reader.modules) != engine.frame_shape[0]:
        raise ValueError(f"{where}: {len(reader.modules)} modules but the engine expects {engine.frame_shape[0]}")
    index = FrameIndex(annotation["trainId"], annotation["pulseId"])
    for chunk in reader.iter_chunks(trains_per_chunk):
        idx = index.rows(chunk.train_ids, chunk.pulse_ids, where)
        rows = integrate_frames(engine, acc, chunk, {k: np.asarray(annotation[k])[idx] for k in ("xray", "ppl", "pulse_energy")},
                                where, xgm_normalise=xgm_normalise, user_mask=user_mask, keep_image=keep_image)
        if rows is None:
            continue
        if sink is not None:
            sink(rows)
        if collect:
            for k, v in rows.items():
                out[k].append(v)
    npt = engine.npt
    empty = {"intensity": np.zeros((0, npt), np.float32), "sigma": np.zeros((0, npt), np.float32)}
    per_frame = {k: (np.concatenate(v) if v else empty.get(k, np.zeros(0))) for k, v in out.items()}
    return acc, per_frame


def write_frames_redu(
    path: str | Path,
    per_frame: Mapping[str, np.ndarray],
    radial: np.ndarray,
    provenance: Mapping[str, Any],
    source: str = "SPB_DET_AGIPD1M-1/REDU/SAXS:output",
) -> None:
    """Write per-frame I(q), σ(q) in EuXFEL REDU layout (one row per X-ray frame).

    Keys under ``source``: ``saxs.intensity``, ``saxs.sigma`` (n, npt) float32,
    ``saxs.trainId``, ``saxs.pulseId``, ``saxs.cellId``, ``saxs.ppl``,
    ``saxs.pulse_energy``; the radial axis is the per-train control key ``q``
    of source ``<source minus :output>`` (constant for the run).
    """
    from ..io.euxfel import write_euxfel_file

    tid = np.asarray(per_frame["trainId"], np.uint64)
    trains, counts = np.unique(tid, return_counts=True)
    if trains.size and not np.all(np.diff(tid.astype(np.int64)) >= 0):
        raise ValueError(f"{path}: per-frame rows are not in train order")
    keys = {f"saxs.{k}": np.asarray(per_frame[k]) for k in
            ("intensity", "sigma", "trainId", "pulseId", "cellId", "ppl", "pulse_energy")}
    ctrl_source = source.split(":")[0]
    write_euxfel_file(
        path, trains,
        instrument={source: (counts, keys)},
        control={ctrl_source: {"q": np.broadcast_to(np.asarray(radial, np.float32), (trains.size, radial.size)).copy()}},
        provenance=dict(provenance),
    )


SAXS_SOURCE = "SPB_DET_AGIPD1M-1/REDU/SAXS:output"


class SaxsSequenceReducer:
    """The ``saxs`` part of a sequence's one pass: per-frame I(q), σ(q) of the X-ray
    frames streamed into ``frames_out`` (EuXFEL REDU layout, see
    :func:`write_frames_redu` for the keys) chunk by chunk, so memory is bounded by
    the chunk whatever the sequence length; at :meth:`finish` the mergeable
    :class:`SaxsAccumulator` goes to ``partial_out`` (group ``saxs_partial``) for
    :func:`gather_partials`.  Both files are written atomically with provenance.

    Parameters
    ----------
    frames
        ``trainId`` and ``xray`` of every frame of the sequence (the annotation, or the
        beam columns known before the pass): the output's rows per train.
    train_ids
        The sequence's trains (those of its files).
    keep_image
        Also sum the 2-D average image of the X-ray frames.  The one pass does not: its
        annotation accumulates that image already (class ``xray`` of the run's
        aggregate), so the SAXS report shows it from there.
    """

    def __init__(self, engine: AzimuthalEngine, frames: Mapping[str, np.ndarray], train_ids: np.ndarray,
                 frames_out: str | Path, partial_out: str | Path, provenance: Mapping[str, Any], *,
                 xgm_normalise: bool = False, user_mask: np.ndarray | None = None, source: str = SAXS_SOURCE,
                 where: str = "?", keep_image: bool = True):
        from ..io.euxfel import EuXFELWriter

        self.engine, self.partial_out, self.provenance = engine, Path(partial_out), dict(provenance)
        self.frames_out, self.where, self.source = Path(frames_out), where, source
        self.xgm_normalise, self.user_mask, self.keep_image = xgm_normalise, user_mask, keep_image
        file_trains = np.asarray(train_ids, np.uint64)
        tid = np.asarray(frames["trainId"], np.uint64)
        in_seq = np.isin(tid, file_trains)
        self.n_frames = int(in_seq.sum())
        counts = np.bincount(np.searchsorted(file_trains, tid[in_seq & np.asarray(frames["xray"], bool)]),
                             minlength=file_trains.size).astype(np.uint64)
        self.expected = int(counts.sum())
        npt = engine.npt
        self.keys = {"saxs.intensity": (np.float32, (npt,)), "saxs.sigma": (np.float32, (npt,)),
                     "saxs.trainId": (np.uint64, ()), "saxs.pulseId": (np.uint64, ()),
                     "saxs.cellId": (np.uint16, ()), "saxs.ppl": (np.bool_, ()),
                     "saxs.pulse_energy": (np.float64, ())}
        self.acc = SaxsAccumulator(engine.radial, engine.frame_shape if keep_image else None,
                                   xgm_normalised=xgm_normalise, poisson_k=engine.poisson_k)
        self.w = EuXFELWriter(frames_out, file_trains, provenance=dict(provenance), run_type="saxs")
        self.w.add_instrument(source, counts, self.keys)
        self.w.add_control(source.split(":")[0], {"q": np.broadcast_to(engine.radial.astype(np.float32),
                                                                       (file_trains.size, npt)).copy()})
        self.row = 0

    def add(self, chunk, rows: Mapping[str, np.ndarray]) -> None:
        out = integrate_frames(self.engine, self.acc, chunk, rows, self.where, xgm_normalise=self.xgm_normalise,
                               user_mask=self.user_mask, keep_image=self.keep_image)
        if out is None:
            return
        n = out["intensity"].shape[0]
        for k in ("intensity", "sigma", "trainId", "pulseId", "cellId", "ppl", "pulse_energy"):
            self.w.write_rows(self.source, f"saxs.{k}", self.row, np.asarray(out[k]).astype(self.keys[f"saxs.{k}"][0]))
        self.row += n

    def finish(self) -> dict[str, int]:
        if self.row != self.expected:
            self.w.abort()
            raise RuntimeError(f"{self.frames_out}: wrote {self.row} rows, expected {self.expected} "
                               "(annotation and frames out of sync)")
        self.w.close()
        write_partial(self.partial_out, self.acc, self.engine.describe(), self.provenance)
        return {"frames": self.n_frames, "xray_frames": int(self.row)}

    def abort(self) -> None:
        self.w.abort()


def integrate_sequence(
    engine: AzimuthalEngine,
    reader,
    annotation_file: str | Path,
    frames_out: str | Path,
    partial_out: str | Path,
    provenance: Mapping[str, Any],
    *,
    xgm_normalise: bool = False,
    trains_per_chunk: int = 4,
    user_mask: np.ndarray | None = None,
    source: str = SAXS_SOURCE,
) -> dict[str, int]:
    """Frames (a :class:`xfel_reduce.io.frames.SequenceFrames`) + the sequence's annotation
    file → per-frame REDU file + partial (:class:`SaxsSequenceReducer` fed from files).

    Returns
    -------
    dict
        ``frames`` (all frames of the sequence), ``xray_frames`` (integrated).
    """
    from ..io.frames import FrameIndex

    ann = read_annotation(annotation_file)
    where = str(next(iter(reader.paths.values())).name) if getattr(reader, "paths", None) else "?"
    if len(reader.modules) != engine.frame_shape[0]:
        raise ValueError(f"{where}: {len(reader.modules)} modules but the engine expects {engine.frame_shape[0]}")
    red = SaxsSequenceReducer(engine, ann, reader.train_ids, frames_out, partial_out, provenance,
                              xgm_normalise=xgm_normalise, user_mask=user_mask, source=source, where=where)
    index = FrameIndex(ann["trainId"], ann["pulseId"])
    try:
        for chunk in reader.iter_chunks(trains_per_chunk):
            idx = index.rows(chunk.train_ids, chunk.pulse_ids, where)
            red.add(chunk, {k: np.asarray(ann[k])[idx] for k in ("xray", "ppl", "pulse_energy")})
    except BaseException:
        red.abort()
        raise
    return red.finish()


def gather_run(
    partial_files: Iterable[str | Path],
    nxcansas_out: str | Path,
    provenance: Mapping[str, Any],
    *,
    title: str = "SAXS",
    run: str = "",
    fit: bool = True,
) -> dict[str, Any]:
    """The SAXS gather job: merge partials, fit spheres, write NXcanSAS.

    Returns a JSON-able summary (frames per group, fit results) for
    ``summary.json``.
    """
    import json

    from ..io.nxcansas import write_nxcansas

    paths = list(partial_files)
    acc = gather_partials(paths)
    engine_info: dict[str, Any] = {}
    import h5py

    with h5py.File(paths[0], "r") as f:
        engine_info = json.loads(f.attrs.get("engine", "{}"))
    fits: dict[str, dict[str, Any]] = {}
    if fit:
        for g in GROUPS:
            try:
                fits[g] = fit_sphere(acc.radial, acc.mean(g)[0], acc.error(g))
            except ValueError:
                continue  # too few frames/bins in this group (e.g. no laser-on frames)
    write_nxcansas(nxcansas_out, acc, title=title, run=run, provenance=provenance,
                   engine_info=engine_info, fits=fits)
    clean = {g: {k: v for k, v in f_.items() if not isinstance(v, np.ndarray)} for g, f_ in fits.items()}
    return {"frames": dict(acc.frames), "fits": clean}


def gather_partials(paths: Iterable[str | Path]) -> SaxsAccumulator:
    """Merge per-chunk partial files (written with ``SaxsAccumulator.to_h5`` under
    the group ``saxs_partial``) into the run result."""
    import h5py

    total: SaxsAccumulator | None = None
    for p in paths:
        with h5py.File(p, "r") as f:
            if "saxs_partial" not in f:
                raise KeyError(f"{p}: no 'saxs_partial' group; was it written by the saxs chunk rule?")
            part = SaxsAccumulator.from_h5(f["saxs_partial"])
        total = part if total is None else total.merge(part)
    if total is None:
        raise ValueError("no SAXS partial files to gather")
    return total


def write_partial(path: str | Path, acc: SaxsAccumulator, engine_info: Mapping[str, Any], provenance: Mapping[str, Any]) -> None:
    """Write a chunk partial atomically (it appears only when complete)."""
    import json

    from ..io.euxfel import AtomicH5File
    from ..io.provenance import attach_provenance

    with AtomicH5File(path) as f:
        acc.to_h5(f.create_group("saxs_partial"))
        f.attrs["engine"] = json.dumps(dict(engine_info))
        attach_provenance(f, dict(provenance))


def binned_run(frame_files: Iterable[str | Path], partial_files: Iterable[str | Path], binning_file: str | Path,
               output: str | Path, provenance: Mapping[str, Any], fit: bool = True) -> dict[str, Any]:
    """I(q) per bin of the run's binning (laser on, off, all, on − off) from the
    per-frame profiles, and the radius change per bin.

    One :class:`SaxsAccumulator` per bin and sequence file, merged: the same partial
    sums as the run averages, so the result does not depend on how the run was split.
    The observable is the relative radius change of the laser-on frames of each bin,
    ``R_on / R_off − 1``, ``R_off`` fitted to the laser-off frames of all bins (the
    pump cannot change them), with the error of the bin's own fit.
    """
    from ..binning import read_binning, write_binned
    from ..io.redu import read_frame_table

    binning = read_binning(Path(binning_file))
    ref = gather_partials(list(partial_files)[:1])
    n = binning.n_bins

    def empty() -> SaxsAccumulator:  # same axis, normalisation and engine as the run's partials
        return SaxsAccumulator(ref.radial, None, xgm_normalised=ref.xgm_normalised, poisson_k=ref.poisson_k)

    total = [empty() for _ in range(n)]
    for path in frame_files:
        rows = read_frame_table(Path(path), SAXS_SOURCE, group="saxs")
        if rows["trainId"].size == 0:
            continue
        b = binning.bins_of(rows["trainId"], rows["pulseId"], str(path))
        for k in np.unique(b[b >= 0]):
            sel = b == k
            part = empty()
            part.add(rows["intensity"][sel], rows["sigma"][sel], rows["ppl"][sel], rows["pulse_energy"][sel])
            total[k].merge(part)
    q = ref.radial
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for g in GROUPS:
        groups[g] = (np.stack([a.mean(g)[0] for a in total]), np.stack([a.error(g) for a in total]))
    groups["on_minus_off"] = (np.stack([a.difference()[0] for a in total]),
                              np.stack([a.difference()[1] for a in total]))
    counts = {"on": np.array([a.frames["on"] for a in total]), "off": np.array([a.frames["off"] for a in total])}
    observable = None
    if fit:
        off = empty()
        for a in total:
            off.merge(a)
        observable = {"name": "radius_change", "unit": "", "values": np.full(n, np.nan), "errors": np.full(n, np.nan)}
        try:
            r_off = fit_sphere(q, off.mean("off")[0], off.error("off"))
        except ValueError:
            r_off = None
        for k, a in enumerate(total):
            if r_off is None or a.frames["on"] < 2:
                continue
            try:
                r_on = fit_sphere(q, a.mean("on")[0], a.error("on"))
            except ValueError:
                continue
            ratio = r_on["radius_nm"] / r_off["radius_nm"]
            observable["values"][k] = ratio - 1.0
            # R_off's own error is common to every bin (a scale of the whole curve), not
            # scatter between bins: it stays out of the per-bin errors the kinetics fit weighs
            observable["errors"][k] = ratio * r_on["radius_err_nm"] / r_on["radius_nm"]
        if r_off is not None:
            observable["radius_off_nm"] = r_off["radius_nm"]
    out = write_binned(Path(output), binning, "saxs", q, "q", "1/nm", groups, counts, observable, dict(provenance),
                       attrs={"radius_off_nm": float(observable.get("radius_off_nm", np.nan)) if observable else np.nan})
    return {**out, "counts": {k: v.tolist() for k, v in counts.items()}}
