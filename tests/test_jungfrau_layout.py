"""JUNGFRAU as the facility records it, and the facility's bad-pixel bits.

Checks our reader, dark and correction against the facility's own writers
(``extra_data.tests.make_examples`` / ``mockdata``), our simulator against the
facility's readers (extra-data's ``JUNGFRAU`` component, EXtra's
``JUNGFRAUConditions``, ``extra-data-validate``), both gain-mode vocabularies, and
``BadPixels`` against EXtra's definition.  Small runs (2 memory cells, 2–3 trains)
keep it to about a minute on 2 cores.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from xfel_reduce.calibrate import jungfrau as jfc
from xfel_reduce.calibrate.badpixels import FACILITY_BITS, PROJECT_FLAGS, USER_BITS, BadPixels, describe
from xfel_reduce.calibrate.correct import CorrectionConstants
from xfel_reduce.detectors import jungfrau as jfd
from xfel_reduce.io.runs import InputDataError, open_file
from xfel_reduce.simulate import jungfrau as jfsim

CELLS = 2
SIM = {"seed": 5, "proposal": 900003, "beam": {"dark_frames_per_train": 1},
       "jungfrau": {"memory_cells": CELLS, "modules": [1, 2], "module": 1, "detector_name": "FXE_XAD_JF1M"}}
LEGACY = {**SIM, "jungfrau": {**SIM["jungfrau"], "control_vocabulary": "legacy"}}
CONTROL = "FXE_XAD_JF1M/DET/CONTROL"
# run: (simulation config, dark stage or None for the spectroscopy run, gain_mode override)
RUNS = {1: (SIM, 0, None), 2: (SIM, 1, None), 3: (SIM, 2, None),
        4: (LEGACY, 0, None), 5: (LEGACY, 1, None), 6: (LEGACY, 2, None),
        7: (SIM, 1, "fixg1"), 8: (SIM, 2, "fixg2"),
        9: (SIM, None, None)}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """Darks in both vocabularies, fixed-gain darks and a spectroscopy run of a 2-module JF1M."""
    pd = tmp_path_factory.mktemp("jflayout") / "p900003"
    for run, (cfg, stage, mode) in RUNS.items():
        rc = {"run": run, "trains": 3, "trains_per_sequence": 2}
        if stage is None:
            rc.update(type="spectroscopy", params={"photons_per_uj": 3.0})
        else:
            rc.update(type="jungfrau_dark", gain=stage, **({"gain_mode": mode} if mode else {}))
        jfsim.simulate_jungfrau_run(pd, cfg, rc)
    gain_path, _ = jfsim.write_jungfrau_detector_truth(pd, SIM)
    return {"pd": pd, "gain": gain_path, "raw": lambda run: pd / "raw" / f"r{run:04d}"}


# -- BadPixels --------------------------------------------------------------------------
def test_badpixels_are_the_facility_definition():
    """Every facility bit by name and value; project flags only in the user bits 30–31."""
    from extra.calibration import BadPixels as Facility

    for name, member in Facility.__members__.items():
        assert BadPixels[name] == int(member), name
    assert BadPixels.EXPERT_CHOICE == 1 << 23 and BadPixels.WRONG_GAIN_VALUE == 1 << 21
    # Ours defines nothing the facility does not, except the two project aliases.
    assert set(BadPixels.__members__) - set(Facility.__members__) == set(PROJECT_FLAGS)
    facility_values = {int(m) for m in Facility}
    assert FACILITY_BITS == sum(v for v in facility_values if v < 1 << 24)
    values = [int(v) for v in PROJECT_FLAGS.values()]
    assert len(set(values)) == len(values) == 2
    for v in values:
        assert v & USER_BITS == v and not v & FACILITY_BITS  # user bits, never a facility reason
        assert v & (v - 1) == 0  # one bit each
    assert BadPixels.USER_MASK == 1 << 30 and BadPixels.MODULE_MISSING == 1 << 31
    assert describe((1 << 23) | (1 << 31) | 1) == ["OFFSET_OUT_OF_THRESHOLD", "EXPERT_CHOICE", "MODULE_MISSING"]


def test_facility_masks_keep_their_meaning_and_user_mask_is_bit_30():
    """An EXPERT_CHOICE pixel of a facility mask is not a user-masked pixel; USER_MASK lands on bit 30."""
    consts = CorrectionConstants(np.zeros((3, 1, 512, 1024)), np.ones((3, 1, 512, 1024)),
                                 np.zeros((3, 1, 512, 1024), np.uint32))
    consts.badpixels[0, 0, 0, 0] = BadPixels.EXPERT_CHOICE
    user = np.zeros((512, 1024), bool)
    user[0, 1] = True
    adc = np.full((1, 512, 1024), 100, np.uint16)
    _, _, mask = jfc.correct_frames(adc, np.zeros_like(adc, np.uint8), np.zeros(1, np.uint8), consts, user)
    assert describe(mask[0, 0, 0]) == ["EXPERT_CHOICE"]
    assert mask[0, 0, 1] == 1 << 30 and describe(mask[0, 0, 1]) == ["USER_MASK"]


# -- raw layout -------------------------------------------------------------------------
def test_simulated_raw_has_the_facility_layout(sim):
    """Separate data.gain, 14-bit data.adc, per-cell keys, control in its own aggregator."""
    raw = sim["raw"](9)
    names = sorted(p.name for p in raw.iterdir())
    # DA01 and the control: one sequence each for the whole run (the detector has two)
    assert names == ["RAW-R0009-DA01-S00000.h5",
                     "RAW-R0009-JNGFR01-S00000.h5", "RAW-R0009-JNGFR01-S00001.h5",
                     "RAW-R0009-JNGFR02-S00000.h5", "RAW-R0009-JNGFR02-S00001.h5",
                     "RAW-R0009-JNGFRCTRL00-S00000.h5"]
    with h5py.File(raw / "RAW-R0009-JNGFR01-S00000.h5", "r") as f:
        g = f["INSTRUMENT/FXE_XAD_JF1M/DET/JNGFR01:daqOutput/data"]
        assert g["adc"].dtype == np.uint16 and g["adc"].shape == (2, CELLS, 512, 1024)
        assert g["gain"].dtype == np.uint8 and g["gain"].shape == (2, CELLS, 512, 1024)
        assert int(g["adc"][()].max()) <= 0x3FFF  # 14-bit value, no gain bits
        assert set(np.unique(g["gain"][()])) <= {0, 1, 3} and 1 in np.unique(g["gain"][()])
        np.testing.assert_array_equal(g["memoryCell"][()], [[1, 0], [1, 0]])  # storageCellStart first
        assert g["frameNumber"].dtype == np.uint64 and g["timestamp"].dtype == np.float64
        assert "CONTROL/FXE_XAD_JF1M/DET/CONTROL" not in f
    for name in ("RAW-R0009-DA01-S00000.h5",):
        with h5py.File(raw / name, "r") as f:
            assert "FXE_XAD_JF1M" not in f["CONTROL"]  # the control is not in the DA aggregator
    with h5py.File(raw / "RAW-R0009-JNGFRCTRL00-S00000.h5", "r") as f:
        assert f["INDEX/trainId"].size == 3  # one control file for the whole run
        assert f["RUN/FXE_XAD_JF1M/DET/CONTROL/gainMode/value"][0] == b"dynamic"


def test_extra_data_and_extra_read_simulated_raw(sim):
    """extra-data's JUNGFRAU opens our raw (2 modules from 1); EXtra derives the conditions."""
    from extra.calibration import JUNGFRAUConditions
    from extra_data import RunDirectory
    from extra_data.components import JUNGFRAU
    from extra_data.validation import RunValidator

    raw = sim["raw"](9)
    run = RunDirectory(str(raw))
    jf = JUNGFRAU(run, raw=True)
    assert jf.detector_name == "FXE_XAD_JF1M" and jf.n_modules == 2
    assert sorted(jf.modno_to_source) == [1, 2]
    adc = jf.get_array("data.adc")
    assert adc.dtype == np.uint16 and adc.shape == (2, 3, CELLS, 512, 1024)
    gain = jf.get_array("data.gain")
    assert gain.dtype == np.uint8 and set(np.unique(gain.values)) <= {0, 1, 3}
    cond = JUNGFRAUConditions.from_data(run, None, control=CONTROL)
    assert (cond.memory_cells, cond.gain_mode, cond.gain_setting) == (CELLS, 0, 0)
    assert cond.integration_time == pytest.approx(10.0) and cond.sensor_bias_voltage == 200
    validator = RunValidator(str(raw))
    validator.run_checks()
    assert validator.problems == []


