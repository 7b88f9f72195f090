"""Binning axes of a run: pump-probe delay, scan motor, pulse energy, train ranges.

A run's ``bins`` (a list in its ``runs:`` entry) names one or more axes; their bins
combine as a Cartesian product and every frame of the run falls in one bin or in
none (``-1``: a train while the motor moved, a pulse energy outside the edges …).

Train-level axes are decided from the run's train data, read by train ID:

``delay``
    The optical-laser delay from EXtra's ``OpticalLaserDelay`` (delay line stage and,
    if named, the trigger delay), in ps, in EXtra's convention
    ``Δt = (stage − ref_stage)·2/c − (trigger − ref_trigger) − ref_delay``;
    ``sign: -1`` flips it for a set-up whose longer stage path delays the probe.
    The steps are found on that delay by EXtra's ``Scan``.
``motor``
    Any control key (default ``actualPosition``) of a ``source``; steps by EXtra's
    ``Scan``.
``trains``
    Explicit ``ranges: [[first_train_id, last_train_id], …]`` (inclusive) or ``every:
    N`` trains.

Trains that EXtra's ``Scan`` places in no step are dropped, and counted
(:attr:`Binning.dropped`): the stage or motor moving, steps shorter than ``min_trains``,
and — EXtra's ``intra_step_filtering`` (1 σ by default) — trains at a step's edges whose
position strays from the step's mean.  ``resolution``, ``min_trains`` and
``intra_step_filtering`` of an axis go to ``Scan`` unchanged.

Frame-level axis:

``xgm``
    The frame's pulse energy (µJ): ``edges: […]`` or ``bins: N`` equally populated
    bins of the run's X-ray frames.

:func:`write_binning` stores the axes, every frame's bin, the dropped trains and, per
bin, the X-ray frames with and without the pump laser and the hit rate; the techniques
bin their own products with it (:meth:`xfel_reduce.techniques.Technique.binned`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from .config import ConfigError

log = logging.getLogger("xfel_reduce")

AXIS_KINDS = ("delay", "motor", "trains", "xgm")
_KEYS = {
    "delay": {"axis", "name", "stage", "trigger", "ref_stage_mm", "ref_trigger_ps", "ref_delay_ps", "sign",
              "resolution", "min_trains", "intra_step_filtering"},
    "motor": {"axis", "name", "source", "key", "resolution", "min_trains", "intra_step_filtering", "unit"},
    "trains": {"axis", "name", "ranges", "every"},
    "xgm": {"axis", "name", "edges", "bins"},
}


@dataclass
class Axis:
    """One binning axis.

    Attributes
    ----------
    centres
        Value of each bin (mean delay or motor position of a step, mid-edge energy,
        first train of a range).
    train_bin
        Train-level axes: per train of :attr:`Binning.train_ids`, its bin or -1.
    edges
        Frame-level axes (``xgm``): bin edges.
    source
        What decided the values (source and key, or the config).
    """

    name: str
    kind: str
    unit: str
    centres: np.ndarray
    source: str
    train_bin: np.ndarray | None = None
    edges: np.ndarray | None = None
    train_values: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(np.asarray(self.centres).size)


@dataclass
class Binning:
    """The axes of a run and its trains; :meth:`frame_bins` places frames."""

    axes: list[Axis]
    train_ids: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def n_bins(self) -> int:
        return int(np.prod(self.shape)) if self.axes else 0

    def frame_bins(self, train_ids: np.ndarray, pulse_energy: np.ndarray) -> np.ndarray:
        """Flat bin of each frame (C order over :attr:`axes`), -1 outside every bin."""
        tid = np.asarray(train_ids, np.uint64)
        pos = np.searchsorted(self.train_ids, tid)
        known = (pos < self.train_ids.size) & (self.train_ids[np.minimum(pos, self.train_ids.size - 1)] == tid)
        idx = []
        for a in self.axes:
            if a.train_bin is not None:
                b = np.where(known, a.train_bin[np.minimum(pos, self.train_ids.size - 1)], -1)
            else:
                e = np.asarray(pulse_energy, np.float64)
                b = np.searchsorted(a.edges, e, side="right") - 1
                b = np.where((e >= a.edges[0]) & (e <= a.edges[-1]), np.minimum(b, a.size - 1), -1)
            idx.append(b)
        if not idx:
            return np.full(tid.size, -1, np.int64)
        stack = np.stack(idx)
        ok = (stack >= 0).all(axis=0)
        flat = np.full(tid.size, -1, np.int64)
        if ok.any():
            flat[ok] = np.ravel_multi_index(tuple(stack[:, ok]), self.shape)
        return flat


def bins_of(config: dict, run: int) -> list[dict]:
    """The ``bins`` list of a run's entry in ``runs:`` (empty: not binned), checked."""
    entry = next((r for r in config.get("runs", []) if int(r["run"]) == int(run)), {})
    specs = list(entry.get("bins") or [])
    names = set()
    for s in specs:
        kind = s.get("axis")
        if kind not in AXIS_KINDS:
            raise ConfigError(f"runs[{run}].bins: axis {kind!r} is not one of {AXIS_KINDS}")
        unknown = set(s) - _KEYS[kind]
        if unknown:
            raise ConfigError(f"runs[{run}].bins ({kind}): unknown keys {sorted(unknown)}; "
                              f"known: {sorted(_KEYS[kind])}")
        name = s.get("name", kind)
        if name in names:
            raise ConfigError(f"runs[{run}].bins: two axes named {name!r}; give them `name`s")
        names.add(name)
    return specs


