"""Time-resolved aggregation: binning axes, binned products, kinetics (issue 15).

Two simulated pump-probe delay scans go through the library chain the workflow runs:
a SAXS run at MID (AGIPD modules 3 and 4; the delay line ``MID_LAS_COM/MOTOR/DL800``,
where EXtra's ``OpticalLaserDelay`` looks for it) whose laser-on radius grows as
``1 − exp(−(t − t0)/τ)``, and an XES run (JUNGFRAU, HED, the stage named in the
config) whose Kα lines shift with their own τ.  τ must come back within 5 %, time zero
within one delay step; the transitional trains of the scan must be dropped and counted;
the binned products must not depend on how the run was split.

Wall time: ~80 s on 2 cores (simulating the two scans).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import simulate_and_reduce, tiny_config
from xfel_reduce import binning, steps
from xfel_reduce.config import ConfigError
from xfel_reduce.io.trains import open_train_data, train_files
from xfel_reduce.kinetics import fit_rise, rise_model

SAXS_RUN, XES_RUN = 15, 31
TOL_TAU_REL = 0.05
# time zero after the delay of each step: set points and kinetics of the SAXS scan
SAXS_DELAYS = [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 15.0, 20.0]
SAXS_KINETICS = {"t0_ps": 0.4, "tau_ps": 3.0}
XES_DELAYS = [-3.0, -1.5, 0.0, 1.5, 3.0, 5.0, 8.0, 12.0, 18.0]
XES_KINETICS = {"t0_ps": 0.7, "tau_ps": 4.0}
XES_STAGE = "HED_LAS_SIM/MOTOR/DELAY_LINE"  # no HED default in EXtra: the config names it
REF_STAGE_MM = 25.0


def _step_at(delays: list[float], t0: float) -> float:
    """The delay step around time zero (what 'within one step' means there)."""
    d = np.asarray(delays)
    i = np.searchsorted(d, t0)
    return float(d[i] - d[i - 1])


@pytest.fixture(scope="module")
def saxs_scan(tmp_path_factory) -> dict:
    """The SAXS delay scan, simulated and reduced (one pass, binning, binned products)."""
    tmp = tmp_path_factory.mktemp("saxs_scan")
    cfg = tiny_config(tmp, "tiny_techniques.yaml")
    cfg["simulate"]["runs"] = [r for r in cfg["simulate"]["runs"] if r.get("type") == "dark" or int(r["run"]) < 4]
    cfg["simulate"]["runs"].append({
        "run": SAXS_RUN, "type": "saxs", "instrument": "MID", "trains_per_sequence": 50, "distance_m": 5.0,
        "params": {"radius_nm": 20.0, "radius_change": 0.03, "transmission": 3e-4, "kinetics": SAXS_KINETICS},
        "delay_scan": {"delays_ps": SAXS_DELAYS, "trains_per_step": 8, "transition_trains": 2,
                       "ref_stage_mm": REF_STAGE_MM}})
    cfg["runs"] = [{"run": SAXS_RUN, "technique": "saxs",
                    # EXtra's guessed min_trains (half the mean step) cut a step of this
                    # short scan; its docs advise setting it per motor
                    "bins": [{"axis": "delay", "ref_stage_mm": REF_STAGE_MM, "min_trains": 3}]}]
    out = simulate_and_reduce(cfg, SAXS_RUN)
    with h5py.File(Path(cfg["proposal_dir"]) / "truth" / f"r{SAXS_RUN:04d}" / "truth.h5") as f:
        out["trains"] = {k: f["trains"][k][()] for k in f["trains"]}
    return out


def _kinetics(path: Path) -> dict:
    with h5py.File(path) as f:
        return json.loads(f["binned"].attrs["kinetics"])


def test_saxs_delay_scan_recovers_tau_and_time_zero(saxs_scan):
    k = _kinetics(saxs_scan["binned"])
    assert k["tau"] == pytest.approx(SAXS_KINETICS["tau_ps"], rel=TOL_TAU_REL), k
    assert abs(k["t0"] - SAXS_KINETICS["t0_ps"]) < _step_at(SAXS_DELAYS, SAXS_KINETICS["t0_ps"]), k
    # the amplitude is the simulated relative radius change
    assert k["amplitude"] == pytest.approx(saxs_scan["truth"]["scene"]["radius_change"], rel=0.05), k


def test_delay_axis_is_extras_and_drops_every_transitional_train(saxs_scan):
    """The delay per train is EXtra's OpticalLaserDelay of the recorded stage, the steps
    EXtra's Scan; every train of the simulated stage moves is dropped, and the number of
    dropped trains is what the binning file reports."""
    from extra.components import OpticalLaserDelay

    dc = open_train_data(saxs_scan["raw_dir"])
    direct = OpticalLaserDelay(dc, stage="MID_LAS_COM/MOTOR/DL800", trigger=False, bam=False,
                               ref_stage=REF_STAGE_MM).total_delays()
    b = binning.read_binning(saxs_scan["binning"])
    np.testing.assert_allclose(b.axes[0]["values"], SAXS_DELAYS, atol=1e-3)
    with h5py.File(saxs_scan["binning"]) as f:
        np.testing.assert_allclose(f["trains/delay_value"][()], direct.values, rtol=0, atol=1e-9)
        train_bin = f["trains/delay_bin"][()]
    step = saxs_scan["trains"]["step"]
    assert (train_bin[step < 0] == -1).all()  # no transitional train in any bin
    assert ((train_bin >= 0) <= (step >= 0)).all()
    assert np.array_equal(train_bin[train_bin >= 0], step[train_bin >= 0])  # bins are the set points
    assert b.dropped["delay: trains in no bin"] == int((train_bin < 0).sum()) >= int((step < 0).sum())
    # frames of dropped trains carry bin -1
    tid = saxs_scan["trains"]["trainId"]
    dropped = np.isin(b.train_id, tid[train_bin < 0])
    assert (b.frame_bin[dropped] == -1).all() and (b.frame_bin[~dropped] >= 0).all()


def test_binned_saxs_has_axes_errors_counts_and_difference(saxs_scan):
    with h5py.File(saxs_scan["binned"]) as f:
        g = f["binned/on_minus_off"]
        assert g.attrs["NX_class"] == "NXdata" and list(g.attrs["axes"]) == ["delay", "q"]
        n, npt = len(SAXS_DELAYS), g["q"].size
        assert g["data"].shape == g["data_errors"].shape == (n, npt)
        assert g["delay"].attrs["units"] == "ps"
        on, off = f["binned/counts/on"][()], f["binned/counts/off"][()]
        assert (on > 0).all() and (off > 0).all()
        np.testing.assert_allclose(g["data"][()], f["binned/on/data"][()] - f["binned/off/data"][()])
        # before time zero nothing changes: ΔI consistent with 0; late, clearly not
        chi_early = np.nansum((g["data"][0] / g["data_errors"][0]) ** 2) / npt
        chi_late = np.nansum((g["data"][-1] / g["data_errors"][-1]) ** 2) / npt
        assert chi_early < 2.0 < chi_late


def test_binned_products_independent_of_split(saxs_scan, tmp_path):
    """The same per-frame profiles split differently into files give the same binned
    products (per-bin partial sums merged)."""
    from xfel_reduce.io.redu import read_frame_table
    from xfel_reduce.saxs.driver import SAXS_SOURCE, binned_run, write_frames_redu

    files = saxs_scan["sequence_files"]["frames"]
    rows = [read_frame_table(Path(p), SAXS_SOURCE, group="saxs") for p in files]
    allrows = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    with h5py.File(saxs_scan["binned"]) as f:
        q = f["binned/on/q"][()]
    trains = np.unique(allrows["trainId"])
    cuts = [trains[0], trains[17], trains[61], trains[-1] + 1]
    split = []
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        sel = (allrows["trainId"] >= lo) & (allrows["trainId"] < hi)
        p = tmp_path / f"S{i}.h5"
        write_frames_redu(p, {k: v[sel] for k, v in allrows.items()}, q, {"test": "resplit"})
        split.append(p)
    out = binned_run(split, saxs_scan["sequence_files"]["partial"], saxs_scan["binning"], tmp_path / "b.h5", {})
    with h5py.File(saxs_scan["binned"]) as a, h5py.File(tmp_path / "b.h5") as b:
        for g in ("on", "off", "all", "on_minus_off"):
            np.testing.assert_allclose(b[f"binned/{g}/data"][()], a[f"binned/{g}/data"][()], rtol=1e-10,
                                       equal_nan=True)
        np.testing.assert_allclose(b["binned/observable/values"][()], a["binned/observable/values"][()],
                                   rtol=1e-8, equal_nan=True)
    assert out["kinetics"]["tau"] == pytest.approx(_kinetics(saxs_scan["binned"])["tau"], rel=1e-6)


def test_motor_axis_steps_trains_and_xgm_axes_combine(saxs_scan):
    """A motor axis on any control key (here the delay line's actualPosition in mm),
    a train-range axis and an XGM axis; bins combine as a product."""
    dc = open_train_data(saxs_scan["raw_dir"])
    m = binning.motor_axis(dc, {"axis": "motor", "source": "MID_LAS_COM/MOTOR/DL800", "min_trains": 3})
    assert m.unit == "mm" and m.size == len(SAXS_DELAYS)
    step = saxs_scan["trains"]["step"]
    assert (m.train_bin[step < 0] == -1).all()
    tids = np.asarray(dc.train_ids, np.uint64)
    t = binning.trains_axis(tids, {"axis": "trains", "every": 50})
    assert t.size == -(-tids.size // 50) and (t.train_bin >= 0).all()
    energy = np.array([100.0, 900.0, 1500.0, 2500.0, 5000.0])
    x = binning.xgm_axis({"axis": "xgm", "edges": [0, 1000, 2000, 3000]}, energy, np.ones(5, bool))
    b = binning.Binning([m, x], tids)
    fb = b.frame_bins(np.full(5, tids[0]), energy)
    assert b.shape == (len(SAXS_DELAYS), 3)
    assert fb.tolist() == [0, 0, 1, 2, -1]  # first step; the last energy is outside the edges


def test_bad_bins_config_is_a_clear_error(saxs_scan):
    cfg = copy.deepcopy(saxs_scan["cfg"])
    cfg["runs"][0]["bins"] = [{"axis": "delay", "stages": "X"}]
    with pytest.raises(ConfigError, match="unknown keys"):
        binning.bins_of(cfg, SAXS_RUN)
    cfg["runs"][0]["bins"] = [{"axis": "speed"}]
    with pytest.raises(ConfigError, match="not one of"):
        binning.bins_of(cfg, SAXS_RUN)
    dc = open_train_data(saxs_scan["raw_dir"])
    with pytest.raises(ConfigError, match="not in the run's train data"):
        binning.motor_axis(dc, {"axis": "motor", "source": "MID_NOPE/MOTOR/X"})


def test_rise_fit_recovers_parameters_and_errors():
    """The kinetics fit on exact and noisy rises: parameters within their errors."""
    t = np.array(SAXS_DELAYS)
    exact = rise_model(t, 0.4, 3.0, 0.03, 0.001)
    f = fit_rise(t, exact, np.full(t.size, 1e-5))
    assert f["t0"] == pytest.approx(0.4, abs=1e-3) and f["tau"] == pytest.approx(3.0, rel=1e-3)
    rng = np.random.default_rng(5)
    pulls = []
    for _ in range(20):
        f = fit_rise(t, exact + rng.normal(0, 3e-4, t.size), np.full(t.size, 3e-4))
        pulls.append((f["tau"] - 3.0) / f["tau_err"])
    assert abs(np.mean(pulls)) < 1.0 and 0.5 < np.std(pulls) < 1.6


@pytest.fixture(scope="module")
def xes_scan(tmp_path_factory) -> dict:
    """The XES delay scan: JUNGFRAU darks, the scan, the spectroscopy passes, binning."""
    from xfel_reduce import spectroscopy as sp
    from xfel_reduce.calibrate import jungfrau as jfc
    from xfel_reduce.detectors import jungfrau as jfd
    from xfel_reduce.simulate import jungfrau as jfsim

    pd = tmp_path_factory.mktemp("xes_scan") / "p900002"
    res = pd.parent / "results"
    sim = {"seed": 3, "proposal": 900002, "jungfrau": {"memory_cells": 16},
           "beam": {"dark_frames_per_train": 1, "ppl_mode": "pulse", "ppl_period": 2}}
    for stage, run in {0: 1, 1: 2, 2: 3}.items():
        jfsim.simulate_jungfrau_run(pd, sim, {"run": run, "type": "jungfrau_dark", "gain": stage, "trains": 2})
    jfsim.simulate_jungfrau_run(pd, sim, {
        "run": XES_RUN, "type": "spectroscopy", "trains_per_sequence": 25,
        "params": {"photons_per_uj": 20.0, "laser_shift_px": 2.0, "kinetics": XES_KINETICS},
        "delay_scan": {"delays_ps": XES_DELAYS, "trains_per_step": 4, "transition_trains": 2, "stage": XES_STAGE,
                       "ref_stage_mm": REF_STAGE_MM}})
    gain_path, _ = jfsim.write_jungfrau_detector_truth(pd, sim)
    dark = jfc.characterise_jungfrau({s: pd / "raw" / f"r{r:04d}" for s, r in {0: 1, 1: 2, 2: 3}.items()}, 1, 16)
    consts = res / "calibration" / "JNGFR01.h5"
    jfc.write_constants(consts, 1, dark, jfc.read_gain_constants(gain_path, 1, 16), {"test": True})
    spec = {"roi": [140, 372, 0, 1024], "reference_row": 256.0, "energy_calibration": [6253.84, 0.25, 0.0],
            "i0_range": [300.0, None], "photon_threshold": 0.5}
    cfg = sp.SpectroscopyConfig.from_dict(spec)
    raw_dir, out = pd / "raw" / f"r{XES_RUN:04d}", res / "spectroscopy"
    raws = sorted(raw_dir.glob(f"RAW-R{XES_RUN:04d}-JNGFR01-S*.h5"))
    images = [sp.image_sequence(r, train_files(raw_dir), cfg, out / f"image-S{s}.h5", {}, constants=consts)
              for s, r in enumerate(raws)]
    curv = sp.curvature_run(images, cfg, out / "curvature.h5", {})
    partials, frames = [], []
    for s, r in enumerate(raws):
        p, fr = out / f"partial-S{s}.h5", out / jfd.raw_filename(XES_RUN, 1, s).replace("RAW", "REDU")
        sp.reduce_sequence(r, train_files(raw_dir), cfg, curv, p, fr, {}, constants=consts, run=XES_RUN, sequence=s)
        partials.append(p)
        frames.append(fr)
    config = {"runs": [{"run": XES_RUN, "technique": "spectroscopy",
                        "bins": [{"axis": "delay", "stage": XES_STAGE, "ref_stage_mm": REF_STAGE_MM,
                                  "min_trains": 2}]}],
              "spectroscopy": spec}
    steps.binning_run(config, XES_RUN, partials, train_files(raw_dir), out / "binning.h5", "spectroscopy")
    steps.binned_run(config, XES_RUN, "spectroscopy", out / "binning.h5", {"frames": frames}, out / "binned.h5")
    with h5py.File(pd / "truth" / f"r{XES_RUN:04d}" / "truth.h5") as f:
        step = f["trains/step"][()]
    return {"binned": out / "binned.h5", "binning": out / "binning.h5", "step": step}


def test_xes_delay_scan_recovers_tau_and_time_zero(xes_scan):
    k = _kinetics(xes_scan["binned"])
    assert k["tau"] == pytest.approx(XES_KINETICS["tau_ps"], rel=TOL_TAU_REL), k
    assert abs(k["t0"] - XES_KINETICS["t0_ps"]) < _step_at(XES_DELAYS, XES_KINETICS["t0_ps"]), k
    assert k["amplitude"] == pytest.approx(2.0, rel=0.05), k
    with h5py.File(xes_scan["binned"]) as f:
        assert f["binned/on_minus_off"].attrs["axes"].tolist() == ["delay", "energy"]
        assert f["binned/observable"].attrs["units"] == "px"
    with h5py.File(xes_scan["binning"]) as f:
        train_bin = f["trains/delay_bin"][()]
    assert (train_bin[xes_scan["step"] < 0] == -1).all()


def test_hit_rate_per_bin_with_wilson_interval(tmp_path):
    """binning.h5 of a hit-finding run: hits and X-ray frames per bin, laser on and off,
    the rate and its Wilson half-width (z = 1)."""
    tids = np.arange(100, 110, dtype=np.uint64)
    b = binning.Binning([binning.trains_axis(tids, {"axis": "trains", "every": 5})], tids)
    tid = np.repeat(tids, 4)
    table = {"trainId": tid, "pulseId": np.tile(np.arange(4, dtype=np.uint64), 10),
             "pulse_energy": np.ones(40), "xray": np.tile([False, True, True, True], 10),
             "ppl": np.tile([False, True, False, True], 10), "hit": np.zeros(40, bool)}
    table["hit"][[1, 2, 3, 5, 21]] = True  # bin 0: 4 hits (3 on, 1 off); bin 1: 1 hit (on)
    binning.write_binning(tmp_path / "b.h5", b, table, {}, hit_finding=True)
    with h5py.File(tmp_path / "b.h5") as f:
        g = f["binning"]
        assert g["xray_frames"][()].tolist() == [15, 15]
        np.testing.assert_allclose(g["hit_rate"][()], [4 / 15, 1 / 15])
        np.testing.assert_allclose(g["hit_rate_on"][()], [3 / 10, 1 / 10])
        np.testing.assert_allclose(g["hit_rate_off"][()], [1 / 5, 0.0])
        p, n = 4 / 15, 15
        half = np.sqrt(p * (1 - p) / n + 1 / (4 * n * n)) / (1 + 1 / n)
        assert g["hit_rate_errors"][0] == pytest.approx(half)
        assert f["frames/bin"][()].tolist() == [0] * 20 + [1] * 20


def test_images_per_bin_in_the_pass(saxs_scan):
    """The one pass's images per bin: each bin's frames (its X-ray count in every pixel
    of a complete frame), pooled to the run's laser-on/off images; images made with
    other bins are refused by name."""
    from xfel_reduce.aggregate import Moments

    with h5py.File(saxs_scan["binning"]) as f:
        counts = {s: f[f"binning/counts/xray_{s}"][()] for s in ("on", "off")}
        img = {s: {k: f[f"images/{s}/{k}"][()] for k in ("mean", "count")} for s in ("on", "off")}
    for s in ("on", "off"):
        assert (img[s]["count"].max(axis=(1, 2, 3)) == counts[s]).all()
    m = Moments((2, 2, 3))
    a, b = binning.BinnedImages(m, '[["delay", "delay", [0.0]]]'), binning.BinnedImages(m, '[["delay", "delay", [1.0]]]')
    with pytest.raises(ValueError, match="other bins"):
        a.merge(b, "S00001.h5")
