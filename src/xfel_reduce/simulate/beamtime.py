"""Write a synthetic beamtime in the EuXFEL RAW layout, with its ground truth.

Per run and sequence this writes one file per AGIPD module
(``RAW-R0010-AGIPD03-S00001.h5``); the train-level data go to aggregators of their own
with their own sequence numbering, as at the facility: ``RAW-R0010-DA01-S00000.h5``
(timeserver bunch pattern, XGM) and ``RAW-R0010-AGIPD1MCTRL00-S00000.h5`` (the AGIPD
control device), one sequence each for the whole run, so that nothing can pair
sequence *k* of one aggregator with sequence *k* of another.  Source names follow the
instrument profile (:data:`xfel_reduce.config.INSTRUMENTS`).  Beside the ``raw/``
folder go ``truth/r0010/truth.json`` (scalars) and ``truth/r0010/truth.h5`` (per-frame
arrays).  Dark runs are taken in fixed gain (one run per stage), as at the facility.
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
from ..config import InstrumentProfile, instrument_profile, ppl_bit_value
from ..detectors.agipd import check_modules
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
    from .scan import DelayScan

    profile = instrument_profile(run_cfg.get("instrument", sim_cfg.get("instrument", "SPB")))
    scan = DelayScan.from_dict(run_cfg["delay_scan"], profile.laser_stage) if run_cfg.get("delay_scan") else None
    n_trains = int(run_cfg.get("trains", scan.n_trains if scan else sim_cfg.get("trains", 20)))
    if scan is not None and n_trains != scan.n_trains:
        raise ValueError(f"simulated run {run_cfg['run']}: trains: {n_trains} but its delay_scan records "
                         f"{scan.n_trains} trains (steps × trains_per_step + transitions); drop `trains`")
    per_seq = int(run_cfg.get("trains_per_sequence", sim_cfg.get("trains_per_sequence", n_trains)))
    beam = {**sim_cfg.get("beam", {}), **run_cfg.get("beam", {})}
    beam.setdefault("sase", profile.sase)
    beam.setdefault("ppl_bit", ppl_bit_value(profile.ppl_bit))
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
        "instrument": profile,
        "photon_energy_kev": float(run_cfg.get("photon_energy_kev", sim_cfg.get("photon_energy_kev", 9.3))),
        "distance_m": float(run_cfg.get("distance_m", sim_cfg.get("distance_m", 0.5))),
        "params": run_cfg.get("params", {}),
        "seed": int(sim_cfg.get("seed", 0)) * 1000 + int(run_cfg["run"]),
        "first_train_id": FIRST_TRAIN_ID + 10_000 * int(run_cfg["run"]),
        "faults": run_cfg.get("faults", {}),
        "delay_scan": scan,
    }


def expected_files(proposal_dir: Path, sim_cfg: dict, run_cfg: dict) -> list[Path]:
    """Paths a simulated run writes (known before it is simulated)."""
    plan = run_plan(sim_cfg, run_cfg)
    run_dir = Path(proposal_dir) / "raw" / f"r{plan['run']:04d}"
    out = []
    for seq in range(plan["n_sequences"]):
        out += [run_dir / sources.raw_filename(plan["run"], m, seq) for m in module_list(sim_cfg)]
    return out + [run_dir / sources.da_filename(plan["run"], 0),
                  run_dir / sources.aggregator_filename(plan["run"], agipd_kind(plan["instrument"]).control_aggregator, 0)]


def agipd_kind(profile: InstrumentProfile):
    """The AGIPD (1M or 500K) of an instrument, which a simulated AGIPD run there writes."""
    from ..config import ConfigError
    from ..detectors.agipd import detector_of_name

    if not profile.agipd:
        raise ConfigError(f"simulate: instrument {profile.name} has no AGIPD; simulate AGIPD runs at "
                          "SPB, MID (AGIPD 1M) or HED (AGIPD 500K)")
    return detector_of_name(profile.agipd)


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


def add_beam_sources(da: EuXFELWriter, n_trains: int, photon_energy_kev: float,
                     profile: InstrumentProfile | None = None) -> None:
    """Declare a file's beam sources: the timeserver's bunch pattern and the XGM.

    Every simulated run (AGIPD or JUNGFRAU) writes them in this one layout, the
    facility's (names from the instrument ``profile``, default SPB): the XGM's combined
    ``intensityTD``, per-SASE keys on the SASE1/3 line, ``intensitySigmaTD``, the
    control keys EXtra's ``XGM`` reads, and the devices' ``classId``.
    :func:`fill_beam_sources` writes the rows.
    """
    profile = profile or instrument_profile("SPB")
    ones = np.ones(n_trains, np.uint64)
    keys = ["intensityTD", "intensitySigmaTD"]
    if profile.sase in (1, 3):
        keys += ["intensitySa1TD", "intensitySa3TD"]
    da.add_instrument(profile.xgm_output, ones, {f"data.{k}": (np.float32, (XGM_SLOTS,)) for k in keys})
    da.add_instrument(profile.timeserver, ones,
                      {"data.bunchPatternTable": (np.uint32, (BUNCH_TABLE_SIZE,))})
    ts_device = profile.timeserver.split(":", 1)[0]
    da.add_control(ts_device, {}, run_values={"classId": "TimeServer"})
    control = {"pulseEnergy.wavelengthUsed":
               np.full(n_trains, geometry.wavelength_nm(photon_energy_kev), np.float32)}
    da.add_control(profile.xgm, control, run_values={"classId": "DoocsXGM"})


def fill_beam_sources(da: EuXFELWriter, xgm_rows: list[dict[str, np.ndarray]], bunch_rows: list[np.ndarray],
                      profile: InstrumentProfile | None = None) -> None:
    """Write the rows declared by :func:`add_beam_sources` (one XGM dict per train)."""
    profile = profile or instrument_profile("SPB")
    keys = [k for k in da.f[f"INSTRUMENT/{profile.xgm_output}/data"] if k != "trainId"]
    da.fill(profile.xgm_output, {f"data.{k}": np.stack([row[k] for row in xgm_rows]) for k in keys})
    da.fill(profile.timeserver, {"data.bunchPatternTable": np.stack(bunch_rows)})


def agipd_control_values(beam_cfg: BeamConfig, gain_mode: int, n_trains: int) -> dict[str, np.ndarray]:
    """The AGIPD control device's per-train values (what the lit-frame finder reads)."""
    full = np.full
    return {
        "gainModeIndex": full(n_trains, gain_mode, np.int32),
        "bunchStructure.nPulses": full(n_trains, beam_cfg.frames_per_train, np.int32),
        "bunchStructure.firstPulse": full(n_trains, beam_cfg.first_pulse, np.int32),
        "bunchStructure.repetitionRate": full(n_trains, beam_cfg.repetition_rate_mhz, np.float64),
        "integrationTime": full(n_trains, beam_cfg.integration_clocks, np.int32),
        "patternTypeIndex": full(n_trains, 1 if beam_cfg.xray else 0, np.int32),
    }


