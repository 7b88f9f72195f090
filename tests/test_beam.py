"""Pulses and frames as the facility computes them (`xfel_reduce.beam`, GitHub issue 12 item 2).

The runs are written with the facility's own writers: `extra_data.tests.make_examples
.make_spb_run` (16 AGIPD modules, two XGMs and a camera in DA01) plus a timeserver, an XGM
with per-SASE keys, a pulse-pattern decoder, the AGIPD control and the lit-frame finder,
each written with extra-data's `mockdata.base.DeviceBase` in the documented layout,
in aggregators and sequence splits of their own (DA02 S00000/S00001, AGIPD1MCTRL00, DA03).

Oracles, on every frame of detector module 0: extra-redu 1.1.0's
`AgipdLitFrameFinderOffline` (X-ray pulses per frame, energies, sigmas, detector pulse
ids, the pulses' bunch slots), EXtra's `PumpProbePulses` (pump-laser flags) and EXtra's
`XGM` (per-pulse energies). extra-redu and EXtra are imported inside the tests: EXtra's
import takes seconds and should not slow down collecting the suite.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import euxfel_bunch_pattern as ebp
from extra_data import RunDirectory
from extra_data.tests.make_examples import make_spb_run
from extra_data.tests.mockdata.agipd import AGIPDMDL
from extra_data.tests.mockdata.base import DeviceBase
from extra_data.tests.mockdata.mkfile import write_file

from xfel_reduce import beam
from xfel_reduce.io import discovery as disc

FIRST = 10000          # make_spb_run's first train
N_TRAINS = 64          # … and its number of trains (64 frames each)
TS = "SPB_RR_SYS/TSYS/TIMESERVER"
TS_OUT = TS + ":outputBunchPattern"
XGM = "SPB_XTD9_XGM/XGM/DOOCS"
XGM_OUT = XGM + ":output"
DECODER = "SPB_RR_SYS/MDL/BUNCH_PATTERN"
CTRL = "SPB_IRU_AGIPD1M1/MDL/FPGA_COMP"
LITFRM = "SPB_IRU_AGIPD1M1/REDU/LITFRM"
TRIGGER = "SPB_EXP_SYS/TSYS/UTC_1_S3"
MOTOR = "SPB_IRU_AGIPD1M/MOTOR/Z_STEPPER"
DET0 = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
NO_TIMESERVER_TRAIN = FIRST + 5
NO_XGM_TRAIN = FIRST + 10
NO_SA1_TRAIN = FIRST + 7          # SASE1 off (SASE3 still lasing)
NO_LASER_TRAIN = FIRST + 12
ONE_SA1_TRAIN = FIRST + 9         # a single SASE1 pulse: the PPL anchor "pulse_offset" is extrapolated
SA1 = ebp.DESTINATION_T4D
SA3 = ebp.DESTINATION_T4D | ebp.PHOTON_LINE_DEFLECTION
SA2 = ebp.DESTINATION_T5D
LP_SPB = int(ebp.PPL_BITS.LP_SPB)


# -- writers: extra-data's DeviceBase with the values of the documented layout ----------------

def _run_value_row(key, value):
    if isinstance(value, str):
        return (key, None, value)
    if isinstance(value, bool):
        return (key, "u1", int(value))
    return (key, "i4" if isinstance(value, int) else "f8", value)


class TrainDevice(DeviceBase):
    """A device whose CONTROL values and pipeline data are given per train of the run.

    ``control`` maps a key path (``bunchStructure/nPulses``) to an array with one row per
    train of the run (RUN holds the first, the value at run start); ``pipeline`` maps a
    key path (``data/intensityTD``) of the output ``channel`` to rows per train of the
    run, written for ``data_trains`` only, and indexed per key group as the DAQ does
    (``INDEX/<device>:<channel>/data/first|count``).
    """

    def __init__(self, device_id, *, control=None, run_values=None, channel=None, pipeline=None,
                 data_trains=None):
        super().__init__(device_id)
        self.control = {k: np.asarray(v) for k, v in (control or {}).items()}
        self.control_keys = [(k, v.dtype.str, v.shape[1:]) for k, v in self.control.items()]
        self.extra_run_values = [_run_value_row(k, v) for k, v in (run_values or {}).items()]
        self.pipeline = {k: np.asarray(v) for k, v in (pipeline or {}).items()}
        self.channel = channel
        groups = sorted({k.split("/", 1)[0] for k in self.pipeline})
        self.output_channels = tuple(f"{channel}/{g}" for g in groups)
        self.instrument_keys = [(k, v.dtype.str, v.shape[1:]) for k, v in self.pipeline.items()]
        self.data_trains = np.arange(FIRST, FIRST + N_TRAINS) if data_trains is None else np.asarray(data_trains)

    def write_control(self, f):
        super().write_control(f)
        rows = np.arange(self.firsttrain, self.firsttrain + self.ntrains) - FIRST
        for key, values in self.control.items():
            f[f"CONTROL/{self.device_id}/{key}/value"][:] = values[rows]
            f[f"RUN/{self.device_id}/{key}/value"][0] = values[0]

    def write_instrument(self, f):
        if not self.pipeline:
            return
        tids = np.arange(self.firsttrain, self.firsttrain + self.ntrains, dtype=np.uint64)
        has = np.isin(tids, self.data_trains)
        count = has.astype(np.uint64)
        src = f"{self.device_id}:{self.channel}"
        rows = (tids[has] - FIRST).astype(int)
        for group in {k.split("/", 1)[0] for k in self.pipeline}:
            f.create_dataset(f"INDEX/{src}/{group}/first", data=np.cumsum(count) - count, maxshape=(None,))
            f.create_dataset(f"INDEX/{src}/{group}/count", data=count, maxshape=(None,))
            f.create_dataset(f"INSTRUMENT/{src}/{group}/trainId", data=tids[has], maxshape=(None,))
        for key, values in self.pipeline.items():
            f.create_dataset(f"INSTRUMENT/{src}/{key}", data=values[rows],
                             maxshape=(None,) + values.shape[1:])


class AgipdControl(AGIPDMDL):
    """extra-data's AGIPD control mock with the bunch structure of the test and its RUN identity."""

    def __init__(self, device_id, n_frames, first_pulse, rate, integration_time):
        super().__init__(device_id)
        self.settings = dict(n_frames=n_frames, first_pulse=first_pulse, rate=rate, itime=integration_time)
        self.extra_run_values = [("classId", None, "AgipdComposite"), ("deviceId", None, device_id),
                                 ("patternType", None, "XRay")]

    def write_control(self, f):
        super().write_control(f)
        s = self.settings
        for grp in (f"CONTROL/{self.device_id}/", f"RUN/{self.device_id}/"):
            f[grp + "bunchStructure/nPulses/value"][()] = s["n_frames"]
            f[grp + "bunchStructure/firstPulse/value"][()] = s["first_pulse"]
            f[grp + "bunchStructure/repetitionRate/value"][()] = s["rate"]
            f[grp + "integrationTime/value"][()] = s["itime"]
            f[grp + "patternTypeIndex/value"][()] = 0


