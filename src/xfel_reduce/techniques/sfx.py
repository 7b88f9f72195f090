"""SFX: peak finding in the one pass (hit-only CXI file and per-frame peak table per
sequence); per run the CrystFEL event list and geometry and the hit statistics.

Science: :mod:`xfel_reduce.sfx` (peakfinder8-style finder); rules:
``workflow/rules/sfx.smk``; report: ``reports/sfx.ipynb``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import Technique, log, register, run_setup


class SfxReducer:
    """Peaks of every frame; X-ray frames with enough peaks go to the CXI file."""

    def __init__(self, config: dict, run: int, outputs: Mapping[str, Path], provenance: dict):
        from .. import geometry, sfx
        from ..config import modules_of
        from ..io import cxi

        mods = modules_of(config)
        setup = run_setup(config, run)
        params = sfx.PeakFinderParams.from_config(config.get("sfx", {}).get("peakfinder"))
        geom = geometry.geometry_from_config(config.get("geometry", {}))
        self.finder = sfx.PeakFinder(sfx.radius_map_px(geom, mods), params)
        self.run, self.table_out, self.provenance = run, Path(outputs["peaks"]), {**provenance, "setup": setup}
        self.writer = cxi.CxiHitWriter(outputs["cxi"], modules=mods, provenance=self.provenance,
                                       max_peaks=params.max_num_peaks, photon_energy_kev=setup["photon_energy_kev"],
                                       distance_m=setup["distance_m"],
                                       compression=config.get("sfx", {}).get("cxi_compression"),
                                       n_modules=geometry.detector_of_config(config).n_modules)
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, chunk, rows: Mapping[str, np.ndarray]) -> None:
        pl = self.finder.find(chunk.data, bad=chunk.mask)
        xray = np.asarray(rows["xray"], bool)
        # only X-ray frames can be hits: a peak pattern on a dark frame is a detector problem
        hit = pl.hit & xray
        if hit.any():
            self.writer.append(chunk.data[hit], chunk.mask[hit], chunk.train_ids[hit], chunk.pulse_ids[hit],
                               chunk.cell_ids[hit], pl.select(hit))
        self.parts.append({"trainId": np.asarray(chunk.train_ids), "pulseId": np.asarray(chunk.pulse_ids),
                           "cellId": np.asarray(chunk.cell_ids), "n_peaks": pl.n_peaks, "hit": hit, "xray": xray})

    def finish(self) -> dict:
        from ..io import sources
        from ..io.redu import write_frame_table

        self.writer.close()
        keys = ("trainId", "pulseId", "cellId", "n_peaks", "hit", "xray")
        table = {k: (np.concatenate([p[k] for p in self.parts]) if self.parts else np.zeros(0)) for k in keys}
        write_frame_table(self.table_out, sources.SFX_SOURCE, table, self.provenance, run=self.run,
                          run_type="sfx peaks")
        log.info("sfx: %d frames, %d hits", table["trainId"].size, int(table["hit"].sum()))
        return {"frames": int(table["trainId"].size), "hits": int(table["hit"].sum())}

    def abort(self) -> None:
        self.writer.abort()


@register
class Sfx(Technique):
    name = "sfx"
    hit_finding = True
    notebook = "sfx"
    truth_per_frame = True
    sequence_files = {"cxi": "r{run}/sfx/hits-S{seq}.cxi",
                      "peaks": "r{run}/sfx/peaks/REDU-R{run}-SFX-S{seq}.h5"}
    run_files = {"lst": "r{run}/sfx/hits.lst", "geom": "r{run}/sfx/agipd.geom",
                 "stats": "r{run}/sfx/hit_statistics.json"}
    product_files = {"cxi_hits": ["cxi"], "peak_tables": ["peaks"], "crystfel": ["lst", "geom", "stats"]}
    hit_table = "peaks"

    @classmethod
    def report_inputs(cls, results, run, seqs) -> dict:
        per_seq, per_run = cls.sequence_paths(results, run, seqs), cls.run_paths(results, run)
        return {"annotation_files": per_seq["peaks"], "cxi_files": per_seq["cxi"],
                "geom_file": per_run["geom"], "hit_statistics_file": per_run["stats"]}

    def reducer(self, config, run, seq, frames, train_ids, outputs, provenance, static_mask_inputs=(), where="?"):
        return SfxReducer(config, run, outputs, provenance)

    def gather(self, config: dict, run: int, inputs: Mapping[str, Sequence[Path]], outputs: Mapping[str, Path]) -> dict:
        """CrystFEL event list and geometry, hit statistics."""
        from .. import geometry, sfx
        from ..io import cxi, sources
        from ..io.atomic import write_json
        from ..io.provenance import provenance
        from ..io.redu import read_frame_table

        setup = run_setup(config, run)
        n = cxi.write_event_list(outputs["lst"], inputs["cxi"])
        geom = geometry.geometry_from_config(config.get("geometry", {}))
        cxi.write_crystfel_geom(geom, outputs["geom"], photon_energy_kev=setup["photon_energy_kev"],
                                distance_m=setup["distance_m"])
        t = [read_frame_table(Path(p), sources.SFX_SOURCE) for p in inputs["peaks"]]
        cat = {k: np.concatenate([x[k] for x in t]) for k in t[0]}
        stats = sfx.hit_statistics(cat["trainId"], cat["pulseId"], cat["n_peaks"], cat["hit"], xray=cat["xray"])
        stats = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in stats.items()}
        stats["events_in_lst"] = n
        stats["provenance"] = provenance(config, list(inputs["cxi"]) + list(inputs["peaks"]), step="sfx_run",
                                         run=run, setup=setup)
        write_json(outputs["stats"], stats, default=float)
        return stats

    def merge_hits(self, table, hit_tables):
        """The run's ``hit`` becomes the peak-count hit (``n_peaks >= min_peaks``) and
        ``n_peaks`` is filled; the lit-pixel hit stays in ``hit_lit_pixels``."""
        from .. import annotate
        from ..io import sources
        from ..io.frames import frame_key
        from ..io.redu import read_frame_table

        peaks = annotate.concat_tables_any([read_frame_table(Path(p), sources.SFX_SOURCE) for p in hit_tables])
        key = frame_key(table["trainId"], table["pulseId"])
        pkey = frame_key(peaks["trainId"], peaks["pulseId"])
        if not np.array_equal(np.sort(pkey), key):
            raise ValueError("peak tables and annotation cover different frames")
        idx = np.searchsorted(pkey, key)
        table["hit_lit_pixels"] = table["hit"].copy()
        table["n_peaks"] = peaks["n_peaks"][idx].astype(np.int32)
        table["hit"] = peaks["hit"][idx].astype(bool)
        return table
