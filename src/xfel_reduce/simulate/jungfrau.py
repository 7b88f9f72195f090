"""JUNGFRAU response model and run writer (spectroscopy and JUNGFRAU dark runs).

A JUNGFRAU module has 512 × 1024 pixels and, in burst mode, 16 storage (memory)
cells.  Runs are written as the facility records them
(:mod:`xfel_reduce.detectors.jungfrau`): per module and train one row of
``data.adc`` uint16 ``(16, 512, 1024)`` holding the **14-bit** value, ``data.gain``
uint8 the gain bits (0 → G0 high, 1 → G1 medium, 3 → G2 low), ``data.memoryCell``,
``data.frameNumber`` and ``data.timestamp``; each module in its own aggregator
(``RAW-R0014-JNGFR01-S00000.h5``) and the control device ``<detector>/DET/CONTROL``
in the control aggregator ``RAW-R0014-JNGFRCTRL00-S00000.h5`` (one sequence for the
whole run, so nothing can pair its sequence numbers with the modules').

The model has, per gain stage, an offset per memory cell and pixel, a per-pixel
Gaussian noise and a per-pixel relative gain (ADU per photon); dead, hot and noisy
pixels are drawn with known fractions.  Everything is drawn from a generator seeded
with ``(seed, module)`` so the truth can be rebuilt without reading any file.

Dark runs are taken as at the facility: one run per stage, G0 in ``dynamic`` gain
(no light), G1 and G2 with forced switching (``forceswitchg1``, ``forceswitchg2``),
recorded in the control's ``gainMode`` (since 2022) or, with
``simulate.jungfrau.control_vocabulary: legacy``, in ``settings`` with the pre-2022
names (``dynamicgain``, …).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..detectors import jungfrau as jfd
from ..io import sources
from ..io.euxfel import EuXFELWriter, write_h5
from ..io.provenance import provenance
from .beam import BeamConfig, make_train_beam
from .beamtime import (add_beam_sources, add_delay_stage, delay_scan_truth, fill_beam_sources, load_scene_class,
                       run_plan, write_run_truth)
from .detector import switching_stage
from .scene import SceneContext

log = logging.getLogger(__name__)

JF_SHAPE = jfd.MODULE_SHAPE
N_GAINS = 3
ADC_MAX = jfd.ADC_MASK
#: ``data.gain`` value of each stage.
GAIN_BITS = jfd.GAIN_BITS
PIXEL_SIZE_M = jfd.PIXEL_SIZE_M

#: Default JUNGFRAU truth (ADU unless stated); every value is a config parameter
#: (``simulate.jungfrau.detector``).  Gains are ADU per detected photon of the
#: spectrometer's emission energy (~6.4 keV at ~42 ADU/keV in G0).
DEFAULT_JUNGFRAU: dict[str, Any] = {
    "offset_mean": [1500.0, 3500.0, 5000.0],
    "offset_pixel_sigma": 120.0,
    "offset_cell_sigma": 20.0,
    "noise_mean": [6.0, 2.5, 1.5],
    "noise_pixel_sigma_rel": 0.08,
    "adu_per_photon_g0": 270.0,
    "gain_ratio_g0_g1": 30.0,
    "gain_ratio_g1_g2": 12.0,
    "relative_gain_sigma": 0.03,
    "switch_photons_g0": 35.0,
    "switch_photons_g1": 1000.0,
    "dead_fraction": 0.0005,
    "hot_fraction": 0.0005,
    "noisy_fraction": 0.001,
    "hot_offset": 3000.0,
    "noisy_factor": 8.0,
}


@dataclass
class JungfrauTruth:
    """True constants of one JUNGFRAU module.

    ``offset`` is ``(3, n_cells, 512, 1024)``; ``noise`` and ``adu_per_photon`` are
    per gain and pixel ``(3, 512, 1024)`` (the same in every memory cell).
    """

    module: int
    offset: np.ndarray
    noise: np.ndarray
    adu_per_photon: np.ndarray
    dead: np.ndarray
    hot: np.ndarray
    noisy: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return self.offset.shape[1]

    def bad(self) -> np.ndarray:
        """Truly bad pixels ``(512, 1024)`` bool."""
        return self.dead | self.hot | self.noisy


def make_jungfrau_truth(module: int, n_cells: int, seed: int, params: dict | None = None) -> JungfrauTruth:
    """Draw the constants of one JUNGFRAU module (deterministic in ``seed, module``)."""
    p = {**DEFAULT_JUNGFRAU, **(params or {})}
    rng = np.random.default_rng([int(seed), 4801, int(module)])
    f32 = np.float32
    offset = np.empty((N_GAINS, n_cells) + JF_SHAPE, f32)
    noise = np.empty((N_GAINS,) + JF_SHAPE, f32)
    gain = np.empty((N_GAINS,) + JF_SHAPE, f32)
    g0 = p["adu_per_photon_g0"]
    nominal = [g0, g0 / p["gain_ratio_g0_g1"], g0 / p["gain_ratio_g0_g1"] / p["gain_ratio_g1_g2"]]
    for g in range(N_GAINS):
        pix = rng.normal(p["offset_mean"][g], p["offset_pixel_sigma"], JF_SHAPE).astype(f32)
        offset[g] = pix[None] + rng.normal(0.0, p["offset_cell_sigma"], (n_cells,) + JF_SHAPE).astype(f32)
        noise[g] = p["noise_mean"][g] * (1 + p["noise_pixel_sigma_rel"] * rng.standard_normal(JF_SHAPE))
        gain[g] = nominal[g] * (1 + p["relative_gain_sigma"] * rng.standard_normal(JF_SHAPE))
    dead = rng.random(JF_SHAPE) < p["dead_fraction"]
    hot = (rng.random(JF_SHAPE) < p["hot_fraction"]) & ~dead
    noisy = (rng.random(JF_SHAPE) < p["noisy_fraction"]) & ~dead & ~hot
    offset[:, :, hot] += f32(p["hot_offset"])
    noise[:, dead] = 0.0
    gain[:, dead] = 0.0
    noise[:, noisy] *= f32(p["noisy_factor"])
    return JungfrauTruth(module, offset, noise, gain, dead, hot, noisy, params=p)


def gain_stage_for(photons: np.ndarray, params: dict) -> np.ndarray:
    """The JUNGFRAU stage for a charge (in photons)."""
    return switching_stage(photons, params["switch_photons_g0"], params["switch_photons_g1"])


def raw_frames(
    truth: JungfrauTruth,
    photons: np.ndarray,
    cells: np.ndarray,
    rng: np.random.Generator,
    forced_gain: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw JUNGFRAU data of one module, as the facility's receiver writes them.

    Parameters
    ----------
    photons
        ``(n_frames, 512, 1024)`` photons per pixel.
    cells
        Memory cell of each frame.
    forced_gain
        Stage for dark runs taken with forced gain; ``None`` for dynamic gain.

    Returns
    -------
    adc
        ``(n_frames, 512, 1024)`` uint16 ``data.adc``: the 14-bit value.
    gain
        ``(n_frames, 512, 1024)`` uint8 ``data.gain``: gain bits 0, 1 or 3.
    stage
        ``(n_frames, 512, 1024)`` uint8 true gain stage (0, 1, 2).
    """
    cells = np.asarray(cells, np.intp)
    n = photons.shape[0]
    if forced_gain is None:
        stage = gain_stage_for(photons, truth.params)
    else:
        stage = np.full(photons.shape, int(forced_gain), np.uint8)
    g_base = 0 if forced_gain is None else int(forced_gain)
    # Most pixels sit in one stage (G0 in data, the forced stage in darks): build the
    # frames from that stage's constants and patch the few switched pixels, instead
    # of gathering all three stages for every pixel.
    analog = truth.offset[g_base][cells] + photons * truth.adu_per_photon[g_base]
    sigma = np.broadcast_to(truth.noise[g_base], analog.shape)
    z = rng.standard_normal(analog.shape, dtype=np.float32)
    analog += sigma * z
    if forced_gain is None:
        i, y, x = np.nonzero(stage > 0)
        if i.size:
            g = stage[i, y, x].astype(np.intp)
            analog[i, y, x] = (truth.offset[g, cells[i], y, x] + photons[i, y, x] * truth.adu_per_photon[g, y, x]
                               + truth.noise[g, y, x] * z[i, y, x])
    adc = np.clip(np.rint(analog), 0, ADC_MAX).astype(np.uint16)
    assert adc.shape[0] == n
    return adc, GAIN_BITS[stage], stage


