"""Acceptance of GitHub issue 12 ("facility-real data") on runs in the facility's own layout.

Every input run here is written with the facility's writers only: extra-data's
``extra_data.tests.mockdata`` (``write_file``, ``AGIPDModule``, ``LPDModule``,
``DSSCModule``, ``AGIPDMDL``) and the devices of ``test_beam`` built on extra-data's
``DeviceBase`` (timeserver, XGM, AGIPD control) with the values of the documented layout
(FACILITY.md): a ``bunchPatternTable`` of 2700 slots, an XGM whose ``intensityTD`` lists
the SASE1/3 tunnel's pulses in order (SASE3 pulses before SASE1 ones, and between them),
with ``intensitySa1TD``/``intensitySa3TD`` and ``intensitySigmaTD``, and the AGIPD
control in an aggregator of its own (``AGIPD1MCTRL00``, class ``AgipdComposite``) with
``bunchStructure.*`` and ``integrationTime``. The sequence splits of the aggregators
differ on purpose (train data are found by train ID, never by sequence number).

What is checked (the issue's acceptance):

1. an AGIPD proc-only run (modern CORR names with extra-data's legacy-name links, no
   RAW detector files, no darks) reduces end to end through the Snakemake workflow:
   hits planted in ``image.data`` are found (recall >= 0.98, precision reported and
   bounded), X-ray flags equal extra-redu's ``AgipdLitFrameFinderOffline`` on every
   frame, NaN pixels are masked and counted, the summary says ``bytes_in_from: proc``
   and no JSON holds NaN;
2. a run without beam data stops with an error naming ``annotation.xray_frames``, and
   reduces once ``annotation.xray_frames: all`` is declared (decider "declared");
3. ``trainId == 0`` rows (with data behind them) are neither a crash nor a train;
4. every instrument profile (SPB, MID, FXE, HED, SCS, SQS) resolves its timeserver, XGM,
   SASE, laser bit and AGIPD control on a mock run of that instrument and records how;
   for AGIPD at SPB/MID/HED the workflow builds its DAG (``snakemake -n``).

How the planted hits are made detectable: the corrected data are in photons; X-ray
frames carry a sparse background of single photons (about 130 lit pixels per module,
Poisson), so the adaptive threshold (median + 5 sigma_IQR over the run) sits near 300
lit pixels; a hit is a disc of about 1000-2500 pixels of >= 1 photon on one module,
far above it. Bright discs are also planted in frames *without* X-rays (decoys): a
hit finder that ignored the lit-frame finder's flags would count them.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import euxfel_bunch_pattern as ebp
import h5py
import numpy as np
import pytest
import yaml
from extra_data import RunDirectory
from extra_data.tests.mockdata import write_file
from extra_data.tests.mockdata.detectors import AGIPDModule, DSSCModule, LPDModule

# The facility-layout devices (DeviceBase subclasses) and the extra-redu oracle of the
# beam module's tests; their rows are indexed from test_beam.FIRST, the mocks' first train.
from test_beam import FIRST, AgipdControl, TrainDevice, redu_finder

from xfel_reduce import annotate, beam, steps
from xfel_reduce.config import INSTRUMENTS, ppl_bit_value
from xfel_reduce.io import sources
from xfel_reduce.io.redu import read_frame_table, read_partials
from xfel_reduce.io.runs import InputDataError
from xfel_reduce.io.trains import open_train_data, resolve_sources, train_files

REPO = Path(__file__).resolve().parents[1]

N_FRAMES = 32                 # frames per train of extra-data's modern proc mock
MODULES = [0, 1]              # modules written (and configured): a small AGIPD
SA1 = ebp.DESTINATION_T4D
SA3 = ebp.DESTINATION_T4D | ebp.PHOTON_LINE_DEFLECTION
SA2 = ebp.DESTINATION_T5D
SASE_CODE = {1: SA1, 2: SA2, 3: SA3}
XGM_UNUSED = 1.0              # the XGM's value in slots without a pulse

# -- the proc-only SPB run of items 1 and 3 -------------------------------------------------
PROC_RUN = 142                # make_modern_spb_proc_run's run number
PROC_TRAINS = 24              # two proc sequences of 12 trains
PROC_TRAINS_PER_SEQ = 12
NO_TIMESERVER = 5             # train index without timeserver data: no X-ray flags known
NO_SASE1 = 9                  # train index where SASE1 does not lase (SASE3 does)
SPB = INSTRUMENTS["SPB"]


# -- beam: bunch pattern, XGM ----------------------------------------------------------------

@dataclass
class Beam:
    """Bunch tables and XGM arrays of a run, and the X-ray frames they imply.

    ``xray_cells[t]`` are the frames of train index *t* that integrate a pulse of the
    instrument's SASE, by construction: at 4.5 MHz with one slot per frame and the first
    X-ray pulse in frame 1 (extra-redu's default alignment), the instrument's pulses every
    second slot light frames 1, 3, 5, …
    """

    sase: int
    tables: np.ndarray
    xgm: dict[str, np.ndarray]
    xgm_control: dict[str, np.ndarray]
    n_own: np.ndarray
    xray_cells: list[np.ndarray] = field(default_factory=list)


def make_beam(sase: int, ppl_bit: int, n_trains: int, seed: int, *, no_own: int | None = None) -> Beam:
    """The beam of *n_trains* trains for an instrument on *sase*.

    The tunnel-mate SASE (3 for SASE1, 1 for SASE3) lases too, before the instrument's
    pulses and between them; SASE2 instruments see SASE1/3 pulses in the table on the
    other line. The pump laser bit is set from slot 0 as in real tables; charge bits are
    set on every bunch.
    """
    rng = np.random.default_rng(seed)
    tables = np.zeros((n_trains, 2700), np.uint32)
    mate = {1: SA3, 3: SA1, 2: SA1}[sase]
    n_own = np.zeros(n_trains, int)
    cells = []
    for t in range(n_trains):
        n = 0 if t == no_own else 4 + t % 8
        start = 300 + 2 * (t % 3)
        tables[t, 40 + 4 * np.arange(6 + t % 3)] = mate
        tables[t, start + 1 + 4 * np.arange(2)] = mate     # odd slots: never in an own frame window
        tables[t, start + 2 * np.arange(n)] = SASE_CODE[sase]
        tables[t, 1200 + 8 * np.arange(5)] |= SA2 if sase != 2 else SA1
        tables[t, 4 * np.arange(3 + t % 4)] |= np.uint32(ppl_bit)
        tables[t] |= np.uint32(rng.integers(1, 16)) * ((tables[t] & ebp.DESTINATION_MASK) != 0)
        n_own[t] = n
        cells.append(1 + 2 * np.arange(n))
    xgm, control = _xgm_arrays(tables, sase, rng)
    return Beam(sase, tables, xgm, control, n_own, cells)


def _xgm_arrays(tables: np.ndarray, sase: int, rng) -> tuple[dict, dict]:
    """An XGM on the instrument's line: ``intensityTD`` lists the line's pulses in order.

    On the SASE1/3 line both SASEs' pulses are listed together (SASE3 first here) and the
    per-SASE keys split them, as the SASE-resolved DOOCS XGM records them.
    """
    n_trains = tables.shape[0]
    on_line = (ebp.is_sase(tables, 1) | ebp.is_sase(tables, 3)) if sase != 2 else ebp.is_sase(tables, 2)
    td = np.full((n_trains, 1000), XGM_UNUSED, np.float32)
    sig = np.full((n_trains, 1000), XGM_UNUSED, np.float32)
    per_sase = {n: np.full((n_trains, 1000), XGM_UNUSED, np.float32) for n in (1, 3)}
    for t in range(n_trains):
        slots = np.flatnonzero(on_line[t])
        e = rng.uniform(300, 1500, slots.size).astype(np.float32)
        td[t, :slots.size] = e
        sig[t, :slots.size] = rng.uniform(5, 50, slots.size).astype(np.float32)
        for n in (1, 3):
            mine = np.asarray(ebp.is_sase(tables[t, slots], n))
            per_sase[n][t, :mine.sum()] = e[mine]
    pipeline = {"data/intensityTD": td, "data/intensitySigmaTD": sig}
    control = {"pulseEnergy/wavelengthUsed": np.full(n_trains, 0.1333, np.float32),
               "pulseEnergy/numberOfBunchesActual": on_line.sum(axis=1).astype(np.float32)}
    if sase != 2:
        for n in (1, 3):
            pipeline[f"data/intensitySa{n}TD"] = per_sase[n]
            control[f"pulseEnergy/numberOfSa{n}BunchesActual"] = \
                np.asarray(ebp.is_sase(tables, n)).sum(axis=1).astype(np.float32)
    return pipeline, control


# -- train-level files (DA01, AGIPD control aggregator) -------------------------------------

def _split(n_trains: int, first_part: int) -> list[tuple[int, int]]:
    """(first train index, trains) of two sequences, or one if *first_part* covers all."""
    if first_part >= n_trains:
        return [(0, n_trains)]
    return [(0, first_part), (first_part, n_trains - first_part)]


def write_train_files(raw_dir: Path, run: int, b: Beam, n_trains: int, *,
                      timeserver: str | None, xgm: str | None, extra_xgms: tuple[str, ...] = (),
                      control: str | None = None, control_aggregator: str = "AGIPD1MCTRL00",
                      agipd_class: str = "AgipdComposite", no_timeserver: tuple[int, ...] = (),
                      da_first_part: int = 16, ctrl_first_part: int = 10, gain_mode: int = 0) -> None:
    """DA01 (timeserver, XGMs) and the AGIPD control aggregator of a run.

    ``timeserver`` is the device's output (``…/TSYS/TIMESERVER:outputBunchPattern``),
    ``xgm`` the XGM device; ``extra_xgms`` are further XGM devices with the same data
    (tunnel XGMs beside the instrument's own). The AGIPD control runs 4.5 MHz, one slot
    per frame (integrationTime 15 clocks), N_FRAMES frames from pulse 0, in adaptive gain
    unless ``gain_mode`` (``gainModeIndex``) says otherwise.
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    trains = np.arange(FIRST, FIRST + n_trains)

    def da01():
        devices = []
        if timeserver:
            device, _, channel = timeserver.partition(":")
            devices.append(TrainDevice(device, run_values={"classId": "TimeServer"}, channel=channel,
                                       pipeline={"data/bunchPatternTable": b.tables},
                                       data_trains=np.delete(trains, list(no_timeserver))))
        for name in ([xgm] if xgm else []) + list(extra_xgms):
            devices.append(TrainDevice(name, control=b.xgm_control, run_values={"classId": "DoocsXGM"},
                                       channel="output", pipeline=b.xgm, data_trains=trains))
        return devices

    if timeserver or xgm:
        for seq, (first, n) in enumerate(_split(n_trains, da_first_part)):
            write_file(str(raw_dir / f"RAW-R{run:04d}-DA01-S{seq:05d}.h5"), da01(), ntrains=n,
                       firsttrain=FIRST + first, chunksize=16, format_version="1.2")
    if control:
        for seq, (first, n) in enumerate(_split(n_trains, ctrl_first_part)):
            dev = AgipdControl(control, N_FRAMES, 0, 4.5, 15)
            # Agipd2Composite (500K) records the pattern type as expType (extra-redu reads it).
            ptype = "expType" if agipd_class == "Agipd2Composite" else "patternType"
            dev.extra_run_values = [("classId", None, agipd_class), ("deviceId", None, control),
                                    (ptype, None, "XRay")]
            path = raw_dir / f"RAW-R{run:04d}-{control_aggregator}-S{seq:05d}.h5"
            write_file(str(path), [dev], ntrains=n, firsttrain=FIRST + first, chunksize=1, format_version="1.2")
            if gain_mode:  # a fixed-gain dark (gainModeIndex 1–3; the mock records 0, adaptive)
                with h5py.File(path, "r+") as f:
                    for grp in (f"CONTROL/{control}/", f"RUN/{control}/"):
                        f[grp + "gainModeIndex/value"][()] = gain_mode


# -- detector files ------------------------------------------------------------------------

def write_proc_files(proc_dir: Path, run: int, n_trains: int, trains_per_seq: int,
                     detector: str = "SPB_DET_AGIPD1M-1", legacy: bool = False) -> dict[tuple[int, int], Path]:
    """AGIPD proc files of MODULES, as extra-data's mocks write them.

    Modern (``make_modern_spb_proc_run``): sources ``…/CORR/{m}CH0:output`` with the
    legacy ``…/DET/{m}CH0:xtdf`` links. ``legacy``: older proc, which kept the raw name
    ``…/DET/{m}CH0:xtdf`` for corrected (float) data. Image data are empty (read as 0)
    until planted.
    """
    proc_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for seq, first in enumerate(range(0, n_trains, trains_per_seq)):
        for m in MODULES:
            path = proc_dir / f"CORR-R{run:04d}-AGIPD{m:02d}-S{seq:05d}.h5"
            mod = (AGIPDModule(f"{detector}/DET/{m}CH0", raw=False, frames_per_train=N_FRAMES) if legacy else
                   AGIPDModule(f"{detector}/CORR/{m}CH0", channel_name="output", raw=False,
                               frames_per_train=N_FRAMES, legacy_name=f"{detector}/DET/{m}CH0"))
            write_file(str(path), [mod], ntrains=min(trains_per_seq, n_trains - first), firsttrain=FIRST + first,
                       chunksize=32, format_version="1.2")
            out[(m, seq)] = path
    return out


def write_raw_detector(raw_dir: Path, run: int, family: str, detector: str, n_trains: int = 4,
                       frames: int = N_FRAMES) -> None:
    """RAW module files of a detector (extra-data's module mocks), for MODULES."""
    cls = {"AGIPD": AGIPDModule, "LPD": LPDModule, "DSSC": DSSCModule}[family]
    raw_dir.mkdir(parents=True, exist_ok=True)
    for m in MODULES:
        write_file(str(raw_dir / f"RAW-R{run:04d}-{family}{m:02d}-S00000.h5"),
                   [cls(f"{detector}/DET/{m}CH0", frames_per_train=frames)],
                   ntrains=n_trains, chunksize=32, format_version="1.2")


# -- planted content: hits, decoys, NaN pixels, a masked column -----------------------------

@dataclass
class Truth:
    """What was planted, per frame ``(trainId, cellId)``."""

    hit: set = field(default_factory=set)          # (trainId, cell)
    decoy: set = field(default_factory=set)        # bright non-X-ray frames
    nan_pixels: dict = field(default_factory=dict)  # (trainId, cell) -> NaN pixels, all modules
    xray: set = field(default_factory=set)         # frames that saw X-rays, by construction


MASKED_COLUMN = 7      # module 0: flagged in image.mask and bright in image.data; never lit


def _disc(rng, radius: float) -> np.ndarray:
    """A bright disc of >= 1 photon per pixel at a random place of a module."""
    cy, cx = rng.uniform(radius, 512 - radius), rng.uniform(radius, 128 - radius)
    yy, xx = np.mgrid[:512, :128]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    return np.where(inside, 1.0 + rng.exponential(2.0, (512, 128)), 0.0).astype(np.float32)


def plant(files: dict[tuple[int, int], Path], b: Beam, n_trains: int, no_timeserver: tuple[int, ...],
          seed: int = 11, source: str = "SPB_DET_AGIPD1M-1/CORR/{m}CH0:output") -> Truth:
    """Write photons into ``image.data`` (and NaN, masks): background, hits, decoys.

    One X-ray frame in eight gets a hit on one module; three frames without X-rays
    get a decoy disc; about one frame in eleven gets 15 NaN pixels on module 1, and one
    frame a NaN row (128 pixels) on module 0.
    """
    rng = np.random.default_rng(seed)
    truth = Truth()
    for t in range(n_trains):
        if t not in no_timeserver:
            truth.xray |= {(FIRST + t, int(c)) for c in b.xray_cells[t]}
    xray = sorted(truth.xray)
    # One X-ray frame in eight: hits must stay outliers of the lit-pixel distribution for
    # an adaptive threshold (a quarter would put the upper quartile on them).
    pick = rng.choice(len(xray), size=len(xray) // 8, replace=False)
    truth.hit = {xray[i] for i in pick}
    hit_module = {k: int(rng.integers(len(MODULES))) for k in truth.hit}
    truth.decoy = {(FIRST + 2, 0), (FIRST + 7, 2), (FIRST + no_timeserver[0], 1)} if no_timeserver else \
        {(FIRST + 2, 0), (FIRST + 7, 2)}
    assert not truth.decoy & truth.xray
    nan_frames = {(FIRST + t, c) for t in range(n_trains) for c in range(N_FRAMES) if (t * N_FRAMES + c) % 11 == 3}
    nan_row_frame = (FIRST + 3, 4)

    for (m, seq), path in files.items():
        j = MODULES.index(m)
        with h5py.File(path, "r+") as f:
            grp = f[f"INSTRUMENT/{source.format(m=m)}/image"]
            tids = grp["trainId"][()]
            cells = grp["cellId"][()]
            if m == MODULES[0]:
                grp["mask"][:, :, MASKED_COLUMN] = np.uint32(1)     # OFFSET_OUT_OF_THRESHOLD
            for row, (tid, cell) in enumerate(zip(tids.tolist(), cells.tolist())):
                key = (int(tid), int(cell))
                frame = None
                if key in truth.xray:
                    frame = np.zeros((512, 128), np.float32)
                    n_bg = rng.poisson(130)
                    frame[rng.integers(0, 512, n_bg), rng.integers(0, 128, n_bg)] = 1.0
                if (key in truth.hit and hit_module[key] == j) or (key in truth.decoy and j == 0):
                    frame = (np.zeros((512, 128), np.float32) if frame is None else frame) + \
                        _disc(rng, rng.uniform(18, 28))
                nan_rect = key in nan_frames and j == 1
                nan_row = key == nan_row_frame and j == 0
                if frame is None and (nan_rect or nan_row):
                    frame = np.zeros((512, 128), np.float32)
                if frame is None:
                    continue
                if m == MODULES[0]:
                    frame[:, MASKED_COLUMN] = 50.0          # bad pixels: masked, never lit
                # NaN last: a NaN pixel stays NaN whatever else the frame holds
                if nan_rect:
                    frame[100:103, 20:25] = np.nan
                    truth.nan_pixels[key] = truth.nan_pixels.get(key, 0) + 15
                if nan_row:
                    frame[200, :] = np.nan
                    truth.nan_pixels[key] = truth.nan_pixels.get(key, 0) + 128
                grp["data"][row] = frame
    return truth


# -- workflow runner -------------------------------------------------------------------------

def snakemake(cfg: dict, tmp: Path, *extra: str, name: str = "config.yaml") -> subprocess.CompletedProcess:
    """Run the workflow on *cfg* (written to ``tmp/name``) from the repository root."""
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(path),
                           "--workflow-profile", "profiles/default", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


def proc_config(tmp: Path, run: int, **annotation) -> dict:
    """Workflow config of an SPB proc-only run: facility proc, no darks, no simulation."""
    return {
        "proposal_dir": str(tmp / "p900001"),
        "results_dir": str(tmp / "results"),
        "instrument": "SPB",
        "modules": list(MODULES),
        "runs": [{"run": run, "technique": "spi"}],
        "calibration": {"source": "proc", "proc_dir": str(tmp / "p900001" / "proc"), "trains_per_chunk": 4},
        "annotation": {"hit_mode": "adaptive", "adaptive_window_trains": 50, **annotation},
        "simulate": {"enabled": False},
    }


def strict_json(path: Path):
    """Parse JSON refusing NaN and ±Infinity (which ``json`` otherwise accepts)."""
    def refuse(token):
        raise ValueError(f"{path}: {token} in JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def failure_text(res: subprocess.CompletedProcess, results: Path) -> str:
    """What the user sees of a failed workflow: its output and the failed jobs' logs."""
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(results.rglob("*.log")))
    return res.stdout + res.stderr + logs


# -- item 1: the AGIPD proc-only run ---------------------------------------------------------

@pytest.fixture(scope="module")
def proc_run(tmp_path_factory):
    """The proc-only SPB run: CORR files in proc/r0142, train-level files only in raw/r0142."""
    tmp = tmp_path_factory.mktemp("proc_only")
    pd = tmp / "p900001"
    b = make_beam(1, int(ebp.PPL_BITS.LP_SPB), PROC_TRAINS, seed=1, no_own=NO_SASE1)
    raw = pd / "raw" / f"r{PROC_RUN:04d}"
    write_train_files(raw, PROC_RUN, b, PROC_TRAINS, timeserver=SPB.timeserver, xgm=SPB.xgm,
                      extra_xgms=("SA1_XTD2_XGM/XGM/DOOCS",), control=SPB.agipd_control,
                      no_timeserver=(NO_TIMESERVER,))
    files = write_proc_files(pd / "proc" / f"r{PROC_RUN:04d}", PROC_RUN, PROC_TRAINS, PROC_TRAINS_PER_SEQ)
    truth = plant(files, b, PROC_TRAINS, (NO_TIMESERVER,))
    return tmp, b, truth


@pytest.fixture(scope="module")
def proc_reduced(proc_run):
    tmp, b, truth = proc_run
    cfg = proc_config(tmp, PROC_RUN)
    res = snakemake(cfg, tmp)
    assert res.returncode == 0, failure_text(res, tmp / "results")[-6000:]
    base = tmp / "results" / f"r{PROC_RUN:04d}"
    with h5py.File(base / "aggregate" / "run.h5") as f:
        table = {k: f["annotation"][k][()] for k in f["annotation"]}
    summary = strict_json(base / "summary.json")
    return {"tmp": tmp, "cfg": cfg, "beam": b, "truth": truth, "table": table, "summary": summary,
            "base": base, "res": res}


def test_proc_run_is_facility_proc_without_raw_detector_files(proc_run):
    """The input is what the facility writes for a proc-only run (the test's premise)."""
    tmp, _, _ = proc_run
    pd = tmp / "p900001"
    raw = pd / "raw" / f"r{PROC_RUN:04d}"
    assert not list(raw.glob("*-AGIPD0?-S*.h5")), "no RAW detector files"
    assert sorted(p.name for p in raw.iterdir()) == [
        "RAW-R0142-AGIPD1MCTRL00-S00000.h5", "RAW-R0142-AGIPD1MCTRL00-S00001.h5",
        "RAW-R0142-DA01-S00000.h5", "RAW-R0142-DA01-S00001.h5"]
    proc = RunDirectory(str(pd / "proc" / f"r{PROC_RUN:04d}"))
    assert "SPB_DET_AGIPD1M-1/CORR/0CH0:output" in proc.instrument_sources
    assert proc.legacy_sources == {f"SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf": f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"
                                   for m in MODULES}
    assert len(proc.train_ids) == PROC_TRAINS
    kd = proc["SPB_DET_AGIPD1M-1/CORR/1CH0:output", "image.data"]
    assert kd.dtype == np.float32 and kd.shape == (PROC_TRAINS * N_FRAMES, 512, 128)
    assert not (pd / "raw" / "r0001").exists(), "no dark runs"


def test_proc_only_run_reduces_end_to_end(proc_reduced, record_property):
    r = proc_reduced
    s, t, truth = r["summary"], r["table"], r["truth"]
    assert s["run_type"] == "spi" and s["bytes_in_from"] == "proc"
    assert s["frames_in"] == PROC_TRAINS * N_FRAMES and s["trains"] == PROC_TRAINS
    assert s["frames_incomplete"] == 0
    # Neither darks nor constants nor our own CORR files: the facility's proc was used.
    results = r["tmp"] / "results"
    assert not (results / "calibration").exists() and not (results / "proc").exists()
    # bytes in = the proc files and the train-level RAW files the reduction read
    pd = r["tmp"] / "p900001"
    read = list((pd / "proc" / "r0142").glob("CORR-*.h5")) + list((pd / "raw" / "r0142").glob("RAW-*.h5"))
    assert s["bytes_in"] == sum(p.stat().st_size for p in read)
    # Hits: recall on the planted hits, precision over the frames flagged as hits.
    found = {(int(a), int(c)) for a, c, h in zip(t["trainId"], t["cellId"], t["hit"]) if h}
    tp = len(found & truth.hit)
    recall, precision = tp / len(truth.hit), tp / max(len(found), 1)
    record_property("hit_recall", recall)
    record_property("hit_precision", precision)
    print(f"planted hits {len(truth.hit)}, found {len(found)}, recall {recall:.3f}, precision {precision:.3f}")
    assert len(truth.hit) >= 15
    assert recall >= 0.98
    assert precision >= 0.95
    assert not found & truth.decoy, "bright frames without X-rays are not hits"
    assert s["frames_out"]["hits"] == len(found)
    assert s["hit_rate"] == pytest.approx(len(found) / s["xray_frames"])
    # The bad-pixel column (512 pixels of 50 photons, masked) is never counted as lit: the
    # frames without a hit show the ~260-pixel background only, and so does the threshold.
    assert t["lit_pixels"][t["xray"] & ~t["hit"]].max() < 400
    assert 200 < np.median(t["hit_threshold"][t["xray"]]) < 500
    # reports and the index exist for the proc run (annotation stage only: no calibration)
    assert (r["base"] / "reports" / "annotation.html").is_file()
    assert not (r["base"] / "reports" / "calibration.html").exists()
    assert "r0142/reports/annotation.html" in (results / "index.html").read_text()


def oracle_xray(raw_dir: Path, train_ids: np.ndarray, cells: np.ndarray, *, control: str, timeserver: str,
                xgm_output: str):
    """extra-redu's offline lit-frame finder at the frames: (n_pulses, energy, train in its output)."""
    run = RunDirectory(str(raw_dir))
    r = redu_finder(run, timeserver=timeserver, decoder=None, control=control, xgm_output=xgm_output).process()
    trains = np.asarray(r.meta.trainId, np.uint64)
    row = np.searchsorted(trains, train_ids)
    rowc = np.minimum(row, trains.size - 1)
    known = trains[rowc] == train_ids
    n = np.where(known, r.output.nPulsePerFrame[rowc, cells], 0)
    e = np.where(known, r.output.energyPerFrame[rowc, cells], 0)
    return n, e, known


def test_proc_xray_flags_equal_extra_redu_on_every_frame(proc_reduced):
    r = proc_reduced
    t, truth = r["table"], r["truth"]
    tids, cells = t["trainId"].astype(np.uint64), t["cellId"].astype(np.int64)
    n, e, known = oracle_xray(r["tmp"] / "p900001" / "raw" / "r0142", tids, cells, control=SPB.agipd_control,
                              timeserver=SPB.timeserver, xgm_output=SPB.xgm_output)
    np.testing.assert_array_equal(t["xray"], n > 0)
    np.testing.assert_array_equal(t["n_pulses"], n)
    assert r["summary"]["xray_frames"] == int((n > 0).sum())
    # … and both equal the X-ray frames the beam was built with.
    assert {(int(a), int(c)) for a, c in zip(tids[t["xray"]], cells[t["xray"]])} == truth.xray
    # The train without timeserver data: not in extra-redu's output, no X-ray frame, flagged.
    gone = tids == FIRST + NO_TIMESERVER
    assert not known[gone].any() and not t["beam_data"][gone].any()
    assert set(t["beam_source"][gone]) == {annotate.BEAM_SOURCES.index("none")}
    assert set(t["beam_source"][~gone]) == {annotate.BEAM_SOURCES.index("timeserver+AGIPD control")}
    assert not t["xray"][tids == FIRST + NO_SASE1].any()
    # Pulse energies: the XGM energies of the frames' pulses, as extra-redu sums them.
    np.testing.assert_array_equal(t["pulse_energy"][known], e[known])
    summary = r["summary"]
    # X-ray frames per decider: the train without a pulse pattern has none
    assert summary["xray_frames_decided_by"] == {"timeserver+AGIPD control": int(t["xray"].sum())}
    assert summary["frames_without_beam_data"] == int(gone.sum())


def test_proc_nan_pixels_are_masked_and_counted(proc_reduced):
    r = proc_reduced
    t, truth = r["table"], r["truth"]
    expect = np.array([truth.nan_pixels.get((int(a), int(c)), 0) for a, c in zip(t["trainId"], t["cellId"])])
    assert expect.sum() > 1000
    np.testing.assert_array_equal(t["nan_pixels"], expect)
    # NaN never reaches the photon sums nor the run images.
    assert np.isfinite(t["photons"]).all()
    with h5py.File(r["base"] / "aggregate" / "run.h5") as f:
        for name in f["images"]:
            assert np.isfinite(f["images"][name]["mean"][()]).all(), name


def test_proc_summary_counts_nan_pixels(proc_reduced):
    """The summary reports the NaN pixels of the run (issue 12: "NaN pixels counted")."""
    t, s = proc_reduced["table"], proc_reduced["summary"]
    total = int(t["nan_pixels"].sum())
    assert "nan_pixels" in s, f"summary.json has no nan_pixels (keys: {sorted(s)})"
    got = s["nan_pixels"]
    if isinstance(got, dict):
        assert total in got.values() and int((t["nan_pixels"] > 0).sum()) in got.values(), got
    else:
        assert got == total


def test_no_nan_in_any_json(proc_reduced):
    files = sorted((proc_reduced["tmp"] / "results").rglob("*.json"))
    assert len(files) >= 2
    for p in files:
        strict_json(p)


def test_annotation_files_open_like_facility_data(proc_reduced):
    """The per-sequence annotation is EuXFEL-layout REDU data: extra-data opens it by train ID."""
    base = proc_reduced["base"]
    files = sorted((base / "annotation").glob("REDU-R0142-ANNOT-S*.h5"))
    assert len(files) == 2
    run = RunDirectory(str(base / "annotation"))
    assert len(run.train_ids) == PROC_TRAINS
    tab = [read_frame_table(p, sources.ANNOTATION_SOURCE) for p in files]
    assert sum(x["trainId"].size for x in tab) == PROC_TRAINS * N_FRAMES


def test_legacy_proc_names_reduce_like_modern(tmp_path):
    """Older proc kept the raw source name (``…/DET/{m}CH0:xtdf``): same annotation as modern proc."""
    n = 6
    b = make_beam(1, int(ebp.PPL_BITS.LP_SPB), n, seed=4)
    raw = tmp_path / "raw" / "r0145"
    write_train_files(raw, 145, b, n, timeserver=SPB.timeserver, xgm=SPB.xgm, control=SPB.agipd_control)
    tables = {}
    for kind in ("modern", "legacy"):
        files = write_proc_files(tmp_path / kind, 145, n, n, legacy=kind == "legacy")
        src = "SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf" if kind == "legacy" else "SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"
        plant(files, b, n, (), seed=5, source=src)
        if kind == "legacy":
            with h5py.File(files[(0, 0)]) as f:
                assert "INSTRUMENT/SPB_DET_AGIPD1M-1/CORR" not in f
                assert f["INSTRUMENT/SPB_DET_AGIPD1M-1/DET/0CH0:xtdf/image/data"].dtype == np.float32
        out = tmp_path / kind / "partial.h5"
        steps.annotate_chunk(proc_config(tmp_path, 145), [files[(m, 0)] for m in MODULES], train_files(raw), out)
        tables[kind] = read_partials(out)[0]
    assert tables["modern"]["nan_pixels"].sum() > 0 and tables["modern"]["xray"].sum() > 0
    for k in annotate.COLUMNS:
        np.testing.assert_array_equal(tables["legacy"][k], tables["modern"][k], err_msg=k)


# -- item 2: a run without beam data -------------------------------------------------------

BEAMLESS_RUN = 143


@pytest.fixture(scope="module", params=["no RAW folder", "no timeserver"])
def beamless(request, tmp_path_factory):
    """Proc files and either no train-level files at all, or XGM + AGIPD control without a
    pattern; the workflow run on it once without declared X-ray frames."""
    tmp = tmp_path_factory.mktemp("beamless")
    pd = tmp / "p900001"
    write_proc_files(pd / "proc" / f"r{BEAMLESS_RUN:04d}", BEAMLESS_RUN, 8, 8)
    if request.param == "no timeserver":
        b = make_beam(1, int(ebp.PPL_BITS.LP_SPB), 8, seed=2)
        write_train_files(pd / "raw" / f"r{BEAMLESS_RUN:04d}", BEAMLESS_RUN, b, 8, timeserver=None,
                          xgm=SPB.xgm, control=SPB.agipd_control)
    target = tmp / "results" / f"r{BEAMLESS_RUN:04d}" / "summary.json"
    res = snakemake(proc_config(tmp, BEAMLESS_RUN), tmp, str(target))
    return {"tmp": tmp, "kind": request.param, "res": res, "text": failure_text(res, tmp / "results"),
            "target": target}


def test_run_without_beam_data_stops_naming_xray_frames(beamless):
    res, text = beamless["res"], beamless["text"]
    assert res.returncode != 0 and not beamless["target"].exists()
    assert "Error in rule reduce" in text
    err = next(line for line in text.splitlines() if "InputDataError:" in line)
    print(err)
    assert "annotation.xray_frames" in err
    if beamless["kind"] == "no timeserver":
        assert "no timeserver or pulse-pattern decoder" in err and "sources.timeserver" in err


def test_beam_data_error_names_the_run_folder(beamless, request):
    """Says where: the run's RAW folder (the lead's rule: what, where, what to set)."""
    err = next(line for line in beamless["text"].splitlines() if "InputDataError:" in line)
    assert f"raw/r{BEAMLESS_RUN:04d}" in err, err


def test_declared_xray_frames_reduce_a_run_without_beam_data(beamless):
    tmp, target = beamless["tmp"], beamless["target"]
    res = snakemake(proc_config(tmp, BEAMLESS_RUN, xray_frames="all"), tmp, str(target), name="declared.yaml")
    assert res.returncode == 0, failure_text(res, tmp / "results")[-6000:]
    s = strict_json(target)
    assert s["frames_in"] == s["xray_frames"] == 8 * N_FRAMES
    assert list(s["xray_frames_decided_by"]) == ["declared (annotation.xray_frames)"]
    assert s["bytes_in_from"] == "proc"
    assert s["frames_without_beam_data"] == 8 * N_FRAMES   # declared, not measured


def test_run_without_train_files_never_reads_the_working_directory(tmp_path, monkeypatch):
    """No train-level files means no beam data, whatever lies in the job's working directory.

    ``steps.sequence_beam`` is given the run's train-level files; with none it must say so,
    not list ``RAW-*`` files of the current directory (another run's) as this run's.
    """
    other = tmp_path / "elsewhere"
    b = make_beam(1, int(ebp.PPL_BITS.LP_SPB), 4, seed=6)
    write_train_files(other, 999, b, 4, timeserver=SPB.timeserver, xgm=SPB.xgm, control=SPB.agipd_control)
    monkeypatch.chdir(other)
    tids = np.arange(FIRST, FIRST + 4, dtype=np.uint64)
    with pytest.raises(InputDataError, match="annotation.xray_frames"):
        steps.sequence_beam(proc_config(tmp_path, BEAMLESS_RUN), [], tids)


# -- item 3: trainId == 0 rows ----------------------------------------------------------------

ZERO_RUN = 144
ZERO_TRAINS = 8          # real trains
ZERO_ROWS = 2            # rows with trainId 0 after them, with data


def zero_train_ids(path: Path, n_zero: int) -> None:
    """Set the last *n_zero* train rows of a file to trainId 0, as a DAQ that lost the IDs.

    The data of those rows stay (counts > 0): INDEX/trainId, the per-frame/-entry
    ``trainId`` datasets and the CONTROL timestamps keep their length; only IDs become 0.
    """
    with h5py.File(path, "r+") as f:
        tid = f["INDEX/trainId"]
        n_real = int((tid[()] != 0).sum())
        zero = set(tid[n_real - n_zero:n_real].tolist())
        tid[n_real - n_zero:n_real] = 0

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and name.startswith("INSTRUMENT/") and name.endswith("trainId"):
                a = obj[()]
                a[np.isin(a, list(zero))] = 0
                obj[...] = a
        f.visititems(visit)


def test_train_id_zero_rows_are_not_trains(tmp_path):
    """extra-data drops the rows with trainId 0; the reduction neither crashes nor counts them."""
    pd = tmp_path / "p900001"
    n_all = ZERO_TRAINS + ZERO_ROWS
    b = make_beam(1, int(ebp.PPL_BITS.LP_SPB), n_all, seed=3)
    raw = pd / "raw" / f"r{ZERO_RUN:04d}"
    write_train_files(raw, ZERO_RUN, b, n_all, timeserver=SPB.timeserver, xgm=SPB.xgm, control=SPB.agipd_control,
                      da_first_part=n_all, ctrl_first_part=n_all)
    proc = write_proc_files(pd / "proc" / f"r{ZERO_RUN:04d}", ZERO_RUN, n_all, n_all)
    truth = plant(proc, b, n_all, ())
    for p in list(raw.glob("*.h5")) + list(proc.values()):
        zero_train_ids(p, ZERO_ROWS)
    # The premise: rows with trainId 0 and data behind them in every file.
    for p in list(raw.glob("*.h5")) + list(proc.values()):
        with h5py.File(p) as f:
            tid = f["INDEX/trainId"][()]
            assert (tid[ZERO_TRAINS:n_all] == 0).all() and (tid[:ZERO_TRAINS] != 0).all()
    real = np.arange(FIRST, FIRST + ZERO_TRAINS, dtype=np.uint64)
    np.testing.assert_array_equal(RunDirectory(str(raw)).train_ids, real)

    cfg = proc_config(tmp_path, ZERO_RUN)
    res = tmp_path / "results" / f"r{ZERO_RUN:04d}"
    corr = [proc[(m, 0)] for m in MODULES]
    tfiles = train_files(raw)
    steps.annotate_chunk(cfg, corr, tfiles, res / "partials" / "S00000.h5")
    steps.hit_thresholds(cfg, [res / "partials" / "S00000.h5"], res / "partials" / "thr.h5")
    annot = res / "annotation" / f"REDU-R{ZERO_RUN:04d}-ANNOT-S00000.h5"
    steps.write_annotation(cfg, ZERO_RUN, 0, res / "partials" / "S00000.h5", res / "partials" / "thr.h5", annot)
    agg = res / "aggregate" / "run.h5"
    steps.aggregate_run(cfg, ZERO_RUN, [res / "partials" / "S00000.h5"], [annot], agg)
    t = steps.load_run_table(agg)
    s = steps.run_summary(cfg, ZERO_RUN, "spi", corr + tfiles, {"annotation": [annot], "aggregate": [agg]},
                          t, None, res / "summary.json", inputs=[agg])
    assert 0 not in t["trainId"]
    np.testing.assert_array_equal(np.unique(t["trainId"]), real)
    assert s["trains"] == ZERO_TRAINS and s["frames_in"] == ZERO_TRAINS * N_FRAMES
    # The real trains keep their beam data, found by train ID.
    expect = {k for k in truth.xray if k[0] < FIRST + ZERO_TRAINS}
    assert {(int(a), int(c)) for a, c in zip(t["trainId"][t["xray"]], t["cellId"][t["xray"]])} == expect
    assert t["beam_data"].all()
    strict_json(res / "summary.json")


# -- item 4: instrument profiles ---------------------------------------------------------------

#: Detector of each instrument's mock run: (family, detector name, control aggregator, class).
INSTRUMENT_DETECTORS = {
    "SPB": ("AGIPD", "SPB_DET_AGIPD1M-1", "AGIPD1MCTRL00", "AgipdComposite"),
    "MID": ("AGIPD", "MID_DET_AGIPD1M-1", "AGIPD1MCTRL00", "AgipdComposite"),
    "HED": ("AGIPD", "HED_DET_AGIPD500K2G", "AGIPD500K2G00", "Agipd2Composite"),   # make_agipd500k_run
    "FXE": ("LPD", "FXE_DET_LPD1M-1", None, None),
    "SCS": ("DSSC", "SCS_DET_DSSC1M-1", None, None),
    "SQS": ("DSSC", "SQS_DET_DSSC1M-1", None, None),
}
#: A tunnel XGM beside the instrument's own (real runs have both): discovery must not be asked.
TUNNEL_XGM = {1: "SA1_XTD2_XGM/XGM/DOOCS", 2: "SA2_XTD1_XGM/XGM/DOOCS", 3: "SA3_XTD10_XGM/XGM/DOOCS"}
INSTRUMENT_TRAINS = 6


def write_instrument_run(raw_dir: Path, run: int, name: str, **overrides) -> Beam:
    """A RAW run of an instrument: detector modules, DA01 (timeserver, XGMs), AGIPD control."""
    prof = INSTRUMENTS[name]
    family, detector, ctrl_agg, cls = INSTRUMENT_DETECTORS[name]
    b = make_beam(prof.sase, ppl_bit_value(prof.ppl_bit), INSTRUMENT_TRAINS, seed=len(name) + run)
    write_raw_detector(raw_dir, run, family, detector, INSTRUMENT_TRAINS)
    tunnel = TUNNEL_XGM[prof.sase]
    kw = {"timeserver": prof.timeserver, "xgm": prof.xgm,
          "extra_xgms": (tunnel,) if tunnel != prof.xgm else (),
          "control": prof.agipd_control if family == "AGIPD" else None,
          "control_aggregator": ctrl_agg or "", "agipd_class": cls or "", "da_first_part": 4, "ctrl_first_part": 3}
    kw.update(overrides)
    write_train_files(raw_dir, run, b, INSTRUMENT_TRAINS, **kw)
    return b


@pytest.mark.parametrize("name", list(INSTRUMENT_DETECTORS))
def test_instrument_profile_resolves_sources(tmp_path, name):
    prof = INSTRUMENTS[name]
    raw = tmp_path / "raw" / "r0020"
    b = write_instrument_run(raw, 20, name)
    dc = open_train_data(raw)
    agipd = INSTRUMENT_DETECTORS[name][0] == "AGIPD"
    for cfg, how in (({"instrument": name}, "config"), ({}, "guessed")):
        rs = resolve_sources(cfg, dc, str(raw))
        assert rs.instrument.name == name
        assert rs.decided["instrument"].startswith(how), rs.decided
        assert rs.timeserver == prof.timeserver and rs.decided["timeserver"] == "instrument profile"
        assert rs.xgm == prof.xgm_output and rs.decided["xgm"] == "instrument profile"
        assert rs.sase == prof.sase == {"SPB": 1, "FXE": 1, "MID": 2, "HED": 2, "SCS": 3, "SQS": 3}[name]
        assert rs.decided["sase"] == "instrument profile"
        assert rs.ppl_bit == int(ebp.PPL_BITS[prof.ppl_bit])
        assert rs.agipd_control == (prof.agipd_control if agipd else None)
        assert rs.decided["agipd_control"] == ("instrument profile" if agipd else "absent")
        assert rs.pulse_pattern_decoder is None and rs.decided["pulse_pattern_decoder"] == "absent"
        json.dumps(rs.as_dict(), allow_nan=False)
    # The profile's SASE and laser bit pick the instrument's pulses out of the shared table.
    own = np.asarray(ebp.is_sase(b.tables, rs.sase))
    np.testing.assert_array_equal(own.sum(axis=1), b.n_own)
    assert ((b.tables & np.uint32(rs.ppl_bit)) != 0).any()
    if agipd:
        # The resolved sources give extra-redu's X-ray frames, energies and a pump laser.
        srcs = beam.BeamSources(sase=rs.sase, detector_control=rs.agipd_control, timeserver=rs.timeserver,
                                xgm=rs.xgm, ppl_bit=rs.ppl_bit, instrument=name)
        tids = np.repeat(np.arange(FIRST, FIRST + INSTRUMENT_TRAINS, dtype=np.uint64), N_FRAMES)
        cells = np.tile(np.arange(N_FRAMES), INSTRUMENT_TRAINS)
        fb = beam.train_beam(dc, srcs).frames(tids, cells)
        n, e, known = oracle_xray(raw, tids, cells, control=rs.agipd_control, timeserver=rs.timeserver,
                                  xgm_output=rs.xgm)
        assert known.all()
        np.testing.assert_array_equal(fb.n_pulses, n)
        np.testing.assert_array_equal(fb.pulse_energy, e)
        expect = {(FIRST + t, int(c)) for t in range(INSTRUMENT_TRAINS) for c in b.xray_cells[t]}
        assert {(int(a), int(c)) for a, c in zip(tids[fb.xray], cells[fb.xray])} == expect
        assert fb.ppl.any() and fb.beam_data.all()


def test_resolve_sources_records_discovery_and_config(tmp_path):
    """Names outside the profile are discovered (and say why); config names win and are checked."""
    raw = tmp_path / "raw" / "r0021"
    # A real timeserver name EXtra's pattern misses, and only the SASE1 tunnel XGM.
    write_instrument_run(raw, 21, "SPB", timeserver="SPB_EXP_SYS/TSYS/TIMESERVER:outputBunchPattern",
                         xgm="SA1_XTD2_XGM/XGM/DOOCS", extra_xgms=())
    dc = open_train_data(raw)
    rs = resolve_sources({"instrument": "SPB"}, dc, str(raw))
    assert rs.timeserver == "SPB_EXP_SYS/TSYS/TIMESERVER:outputBunchPattern"
    assert rs.decided["timeserver"].startswith("discovered (") and "bunchPatternTable" in rs.decided["timeserver"]
    assert rs.xgm == "SA1_XTD2_XGM/XGM/DOOCS:output" and rs.decided["xgm"].startswith("discovered (")
    assert rs.decided["agipd_control"] == "instrument profile"
    cfg = {"instrument": "SPB", "sources": {"timeserver": "SPB_EXP_SYS/TSYS/TIMESERVER:outputBunchPattern",
                                            "xgm": "SA1_XTD2_XGM/XGM/DOOCS", "sase": 1, "ppl_bit": "LP_FXE",
                                            "detector_control": SPB.agipd_control}}
    rs = resolve_sources(cfg, dc, str(raw))
    assert rs.xgm == "SA1_XTD2_XGM/XGM/DOOCS:output"
    assert rs.ppl_bit == int(ebp.PPL_BITS.LP_FXE)
    assert {k: rs.decided[k] for k in ("timeserver", "xgm", "agipd_control", "sase")} == \
        dict.fromkeys(("timeserver", "xgm", "agipd_control", "sase"), "config")
    # A configured name the run lacks is refused, naming the key.
    with pytest.raises(Exception, match="sources.timeserver"):
        resolve_sources({"instrument": "SPB", "sources": {"timeserver": "SPB_RR_SYS/TSYS/NOPE:outputBunchPattern"}},
                        dc, str(raw))


def _job_counts(text: str) -> dict[str, int]:
    """Snakemake's dry-run "Job stats" table as {rule: count}."""
    block = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.MULTILINE)
            if m.group(1) != "total"}


@pytest.mark.parametrize("name", ["SPB", "MID", "HED"])
def test_agipd_workflow_builds_dag_at_instrument(tmp_path, name):
    """RAW AGIPD runs of SPB, MID and HED (500K with its AGIPD500K2G00 control aggregator): DAG."""
    pd = tmp_path / "p900001"
    run = 20
    write_instrument_run(pd / "raw" / f"r{run:04d}", run, name)
    family, detector, ctrl_agg, _ = INSTRUMENT_DETECTORS[name]
    prof = INSTRUMENTS[name]
    for dark in (1, 2, 3):
        d = pd / "raw" / f"r{dark:04d}"
        write_raw_detector(d, dark, family, detector, 4)
        write_file(str(d / f"RAW-R{dark:04d}-{ctrl_agg}-S00000.h5"), [AgipdControl(prof.agipd_control, N_FRAMES, 0,
                                                                                 4.5, 15)],
                   ntrains=4, chunksize=1, format_version="1.2")
    gain = pd / "calib" / "agipd_gain_constants.h5"
    gain.parent.mkdir(parents=True)
    h5py.File(gain, "w").close()      # a dry run only needs the input to exist
    cfg = {
        "proposal_dir": str(pd), "results_dir": str(tmp_path / "results"), "instrument": name,
        "modules": list(MODULES), "runs": [{"run": run, "technique": "spi"}],
        "calibration": {"source": "raw", "dark_runs": [1, 2, 3], "memory_cells": N_FRAMES,
                        "gain_constants": str(gain)},
        "annotation": {}, "simulate": {"enabled": False},
    }
    res = snakemake(cfg, tmp_path, "-n")
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    jobs = _job_counts(res.stdout + res.stderr)
    assert jobs["dark"] == len(MODULES) and jobs["reduce"] == 1 and "correct" not in jobs
    assert jobs["summary"] == 1 and jobs["report"] == 2      # calibration and annotation
    # The control aggregator is among the annotation's train-level inputs.
    assert f"RAW-R{run:04d}-{ctrl_agg}-S00000.h5" in res.stdout + res.stderr


def fill_agipd_raw(raw_dir: Path, stage: int, seed: int, photons: float = 0.0) -> None:
    """Replace the zeros of extra-data's AGIPD module mocks by detector-like words: analog
    offset and noise, the digital level of gain ``stage`` (as a fixed-gain dark has it),
    and Poisson photons at 60 ADU each in high gain."""
    rng = np.random.default_rng(seed)
    for path in sorted(raw_dir.glob("RAW-*-AGIPD[0-9][0-9]-S*.h5")):
        with h5py.File(path, "r+") as f:
            ds = next(f["INSTRUMENT"][s]["image/data"] for s in _module_groups(f))
            n = ds.shape[0]
            analog = 5000.0 + 300 * stage + rng.normal(0, 8, (n, 512, 128)) + 60 * rng.poisson(photons, (n, 512, 128))
            digital = [4600, 6400, 8200][stage] + rng.normal(0, 25, (n, 512, 128))
            ds[:, 0] = np.clip(np.rint(analog), 0, 16383).astype(np.uint16)
            ds[:, 1] = np.clip(np.rint(digital), 0, 65535).astype(np.uint16)


def _module_groups(f) -> list[str]:
    out = []
    f["INSTRUMENT"].visit(lambda name: out.append(name.rsplit("/image/data", 1)[0])
                          if name.endswith("image/data") else None)
    return out


def test_agipd500k_raw_run_reduces_end_to_end(tmp_path):
    """The HED AGIPD 500K as the facility's writers lay it out (extra-data's module mocks,
    the control in AGIPD500K2G00 as an Agipd2Composite without firstPulse, expType):
    darks, the one pass and a SAXS reduction with the 500K's geometry run through the
    workflow from RAW, and the X-ray frames are extra-redu's."""
    pd = tmp_path / "p900001"
    run = 20
    family, detector, ctrl_agg, cls = INSTRUMENT_DETECTORS["HED"]
    raw = pd / "raw" / f"r{run:04d}"
    write_instrument_run(raw, run, "HED")
    fill_agipd_raw(raw, 0, seed=run, photons=0.05)
    prof = INSTRUMENTS["HED"]
    for dark in (1, 2, 3):
        d = pd / "raw" / f"r{dark:04d}"
        write_raw_detector(d, dark, family, detector, 4)
        fill_agipd_raw(d, dark - 1, seed=dark)
        write_train_files(d, dark, make_beam(prof.sase, ppl_bit_value(prof.ppl_bit), 4, seed=dark), 4,
                          timeserver=prof.timeserver, xgm=prof.xgm, control=prof.agipd_control,
                          control_aggregator=ctrl_agg, agipd_class=cls, gain_mode=dark)
    # relative gains as the facility provides them (here: the simulator's detector truth)
    gain = pd / "calib" / "agipd_gain_constants.h5"
    steps.simulate_detector({"proposal_dir": str(pd), "calibration": {"gain_constants": str(gain)},
                             "simulate": {"modules": list(MODULES), "memory_cells": N_FRAMES, "seed": 1}})
    results = tmp_path / "results"
    cfg = {
        "proposal_dir": str(pd), "results_dir": str(results), "instrument": "HED",
        "modules": list(MODULES), "runs": [{"run": run, "technique": "saxs"}],
        "geometry": {"detector": "AGIPD500K", "distance_m": 5.0, "photon_energy_kev": 9.3},
        "calibration": {"source": "raw", "dark_runs": [1, 2, 3], "memory_cells": N_FRAMES,
                        "gain_constants": str(gain)},
        "annotation": {}, "simulate": {"enabled": False},
    }
    res = snakemake(cfg, tmp_path)
    assert res.returncode == 0, failure_text(res, results)
    base = results / f"r{run:04d}"
    t = read_frame_table(base / "annotation" / f"REDU-R{run:04d}-ANNOT-S00000.h5", sources.ANNOTATION_SOURCE)
    tids, cells = t["trainId"].astype(np.uint64), t["cellId"].astype(np.int64)
    n, e, known = oracle_xray(raw, tids, cells, control=prof.agipd_control, timeserver=prof.timeserver,
                              xgm_output=prof.xgm_output)
    assert known.all() and t["xray"].any()
    np.testing.assert_array_equal(t["xray"], n > 0)
    np.testing.assert_array_equal(t["pulse_energy"], e)
    # the photons planted: 0.05 per pixel in every frame (masked pixels aside)
    per_frame = t["photons"] / (len(MODULES) * 512 * 128)
    assert np.median(per_frame) == pytest.approx(0.05, rel=0.2)
    # a flat 0.05 photons per pixel: I(q) is flat at 0.05 (solid angle and polarisation
    # normalised to 1 at normal incidence; at 5 m the detector is nearly normal)
    with h5py.File(base / "saxs" / "saxs_nxcansas.h5") as f:
        intensity = f["xfel_reduce/all/I"][()]
    assert np.isfinite(intensity).all()
    assert np.mean(intensity) == pytest.approx(0.05, rel=0.05)
    verdict = json.loads((base / "reports" / "saxs.verdict.json").read_text())
    assert verdict["overall"] in ("pass", "warn", "fail") and verdict["checks"]