def test_facility_mock_runs_read_by_our_reader(tmp_path):
    """make_jungfrau_run (JF4M, 8 modules) and make_fxe_jungfrau_run (JF1M + JF500K JNGFR03)."""
    from extra_data.tests.make_examples import make_fxe_jungfrau_run, make_jungfrau_run

    spb, fxe = tmp_path / "spb", tmp_path / "fxe"
    spb.mkdir()
    fxe.mkdir()
    make_jungfrau_run(str(spb))
    make_fxe_jungfrau_run(str(fxe))
    # These mocks hold float data under raw names (proc that kept the raw names):
    # our raw reader refuses them with a clear message, the corrected reader reads them.
    path = spb / "RAW-R0012-JNGFR03-S00000.h5"
    with pytest.raises(InputDataError, match="float32: corrected data under a raw source name"):
        next(jfc.iter_jungfrau_chunks(path, 3, raw=True))
    for module in range(1, 9):
        src = jfc.find_source(open_file(spb / f"RAW-R0012-JNGFR{module:02d}-S00000.h5"),
                              spb, module, raw=False)
        assert src.name == f"SPB_IRDA_JF4M/DET/JNGFR{module:02d}:daqOutput"
        assert src.control_source == "SPB_IRDA_JF4M/DET/CONTROL"
    chunk = next(jfc.iter_jungfrau_chunks(path, 3, raw=False, trains_per_chunk=1))
    assert chunk.data.shape == (16, 512, 1024) and chunk.data.dtype == np.float32
    assert chunk.mask.dtype == np.uint32 and chunk.gain.dtype == np.uint8 and chunk.timestamps.shape == (16,)
    # The JF500K's module is JNGFR03 (its only one); its mock mask carries 0..31 in frame 0.
    chunk = next(jfc.iter_jungfrau_chunks(fxe / "RAW-R0052-JNGFR03-S00000.h5", 3, raw=False, trains_per_chunk=1))
    np.testing.assert_array_equal(chunk.mask[0, 0, :32], np.arange(32))
    with pytest.raises(InputDataError, match="JNGFR01"):
        next(jfc.iter_jungfrau_chunks(fxe / "RAW-R0052-JNGFR03-S00000.h5", 1, raw=False))
    # extra-data counts that detector's modules from 1, as extra-geom does.
    assert jfd.detector("FXE_XAD_JF500K").geometry_index(3) == 0


