"""JUNGFRAU response model and run writer (spectroscopy and JUNGFRAU dark runs).

A JUNGFRAU module has 512 × 1024 pixels and, in burst mode, 16 storage (memory)
cells: every train delivers one ``data.adc`` row of shape ``(16, 512, 1024)`` uint16.
Each ADC word carries the 14-bit analog value in bits 0–13 and the gain stage in
bits 14–15 (0 → G0 high, 1 → G1 medium, 3 → G2 low; 2 never occurs).  The model
has, per gain stage, an offset per memory cell and pixel, a per-pixel Gaussian
noise and a per-pixel relative gain (ADU per photon); dead, hot and noisy pixels are
drawn with known fractions.  Everything is drawn from a generator seeded with
``(seed, module)`` so the truth can be rebuilt without reading any file.

Dark runs are taken as at the facility: one run per stage, with the gain forced
(``dynamicgain`` for G0, ``forceswitchg1``, ``forceswitchg2``); their ``gainMode`` is
recorded in the JUNGFRAU control source of the DA file.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import sources
from ..io.euxfel import EuXFELWriter, write_h5
from ..io.provenance import provenance
from .beam import BeamConfig, make_train_beam
from .beamtime import add_beam_sources, fill_beam_sources, load_scene_class, run_plan, write_run_truth
from .detector import switching_stage
from .scene import SceneContext

log = logging.getLogger(__name__)

JF_SHAPE = (512, 1024)
N_GAINS = 3
ADC_MAX = 0x3FFF
#: Gain bits (bits 14–15 of the ADC word) of each stage.
GAIN_BITS = np.array([0, 1, 3], np.uint16)
PIXEL_SIZE_M = 75e-6

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
) -> tuple[np.ndarray, np.ndarray]:
    """Raw JUNGFRAU ADC words of one module.

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
    raw
        ``(n_frames, 512, 1024)`` uint16: 14-bit analog value | gain bits << 14.
    stage
        ``(n_frames, 512, 1024)`` uint8 true gain stage.
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
    raw = np.clip(np.rint(analog), 0, ADC_MAX).astype(np.uint16)
    raw |= GAIN_BITS[stage] << np.uint16(14)
    assert raw.shape[0] == n
    return raw, stage


# -- configuration ---------------------------------------------------------------------
#: Simulated run types written on the JUNGFRAU (all others go to the AGIPD).
JUNGFRAU_RUN_TYPES = ("spectroscopy", "jungfrau_dark")


def jungfrau_settings(sim_cfg: dict) -> dict[str, Any]:
    """The ``simulate.jungfrau`` section with defaults.

    ``cell_order`` is the memory cell of each frame of a train; the default (cell 15
    first, then 0–14) deliberately differs from the frame order so that anything
    that confuses frame index and memory cell shows up in the tests.
    """
    jf = dict(sim_cfg.get("jungfrau", {}))
    n_cells = int(jf.get("memory_cells", 16))
    order = jf.get("cell_order")
    if order is None:
        order = [n_cells - 1] + list(range(n_cells - 1))
    order = [int(c) for c in order]
    if sorted(order) != list(range(n_cells)):
        raise ValueError(f"simulate.jungfrau.cell_order must be a permutation of 0..{n_cells - 1}")
    return {
        "module": int(jf.get("module", 1)),
        "memory_cells": n_cells,
        "cell_order": order,
        "detector": jf.get("detector", {}),
        "seed": int(sim_cfg.get("seed", 0)),
    }


def jungfrau_truth_for(sim_cfg: dict) -> JungfrauTruth:
    s = jungfrau_settings(sim_cfg)
    return make_jungfrau_truth(s["module"], s["memory_cells"], s["seed"], s["detector"])


def expected_jungfrau_files(proposal_dir: Path, sim_cfg: dict, run_cfg: dict) -> list[Path]:
    """Paths a simulated JUNGFRAU run writes (known before it is simulated)."""
    plan = run_plan(sim_cfg, run_cfg)
    mod = jungfrau_settings(sim_cfg)["module"]
    run_dir = Path(proposal_dir) / "raw" / f"r{plan['run']:04d}"
    out = []
    for seq in range(plan["n_sequences"]):
        out += [run_dir / sources.jf_raw_filename(plan["run"], mod, seq),
                run_dir / sources.da_filename(plan["run"], seq)]
    return out


