# Shared definitions: paths, runs, sequences and input functions.
# Sequences come from the config (simulated or declared listings) or from a file
# listing of the run directory; detector data are never read while building the DAG.
import functools
import glob
import os
import re

from xfel_reduce.simulate.beamtime import expected_files, iter_runs, run_plan
from xfel_reduce.simulate.jungfrau import JUNGFRAU_RUN_TYPES, expected_jungfrau_files
from xfel_reduce.config import modules_of
from xfel_reduce.kept import ReductionConfig

# Conda environment for `--sdm conda` (path relative to the rule files)
CONDA_ENV = "../../envs/xfel-reduce.yaml"
# Scheduling order when several jobs are ready: the spine (simulate, calibrate,
# annotate, aggregate) first, so every run's calibrated, annotated data and
# aggregates exist as early as possible; technique reductions next; reports last.
PRIORITY_SPINE = 20
PRIORITY_TECHNIQUE = 10
# Per-chunk jobs declare `threads: 1`: they alternate HDF5 I/O with numba
# kernels and keep about one core busy, so on a small machine two single-thread
# jobs side by side beat one two-thread job (README, "Measured").  On a cluster
# raise them with `--set-threads correct=4 ...`; numba's pool follows the job's
# threads (steps.setup_logging).
RESULTS = config["results_dir"]
PROPOSAL = config["proposal_dir"]
MODULES = modules_of(config)
SIM = config.get("simulate", {}) if config.get("simulate", {}).get("enabled", False) else {}
SIM_RUNS = {int(r["run"]): r for r in iter_runs(SIM)} if SIM else {}
RUNS = {int(r["run"]): r for r in config["runs"]}
RUN_IDS = [f"{r:04d}" for r in RUNS]
DARK_RUNS = [int(r) for r in config["calibration"].get("dark_runs", [])]
USE_PROC = config["calibration"]["source"] == "proc"
PROC_DIR = config["calibration"].get("proc_dir") or os.path.join(PROPOSAL, "proc")
REDUCTION = ReductionConfig.from_dict(config.get("reduction"))
HIT_MODE = (config.get("annotation") or {}).get("hit_mode", "adaptive")

def scaled(value):
    """A resource that grows with the attempt, so a job killed for memory or time
    is resubmitted (``retries`` in the SLURM profile) with twice, then three times, as much."""
    return lambda wildcards, attempt: value * attempt


wildcard_constraints:
    run=r"\d{4}",
    seq=r"\d{5}",
    module=r"\d{2}",


def raw_dir(run):
    return os.path.join(PROPOSAL, "raw", f"r{int(run):04d}")


def sequences(run):
    """Sequence numbers of a run: config listing, simulation plan, or file listing."""
    return _sequences(int(run))


@functools.lru_cache(maxsize=None)
def _sequences(run):
    # Cached: input functions ask for it once per job, and a directory listing of a
    # 200-sequence run per job would dominate the DAG build.
    excluded = set(config.get("exclude_sequences", {}).get(run, []))
    declared = config.get("sequences", {})
    if run in declared or str(run) in declared:
        n = int(declared.get(run, declared.get(str(run))))
        seqs = range(n)
    elif run in SIM_RUNS:
        seqs = range(run_plan(SIM, SIM_RUNS[run])["n_sequences"])
    else:
        base = os.path.join(PROC_DIR, f"r{run:04d}") if USE_PROC else raw_dir(run)
        agg = f"JNGFR{JF_MODULE:02d}" if is_jungfrau_run(run) else f"AGIPD{MODULES[0]:02d}"
        names = glob.glob(os.path.join(base, f"*-{agg}-S*.h5"))
        seqs = sorted(int(re.search(r"-S(\d{5})\.h5$", n).group(1)) for n in names)
        if not seqs:
            raise ValueError(
                f"run {run}: no {agg} files in {base}: check runs/proposal_dir "
                "in the config (or declare the listing under `sequences`)")
    return [f"{s:05d}" for s in seqs if s not in excluded]


def raw_file(run, module, seq):
    return os.path.join(raw_dir(run), f"RAW-R{int(run):04d}-AGIPD{int(module):02d}-S{int(seq):05d}.h5")


JF_MODULE = int(config.get("spectroscopy", {}).get("module", 1))
JF_CFG = config["calibration"].get("jungfrau", {})
JF_DARK_RUNS = [int(r) for r in JF_CFG.get("dark_runs", [])]


def jf_raw_file(run, seq):
    return os.path.join(raw_dir(run), f"RAW-R{int(run):04d}-JNGFR{JF_MODULE:02d}-S{int(seq):05d}.h5")