def _facility_raw_run(run_dir: Path, gain_mode: str | None, gain_value: int, ntrains: int = 2) -> None:
    """A JF500K dark run written by extra-data's mock writer (raw module), values filled in."""
    from extra_data.tests.mockdata import write_file
    from extra_data.tests.mockdata.jungfrau import JUNGFRAUControl, JUNGFRAUModule

    run_dir.mkdir(parents=True)
    path = run_dir / "RAW-R0052-JNGFR03-S00000.h5"
    write_file(str(path), [JUNGFRAUModule("FXE_XAD_JF500K/DET/JNGFR03", raw=True)], ntrains=ntrains,
               chunksize=1, format_version="1.0")
    rng = np.random.default_rng(1)
    with h5py.File(path, "a") as f:
        g = f["INSTRUMENT/FXE_XAD_JF500K/DET/JNGFR03:daqOutput/data"]
        g["adc"][...] = rng.normal(3000, 5, g["adc"].shape).astype(np.uint16)
        g["gain"][...] = gain_value
        g["memoryCell"][...] = np.arange(16, dtype=np.uint8)

    class Control(JUNGFRAUControl):
        extra_run_values = [("gainMode", None, gain_mode), ("settings", None, "gain0")] if gain_mode else []

    write_file(str(run_dir / "RAW-R0052-JNGFRCTRL00-S00000.h5"), [Control("FXE_XAD_JF500K/DET/CONTROL")],
               ntrains=ntrains, chunksize=1, format_version="1.0")