def write_run_truth(proposal_dir: Path, run: int, truth: dict, frame_truth: dict[str, list[np.ndarray]],
                    scene: Scene, prov: dict, train_truth: dict[str, np.ndarray] | None = None) -> list[Path]:
    """Write ``truth.h5`` (per-frame arrays, per-train arrays, scene arrays) and
    ``truth.json`` of a run."""
    truth_dir = truth_dir_for(proposal_dir, run)
    with AtomicH5File(truth_dir / "truth.h5") as f:
        attach_provenance(f, prov)
        for key, parts in frame_truth.items():
            f[f"frames/{key}"] = np.concatenate(parts)
        for key, arr in (train_truth or {}).items():
            f[f"trains/{key}"] = arr
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
    kind = agipd_kind(plan["instrument"])
    check_modules(kind, modules, f"simulate.modules (run {run} at {plan['instrument'].name})")
    geom = kind.geometry(sim_cfg.get("quad_positions"), sim_cfg.get("origin_px"))
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
    profile: InstrumentProfile = plan["instrument"]
    raw_source = profile.agipd + "/DET/{module}CH0:xtdf"
    xgm_rows: list[dict[str, np.ndarray]] = []
    bp_rows: list[np.ndarray] = []
    prov = provenance(config or sim_cfg, simulated_run=run, run_type=plan["type"])
    drop = plan["faults"].get("drop_frames")  # {module, train_index, keep}

    frame_truth: dict[str, list[np.ndarray]] = {k: [] for k in ("trainId", "pulseId", "cellId", "xray", "ppl", "pulse_energy")}
    delays = plan["delay_scan"].train_delays() if plan["delay_scan"] is not None else None
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
                src = raw_source.format(module=m)
                # Raw AGIPD keeps (N, 1) per-frame ids, as the DAQ writes them.
                w.add_instrument(src, counts, {
                    "image.data": (np.uint16, (2,) + MODULE_SHAPE),
                    "image.cellId": (np.uint16, (1,)),
                    "image.pulseId": (np.uint64, (1,)),
                    "image.status": (np.uint16, (1,)),
                    "image.length": (np.uint32, (1,)),
                }, chunk_rows=1)
                w.add_instrument(src, np.ones(tids.size, np.uint64), {
                    "header.pulseCount": (np.uint64, ()),
                    "header.majorTrainFormatVersion": (np.uint32, ()),
                    "header.minorTrainFormatVersion": (np.uint32, ()),
                    "trailer.status": (np.uint64, ()),
                })
                writers[m] = w
            for k, tid in enumerate(tids):
                ti = t_lo + k
                beam, table, xgm = make_train_beam(beam_cfg, ti, int(tid), plan["n_trains"], rng_beam)
                if delays is not None:
                    beam.delay_ps = float(delays[ti])
                xgm_rows.append(xgm)
                bp_rows.append(table)
                photons = scene.photons(beam)
                for j, m in enumerate(modules):
                    raw, _ = raw_frames(truths[j], photons[:, j], cells, rng_det,
                                        forced_gain=None if plan["gain"] is None else int(plan["gain"]))
                    keep = int(counts_by_mod[m][k])
                    writers[m].write_train(raw_source.format(module=m), k, {
                        "image.data": raw[:keep],
                        "image.cellId": cells[:keep, None],
                        "image.pulseId": pulse_ids[:keep, None],
                        "image.length": np.full((keep, 1), raw[0].nbytes, np.uint32),
                        "header.pulseCount": np.array([keep], np.uint64),
                        "header.majorTrainFormatVersion": np.array([2], np.uint32),
                        "header.minorTrainFormatVersion": np.array([2], np.uint32),
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
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        for m in modules:
            writers[m].close()
            written.append(writers[m]._atomic.path)
        _inject_daq_faults(plan["faults"], run_dir, run, seq, t_lo, t_hi)
    written += write_train_data(run_dir, run, plan, profile, gain_mode, xgm_rows, bp_rows, prov,
                                proposal=proposal, run_type=f"simulated {plan['type']}")

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
    if plan["delay_scan"] is not None:
        truth["delay_scan"] = plan["delay_scan"].truth()
    return written + write_run_truth(proposal_dir, run, truth, frame_truth, scene, prov,
                                     train_truth=delay_scan_truth(plan))


def _inject_daq_faults(faults: dict, run_dir: Path, run: int, seq: int, t_lo: int, t_hi: int) -> None:
    """DAQ faults seen in real files, written into a closed module file.

    ``train_id_zero: {module, train_index}``: the train's INDEX row (and its frames'
    ``trainId``) read 0, as when the DAQ lost a train's header.
    ``out_of_order: {module, train_index}``: the train's ID jumps far ahead, so that the
    next one is lower: a non-increasing train ID (extra-data marks it suspect).
    """
    import h5py

    for kind in ("train_id_zero", "out_of_order"):
        f = faults.get(kind)
        if not f or not (t_lo <= int(f["train_index"]) < t_hi):
            continue
        k = int(f["train_index"]) - t_lo
        with h5py.File(run_dir / sources.raw_filename(run, int(f["module"]), seq), "r+") as h5:
            index = h5["INDEX/trainId"]
            old = int(index[k])
            new = 0 if kind == "train_id_zero" else old + 1_000_000
            index[k] = new
            # the per-row trainId of every group of every source follows its INDEX row
            rows = [obj for obj in _datasets(h5["INSTRUMENT"]) if obj.name.endswith("/trainId")]
            for ds in rows:
                data = ds[()]
                data[data == old] = new
                ds[...] = data


def _datasets(group) -> list:
    import h5py

    out: list = []
    group.visititems(lambda _, obj: out.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def write_train_data(run_dir: Path, run: int, plan: dict, profile: InstrumentProfile, gain_mode: int,
                     xgm_rows: list[dict[str, np.ndarray]], bp_rows: list[np.ndarray], prov: dict,
                     **meta: Any) -> list[Path]:
    """The run's train-level aggregators: DA01 (timeserver, XGM) and the AGIPD control's
    (AGIPD1MCTRL00, or AGIPD500K2G00 for the 500K), each one sequence over all trains."""
    tids = plan["first_train_id"] + np.arange(plan["n_trains"], dtype=np.uint64)
    beam_cfg: BeamConfig = plan["beam"]
    with EuXFELWriter(run_dir / sources.da_filename(run, 0), tids, prov, run=run, **meta) as da:
        add_beam_sources(da, tids.size, plan["photon_energy_kev"], profile)
        fill_beam_sources(da, xgm_rows, bp_rows, profile)
        add_delay_stage(da, plan)
    kind = agipd_kind(profile)
    ctrl_path = run_dir / sources.aggregator_filename(run, kind.control_aggregator, 0)
    values = agipd_control_values(beam_cfg, gain_mode, tids.size)
    if kind.first_pulse_key is None:  # the 500K's control records no firstPulse
        if beam_cfg.first_pulse:
            raise ValueError(f"simulated run {run}: the {kind.name} control records no firstPulse, so readers "
                             f"take 0; beam.first_pulse {beam_cfg.first_pulse} cannot be simulated there")
        values.pop("bunchStructure.firstPulse")
    with EuXFELWriter(ctrl_path, tids, prov, run=run, **meta) as ctrl:
        ctrl.add_control(profile.agipd_control, values,
                         run_values={"classId": kind.control_class,
                                     kind.pattern_type_key: "XRay" if beam_cfg.xray else "Dark",
                                     "deviceId": profile.agipd_control})
    return [run_dir / sources.da_filename(run, 0), ctrl_path]


def delay_scan_truth(plan: dict) -> dict[str, np.ndarray]:
    """Per train of a delay-scan run: trainId, delay (ps) and step (-1 while moving)."""
    scan = plan["delay_scan"]
    if scan is None:
        return {}
    return {"trainId": plan["first_train_id"] + np.arange(plan["n_trains"], dtype=np.uint64),
            "delay_ps": scan.train_delays(), "step": scan.train_steps()}


def add_delay_stage(da: EuXFELWriter, plan: dict) -> None:
    """The delay line's motor device in a run's DA01 file (delay-scan runs only)."""
    from .scan import MM_ATTRS

    scan = plan["delay_scan"]
    if scan is None:
        return
    values = scan.control_values(np.random.default_rng([plan["seed"], 7]))
    da.add_control(scan.stage, values, run_values={"classId": "MotorAxis"},
                   attrs={k: MM_ATTRS for k in values})


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
