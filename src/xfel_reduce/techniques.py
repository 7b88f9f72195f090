"""Workflow steps of the technique-specific reductions (SFX, XPCS, SAXS).

Each technique has a per-sequence step that reads the sequence's CORR files and its
annotation (one-way data flow: calibration → annotation → technique) and writes a
mergeable partial, and a per-run step that merges the partials into the products.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from . import geometry
from .io import sources
from .io.atomic import write_json
from .io.euxfel import AtomicH5File
from .io.runs import InputDataError
from .io.frames import FrameIndex, SequenceFrames
from .io.provenance import attach_provenance, provenance
from .io.redu import read_frame_table, write_frame_table
from .config import modules_of, trains_per_chunk

log = logging.getLogger("xfel_reduce")


def run_setup(config: dict, run: int) -> dict:
    """Distance and photon energy of a run, and what decided each.

    In this order: the run's entry in ``runs``; the simulation plan of a simulated
    run; for the photon energy, the XGM's ``pulseEnergy.wavelengthUsed`` recorded in
    the RAW run; the ``geometry`` section. Neither is ever guessed: a q-based
    technique without a distance (or energy) stops with the key to set. The result
    goes into the outputs' provenance (``setup``).
    """
    from .config import ConfigError

    entry = next((r for r in config["runs"] if int(r["run"]) == int(run)), {})
    out: dict = {"decided": {}}
    for key in ("distance_m", "photon_energy_kev"):
        if entry.get(key):
            out[key], out["decided"][key] = float(entry[key]), f"config runs[{run}].{key}"
    sim = config.get("simulate", {})
    if sim.get("enabled"):
        from .simulate.beamtime import iter_runs, run_plan
        for rc in iter_runs(sim):
            if int(rc["run"]) == int(run):
                plan = run_plan(sim, rc)
                for key in ("distance_m", "photon_energy_kev"):
                    if key not in out:
                        out[key], out["decided"][key] = float(plan[key]), "simulation plan"
    if "photon_energy_kev" not in out:
        kev = _recorded_photon_energy(config, run)
        if kev is not None:
            out["photon_energy_kev"], out["decided"]["photon_energy_kev"] = kev, "XGM pulseEnergy.wavelengthUsed"
    geo = config.get("geometry", {})
    for key in ("distance_m", "photon_energy_kev"):
        if key not in out and geo.get(key):
            out[key], out["decided"][key] = float(geo[key]), f"config geometry.{key}"
        if key not in out:
            raise ConfigError(
                f"run {run}: {'the sample-detector distance' if key == 'distance_m' else 'the photon energy'} "
                f"is unknown{'' if key == 'distance_m' else ' (no XGM wavelength recorded in the run)'}: set "
                f"`{key}` in the run's entry of `runs` (or `geometry.{key}` for all runs)")
    return out


def _recorded_photon_energy(config: dict, run: int) -> float | None:
    """Photon energy (keV) from the run's XGM ``pulseEnergy.wavelengthUsed`` (nm), if recorded."""
    from .io import discovery
    from .io.trains import open_train_data, resolve_sources, train_files

    raw = Path(config["proposal_dir"]) / "raw" / f"r{int(run):04d}"
    files = train_files(raw)
    if not files:
        return None
    dc = open_train_data(raw, files)
    xgm = resolve_sources(config, dc, str(raw)).xgm
    device = xgm.split(":", 1)[0] if xgm else None
    if not device or device not in dc.control_sources or "pulseEnergy.wavelengthUsed" not in dc[device]:
        return None
    nm = float(dc[device, "pulseEnergy.wavelengthUsed"].as_single_value(rtol=1e-3))
    return discovery.photon_energy_kev(nm) if nm > 0 else None


def _reader(config: dict, corr_files: Sequence[Path]) -> SequenceFrames:
    return SequenceFrames(dict(zip(modules_of(config), map(Path, corr_files))))


def _annotation_lookup(annotation_file: Path):
    """(trainId, pulseId) → row of the sequence's annotation table."""
    table = read_frame_table(Path(annotation_file), sources.ANNOTATION_SOURCE)
    index = FrameIndex(table["trainId"], table["pulseId"])

    def rows(train_ids: np.ndarray, pulse_ids: np.ndarray) -> np.ndarray:
        return index.rows(train_ids, pulse_ids, str(annotation_file))

    return table, rows


