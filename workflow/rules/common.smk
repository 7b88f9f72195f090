# Shared definitions: paths, runs, sequences and input functions.
# Sequences come from the config (simulated or declared listings) or from a file
# listing of the run directory; detector data are never read while building the DAG.
import functools
import glob
import os
import re

from xfel_reduce.simulate.beamtime import expected_files, iter_runs, run_plan
from xfel_reduce.simulate.jungfrau import JUNGFRAU_RUN_TYPES, expected_jungfrau_files
from xfel_reduce import techniques
from xfel_reduce.binning import bins_of
from xfel_reduce.config import modules_of
from xfel_reduce.kept import ReductionConfig
from xfel_reduce.onepass import write_corr

# Conda environment for `--sdm conda` (path relative to the rule files)
CONDA_ENV = "../../envs/xfel-reduce.yaml"
# Scheduling order when several jobs are ready: the spine (simulate, dark, the one
# pass per sequence, annotation, aggregate) first, so every run's annotated data and
# aggregates exist as early as possible; run-level technique gathers next; reports last.
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
# The one pass corrects in memory; CORR files only with calibration.write_corr: all
WRITE_CORR = write_corr(config) and not USE_PROC

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
    """A CORR file: the facility's (proc data) or the one pass's (``write_corr: all``)."""
    base = os.path.join(PROC_DIR if USE_PROC else os.path.join(RESULTS, "proc"), f"r{int(run):04d}")
    return os.path.join(base, f"CORR-R{int(run):04d}-AGIPD{int(module):02d}-S{int(seq):05d}.h5")


def constants_files():
    return expand(os.path.join(RESULTS, "calibration", "constants", "AGIPD{module:02d}.h5"), module=MODULES)


def frame_inputs(run, seq):
    """What a sequence's frames are read from: {"frames": RAW files, "constants": …} (the
    one pass corrects in memory), or {"frames": CORR files} (proc data, or written CORR)."""
    if USE_PROC:
        return {"frames": [corr_file(run, m, seq) for m in MODULES]}
    return {"frames": [raw_file(run, m, seq) for m in MODULES], "constants": constants_files()}


def static_mask_inputs(run):
    """What defines a run's static mask (techniques.static_mask): the dark constants, or
    for proc data the CORR files of the run's first sequence."""
    if USE_PROC:
        return [corr_file(run, m, sequences(run)[0]) for m in MODULES]
    return constants_files()


def reduce_inputs(w):
    return {**frame_inputs(w.run, w.seq), "train": train_files(w.run), "static_mask": static_mask_inputs(w.run)}


def plugin(run):
    """The run's technique plug-in (xfel_reduce.techniques)."""
    return techniques.get(technique(run))


def runs_pattern(select):
    """Wildcard constraint matching the runs for which ``select(run)`` holds."""
    chosen = [f"{r:04d}" for r in RUNS if select(r)]
    return "|".join(chosen) if chosen else "(?!)"


def reduce_outputs(name=None):
    """Outputs of the one pass over a sequence: the annotation partial, the technique's
    per-sequence files (techniques.<name>.sequence_files) and, if asked, CORR files."""
    out = {"partial_annotation": PARTIAL_FILE}
    if name is not None:
        out.update({k: os.path.join(RESULTS, t) for k, t in techniques.get(name).sequence_files.items()})
    if WRITE_CORR:
        out["corr"] = [os.path.join(RESULTS, "proc", "r{run}", f"CORR-R{{run}}-AGIPD{m:02d}-S{{seq}}.h5") for m in MODULES]
    return out


def gather_inputs(name):
    """Inputs of a technique's run-level gather: its per-sequence files of every sequence
    (named as in sequence_files), the static mask's inputs and the train files."""
    def inputs(w):
        files = techniques.get(name).sequence_paths(RESULTS, int(w.run), sequences(w.run))
        return {**files, "static_mask": static_mask_inputs(w.run), "train": train_files(w.run)}
    return inputs


def gather_outputs(name):
    return {k: os.path.join(RESULTS, t) for k, t in techniques.get(name).run_files.items()}


# Output path templates used by more than one rule file: defined once here.
ANNOTATION_FILE = os.path.join(RESULTS, "r{run}", "annotation", "REDU-R{run}-ANNOT-S{seq}.h5")
PARTIAL_FILE = os.path.join(RESULTS, "r{run}", "partials", "S{seq}.h5")
AGGREGATE_FILE = os.path.join(RESULTS, techniques.AGGREGATE_FILE)
HIT_THRESHOLDS_FILE = os.path.join(RESULTS, "r{run}", "partials", "hit_thresholds.h5")
BINNING_FILE = os.path.join(RESULTS, techniques.BINNING_FILE)