def _scan_steps(values, spec: dict, what: str):
    """EXtra's ``Scan`` on a per-train DataArray: ``[(position, train_ids)]``."""
    from extra.components import Scan

    scan = Scan(values, name=what, resolution=spec.get("resolution"), min_trains=spec.get("min_trains"),
                intra_step_filtering=float(spec.get("intra_step_filtering", 1.0)))
    if not scan.steps:
        raise ConfigError(f"{what}: EXtra's Scan found no steps (a motor that did not move, or set "
                          "`resolution` / `min_trains` of the axis)")
    return scan.steps


def _steps_axis(name: str, kind: str, unit: str, source: str, run_tids: np.ndarray, key_tids: np.ndarray,
                values: np.ndarray, steps) -> Axis:
    """An axis from scan steps over the run's trains; trains in no step (or without the
    key's data) get -1."""
    run_tids = np.asarray(run_tids, np.uint64)
    rows = np.searchsorted(run_tids, np.asarray(key_tids, np.uint64))
    per_train = np.full(run_tids.size, np.nan)
    per_train[rows] = values
    train_bin = np.full(run_tids.size, -1, np.int64)
    centres = []
    for i, (_, tids) in enumerate(steps):
        r = np.searchsorted(run_tids, np.asarray(tids, np.uint64))
        train_bin[r] = i
        centres.append(float(np.nanmean(per_train[r])))
    return Axis(name, kind, unit, np.asarray(centres), source, train_bin=train_bin, train_values=per_train)


def delay_axis(dc, spec: dict, instrument: str | None) -> Axis:
    """The ``delay`` axis (EXtra's ``OpticalLaserDelay`` and ``Scan``)."""
    import xarray as xr
    from extra.components import OpticalLaserDelay

    from .config import INSTRUMENTS

    prof = INSTRUMENTS.get(str(instrument or "").upper())
    stage = spec.get("stage") or (prof.laser_stage if prof else "")
    trigger = spec.get("trigger", False)
    if trigger is True:
        trigger = prof.laser_trigger if prof else ""
    if not stage and not trigger:
        raise ConfigError(f"bins (delay): no delay line known for instrument {instrument!r}; set `stage` "
                          "(the delay line's motor device) and/or `trigger`")
    for src in (stage, trigger):
        if src and src not in dc.all_sources:
            raise ConfigError(f"bins (delay): source {src} is not in the run's train data")
    old = OpticalLaserDelay(dc, stage=stage or False, trigger=trigger or False, bam=False,
                            ref_stage=float(spec.get("ref_stage_mm", 0.0)),
                            ref_trigger=float(spec.get("ref_trigger_ps", 0.0)),
                            ref_delay=float(spec.get("ref_delay_ps", 0.0)), unit="ps")
    series = old.total_delays(labelled=True) * float(spec.get("sign", 1.0))
    tids = np.asarray(series.index.values, np.uint64)
    values = np.asarray(series.values, np.float64)
    da = xr.DataArray(values, coords={"trainId": tids}, dims=["trainId"], name="delay_ps")
    decided = " − ".join(s for s in (f"{stage}.actualPosition" if stage else "", trigger or "") if s)
    return _steps_axis(spec.get("name", "delay"), "delay", "ps",
                       f"EXtra OpticalLaserDelay ({decided}), steps by EXtra Scan", dc.train_ids, tids, values,
                       _scan_steps(da, spec, f"delay ({decided})"))