# -- configuration ---------------------------------------------------------------------
#: Simulated run types written on the JUNGFRAU (all others go to the AGIPD).
JUNGFRAU_RUN_TYPES = ("spectroscopy", "jungfrau_dark")


def jungfrau_settings(sim_cfg: dict) -> dict[str, Any]:
    """The ``simulate.jungfrau`` section with defaults.

    ``module`` is the module the spectrometer illuminates; ``modules`` all modules
    written (default ``[module]``; JUNGFRAU numbers them from 1); ``detector_name``
    the detector in the source names (e.g. ``SPB_IRDA_JF4M``, ``FXE_XAD_JF1M``; None:
    the run's instrument's JUNGFRAU, else ``HED_IA1_JF500K1``); ``control_vocabulary`` ``current``
    (``gainMode``, since 2022) or ``legacy`` (``settings`` before 2022).
    ``cell_order`` is the memory cell of each frame of a train; the default (cell 15
    first, then 0–14, the facility's ``storageCellStart`` 15) deliberately differs
    from the frame order so that anything that confuses frame index and memory cell
    shows up in the tests.
    """
    jf = dict(sim_cfg.get("jungfrau", {}))
    n_cells = int(jf.get("memory_cells", 16))
    if not 1 <= n_cells <= jfd.MAX_MEMORY_CELLS:
        raise ValueError(f"simulate.jungfrau.memory_cells must be 1..{jfd.MAX_MEMORY_CELLS}, not {n_cells}")
    order = jf.get("cell_order")
    if order is None:
        order = [n_cells - 1] + list(range(n_cells - 1))
    order = [int(c) for c in order]
    if sorted(order) != list(range(n_cells)):
        raise ValueError(f"simulate.jungfrau.cell_order must be a permutation of 0..{n_cells - 1}")
    module = int(jf.get("module", jfd.FIRST_MODULE))
    modules = [int(m) for m in jf.get("modules", [module])]
    if module not in modules or len(set(modules)) != len(modules) or min(modules) < jfd.FIRST_MODULE:
        raise ValueError(f"simulate.jungfrau.modules {modules} must list distinct module numbers from "
                         f"{jfd.FIRST_MODULE} (JNGFR01) and include simulate.jungfrau.module ({module})")
    vocabulary = str(jf.get("control_vocabulary", "current"))
    if vocabulary not in ("current", "legacy"):
        raise ValueError(f"simulate.jungfrau.control_vocabulary must be 'current' (gainMode, since 2022) "
                         f"or 'legacy' (settings, before), not {vocabulary!r}")
    return {
        "module": module,
        "modules": sorted(modules),
        "detector_name": str(jf["detector_name"]) if jf.get("detector_name") else None,
        "control_vocabulary": vocabulary,
        "memory_cells": n_cells,
        "cell_order": order,
        "detector": jf.get("detector", {}),
        "seed": int(sim_cfg.get("seed", 0)),
    }