# -- SFX ----------------------------------------------------------------------------
def sfx_chunk(config: dict, run: int, corr_files: Sequence[Path], annotation_file: Path,
              out_cxi: Path, out_table: Path) -> None:
    """Peak finding on one sequence: hit-only CXI file and per-frame peak table."""
    from . import sfx
    from .io import cxi

    mods = modules_of(config)
    setup = run_setup(config, run)
    params = sfx.PeakFinderParams.from_config(config.get("sfx", {}).get("peakfinder"))
    geom = geometry.geometry_from_config(config.get("geometry", {}))
    finder = sfx.PeakFinder(sfx.radius_map_px(geom, mods), params)
    annot, rows = _annotation_lookup(annotation_file)
    prov = provenance(config, list(corr_files) + [annotation_file], step="sfx_chunk", run=run, setup=setup)
    reader = _reader(config, corr_files)
    with cxi.CxiHitWriter(out_cxi, modules=mods, provenance=prov, max_peaks=params.max_num_peaks,
                          photon_energy_kev=setup["photon_energy_kev"], distance_m=setup["distance_m"],
                          compression=config.get("sfx", {}).get("cxi_compression")) as w:
        table = sfx.process_sequence(reader, finder, w, progress=log)
    # Only X-ray frames can be hits: a peak pattern on a dark frame is a detector problem.
    xray = annot["xray"][rows(table["trainId"], table["pulseId"])]
    table["hit"] = table["hit"] & xray
    table["xray"] = xray
    write_frame_table(Path(out_table), sources.SFX_SOURCE, table, prov, run=run, run_type="sfx peaks")


def sfx_run(config: dict, run: int, cxi_files: Sequence[Path], tables: Sequence[Path],
            out_lst: Path, out_geom: Path, out_stats: Path) -> dict:
    """Run products: CrystFEL event list and geometry, hit statistics."""
    from . import sfx
    from .io import cxi

    setup = run_setup(config, run)
    n = cxi.write_event_list(out_lst, cxi_files)
    geom = geometry.geometry_from_config(config.get("geometry", {}))
    cxi.write_crystfel_geom(geom, out_geom, photon_energy_kev=setup["photon_energy_kev"],
                            distance_m=setup["distance_m"])
    t = [read_frame_table(Path(p), sources.SFX_SOURCE) for p in tables]
    cat = {k: np.concatenate([x[k] for x in t]) for k in t[0]}
    stats = sfx.hit_statistics(cat["trainId"], cat["pulseId"], cat["n_peaks"], cat["hit"], xray=cat["xray"])
    stats = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in stats.items()}
    stats["events_in_lst"] = n
    stats["provenance"] = provenance(config, list(cxi_files) + list(tables), step="sfx_run", run=run, setup=setup)
    write_json(out_stats, stats, default=float)
    return stats


# -- XPCS -----------------------------------------------------------------------------
def _static_mask(config: dict, reference_corr: Sequence[Path]) -> np.ndarray:
    """Pixels bad in any frame of the first train of the run's first sequence.

    Every chunk of a run uses this same mask, so ring labels — and thus the
    partial sums — are defined identically however the run is split.
    """
    chunk = next(_reader(config, reference_corr).iter_chunks(1))
    return np.bitwise_or.reduce(chunk.mask, axis=0)


def xpcs_labels(config: dict, run: int, reference_corr: Sequence[Path]):
    from . import xpcs

    setup = run_setup(config, run)
    geom = geometry.geometry_from_config(config.get("geometry", {}))
    pos = geometry.pixel_positions(geom, setup["distance_m"], modules_of(config))
    q = geometry.q_map(pos, setup["photon_energy_kev"])
    rings = config.get("xpcs", {}).get("rings", [0.08, 0.11, 0.14, 0.17, 0.20, 0.24, 0.30])
    labels = xpcs.ring_labels(q, _static_mask(config, reference_corr), np.asarray(rings, float))
    return labels, xpcs.ring_q(q, labels)


