"""``inspect_run`` and source discovery on runs written by the facility's own writers.

The runs come from ``extra_data.tests.make_examples`` (AGIPD 1M/500K, modern proc,
LPD, DSSC, JUNGFRAU) and ``extra_data.tests.mockdata``; timeserver, SASE-resolved
XGM and ePix sources, which those writers lack, are written here with mockdata's
``DeviceBase`` following the layout in FACILITY.md. Our own simulator's run is the
session fixture ``tiny_reduced`` (2-module SPI run, raw and proc).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from pathlib import Path

import h5py
import pytest

extra_data = pytest.importorskip("extra_data")
from extra_data.components import identify_multimod_detectors  # noqa: E402
from extra_data.tests import make_examples  # noqa: E402
from extra_data.tests.mockdata import write_file  # noqa: E402
from extra_data.tests.mockdata.agipd import AGIPDMDL  # noqa: E402
from extra_data.tests.mockdata.base import DeviceBase  # noqa: E402
from extra_data.tests.mockdata.detectors import AGIPDModule  # noqa: E402
from extra_data.tests.mockdata.xgm import XGM  # noqa: E402

from xfel_reduce.io import discovery  # noqa: E402
from xfel_reduce.preflight import InspectError, inspect_run  # noqa: E402


# -- mock devices for what make_examples does not write ----------------------------------

class Timeserver(DeviceBase):
    """``<PREFIX>/TSYS/TIMESERVER`` with its ``:outputBunchPattern`` pipeline (FACILITY.md)."""

    control_keys = [("period", "u4", ())]
    extra_run_values = [("classId", None, "TimeServer")]
    output_channels = ("outputBunchPattern/data",)
    instrument_keys = [("bunchPatternTable", "u4", (2700,))]


class UnnamedTimeserver(Timeserver):
    """A timeserver without a recorded class (older runs), found by its key alone."""

    extra_run_values = []


class SaseXGM(XGM):
    """A SASE1/3 tunnel XGM with the SASE-resolved keys EXtra looks for."""

    control_keys = XGM.control_keys + [
        ("pulseEnergy/numberOfSa1BunchesActual", "f4", ()),
        ("pulseEnergy/numberOfSa3BunchesActual", "f4", ()),
    ]
    instrument_keys = XGM.instrument_keys + [
        ("intensitySa1TD", "f4", (1000,)),
        ("intensitySa3TD", "f4", (1000,)),
    ]


class PulsePatternDecoder(DeviceBase):
    """The timeserver's alternative: a decoder with per-SASE pulse counts and ids."""

    control_keys = [("sase1/nPulses", "u4", ()), ("sase1/pulseIds", "u4", (2700,)),
                    ("maindump/pulseIds", "u4", (2700,))]
    extra_run_values = [("classId", None, "PulsePatternDecoder")]


class EpixReceiver(DeviceBase):
    """An ePix100 receiver pipeline (``…/DET/RECEIVER:daqOutput``, ``data.image.pixels``)."""

    output_channels = ("daqOutput/data",)
    instrument_keys = [("image/pixels", "u2", (16, 16))]


def _set_control(path: Path, source: str, key: str, value) -> None:
    with h5py.File(path, "r+") as f:
        for section in ("CONTROL", "RUN"):
            f[f"{section}/{source}/{key.replace('.', '/')}/value"][...] = value