def jungfrau_truth_for(sim_cfg: dict, module: int | None = None) -> JungfrauTruth:
    """True constants of ``module`` (default: the illuminated one)."""
    s = jungfrau_settings(sim_cfg)
    return make_jungfrau_truth(s["module"] if module is None else int(module), s["memory_cells"], s["seed"],
                               s["detector"])


def expected_jungfrau_files(proposal_dir: Path, sim_cfg: dict, run_cfg: dict) -> list[Path]:
    """Paths a simulated JUNGFRAU run writes (known before it is simulated).

    Per sequence every module's file; one ``DA01`` file (XGM, bunch pattern) and one
    control aggregator file for the whole run.
    """
    plan = run_plan(sim_cfg, run_cfg)
    mods = jungfrau_settings(sim_cfg)["modules"]
    run_dir = Path(proposal_dir) / "raw" / f"r{plan['run']:04d}"
    out = []
    for seq in range(plan["n_sequences"]):
        out += [run_dir / jfd.raw_filename(plan["run"], m, seq) for m in mods]
    return out + [run_dir / sources.da_filename(plan["run"], 0), run_dir / jfd.control_filename(plan["run"])]


def write_jungfrau_detector_truth(proposal_dir: Path, sim_cfg: dict, config: dict | None = None) -> tuple[Path, Path]:
    """Write the facility-style JUNGFRAU gain constants and the detector truth.

    ``calib/jungfrau_gain_constants.h5`` holds ``adu_per_photon`` ``(gain, module,
    512, 1024)`` of every simulated module (what a user gets from the calibration
    database: relative gains times the ADU per photon of the measured line energy)
    and ``modules``; ``truth/jungfrau_detector.h5`` holds every true constant of the
    illuminated module for the tests (the others are rebuilt by
    :func:`jungfrau_truth_for` from the seed).
    """
    proposal_dir = Path(proposal_dir)
    s = jungfrau_settings(sim_cfg)
    truths = [jungfrau_truth_for(sim_cfg, m) for m in s["modules"]]
    t = truths[s["modules"].index(s["module"])]
    prov = provenance(config or sim_cfg)
    gain_path = write_h5(proposal_dir / "calib" / "jungfrau_gain_constants.h5", prov, {
        "adu_per_photon": (np.stack([tr.adu_per_photon for tr in truths], axis=1),
                           "gain, module, slow_scan, fast_scan"),
        "modules": np.array(s["modules"]),
    })
    del truths
    names = ("offset", "noise", "adu_per_photon", "dead", "hot", "noisy")
    truth_path = write_h5(proposal_dir / "truth" / "jungfrau_detector.h5", prov,
                          {name: getattr(t, name) for name in names},
                          attrs={"module": t.module, "modules": s["modules"], "params": json.dumps(t.params)},
                          compressed=names)
    return gain_path, truth_path