def test_dark_and_correction_of_facility_written_raw(tmp_path):
    """Raw written by the facility's mock writer: data.gain decoded, gainMode checked."""
    g0, g1 = tmp_path / "r0001", tmp_path / "r0002"
    _facility_raw_run(g0, "dynamic", 0)
    _facility_raw_run(g1, "forceswitchg1", 1)
    chunk = next(jfc.iter_jungfrau_chunks(g1 / "RAW-R0052-JNGFR03-S00000.h5", 3, trains_per_chunk=1))
    assert chunk.data.dtype == np.uint16 and np.all(chunk.gain == 1)
    np.testing.assert_array_equal(chunk.cell_ids, np.arange(16))
    with pytest.raises(InputDataError, match=r"gainMode='forceswitchg1'.*gain stage G0.*dynamic or fixg0"):
        jfc.characterise_jungfrau({0: g1}, module=3)
    dark = jfc.characterise_jungfrau({0: g0, 1: g1}, module=3)
    assert dark.gain_modes == {"G0": "dynamic", "G1": "forceswitchg1"}
    assert dark.offset.shape == (2, 16, 512, 1024) and abs(float(np.nanmedian(dark.offset)) - 3000) < 1
    # A control without gainMode or settings (extra-data's plain mock): data.gain still decides.
    blind = tmp_path / "r0003"
    _facility_raw_run(blind, None, 1)
    with pytest.raises(InputDataError, match="data.gain of another stage than G0"):
        jfc.characterise_jungfrau({0: blind}, module=3)


# -- gain modes -------------------------------------------------------------------------
def test_gain_mode_vocabularies_match_extra():
    """Our reading of both vocabularies agrees with EXtra's JUNGFRAUConditions."""
    from extra.calibration import JUNGFRAUConditions as C

    assert set(C.gain_mode_labels) <= set(jfd.GAIN_MODES)
    assert set(C.legacy_settings) == set(jfd.LEGACY_SETTINGS)
    for old, (setting, mode) in C.legacy_settings.items():
        gm = jfd.normalise_gain_mode(settings=old)
        assert (gm.mode, gm.setting, gm.key) == (mode, setting, "settings")
    for mode in jfd.GAIN_MODES:
        gm = jfd.normalise_gain_mode(mode, "highgain0")
        assert (gm.mode, gm.setting, gm.key) == (mode, "highgain0", "gainMode")
    with pytest.raises(ValueError, match="unknown JUNGFRAU gainMode 'adaptive'"):
        jfd.normalise_gain_mode("adaptive")
    with pytest.raises(ValueError, match="no gainMode was recorded"):
        jfd.normalise_gain_mode(settings="gain0")


def test_both_vocabularies_accepted_and_recorded(sim):
    """Current (gainMode) and legacy (settings) darks give the same kind of constants."""
    from extra.calibration import JUNGFRAUConditions
    from extra_data import RunDirectory

    raw = sim["raw"]
    legacy_ctrl = RunDirectory(str(raw(4)))[CONTROL]
    assert "gainMode" not in legacy_ctrl and legacy_ctrl.run_value("settings") == "dynamicgain"
    assert JUNGFRAUConditions.gain_mode_from_control(legacy_ctrl, raw=True) == "dynamic"
    assert JUNGFRAUConditions.gain_mode_from_control(RunDirectory(str(raw(2)))[CONTROL], raw=True) == "forceswitchg1"
    for runs, modes in (((1, 2, 3), {"G0": "dynamic", "G1": "forceswitchg1", "G2": "forceswitchg2"}),
                        ((4, 5, 6), {"G0": "dynamic", "G1": "forceswitchg1", "G2": "forceswitchg2"}),
                        ((1, 7, 8), {"G0": "dynamic", "G1": "fixg1", "G2": "fixg2"})):
        dark = jfc.characterise_jungfrau({s: raw(r) for s, r in enumerate(runs)}, module=2, n_cells=CELLS)
        assert dark.gain_modes == modes
        assert np.all(dark.count == 3)
        assert float(np.median(dark.noise[0])) == pytest.approx(6.0, rel=0.3)  # 3 samples per pixel
    truth = json.loads((sim["pd"] / "truth" / "r0005" / "truth.json").read_text())
    assert truth["recorded_gain_mode"] == {"settings": "forceswitchg1"} and truth["gain_mode"] == "forceswitchg1"