def motor_axis(dc, spec: dict) -> Axis:
    """The ``motor`` axis (EXtra's ``Scan`` on any control key)."""
    src, key = spec.get("source"), spec.get("key", "actualPosition")
    if not src:
        raise ConfigError("bins (motor): set `source` (the motor device) and optionally `key`")
    if src not in dc.all_sources:
        raise ConfigError(f"bins (motor): source {src} is not in the run's train data")
    if key not in dc[src]:
        raise ConfigError(f"bins (motor): {src} has no key {key!r}")
    kd = dc[src, key]
    unit = spec.get("unit") or kd.units or ""
    values = kd.ndarray().astype(np.float64)
    tids = np.asarray(kd.train_id_coordinates(), np.uint64)
    return _steps_axis(spec.get("name", "motor"), "motor", unit, f"{src}.{key}, steps by EXtra Scan",
                       dc.train_ids, tids, values, _scan_steps(kd, spec, f"{src}.{key}"))


def trains_axis(train_ids: np.ndarray, spec: dict) -> Axis:
    """The ``trains`` axis: explicit train-ID ranges or blocks of ``every`` trains."""
    tids = np.asarray(train_ids, np.uint64)
    if "ranges" in spec:
        ranges = [(int(a), int(b)) for a, b in spec["ranges"]]
    elif "every" in spec:
        n = int(spec["every"])
        ranges = [(int(tids[i]), int(tids[min(i + n, tids.size) - 1])) for i in range(0, tids.size, n)]
    else:
        raise ConfigError("bins (trains): set `ranges: [[first, last], ...]` (train IDs) or `every: N`")
    train_bin = np.full(tids.size, -1, np.int64)
    for i, (a, b) in enumerate(ranges):
        sel = (tids >= a) & (tids <= b)
        if (train_bin[sel] >= 0).any():
            raise ConfigError(f"bins (trains): range {a}–{b} overlaps an earlier one")
        train_bin[sel] = i
    return Axis(spec.get("name", "trains"), "trains", "trainId", np.array([a for a, _ in ranges], np.float64),
                "config (train ranges)", train_bin=train_bin, train_values=tids.astype(np.float64))


def xgm_axis(spec: dict, pulse_energy: np.ndarray | None, xray: np.ndarray | None) -> Axis:
    """The ``xgm`` axis: fixed edges, or ``bins`` quantiles of the X-ray frames' energy
    (which must then be given)."""
    if "edges" in spec:
        edges = np.asarray(spec["edges"], np.float64)
        how = "config (edges)"
    elif "bins" in spec:
        if pulse_energy is None or xray is None:
            raise ConfigError("bins (xgm): equally populated `bins` need the run's frame table")
        e = np.asarray(pulse_energy, np.float64)[np.asarray(xray, bool)]
        e = e[np.isfinite(e) & (e > 0)]
        if e.size < int(spec["bins"]):
            raise ConfigError(f"bins (xgm): {e.size} X-ray frames with a pulse energy for {spec['bins']} bins")
        edges = np.quantile(e, np.linspace(0, 1, int(spec["bins"]) + 1))
        how = "XGM pulse energy per frame, equally populated bins of the run's X-ray frames"
    else:
        raise ConfigError("bins (xgm): set `edges: [...]` (µJ) or `bins: N`")
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ConfigError(f"bins (xgm): edges must increase, got {edges.tolist()}")
    return Axis(spec.get("name", "xgm"), "xgm", "µJ", 0.5 * (edges[1:] + edges[:-1]), how, edges=edges)