def _flat_module_positions(distance_m: float) -> np.ndarray:
    """Pixel centres of a flat module on the beam axis, ``(1, 512, 1024, 3)`` metres."""
    return jfd.flat_module_positions(distance_m)


def _control_values(n_trains: int, n_cells: int, first_cell: int, stage: int | None,
                    vocabulary: str, gain_mode: str | None) -> tuple[dict[str, np.ndarray], dict[str, object], str]:
    """Per-train values and string run values of the JUNGFRAU control, and the gain mode.

    ``storageCells`` counts the *additional* cells (``memory cells - 1``, as EXtra's
    JUNGFRAU conditions read it); ``vHighVoltage`` is the sensor bias.
    """
    mode, setting = jfd.gain_mode_value(0 if stage is None else stage, vocabulary, gain_mode)
    values = {
        "storageCells": np.full(n_trains, n_cells - 1, np.int16),
        "storageCellStart": np.full(n_trains, first_cell, np.int16),
        "exposureTime": np.full(n_trains, 10e-6, np.float32),
        "exposureTimeout": np.full(n_trains, 25, np.uint32),
        "vHighVoltage": np.full((n_trains, 1), 200, np.uint32),
    }
    strings = {"settings": setting} if vocabulary == "legacy" else {"gainMode": mode, "settings": setting}
    for key, text in strings.items():
        # Recorded per train too, so that `key in run[control]` holds as in real data.
        values[key] = np.array([text.encode()] * n_trains)
    return values, strings, mode or jfd.LEGACY_SETTINGS[setting][0]


