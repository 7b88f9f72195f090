"""Write a synthetic beamtime in the EuXFEL RAW layout, with its ground truth.

Per run and sequence this writes one file per AGIPD module
(``RAW-R0010-AGIPD03-S00001.h5``) and one file with the slow and beam data
(``RAW-R0010-DA01-S00001.h5``: XGM, bunch pattern table, AGIPD control), plus
``truth/r0010/truth.json`` (scalars) and ``truth/r0010/truth.h5`` (per-frame arrays)
beside the ``raw/`` folder.  Dark
runs are taken in fixed gain (one run per stage), as at the facility.
"""
from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import geometry
from ..io import sources
from ..io.atomic import write_json
from ..io.euxfel import AtomicH5File, EuXFELWriter, write_h5
from ..io.provenance import attach_provenance, provenance
from .beam import BUNCH_TABLE_SIZE, XGM_SLOTS, BeamConfig, make_train_beam
from .detector import MODULE_SHAPE, ModuleTruth, make_module_truth, raw_frames
from .scene import Scene, SceneContext

log = logging.getLogger(__name__)

FIRST_TRAIN_ID = 1_000_000_000


def load_scene_class(kind: str) -> type[Scene]:
    """The scene class for a run type (``dark``, ``spi``, ``saxs``, ``sfx``…).

    Scenes live in ``xfel_reduce.simulate.scenes.<kind>``; the class whose ``name``
    equals ``kind`` is used, so adding a technique needs no registry edit.
    """
    if kind == "dark":
        return Scene
    try:
        mod = importlib.import_module(f"{__package__}.scenes.{kind}")
    except ModuleNotFoundError as err:
        raise ValueError(f"unknown simulated run type {kind!r}: no module scenes/{kind}.py") from err
    for obj in vars(mod).values():
        if isinstance(obj, type) and issubclass(obj, Scene) and getattr(obj, "name", None) == kind:
            return obj
    raise ValueError(f"scenes/{kind}.py defines no Scene subclass named {kind!r}")


def module_list(sim_cfg: dict) -> list[int]:
    mods = sim_cfg.get("modules", 16)
    return list(range(mods)) if isinstance(mods, int) else [int(m) for m in mods]