# -- the beam of the test runs -------------------------------------------------------------------

def make_beam(rng, *, sa1_spacing, sa1_start, n_sa1, sa3_interleaved=True):
    """Bunch tables, XGM arrays and decoder lists for the 64 trains.

    SASE3 pulses come first (slots 40, 44, …) and, with ``sa3_interleaved``, also between
    SASE1 pulses (odd slots), so that ``intensityTD`` (all T4D pulses in order) must be
    split. SASE2 pulses (T5D) are elsewhere; the pump laser (LP_SPB) starts at slot 0 as in
    real tables.
    """
    tables = np.zeros((N_TRAINS, 2700), np.uint32)
    for t in range(N_TRAINS):
        tid = FIRST + t
        n1 = 0 if tid == NO_SA1_TRAIN else 1 if tid == ONE_SA1_TRAIN else n_sa1(t)
        s1 = sa1_start(t)
        sa1_slots = s1 + sa1_spacing * np.arange(n1)
        sa3_slots = list(40 + 4 * np.arange(8 + t % 8))
        if sa3_interleaved:
            sa3_slots += [s1 + 1 + 8 * i for i in range(3)]
        tables[t, sa3_slots] = SA3
        tables[t, sa1_slots] = SA1
        tables[t, 1200 + 8 * np.arange(10)] = SA2
        if tid != NO_LASER_TRAIN:
            tables[t, 4 * np.arange(12 + t % 5)] |= LP_SPB
        tables[t] |= np.uint32(rng.integers(1, 16)) * (tables[t] != 0)   # charge bits
    line = ebp.is_sase(tables, 1) | ebp.is_sase(tables, 3)
    td = np.ones((N_TRAINS, 1000), np.float32)
    td_sig = np.ones((N_TRAINS, 1000), np.float32)
    sa = {1: np.ones((N_TRAINS, 1000), np.float32), 3: np.ones((N_TRAINS, 1000), np.float32)}
    sa_sig = {1: np.ones((N_TRAINS, 1000), np.float32), 3: np.ones((N_TRAINS, 1000), np.float32)}
    for t in range(N_TRAINS):
        slots = np.flatnonzero(line[t])
        e = rng.uniform(300, 1500, slots.size).astype(np.float32)
        s = rng.uniform(5, 50, slots.size).astype(np.float32)
        td[t, :slots.size], td_sig[t, :slots.size] = e, s
        for n in (1, 3):
            mine = ebp.is_sase(tables[t, slots], n)
            sa[n][t, :mine.sum()], sa_sig[n][t, :mine.sum()] = e[mine], s[mine]
    decoder = {}
    for node, mask in (("sase1", ebp.is_sase(tables, 1)), ("sase2", ebp.is_sase(tables, 2)),
                       ("sase3", ebp.is_sase(tables, 3)), ("laser", ebp.is_laser(tables, LP_SPB)),
                       ("maindump", np.zeros_like(line))):
        ids = np.zeros((N_TRAINS, 2700), np.int32)
        for t in range(N_TRAINS):
            p = np.flatnonzero(mask[t])
            ids[t, :p.size] = p
        decoder[f"{node}/pulseIds"] = ids
        decoder[f"{node}/nPulses"] = mask.sum(axis=1).astype(np.int32)
    return dict(tables=tables, td=td, td_sig=td_sig, sa=sa, sa_sig=sa_sig, decoder=decoder)


def litfrm_config(align="by first pulse", detector_distance=500.0, trigger_delay_ref=1_000_000):
    return {
        "classId": "AgipdLitFrameFinder", "deviceId": LITFRM, "detectorId": CTRL,
        "alignMethod": align, "instrumentName": "SPB", "referenceFrame": 1,
        "trigger/deviceId": TRIGGER, "trigger/name": "backTrg3",
        "motor/deviceId": MOTOR, "motor/positionProperty": "encoderPosition",
        "motor/unitConversionCoef": 1e-3,
        "referenceDelay/dynamic/delay": trigger_delay_ref, "referenceDelay/dynamic/pulse": 0,
        "referenceDelay/dynamic/frame": 1, "referenceDelay/dynamic/repetitionRate": 4.5,
        "referenceDelay/dynamic/position": 1000.0,
        "referenceDelay/static/delay": -1, "referenceDelay/static/pulse": 0,
        "referenceDelay/static/frame": 1, "referenceDelay/static/repetitionRate": 4.5,
        "referenceDelay/static/position": 0.0,
        "useDistanceDelay": True, "detectorDistance": detector_distance,
    }