def _make_mid_run(path: Path) -> Path:
    """MID AGIPD 1M without module 5, module 3 missing two trains, with a timeserver,
    an XGM recording 0.1 nm, and the AGIPD control in its own aggregator."""
    path.mkdir()
    for mod in range(16):
        if mod == 5:
            continue
        write_file(str(path / f"RAW-R0042-AGIPD{mod:02d}-S00000.h5"), [
            AGIPDModule(f"MID_DET_AGIPD1M-1/DET/{mod}CH0", frames_per_train=8),
        ], ntrains=20, chunksize=20, format_version="1.0")
    with h5py.File(path / "RAW-R0042-AGIPD03-S00000.h5", "r+") as f:
        f["INDEX/MID_DET_AGIPD1M-1/DET/3CH0:xtdf/image/count"][4:6] = 0
    da = path / "RAW-R0042-DA01-S00000.h5"
    write_file(str(da), [
        Timeserver("MID_RR_UTC/TSYS/TIMESERVER"),
        XGM("SA2_XTD1_XGM/XGM/DOOCS"),
    ], ntrains=20, chunksize=20, format_version="1.0")
    _set_control(da, "SA2_XTD1_XGM/XGM/DOOCS", "pulseEnergy.wavelengthUsed", 0.1)
    write_file(str(path / "RAW-R0042-AGIPD1MCTRL00-S00000.h5"), [
        AGIPDMDL("MID_EXP_AGIPD1M1/MDL/FPGA_COMP"),
    ], ntrains=20, chunksize=20, format_version="1.0")
    return path