def run_plan(sim_cfg: dict, run_cfg: dict) -> dict[str, Any]:
    """Resolved parameters of one simulated run (global defaults + run overrides)."""
    n_trains = int(run_cfg.get("trains", sim_cfg.get("trains", 20)))
    per_seq = int(run_cfg.get("trains_per_sequence", sim_cfg.get("trains_per_sequence", n_trains)))
    beam = {**sim_cfg.get("beam", {}), **run_cfg.get("beam", {})}
    if run_cfg.get("type") == "dark":
        beam["xray"] = False
        beam["ppl_mode"] = "none"
    return {
        "run": int(run_cfg["run"]),
        "type": run_cfg.get("type", "dark"),
        "gain": run_cfg.get("gain"),
        "n_trains": n_trains,
        "trains_per_sequence": per_seq,
        "n_sequences": -(-n_trains // per_seq),
        "beam": BeamConfig.from_dict(beam),
        "photon_energy_kev": float(run_cfg.get("photon_energy_kev", sim_cfg.get("photon_energy_kev", 9.3))),
        "distance_m": float(run_cfg.get("distance_m", sim_cfg.get("distance_m", 0.5))),
        "params": run_cfg.get("params", {}),
        "seed": int(sim_cfg.get("seed", 0)) * 1000 + int(run_cfg["run"]),
        "first_train_id": FIRST_TRAIN_ID + 10_000 * int(run_cfg["run"]),
        "faults": run_cfg.get("faults", {}),
    }


def expected_files(proposal_dir: Path, sim_cfg: dict, run_cfg: dict) -> list[Path]:
    """Paths a simulated run writes (known before it is simulated)."""
    plan = run_plan(sim_cfg, run_cfg)
    run_dir = Path(proposal_dir) / "raw" / f"r{plan['run']:04d}"
    out = []
    for seq in range(plan["n_sequences"]):
        out += [run_dir / sources.raw_filename(plan["run"], m, seq) for m in module_list(sim_cfg)]
        out.append(run_dir / sources.da_filename(plan["run"], seq))
    return out


def detector_truths(sim_cfg: dict) -> list[ModuleTruth]:
    n_cells = int(sim_cfg.get("beam", {}).get("frames_per_train", 8))
    n_cells = int(sim_cfg.get("memory_cells", n_cells))
    return [make_module_truth(m, n_cells, int(sim_cfg.get("seed", 0)), sim_cfg.get("detector"))
            for m in module_list(sim_cfg)]


def write_detector_truth(proposal_dir: Path, sim_cfg: dict, config: dict | None = None) -> tuple[Path, Path]:
    """Write the facility gain constants and the full detector truth.

    ``calib/agipd_gain_constants.h5`` plays the role of the gain constants a user
    gets from the facility's calibration database (ADU per photon per gain stage,
    memory cell and pixel); ``truth/detector.h5`` holds every true constant for tests.
    """
    proposal_dir = Path(proposal_dir)
    truths = detector_truths(sim_cfg)
    prov = provenance(config or sim_cfg)
    modules = np.array([t.module for t in truths])
    gain_path = write_h5(proposal_dir / "calib" / "agipd_gain_constants.h5", prov, {
        "adu_per_photon": (np.stack([t.adu_per_photon for t in truths], axis=2),
                           "gain, cell, module, slow_scan, fast_scan"),
        "modules": modules,
    })
    truth_path = write_h5(proposal_dir / "truth" / "detector.h5", prov, {
        "modules": modules,
        **{name: np.stack([getattr(t, name) for t in truths], axis=2)
           for name in ("offset", "noise", "digital", "adu_per_photon")},
        "bad": np.stack([t.bad() for t in truths], axis=1),  # (cell, module, ss, fs)
        **{name: np.stack([getattr(t, name) for t in truths]) for name in ("dead", "hot", "gain_fault")},
        "noisy": np.stack([t.noisy for t in truths], axis=1),
    }, attrs={"params": json.dumps(truths[0].params)})
    return gain_path, truth_path


def add_beam_sources(da: EuXFELWriter, n_trains: int, photon_energy_kev: float) -> None:
    """Declare a DA file's beam sources: XGM pulse energies and the bunch pattern.

    Every simulated run (AGIPD or JUNGFRAU) writes them in this one layout, so the
    annotation reads them the same way; :func:`fill_beam_sources` writes the rows.
    """
    ones = np.ones(n_trains, np.uint64)
    da.add_instrument(sources.XGM_SOURCE, ones, {"data.intensityTD": (np.float32, (XGM_SLOTS,))})
    da.add_instrument(sources.BUNCH_PATTERN_SOURCE, ones,
                      {"data.bunchPatternTable": (np.uint32, (BUNCH_TABLE_SIZE,))})
    da.add_control(sources.XGM_CONTROL, {
        "pulseEnergy.wavelengthUsed": np.full(n_trains, geometry.wavelength_nm(photon_energy_kev), np.float32),
    })


def fill_beam_sources(da: EuXFELWriter, xgm_rows: list[np.ndarray], bunch_rows: list[np.ndarray]) -> None:
    da.fill(sources.XGM_SOURCE, {"data.intensityTD": np.stack(xgm_rows)})
    da.fill(sources.BUNCH_PATTERN_SOURCE, {"data.bunchPatternTable": np.stack(bunch_rows)})


def write_run_truth(proposal_dir: Path, run: int, truth: dict, frame_truth: dict[str, list[np.ndarray]],
                    scene: Scene, prov: dict) -> list[Path]:
    """Write ``truth.h5`` (per-frame arrays, scene arrays) and ``truth.json`` of a run."""
    truth_dir = truth_dir_for(proposal_dir, run)
    with AtomicH5File(truth_dir / "truth.h5") as f:
        attach_provenance(f, prov)
        for key, parts in frame_truth.items():
            f[f"frames/{key}"] = np.concatenate(parts)
        extra = scene.frame_truth() if hasattr(scene, "frame_truth") else {}
        for key, arr in extra.items():
            f[f"scene/{key}"] = np.asarray(arr)
    write_json(truth_dir / "truth.json", truth, indent=2, default=str)
    return [truth_dir / "truth.h5", truth_dir / "truth.json"]


def simulate_run(
    proposal_dir: Path,
    sim_cfg: dict,
    run_cfg: dict,
    config: dict | None = None,
    progress: logging.Logger | None = None,
) -> list[Path]:
    """Simulate one run (all sequences and modules) and write its truth.

    Returns the list of files written.
    """
    progress = progress or log
    plan = run_plan(sim_cfg, run_cfg)
    proposal = int(sim_cfg.get("proposal", 900001))
    modules = module_list(sim_cfg)
    run = plan["run"]
    run_dir = Path(proposal_dir) / "raw" / f"r{run:04d}"
    beam_cfg: BeamConfig = plan["beam"]
    truths = detector_truths(sim_cfg)
    n_cells = truths[0].n_cells
    if beam_cfg.frames_per_train > n_cells:
        raise ValueError(
            f"run {run}: {beam_cfg.frames_per_train} frames per train but the simulated "
            f"detector has only {n_cells} memory cells (simulate.memory_cells)"
        )
    geom = geometry.agipd_geometry(sim_cfg.get("quad_positions"))
    ctx = SceneContext(
        positions=geometry.pixel_positions(geom, plan["distance_m"], modules),
        modules=modules,
        photon_energy_kev=plan["photon_energy_kev"],
        pulses_per_train=beam_cfg.frames_per_train,
        pulse_spacing_s=beam_cfg.pulse_spacing_s,
        train_spacing_s=float(sim_cfg.get("train_spacing_s", 0.1)),
        seed=plan["seed"],
        params=plan["params"],
    )
    scene = load_scene_class(plan["type"])(ctx)
    rng_beam = np.random.default_rng([plan["seed"], 1])
    rng_det = np.random.default_rng([plan["seed"], 2])
    cells = (np.arange(beam_cfg.frames_per_train) % n_cells).astype(np.uint16)
    pulse_ids = beam_cfg.pulse_ids()
    gain_mode = 0 if plan["gain"] is None else sources.GAIN_MODE_FIXED[int(plan["gain"])]
    prov = provenance(config or sim_cfg, simulated_run=run, run_type=plan["type"])
    drop = plan["faults"].get("drop_frames")  # {module, train_index, keep}

    frame_truth: dict[str, list[np.ndarray]] = {k: [] for k in ("trainId", "pulseId", "cellId", "xray", "ppl", "pulse_energy")}
    written: list[Path] = []
    t0 = time.monotonic()
    for seq in range(plan["n_sequences"]):
        t_lo = seq * plan["trains_per_sequence"]
        t_hi = min(plan["n_trains"], t_lo + plan["trains_per_sequence"])
        tids = plan["first_train_id"] + np.arange(t_lo, t_hi, dtype=np.uint64)
        meta = dict(proposal=proposal, run=run, sequence=seq, run_type=f"simulated {plan['type']}")
        writers: dict[int, EuXFELWriter] = {}
        counts_by_mod = {}
        try:
            for m in modules:
                counts = np.full(tids.size, beam_cfg.frames_per_train, np.uint64)
                if drop and int(drop["module"]) == m and t_lo <= int(drop["train_index"]) < t_hi:
                    counts[int(drop["train_index"]) - t_lo] = int(drop["keep"])
                counts_by_mod[m] = counts
                w = EuXFELWriter(run_dir / sources.raw_filename(run, m, seq), tids, prov, **meta)
                src = sources.RAW_SOURCE.format(module=m)
                w.add_instrument(src, counts, {
                    "image.data": (np.uint16, (2,) + MODULE_SHAPE),
                    "image.cellId": (np.uint16, ()),
                    "image.pulseId": (np.uint64, ()),
                    "image.status": (np.uint16, ()),
                    "image.length": (np.uint32, ()),
                }, chunk_rows=1)
                writers[m] = w
            da = EuXFELWriter(run_dir / sources.da_filename(run, seq), tids, prov, **meta)
            add_beam_sources(da, tids.size, plan["photon_energy_kev"])
            da.add_control(sources.AGIPD_CONTROL, {
                "gainModeIndex": np.full(tids.size, gain_mode, np.int32),
                "bunchStructure.nPulses": np.full(tids.size, beam_cfg.frames_per_train, np.int32),
                "bunchStructure.firstPulse": np.full(tids.size, beam_cfg.first_pulse, np.int32),
                "bunchStructure.repetitionRate": np.full(tids.size, 4.5 / beam_cfg.pulse_stride),
            })
            xgm_rows, bp_rows = [], []
            for k, tid in enumerate(tids):
                ti = t_lo + k
                beam, table, xgm = make_train_beam(beam_cfg, ti, int(tid), plan["n_trains"], rng_beam)
                xgm_rows.append(xgm)
                bp_rows.append(table)
                photons = scene.photons(beam)
                for j, m in enumerate(modules):
                    raw, _ = raw_frames(truths[j], photons[:, j], cells, rng_det,
                                        forced_gain=None if plan["gain"] is None else int(plan["gain"]))
                    keep = int(counts_by_mod[m][k])
                    writers[m].write_train(sources.RAW_SOURCE.format(module=m), k, {
                        "image.data": raw[:keep],
                        "image.cellId": cells[:keep],
                        "image.pulseId": pulse_ids[:keep],
                        "image.length": np.full(keep, raw[0].nbytes, np.uint32),
                    })
                frame_truth["trainId"].append(np.full(beam_cfg.frames_per_train, tid, np.uint64))
                frame_truth["pulseId"].append(pulse_ids)
                frame_truth["cellId"].append(cells)
                frame_truth["xray"].append(beam.xray)
                frame_truth["ppl"].append(beam.ppl)
                frame_truth["pulse_energy"].append(beam.pulse_energy_uj)
                if (ti + 1) % 10 == 0 or ti + 1 == plan["n_trains"]:
                    rate = (ti + 1) / (time.monotonic() - t0)
                    progress.info("run %d: %d/%d trains simulated (%.1f trains/s, ETA %.0f s)",
                                  run, ti + 1, plan["n_trains"], rate, (plan["n_trains"] - ti - 1) / rate)
            fill_beam_sources(da, xgm_rows, bp_rows)
        except BaseException:
            for w in writers.values():
                w.abort()
            if "da" in locals():
                da.abort()
            raise
        for m in modules:
            writers[m].close()
            written.append(writers[m]._atomic.path)
        da.close()
        written.append(da._atomic.path)

    truth = {
        "run": run,
        "type": plan["type"],
        "gain": plan["gain"],
        "proposal": proposal,
        "modules": modules,
        "n_trains": plan["n_trains"],
        "n_sequences": plan["n_sequences"],
        "frames_per_train": beam_cfg.frames_per_train,
        "photon_energy_kev": plan["photon_energy_kev"],
        "distance_m": plan["distance_m"],
        "beam": vars(beam_cfg),
        "scene": scene.truth(),
        "faults": plan["faults"],
    }
    return written + write_run_truth(proposal_dir, run, truth, frame_truth, scene, prov)


def truth_dir_for(proposal_dir: Path, run: int) -> Path:
    """Where a simulated run's truth lives: outside the run directory, so that the
    run holds only what the DAQ would write and extra-data sees nothing foreign."""
    return Path(proposal_dir) / "truth" / f"r{run:04d}"


def iter_runs(sim_cfg: dict) -> Iterator[dict]:
    """All simulated runs of the config: dark runs first, then data runs."""
    for d in sim_cfg.get("dark", {}).get("runs", []):
        yield {"type": "dark", "trains": sim_cfg["dark"].get("trains", 32),
               "trains_per_sequence": sim_cfg["dark"].get("trains_per_sequence", 10_000),
               # darks must cover every memory cell any run uses
               "beam": {"frames_per_train": int(sim_cfg.get("memory_cells", 8))}, **d}
    yield from sim_cfg.get("runs", [])