def build_run(path: Path, *, rate, integration_time, n_frames=64, first_pulse=0, sa1_spacing=2,
              sa1_start=lambda t: 0 if t == 3 else 200 + 2 * (t % 3), n_sa1=lambda t: 20 + t % 15, sase_keys=True,
              sa3_interleaved=True, litfrm=None, trigger=None, seed=0):
    """An SPB run: make_spb_run + DA02 (timeserver, XGM, decoder) + AGIPD1MCTRL00 (control, LITFRM config)."""
    path.mkdir(parents=True, exist_ok=True)
    make_spb_run(str(path), format_version="1.0")
    rng = np.random.default_rng(seed)
    b = make_beam(rng, sa1_spacing=sa1_spacing, sa1_start=sa1_start, n_sa1=n_sa1, sa3_interleaved=sa3_interleaved)
    all_trains = np.arange(FIRST, FIRST + N_TRAINS)
    pipeline = {"data/intensityTD": b["td"], "data/intensitySigmaTD": b["td_sig"]}
    xgm_control = {"pulseEnergy/wavelengthUsed": np.full(N_TRAINS, 0.1333, np.float32),
                   "pulseEnergy/numberOfBunchesActual": (b["td"] != 1).sum(1).astype(np.float32)}
    if sase_keys:
        for n in (1, 3):
            pipeline[f"data/intensitySa{n}TD"] = b["sa"][n]
            pipeline[f"data/intensitySa{n}SigmaTD"] = b["sa_sig"][n]
            xgm_control[f"pulseEnergy/numberOfSa{n}BunchesActual"] = (b["sa"][n] != 1).sum(1).astype(np.float32)

    def da02():
        return [
            TrainDevice(TS, run_values={"classId": "TimeServer"}, channel="outputBunchPattern",
                        pipeline={"data/bunchPatternTable": b["tables"]},
                        data_trains=all_trains[all_trains != NO_TIMESERVER_TRAIN]),
            TrainDevice(XGM, control=xgm_control, run_values={"classId": "DoocsXGM"}, channel="output",
                        pipeline=pipeline, data_trains=all_trains[all_trains != NO_XGM_TRAIN]),
            TrainDevice(DECODER, control=b["decoder"],
                        run_values={"classId": "PulsePatternDecoder", "laserSource": "LP_SPB"}),
        ]
    # DA02's sequences split the trains 40 + 24, DA01's (make_spb_run) 32 + 32, the control 20 + 44.
    write_file(str(path / "RAW-R0238-DA02-S00000.h5"), da02(), ntrains=40, firsttrain=FIRST,
               chunksize=16, format_version="1.0")
    write_file(str(path / "RAW-R0238-DA02-S00001.h5"), da02(), ntrains=24, firsttrain=FIRST + 40,
               chunksize=16, format_version="1.0")

    def ctrl():
        devices = [AgipdControl(CTRL, n_frames, first_pulse, rate, integration_time)]
        if litfrm is not None:
            devices.append(TrainDevice(LITFRM, run_values=litfrm))
        if trigger is not None:
            devices.append(TrainDevice(TRIGGER, control={
                "backTrg3/event": np.full(N_TRAINS, trigger["event"], np.uint32),
                "backTrg3/delay": np.full(N_TRAINS, trigger["delay"], np.uint32)}))
            devices.append(TrainDevice(MOTOR, control={
                "encoderPosition": np.full(N_TRAINS, trigger["motor"], np.float64)}))
        return devices
    write_file(str(path / "RAW-R0238-AGIPD1MCTRL00-S00000.h5"), ctrl(), ntrains=20, firsttrain=FIRST,
               chunksize=1, format_version="1.0")
    write_file(str(path / "RAW-R0238-AGIPD1MCTRL00-S00001.h5"), ctrl(), ntrains=44, firsttrain=FIRST + 20,
               chunksize=1, format_version="1.0")
    return b


def write_litfrm_output(path: Path, r, trains_with_output, energy_scale, no_xgm_train):
    """The online lit-frame finder's output (its `read()` keys) in a DA03 aggregator."""
    rows = {int(t): i for i, t in enumerate(r.meta.trainId)}
    out = r.output
    arrays = {"nFrame": out.nFrame, "nPulsePerFrame": out.nPulsePerFrame,
              "energyPerFrame": out.energyPerFrame.copy(), "energySigma": out.energySigma,
              "dataFramePattern": out.dataFramePattern.astype(np.uint8), "detectorPulseId": out.detectorPulseId,
              "masterPulseId": out.masterPulseId, "xgmPulseId": out.xgmPulseId}
    full = {}
    for k, v in arrays.items():
        a = np.zeros((N_TRAINS,) + v.shape[1:], v.dtype)
        for t, i in rows.items():
            a[t - FIRST] = v[i]
        full[f"data/{k}"] = a
    e = full["data/energyPerFrame"]
    for t, s in energy_scale.items():     # the online XGM calibration differed: not recomputable offline
        e[t - FIRST] *= np.float32(s)
    n = full["data/nPulsePerFrame"][no_xgm_train - FIRST]
    e[no_xgm_train - FIRST] = np.float32(beam.MISSED_XGM_ENERGY) * n   # online: no XGM for this train
    full["data/energySigma"][no_xgm_train - FIRST] = 0
    write_file(str(path / "RAW-R0238-DA03-S00000.h5"),
               [TrainDevice(LITFRM, channel="output", pipeline=full, data_trains=trains_with_output)],
               ntrains=N_TRAINS, firsttrain=FIRST, chunksize=16, format_version="1.0")