def jf_corr_file(run, seq):
    return os.path.join(RESULTS, "proc", f"r{int(run):04d}", f"CORR-R{int(run):04d}-JNGFR{JF_MODULE:02d}-S{int(seq):05d}.h5")


def train_files(run):
    """The run's train-level files (DA01, AGIPD1MCTRL00, JNGFRCTRL00 …: every aggregator
    but detector modules): beam and control data are read from all of them by train ID,
    never by pairing sequence numbers across aggregators."""
    return _train_files(int(run))


@functools.lru_cache(maxsize=None)
def _train_files(run):
    from xfel_reduce.io.trains import train_files as listing

    if run in SIM_RUNS:
        kind = SIM_RUNS[run].get("type")
        expected = (expected_jungfrau_files if kind in JUNGFRAU_RUN_TYPES else expected_files)(PROPOSAL, SIM, SIM_RUNS[run])
        names = [str(p) for p in expected if "/raw/" in str(p)]
        return [p for p in names if not re.search(r"-(AGIPD|JNGFR|LPD|DSSC|EPIX)\d\d-S\d{5}\.h5$", p)]
    found = [str(p) for p in listing(raw_dir(run))]
    if not found and not USE_PROC:
        raise ValueError(f"run {run}: no train-level files (DA01, …CTRL00) in {raw_dir(run)}: "
                         "check runs/proposal_dir in the config")
    # proc data without the RAW run: the annotation needs declared X-ray frames
    # (annotation.xray_frames) and says so if they are not
    return found


def corr_file(run, module, seq):
    base = os.path.join(PROC_DIR if USE_PROC else os.path.join(RESULTS, "proc"), f"r{int(run):04d}")
    return os.path.join(base, f"CORR-R{int(run):04d}-AGIPD{int(module):02d}-S{int(seq):05d}.h5")


# Output path templates used by more than one rule file: defined once here.
ANNOTATION_FILE = os.path.join(RESULTS, "r{run}", "annotation", "REDU-R{run}-ANNOT-S{seq}.h5")
PARTIAL_FILE = os.path.join(RESULTS, "r{run}", "partials", "S{seq}.h5")
AGGREGATE_FILE = os.path.join(RESULTS, "r{run}", "aggregate", "run.h5")
HIT_THRESHOLDS_FILE = os.path.join(RESULTS, "r{run}", "partials", "hit_thresholds.h5")


def annotation_files(run):
    return expand(ANNOTATION_FILE, run=f"{int(run):04d}", seq=sequences(run))


def technique(run):
    return RUNS.get(int(run), {}).get("technique")


def run_reference_corr(w):
    """CORR files of the run's first sequence: they define the run's static mask."""
    return [corr_file(w.run, m, sequences(w.run)[0]) for m in MODULES]


def is_jungfrau_run(run):
    return int(run) in JF_DARK_RUNS or technique(run) == "spectroscopy"


def run_raw_files(run):
    """RAW files of a run: its detector files (proc files when only those exist) and
    every train-level file (DA01, …CTRL00)."""
    r = int(run)
    seqs = sequences(r)
    if is_jungfrau_run(r):
        det = [jf_raw_file(r, s) for s in seqs]
    else:
        det = [raw_file(r, m, s) for s in seqs for m in MODULES]
        if USE_PROC and not all(os.path.exists(p) for p in det):
            # proc alone is enough: the bytes in are then those of the proc files
            det = [corr_file(r, m, s) for s in seqs for m in MODULES]
    return det + train_files(r)


def keeps_frames(run):
    """Whether the run writes a kept-frames set (``reduction.kept_frames``)."""
    return technique(run) in REDUCTION.kept_frames and not is_jungfrau_run(run)


def kept_files(run):
    """The kept-frames folder of a run: kept CORR files and annotation rows per sequence,
    and for SPI runs with the SPI hit finder its REDU files."""
    r = f"{int(run):04d}"
    base = os.path.join(RESULTS, f"r{r}", "kept")
    seqs = sequences(run)
    files = [os.path.join(base, f"CORR-R{r}-AGIPD{m:02d}-S{s}.h5") for s in seqs for m in MODULES]
    files += [os.path.join(base, f"REDU-R{r}-KEPT-S{s}.h5") for s in seqs]
    if technique(run) == "spi" and HIT_MODE == "spi":
        files += [os.path.join(base, f"CORR-R{r}-REDU00-S{s}.h5") for s in seqs]
    return files