def write_jungfrau_detector_truth(proposal_dir: Path, sim_cfg: dict, config: dict | None = None) -> tuple[Path, Path]:
    """Write the facility-style JUNGFRAU gain constants and the full detector truth.

    ``calib/jungfrau_gain_constants.h5`` holds ``adu_per_photon`` ``(gain, module,
    512, 1024)`` (what a user gets from the calibration database: relative gains
    times the ADU per photon of the measured line energy); ``truth/jungfrau_detector.h5``
    holds every true constant for the tests.
    """
    proposal_dir = Path(proposal_dir)
    t = jungfrau_truth_for(sim_cfg)
    prov = provenance(config or sim_cfg)
    gain_path = write_h5(proposal_dir / "calib" / "jungfrau_gain_constants.h5", prov, {
        "adu_per_photon": (t.adu_per_photon[:, None], "gain, module, slow_scan, fast_scan"),
        "modules": np.array([t.module]),
    })
    names = ("offset", "noise", "adu_per_photon", "dead", "hot", "noisy")
    truth_path = write_h5(proposal_dir / "truth" / "jungfrau_detector.h5", prov,
                          {name: getattr(t, name) for name in names},
                          attrs={"module": t.module, "params": json.dumps(t.params)}, compressed=names)
    return gain_path, truth_path


def _flat_module_positions(distance_m: float) -> np.ndarray:
    """Pixel centres of a flat module on the beam axis, ``(1, 512, 1024, 3)`` metres."""
    yy, xx = np.mgrid[0:JF_SHAPE[0], 0:JF_SHAPE[1]].astype(np.float32)
    pos = np.empty((1,) + JF_SHAPE + (3,), np.float32)
    pos[0, ..., 0] = (xx - (JF_SHAPE[1] - 1) / 2) * PIXEL_SIZE_M
    pos[0, ..., 1] = (yy - (JF_SHAPE[0] - 1) / 2) * PIXEL_SIZE_M
    pos[0, ..., 2] = distance_m
    return pos


