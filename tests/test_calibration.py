"""Dark characterisation and correction against the simulated detector truth."""
from __future__ import annotations

import numpy as np
import pytest

from xfel_reduce.calibrate import agipd
from xfel_reduce.calibrate.badpixels import BadPixels
from xfel_reduce.calibrate.correct import (CommonMode, CorrectionConstants, correct,
                                           correct_reference_numpy)
from xfel_reduce.simulate.beamtime import simulate_run
from xfel_reduce.simulate.detector import make_module_truth, raw_frames

N_DARK_TRAINS = 250  # offset error σ/√n ≈ 0.6 ADU at 10 ADU noise → median |error| ≈ 0.43 ADU


@pytest.fixture(scope="module")
def darks(tmp_path_factory):
    """One module, 2 memory cells, 250 dark trains per gain stage, characterised."""
    tmp = tmp_path_factory.mktemp("darks")
    sim = {"proposal": 900001, "seed": 3, "modules": 1, "memory_cells": 2,
           "beam": {"frames_per_train": 2},
           "dark": {"trains": N_DARK_TRAINS, "runs": [{"run": 1, "gain": 0}, {"run": 2, "gain": 1}, {"run": 3, "gain": 2}]}}
    for g in range(3):
        simulate_run(tmp, sim, {"type": "dark", "run": g + 1, "gain": g, "trains": N_DARK_TRAINS})
    dark = agipd.characterise_module({g: tmp / "raw" / f"r{g + 1:04d}" for g in range(3)}, 0, 2)
    truth = make_module_truth(0, 2, 3)
    return dark, truth


def test_offset_recovered(darks):
    dark, truth = darks
    good = ~truth.bad()
    for g in range(3):
        err = np.abs(dark.offset[g] - truth.offset[g])[good]
        assert np.median(err) < 0.5, f"gain {g}: median offset error {np.median(err):.3f} ADU"


def test_noise_recovered(darks):
    dark, truth = darks
    good = ~truth.bad()
    for g in range(3):
        rel = (dark.noise[g] / truth.noise[g])[good]
        # σ of a standard deviation estimate from n samples is ≈ 1/√(2n) ≈ 4.5 %
        assert abs(np.median(rel) - 1) < 0.02
        # ADC rounding adds 1/12 ADU² of variance, visible on the 4 ADU low-gain noise
        assert np.percentile(np.abs(rel - 1), 95) < 0.12


def test_bad_pixels_found_without_false_flags(darks):
    dark, truth = darks
    flagged = (dark.badpixels != 0).any(axis=0)  # (cell, ss, fs), any gain stage
    bad = truth.bad()
    found = flagged[bad].mean()
    false = flagged[~bad].mean()
    assert found >= 0.99, f"only {found:.2%} of bad pixels found"
    assert false <= 0.001, f"{false:.3%} of good pixels flagged"
    # The right reasons: hot → offset, dead → zero noise, gain faults → thresholding
    assert (dark.badpixels[0][:, truth.hot] & BadPixels.OFFSET_OUT_OF_THRESHOLD).all()
    assert (dark.badpixels[0][:, truth.dead] & BadPixels.DATA_STD_IS_ZERO).all()
    assert (dark.badpixels[0][:, truth.gain_fault] & BadPixels.GAIN_THRESHOLDING_ERROR).all()


def _constants(dark, truth) -> CorrectionConstants:
    return CorrectionConstants(dark.offset, truth.adu_per_photon, dark.badpixels, dark.thresholds)


def test_gain_stage_assignment(darks):
    dark, truth = darks
    rng = np.random.default_rng(5)
    # Photon levels across all three gain stages, away from nothing in particular
    photons = rng.choice([0, 1, 5, 40, 79, 81, 300, 2400, 2600, 9000], size=(40, 512, 128)).astype(np.float32)
    cells = np.arange(40) % 2
    raw, stage = raw_frames(truth, photons, cells, rng)
    _, gain, mask = correct(raw, cells, _constants(dark, truth))
    good = ~truth.bad()[cells]
    agree = (gain == stage)[good].mean()
    assert agree >= 0.999, f"gain stage correct for {agree:.4%}"


