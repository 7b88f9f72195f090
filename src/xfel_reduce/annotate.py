"""Per-frame annotation: pulse flags, XGM energy, photons, lit pixels, hit flag.

Annotation flags frames, it never drops them: every frame recorded by any module
gets a row, with ``modules_present`` telling how many modules contributed and
``beam_data`` telling whether the X-ray pulses, pulse energy and laser flag of the frame
are known.  Which X-ray pulses a frame integrated is the facility's lit-frame-finder
rule (:mod:`xfel_reduce.beam`), or what the user declared (``annotation.xray_frames``);
``beam_source`` says which, per frame (:data:`BEAM_SOURCES`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import euxfel_bunch_pattern as bp
import numba
import numpy as np

from .aggregate import block_reference, merge_block
from .io.frames import MODULE_SHAPE

log = logging.getLogger("xfel_reduce")

#: Columns of the annotation table, in file order, with their dtypes.
COLUMNS: dict[str, np.dtype] = {
    "trainId": np.dtype(np.uint64),
    "pulseId": np.dtype(np.uint64),
    "cellId": np.dtype(np.uint16),
    "xray": np.dtype(np.bool_),
    "n_pulses": np.dtype(np.uint16),
    "ppl": np.dtype(np.bool_),
    "pulse_energy": np.dtype(np.float32),
    "photons": np.dtype(np.float32),
    "lit_pixels": np.dtype(np.int32),
    "n_peaks": np.dtype(np.int32),
    "hit": np.dtype(np.bool_),
    "hit_threshold": np.dtype(np.float32),
    "hit_score": np.dtype(np.float32),
    "hit_flags": np.dtype(np.uint16),
    "modules_present": np.dtype(np.int16),
    "nan_pixels": np.dtype(np.int32),
    "beam_data": np.dtype(np.bool_),
    "beam_source": np.dtype(np.uint8),
}

#: ``beam_source`` codes: what decided a frame's X-ray flag (the beam module's deciders,
#: then the user's declaration).
BEAM_SOURCES = ("none", "LITFRM", "timeserver+AGIPD control", "decoder+AGIPD control",
                "declared (annotation.xray_frames)")
DECLARED = len(BEAM_SOURCES) - 1

PPL_BIT = int(bp.PPL_BITS.LP_SPB)


@dataclass
class AnnotationConfig:
    """Thresholds of the annotation (all in photons unless stated).

    Attributes
    ----------
    photon_threshold
        Pixel values below this count as zero photons (suppresses read noise).
    lit_threshold
        A pixel is lit when its value is at least this.
    hit_mode
        ``"fixed"``: hit when ``lit_pixels > hit_threshold``; ``"adaptive"``: hit when
        ``lit_pixels > median + k·σ_IQR`` of X-ray frames in a sliding window of trains;
        ``"spi"``: the pulse-energy normalised SPI hit finder (:mod:`xfel_reduce.spi`,
        settings in ``spi``); ``hit_score``/``hit_threshold`` are then in its score units
        and ``hit_flags`` holds its per-frame quality bits.
    hit_threshold
        The fixed threshold (lit pixels).
    adaptive_k, adaptive_window_trains
        Parameters of the adaptive threshold (window centred on the frame's train).
    xray_frames
        ``None`` (default): X-ray frames from the run's beam data, and a run without
        them is an error; ``"all"`` or a list of memory cells: the user declares them.
    sase
        SASE beamline (1–3) whose pulses are the X-ray pulses.
    ppl_bit
        Bunch-pattern bit of the pump-probe laser.
    binned_images_gb
        Memory budget of the per-bin images of a binned run (:class:`AnnotationReducer`):
        24 bytes per pixel, bin and laser state; above it they are not made (and the
        binning report says why).
    """

    photon_threshold: float = 0.7
    lit_threshold: float = 0.7
    hit_mode: str = "adaptive"
    hit_threshold: float = 2000.0
    adaptive_k: float = 5.0
    adaptive_window_trains: int = 50
    sase: int = 1
    ppl_bit: int = PPL_BIT
    xray_frames: object = None
    spi: dict | None = None
    binned_images_gb: float = 4.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "AnnotationConfig":
        d = d or {}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown annotation settings: {sorted(unknown)}")
        return cls(**d)


@numba.njit(parallel=True, cache=True, nogil=True)
def _frame_stats_kernel(data, mask, present, photon_thr, lit_thr, photons, lit):  # pragma: no cover
    n_frames, n_mod, ny, nx = data.shape
    for i in numba.prange(n_frames):
        s = 0.0
        n_lit = 0
        for m in range(n_mod):
            if not present[i, m]:
                continue
            for y in range(ny):
                for x in range(nx):
                    if mask[i, m, y, x] == 0:
                        v = data[i, m, y, x]
                        if v >= photon_thr:  # NaN compares False
                            s += v
                        if v >= lit_thr:
                            n_lit += 1
        photons[i] = s
        lit[i] = n_lit


# fastmath "reassoc" only: the per-frame sums may be vectorised (2x here); no "nnan",
# so the NaN tests stay
@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc"})
def _pixel_pass(data, mask, cls, photon_thr, lit_thr, count, mean, m2, photons, lit):  # pragma: no cover
    # The annotation's one read of a chunk's pixels: per frame the photons and lit
    # pixels (what frame_stats computes) and, per image class, the moments (what
    # Moments.add_masked computes), block by block of pixels so that a block's sums
    # stay in cache.  Per-frame sums are kept per block (photons[b, i]) and added by
    # the caller: parallel blocks never write the same element.
    n, p = data.shape
    n_cls = count.shape[0]
    block = 2048
    for b in numba.prange((p + block - 1) // block):
        lo = b * block
        hi = min(p, lo + block)
        w = hi - lo
        ref = np.empty((n_cls, w), np.float64)
        nb = np.zeros((n_cls, w), np.int64)
        s1 = np.zeros((n_cls, w), np.float64)
        s2 = np.zeros((n_cls, w), np.float64)
        for c in range(n_cls):
            first = -1
            for i in range(n):
                if cls[i] == c:
                    first = i
                    break
            block_reference(data, mask, first, count[c], mean[c], lo, ref[c])
        for i in range(n):
            c = cls[i]
            ps = 0.0
            nl = 0
            drow = data[i, lo:hi]
            mrow = mask[i, lo:hi]
            # branch-free (selects, not jumps), so the compiler can vectorise the loops
            if c >= 0:
                r, a, q1, q2 = ref[c], nb[c], s1[c], s2[c]
                for j in range(w):
                    v = drow[j]
                    ok = (mrow[j] == 0) & (v == v)  # NaN != NaN
                    ps += v if ok & (v >= photon_thr) else 0.0
                    nl += 1 if ok & (v >= lit_thr) else 0
                    d = v - r[j] if ok else 0.0
                    a[j] += 1 if ok else 0
                    q1[j] += d
                    q2[j] += d * d
            else:
                for j in range(w):
                    v = drow[j]
                    ok = (mrow[j] == 0) & (v == v)
                    ps += v if ok & (v >= photon_thr) else 0.0
                    nl += 1 if ok & (v >= lit_thr) else 0
            photons[b, i] = ps
            lit[b, i] = nl
        for c in range(n_cls):
            merge_block(count[c], mean[c], m2[c], lo, ref[c], nb[c], s1[c], s2[c])


def frame_stats(data: np.ndarray, mask: np.ndarray, present: np.ndarray, cfg: AnnotationConfig):
    """Photons and lit pixels per frame over good pixels of present modules.

    Parameters
    ----------
    data, mask
        ``(n_frames, n_modules, ny, nx)`` float32 photons and uint32 bad-pixel bits.
    present
        ``(n_frames, n_modules)`` bool: module recorded this frame.
    """
    n = data.shape[0]
    photons = np.zeros(n, np.float64)
    lit = np.zeros(n, np.int64)
    _frame_stats_kernel(data, mask, present, np.float32(cfg.photon_threshold),
                        np.float32(cfg.lit_threshold), photons, lit)
    return photons.astype(np.float32), lit.astype(np.int32)


def frame_stats_reference_numpy(data, mask, present, cfg: AnnotationConfig):
    """Plain numpy version of :func:`frame_stats` (benchmark reference and test oracle)."""
    good = (mask == 0) & present[:, :, None, None]
    with np.errstate(invalid="ignore"):
        photons = np.where(good & (data >= cfg.photon_threshold), data, 0).sum(axis=(1, 2, 3))
        lit = (good & (data >= cfg.lit_threshold)).sum(axis=(1, 2, 3))
    return photons.astype(np.float32), lit.astype(np.int32)


def pulse_flags(
    pulse_ids: np.ndarray,
    frame_train_index: np.ndarray,
    bunch_tables: np.ndarray,
    xgm_td: np.ndarray,
    cfg: AnnotationConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X-ray flag, PPL flag and pulse energy of each frame.

    Parameters
    ----------
    pulse_ids
        Bunch-table index of each frame.
    frame_train_index
        Row of ``bunch_tables``/``xgm_td`` holding each frame's train.
    bunch_tables
        ``(n_trains, 2700)`` bunch pattern tables.
    xgm_td
        ``(n_trains, n_slots)`` XGM ``intensityTD``: one entry per pulse through the
        XGM's tunnel (SASE1 and SASE3 together), in pulse order.

    Returns
    -------
    xray, ppl, pulse_energy
        Pulse energy is 0 for frames without X-rays.
    """
    from .beam import instrument_pulses, line_pulses

    pid = pulse_ids.astype(np.intp)
    sase_all = instrument_pulses(bunch_tables, cfg.sase)
    xray = sase_all[frame_train_index, pid]
    # The laser's bits start at bucket 0 of the table, anchored on the train's first
    # X-ray pulse (EXtra's PumpProbePulses with bunch_table_offset 0).
    first = np.argmax(sase_all, axis=1)[frame_train_index]
    rel = pid - first
    inside = (rel >= 0) & (rel < bunch_tables.shape[1])
    ppl = np.zeros(pid.shape, bool)
    ppl[inside] = (bunch_tables[frame_train_index[inside], rel[inside]] & np.uint32(cfg.ppl_bit)) != 0
    # The XGM reports every pulse through its tunnel in order: SASE1 and SASE3 share
    # destination T4D (extra-redu's mask_xgm), so a pulse's energy sits at its rank
    # among all T4D pulses of the train; on SASE2 among the T5D ones.
    rank = np.cumsum(line_pulses(bunch_tables, cfg.sase), axis=1) - 1
    r = rank[frame_train_index, pid]
    energy = np.zeros(pulse_ids.shape, np.float32)
    ok = xray & (r < xgm_td.shape[1])
    energy[ok] = xgm_td[frame_train_index[ok], r[ok]]
    return xray, ppl, energy


def hit_thresholds(train_ids: np.ndarray, lit: np.ndarray, xray: np.ndarray, cfg: AnnotationConfig) -> np.ndarray:
    """Lit-pixel threshold of each frame (fixed, or adaptive over a train window).

    Computed over the whole run so that it does not depend on how the run was split.
    The adaptive threshold is ``median + k·σ_IQR`` (σ_IQR = IQR / 1.349, robust to the
    hits themselves) of the X-ray frames of trains within ±window/2 trains.
    """
    thr = np.full(lit.shape, cfg.hit_threshold, np.float32)
    if cfg.hit_mode == "fixed":
        return thr
    if cfg.hit_mode != "adaptive":
        raise ValueError(f"annotation.hit_mode must be 'fixed', 'adaptive' or 'spi', not {cfg.hit_mode!r}")
    trains = np.unique(train_ids)
    pos = np.searchsorted(trains, train_ids)
    half = max(1, cfg.adaptive_window_trains // 2)
    order = np.argsort(pos, kind="stable")
    pos_sorted = pos[order]
    for t in range(trains.size):
        lo = np.searchsorted(pos_sorted, t - half, "left")
        hi = np.searchsorted(pos_sorted, t + half, "right")
        idx = order[lo:hi]
        vals = lit[idx][xray[idx]]
        if vals.size < 3:
            continue
        q1, med, q3 = np.percentile(vals, [25, 50, 75])
        sigma = max((q3 - q1) / 1.349, 1.0)
        thr[pos == t] = med + cfg.adaptive_k * sigma
    return thr


def empty_table(n: int) -> dict[str, np.ndarray]:
    return {k: np.zeros(n, dt) for k, dt in COLUMNS.items()}


# -- per-sequence pass and per-run gather ------------------------------------------
IMAGE_CLASSES = ("xray", "laser_on", "laser_off", "dark")


def declared_xray(cell_ids: np.ndarray, xray_frames: object) -> np.ndarray:
    """X-ray flags the user declared: ``"all"`` frames or the listed memory cells."""
    if xray_frames == "all":
        return np.ones(cell_ids.shape, bool)
    if isinstance(xray_frames, (list, tuple)):
        return np.isin(cell_ids, np.asarray(xray_frames, np.int64))
    raise ValueError(f"annotation.xray_frames must be 'all' or a list of memory cells, not {xray_frames!r}")


def frame_beam_columns(beam_table, train_ids: np.ndarray, cell_ids: np.ndarray,
                       cfg: AnnotationConfig) -> dict[str, np.ndarray]:
    """Beam columns of the annotation for the given frames.

    Parameters
    ----------
    beam_table
        A :class:`xfel_reduce.beam.TrainBeam` covering the frames' trains, or ``None``
        when the run has no beam data (then ``cfg.xray_frames`` must declare them).
    """
    n = train_ids.size
    out = {"xray": np.zeros(n, bool), "n_pulses": np.zeros(n, np.uint16), "ppl": np.zeros(n, bool),
           "pulse_energy": np.zeros(n, np.float32), "beam_data": np.zeros(n, bool),
           "beam_source": np.zeros(n, np.uint8)}
    fb = beam_table.frames(train_ids, cell_ids) if beam_table is not None else None
    if fb is not None:
        out.update(xray=fb.xray & fb.xray_known, n_pulses=np.where(fb.xray_known, fb.n_pulses, 0),
                   ppl=fb.ppl & fb.ppl_known & fb.xray, pulse_energy=fb.pulse_energy,
                   beam_data=fb.beam_data, beam_source=fb.decided_by.astype(np.uint8))
    if cfg.xray_frames is not None:
        x = declared_xray(cell_ids, cfg.xray_frames)
        measured = out["n_pulses"] if fb is not None else np.zeros(n, np.uint16)
        out.update(xray=x, n_pulses=np.where(x, np.maximum(measured, 1), 0).astype(np.uint16),
                   beam_source=np.full(n, DECLARED, np.uint8),
                   pulse_energy=np.where(x, out["pulse_energy"], 0).astype(np.float32),
                   ppl=out["ppl"] & x)
    return out


class AnnotationReducer:
    """The annotation part of a sequence's one pass: per chunk the frame table rows
    (beam columns, photons, lit pixels …) and the mergeable image moments.

    Parameters
    ----------
    n_modules
        Modules of the frames.
    beam_table
        :class:`xfel_reduce.beam.TrainBeam` of the sequence's trains (``None``: no beam
        data; then ``cfg.xray_frames`` declares the X-ray frames).
    """

    #: classes accumulated per frame (a frame is in at most one); "xray" is the merge
    #: of laser_on and laser_off (result()).  With bins, an X-ray frame in a bin goes to
    #: that bin's laser-on or laser-off class instead (2 per bin, after these), and
    #: laser_on / laser_off are merged from them: still one accumulation per frame.
    PASS_CLASSES = ("laser_on", "laser_off", "dark")

    def __init__(self, n_modules: int, cfg: AnnotationConfig, beam_table=None, binning=None):
        self.cfg, self.beam_table = cfg, beam_table
        self.shape = (n_modules,) + MODULE_SHAPE
        p = int(np.prod(self.shape))
        self.binning, self.binned_why = binning, "run not binned" if binning is None else ""
        n_bins = binning.n_bins if binning is not None else 0
        need_gb = 2 * n_bins * p * 24 / 1e9
        if binning is not None and need_gb > cfg.binned_images_gb:
            self.binning, n_bins = None, 0
            self.binned_why = (f"per-bin images need {need_gb:.1f} GB for {binning.n_bins} bins, above "
                               f"annotation.binned_images_gb = {cfg.binned_images_gb:g}")
            log.warning("%s: not made", self.binned_why)
        self.n_bins = n_bins
        k = len(self.PASS_CLASSES) + 2 * n_bins
        self._count = np.zeros((k, p), np.int64)
        self._mean = np.zeros((k, p), np.float64)
        self._m2 = np.zeros((k, p), np.float64)
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, chunk) -> dict[str, np.ndarray]:
        """Annotate one chunk; returns its table rows (chunk order), which the
        technique reducers of the same pass receive."""
        t = empty_table(len(chunk))
        t.update(trainId=chunk.train_ids, pulseId=chunk.pulse_ids, cellId=chunk.cell_ids,
                 modules_present=chunk.present.sum(axis=1), nan_pixels=chunk.nan_pixels,
                 **frame_beam_columns(self.beam_table, chunk.train_ids, chunk.cell_ids, self.cfg))
        t["n_peaks"][:] = -1
        x = t["xray"]
        # laser-on and laser-off partition the X-ray frames: their merge is the X-ray
        # class (result()), so every frame is accumulated once, not twice
        cls = np.full(len(chunk), -1, np.int64)
        cls[x & t["ppl"]] = 0
        cls[x & ~t["ppl"]] = 1
        cls[~x & t["beam_data"]] = 2
        if self.binning is not None:
            fb = self.binning.frame_bins(chunk.train_ids, t["pulse_energy"])
            binned = x & (fb >= 0)
            cls[binned] = len(self.PASS_CLASSES) + 2 * fb[binned] + (~t["ppl"][binned]).astype(np.int64)
        n = len(chunk)
        data = chunk.data.reshape(n, -1)
        mask = chunk.mask.reshape(n, -1)
        if not (data.flags.c_contiguous and mask.flags.c_contiguous):
            data, mask = np.ascontiguousarray(data), np.ascontiguousarray(mask)
        n_blk = (data.shape[1] + 2047) // 2048
        photons = np.zeros((n_blk, n), np.float64)
        lit = np.zeros((n_blk, n), np.int64)
        # missing modules are masked (NO_DATA), so they count in neither sum
        _pixel_pass(data, mask, cls, np.float32(self.cfg.photon_threshold), np.float32(self.cfg.lit_threshold),
                    self._count, self._mean, self._m2, photons, lit)
        t["photons"] = photons.sum(axis=0).astype(np.float32)
        t["lit_pixels"] = lit.sum(axis=0).astype(np.int32)
        self.parts.append(t)
        return t

    @property
    def frames(self) -> int:
        return sum(len(p["trainId"]) for p in self.parts)

    def result(self):
        """``(table, images)``: columns of :data:`COLUMNS` (``hit``/``hit_threshold`` are
        filled per run by :func:`finalise_hits`; ``n_peaks`` is -1 until a peak finder
        has run) and ``{class: Moments}`` of the images of X-ray frames, laser-on and
        laser-off X-ray frames, and frames without X-rays (residual dark level)."""
        from .aggregate import Moments

        table = {k: np.concatenate([p[k] for p in self.parts]) if self.parts else np.zeros(0, dt)
                 for k, dt in COLUMNS.items()}
        images = {name: self._moments(c) for c, name in enumerate(self.PASS_CLASSES)}
        for b in range(self.n_bins):
            for j, name in enumerate(("laser_on", "laser_off")):
                images[name].merge(self._moments(len(self.PASS_CLASSES) + 2 * b + j))
        images["xray"] = Moments(self.shape).merge(images["laser_on"]).merge(images["laser_off"])
        return table, {c: images[c] for c in IMAGE_CLASSES}

    def _moments(self, c: int, shape: tuple[int, ...] | None = None):
        from .aggregate import Moments

        shape = shape or self.shape
        m = Moments(shape)
        m.count, m.mean, m.m2 = (a[c].reshape(shape).copy() for a in (self._count, self._mean, self._m2))
        return m

    def binned_images(self):
        """The X-ray frames' images per bin and laser state
        (:class:`xfel_reduce.binning.BinnedImages`); ``None`` without bins
        (:attr:`binned_why` says why)."""
        if self.binning is None:
            return None
        from .binning import BinnedImages, signature

        lo = len(self.PASS_CLASSES)
        return BinnedImages(self._moments(slice(lo, lo + 2 * self.n_bins), (self.n_bins, 2) + self.shape),
                            signature(self.binning))


def annotate_sequence(reader, cfg: AnnotationConfig, beam_table=None, trains_per_chunk: int = 4,
                      progress=None):
    """One pass over a sequence: the annotation table and mergeable image partials
    (:class:`AnnotationReducer` over ``reader.iter_chunks``).

    Parameters
    ----------
    reader
        A :class:`xfel_reduce.io.frames.SequenceFrames`.
    beam_table
        :class:`xfel_reduce.beam.TrainBeam` of the sequence's trains (``None``: no beam
        data; then ``cfg.xray_frames`` declares the X-ray frames).
    """
    import time

    red = AnnotationReducer(len(reader.modules), cfg, beam_table)
    t0 = time.monotonic()
    done = 0
    for chunk in reader.iter_chunks(trains_per_chunk):
        red.add(chunk)
        done += len(chunk.chunk_train_ids)
        if progress is not None:
            progress.info("%d/%d trains annotated (%.1f frames/s)", done, reader.train_ids.size,
                          red.frames / max(time.monotonic() - t0, 1e-9))
    return red.result()


def finalise_hits(table: dict[str, np.ndarray], cfg: AnnotationConfig):
    """Fill ``hit_threshold``, ``hit`` and ``hit_score`` (the quantity compared with the
    threshold: lit pixels, or the SPI score) and, for ``hit_mode: spi``, ``hit_flags``,
    from the whole run's per-frame series.

    Returns
    -------
    table, result
        The table, and the SPI finder's :class:`xfel_reduce.spi.HitResult` (``None`` for
        the fixed and adaptive lit-pixel thresholds).
    """
    if cfg.hit_mode == "spi":
        from . import spi

        result = spi.find_hits(table, spi.SpiHitConfig.from_dict(cfg.spi or {}))
        cols = result.columns()
        table["hit"] = cols["hit"] & table["xray"]
        table["hit_threshold"] = cols["hit_threshold"]
        table["hit_score"] = cols["hit_score"]
        table["hit_flags"] = cols["hit_flags"].astype(np.uint16)
        return table, result
    thr = hit_thresholds(table["trainId"], table["lit_pixels"], table["xray"], cfg)
    table["hit_threshold"] = thr
    table["hit_score"] = table["lit_pixels"].astype(np.float32)
    table["hit"] = table["xray"] & (table["lit_pixels"] > thr)
    return table, None


def compare_with_truth(table: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                       hit_key: str = "hit") -> dict:
    """Recall and precision of the table's hits against the simulator's per-frame truth.

    Frames are matched by (trainId, pulseId); truth frames absent from the table (not
    recorded) count as missed.
    """
    from .io.frames import FrameIndex

    true_hit = np.asarray(truth["hit"], bool)
    idx, found = FrameIndex(table["trainId"], table["pulseId"]).find(truth["trainId"], truth["pulseId"])
    flagged = np.zeros(true_hit.size, bool)
    flagged[found] = np.asarray(table[hit_key], bool)[idx[found]]
    tp = int((flagged & true_hit).sum())
    fp = int((flagged & ~true_hit).sum())
    fn = int((~flagged & true_hit).sum())
    return {"true_hits": int(true_hit.sum()), "found": tp, "false": fp, "missed": fn,
            "recall": tp / (tp + fn) if (tp + fn) else None,
            "precision": tp / (tp + fp) if (tp + fp) else None}


def concat_tables(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate annotation tables and sort rows by (trainId, pulseId)."""
    return concat_tables_any([{k: t[k] for k in COLUMNS} for t in tables])


def concat_tables_any(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate per-frame tables with the same columns, sorted by (trainId, pulseId)."""
    out = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    order = np.lexsort((out["pulseId"], out["trainId"]))
    return {k: v[order] for k, v in out.items()}