# -- oracles -----------------------------------------------------------------------------------

def redu_finder(run, *, timeserver=TS_OUT, decoder=DECODER, litfrm_device="no/such/LITFRM", control=CTRL,
                xgm_output=XGM_OUT):
    """extra-redu's offline lit-frame finder on this run's source names."""
    from extra_redu.litfrm import AgipdLitFrameFinderOffline

    attrs = dict(detector_control_id=control, bunch_pattern_id=timeserver or "none/bunch/pattern",
                 xgm_id=xgm_output, pp_decoder_id=decoder or "none/pp/decoder", data_selector_id=None)
    cls = type("TestLitFrameFinder", (AgipdLitFrameFinderOffline,), attrs)
    # ref_delays is passed fresh: extra-redu fills the (mutable default) dict in place.
    return cls(litfrm_device, run, ref_delays={})


def frames_of(run):
    """The detector frames to annotate: module 0's (trainId, cellId), as the facility indexes LITFRM."""
    kd = run[DET0, "image.cellId"]
    return np.asarray(kd.train_id_coordinates(), np.uint64), kd.ndarray().ravel().astype(np.int64)


def oracle_per_frame(r, tids, cells):
    """extra-redu's per-frame output at the frames (row -1: train not in its output)."""
    trains = np.asarray(r.meta.trainId, np.uint64)
    row = np.searchsorted(trains, tids)
    rowc = np.minimum(row, trains.size - 1)
    row = np.where(trains[rowc] == tids, rowc, -1)
    o = r.output
    take = lambda a: np.where(row >= 0, a[rowc, cells], 0)  # noqa: E731
    return dict(row=row, n_pulses=take(o.nPulsePerFrame), energy=take(o.energyPerFrame),
                sigma=take(o.energySigma), dpid=take(o.detectorPulseId), n_frame=np.where(row >= 0, o.nFrame[rowc], 0))


def sources(**kw):
    base = dict(sase=1, detector_control=CTRL, timeserver=TS_OUT, pp_decoder=None, xgm=XGM, litfrm=None,
                ppl_bit=LP_SPB, instrument="SPB")
    base.update(kw)
    return beam.BeamSources(**base)


def assert_equal_to_redu(fb, r, tids, cells, *, no_xgm=(NO_XGM_TRAIN,)):
    o = oracle_per_frame(r, tids, cells)
    known = o["row"] >= 0
    assert (fb.decided_by[~known] == beam.BY_NONE).all()
    assert not fb.xray[~known].any()
    assert ((fb.reason[~known] & beam.NO_PATTERN) != 0).all()
    np.testing.assert_array_equal(fb.n_pulses[known], o["n_pulses"][known])
    np.testing.assert_array_equal(fb.xray[known], o["n_pulses"][known] > 0)
    np.testing.assert_array_equal(fb.detector_pulse_id[known], o["dpid"][known])
    with_xgm = known & ~np.isin(tids, no_xgm)
    np.testing.assert_array_equal(fb.pulse_energy[with_xgm], o["energy"][with_xgm])
    np.testing.assert_array_equal(fb.pulse_energy_sigma[with_xgm], o["sigma"][with_xgm])
    # Without XGM data extra-redu writes 10000 µJ per pulse; here: 0 and flagged.
    gone = known & np.isin(tids, no_xgm)
    assert gone.any() or not no_xgm
    np.testing.assert_array_equal(o["energy"][gone], np.float32(beam.MISSED_XGM_ENERGY) * o["n_pulses"][gone])
    assert (fb.pulse_energy[gone] == 0).all() and ((fb.reason[gone] & beam.NO_XGM) != 0).all()
    assert fb.beam_data[with_xgm].all()
    return o


def assert_windows_match_master_ids(tb, r, tables):
    """The bunch slots of each train's exposed X-ray pulses are extra-redu's ``masterPulseId``."""
    trains = np.asarray(r.meta.trainId, np.uint64)
    for i, tid in enumerate(trains):
        t = int(np.searchsorted(tb.train_ids, tid))
        n_master = int(r.output.nPulsePerFrame[i].sum())
        expect = r.output.masterPulseId[i, :n_master].astype(np.int64)
        if n_master == 0:
            continue
        k = np.arange(tb.n_frames[t])
        slots = (tb.window_start[t] + k[:, None] * tb.stride + np.arange(tb.exposure)[None, :]).ravel()
        table_row = tables[int(tid) - FIRST]
        got = slots[(slots >= 0) & (slots < 2700)]
        got = got[ebp.is_sase(table_row[got], 1)]
        np.testing.assert_array_equal(got, expect)



# -- fixtures --------------------------------------------------------------------------------