def test_mismatching_darks_refused_with_clear_message(sim):
    raw = sim["raw"]
    # A forced-G1 dark listed as G0: says which run, what was recorded, what is needed, what to set.
    with pytest.raises(InputDataError) as err:
        jfc.characterise_jungfrau({0: raw(2), 1: raw(1)}, module=1, n_cells=CELLS)
    msg = str(err.value)
    assert str(raw(2)) in msg and "FXE_XAD_JF1M/DET/CONTROL.gainMode='forceswitchg1'" in msg
    assert "gain stage G0" in msg and "dynamic or fixg0" in msg and "dynamicgain or dynamichg0" in msg
    assert "calibration.jungfrau.dark_runs" in msg
    # The same in the pre-2022 vocabulary names the settings key.
    with pytest.raises(InputDataError, match=r"CONTROL\.settings='forceswitchg2'.*gain stage G1"):
        jfc.characterise_jungfrau({1: raw(6)}, module=1, n_cells=CELLS)
    # Forced-switching and fixed-gain darks do not make one set.
    with pytest.raises(InputDataError, match="mixes fixed-gain and forced-switching darks"):
        jfc.characterise_jungfrau({0: raw(1), 1: raw(2), 2: raw(8)}, module=1, n_cells=CELLS)


# -- decoding and correction ---------------------------------------------------------------
def test_separate_gain_decoded_and_multi_module_correction(sim, tmp_path):
    """data.gain → stage; impossible values flagged; each module corrected to its CORR source."""
    stage, wrong = jfd.decode_gain(np.arange(256, dtype=np.uint8))
    assert stage[[0, 1, 3]].tolist() == [0, 1, 2] and not wrong[[0, 1, 3]].any() and wrong.sum() == 253
    adc = np.array([[[0x3FFF, 5, 7, 9]]], np.uint16)
    words = jfd.detector_words(adc, np.array([[[3, 0, 1, 2]]], np.uint8))
    np.testing.assert_array_equal(words & 0x3FFF, adc)
    np.testing.assert_array_equal(words >> 14, [[[3, 0, 1, 2]]])

    raw = sim["raw"]
    consts = {}
    for module in (1, 2):
        dark = jfc.characterise_jungfrau({s: raw(r) for s, r in enumerate((1, 2, 3))}, module=module, n_cells=CELLS)
        consts[module] = CorrectionConstants(dark.offset, jfc.read_gain_constants(sim["gain"], module, CELLS),
                                             dark.badpixels)
    chunk = next(jfc.iter_jungfrau_chunks(raw(9) / jfd.raw_filename(9, 2, 0), 2))
    bad = chunk.gain.copy()
    bad[0, 0, :3] = (2, 7, 255)
    _, gain, mask = jfc.correct_frames(chunk.data, bad, chunk.cell_ids, consts[2])
    assert np.all(gain[0, 0, :3] == 2) and np.all(mask[0, 0, :3] & BadPixels.WRONG_GAIN_VALUE)
    ref = jfc.correct_reference_numpy(chunk.data, bad, chunk.cell_ids, consts[2])
    np.testing.assert_array_equal(ref[2], mask)

    out = tmp_path / "proc"
    for module in (1, 2):
        res = jfc.correct_sequence(raw(9) / jfd.raw_filename(9, module, 0), out / jfd.corr_filename(9, module, 0),
                                   module, consts[module], {"test": True})
        assert res["source"] == f"FXE_XAD_JF1M/CORR/JNGFR{module:02d}:daqOutput" and res["frames"] == 2 * CELLS
    from extra_data import RunDirectory
    from extra_data.components import JUNGFRAU
    from extra_data.validation import RunValidator

    validator = RunValidator(str(out))
    validator.run_checks()
    assert validator.problems == []
    jf = JUNGFRAU(RunDirectory(str(out)))
    assert jf.n_modules == 2
    corr = jf.get_array("data.adc").values
    assert corr.dtype == np.float32 and corr.shape == (2, 2, CELLS, 512, 1024)
    # The spectrometer's light is on module 1 (index 0), all of it; module 2 sees none.
    with h5py.File(sim["pd"] / "truth" / "r0009" / "truth.h5", "r") as f:
        photons = float(f["frames/photons_total"][:2 * CELLS].sum())
    assert photons > 1000
    assert abs(float(np.nansum(corr[0])) / photons - 1) < 0.05
    assert abs(float(np.nansum(corr[1]))) < 0.05 * photons


