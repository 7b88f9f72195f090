"""SAXS/WAXS: azimuthal integration of the X-ray frames in the one pass (per-frame
I(q), σ(q) per sequence); per run the NXcanSAS averages (all, laser on, off, on−off)
with sphere fits.

Science: :mod:`xfel_reduce.saxs` (engine, accumulator, fits); rules:
``workflow/rules/saxs.smk``; report: ``reports/saxs.ipynb``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from . import Technique, aggregate_path, register, run_setup, static_mask


def engine(config: dict, run: int, static_mask_inputs: Sequence[Path]):
    """The run's azimuthal integrator (same geometry, bins and static mask in every chunk)."""
    from .. import geometry
    from ..config import modules_of
    from ..saxs import AzimuthalEngine

    cfg = config.get("saxs", {})
    setup = run_setup(config, run)
    geom = geometry.geometry_from_config(config.get("geometry", {}))
    q_range = cfg.get("q_range")
    return AzimuthalEngine.from_geometry(
        geom, setup["distance_m"], setup["photon_energy_kev"], int(cfg.get("npt", 500)),
        q_range=tuple(q_range) if q_range else None, unit="q_nm^-1", split=cfg.get("split", "no"),
        mask=static_mask(config, static_mask_inputs) != 0, solid_angle=True,
        polarisation=float(cfg.get("polarisation", 0.99)), modules=modules_of(config))


@register
class Saxs(Technique):
    name = "saxs"
    notebook = "saxs"
    sequence_files = {"frames": "r{run}/saxs/REDU-R{run}-SAXS-S{seq}.h5",
                      "partial": "r{run}/saxs/partials/S{seq}.h5"}
    run_files = {"nxcansas": "r{run}/saxs/saxs_nxcansas.h5", "summary": "r{run}/saxs/saxs_summary.json"}
    product_files = {"saxs_frames": ["frames"], "nxcansas": ["nxcansas", "summary"]}
    binned_files = {"binned": "r{run}/saxs/saxs_binned.h5"}

    @classmethod
    def report_inputs(cls, results, run, seqs) -> dict:
        # the average image is the annotation's X-ray class, in the run's aggregate
        return {"saxs_file": cls.run_paths(results, run)["nxcansas"],
                "aggregate_file": aggregate_path(results, run)}

    def reducer(self, config, run, seq, frames, train_ids, outputs, provenance, static_mask_inputs=(), where="?"):
        from ..saxs import SaxsSequenceReducer

        return SaxsSequenceReducer(engine(config, run, static_mask_inputs), frames, train_ids, outputs["frames"],
                                   outputs["partial"], provenance, where=where,
                                   xgm_normalise=bool(config.get("saxs", {}).get("xgm_normalise", False)),
                                   keep_image=False)

    def gather(self, config: dict, run: int, inputs: Mapping[str, Sequence[Path]], outputs: Mapping[str, Path]) -> dict:
        """Run averages (all, laser on, off, on−off) as NXcanSAS, with sphere fits."""
        from ..io.atomic import write_json
        from ..io.provenance import provenance
        from ..saxs import gather_run

        prov = provenance(config, list(inputs["partial"]), step="saxs_run", run=run)
        res = gather_run(inputs["partial"], outputs["nxcansas"], prov, title=f"SAXS run {run}", run=f"r{run:04d}")
        write_json(outputs["summary"], res, default=float)
        return res

    def binned(self, config, run, binning_file, inputs, output, provenance) -> dict:
        """I(q) on, off, all, on − off per bin, radius change per bin (and its kinetics)."""
        from ..saxs.driver import binned_run

        return binned_run(inputs["frames"], inputs["partial"], binning_file, output, provenance)