RATES = {  # rate (MHz) → (integration time in clocks, SASE1 spacing in slots)
    4.5: (15, 2),     # one slot per frame, every other frame lit
    2.2: (30, 1),     # two slots integrated, pulses in every slot
    1.1: (60, 1),     # three of four slots integrated: frames of 3 pulses
    0.5: (150, 3),    # seven of eight slots, every third slot lasing
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    built = {}
    for rate, (itime, spacing) in RATES.items():
        path = tmp_path_factory.mktemp(f"spb_{rate}MHz")
        n_sa1 = (lambda t: 20 + t % 15) if spacing > 1 else (lambda t: 60 + t % 25)
        b = build_run(path, rate=rate, integration_time=itime, sa1_spacing=spacing, n_sa1=n_sa1,
                      first_pulse=4 if rate == 1.1 else 0, sase_keys=rate != 1.1,
                      sa3_interleaved=spacing > 1, seed=int(rate * 10))
        built[rate] = (path, b)
    return built


@pytest.fixture(scope="module")
def run_45(runs):
    return RunDirectory(str(runs[4.5][0]))


# -- lit-frame finding equals extra-redu's, on every frame ------------------------------------

@pytest.mark.parametrize("rate", list(RATES))
def test_frames_equal_extra_redu_lit_frame_finder(runs, rate):
    path, b = runs[rate]
    run = RunDirectory(str(path))
    tids, cells = frames_of(run)
    assert tids.size == N_TRAINS * 64
    r = redu_finder(run).process()
    assert r.meta.litFrmDev == "offline/timeserver"
    tb = beam.train_beam(run, sources())
    fb = tb.frames(tids, cells)
    o = assert_equal_to_redu(fb, r, tids, cells)
    assert_windows_match_master_ids(tb, r, b["tables"])
    itime, _ = RATES[rate]
    stride = beam.RATE_TO_STRIDE[f"{rate:.1f}"]
    assert (tb.stride, tb.exposure) == (stride, min(math.ceil(itime / 22), stride))
    assert fb.xray.sum() > 100
    # Train 3's first SASE1 pulse is in slot 0: frame 0's window starts before the table.
    assert tb.mapped[3] and tb.window_start[3] == -stride and fb.xray[tids == FIRST + 3].any()
    if tb.exposure > 1:
        assert fb.n_pulses.max() == (tb.exposure if RATES[rate][1] == 1 else math.ceil(tb.exposure / 3))
    # The decider and the missing-data reasons, per frame.
    names = fb.decided_by_names()
    assert set(names[o["row"] >= 0]) == {"timeserver+AGIPD control"}
    assert set(names[tids == NO_TIMESERVER_TRAIN]) == {"none"}
    assert not fb.xray[tids == NO_SA1_TRAIN].any()


def test_1_1_mhz_frames_integrate_three_pulses(runs):
    path, b = runs[1.1]
    run = RunDirectory(str(path))
    tids, cells = frames_of(run)
    fb = beam.frame_beam(run, tids, cells, sources())
    assert fb.n_pulses.max() == 3
    assert (fb.n_pulses == 3).sum() > 1000
    # Frame 0 is dark, frame 1 holds the first three pulses ("by first pulse", reference frame 1).
    train = (tids == FIRST) & fb.beam_data
    assert fb.n_pulses[train][0] == 0 and fb.n_pulses[train][1] == 3
    # firstPulse 4 at 1.1 MHz: detector pulse ids 4, 8, 12, …
    np.testing.assert_array_equal(fb.detector_pulse_id[train][:4], [4, 8, 12, 16])
    # The XGM here has no per-SASE keys: intensityTD is split by the pattern; the frame's
    # energy is the sum of its pulses' energies.
    pe = beam.pulse_energies(run, sources())
    assert pe.key.startswith("data.intensityTD split")
    row = int(np.searchsorted(pe.train_ids, FIRST))
    np.testing.assert_allclose(fb.pulse_energy[train][1], pe.energy[row, :3].astype(np.float64).sum(), rtol=1e-6)


def test_decoder_instead_of_timeserver(run_45):
    run = run_45
    tids, cells = frames_of(run)
    r = redu_finder(run, timeserver=None).process()
    assert r.meta.litFrmDev == "offline/pp_decoder"
    fb = beam.frame_beam(run, tids, cells, sources(timeserver=None, pp_decoder=DECODER))
    # The decoder has every train, the one the timeserver lacks included.
    assert_equal_to_redu(fb, r, tids, cells)
    assert set(fb.decided_by_names()) == {"decoder+AGIPD control"}
    # With both, the timeserver decides and the decoder fills the train it lacks.
    both = beam.frame_beam(run, tids, cells, sources(pp_decoder=DECODER))
    by = both.decided_by_names()
    assert set(by[tids == NO_TIMESERVER_TRAIN]) == {"decoder+AGIPD control"}
    assert set(by[tids != NO_TIMESERVER_TRAIN]) == {"timeserver+AGIPD control"}
    np.testing.assert_array_equal(both.n_pulses, fb.n_pulses)
    np.testing.assert_array_equal(both.ppl, fb.ppl)


def test_train_without_timeserver_is_flagged_not_zero(run_45):
    tids, cells = frames_of(run_45)
    fb = beam.frame_beam(run_45, tids, cells, sources())
    gone = tids == NO_TIMESERVER_TRAIN
    assert not fb.beam_data[gone].any() and not fb.xray_known[gone].any()
    assert fb.reason_text(int(np.flatnonzero(gone)[0])).startswith("no bunch pattern")
    assert fb.beam_data[~gone & (tids != NO_XGM_TRAIN)].all()
    s = fb.summary()
    json.dumps(s, allow_nan=False)
    assert s["without_beam_data"][beam.REASON_TEXT[beam.NO_PATTERN]] == 64
    assert s["without_beam_data"][beam.REASON_TEXT[beam.NO_XGM]] == 64
    for a in (fb.pulse_energy, fb.pulse_energy_sigma):
        assert np.isfinite(a).all()
    # A frame index beyond the detector's nPulses (64) is flagged too.
    extra = beam.frame_beam(run_45, [FIRST, FIRST], [63, 64], sources())
    assert list(extra.reason & beam.NO_FRAME) == [0, beam.NO_FRAME]


def test_sequence_subset_equals_whole_run(run_45):
    """Train-level data are found by train ID: a subset of trains gives the whole run's values."""
    tids, cells = frames_of(run_45)
    whole = beam.frame_beam(run_45, tids, cells, sources())
    part = (tids >= FIRST + 30) & (tids < FIRST + 50)   # crosses DA01, DA02 and control sequence splits
    sub = beam.frame_beam(run_45, tids[part], cells[part], sources())
    for k in ("n_pulses", "pulse_energy", "pulse_energy_sigma", "ppl", "reason", "decided_by"):
        np.testing.assert_array_equal(getattr(sub, k), getattr(whole, k)[part], err_msg=k)


def test_sase2_line_equals_extra_redu(tmp_path):
    """MID: SASE2 pulses (T5D), an SA2 XGM whose intensityTD lists only them, a MID AGIPD control."""
    path = tmp_path / "mid"
    b = build_run(path, rate=4.5, integration_time=15, seed=7)
    mid_ctrl, sa2_xgm = "MID_EXP_AGIPD1M1/MDL/FPGA_COMP", "SA2_XTD1_XGM/XGM/DOOCS"
    sa2 = ebp.is_sase(b["tables"], 2)
    td = np.ones((N_TRAINS, 1000), np.float32)
    sig = np.ones((N_TRAINS, 1000), np.float32)
    rng = np.random.default_rng(8)
    for t in range(N_TRAINS):
        n = int(sa2[t].sum())
        td[t, :n], sig[t, :n] = rng.uniform(100, 900, n), rng.uniform(1, 9, n)
    write_file(str(path / "RAW-R0238-DA04-S00000.h5"), [TrainDevice(
        sa2_xgm, control={"pulseEnergy/wavelengthUsed": np.full(N_TRAINS, 0.1, np.float32)},
        run_values={"classId": "DoocsXGM"}, channel="output",
        pipeline={"data/intensityTD": td, "data/intensitySigmaTD": sig})],
        ntrains=N_TRAINS, firsttrain=FIRST, chunksize=16, format_version="1.0")
    write_file(str(path / "RAW-R0238-AGIPD1MCTRL01-S00000.h5"), [AgipdControl(mid_ctrl, 64, 0, 4.5, 15)],
               ntrains=N_TRAINS, firsttrain=FIRST, chunksize=1, format_version="1.0")
    run = RunDirectory(str(path))
    tids, cells = frames_of(run)
    r = redu_finder(run, control=mid_ctrl, xgm_output=sa2_xgm + ":output").process()
    src = sources(sase=2, detector_control=mid_ctrl, xgm=sa2_xgm, ppl_bit=int(ebp.PPL_BITS.LP_SASE2),
                  instrument="MID")
    fb = beam.frame_beam(run, tids, cells, src)
    assert_equal_to_redu(fb, r, tids, cells, no_xgm=())
    assert fb.n_pulses.sum() == 8 * (N_TRAINS - 1)   # SASE2 pulses in frames 1, 9, …, 57
    assert not fb.ppl.any()                          # the table has no LP_SASE2 pulses
    # The SASE1 XGM does not measure SASE2 pulses.
    with pytest.raises(beam.BeamError, match="SASE1 line"):
        beam.train_beam(run, sources(sase=2, xgm=XGM))


# -- the recorded lit-frame finder is preferred --------------------------------------------------

def test_recorded_litfrm_is_preferred(tmp_path):
    path = tmp_path / "litfrm"
    build_run(path, rate=4.5, integration_time=15, litfrm=litfrm_config(), seed=3)
    run = RunDirectory(str(path))
    # The online device ran the facility's algorithm with its configuration: extra-redu's
    # process() with the LITFRM device stands in for it; the last 4 trains have no output.
    online = redu_finder(run, litfrm_device=LITFRM).process()
    with_output = np.arange(FIRST, FIRST + N_TRAINS - 4)
    with_output = with_output[with_output != NO_TIMESERVER_TRAIN]
    scaled = {FIRST + 20: 1.25, FIRST + 41: 0.8}
    write_litfrm_output(path, online, with_output, scaled, no_xgm_train=FIRST + 30)
    run = RunDirectory(str(path))
    assert f"{LITFRM}:output" in run.instrument_sources
    tids, cells = frames_of(run)

    src = sources(litfrm=LITFRM)
    tb = beam.train_beam(run, src)
    fb = tb.frames(tids, cells)
    recorded = redu_finder(run, litfrm_device=LITFRM).read()
    assert recorded.meta.litFrmDev == LITFRM
    rec = oracle_per_frame(recorded, tids, cells)
    by_lit = np.isin(tids, with_output)
    assert set(fb.decided_by_names()[by_lit]) == {"LITFRM"}
    np.testing.assert_array_equal(fb.n_pulses[by_lit], rec["n_pulses"][by_lit])
    ok = by_lit & ~np.isin(tids, [FIRST + 30, NO_XGM_TRAIN])
    np.testing.assert_array_equal(fb.pulse_energy[ok], rec["energy"][ok])
    np.testing.assert_array_equal(fb.pulse_energy_sigma[ok], rec["sigma"][ok])
    # The scaled trains prove the recorded values were taken, not recomputed.
    offline = beam.train_beam(run, src, prefer_litfrm=False).frames(tids, cells)
    for t, s in scaled.items():
        sel = (tids == t) & fb.xray
        np.testing.assert_array_equal(fb.pulse_energy[sel], (offline.pulse_energy[sel] * np.float32(s)))
    # The online device had no XGM for two trains: flagged, energy 0 (not 10000 µJ per pulse).
    gone = np.isin(tids, [FIRST + 30, NO_XGM_TRAIN]) & fb.xray
    assert gone.any() and (fb.pulse_energy[gone] == 0).all() and ((fb.reason[gone] & beam.NO_XGM) != 0).all()
    # Trains without recorded output are computed offline, equal to extra-redu's process().
    rest = ~by_lit & (tids != NO_TIMESERVER_TRAIN)
    o = oracle_per_frame(online, tids, cells)
    np.testing.assert_array_equal(fb.n_pulses[rest], o["n_pulses"][rest])
    np.testing.assert_array_equal(fb.pulse_energy[rest], o["energy"][rest])
    assert set(fb.decided_by_names()[rest]) == {"timeserver+AGIPD control"}
    # PPL comes from the pattern in both cases; the detector control is the one LITFRM names.
    np.testing.assert_array_equal(fb.ppl, offline.ppl)
    no_ctrl = beam.train_beam(run, sources(litfrm=LITFRM, detector_control=None))
    assert no_ctrl.timing.control == CTRL
    assert any("no data for 5 of 64 trains" in n for n in tb.notes)   # 4 + the one without pattern


def test_alignment_by_reference_delay(tmp_path):
    # Shift = (ref.delay + ref.frame·24 − trigger delay − distance term) / 24 = (24 + 48 − 0.07) / 24 → 3.
    config = litfrm_config(align="by reference delay")
    trigger = dict(event=180, delay=config["referenceDelay/dynamic/delay"] - 48, motor=300.0)
    path = tmp_path / "refdelay"
    build_run(path, rate=4.5, integration_time=15, litfrm=config, trigger=trigger, seed=5)
    run = RunDirectory(str(path))
    tids, cells = frames_of(run)
    finder = redu_finder(run, litfrm_device=LITFRM)
    r = finder.process()
    assert finder.alignMethod.value == "by reference delay"
    align = beam.alignment_from_litfrm(run, LITFRM)
    assert align.method == "by reference delay" and align.reference_delays["dynamic"].frame == 1
    assert beam.alignment_shift(run, align, 1, 1) == 3
    fb = beam.frame_beam(run, tids, cells, sources(litfrm=LITFRM))
    assert_equal_to_redu(fb, r, tids, cells)
    # The first pulse lands in frame 3, not in frame 1 as "by first pulse" would put it.
    first = (tids == FIRST) & fb.xray
    assert cells[first][0] == 3
    by_first = beam.frame_beam(run, tids, cells, sources(litfrm=LITFRM), alignment=beam.Alignment())
    assert cells[(tids == FIRST) & by_first.xray][0] == 1


# -- pump laser equals EXtra's PumpProbePulses -------------------------------------------------

@pytest.mark.parametrize("anchor", [dict(bunch_table_offset=0), dict(bunch_table_offset=6),
                                    dict(pulse_offset=1), dict(bunch_table_position=204)])
@pytest.mark.parametrize("pattern_source", ["timeserver", "decoder"])
def test_ppl_equals_pump_probe_pulses(run_45, anchor, pattern_source):
    from extra.components import PumpProbePulses

    run = run_45
    tids, cells = frames_of(run)
    (mode, value), = anchor.items()
    src = sources() if pattern_source == "timeserver" else sources(timeserver=None, pp_decoder=DECODER)
    tb = beam.train_beam(run, src, ppl=beam.PplOffset(mode, value))
    fb = tb.frames(tids, cells)
    ppp = PumpProbePulses(run, source=TS_OUT if pattern_source == "timeserver" else DECODER,
                          instrument=(1, ebp.PPL_BITS.LP_SPB), **anchor)
    ppl_mask = ppp.pulse_mask(labelled=False, field="ppl")
    fel_mask = ppp.pulse_mask(labelled=False, field="fel")
    ppp_trains = np.asarray(ppp.pulse_counts(labelled=True).index, np.uint64)
    # Per frame: a PPL pulse of EXtra's pattern among the slots the frame integrates.
    expect = np.zeros(tids.size, bool)
    for i, tid in enumerate(ppp_trains):
        t = int(np.searchsorted(tb.train_ids, tid))
        if not tb.mapped[t]:
            continue
        sel = np.flatnonzero(tids == tid)
        slots = tb.window_start[t] + cells[sel, None] * tb.stride + np.arange(tb.exposure)[None, :]
        inside = (slots >= 0) & (slots < ppl_mask.shape[1])
        expect[sel] = (ppl_mask[i, np.clip(slots, 0, ppl_mask.shape[1] - 1)] & inside).any(axis=1)
        # The X-ray pulses the frames integrate are EXtra's FEL pulses.
        fel = (fel_mask[i, np.clip(slots, 0, ppl_mask.shape[1] - 1)] & inside).sum(axis=1)
        np.testing.assert_array_equal(fb.n_pulses[sel], fel)
    known = np.isin(tids, ppp_trains)
    np.testing.assert_array_equal(fb.ppl[known], expect[known])
    assert fb.ppl.any() and (fb.xray & ~fb.ppl).any()
    assert not fb.ppl[tids == NO_LASER_TRAIN].any()
    one = (tids == ONE_SA1_TRAIN) & fb.xray
    assert one.sum() == 1 and fb.ppl_known[one].all()


# -- XGM energies equal EXtra's XGM -------------------------------------------------------------

@pytest.mark.parametrize("sase", [1, 3])
@pytest.mark.parametrize("prefer_sase_keys", [True, False])
def test_xgm_energies_equal_extra_xgm(run_45, sase, prefer_sase_keys):
    from extra.components import XGM as ExtraXGM

    pe = beam.pulse_energies(run_45, sources(sase=sase), prefer_sase_keys=prefer_sase_keys)
    split = "data.intensityTD split by the bunch pattern"
    assert pe.key == (f"data.intensitySa{sase}TD" if prefer_sase_keys else split)
    ref = ExtraXGM(run_45, XGM, default_sase=sase).pulse_energy()
    ref_tids = ref.trainId.values.astype(np.uint64)
    common = np.intersect1d(pe.train_ids[pe.xgm_data & pe.pattern_data], ref_tids)
    assert common.size == N_TRAINS - 2      # no timeserver for one train, no XGM for another
    for tid in common:
        i = int(np.searchsorted(pe.train_ids, tid))
        e_ref = ref.sel(trainId=tid).values
        n = int(pe.n_pulses[i])
        np.testing.assert_array_equal(pe.energy[i, :n], e_ref[:n])
        assert np.isnan(e_ref[n:]).all()        # EXtra: NaN past the train's pulses
        assert pe.ok[i, :n].all()


def test_xgm_without_sase_keys_is_split_like_extra(runs):
    """intensityTD lists SASE1 and SASE3 pulses together: the SASE1 ones are picked by the pattern."""
    from extra.components import XGM as ExtraXGM, XrayPulses, MachinePulses

    run = RunDirectory(str(runs[1.1][0]))
    assert "data.intensitySa1TD" not in run[XGM_OUT]
    pe = beam.pulse_energies(run, sources())
    main = ExtraXGM(run, XGM).pulse_energy()           # not SASE-resolved: all T4D pulses
    sa1 = XrayPulses(run, source=TS_OUT, sase=1).pulse_ids(labelled=True)
    t4d = MachinePulses(run, source=TS_OUT, mask=ebp.DESTINATION_T4D).pulse_ids(labelled=True)
    checked = 0
    for tid in main.trainId.values:
        if tid not in sa1.index.get_level_values(0) or tid == NO_XGM_TRAIN:
            continue
        pos = np.searchsorted(t4d.loc[tid].values, sa1.loc[tid].values)
        i = int(np.searchsorted(pe.train_ids, tid))
        np.testing.assert_array_equal(pe.energy[i, :pos.size], main.sel(trainId=tid).values[pos])
        checked += 1
    assert checked > 50


# -- discovery, errors, timing ---------------------------------------------------------------

def test_discover_beam_sources(run_45):
    # make_spb_run's two mock XGMs plus ours: several candidates, the config key is named.
    with pytest.raises(disc.DiscoveryError, match="sources.xgm"):
        beam.discover_beam_sources(run_45)
    found = beam.discover_beam_sources(run_45, xgm=XGM)
    assert found == beam.BeamSources(sase=1, detector_control=CTRL, timeserver=TS_OUT, pp_decoder=DECODER,
                                      xgm=XGM, litfrm=None, ppl_bit=LP_SPB, instrument="SPB")
    assert beam.discover_beam_sources(run_45, xgm=XGM, ppl_bit="LP_FXE").ppl_bit == int(ebp.PPL_BITS.LP_FXE)


def test_from_the_workflow_resolved_sources(run_45):
    """`io.trains.resolve_sources` (the workflow's choice of sources) converts one to one."""
    from xfel_reduce.io.trains import resolve_sources

    rs = resolve_sources({"instrument": "SPB", "sources": {"xgm": XGM, "timeserver": TS_OUT}}, run_45)
    src = beam.BeamSources.from_run_sources(rs)
    assert (src.sase, src.timeserver, src.pp_decoder, src.xgm, src.detector_control, src.ppl_bit) == \
        (1, TS_OUT, DECODER, XGM_OUT, CTRL, LP_SPB)
    tids, cells = frames_of(run_45)
    np.testing.assert_array_equal(beam.frame_beam(run_45, tids, cells, src).n_pulses,
                                  beam.frame_beam(run_45, tids, cells, sources(pp_decoder=DECODER)).n_pulses)


def test_errors_name_what_to_set(run_45):
    with pytest.raises(beam.BeamError, match="sources.timeserver"):
        beam.train_beam(run_45, sources(timeserver="SPB_NO/TSYS/TIMESERVER:outputBunchPattern"))
    with pytest.raises(beam.BeamError, match="SASE2 line"):
        beam.train_beam(run_45, sources(xgm=XGM, xgm_sase=2))
    with pytest.raises(beam.BeamError, match="ppl_bit"):
        beam.BeamSources(ppl_bit=3)
    with pytest.raises(beam.BeamError, match="not in the beam table"):
        beam.train_beam(run_45, sources(), [FIRST]).frames([FIRST + 1], [0])
    with pytest.raises(beam.BeamError, match="trigger device"):
        beam.train_beam(run_45, sources(), alignment=beam.Alignment(method="by reference delay"))


def test_timing_from_the_facility_control_mock(tmp_path):
    """extra-data's own AGIPD control mock (make_agipd1m_run): no classId, nPulses 0."""
    from extra_data.tests.make_examples import make_agipd1m_run

    make_agipd1m_run(str(tmp_path), rep_rate=False, integration_time=False)
    run = RunDirectory(str(tmp_path))
    timing = beam.read_detector_timing(run, CTRL)
    assert (timing.stride, timing.exposure, timing.n_frames) == (1, 1, 0)
    assert len(timing.notes) == 2
    found = beam.discover_beam_sources(run)
    assert found.detector_control == CTRL and found.timeserver is None and found.xgm is None
    tids, cells = frames_of(run)
    fb = beam.frame_beam(run, tids, cells, found)
    # No pattern, no XGM, and the control says 0 frames: every frame flagged, none X-ray.
    assert not fb.xray.any() and not fb.beam_data.any()
    assert ((fb.reason & beam.NO_PATTERN) != 0).all() and ((fb.reason & beam.NO_FRAME) != 0).all()