# -- run writer ------------------------------------------------------------------------
def simulate_jungfrau_run(
    proposal_dir: Path,
    sim_cfg: dict,
    run_cfg: dict,
    config: dict | None = None,
    progress: logging.Logger | None = None,
) -> list[Path]:
    """Simulate a JUNGFRAU run: ``type: spectroscopy`` or ``type: jungfrau_dark``.

    Writes ``raw/r{run}/RAW-R{run}-JNGFR{mod}-S{seq}.h5`` (one row of 16 memory
    cells per train), ``RAW-R{run}-DA01-S{seq}.h5`` (XGM, bunch pattern, JUNGFRAU
    control) and ``truth/r{run}/truth.json`` + ``truth.h5``.

    Parameters
    ----------
    run_cfg
        ``{run, type, trains, trains_per_sequence, beam, params}``; dark runs also
        ``gain`` (0, 1, 2 → dynamic gain, forced G1, forced G2).

    Returns
    -------
    list of Path
        Files written.
    """
    progress = progress or log
    kind = run_cfg.get("type", "spectroscopy")
    if kind not in ("spectroscopy", "jungfrau_dark"):
        raise ValueError(f"simulate_jungfrau_run handles spectroscopy and jungfrau_dark runs, not {kind!r}")
    jf = jungfrau_settings(sim_cfg)
    n_cells = jf["memory_cells"]
    plan = run_plan(sim_cfg, run_cfg)
    beam_d = {**sim_cfg.get("beam", {}), **run_cfg.get("beam", {}), "frames_per_train": n_cells}
    if kind == "jungfrau_dark":
        beam_d.update(xray=False, ppl_mode="none")
        if run_cfg.get("gain") is None:
            raise ValueError(f"run {plan['run']}: a jungfrau_dark run needs `gain: 0|1|2`")
    beam_cfg = BeamConfig.from_dict(beam_d)
    forced = None if kind == "spectroscopy" else int(run_cfg["gain"])
    run, mod = plan["run"], jf["module"]
    proposal = int(sim_cfg.get("proposal", 900001))
    run_dir = Path(proposal_dir) / "raw" / f"r{run:04d}"
    truth = jungfrau_truth_for(sim_cfg)
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
    rng_det = np.random.default_rng([plan["seed"], 2])
    cells = np.asarray(jf["cell_order"], np.uint8)
    pulse_ids = beam_cfg.pulse_ids()
    gain_mode = sources.JF_GAIN_MODE[0 if forced is None else forced]
    prov = provenance(config or sim_cfg, simulated_run=run, run_type=kind)
    src = sources.JF_RAW_SOURCE.format(module=mod)
    frame_truth: dict[str, list[np.ndarray]] = {
        k: [] for k in ("trainId", "pulseId", "cellId", "frameNumber", "xray", "ppl", "pulse_energy", "photons_total")}
    written: list[Path] = []
    t0 = time.monotonic()
    frame_number = 0
    for seq in range(plan["n_sequences"]):
        t_lo = seq * plan["trains_per_sequence"]
        t_hi = min(plan["n_trains"], t_lo + plan["trains_per_sequence"])
        tids = plan["first_train_id"] + np.arange(t_lo, t_hi, dtype=np.uint64)
        meta = dict(proposal=proposal, run=run, sequence=seq, run_type=f"simulated {kind}")
        ones = np.ones(tids.size, np.uint64)
        w = EuXFELWriter(run_dir / sources.jf_raw_filename(run, mod, seq), tids, prov, **meta)
        da = EuXFELWriter(run_dir / sources.da_filename(run, seq), tids, prov, **meta)
        try:
            w.add_instrument(src, ones, {
                "data.adc": (np.uint16, (n_cells,) + JF_SHAPE),
                "data.memoryCell": (np.uint8, (n_cells,)),
                "data.frameNumber": (np.uint64, (n_cells,)),
                "data.timestamp": (np.float64, (n_cells,)),
            }, chunk_rows=1)
            # Same beam-data layout as the AGIPD runs, so annotate.pulse_flags works.
            add_beam_sources(da, tids.size, plan["photon_energy_kev"])
            da.add_control(sources.JF_CONTROL, {
                "storageCells": np.full(tids.size, n_cells - 1, np.int32),
                "storageCellStart": np.full(tids.size, int(cells[0]), np.int32),
                "exposureTime": np.full(tids.size, 10e-6),
            }, run_values={"gainMode": gain_mode})
            xgm_rows, bp_rows = [], []
            for k, tid in enumerate(tids):
                ti = t_lo + k
                beam, table, xgm = make_train_beam(beam_cfg, ti, int(tid), plan["n_trains"], rng_beam)
                xgm_rows.append(xgm)
                bp_rows.append(table)
                photons = scene.photons(beam)[:, 0]
                raw, _ = raw_frames(truth, photons, cells, rng_det, forced_gain=forced)
                fn = frame_number + np.arange(n_cells, dtype=np.uint64)
                frame_number += n_cells
                w.write_train(src, k, {
                    "data.adc": raw[None],
                    "data.memoryCell": cells[None],
                    "data.frameNumber": fn[None],
                    "data.timestamp": (float(tid) * 0.1 + np.arange(n_cells) * beam_cfg.pulse_spacing_s)[None],
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
                    progress.info("run %d: %d/%d JUNGFRAU trains simulated (%.1f trains/s)",
                                  run, ti + 1, plan["n_trains"], rate)
            fill_beam_sources(da, xgm_rows, bp_rows)
        except BaseException:
            w.abort()
            da.abort()
            raise
        w.close()
        da.close()
        written += [w._atomic.path, da._atomic.path]

    truth_json = {
        "run": run,
        "type": kind,
        "detector": "JUNGFRAU",
        "module": mod,
        "gain": forced,
        "gain_mode": gain_mode,
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
    return written + write_run_truth(proposal_dir, run, truth_json, frame_truth, scene, prov)