def test_correction_round_trip(darks):
    dark, truth = darks
    rng = np.random.default_rng(6)
    photons = rng.poisson(rng.choice([0.0, 3.0, 50.0, 500.0, 5000.0], size=(20, 512, 128))).astype(np.float32)
    cells = np.arange(20) % 2
    raw, stage = raw_frames(truth, photons, cells, rng)
    data, gain, mask = correct(raw, cells, _constants(dark, truth))
    ok = (mask == 0)
    # Expected scatter: readout noise / gain, plus ADC rounding and the offset estimate
    g_idx = gain.astype(np.intp)[:, None]
    noise = np.take_along_axis(truth.noise[:, cells].transpose(1, 0, 2, 3), g_idx, 1)[:, 0]
    gn = np.take_along_axis(truth.adu_per_photon[:, cells].transpose(1, 0, 2, 3), g_idx, 1)[:, 0]
    sigma = np.sqrt(noise**2 + 1 / 12 + (noise**2) / N_DARK_TRAINS) / gn
    pull = ((data - photons) / sigma)[ok]
    assert abs(np.mean(pull)) < 0.02
    assert 0.95 < np.std(pull) < 1.05
    assert ok.mean() > 0.99


def test_fused_kernel_equals_numpy_reference(darks):
    dark, truth = darks
    rng = np.random.default_rng(7)
    photons = rng.poisson(rng.choice([0.0, 2.0, 200.0, 20000.0], size=(6, 512, 128))).astype(np.float32)
    cells = np.array([0, 1, 0, 1, 1, 0])
    raw, _ = raw_frames(truth, photons, cells, rng)
    c = _constants(dark, truth)
    d1, g1, m1 = correct(raw, cells, c)
    d2, g2, m2 = correct_reference_numpy(raw, cells, c)
    np.testing.assert_array_equal(g1, g2)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-6, equal_nan=True)
    # the kernel's fast path: rows of high-gain pixels only, beside rows with a few
    # medium- and low-gain pixels (bright spots), as in real data
    photons = rng.poisson(0.05, size=(4, 512, 128)).astype(np.float32)
    photons[:, 7, 3], photons[:, 300, 100:103], photons[2, 511, 127] = 300.0, 20000.0, 5000.0
    cells = np.array([1, 0, 1, 0])
    raw, _ = raw_frames(truth, photons, cells, rng)
    d1, g1, m1 = correct(raw, cells, c)
    d2, g2, m2 = correct_reference_numpy(raw, cells, c)
    assert (g2 == 0).mean() > 0.999 and (g2 > 0).any(axis=2).any()
    np.testing.assert_array_equal(g1, g2)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_common_mode_removes_asic_shifts(darks):
    dark, truth = darks
    rng = np.random.default_rng(8)
    photons = (rng.random((8, 512, 128)) < 0.01).astype(np.float32)
    cells = np.arange(8) % 2
    raw, _ = raw_frames(truth, photons, cells, rng)
    shift = rng.normal(0, 20, (8, 8, 2))  # ADU per frame and ASIC (2 photon-noise units)
    analog = raw[:, 0].astype(np.float64) + np.kron(shift, np.ones((64, 64)))
    raw[:, 0] = np.clip(np.rint(analog), 0, 16383)
    c = _constants(dark, truth)
    plain, _, mask = correct(raw, cells, c)
    cm, _, _ = correct(raw, cells, c, common_mode=CommonMode(enabled=True))
    ok = mask == 0
    before = np.std((plain - photons)[ok])
    after = np.std((cm - photons)[ok])
    assert after < 0.5 * before
    assert after < 0.25  # photons: close to the 10/60 readout noise


def test_memory_cell_beyond_constants_is_an_error(darks):
    dark, truth = darks
    raw = np.zeros((1, 2, 512, 128), np.uint16)
    with pytest.raises(ValueError, match="memory cell 5"):
        correct(raw, np.array([5]), _constants(dark, truth))