def _make_spb_beam_run(path: Path) -> Path:
    """make_agipd1m_run plus a DA01 with an SPB timeserver whose name EXtra does not
    match, the SASE-resolved SA1 XGM and the instrument's own XGM."""
    path.mkdir()
    make_examples.make_agipd1m_run(str(path))
    write_file(str(path / "RAW-R9015-DA01-S00000.h5"), [
        UnnamedTimeserver("SPB_EXP_SYS/TSYS/TIMESERVER"),
        SaseXGM("SA1_XTD2_XGM/XGM/DOOCS"),
        XGM("SPB_XTD9_XGM/XGM/DOOCS"),
    ], ntrains=100, chunksize=50, format_version="1.0")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Example runs, written once for the module (~4 s in all)."""
    base = tmp_path_factory.mktemp("inspect_runs")
    out = {}
    for name in ("make_spb_run", "make_agipd500k_run", "make_modern_spb_proc_run", "make_jungfrau_run",
                 "make_fxe_run", "make_scs_run", "make_fxe_jungfrau_run", "make_lpd_run_mini_missed_train"):
        d = base / name
        d.mkdir()
        getattr(make_examples, name)(str(d))
        out[name] = d
    out["mid"] = _make_mid_run(base / "mid")
    out["spb_beam"] = _make_spb_beam_run(base / "spb_beam")
    epix = base / "epix"
    epix.mkdir()
    write_file(str(epix / "RAW-R0007-EPIX01-S00000.h5"), [EpixReceiver("HED_IA1_EPX100-1/DET/RECEIVER")],
               ntrains=10, chunksize=10, format_version="1.0")
    out["epix"] = epix
    return out


def _json(info) -> dict:
    d = info.to_dict()
    json.dumps(d, allow_nan=False)  # raises on NaN / inf
    return d


# -- facility example runs --------------------------------------------------------------

def test_agipd_raw_run_detector_and_xgms(runs):
    info = inspect_run(runs["make_spb_run"])
    (det,) = info.detectors
    assert (det.name, det.family, det.corrected) == ("SPB_DET_AGIPD1M-1", "AGIPD1M", False)
    assert det.modules_present == list(range(16)) and det.missing_modules == []
    assert det.frames_per_train["min"] == det.frames_per_train["max"] == 64
    assert (det.memory_cells["min"], det.memory_cells["max"]) == (0, 63)
    assert info.n_trains == 64 and info.instrument == "SPB" and info.sase == 1
    assert info.aggregators["DA01"]["sequences"] == [0, 1]
    assert info.format_version == "0.5"
    # SPB_XTD9 (the instrument's XGM) ranks before the SA1 tunnel XGM
    assert [x.source for x in info.xgms] == ["SPB_XTD9_XGM/DOOCS/MAIN", "SA1_XTD2_XGM/DOOCS/MAIN"]
    assert info.xgms[0].device_class == "DoocsXGM" and not info.xgms[0].sase_resolved
    assert any("no timeserver" in p for p in info.problems)
    assert not any("XGM candidates" in p for p in info.problems)
    _json(info)


def test_mid_run_missing_module_timeserver_xgm_control(runs):
    info = inspect_run(runs["mid"])
    d = _json(info)
    assert info.instrument == "MID" and info.sase == 2
    (det,) = info.detectors
    assert det.missing_modules == [5] and len(det.modules_present) == 15
    assert any("module(s) 5 missing" in p and "`modules`" in p for p in info.problems)
    mod3 = next(m for m in det.modules if m.module == 3)
    assert (mod3.trains_with_data, mod3.trains_without_data) == (18, 2)
    assert any("module 3 (AGIPD03) has no data in 2 of 20 trains" in p for p in info.problems)
    assert det.trains_some_modules == 2
    (ctrl,) = det.controls
    assert ctrl.source == "MID_EXP_AGIPD1M1/MDL/FPGA_COMP" and ctrl.aggregators == ["AGIPD1MCTRL00"]
    assert ctrl.settings["bunchStructure.repetitionRate"] == 4.5
    assert ctrl.settings["gainModeIndex"] == 0
    (ts,) = info.timeservers
    assert ts.source == "MID_RR_UTC/TSYS/TIMESERVER:outputBunchPattern" and ts.rank == 0
    assert ts.aggregators == ["DA01"] and ts.trains_with_data == 20
    assert "class TimeServer" in ts.reason
    (xgm,) = info.xgms
    assert xgm.source == "SA2_XTD1_XGM/XGM/DOOCS" and xgm.output == "SA2_XTD1_XGM/XGM/DOOCS:output"
    assert info.photon_energy_kev == pytest.approx(12.398, abs=1e-3)
    assert d["photon_energy_kev"] == pytest.approx(12.398, abs=1e-3)
    text = info.format()
    assert "MID_EXP_AGIPD1M1/MDL/FPGA_COMP in AGIPD1MCTRL00" in text and "12.398 keV" in text


def test_spb_control_aggregator_sase_xgm_and_unmatched_timeserver(runs):
    info = inspect_run(runs["spb_beam"])
    (det,) = info.detectors
    (ctrl,) = det.controls
    assert (ctrl.source, ctrl.aggregators) == ("SPB_IRU_AGIPD1M1/MDL/FPGA_COMP", ["AGIPD1MCTRL00"])
    # SPB_EXP_SYS is a real name outside EXtra's pattern: found by key, with a note
    (ts,) = info.timeservers
    assert ts.source == "SPB_EXP_SYS/TSYS/TIMESERVER:outputBunchPattern" and ts.rank == 2
    assert any("pass it explicitly to EXtra" in n for n in info.notes)
    by_name = {x.source: x for x in info.xgms}
    sa1 = by_name["SA1_XTD2_XGM/XGM/DOOCS"]
    assert sa1.sase_resolved and "pulseEnergy.numberOfSa1BunchesActual" in sa1.sase_keys
    assert "data.intensitySa1TD" in sa1.sase_keys
    assert not by_name["SPB_XTD9_XGM/XGM/DOOCS"].sase_resolved
    assert info.xgms[0].source == "SPB_XTD9_XGM/XGM/DOOCS"  # the instrument's own XGM first
    # the mock records wavelength 0: treated as not recorded, never as inf
    assert info.photon_energy_kev is None
    assert not any("trainId 0" in p for p in info.problems)  # chunk padding is not a problem
    _json(info)


def test_modern_proc_run_counts_each_module_once(runs):
    with warnings.catch_warnings():
        # reading through a legacy /DET/ alias warns: discovery must not touch them
        warnings.simplefilter("error", DeprecationWarning)
        info = inspect_run(runs["make_modern_spb_proc_run"])
    (det,) = info.detectors
    assert det.corrected and len(det.modules_present) == 16
    assert all("/CORR/" in m.source for m in det.modules)
    assert info.data_kind == "proc" and info.format_version == "1.2"
    # proc folders carry no train-level sources: notes, not problems
    assert not any("timeserver" in p or "XGM" in p for p in info.problems)
    assert any(n.startswith("proc folder") for n in info.notes)


@pytest.mark.parametrize("name, family, instrument, n_mod, ctrl_agg", [
    ("make_agipd500k_run", "AGIPD500K", "HED", 8, "AGIPD500K2G00"),
    ("make_jungfrau_run", "JUNGFRAU", "SPB", 8, "JNGFRCTRL00"),
    ("make_fxe_run", "LPD1M", "FXE", 16, None),
    ("make_scs_run", "DSSC1M", "SCS", 16, None),
])
def test_families_instruments_and_controls(runs, name, family, instrument, n_mod, ctrl_agg):
    info = inspect_run(runs[name])
    (det,) = info.detectors
    assert det.family == family and len(det.modules_present) == n_mod == det.n_modules
    assert info.instrument == instrument
    if ctrl_agg:
        assert det.controls and det.controls[0].aggregators == [ctrl_agg]
    _json(info)


def test_jungfrau_modules_cells_and_control(runs):
    info = inspect_run(runs["make_jungfrau_run"])
    (det,) = info.detectors
    assert det.modules_present == list(range(1, 9))  # JUNGFRAU numbers modules from 1
    assert det.frames_per_train["max"] == 16  # 16 memory cells per train
    assert det.controls[0].source == "SPB_IRDA_JF4M/DET/CONTROL"
    assert "storageCells" in det.controls[0].settings


def test_dssc_sequences_per_aggregator(runs):
    info = inspect_run(runs["make_scs_run"])
    assert all(info.aggregators[f"DSSC{m:02d}"]["sequences"] == [0, 1] for m in range(16))
    assert info.detectors[0].modules[0].sequences == 2 and info.n_trains == 128


def test_ambiguities_name_the_config_key(runs):
    fxe = inspect_run(runs["make_fxe_run"])  # SA1 and SPB XGMs, neither FXE's own
    assert any("2 XGM candidates" in p and "`sources.xgm`" in p for p in fxe.problems)
    jf = inspect_run(runs["make_fxe_jungfrau_run"])  # JF1M and JF500K side by side
    assert [d.name for d in jf.detectors] == ["FXE_XAD_JF1M", "FXE_XAD_JF500K"]
    assert all(d.missing_modules == [] for d in jf.detectors)  # JNGFR03 of the 500K is not "missing"
    assert any("2 detectors" in p and "`sources.detector`" in p for p in jf.problems)


def test_lpd_module_missing_a_train(runs):
    info = inspect_run(runs["make_lpd_run_mini_missed_train"])
    (det,) = info.detectors
    mod1 = next(m for m in det.modules if m.module == 1)
    assert mod1.trains_without_data == 1 and det.trains_some_modules == 1


def test_epix(runs):
    info = inspect_run(runs["epix"])
    (det,) = info.detectors
    assert (det.family, det.modules_present, det.n_modules) == ("EPIX", [0], 1)
    assert info.instrument == "HED"


def test_bad_files_and_train_id_zero(runs, tmp_path):
    run = tmp_path / "r0238"
    shutil.copytree(runs["make_spb_run"], run, ignore=shutil.ignore_patterns("*.json"))
    with h5py.File(run / "RAW-R0238-DA01-S00000.h5", "r+") as f:
        f["INDEX/trainId"][5] = 0  # a train the DAQ could not label
    (run / "RAW-R0238-AGIPD03-S00001.h5").write_bytes(b"not HDF5" * 64)
    info = inspect_run(run)
    assert info.unreadable_files[0]["file"] == "RAW-R0238-AGIPD03-S00001.h5"
    assert any("RAW-R0238-AGIPD03-S00001.h5 could not be read" in p for p in info.problems)
    assert info.aggregators["AGIPD03"]["unreadable_sequences"] == [1]
    assert info.train_id_zero_rows == 1
    assert any("trainId 0" in p and "RAW-R0238-DA01-S00000.h5" in p for p in info.problems)
    assert any("no data in 1 of 64 trains" in p for p in info.problems)  # the XGM lost that train
    _json(info)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(InspectError, match="does not exist"):
        inspect_run(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InspectError, match=r"not a run folder: it has no HDF5 \(\.h5\) files"):
        inspect_run(empty)
    prop = tmp_path / "raw"
    (prop / "r0001").mkdir(parents=True)
    with pytest.raises(InspectError, match="holds run folders .*r0001"):
        inspect_run(prop)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "RAW-R0001-DA01-S00000.h5").write_text("not HDF5")
    with pytest.raises(InspectError, match="none of its 1 HDF5 files could be opened") as err:
        inspect_run(junk)
    assert "RAW-R0001-DA01-S00000.h5" in str(err.value)
    with pytest.raises(InspectError, match="is a file, not a run folder"):
        inspect_run(junk / "RAW-R0001-DA01-S00000.h5")
    assert issubclass(InspectError, ValueError)


def test_json_has_no_nan(runs):
    info = inspect_run(runs["mid"])
    bad = dataclasses.replace(info, photon_energy_kev=float("nan"), wavelength_nm=float("inf"))
    d = _json(bad)
    assert d["photon_energy_kev"] is None and d["wavelength_nm"] is None


# -- discovery on its own ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["make_spb_run", "make_agipd500k_run", "make_modern_spb_proc_run",
                                  "make_jungfrau_run", "make_fxe_run", "make_scs_run",
                                  "make_fxe_jungfrau_run"])
def test_find_detectors_agrees_with_extra_data(runs, name):
    run = extra_data.RunDirectory(str(runs[name]), parallelize=False)
    ours = sorted(d.name for d in discovery.find_detectors(run))
    theirs = sorted(n for n, _ in identify_multimod_detectors(run))
    assert ours == theirs


def test_timeserver_ranking_and_pick(tmp_path):
    path = tmp_path / "RAW-R0001-DA01-S00000.h5"
    write_file(str(path), [
        UnnamedTimeserver("SPB_RR_SYS/TSYS/UTC-1-S2"),  # our simulator's current name
        Timeserver("SPB_RR_SYS/TSYS/TIMESERVER"),
    ], ntrains=4, chunksize=4, format_version="1.0")
    run = extra_data.RunDirectory(str(tmp_path), parallelize=False)
    cands = discovery.find_timeservers(run, "SPB")
    assert [c.source for c in cands] == ["SPB_RR_SYS/TSYS/TIMESERVER:outputBunchPattern",
                                         "SPB_RR_SYS/TSYS/UTC-1-S2:outputBunchPattern"]
    assert discovery.pick("timeserver", cands).source == cands[0].source
    assert discovery.resolve(run, "timeserver", None) == cands[0].source
    assert discovery.resolve(run, "timeserver", cands[1].source) == cands[1].source
    with pytest.raises(discovery.DiscoveryError, match=r"`sources.timeserver: SPB_X` is not a source"):
        discovery.resolve(run, "timeserver", "SPB_X")


def test_pick_messages():
    with pytest.raises(discovery.DiscoveryError, match=r"no XGM found in r1: looked for .*set `sources.xgm`"):
        discovery.pick("XGM", [], where="r1")
    a = discovery.Candidate("XGM", "A/XGM/DOOCS", "class DoocsXGM", 0, ("DA01",))
    b = discovery.Candidate("XGM", "B/XGM/DOOCS", "class DoocsXGM", 0, ("DA02",))
    c = discovery.Candidate("XGM", "C/XGM/DOOCS", "name", 1)
    assert discovery.pick("XGM", [a]) is a
    assert discovery.pick("XGM", [a, c]) is a  # best rank wins over worse ones
    with pytest.raises(discovery.DiscoveryError) as err:
        discovery.pick("XGM", [a, b, c], "my.key")
    msg = str(err.value)
    assert "2 XGM candidates" in msg and "A/XGM/DOOCS in DA01" in msg and "B/XGM/DOOCS in DA02" in msg
    assert "Set `my.key`" in msg
    assert discovery.pick("detector", ["only"]) == "only"


def test_pulse_pattern_decoder_instead_of_timeserver(tmp_path):
    write_file(str(tmp_path / "RAW-R0003-DA01-S00000.h5"), [
        PulsePatternDecoder("SPB_RR_SYS/MDL/BUNCH_PATTERN"), XGM("SPB_XTD9_XGM/XGM/DOOCS"),
    ], ntrains=4, chunksize=4, format_version="1.0")
    info = inspect_run(tmp_path)
    (ppd,) = info.pulse_pattern_decoders
    assert ppd.source == "SPB_RR_SYS/MDL/BUNCH_PATTERN" and ppd.rank == 0
    assert "class PulsePatternDecoder" in ppd.reason and "sase1.nPulses" in ppd.reason
    assert info.timeservers == []
    assert not any("timeserver" in p for p in info.problems)
    assert any("no detector found" in p for p in info.problems)


def test_guess_instrument_by_votes(tmp_path):
    write_file(str(tmp_path / "RAW-R0001-DA01-S00000.h5"), [
        XGM("SA3_XTD10_XGM/XGM/DOOCS"), XGM("SQS_DIAG1_XGMD/XGM/DOOCS"),
        Timeserver("SQS_RR_UTC/TSYS/TIMESERVER"),
    ], ntrains=4, chunksize=4, format_version="1.0")
    run = extra_data.RunDirectory(str(tmp_path), parallelize=False)
    assert discovery.guess_instrument(run) == "SQS"  # the SA3 tunnel XGM does not vote
    assert discovery.find_detectors(run) == []


# -- our simulator's run ----------------------------------------------------------------

def test_simulated_run_raw_and_proc(tiny_reduced):
    t0 = time.perf_counter()
    info = inspect_run(tiny_reduced["raw_dir"])
    wall = time.perf_counter() - t0
    (det,) = info.detectors
    assert det.name == "SPB_DET_AGIPD1M-1" and det.modules_present == [0, 1] and not det.corrected
    assert det.frames_per_train["max"] == 4 and det.memory_cells["n"] == 4
    assert info.n_trains == 8 and info.instrument == "SPB"
    assert info.aggregators["AGIPD00"]["sequences"] == [0, 1]
    (ctrl,) = det.controls
    # the simulator writes what the facility writes: AGIPD control in its own aggregator
    assert ctrl.source == "SPB_IRU_AGIPD1M1/MDL/FPGA_COMP" and ctrl.aggregators == ["AGIPD1MCTRL00"]
    assert ctrl.settings["bunchStructure.nPulses"] == 4
    assert info.timeservers[0].source == "SPB_RR_SYS/TSYS/TIMESERVER:outputBunchPattern"
    assert info.xgms[0].sase_resolved
    assert info.xgms[0].source == "SPB_XTD9_XGM/XGM/DOOCS"
    assert info.photon_energy_kev is not None and 3 < info.photon_energy_kev < 25
    assert any("module(s) 2–15 missing" in p for p in info.problems)
    _json(info)
    print(f"\ninspect on the simulated raw run: {info.elapsed_s:.3f} s inside, {wall:.3f} s wall")
    assert wall < 10  # generous: measured ~0.15 s after import on the reference machine

    proc = inspect_run(tiny_reduced["corr_dir"])
    assert proc.data_kind == "proc" and proc.detectors[0].corrected
    assert proc.detectors[0].modules_present == [0, 1] and proc.n_trains == 8
    _json(proc)