def run_binning(config: dict, run: int, train_files: Sequence[Path], table: Mapping[str, np.ndarray] | None,
                instrument: str | None = None) -> Binning:
    """The run's :class:`Binning` from its train data and its frame table (``trainId``,
    ``pulse_energy``, ``xray``; only an ``xgm`` axis with equally populated ``bins``
    needs it, see :func:`pass_binning`)."""
    from .io.discovery import guess_instrument
    from .io.trains import open_train_data

    specs = bins_of(config, run)
    if not specs:
        raise ConfigError(f"run {run} has no `bins` in its runs entry")
    folder = Path(train_files[0]).parent if train_files else Path(".")
    dc = open_train_data(folder, train_files)
    train_ids = np.asarray(dc.train_ids, np.uint64)
    axes, dropped = [], {}
    for i, spec in enumerate(specs):
        kind = spec["axis"]
        try:
            if kind == "delay":
                a = delay_axis(dc, spec, instrument or guess_instrument(dc))
            elif kind == "motor":
                a = motor_axis(dc, spec)
            elif kind == "trains":
                a = trains_axis(train_ids, spec)
            else:
                a = xgm_axis(spec, *((table["pulse_energy"], table["xray"]) if table is not None else (None, None)))
        except ConfigError as err:
            # the axis functions know the source; say which run and which entry to fix
            raise ConfigError(f"run {run} ({folder}): {err} — in runs[{run}].bins[{i}]") from err
        if a.train_bin is not None:
            dropped[f"{a.name}: trains in no bin"] = int((a.train_bin < 0).sum())
        axes.append(a)
    b = Binning(axes, train_ids, dropped)
    for k, v in dropped.items():
        if v:
            log.info("run %d binning: %s: %d dropped", run, k, v)
    return b


def pass_binning(config: dict, run: int | None, train_files: Sequence[Path]) -> tuple[Binning | None, str]:
    """The bins the one pass places frames in (per-bin images, XPCS g2 per bin), or
    ``None`` and why not.

    Every axis must be known before the detector is read: the train-level axes are
    decided from the whole run's train data (so every sequence finds the same steps:
    split-invariant), an ``xgm`` axis only with fixed ``edges`` — its equally populated
    ``bins`` come from the run's frame table, after the pass.
    """
    specs = bins_of(config, run) if run is not None else []
    if not specs:
        return None, "run not binned"
    if any(s["axis"] == "xgm" and "edges" not in s for s in specs):
        return None, ("an xgm axis with equally populated `bins` is decided after the pass; "
                      "per-bin images (and XPCS g2) need its fixed `edges`")
    return run_binning(config, int(run), train_files, None), ""


def signature(binning: Binning) -> str:
    """What identifies the bins (axis names, kinds, centres): stored beside per-bin
    sums made in the one pass, checked where they meet ``binning.h5``."""
    return json.dumps([[a.name, a.kind, [round(float(c), 9) for c in a.centres]] for a in binning.axes])


@dataclass
class BinnedImages:
    """The X-ray frames' images per bin and laser state, made in the one pass
    (:meth:`xfel_reduce.annotate.AnnotationReducer.binned_images`): mergeable
    :class:`~xfel_reduce.aggregate.Moments` of shape ``(n_bins, 2) + image`` (laser
    on, off) and the :func:`signature` of the bins they were made with."""

    moments: Any
    signature: str

    def merge(self, other: "BinnedImages", where: str = "?") -> "BinnedImages":
        if other.signature != self.signature:
            raise ValueError(f"{where}: per-bin images made with other bins ({other.signature} vs "
                             f"{self.signature}); rerun the run's one pass")
        self.moments.merge(other.moments)
        return self

    def to_h5(self, group: h5py.Group) -> None:
        self.moments.to_h5(group, np.float32)
        group.attrs.update(signature=self.signature, laser=["on", "off"], accumulator="BinnedImages")

    @classmethod
    def from_h5(cls, group: h5py.Group) -> "BinnedImages":
        from .aggregate import Moments

        return cls(Moments.from_h5(group), str(group.attrs["signature"]))


def merge_binned_images(paths: Sequence[Path], group: str = "binned_images") -> BinnedImages | None:
    """The run's per-bin images from its sequences' partials (``None`` if none has them)."""
    out = None
    for p in paths:
        with h5py.File(p, "r") as f:
            if group not in f:
                continue
            part = BinnedImages.from_h5(f[group])
        out = part if out is None else out.merge(part, str(p))
    return out


