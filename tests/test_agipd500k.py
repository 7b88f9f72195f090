"""AGIPD 500K at HED (issue 16, first family): written as the facility writes it, its
darks and a SAXS run reduced with its own geometry.

A simulated HED beamtime (``tests/data/agipd500k.yaml``: modules 2–5, the four around
the beam of the 500K placed by ``AGIPD_500K2GGeometry.from_origin``): the RAW layout is checked against extra-data's
``AGIPD500K`` component and ``make_agipd500k_run`` (source names, the control in
``AGIPD500K2G00`` as an ``Agipd2Composite`` without ``firstPulse``); the dark
constants against the simulator's truth; the SAXS radius within 1 % of truth; SFX hits
(recall and precision), the CXI slab of eight modules and its CrystFEL geometry read back
by extra-geom; XPCS diffusion on rings in q of the 500K; a run of the 500K with the 1M's
geometry configured is refused, naming the key to set.

Wall time: ~45 s on 2 cores.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import simulate_and_reduce, tiny_config
from xfel_reduce import steps
from xfel_reduce.calibrate.agipd import load_constants
from xfel_reduce.config import ConfigError, validate_config
from xfel_reduce.detectors import agipd as agipd_det
from xfel_reduce.simulate.beamtime import detector_truths

MODULES = [2, 3, 4, 5]
SFX_RUN, XPCS_RUN, SAXS_RUN = 11, 12, 13


@pytest.fixture(scope="module")
def hed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("agipd500k")
    cfg = tiny_config(tmp, "agipd500k.yaml")
    assert cfg["modules"] == MODULES
    validate_config(copy.deepcopy(cfg))
    return simulate_and_reduce(cfg, SAXS_RUN)


@pytest.fixture(scope="module")
def hed_sfx(hed) -> dict:
    """The SFX run of the same beamtime (its darks already reduced)."""
    return simulate_and_reduce(copy.deepcopy(hed["cfg"]), SFX_RUN)


@pytest.fixture(scope="module")
def hed_xpcs(hed) -> dict:
    return simulate_and_reduce(copy.deepcopy(hed["cfg"]), XPCS_RUN)


def test_raw_layout_is_the_facility_500k(hed, tmp_path):
    import extra_data
    from extra_data.components import AGIPD500K
    from extra_data.tests.make_examples import make_agipd500k_run

    raw = hed["raw_dir"]
    run = extra_data.RunDirectory(str(raw))
    det = AGIPD500K(run, raw=True)   # extra-data finds the 500K by its source names
    assert sorted(det.source_to_modno.values()) == MODULES
    assert set(det.source_to_modno) == {f"HED_DET_AGIPD500K2G/DET/{m}CH0:xtdf" for m in MODULES}
    # the control aggregator and device as make_agipd500k_run writes them
    ref = tmp_path / "ref"
    ref.mkdir()
    make_agipd500k_run(str(ref))
    ref_run = extra_data.RunDirectory(str(ref))
    ref_ctrl = next(s for s in ref_run.control_sources if s.endswith("/MDL/FPGA_COMP"))
    ctrl = next(s for s in run.control_sources if s.endswith("/MDL/FPGA_COMP"))
    assert ctrl == ref_ctrl == "HED_EXP_AGIPD500K2G/MDL/FPGA_COMP"
    assert (raw / f"RAW-R{SAXS_RUN:04d}-AGIPD500K2G00-S00000.h5").is_file()
    assert {p.name.split("-")[2] for p in ref.glob("*.h5")} - {"AGIPD500K2G00"} == \
        {f"AGIPD{m:02d}" for m in range(8)}
    assert run.get_run_value(ctrl, "classId") == "Agipd2Composite"
    assert "bunchStructure.firstPulse" not in run[ctrl].keys()
    assert run.get_run_value(ctrl, "expType") == "XRay"


def test_dark_constants_recovered(hed):
    cfg = hed["cfg"]
    sim = cfg["simulate"]
    truths = dict(zip(MODULES, detector_truths(sim)))
    # dark samples per cell and gain: trains × frames per cell and train
    n = sim["dark"]["trains"] * sim["beam"]["frames_per_train"] // sim["memory_cells"]
    for m in MODULES:
        c = load_constants(Path(cfg["results_dir"]) / "calibration" / "constants" / f"AGIPD{m:02d}.h5")
        truth = truths[m]
        for g in range(3):
            good = ~truth.bad() & (truth.noise[g] > 0)
            # offsets within their statistical error (median |pull| of a normal: 0.674)
            pull = (c.offset[g] - truth.offset[g])[good] / (truth.noise[g][good] / np.sqrt(n))
            assert abs(np.median(pull)) < 0.1, (m, g, float(np.median(pull)))
            assert 0.55 < np.median(np.abs(pull)) < 0.8, (m, g, float(np.median(np.abs(pull))))


def test_saxs_radius_within_1_percent_with_the_500k_geometry(hed):
    saxs = Path(hed["cfg"]["results_dir"]) / f"r{SAXS_RUN:04d}" / "saxs"
    with h5py.File(saxs / "saxs_nxcansas.h5") as f:
        assert f["/"].attrs.get("default") is not None  # NXcanSAS, with its default entry
    fits = json.loads((saxs / "saxs_summary.json").read_text())["fits"]
    truth = hed["truth"]["scene"]
    assert fits["off"]["radius_nm"] == pytest.approx(truth["radius_nm"], rel=0.01), fits["off"]
    assert fits["on"]["radius_nm"] == pytest.approx(truth["radius_on_nm"], rel=0.01), fits["on"]
    print(f"\n500K SAXS: r_off {fits['off']['radius_nm']:.3f} nm (truth {truth['radius_nm']}), "
          f"r_on {fits['on']['radius_nm']:.3f} nm (truth {truth['radius_on_nm']:.3f})")


def test_500k_run_with_the_1m_geometry_is_refused(hed):
    cfg = copy.deepcopy(hed["cfg"])
    cfg["geometry"] = {}
    with pytest.raises(ConfigError, match="set geometry.detector: AGIPD500K"):
        steps.reduce_run_in_process(cfg, SAXS_RUN)
    # and modules the 500K lacks are named
    with pytest.raises(ConfigError, match=r"modules \[8\] do not exist on the AGIPD500K"):
        agipd_det.check_modules(agipd_det.AGIPD500K, [7, 8])


def test_sfx_hits_cxi_slab_and_crystfel_geometry_of_the_500k(hed_sfx):
    from extra_geom import AGIPD_500K2GGeometry

    cfg = hed_sfx["cfg"]
    pd, base = Path(cfg["proposal_dir"]), Path(cfg["results_dir"]) / f"r{SFX_RUN:04d}"
    with h5py.File(pd / "truth" / f"r{SFX_RUN:04d}" / "truth.h5") as f:
        true_hit = f["scene/hit"][()]
    with h5py.File(base / "aggregate" / "run.h5") as f:
        hit = f["annotation/hit"][()]
    assert true_hit.sum() >= 3
    recall = (hit & true_hit).sum() / true_hit.sum()
    precision = (hit & true_hit).sum() / max(hit.sum(), 1)
    assert recall == precision == 1.0, (recall, precision)
    # the CXI slab is the 500K's eight modules; ours sit at their rows, the rest missing
    cxi_files = sorted((base / "sfx").glob("*.cxi"))
    assert cxi_files
    n = 0
    for p in cxi_files:
        with h5py.File(p) as f:
            data = f["entry_1/instrument_1/detector_1/data"]
            assert data.shape[1:] == (8 * 512, 128)
            n += data.shape[0]
    assert n == true_hit.sum()
    # the CrystFEL geometry written for it reads back as the configured 500K geometry
    geom_file = next((base / "sfx").glob("*.geom"))
    back = agipd_det.geometry_from_crystfel(geom_file)   # the SFX report's reader: 500K by its panels
    assert isinstance(back, AGIPD_500K2GGeometry)
    ref = agipd_det.AGIPD500K.geometry()
    np.testing.assert_allclose(back.get_pixel_positions()[..., :2], ref.get_pixel_positions()[..., :2], atol=1e-6)


def test_xpcs_diffusion_on_the_500k_rings(hed_xpcs):
    # rings in q from the 500K geometry: D within 3σ of truth (8 trains: σ ≈ 15 %)
    with h5py.File(hed_xpcs["run_files"]["xpcs"]) as f:
        d, d_err = f["xpcs/diffusion/D_m2_per_s"][()], f["xpcs/diffusion/D_err"][()]
    truth = hed_xpcs["truth"]["scene"]["diffusion_m2_per_s"]
    assert 0 < d_err < 0.25 * d
    assert abs(d - truth) < 3 * d_err, (d, d_err, truth)
