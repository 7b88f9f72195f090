# Shared definitions: paths, runs, sequences and input functions.
# Sequences come from the config (simulated or declared listings) or from a file
# listing of the run directory; detector data are never read while building the DAG.
import glob
import os
import re

from xfel_reduce.simulate.beamtime import iter_runs, run_plan
from xfel_reduce.steps import modules_of

RESULTS = config["results_dir"]
PROPOSAL = config["proposal_dir"]
MODULES = modules_of(config)
SIM = config.get("simulate", {}) if config.get("simulate", {}).get("enabled", False) else {}
SIM_RUNS = {int(r["run"]): r for r in iter_runs(SIM)} if SIM else {}
RUNS = {int(r["run"]): r for r in config["runs"]}
RUN_IDS = [f"{r:04d}" for r in RUNS]
DARK_RUNS = [int(r) for r in config["calibration"]["dark_runs"]]
USE_PROC = config["calibration"]["source"] == "proc"
PROC_DIR = config["calibration"].get("proc_dir") or os.path.join(PROPOSAL, "proc")

wildcard_constraints:
    run=r"\d{4}",
    seq=r"\d{5}",
    module=r"\d{2}",


def raw_dir(run):
    return os.path.join(PROPOSAL, "raw", f"r{int(run):04d}")


def sequences(run):
    """Sequence numbers of a run: config listing, simulation plan, or file listing."""
    run = int(run)
    excluded = set(config.get("exclude_sequences", {}).get(run, []))
    declared = config.get("sequences", {})
    if run in declared or str(run) in declared:
        n = int(declared.get(run, declared.get(str(run))))
        seqs = range(n)
    elif run in SIM_RUNS:
        seqs = range(run_plan(SIM, SIM_RUNS[run])["n_sequences"])
    else:
        base = os.path.join(PROC_DIR, f"r{run:04d}") if USE_PROC else raw_dir(run)
        names = glob.glob(os.path.join(base, f"*-AGIPD{MODULES[0]:02d}-S*.h5"))
        seqs = sorted(int(re.search(r"-S(\d{5})\.h5$", n).group(1)) for n in names)
        if not seqs:
            raise ValueError(
                f"run {run}: no files for module {MODULES[0]} in {base}: check runs/proposal_dir "
                "in the config (or declare the listing under `sequences`)")
    return [f"{s:05d}" for s in seqs if s not in excluded]


def raw_file(run, module, seq):
    return os.path.join(raw_dir(run), f"RAW-R{int(run):04d}-AGIPD{int(module):02d}-S{int(seq):05d}.h5")


def da_file(run, seq):
    return os.path.join(raw_dir(run), f"RAW-R{int(run):04d}-DA01-S{int(seq):05d}.h5")


def corr_file(run, module, seq):
    base = os.path.join(PROC_DIR if USE_PROC else os.path.join(RESULTS, "proc"), f"r{int(run):04d}")
    return os.path.join(base, f"CORR-R{int(run):04d}-AGIPD{int(module):02d}-S{int(seq):05d}.h5")


def technique(run):
    return RUNS[int(run)]["technique"]