def hit_rate(hits: np.ndarray, n: np.ndarray, z: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hit rate per bin with Wilson's interval (``z`` σ): ``(rate, low, high)``."""
    hits, n = np.asarray(hits, np.float64), np.asarray(n, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = hits / n
        den = 1 + z * z / n
        mid = (p + z * z / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return p, mid - half, mid + half


def bin_counts(binning: Binning, table: Mapping[str, np.ndarray], frame_bin: np.ndarray) -> dict[str, np.ndarray]:
    """Per bin: X-ray frames with and without the pump laser, hits of the X-ray frames."""
    x = np.asarray(table["xray"], bool)
    ppl = np.asarray(table["ppl"], bool)
    hit = np.asarray(table["hit"], bool) if "hit" in table else np.zeros(x.size, bool)
    ok = frame_bin >= 0
    n = binning.n_bins

    def count(sel):
        return np.bincount(frame_bin[ok & sel], minlength=n).astype(np.int64)

    return {"xray_on": count(x & ppl), "xray_off": count(x & ~ppl), "hits": count(x & hit),
            "hits_on": count(x & hit & ppl), "hits_off": count(x & hit & ~ppl)}


def write_binning(path: Path, binning: Binning, table: Mapping[str, np.ndarray], prov: dict,
                  hit_finding: bool = False, images: BinnedImages | None = None,
                  images_why: str = "") -> dict[str, Any]:
    """``binning.h5``: axes (NXdata-style attributes), every frame's bin, dropped trains,
    X-ray frames per bin, for hit-finding runs the hit rate per bin and, when the one
    pass made them, the images per bin and laser state (``/images/<on|off>``: ``mean``,
    ``std`` and ``count`` per pixel, shape ``bins + image``; ``images_why``: why not)."""
    from .io.euxfel import AtomicH5File
    from .io.provenance import attach_provenance

    fb = binning.frame_bins(table["trainId"], table["pulse_energy"])
    counts = bin_counts(binning, table, fb)
    with AtomicH5File(path) as f:
        attach_provenance(f, prov)
        g = f.create_group("binning")
        g.attrs["NX_class"] = "NXdata"
        g.attrs["axes"] = [a.name for a in binning.axes]
        g.attrs["shape"] = np.asarray(binning.shape, np.int64)
        g.attrs["dropped"] = json.dumps(binning.dropped)
        g.attrs["signal"] = "xray_frames"
        for a in binning.axes:
            d = g.create_dataset(a.name, data=np.asarray(a.centres, np.float64))
            d.attrs.update(units=a.unit, kind=a.kind, decided_by=a.source, long_name=f"{a.name} ({a.unit})")
            if a.edges is not None:
                g[f"{a.name}_edges"] = a.edges
        xray = {"": counts["xray_on"] + counts["xray_off"], "_on": counts["xray_on"], "_off": counts["xray_off"]}
        g["xray_frames"] = xray[""].reshape(binning.shape)
        for k, v in counts.items():
            g[f"counts/{k}"] = v.reshape(binning.shape)
        if hit_finding:
            for suffix, n in xray.items():
                rate, lo, hi = hit_rate(counts["hits" + suffix], n)
                g[f"hit_rate{suffix}"] = rate.reshape(binning.shape)
                g[f"hit_rate{suffix}_errors"] = (0.5 * (hi - lo)).reshape(binning.shape)
        t = f.create_group("trains")
        t["trainId"] = binning.train_ids
        for a in binning.axes:
            if a.train_bin is not None:
                t[f"{a.name}_bin"] = a.train_bin
                if a.train_values is not None and a.train_values.size == binning.train_ids.size:
                    t[f"{a.name}_value"] = a.train_values
        if images is not None:
            if images.signature != signature(binning):
                raise ValueError(f"{path}: the per-bin images were made with other bins "
                                 f"({images.signature} vs {signature(binning)}); rerun the run's one pass")
            m = images.moments
            for j, state in enumerate(("on", "off")):
                ig = f.create_group(f"images/{state}")
                ig.attrs.update(NX_class="NXdata", signal="mean", axes=[a.name for a in binning.axes],
                                laser=state, frames="X-ray frames")
                img = binning.shape + m.shape[2:]
                for name, v, dt in (("mean", m.mean[:, j], np.float32), ("std", np.nan_to_num(m.std[:, j]), np.float32),
                                    ("count", m.count[:, j], np.int32)):
                    # counts compress well, float images hardly (and gzip on them is slow)
                    kw = {"compression": "gzip", "compression_opts": 1} if name == "count" else {}
                    ig.create_dataset(name, data=v.reshape(img).astype(dt), **kw)
        else:
            f.attrs["images"] = images_why or "not made"
        fr = f.create_group("frames")
        fr["trainId"] = np.asarray(table["trainId"], np.uint64)
        fr["pulseId"] = np.asarray(table["pulseId"], np.uint64)
        fr["bin"] = fb
    return {"shape": list(binning.shape), "dropped": binning.dropped,
            "frames_binned": int((fb >= 0).sum()), "frames": int(fb.size)}


@dataclass
class StoredBinning:
    """A ``binning.h5`` as read back: axes, shape and the frames' bins."""

    axes: list[dict[str, Any]]
    shape: tuple[int, ...]
    train_id: np.ndarray
    pulse_id: np.ndarray
    frame_bin: np.ndarray
    dropped: dict[str, int]

    def bins_of(self, train_ids: np.ndarray, pulse_ids: np.ndarray, where: str = "?") -> np.ndarray:
        """Bins of the given frames (looked up by (trainId, pulseId))."""
        from .io.frames import FrameIndex

        return self.frame_bin[FrameIndex(self.train_id, self.pulse_id).rows(train_ids, pulse_ids, where)]

    @property
    def n_bins(self) -> int:
        return int(np.prod(self.shape))


def read_binning(path: Path) -> StoredBinning:
    with h5py.File(path, "r") as f:
        g = f["binning"]
        axes = []
        for name in g.attrs["axes"]:
            d = g[name]
            axes.append({"name": str(name), "values": d[()], **{k: (v.decode() if isinstance(v, bytes) else str(v))
                                                               for k, v in d.attrs.items()}})
        return StoredBinning(axes, tuple(int(s) for s in g.attrs["shape"]), f["frames/trainId"][()],
                             f["frames/pulseId"][()], f["frames/bin"][()], json.loads(g.attrs["dropped"]))


def write_binned(path: Path, binning: StoredBinning, technique: str, x: np.ndarray, x_name: str, x_unit: str,
                 groups: Mapping[str, tuple[np.ndarray, np.ndarray]], counts: Mapping[str, np.ndarray],
                 observable: Mapping[str, Any] | None, prov: dict, attrs: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """A technique's binned products (one HDF5 per run, NeXus-style ``NXdata``).

    ``groups``: ``{name: (values (n_bins, n_x), errors)}`` — ``on``, ``off``, ``all``
    and ``on_minus_off`` (laser on − off) for every technique; ``observable``:
    ``{name, unit, values (n_bins,), errors}`` (the
    quantity whose kinetics a delay scan measures), fitted with
    :func:`xfel_reduce.kinetics.fit_rise` when the run is binned by delay alone.

    Layout: ``/binned/<group>`` (NXdata, ``signal`` = ``data``, ``axes`` = the bin axes
    and ``x_name``, ``data_errors``), the axes as datasets with ``units``,
    ``/binned/counts/<name>``, ``/binned/observable`` and the kinetics fit in the
    attribute ``kinetics`` (JSON).
    """
    from .io.euxfel import AtomicH5File
    from .io.provenance import attach_provenance
    from .kinetics import fit_rise

    shape = binning.shape
    kinetics: dict[str, Any] = {}
    if observable is not None and len(binning.axes) == 1 and binning.axes[0].get("kind") == "delay":
        try:
            kinetics = fit_rise(binning.axes[0]["values"], observable["values"], observable["errors"])
        except ValueError as err:
            kinetics = {"error": str(err)}
    with AtomicH5File(path) as f:
        attach_provenance(f, prov)
        top = f.create_group("binned")
        top.attrs.update(technique=technique, axes=[a["name"] for a in binning.axes], shape=np.asarray(shape),
                         dropped=json.dumps(binning.dropped), kinetics=json.dumps(kinetics), **dict(attrs or {}))
        for name, (values, errors) in groups.items():
            g = top.create_group(name)
            g.attrs.update(NX_class="NXdata", signal="data", axes=[a["name"] for a in binning.axes] + [x_name])
            g["data"] = np.asarray(values, np.float64).reshape(shape + (x.size,))
            g["data_errors"] = np.asarray(errors, np.float64).reshape(shape + (x.size,))
            for a in binning.axes:
                g[a["name"]] = a["values"]
                g[a["name"]].attrs["units"] = a.get("units", "")
            g[x_name] = x
            g[x_name].attrs["units"] = x_unit
        for k, v in counts.items():
            top[f"counts/{k}"] = np.asarray(v).reshape(shape)
        if observable is not None:
            o = top.create_group("observable")
            o.attrs.update(name=observable["name"], units=observable["unit"])
            o["values"] = np.asarray(observable["values"], np.float64).reshape(shape)
            o["errors"] = np.asarray(observable["errors"], np.float64).reshape(shape)
    return {"shape": list(shape), "kinetics": kinetics}
