"""The kept-frames data set of an SPI or SFX run, and the check that nothing was lost.

What is kept
------------
Every hit, every X-ray frame without a hit decision (it cannot be thrown away
unseen), and a seeded random sample of the misses (``reduction.miss_fraction`` of
them).  The sample is drawn from a hash of (trainId, pulseId) and the seed, so it
does not depend on how the run was split into sequences or jobs.  Frames without
X-rays are not kept: the dark level they measure is in the run's aggregate images.

Layout
------
A run folder ``<results>/r0010/kept/`` that ``extra_data.RunDirectory`` opens as it
opens facility proc data:

* ``CORR-R0010-AGIPD03-S00000.h5``: per module and sequence, the CORR source of the
  input (``SPB_DET_AGIPD1M-1/CORR/3CH0:output``) with ``image.data``,
  ``image.mask``, ``image.cellId``, ``image.pulseId`` (and ``image.trainId``), INDEX
  first/count for every train of the sequence (count 0 where nothing was kept).  The
  rows are the CORR rows of the kept frames, bit for bit unless photon rounding is on;
  ``image.gain`` is not kept (the data are already in photons).
* ``REDU-R0010-KEPT-S00000.h5``: the annotation rows of the kept frames
  (:data:`xfel_reduce.io.sources.KEPT_SOURCE`) with ``kept_reason`` (:class:`Reason`)
  and the second, independent score of :func:`validation_scores`.

Zero-risk check
---------------
The hit finder's decision is a lit-pixel count against pulse energy.  On the sampled
misses a second score is computed from the kept images: photons in the innermost
pixels (``validation.roi_pixel_fraction`` of the detector, where a particle's
diffraction is strongest), per unit pulse energy.  A sampled miss is *suspect* when
this score exceeds the sampled misses' median by ``validation.k`` robust σ.  With
``s`` suspects among ``n`` sampled misses out of ``N`` misses, the missed hits are
estimated as ``N·s/n`` with a one-sided Clopper–Pearson bound at
``validation.confidence`` (:func:`missed_hit_estimate`).
"""
from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import h5py
import numpy as np

from .io.frames import MODULE_SHAPE, FrameIndex
from .io.runs import open_file

#: Techniques whose runs can write a kept-frames set.
KEPT_TECHNIQUES = ("spi", "sfx")
#: The seed's table (reduced bytes / RAW bytes) per technique.
SEED_REDUCTION_RANGE = {"spi": (1e-3, 1e-2), "sfx": (1e-2, 1e-1)}
#: Default ROI of the validation score: SPI speckle is strongest near the beam; Bragg
#: spots are anywhere.
VALIDATION_ROI_DEFAULT = {"spi": 0.2, "sfx": 1.0}
_COMPRESSIONS = ("none", "gzip", "bitshuffle-lz4")


class Reason(enum.IntFlag):
    """``kept_reason`` bits of a kept frame."""

    HIT = 1         #: a hit
    SAMPLED = 2     #: a miss drawn into the validation sample
    UNDECIDED = 4   #: an X-ray frame without a hit decision


@dataclass
class ValidationConfig:
    """The second score and the missed-hit bound (``reduction.validation``)."""

    roi_pixel_fraction: float | None = None
    k: float = 5.0
    confidence: float = 0.95
    photon_threshold: float = 0.7
    #: fewer sampled misses than this: the estimate is stated but not trusted (verdict warns)
    min_samples: int = 10

    def __post_init__(self) -> None:
        f = self.roi_pixel_fraction
        if f is not None and not 0 < f <= 1:
            raise ValueError(f"reduction.validation.roi_pixel_fraction must be in (0, 1], not {f!r}")
        if not 0.5 < self.confidence < 1:
            raise ValueError(f"reduction.validation.confidence must be in (0.5, 1), not {self.confidence!r}")
        if not self.k > 0:
            raise ValueError(f"reduction.validation.k must be > 0, not {self.k!r}")


