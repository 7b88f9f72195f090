"""Run the packaged Snakemake workflow from any working directory.

The workflow (``Snakefile``, rule files, scripts, report notebooks, profiles) lives in
the repository xfel-reduce is installed from (``./run.sh install`` installs it in
editable mode).  A user's working directory holds their config and, through the
config's relative paths, their results; Snakemake's own bookkeeping (``.snakemake/``)
goes there too, so two proposals reduced from two directories never share state.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import yaml

from .config import ConfigError, validate_config
from .status import INVOCATION_LOG_DIR

#: Repository root holding the Snakefile (the package is installed from it).
WORKFLOW_DIR = Path(__file__).resolve().parents[2]
DEMO_CONFIG = WORKFLOW_DIR / "config" / "config.yaml"
PROFILES = {"local": None, "slurm": WORKFLOW_DIR / "slurm"}
#: The SLURM profile's status source on clusters without accounting (slurmdbd):
#: squeue instead of sacct (slurm/config.yaml explains).
NO_ACCOUNTING_ARGS = ("--slurm-status-command", "squeue")


class UsageError(ValueError):
    """A user mistake on the command line or in the config; the message says what to do."""


def snakefile() -> Path:
    path = WORKFLOW_DIR / "Snakefile"
    if not path.is_file():
        raise UsageError(
            f"the workflow is not next to the installed package ({path} is missing): "
            "install xfel-reduce from its repository with `./run.sh install` "
            "(an editable install keeps the Snakefile, rules and notebooks in place)")
    return path


def resolve_config(path: str | os.PathLike | None, cwd: Path | None = None) -> Path:
    """The config file to use: ``path`` (relative to ``cwd``), else ``./config.yaml``,
    else the packaged demo config.  Returns an absolute path."""
    cwd = Path(cwd or Path.cwd())
    if path is None:
        local = cwd / "config.yaml"
        return local if local.is_file() else DEMO_CONFIG
    p = Path(path)
    p = p if p.is_absolute() else cwd / p
    if not p.is_file():
        raise UsageError(f"config file {p} not found (start from {DEMO_CONFIG} or "
                         f"{WORKFLOW_DIR / 'config' / 'examples'})")
    return p.resolve()


def load_config(path: Path) -> dict:
    """Read and validate a config; schema problems become a :class:`UsageError`."""
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"{path}: a config is a YAML mapping (see {DEMO_CONFIG})")
    try:
        return validate_config(cfg)
    except ConfigError as exc:
        raise UsageError(f"{path}: {exc}") from None


def resolve_profile(profile: str | None) -> Path | None:
    """``local``/``None`` → no executor profile; ``slurm`` → the packaged one; a path → it."""
    if profile in (None, "local"):
        return None
    if profile in PROFILES:
        return PROFILES[profile]
    p = Path(profile).expanduser()
    if not (p / "config.yaml").is_file():
        raise UsageError(f"profile {profile!r}: no {p / 'config.yaml'} (use 'local', 'slurm' "
                         "or a Snakemake profile directory)")
    return p.resolve()


def snakemake_command(config: Path, *, workdir: Path | None = None, profile: str | None = None,
                      cores: int | None = None, targets: Sequence[str] = (),
                      extra: Sequence[str] = (), no_accounting: bool = False) -> list[str]:
    """The snakemake command line running the packaged workflow on ``config``.

    Parameters
    ----------
    config
        Config file; relative paths inside it are relative to ``workdir``.
    workdir
        Snakemake's working directory (default: the current one).
    profile
        ``local`` (default), ``slurm`` or a profile directory.
    cores
        Local cores (default: all of them); under a cluster profile the profile's cap.
    targets, extra
        Target files/rules and any further snakemake arguments, passed as given.
    no_accounting
        Add :data:`NO_ACCOUNTING_ARGS` (SLURM cluster without slurmdbd).
    """
    prof = resolve_profile(profile)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile()),
           "--directory", str(Path(workdir or Path.cwd()).resolve()),
           "--configfile", str(config),
           "--workflow-profile", str(WORKFLOW_DIR / "profiles" / "default")]
    if prof is not None:
        cmd += ["--profile", str(prof)]
        if no_accounting:
            cmd += list(NO_ACCOUNTING_ARGS)
        if cores:
            cmd += ["--cores", str(cores)]
    else:
        cmd += ["--cores", str(cores or os.cpu_count() or 1)]
    return cmd + list(extra) + list(targets)


def environment() -> dict[str, str]:
    """The environment for workflow jobs: this interpreter's bin directory first on
    PATH, so papermill's kernel and the tools jobs start come from this install."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[:1] != [bindir]:
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def invocation_log(results: Path, label: str) -> Path:
    """A new log file for one snakemake invocation, where ``status`` looks for failures."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return Path(results) / INVOCATION_LOG_DIR / f"{stamp}-{os.getpid()}-{label}.log"


def run_workflow(cmd: Sequence[str], log_file: Path | None = None, echo: bool = True) -> int:
    """Run a snakemake command, its output copied to ``log_file`` (and to stdout when
    ``echo``).  Returns snakemake's exit code."""
    if log_file is None:
        return subprocess.call(list(cmd), env=environment())
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as fh, subprocess.Popen(
            list(cmd), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if echo:
                sys.stdout.write(line)
        return proc.wait()
