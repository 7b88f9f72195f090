"""Provenance: what made an output file (config, package versions, inputs, code).

Every file the workflow writes carries a provenance record so that a result found on
disk months later can be traced to the exact configuration, software and inputs.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import numpy as np

#: Packages whose versions change results; recorded in every output.
TRACKED_PACKAGES = (
    "xfel-reduce",
    "numpy",
    "scipy",
    "h5py",
    "pyFAI",
    "extra-data",
    "extra-geom",
    "numba",
    "snakemake",
)

PROVENANCE_ATTR = "xfel_reduce_provenance"


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Installed versions of the packages that influence results."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the xfel-reduce checkout in use, with ``-dirty`` if modified."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def provenance(config: dict | None, inputs: Iterable[str | os.PathLike] = (), **extra: Any) -> dict:
    """A provenance record.

    Parameters
    ----------
    config
        The configuration that produced the output (the full workflow config or the
        section that matters).
    inputs
        Input files; their absolute paths and sizes are recorded.
    **extra
        Anything else worth keeping (rule name, chunk, parameters).
    """
    files = []
    for p in inputs:
        path = Path(p)
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        files.append({"path": str(path.resolve()), "size": size})
    return {
        "software": "xfel-reduce",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "config": _jsonable(config or {}),
        "inputs": files,
        **_jsonable(extra),
    }


def provenance_json(prov: dict) -> str:
    return json.dumps(prov, sort_keys=True)


def attach_provenance(h5obj, prov: dict) -> None:
    """Store ``prov`` as a JSON string attribute on an h5py file or group."""
    h5obj.attrs[PROVENANCE_ATTR] = provenance_json(prov)


def read_provenance(h5obj) -> dict:
    """Read a record written by :func:`attach_provenance`."""
    raw = h5obj.attrs.get(PROVENANCE_ATTR)
    if raw is None:
        raise KeyError(f"{getattr(h5obj, 'name', h5obj)} carries no xfel-reduce provenance")
    if isinstance(raw, bytes):
        raw = raw.decode()
    return json.loads(raw)
