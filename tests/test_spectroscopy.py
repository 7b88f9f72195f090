"""Spectroscopy (XES on JUNGFRAU): simulation, JUNGFRAU calibration, reduction.

One small simulated beamtime (three 2-train JUNGFRAU darks, an 8-train von Hamos run
in two sequences, 16 memory cells) goes through the workflow's library calls: dark
constants → CORR files → ROI image → curvature fit → per-frame spectra → run result.
The recovered lines, ratio, laser shift and noise are compared with the truth.

Wall time: ~45 s on an idle 2-core machine (mostly simulating 14 × 16 JUNGFRAU frames).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from xfel_reduce import spectroscopy as sp
from xfel_reduce.calibrate import jungfrau as jfc
from xfel_reduce.calibrate.badpixels import BadPixels
from xfel_reduce.calibrate.correct import CorrectionConstants
from xfel_reduce.detectors import jungfrau as jfd
from xfel_reduce.io import sources
from xfel_reduce.io.trains import train_files
from xfel_reduce.io.redu import read_frame_table
from xfel_reduce.io.runs import InputDataError
from xfel_reduce.simulate import jungfrau as jfsim

SEED = 11
SIM = {"seed": SEED, "proposal": 900002,
       "beam": {"dark_frames_per_train": 1, "ppl_mode": "pulse", "ppl_period": 2}}
DARKS = {0: 1, 1: 2, 2: 3}
RUN = 30
SCENE = {"photons_per_uj": 3.0}

# Acceptance tolerances (issue 6).
TOL_POSITION_PX = 0.1
TOL_RATIO_REL = 0.02
TOL_SHIFT_REL = 0.10
TOL_NOISE_REL = 0.20


@pytest.fixture(scope="module")
def beamtime(tmp_path_factory):
    """Simulate darks and a spectroscopy run, calibrate and reduce them."""
    pd = tmp_path_factory.mktemp("xes") / "p900002"
    res = pd.parent / "results"
    for stage, run in DARKS.items():
        jfsim.simulate_jungfrau_run(pd, SIM, {"run": run, "type": "jungfrau_dark", "gain": stage, "trains": 2})
    jfsim.simulate_jungfrau_run(pd, SIM, {"run": RUN, "type": "spectroscopy", "trains": 8,
                                          "trains_per_sequence": 4, "params": SCENE})
    gain_path, _ = jfsim.write_jungfrau_detector_truth(pd, SIM)

    dark = jfc.characterise_jungfrau({s: pd / "raw" / f"r{r:04d}" for s, r in DARKS.items()}, 1, 16)
    const_path = res / "calibration" / "JNGFR01.h5"
    jfc.write_constants(const_path, 1, dark, jfc.read_gain_constants(gain_path, 1, 16), {"test": True})
    consts = jfc.load_constants(const_path)

    raw_dir, corr_dir = pd / "raw" / f"r{RUN:04d}", res / "proc" / f"r{RUN:04d}"
    cfg = sp.SpectroscopyConfig.from_dict({
        "roi": [140, 372, 0, 1024], "reference_row": 256.0, "energy_calibration": [6253.84, 0.25, 0.0],
        "i0_range": [300.0, None], "photon_threshold": 0.5})
    out = res / f"r{RUN:04d}" / "spectroscopy"
    corr, images, partials, frames = [], [], [], []
    for seq in range(2):
        c = corr_dir / jfd.corr_filename(RUN, 1, seq)
        jfc.correct_sequence(raw_dir / jfd.raw_filename(RUN, 1, seq), c, 1, consts, {"step": "correct"})
        corr.append(c)
        # beam data by train ID from all of the run's train-level files, never DA01-S{seq}
        images.append(sp.image_sequence(c, train_files(raw_dir), cfg, out / f"image-S{seq:05d}.h5",
                                        {"step": "image"}))
    curv = sp.curvature_run(images, cfg, out / "curvature.h5", {"step": "curvature"})
    for seq in range(2):
        p, fr = out / f"partial-S{seq:05d}.h5", out / f"REDU-R{RUN:04d}-SPECTRA-S{seq:05d}.h5"
        sp.reduce_sequence(corr[seq], train_files(raw_dir), cfg, curv, p, fr,
                           {"step": "reduce"}, run=RUN, sequence=seq)
        partials.append(p)
        frames.append(fr)
    summary = sp.gather_run(partials, out / "curvature.h5", cfg, out / "spectra.h5", {"step": "gather"})
    truth = json.loads((pd / "truth" / f"r{RUN:04d}" / "truth.json").read_text())
    return dict(pd=pd, res=res, cfg=cfg, dark=dark, consts=consts, const_path=const_path, corr=corr,
                partials=partials, frames=frames, summary=summary, truth=truth, curv=curv,
                spectra=out / "spectra.h5", images=images)


# -- JUNGFRAU calibration --------------------------------------------------------------
def test_gain_decoding_exact_and_matches_numpy():
    """Every stage decoded from data.gain; photons back to ADC quantisation."""
    truth = jfsim.make_jungfrau_truth(1, 16, SEED, {"noise_mean": [0.0, 0.0, 0.0], "dead_fraction": 0.0,
                                                   "hot_fraction": 0.0, "noisy_fraction": 0.0})
    rng = np.random.default_rng(0)
    # Charges from nothing to near low-gain saturation, log-uniform over 4 decades.
    photons = np.where(rng.random((16,) + jfsim.JF_SHAPE) < 0.5, 0.0,
                       10 ** rng.uniform(-1, 4, (16,) + jfsim.JF_SHAPE)).astype(np.float32)
    cells = np.array(jfsim.jungfrau_settings({})["cell_order"], np.uint8)
    adc, gain_bits, stage = jfsim.raw_frames(truth, photons, cells, rng)
    assert set(np.unique(stage)) == {0, 1, 2}
    consts = CorrectionConstants(truth.offset, np.broadcast_to(truth.adu_per_photon[:, None], truth.offset.shape),
                                 np.zeros(truth.offset.shape, np.uint32))
    data, gain, mask = jfc.correct_frames(adc, gain_bits, cells, consts)
    np.testing.assert_array_equal(gain, stage)
    # Offsets are exact, so the only error left is the ADC's rounding: ±0.5 ADU.
    yy, xx = np.ogrid[:512, :1024]
    gain_of_pixel = truth.adu_per_photon[stage, yy, xx]
    unsaturated = (mask & BadPixels.VALUE_OUT_OF_RANGE) == 0
    err = np.abs(data - photons) * gain_of_pixel
    # float32 arithmetic adds a relative 1e-7 of the signal on top of the ±0.5 ADU.
    assert err[unsaturated].max() <= 0.5 + 1e-6 * (photons * gain_of_pixel)[unsaturated].max()
    ref = jfc.correct_reference_numpy(adc, gain_bits, cells, consts)
    np.testing.assert_array_equal(ref[1], gain)
    np.testing.assert_array_equal(ref[2], mask)
    np.testing.assert_allclose(ref[0], data, rtol=1e-6, atol=1e-6)
    # data.gain 2 does not exist on JUNGFRAU: decoded as G2 and flagged.
    bad = gain_bits.copy()
    bad[0, 0, 0] = 2
    _, g, m = jfc.correct_frames(adc, bad, cells, consts)
    assert g[0, 0, 0] == 2 and m[0, 0, 0] & BadPixels.WRONG_GAIN_VALUE


def test_dark_offsets_match_truth(beamtime):
    dark, tr = beamtime["dark"], jfsim.jungfrau_truth_for(SIM)
    good = ~tr.bad()
    n = dark.count[:, :, good]
    assert np.all(n == 2)  # two trains per dark, one sample per cell and train
    z = (dark.offset[:, :, good] - tr.offset[:, :, good]) / (tr.noise[:, None, good] / np.sqrt(n))
    # Offsets are unbiased and scatter exactly as read noise / sqrt(samples).
    assert abs(float(z.mean())) < 0.01
    assert 0.95 < float(z.std()) < 1.05
    assert np.abs(z).max() < 7.0
    # Dead and hot pixels are flagged in every gain and cell.
    for name in ("dead", "hot"):
        sel = getattr(tr, name)
        assert np.all(dark.badpixels[:, :, sel] != 0), name


def test_dark_gain_mode_mismatch_is_refused(beamtime):
    pd = beamtime["pd"]
    with pytest.raises(InputDataError, match="gainMode"):
        jfc.characterise_jungfrau({0: pd / "raw" / "r0002"}, 1, 16)


def test_corr_files_open_as_facility_jungfrau(beamtime):
    from extra_data import RunDirectory
    from extra_data.components import JUNGFRAU

    run = RunDirectory(str(beamtime["corr"][0].parent))
    jf = JUNGFRAU(run)
    assert jf.n_modules == 1
    arr = jf.get_array("data.adc")
    assert arr.shape[-3:] == (16, 512, 1024) and arr.dtype == np.float32


# -- projection ----------------------------------------------------------------------------
def test_projection_matches_numpy_and_conserves_flux():
    rng = np.random.default_rng(1)
    data = rng.poisson(0.3, (5,) + jfsim.JF_SHAPE).astype(np.float32)
    data += rng.normal(0, 0.05, data.shape).astype(np.float32)
    mask = np.zeros(data.shape, np.uint32)
    cfg = sp.SpectroscopyConfig(roi=(100, 300, 50, 1000), photon_threshold=0.5, min_coverage=0.0)
    shifts = sp.row_shifts([0.03, 2e-4], np.arange(100, 300), 200.0)
    s, cov, var = sp.project(data, mask, cfg, shifts)
    s_ref, cov_ref, var_ref = sp.project_reference_numpy(data, mask, cfg, shifts)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(var, var_ref, rtol=1e-5, atol=1e-4)
    # With zero shifts every photon lands in exactly one bin.
    zero = np.zeros(200)
    s0, _, _ = sp.project(data, mask, cfg, zero)
    roi = data[:, 100:300, 50:1000]
    np.testing.assert_allclose(s0.sum(axis=1), np.where(roi >= 0.5, roi, 0).sum(axis=(1, 2)), rtol=1e-5)
    # Masked pixels are replaced by the bin's mean, NaN values never leak.
    mask[:, 150, 500] = 1
    data[:, 151, 500] = np.nan
    s1, c1, _ = sp.project(data, mask, cfg, zero)
    assert np.all(np.isfinite(s1)) and c1[0, 450] == 198


# -- acceptance -----------------------------------------------------------------------------
def test_lines_ratio_shift_and_noise_match_truth(beamtime):
    truth, summary = beamtime["truth"]["scene"], beamtime["summary"]
    fit = summary["fits"]["on_off"]
    true_pos = [line["position_px"] for line in truth["lines"]]
    print("positions", fit["positions_px"], "truth", true_pos, "ratio", fit["ratio"], "shift", fit["shift_px"],
          "noise ratio", summary["noise_ratio_median"], "curvature", summary["curvature"])
    # Laser-off positions (the joint fit's reference) in the reference row.
    for got, want in zip(fit["positions_px"], true_pos):
        assert abs(got - want) <= TOL_POSITION_PX
    assert abs(fit["ratio"] / truth["ratio_line2_line1"] - 1) <= TOL_RATIO_REL
    assert abs(fit["shift_px"] / truth["laser_shift_px"] - 1) <= TOL_SHIFT_REL
    assert abs(fit["shift_ev"] / truth["laser_shift_ev"] - 1) <= TOL_SHIFT_REL
    assert abs(summary["noise_ratio_median"] - 1) <= TOL_NOISE_REL
    # Energies via the configured calibration.
    assert abs(fit["energies_ev"][0] - truth["lines"][0]["energy_ev"]) <= TOL_POSITION_PX * 0.25


def test_curvature_fit_recovers_tilt_and_curvature(beamtime):
    truth, curv = beamtime["truth"]["scene"], beamtime["curv"]
    c1, c2 = curv.coefficients
    assert curv.source == "fit"
    assert abs(c1 / truth["tilt_px_per_row"] - 1) < 0.05
    assert abs(c2 / truth["curvature_px_per_row2"] - 1) < 0.2
    # Predicted shift across the ROI within 0.1 px of truth everywhere.
    rows = np.arange(140, 372)
    want = sp.row_shifts(truth["shift_coefficients"], rows, truth["reference_row"])
    assert np.abs(curv.shifts(beamtime["cfg"]) - want).max() < 0.1


def test_given_curvature_skips_the_fit(tmp_path, beamtime):
    cfg = sp.SpectroscopyConfig.from_dict({"roi": [140, 372, 0, 1024], "curvature": [0.02, 1e-4],
                                           "reference_row": 256.0})
    curv = sp.curvature_run([], cfg, tmp_path / "c.h5", {})
    assert curv.source == "config" and sp.load_curvature(tmp_path / "c.h5").coefficients == [0.02, 1e-4]


def test_per_frame_table_i0_filter_and_laser_flags(beamtime):
    pd = beamtime["pd"]
    table = read_frame_table(beamtime["frames"][0], sources.SPECTRA_SOURCE.format(module=1))
    with h5py.File(pd / "truth" / f"r{RUN:04d}" / "truth.h5", "r") as f:
        t = {k: f["frames"][k][()] for k in f["frames"]}
    n = table["pulse_energy"].size
    assert n == 4 * 16 and table["spectrum"].shape == (n, 1024)
    np.testing.assert_array_equal(table["cellId"], t["cellId"][:n])
    np.testing.assert_array_equal(table["pulseId"], t["pulseId"][:n])
    np.testing.assert_array_equal(table["xray"], t["xray"][:n])
    np.testing.assert_array_equal(table["ppl"], t["ppl"][:n])
    np.testing.assert_allclose(table["pulse_energy"], t["pulse_energy"][:n])
    want = t["xray"][:n] & (t["pulse_energy"][:n] >= 300.0)
    np.testing.assert_array_equal(table["i0_ok"], want)
    # Spectrum intensity follows I0: the ROI holds the expected line photons of each
    # frame (truth, before Poisson sampling) plus the flat background.
    x = table["i0_ok"]
    with h5py.File(pd / "truth" / f"r{RUN:04d}" / "truth.h5", "r") as f:
        lines = f["scene/expected_line_photons"][:n]
    bg = beamtime["truth"]["scene"]["background_per_pixel_per_uj"] * 232 * 1024
    expected = lines[x].sum() + bg * table["pulse_energy"][x].sum()
    assert abs(table["roi_photons"][x].sum() / expected - 1) < 0.01  # shot noise: 0.3 %
    slope = np.polyfit(table["pulse_energy"][x], table["roi_photons"][x], 1)
    assert abs(slope[1]) < 0.05 * table["roi_photons"][x].mean()  # through the origin


def test_run_split_invariance(beamtime):
    """Merging the two sequence partials equals one pass over the whole run."""
    cfg, curv = beamtime["cfg"], beamtime["curv"]
    _, merged = sp.merge_partials(beamtime["partials"])
    chunks = (c for p in beamtime["corr"] for c in jfc.iter_jungfrau_chunks(p, 1, raw=False, trains_per_chunk=3))
    raw = beamtime["pd"] / "raw" / f"r{RUN:04d}"
    beam = sp.BeamData.from_files(train_files(raw))  # the whole run, by train ID
    _, whole = sp.reduce_chunks(chunks, beam, cfg, curv.shifts(cfg))
    for k in ("spectrum_laser_on", "spectrum_laser_off", "shotvar_all"):
        np.testing.assert_array_equal(merged[k].count, whole[k].count)
        np.testing.assert_allclose(merged[k].mean, whole[k].mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(merged[k].m2, whole[k].m2, rtol=1e-8, atol=1e-12)


def test_run_file_has_axes_errors_and_provenance(beamtime):
    with h5py.File(beamtime["spectra"], "r") as f:
        g = f["spectroscopy"]
        e = g["energy_ev"][()]
        np.testing.assert_allclose(e, 6253.84 + 0.25 * np.arange(1024))
        d, on, off = g["difference/mean"][()], g["laser_on/mean"][()], g["laser_off/mean"][()]
        np.testing.assert_allclose(d, on - off)
        np.testing.assert_allclose(g["difference/sem"][()] ** 2, g["laser_on/sem"][()] ** 2 + g["laser_off/sem"][()] ** 2)
        assert g["image/mean"].shape == (232, 1024)
        assert "xfel_reduce_provenance" in f.attrs


# -- bad input ------------------------------------------------------------------------------
def test_bad_inputs_name_file_and_fix(tmp_path, beamtime):
    cfg = beamtime["cfg"]
    with pytest.raises(InputDataError, match="missing input file"):
        sp.image_sequence(tmp_path / "nope.h5", beamtime["pd"] / "raw" / f"r{RUN:04d}" / sources.da_filename(RUN, 0),
                          cfg, tmp_path / "x.h5", {})
    with pytest.raises(InputDataError, match="JNGFR02"):
        next(jfc.iter_jungfrau_chunks(beamtime["corr"][0], module=2, raw=False))
    with pytest.raises(ValueError, match="roi"):
        sp.SpectroscopyConfig.from_dict({"roi": [0, 600, 0, 1024]})
    with pytest.raises(ValueError, match="unknown spectroscopy settings"):
        sp.SpectroscopyConfig.from_dict({"roi_rows": [0, 10]})
    with pytest.raises(InputDataError, match="no files for module"):
        jfc.characterise_jungfrau({0: tmp_path}, 1, 16)


# -- report -----------------------------------------------------------------------------------
def test_notebook_renders_with_passing_verdict(beamtime, tmp_path):
    from xfel_reduce.report import render_report

    repo = Path(__file__).resolve().parents[1]
    res = render_report(repo / "reports" / "spectroscopy.ipynb", tmp_path / "spectroscopy.html",
                        {"run": RUN, "spectra_file": str(beamtime["spectra"]),
                         "truth_file": str(beamtime["pd"] / "truth" / f"r{RUN:04d}" / "truth.json")})
    assert (tmp_path / "spectroscopy.html").stat().st_size > 10_000
    assert res.verdict["overall"] == "pass", res.verdict