# -- run writer ------------------------------------------------------------------------
def simulate_jungfrau_run(
    proposal_dir: Path,
    sim_cfg: dict,
    run_cfg: dict,
    config: dict | None = None,
    progress: logging.Logger | None = None,
) -> list[Path]:
    """Simulate a JUNGFRAU run: ``type: spectroscopy`` or ``type: jungfrau_dark``.

    Writes, under ``raw/r{run}/``, ``RAW-R{run}-JNGFR{mod}-S{seq}.h5`` for every module
    (one row of 16 memory cells per train), ``RAW-R{run}-DA01-S00000.h5`` (XGM, bunch
    pattern) and ``RAW-R{run}-JNGFRCTRL00-S00000.h5`` (the detector's control), both for
    the whole run; and ``truth/r{run}/truth.json`` + ``truth.h5``.  The spectrometer's
    pattern falls on ``simulate.jungfrau.module``; other modules see no light.

    Parameters
    ----------
    run_cfg
        ``{run, type, trains, trains_per_sequence, beam, params}``; dark runs also
        ``gain`` (0, 1, 2 → dynamic gain, forced G1, forced G2) and optionally
        ``gain_mode`` (e.g. ``fixg1``: a fixed-gain dark of that stage).

    Returns
    -------
    list of Path
        Files written.
    """
    progress = progress or log
    kind = run_cfg.get("type", "spectroscopy")
    if kind not in JUNGFRAU_RUN_TYPES:
        raise ValueError(f"simulate_jungfrau_run handles spectroscopy and jungfrau_dark runs, not {kind!r}")
    jf = jungfrau_settings(sim_cfg)
    n_cells = jf["memory_cells"]
    plan = run_plan(sim_cfg, run_cfg)
    profile = plan.get("instrument")
    beam_d = {**sim_cfg.get("beam", {}), **run_cfg.get("beam", {}), "frames_per_train": n_cells}
    if profile is not None:
        # The bunch pattern and laser bit of the run's instrument, as for the AGIPD runs.
        beam_d.setdefault("sase", plan["beam"].sase)
        beam_d.setdefault("ppl_bit", plan["beam"].ppl_bit)
    # JUNGFRAU frame k sees the train's k-th X-ray pulse (the burst is triggered on the
    # first pulse): no AGIPD-style dark frame 0, unlit frames at the end of the train.
    if "reference_frame" in BeamConfig.__dataclass_fields__:
        beam_d.setdefault("reference_frame", 0)
    if kind == "jungfrau_dark":
        beam_d.update(xray=False, ppl_mode="none")
        if run_cfg.get("gain") is None:
            raise ValueError(f"run {plan['run']}: a jungfrau_dark run needs `gain: 0|1|2`")
    beam_cfg = BeamConfig.from_dict(beam_d)
    forced = None if kind == "spectroscopy" else int(run_cfg["gain"])
    wanted_mode = run_cfg.get("gain_mode") if kind == "jungfrau_dark" else None
    if wanted_mode is not None and jfd.DARK_STAGE_OF_MODE.get(str(wanted_mode)) != forced:
        raise ValueError(f"run {plan['run']}: gain_mode {wanted_mode!r} is not a G{forced} dark mode "
                         f"(G{forced}: {[m for m, s in jfd.DARK_STAGE_OF_MODE.items() if s == forced]})")
    run, mod = plan["run"], jf["module"]
    det = jfd.detector(jf["detector_name"] or getattr(profile, "jungfrau", "") or jfd.DEFAULT_DETECTOR,
                       jf["modules"])
    proposal = int(sim_cfg.get("proposal", 900001))
    run_dir = Path(proposal_dir) / "raw" / f"r{run:04d}"
    truths = {m: jungfrau_truth_for(sim_cfg, m) for m in jf["modules"]}
    truth = truths[mod]
    ctx = SceneContext(
        positions=_flat_module_positions(plan["distance_m"]),
        modules=[mod],
        photon_energy_kev=plan["photon_energy_kev"],
        pulses_per_train=n_cells,
        pulse_spacing_s=beam_cfg.pulse_spacing_s,
        train_spacing_s=float(sim_cfg.get("train_spacing_s", 0.1)),
        seed=plan["seed"],
        params=plan["params"],
    )
    scene = load_scene_class("spectroscopy" if kind == "spectroscopy" else "dark")(ctx)
    rng_beam = np.random.default_rng([plan["seed"], 1])
    # One generator per module; the illuminated module keeps the stream it always had.
    rng_det = {m: np.random.default_rng([plan["seed"], 2] if m == mod else [plan["seed"], 2, m])
               for m in jf["modules"]}
    cells = np.asarray(jf["cell_order"], np.uint8)
    # The bunch each frame sees (JUNGFRAU records no pulse ID; the spectroscopy finds it
    # from the bunch pattern the same way: first X-ray pulse + k · stride).
    first_bucket = getattr(beam_cfg, "first_bucket", None)
    if first_bucket is None:
        pulse_ids = beam_cfg.pulse_ids()
    else:
        k = np.arange(n_cells, dtype=np.int64) - int(getattr(beam_cfg, "reference_frame", 0))
        pulse_ids = (int(first_bucket) + beam_cfg.pulse_stride * k).astype(np.uint64)
    prov = provenance(config or sim_cfg, simulated_run=run, run_type=kind)
    all_tids = plan["first_train_id"] + np.arange(plan["n_trains"], dtype=np.uint64)
    ctrl_values, ctrl_strings, gain_mode = _control_values(
        all_tids.size, n_cells, int(cells[0]), forced, jf["control_vocabulary"], wanted_mode)
    frame_truth: dict[str, list[np.ndarray]] = {
        k: [] for k in ("trainId", "pulseId", "cellId", "frameNumber", "xray", "ppl", "pulse_energy", "photons_total")}
    written: list[Path] = []
    no_light = np.zeros((n_cells,) + JF_SHAPE, np.float32)
    t0 = time.monotonic()
    frame_number = 0
    meta = dict(proposal=proposal, run=run, run_type=f"simulated {kind}")
    ctrl = EuXFELWriter(run_dir / jfd.control_filename(run), all_tids, prov, sequence=0, **meta)
    # Beam data in one DA01 sequence for the whole run, while the detector has several:
    # as for the AGIPD runs, nothing can pair sequence numbers across aggregators.
    da = EuXFELWriter(run_dir / sources.da_filename(run, 0), all_tids, prov, sequence=0, **meta)
    xgm_rows, bp_rows = [], []
    delays = plan["delay_scan"].train_delays() if plan["delay_scan"] is not None else None
    try:
        ctrl.add_control(det.control_source, ctrl_values, run_values=ctrl_strings)
        # Same beam-data layout as the AGIPD runs.
        add_beam_sources(da, all_tids.size, plan["photon_energy_kev"], profile)
        for seq in range(plan["n_sequences"]):
            t_lo = seq * plan["trains_per_sequence"]
            t_hi = min(plan["n_trains"], t_lo + plan["trains_per_sequence"])
            tids = all_tids[t_lo:t_hi]
            ones = np.ones(tids.size, np.uint64)
            writers = {m: EuXFELWriter(run_dir / jfd.raw_filename(run, m, seq), tids, prov, sequence=seq, **meta)
                       for m in jf["modules"]}
            try:
                for m, w in writers.items():
                    w.add_instrument(det.raw_source(m), ones, {
                        "data.adc": (np.uint16, (n_cells,) + JF_SHAPE),
                        "data.gain": (np.uint8, (n_cells,) + JF_SHAPE),
                        "data.memoryCell": (np.uint8, (n_cells,)),
                        "data.frameNumber": (np.uint64, (n_cells,)),
                        "data.timestamp": (np.float64, (n_cells,)),
                    }, chunk_rows=1)
                for k, tid in enumerate(tids):
                    ti = t_lo + k
                    beam, table, xgm = make_train_beam(beam_cfg, ti, int(tid), plan["n_trains"], rng_beam)
                    if delays is not None:
                        beam.delay_ps = float(delays[ti])
                    xgm_rows.append(xgm)
                    bp_rows.append(table)
                    photons = scene.photons(beam)[:, 0]
                    fn = frame_number + np.arange(n_cells, dtype=np.uint64)
                    frame_number += n_cells
                    stamps = float(tid) * 0.1 + np.arange(n_cells) * beam_cfg.pulse_spacing_s
                    for m, w in writers.items():
                        adc, gain, _ = raw_frames(truths[m], photons if m == mod else no_light, cells,
                                                  rng_det[m], forced_gain=forced)
                        w.write_train(det.raw_source(m), k, {
                            "data.adc": adc[None],
                            "data.gain": gain[None],
                            "data.memoryCell": cells[None],
                            "data.frameNumber": fn[None],
                            "data.timestamp": stamps[None],
                        })
                    frame_truth["trainId"].append(np.full(n_cells, tid, np.uint64))
                    frame_truth["pulseId"].append(pulse_ids)
                    frame_truth["cellId"].append(cells)
                    frame_truth["frameNumber"].append(fn)
                    frame_truth["xray"].append(beam.xray)
                    frame_truth["ppl"].append(beam.ppl)
                    frame_truth["pulse_energy"].append(beam.pulse_energy_uj)
                    frame_truth["photons_total"].append(photons.sum(axis=(1, 2)))
                    if (ti + 1) % 10 == 0 or ti + 1 == plan["n_trains"]:
                        rate = (ti + 1) / (time.monotonic() - t0)
                        progress.info("run %d: %d/%d JUNGFRAU trains simulated (%.1f trains/s, %d modules)",
                                      run, ti + 1, plan["n_trains"], rate, len(writers))
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
            for w in writers.values():
                w.close()
                written.append(w._atomic.path)
        fill_beam_sources(da, xgm_rows, bp_rows, profile)
        add_delay_stage(da, plan)
    except BaseException:
        ctrl.abort()
        da.abort()
        raise
    ctrl.close()
    da.close()
    written += [ctrl._atomic.path, da._atomic.path]

    truth_json = {
        "run": run,
        "type": kind,
        "detector": "JUNGFRAU",
        "detector_name": det.name,
        "module": mod,
        "modules": jf["modules"],
        "gain": forced,
        "gain_mode": gain_mode,
        "control_source": det.control_source,
        "control_vocabulary": jf["control_vocabulary"],
        "recorded_gain_mode": ctrl_strings,
        "proposal": proposal,
        "n_trains": plan["n_trains"],
        "n_sequences": plan["n_sequences"],
        "memory_cells": n_cells,
        "cell_order": jf["cell_order"],
        "frames_per_train": n_cells,
        "photon_energy_kev": plan["photon_energy_kev"],
        "beam": vars(beam_cfg),
        "scene": scene.truth(),
        "jungfrau": {k: v for k, v in truth.params.items()},
    }
    if plan["delay_scan"] is not None:
        truth_json["delay_scan"] = plan["delay_scan"].truth()
    return written + write_run_truth(proposal_dir, run, truth_json, frame_truth, scene, prov,
                                     train_truth=delay_scan_truth(plan))