def technique_products(run):
    """Per-run products of the run's technique, {product name: [files]}."""
    t, r = technique(run), f"{int(run):04d}"
    seqs = sequences(run)
    base = os.path.join(RESULTS, f"r{r}")
    if t == "spectroscopy":
        return {
            "spectra_frames": [os.path.join(base, "spectroscopy", f"REDU-R{r}-SPEC-S{s}.h5") for s in seqs],
            "spectra": [os.path.join(base, "spectroscopy", n) for n in ("spectra.h5", "spectra_summary.json")],
        }
    agipd = {"annotation": annotation_files(run), "aggregate": expand(AGGREGATE_FILE, run=r)}
    if keeps_frames(run):
        agipd["kept"] = kept_files(run) + [os.path.join(base, "kept", "kept_summary.json")]
    if t == "sfx":
        return {
            **agipd,
            "cxi_hits": [os.path.join(base, "sfx", f"hits-S{s}.cxi") for s in seqs],
            "peak_tables": [os.path.join(base, "sfx", "peaks", f"REDU-R{r}-SFX-S{s}.h5") for s in seqs],
            "crystfel": [os.path.join(base, "sfx", n) for n in ("hits.lst", "agipd.geom", "hit_statistics.json")],
        }
    if t == "xpcs":
        return {**agipd, "xpcs": [os.path.join(base, "xpcs", "xpcs.h5")]}
    if t == "saxs":
        return {
            **agipd,
            "saxs_frames": [os.path.join(base, "saxs", f"REDU-R{r}-SAXS-S{s}.h5") for s in seqs],
            "nxcansas": [os.path.join(base, "saxs", n) for n in ("saxs_nxcansas.h5", "saxs_summary.json")],
        }
    return agipd


def truth_file(run):
    """The simulator's per-frame truth of a simulated run (report cross-checks), or None."""
    if int(run) in SIM_RUNS:
        return os.path.join(PROPOSAL, "truth", f"r{int(run):04d}", "truth.h5")
    return None


REPORT_STAGES = {"sfx": "sfx", "xpcs": "xpcs", "saxs": "saxs", "spectroscopy": "spectroscopy"}


def run_stages(run):
    """Report stages of a run: calibration and annotation, then its technique's."""
    if is_jungfrau_run(run):
        stages = []
    else:
        stages = ["annotation"] if USE_PROC else ["calibration", "annotation"]
    t = REPORT_STAGES.get(technique(run))
    if t and os.path.exists(os.path.join(workflow.basedir, "reports", f"{t}.ipynb")):
        stages.append(t)
    return stages


def stage_defaults(run, stage):
    """Notebook parameters implied by the run's technique (config can override)."""
    if stage == "annotation":
        # lit-pixel hits mean something for single particles and crystals only
        # SFX hits are decided by the peak finder (the SFX report checks them, against
        # the truth too): the annotation's lit-pixel hits are judged for SPI only
        return {"hit_finding": technique(run) == "spi", "truth_checks": technique(run) == "spi"}
    return {}


def stage_inputs(run, stage):
    """Files each stage's notebook reads, {notebook parameter: path or list}."""
    r = f"{int(run):04d}"
    seqs = sequences(run)
    products = technique_products(run)
    truth = truth_file(run)
    if stage == "calibration":
        return {"dark_file": [os.path.join(RESULTS, "calibration", "constants", f"AGIPD{m:02d}.h5") for m in MODULES],
                "corr_files": [corr_file(run, m, s) for s in seqs for m in MODULES]}
    if stage == "annotation":
        out = {"annotation_files": annotation_files(run)}
        if keeps_frames(run):
            out["kept_summary"] = products["kept"][-1]
        if truth and technique(run) in ("spi", "sfx"):
            out["truth_file"] = truth
        return out
    if stage == "sfx":
        out = {"annotation_files": products["peak_tables"], "cxi_files": products["cxi_hits"],
               "geom_file": os.path.join(RESULTS, f"r{r}", "sfx", "agipd.geom"),
               "hit_statistics_file": os.path.join(RESULTS, f"r{r}", "sfx", "hit_statistics.json")}
    elif stage == "xpcs":
        out = {"xpcs_file": products["xpcs"][0]}
    elif stage == "saxs":
        out = {"saxs_file": products["nxcansas"][0]}
    elif stage == "spectroscopy":
        out = {"spectra_file": products["spectra"][0]}
    else:
        raise ValueError(f"no report inputs defined for stage {stage!r}")
    if truth:
        # the SFX notebook checks spots frame by frame (truth.h5); the others need scalars
        out["truth_file"] = truth if stage == "sfx" else truth.replace("truth.h5", "truth.json")
    return out