def xpcs_chunk(config: dict, run: int, corr_files: Sequence[Path], annotation_file: Path,
               reference_corr: Sequence[Path], output: Path) -> None:
    """Correlation sums of one sequence (X-ray frames only)."""
    from . import xpcs

    cfg = config.get("xpcs", {})
    labels, _ = xpcs_labels(config, run, reference_corr)
    annot, rows = _annotation_lookup(annotation_file)
    # The two-time matrix size must be the same in every chunk of the run.
    n_frames = int(cfg.get("frames_per_train") or np.bincount(
        np.unique(annot["trainId"], return_inverse=True)[1], weights=annot["xray"]).max())
    part = xpcs.XpcsPartial(labels, n_frames=n_frames, max_train_lag=int(cfg.get("max_train_lag", 10)),
                            photonize_threshold=cfg.get("photonize_threshold", 0.5))
    reader = _reader(config, corr_files)
    done = 0
    for chunk in reader.iter_chunks(trains_per_chunk(config)):
        xray = annot["xray"][rows(chunk.train_ids, chunk.pulse_ids)]
        for tid in np.unique(chunk.train_ids):
            sel = (chunk.train_ids == tid) & xray
            if sel.any():
                part.add_train(int(tid), chunk.data[sel])
        done += chunk.chunk_train_ids.size
        log.info("xpcs: %d/%d trains correlated", done, reader.train_ids.size)
    with AtomicH5File(output) as f:
        attach_provenance(f, provenance(config, list(corr_files) + [annotation_file], step="xpcs_chunk", run=run))
        part.to_h5(f.create_group("xpcs_partial"))


def xpcs_run(config: dict, run: int, partials: Sequence[Path], reference_corr: Sequence[Path],
             train_files: Sequence[Path], output: Path) -> dict:
    """Merge the partials; g2, fits, D and contrast of the run."""
    from . import xpcs

    merged = None
    for p in partials:
        with h5py.File(p, "r") as f:
            part = xpcs.XpcsPartial.from_h5(f["xpcs_partial"])
        merged = part if merged is None else merged.merge(part)
    _, q_rings = xpcs_labels(config, run, reference_corr)
    pulse_spacing = _pulse_spacing_s(config, train_files)
    train_spacing = float(config.get("xpcs", {}).get("train_spacing_s", 0.1))
    ana = xpcs.analyse(merged, q_rings, pulse_spacing, train_spacing)
    xpcs.write_xpcs_h5(output, ana, provenance(config, list(partials), step="xpcs_run", run=run,
                                               pulse_spacing_s=pulse_spacing))
    return ana


def _pulse_spacing_s(config: dict, train_files: Sequence[Path]) -> float:
    """Frame spacing from the AGIPD control device (repetition rate in MHz), read
    from whichever of the run's aggregators records it (AGIPD1MCTRL00 at the facility)."""
    from .io.trains import open_train_data, resolve_sources

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


# -- SAXS -----------------------------------------------------------------------------
def saxs_engine(config: dict, run: int, reference_corr: Sequence[Path]):
    """The run's azimuthal integrator (same geometry, bins and static mask in every chunk)."""
    from .saxs import AzimuthalEngine

    cfg = config.get("saxs", {})
    setup = run_setup(config, run)
    geom = geometry.geometry_from_config(config.get("geometry", {}))
    q_range = cfg.get("q_range")
    return AzimuthalEngine.from_geometry(
        geom, setup["distance_m"], setup["photon_energy_kev"], int(cfg.get("npt", 500)),
        q_range=tuple(q_range) if q_range else None, unit="q_nm^-1", split=cfg.get("split", "no"),
        mask=_static_mask(config, reference_corr) != 0, solid_angle=True,
        polarisation=float(cfg.get("polarisation", 0.99)), modules=modules_of(config))


def saxs_chunk(config: dict, run: int, corr_files: Sequence[Path], annotation_file: Path,
               reference_corr: Sequence[Path], frames_out: Path, partial_out: Path) -> dict:
    """Per-frame I(q), σ(q) of one sequence and its mergeable partial."""
    from .saxs import integrate_sequence

    engine = saxs_engine(config, run, reference_corr)
    prov = provenance(config, list(corr_files) + [annotation_file], step="saxs_chunk", run=run)
    return integrate_sequence(engine, _reader(config, corr_files), annotation_file, frames_out, partial_out, prov,
                              trains_per_chunk=trains_per_chunk(config),
                              xgm_normalise=bool(config.get("saxs", {}).get("xgm_normalise", False)))


