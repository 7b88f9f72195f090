"""XPCS: correlation sums of the X-ray frames in the one pass; per run g2, fits,
diffusion coefficient and contrast.

Science: :mod:`xfel_reduce.xpcs`; rules: ``workflow/rules/xpcs.smk``; report:
``reports/xpcs.ipynb``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import Technique, log, register, run_setup, static_mask


def ring_labels(config: dict, run: int, static_mask_inputs: Sequence[Path]):
    """``(labels, q of each ring)``: the run's q rings on the static mask's good pixels."""
    from .. import geometry, xpcs
    from ..config import modules_of

    setup = run_setup(config, run)
    geom = geometry.geometry_from_config(config.get("geometry", {}))
    pos = geometry.pixel_positions(geom, setup["distance_m"], modules_of(config))
    q = geometry.q_map(pos, setup["photon_energy_kev"])
    rings = config.get("xpcs", {}).get("rings", [0.08, 0.11, 0.14, 0.17, 0.20, 0.24, 0.30])
    labels = xpcs.ring_labels(q, static_mask(config, static_mask_inputs), np.asarray(rings, float))
    return labels, xpcs.ring_q(q, labels)


class XpcsReducer:
    """Correlation sums of a sequence's X-ray frames (train by train); in a binned run
    also per bin (``frames["bin"]``: the bins decided before the pass), each train
    computed once and added to the run's sums and to its bin's."""

    def __init__(self, config: dict, run: int, frames: Mapping[str, np.ndarray], outputs: Mapping[str, Path],
                 provenance: dict, static_mask_inputs: Sequence[Path]):
        from .. import xpcs

        cfg = config.get("xpcs", {})
        labels, _ = ring_labels(config, run, static_mask_inputs)
        # The two-time matrix size must be the same in every chunk of the run.
        n_frames = int(cfg.get("frames_per_train") or np.bincount(
            np.unique(frames["trainId"], return_inverse=True)[1], weights=frames["xray"]).max())
        self._new = lambda: xpcs.XpcsPartial(labels, n_frames=n_frames,
                                             max_train_lag=int(cfg.get("max_train_lag", 10)),
                                             photonize_threshold=cfg.get("photonize_threshold", 0.5))
        self.part = self._new()
        self.output, self.provenance = Path(outputs["partial"]), provenance
        self.train_bin, self.binned_why = train_bins(frames)
        self.bins: dict[int, object] = {}

    def add(self, chunk, rows: Mapping[str, np.ndarray]) -> None:
        xray = np.asarray(rows["xray"], bool)
        for tid in np.unique(chunk.train_ids):
            sel = (chunk.train_ids == tid) & xray
            if sel.any():
                b = self.train_bin.get(int(tid), -1)
                also = (self.bins.setdefault(b, self._new()),) if b >= 0 else ()
                self.part.add_train(int(tid), chunk.data[sel], *also)

    def finish(self) -> dict:
        from ..io.euxfel import AtomicH5File
        from ..io.provenance import attach_provenance

        with AtomicH5File(self.output) as f:
            attach_provenance(f, self.provenance)
            self.part.to_h5(f.create_group("xpcs_partial"))
            f.attrs["binned"] = self.binned_why or "made"
            for b, part in sorted(self.bins.items()):
                part.to_h5(f.create_group(f"xpcs_bins/{b:05d}"))
        return {"bins_with_trains": len(self.bins)} if self.bins else {}

    def abort(self) -> None:
        pass


def train_bins(frames: Mapping[str, np.ndarray]) -> tuple[dict[int, int], str]:
    """``(train → bin, why not)``: g2 per bin needs every train's X-ray frames in
    one bin (train-level axes); an ``xgm`` axis splits trains, so then none."""
    if "bin" not in frames:
        return {}, "run not binned"
    x = np.asarray(frames["xray"], bool)
    tid, b = np.asarray(frames["trainId"])[x], np.asarray(frames["bin"])[x]
    out: dict[int, int] = {}
    for t, v in zip(tid.tolist(), b.tolist()):
        if out.setdefault(t, v) != v:
            return {}, "X-ray frames of one train in different bins (an xgm axis): g2 per bin needs train-level axes"
    return out, ""


@register
class Xpcs(Technique):
    name = "xpcs"
    notebook = "xpcs"
    sequence_files = {"partial": "r{run}/xpcs/partials/S{seq}.h5"}
    run_files = {"xpcs": "r{run}/xpcs/xpcs.h5"}
    product_files = {"xpcs": ["xpcs"]}
    binned_files = {"binned": "r{run}/xpcs/xpcs_binned.h5"}

    @classmethod
    def report_inputs(cls, results, run, seqs) -> dict:
        return {"xpcs_file": cls.run_paths(results, run)["xpcs"]}

    def reducer(self, config, run, seq, frames, train_ids, outputs, provenance, static_mask_inputs=(), where="?"):
        return XpcsReducer(config, run, frames, outputs, provenance, static_mask_inputs)

    def gather(self, config: dict, run: int, inputs: Mapping[str, Sequence[Path]], outputs: Mapping[str, Path]) -> dict:
        """Merge the partials; g2, fits, D and contrast of the run."""
        import h5py

        from .. import xpcs
        from ..io.provenance import provenance

        merged = None
        for p in inputs["partial"]:
            with h5py.File(p, "r") as f:
                part = xpcs.XpcsPartial.from_h5(f["xpcs_partial"])
            merged = part if merged is None else merged.merge(part)
        _, q_rings = ring_labels(config, run, inputs["static_mask"])
        pulse_spacing = pulse_spacing_s(config, inputs["train"])
        train_spacing = float(config.get("xpcs", {}).get("train_spacing_s", 0.1))
        ana = xpcs.analyse(merged, q_rings, pulse_spacing, train_spacing)
        xpcs.write_xpcs_h5(outputs["xpcs"], ana, provenance(config, list(inputs["partial"]), step="xpcs_run", run=run,
                                                            pulse_spacing_s=pulse_spacing))
        log.info("r%04d xpcs: %d rings", run, len(q_rings))
        return ana


    def binned(self, config, run, binning_file, inputs, output, provenance) -> dict:
        """g2 per ring and bin (the partials' per-bin sums merged over the sequences),
        with the diffusion coefficient per bin as the observable."""
        import h5py

        from .. import xpcs
        from ..binning import read_binning, write_binned

        bins = read_binning(binning_file)
        merged: dict[int, xpcs.XpcsPartial] = {}
        why = ""
        for p in inputs["partial"]:
            with h5py.File(p, "r") as f:
                why = str(f.attrs.get("binned", "made"))
                for name, g in f.get("xpcs_bins", {}).items():
                    part = xpcs.XpcsPartial.from_h5(g)
                    b = int(name)
                    check_train_bins(bins, part.train_ids, b, p)
                    merged[b] = merged[b].merge(part) if b in merged else part
        if not merged:
            raise ValueError(f"run {run}: no XPCS sums per bin in the partials ({why}); rerun the one pass")
        _, q_rings = ring_labels(config, run, inputs["static_mask"])
        spacing = pulse_spacing_s(config, inputs["train"])
        train_spacing = float(config.get("xpcs", {}).get("train_spacing_s", 0.1))
        n_rings, n_frames = q_rings.size, next(iter(merged.values())).n_frames
        g2 = np.full((bins.n_bins, n_rings, n_frames), np.nan)
        g2_err = np.full_like(g2, np.nan)
        d, d_err, trains = np.full(bins.n_bins, np.nan), np.full(bins.n_bins, np.nan), np.zeros(bins.n_bins, np.int64)
        for b, part in merged.items():
            ana = xpcs.analyse(part, q_rings, spacing, train_spacing, fit_inter_train=False)
            g2[b], g2_err[b] = ana["g2"], ana["g2_err"]
            d[b] = ana["diffusion"].get("D_m2_per_s", np.nan)
            d_err[b] = ana["diffusion"].get("D_err", np.nan)
            trains[b] = part.train_ids.size
        tau = np.arange(n_frames) * spacing
        groups = {f"g2_ring{i:02d}": (g2[:, i], g2_err[:, i]) for i in range(n_rings)}
        return write_binned(output, bins, "xpcs", tau, "tau", "s", groups, {"trains": trains},
                            {"name": "D", "unit": "m²/s", "values": d, "errors": d_err}, provenance,
                            attrs={"q_nm": np.asarray(q_rings, np.float64)})


def check_train_bins(bins, train_ids: np.ndarray, b: int, where) -> None:
    """The trains of a per-bin partial must lie in that bin of ``binning.h5`` (the bins
    of the one pass and of the binning step are the same, or a config changed)."""
    placed = np.unique(bins.frame_bin[np.isin(bins.train_id, np.asarray(train_ids, np.uint64))])
    if placed.size and not np.array_equal(placed, [b]):
        raise ValueError(f"{where}: XPCS sums of bin {b} hold trains that binning.h5 places in bins "
                         f"{placed.tolist()}; the bins changed since the one pass — rerun it")


def pulse_spacing_s(config: dict, train_files: Sequence[Path]) -> float:
    """Frame spacing from the AGIPD control device (repetition rate in MHz), read
    from whichever of the run's aggregators records it (AGIPD1MCTRL00 at the facility)."""
    from ..io import sources
    from ..io.runs import InputDataError
    from ..io.trains import open_train_data, resolve_sources

    paths = [Path(p) for p in train_files]
    dc = open_train_data(paths[0].parent, paths)
    ctrl = resolve_sources(config, dc, str(paths[0].parent)).agipd_control
    if ctrl is None:
        raise InputDataError(f"{paths[0].parent}: no AGIPD control device (…/MDL/FPGA_COMP): the frame "
                             "spacing is unknown. Set `sources.detector_control` in the config.")
    rate = float(dc[ctrl, "bunchStructure.repetitionRate"].as_single_value())
    try:
        return sources.stride_of_rate(rate) / 4.5e6
    except ValueError as exc:
        raise InputDataError(f"{ctrl}: {exc}") from None