def annotation_files(run):
    return expand(ANNOTATION_FILE, run=f"{int(run):04d}", seq=sequences(run))


def technique(run):
    return RUNS.get(int(run), {}).get("technique")


def has_bins(run):
    """Whether the run is binned (``runs[].bins``: delay, motor, XGM or train axes)."""
    return bool(bins_of(config, int(run)))


def run_table_files(run):
    """What the run's per-frame table is read from (``Technique.frame_table``): the
    aggregate, or for JUNGFRAU runs the spectrometer's partials."""
    r = int(run)
    if is_jungfrau_run(r):
        return plugin(r).sequence_paths(RESULTS, r, sequences(r))["partial"]
    return expand(AGGREGATE_FILE, run=f"{r:04d}")


def binning_products(run):
    """Products of a binned run: its bins (binning.h5) and its technique's products per
    bin (``Technique.binned_files``)."""
    if not has_bins(run):
        return {}
    out = {"binning": expand(BINNING_FILE, run=f"{int(run):04d}")}
    binned = plugin(run).binned_paths(RESULTS, int(run))
    if binned:
        out["binned"] = list(binned.values())
    return out


def is_jungfrau_run(run):
    return int(run) in JF_DARK_RUNS or plugin(run).detector == "jungfrau"


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
    """Per-run products, {product name: [files]}: annotation, aggregate and kept frames of
    AGIPD runs, and the technique's own (techniques.<name>.product_files)."""
    r = f"{int(run):04d}"
    own = {**plugin(run).products(RESULTS, int(run), sequences(run)), **binning_products(run)}
    if is_jungfrau_run(run):
        if WRITE_CORR:  # the JUNGFRAU passes correct in memory; CORR files only when asked
            own["corr"] = [jf_corr_file(run, s) for s in sequences(run)]
        return own
    agipd = {"annotation": annotation_files(run), "aggregate": expand(AGGREGATE_FILE, run=r)}
    if keeps_frames(run):
        agipd["kept"] = kept_files(run) + [os.path.join(RESULTS, f"r{r}", "kept", "kept_summary.json")]
    return {**agipd, **own}


def truth_file(run):
    """The simulator's per-frame truth of a simulated run (report cross-checks), or None."""
    if int(run) in SIM_RUNS:
        return os.path.join(PROPOSAL, "truth", f"r{int(run):04d}", "truth.h5")
    return None


def run_stages(run):
    """Report stages of a run: calibration and annotation, its technique's notebook and,
    for a binned run, the binning report."""
    if is_jungfrau_run(run):
        stages = []
    else:
        stages = ["annotation"] if USE_PROC else ["calibration", "annotation"]
    t = plugin(run).notebook
    if t and os.path.exists(os.path.join(workflow.basedir, "reports", f"{t}.ipynb")):
        stages.append(t)
    if has_bins(run):
        stages.append("binning")
    return stages


def stage_defaults(run, stage):
    """Notebook parameters implied by the run's technique (config can override)."""
    if stage == "annotation":
        # lit-pixel / SPI hits mean something where they are the technique's hits (SPI);
        # SFX hits are the peak finder's (the SFX report checks them, against the truth too)
        hits = plugin(run).annotation_hits
        return {"hit_finding": hits, "truth_checks": hits}
    return {}


def stage_inputs(run, stage):
    """Files each stage's notebook reads, {notebook parameter: path or list}."""
    truth = truth_file(run)
    if stage == "calibration":
        # the one pass's correction histograms (calibrate.check), and the CORR files if written
        out = {"dark_file": constants_files(),
               "check_files": expand(PARTIAL_FILE, run=f"{int(run):04d}", seq=sequences(run))}
        if WRITE_CORR:
            out["corr_files"] = [corr_file(run, m, s) for s in sequences(run) for m in MODULES]
        return out
    if stage == "annotation":
        out = {"annotation_files": annotation_files(run)}
        if keeps_frames(run):
            out["kept_summary"] = technique_products(run)["kept"][-1]
        if truth and plugin(run).truth_per_frame:
            out["truth_file"] = truth
        return out
    p = plugin(run)
    if stage == "binning":
        products = binning_products(run)
        out = {"binning_file": products["binning"][0]}
        if "binned" in products:
            out["binned_file"] = products["binned"][0]
        if truth:
            out["truth_file"] = truth.replace("truth.h5", "truth.json")
        return out
    if stage != p.notebook:
        raise ValueError(f"no report inputs defined for stage {stage!r}")
    out = p.report_inputs(RESULTS, int(run), sequences(run))
    if truth:
        # per-frame checks need truth.h5 (SFX spots); the others need scalars
        out["truth_file"] = truth if p.truth_per_frame else truth.replace("truth.h5", "truth.json")
    return out