@dataclass
class ReductionConfig:
    """Config block ``reduction``.

    Attributes
    ----------
    kept_frames
        Techniques whose runs write the kept-frames set (``spi``, ``sfx``).
    miss_fraction
        Fraction of the misses kept as the validation sample.
    seed
        Seed of the sample.
    photon_rounding
        Store kept frames rounded to integer photons (lossy; the facility's
        ``extra_redu.lossy.errb_round`` with absolute precision 2⁰).
    compression
        HDF5 filter of ``image.data``/``image.mask``: ``none``, ``gzip`` (level 1 with
        byte shuffle, readable everywhere) or ``bitshuffle-lz4`` (needs ``hdf5plugin``
        wherever the files are read).
    """

    kept_frames: list = field(default_factory=lambda: ["spi"])
    miss_fraction: float = 0.01
    seed: int = 0
    photon_rounding: bool = False
    compression: str = "none"
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if isinstance(self.validation, Mapping):
            self.validation = _from_mapping(ValidationConfig, self.validation, "reduction.validation")
        bad = [t for t in self.kept_frames if t not in KEPT_TECHNIQUES]
        if bad:
            raise ValueError(f"reduction.kept_frames: {bad} cannot keep frames (only {list(KEPT_TECHNIQUES)})")
        if not 0 <= self.miss_fraction <= 1:
            raise ValueError(f"reduction.miss_fraction must be in [0, 1], not {self.miss_fraction!r}")
        if self.compression not in _COMPRESSIONS:
            raise ValueError(f"reduction.compression must be one of {list(_COMPRESSIONS)}, "
                             f"not {self.compression!r}")

    @classmethod
    def from_dict(cls, d: Mapping | None) -> ReductionConfig:
        return _from_mapping(cls, d or {}, "reduction")

    def to_dict(self) -> dict:
        return asdict(self)