def saxs_run(config: dict, run: int, partials: Sequence[Path], output: Path, output_json: Path) -> dict:
    """Run averages (all, laser on, off, on−off) as NXcanSAS, with sphere fits."""
    from .saxs import gather_run

    prov = provenance(config, list(partials), step="saxs_run", run=run)
    res = gather_run(partials, output, prov, title=f"SAXS run {run}", run=f"r{run:04d}")
    write_json(output_json, res, default=float)
    return res


# -- Spectroscopy (JUNGFRAU) ---------------------------------------------------------------
def _spec_cfg(config: dict):
    from .spectroscopy import SpectroscopyConfig

    return SpectroscopyConfig.from_dict(config.get("spectroscopy", {}))


def jungfrau_dark(config: dict, dark_dirs: Sequence[Path], output: Path, inputs: Sequence[Path] = ()) -> None:
    """Dark constants of the JUNGFRAU module (one dark run per gain stage)."""
    from .calibrate import jungfrau as jf
    from .calibrate.dark import BadPixelRules

    jcfg = config["calibration"]["jungfrau"]
    module = _spec_cfg(config).module
    n_cells = int(jcfg.get("memory_cells", 16))
    dark = jf.characterise_jungfrau({g: Path(d) for g, d in enumerate(dark_dirs)}, module, n_cells,
                                    BadPixelRules.from_dict(config["calibration"].get("badpixels")))
    gain = jf.read_gain_constants(Path(jcfg["gain_constants"]), module, n_cells)
    prov = provenance(config, list(inputs) + [jcfg["gain_constants"]], step="jungfrau_dark", module=module)
    jf.write_constants(Path(output), module, dark, gain, prov)


def jungfrau_correct(config: dict, raw: Path, constants: Path, output: Path) -> dict:
    from .calibrate import jungfrau as jf

    module = _spec_cfg(config).module
    prov = provenance(config, [raw, constants], step="jungfrau_correct", module=module)
    return jf.correct_sequence(Path(raw), Path(output), module, jf.load_constants(Path(constants)), prov,
                               progress=log)


def spectroscopy_image(config: dict, run: int, corr: Path, train: Sequence[Path], output: Path) -> None:
    """Pass 1: the sequence's ROI image moments (for the curvature fit)."""
    from . import spectroscopy

    prov = provenance(config, [corr, *train], step="spectroscopy_image", run=run)
    spectroscopy.image_sequence(Path(corr), list(map(Path, train)), _spec_cfg(config), Path(output), prov,
                                sources_config=config)


def spectroscopy_curvature(config: dict, run: int, partials: Sequence[Path], output: Path) -> None:
    from . import spectroscopy

    prov = provenance(config, list(partials), step="spectroscopy_curvature", run=run)
    curv = spectroscopy.curvature_run(partials, _spec_cfg(config), Path(output), prov)
    log.info("run %d: line curvature coefficients %s", run, curv.coefficients)


def spectroscopy_reduce(config: dict, run: int, seq: int, corr: Path, train: Sequence[Path], curvature: Path,
                        partial_out: Path, frames_out: Path) -> dict:
    """Pass 2: per-frame spectra (REDU) and mergeable on/off partials."""
    from . import spectroscopy

    prov = provenance(config, [corr, *train, curvature], step="spectroscopy_reduce", run=run, sequence=seq)
    return spectroscopy.reduce_sequence(
        Path(corr), list(map(Path, train)), _spec_cfg(config), spectroscopy.load_curvature(Path(curvature)),
        Path(partial_out), Path(frames_out), prov, run=run, sequence=seq,
        proposal=int(config.get("simulate", {}).get("proposal", 0)), progress=log,
        sources_config=config)


def spectroscopy_run(config: dict, run: int, partials: Sequence[Path], curvature: Path, output: Path,
                     output_json: Path) -> dict:
    from . import spectroscopy

    prov = provenance(config, list(partials) + [curvature], step="spectroscopy_run", run=run)
    res = spectroscopy.gather_run(partials, Path(curvature), _spec_cfg(config), Path(output), prov)
    write_json(output_json, res, default=float)
    return res


def spectroscopy_frame_table(partials: Sequence[Path]) -> dict[str, np.ndarray]:
    """The run's per-frame table (trainId, xray, ppl, pulse_energy, …) from the partials."""
    from .spectroscopy import merge_partials

    table, _ = merge_partials(partials)
    return table