def test_old_xfel_reduce_raw_without_gain_refused(tmp_path, sim):
    """Files of the former simulator (gain in bits 14–15, no data.gain): say so and what to do."""
    src = sim["raw"](1) / jfd.raw_filename(1, 1, 0)
    old = tmp_path / src.name
    old.write_bytes(src.read_bytes())
    with h5py.File(old, "a") as f:
        del f["INSTRUMENT/FXE_XAD_JF1M/DET/JNGFR01:daqOutput/data/gain"]
    with pytest.raises(InputDataError, match="no data.gain.*bits 14-15 of data.adc: simulate the run again"):
        next(jfc.iter_jungfrau_chunks(old, 1))


# -- names and geometry ---------------------------------------------------------------------
@pytest.mark.parametrize("name, detector, module, corrected", [
    ("SPB_IRDA_JF4M/DET/JNGFR08:daqOutput", "SPB_IRDA_JF4M", 8, False),
    ("FXE_XAD_JF500K/DET/JNGFR03:daqOutput", "FXE_XAD_JF500K", 3, False),
    ("HED_IA1_JF500K1/CORR/JNGFR01:daqOutput", "HED_IA1_JF500K1", 1, True),
    ("SPB_IRDA_JNGFR/DET/MODULE_1:daqOutput", "SPB_IRDA_JNGFR", 1, False),
    ("FXE_XAD_JF1M/DET/RECEIVER-2", "FXE_XAD_JF1M", 2, False),
    ("SPB_DET_AGIPD1M-1/DET/3CH0:xtdf", None, None, None),
    ("FXE_XAD_JF1M/DET/CONTROL", None, None, None),
])
def test_module_source_names(name, detector, module, corrected):
    s = jfd.parse_module_source(name)
    if detector is None:
        assert s is None
    else:
        assert (s.detector, s.module, s.corrected) == (detector, module, corrected)


def test_detectors_numbering_and_geometry():
    """Module numbers from 1; positions through extra-geom's JUNGFRAUGeometry."""
    from extra_geom import JUNGFRAUGeometry

    jf4m = jfd.detector("SPB_IRDA_JF4M")
    assert jf4m.modules == tuple(range(1, 9)) and jf4m.raw_source(1) == "SPB_IRDA_JF4M/DET/JNGFR01:daqOutput"
    assert jf4m.control_source == "SPB_IRDA_JF4M/DET/CONTROL"
    assert jfd.raw_filename(12, 1, 0) == "RAW-R0012-JNGFR01-S00000.h5"
    assert jfd.control_filename(12) == "RAW-R0012-JNGFRCTRL00-S00000.h5"
    pos = jfd.module_pixel_positions(jf4m, [1, 8], 0.5)
    ref = JUNGFRAUGeometry.example(8).get_pixel_positions()
    assert pos.shape == (2, 512, 1024, 3)
    np.testing.assert_allclose(pos[1, ..., :2], ref[7, ..., :2], atol=1e-9)
    np.testing.assert_allclose(pos[..., 2], ref[[0, 7], ..., 2] + 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="not JNGFR09"):
        jf4m.geometry_index(9)