def _from_mapping(cls, d: Mapping, where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {where} settings: {sorted(unknown)} (known: {sorted(names)})")
    return cls(**d)


# -- which frames --------------------------------------------------------------------
def kept_reasons(table: Mapping[str, np.ndarray], miss_fraction: float, seed: int) -> np.ndarray:
    """``kept_reason`` of every frame of a run table (0: not kept).

    ``table`` needs ``trainId``, ``pulseId``, ``xray``, ``hit`` and, where the hit
    finder leaves frames undecided, ``hit_flags`` (:class:`xfel_reduce.spi.HitFlag`).
    """
    from .spi import HitFlag, _hash_uniform

    xray = np.asarray(table["xray"], bool)
    hit = np.asarray(table["hit"], bool) & xray
    flags = np.asarray(table.get("hit_flags", np.zeros(xray.size, np.uint16)), np.uint16)
    undecided = xray & ~hit & ((flags & np.uint16(HitFlag.UNDECIDED)) != 0)
    misses = xray & ~hit & ~undecided
    u = _hash_uniform(table["trainId"], table["pulseId"], seed)
    reason = np.zeros(xray.size, np.uint8)
    reason[hit] |= np.uint8(Reason.HIT)
    reason[misses & (u < miss_fraction)] |= np.uint8(Reason.SAMPLED)
    reason[undecided] |= np.uint8(Reason.UNDECIDED)
    return reason


# -- storage -----------------------------------------------------------------------------
def round_photons(data: np.ndarray) -> np.ndarray:
    """Integer photons, ties to even, NaN kept: ``extra_redu.lossy.errb_round(data, 23, 0)``
    (which, in extra-redu 1.1.0, leaves values below 2⁻⁸ in magnitude unrounded; here
    they become 0)."""
    out = np.rint(data)
    out += 0.0  # -0.0 → +0.0, as errb_round writes
    return out


def storage_filters(compression: str) -> dict:
    """h5py ``create_dataset`` filter arguments of a ``reduction.compression`` value."""
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    try:
        import hdf5plugin
    except ImportError:  # pragma: no cover - hdf5plugin is in the lock
        raise ValueError("reduction.compression: bitshuffle-lz4 needs the hdf5plugin package "
                         "(pip install hdf5plugin), also wherever the files are read") from None
    return dict(hdf5plugin.Bitshuffle(cname="lz4"))


# -- writing one sequence -------------------------------------------------------------------
def _module_rows(path: Path, module: int, raw: bool = False):
    """(source, row indices, trainId and pulseId per row, the file's trains) of a CORR
    (or, with ``raw``, a RAW) module file.

    Rows come from extra-data's own index of the file (INDEX/trainId may be padded
    with zeros, and suspect trains are left out), so they are exactly the frames the
    annotation saw.
    """
    from .io.frames import corr_source
    from .io.runs import raw_module_source

    dc = open_file(path)
    src = (raw_module_source if raw else corr_source)(dc, module, path)
    fa = dc[src].files[0]
    firsts, counts = fa.get_index(src, "image")
    tids = np.asarray(fa.train_ids, np.uint64)
    good = np.asarray(dc.train_ids, np.uint64)
    sel = np.isin(tids, good)
    rows = np.concatenate([np.arange(a, a + c, dtype=np.int64) for a, c in zip(firsts[sel], counts[sel])]
                          or [np.zeros(0, np.int64)])
    with h5py.File(path, "r") as h:
        pid = h[f"INSTRUMENT/{src}/image/pulseId"][:].reshape(-1)[rows].astype(np.uint64)
    return src, rows, np.repeat(tids[sel], counts[sel].astype(np.int64)), pid, good


def read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``ds[rows]`` for sorted rows, read as contiguous slices: h5py's point selection of
    a list of rows costs ~15 ms per call whatever its size (measured: 62 % of the kept
    frames' time), slices of consecutive rows stream at the file's read rate.  Spans
    at most 4x the rows read are read whole and picked in memory."""
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return np.zeros((0,) + ds.shape[1:], ds.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 4 * rows.size:
        return ds[lo:hi][rows - lo]
    out = np.empty((rows.size,) + ds.shape[1:], ds.dtype)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for a, b in zip(np.r_[0, breaks], np.r_[breaks, rows.size]):
        ds.read_direct(out, np.s_[int(rows[a]):int(rows[b - 1]) + 1], np.s_[a:b])
    return out


def write_kept_sequence(corr_files: Mapping[int, os.PathLike], run_table: Mapping[str, np.ndarray],
                        out_dir: os.PathLike, run: int, sequence: int, cfg: ReductionConfig,
                        roi: np.ndarray | None = None, reference_energy_uj: float | None = None,
                        provenance: dict | None = None, proposal: int = 0,
                        block_frames: int = 32, constants: Mapping[int, os.PathLike] | None = None,
                        common_mode=None) -> dict:
    """Write one sequence's kept frames (all modules) and their annotation rows.

    Parameters
    ----------
    corr_files
        ``{module: CORR file}`` of the sequence, or with ``constants`` its RAW files:
        then only the kept frames are corrected (the run's second, partial read).
    run_table
        The run's annotation table with the final ``hit`` (aggregate ``run.h5``).
    roi
        ``(n_modules, 512, 128)`` bool: pixels of the validation score (modules in
        ``sorted(corr_files)`` order); ``None``: all pixels.
    reference_energy_uj
        Pulse energy the validation score is scaled to (the run's median).

    Returns
    -------
    dict
        Frames kept per reason, bytes written, the files, the detector name (from the
        CORR sources).
    """
    from .io.euxfel import EuXFELWriter
    from .io.redu import write_frame_table
    from .io.sources import KEPT_SOURCE, corr_filename, kept_table_filename

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reason_all = kept_reasons(run_table, cfg.miss_fraction, cfg.seed)
    index = FrameIndex(run_table["trainId"], run_table["pulseId"])
    in_seq = np.zeros(reason_all.size, bool)       # run-table rows of this sequence
    photons = np.zeros(reason_all.size, np.float64)  # validation photons, summed over modules
    modules = sorted(int(m) for m in corr_files)
    filters = storage_filters(cfg.compression)
    vcfg = cfg.validation
    files = []
    detectors = set()
    for j, m in enumerate(modules):
        path = Path(corr_files[m])
        src, rows, row_tid, row_pid, trains = _module_rows(path, m, raw=constants is not None)
        in_src = src
        if constants is not None:
            from .io.runs import corr_name_of

            src = corr_name_of(in_src)
        detectors.add(src.split("/", 1)[0])
        t_rows = index.rows(row_tid, row_pid, str(path))
        in_seq[t_rows] = True
        keep = reason_all[t_rows] != 0
        krows, ktid, kpid, kt_rows = rows[keep], row_tid[keep], row_pid[keep], t_rows[keep]
        counts = np.zeros(trains.size, np.uint64)
        np.add.at(counts, np.searchsorted(trains, ktid), 1)
        target = out_dir / corr_filename(run, m, sequence)
        with h5py.File(path, "r") as h, EuXFELWriter(target, trains, provenance, proposal=proposal, run=run,
                                                     sequence=sequence, run_type="kept frames") as w:
            g = h[f"INSTRUMENT/{in_src}/image"]
            kcells = g["cellId"][:].reshape(-1)[krows].astype(np.uint16) if krows.size else np.zeros(0, np.uint16)
            w.add_instrument(src, counts, {
                "image.data": (np.float32, MODULE_SHAPE),
                "image.mask": (np.uint32, MODULE_SHAPE),
                "image.cellId": (np.uint16, ()),
                "image.pulseId": (np.uint64, ()),
            }, chunk_rows=1, filters=filters)
            # rows of a train must follow the INDEX order (by train, then as recorded)
            w.write_rows(src, "image.pulseId", 0, kpid)
            w.write_rows(src, "image.cellId", 0, kcells)
            corrector = None
            if constants is not None and krows.size:
                from .calibrate.agipd import ModuleCorrector

                corrector = ModuleCorrector(Path(constants[m]), kcells, common_mode)
            for lo in range(0, krows.size, block_frames):
                r = krows[lo:lo + block_frames]
                if corrector is not None:
                    data, _, mask = corrector(read_rows(g["data"], r), kcells[lo:lo + block_frames])
                else:
                    data = read_rows(g["data"], r).astype(np.float32)
                    mask = read_rows(g["mask"], r).astype(np.uint32)
                if cfg.photon_rounding:
                    data = round_photons(data)
                w.write_rows(src, "image.data", lo, data)
                w.write_rows(src, "image.mask", lo, mask)
                # the validation score: photons of good ROI pixels (module j's part)
                good = (mask == 0) & (data >= vcfg.photon_threshold)
                if roi is not None:
                    good &= roi[j][None]
                np.add.at(photons, kt_rows[lo:lo + block_frames],
                          np.where(good, data, 0).sum(axis=(1, 2), dtype=np.float64))
        files.append(target)
    # annotation rows of this sequence's kept frames
    idx = np.flatnonzero(in_seq & (reason_all != 0))
    idx = idx[np.lexsort((run_table["pulseId"][idx], run_table["trainId"][idx]))]
    rows_out = {k: np.asarray(v)[idx] for k, v in run_table.items()}
    rows_out["kept_reason"] = reason_all[idx]
    photons = photons[idx]
    e = np.asarray(rows_out["pulse_energy"], np.float64)
    e_ref = float(reference_energy_uj) if reference_energy_uj else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        vs = np.where(np.isfinite(e) & (e > 0) & np.isfinite(e_ref), photons * e_ref / e, np.nan)
    rows_out["validation_photons"] = photons.astype(np.float32)
    rows_out["validation_score"] = vs.astype(np.float32)
    table_path = out_dir / kept_table_filename(run, sequence)
    write_frame_table(table_path, KEPT_SOURCE, rows_out, provenance or {}, proposal=proposal, run=run,
                      sequence=sequence, run_type="kept frames")
    files.append(table_path)
    r = rows_out["kept_reason"]
    return {"frames": {"hits": int(((r & Reason.HIT) != 0).sum()),
                       "sampled_misses": int(((r & Reason.SAMPLED) != 0).sum()),
                       "undecided": int(((r & Reason.UNDECIDED) != 0).sum())},
            "bytes": int(sum(p.stat().st_size for p in files)), "files": [str(p) for p in files],
            "detector": ",".join(sorted(detectors))}


# -- the run's check -----------------------------------------------------------------------
def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided Clopper–Pearson bounds ``(lower, upper)`` of a binomial rate ``k/n``.

    Each bound holds at ``confidence`` on its own (upper: P(rate ≤ upper) ≥ confidence).
    """
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def suspects(scores: np.ndarray, k: float) -> tuple[np.ndarray, float, float]:
    """Sampled misses whose validation score is ``k`` robust σ above their median.

    σ from the lower half ((median − Q1)/0.6745): hits left among the misses sit on
    the high side and must not widen it.
    """
    s = np.asarray(scores, np.float64)
    ok = np.isfinite(s)
    if ok.sum() < 3:
        return np.zeros(s.size, bool), float("nan"), float("nan")
    q1, med = np.percentile(s[ok], [25, 50])
    sigma = max((med - q1) / 0.6744897501960817, 1e-12)
    with np.errstate(invalid="ignore"):
        return ok & (s > med + k * sigma), float(med), float(sigma)


def missed_hit_estimate(scores: np.ndarray, n_misses: int, n_hits: int,
                        cfg: ValidationConfig | None = None) -> dict:
    """How many hits were thrown away, from the validation scores of the sampled misses.

    Parameters
    ----------
    scores
        Validation score of every sampled miss of the run.
    n_misses, n_hits
        All misses (decided X-ray frames without a hit) and hits of the run.

    Returns
    -------
    dict
        ``sampled``, ``suspects``, the rate among misses with its bounds, the missed hits
        (``n_misses·rate``) and the missed fraction of all hits, ``missed/(hits+missed)``,
        with its upper bound; ``statement`` says it in one line.
    """
    cfg = cfg or ValidationConfig()
    s = np.asarray(scores, np.float64)
    sus, med, sig = suspects(s, cfg.k)
    n, k = int(np.isfinite(s).sum()), int(sus.sum())
    lo, hi = clopper_pearson(k, n, cfg.confidence)
    rate = k / n if n else float("nan")

    def frac(r):
        m = r * n_misses
        return m / (n_hits + m) if (n_hits + m) > 0 else 0.0

    def finite(x):  # too few samples for the statistics: absent, not NaN (JSON has no NaN)
        return x if np.isfinite(x) else None

    out = {"sampled": n, "suspects": k, "misses": int(n_misses), "hits": int(n_hits),
           "k_sigma": cfg.k, "confidence": cfg.confidence, "score_median": finite(med),
           "score_sigma": finite(sig),
           "rate": rate if n else None, "rate_lower": lo if n else None, "rate_upper": hi if n else None,
           "missed_hits": rate * n_misses if n else None,
           "missed_hits_upper": hi * n_misses if n else None,
           "missed_fraction": frac(rate) if n else None,
           "missed_fraction_lower": frac(lo) if n else None,
           "missed_fraction_upper": frac(hi) if n else None,
           "enough_samples": n >= cfg.min_samples}
    if n:
        out["statement"] = (f"estimated missed hits < {100 * frac(hi):.1f} % of all hits at "
                            f"{100 * cfg.confidence:.0f} % ({k} suspect of {n} sampled misses, "
                            f"{n_misses} misses)")
    else:
        out["statement"] = "no sampled misses: the missed hits cannot be estimated (raise reduction.miss_fraction)"
    if 0 < n < cfg.min_samples:
        out["statement"] += f"; fewer than {cfg.min_samples} samples (reduction.validation.min_samples)"
    return out


def validation_roi(geom, modules: Sequence[int], fraction: float) -> np.ndarray:
    """The ``fraction`` of pixels closest to the beam axis, ``(n_modules, 512, 128)`` bool."""
    from . import geometry

    pos = geometry.pixel_positions(geom, 0.0, list(modules))
    r = np.hypot(pos[..., 0], pos[..., 1])
    if fraction >= 1:
        return np.ones(r.shape, bool)
    return r <= np.quantile(r, fraction)


__all__ = ["KEPT_TECHNIQUES", "SEED_REDUCTION_RANGE", "Reason", "ReductionConfig", "ValidationConfig",
           "kept_reasons", "round_photons", "storage_filters", "write_kept_sequence",
           "clopper_pearson", "suspects", "missed_hit_estimate", "validation_roi"]
