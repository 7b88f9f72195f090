"""The conda environments pin the same versions as the lock file."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    out = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, ver = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name.strip().lower())] = ver.strip()
    return out


def _pins(env: dict):
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for p in dep.get("pip", []):
                if "==" in p:
                    yield p.split("==", 1)
        elif "=" in dep and not dep.startswith("python="):
            yield dep.split("=", 1)


def test_envs_agree_with_lock():
    lock = _lock()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs, "no conda environments in envs/"
    checked = 0
    for path in envs:
        env = yaml.safe_load(path.read_text())
        for name, ver in _pins(env):
            key = re.sub(r"[-_.]+", "-", name.strip().lower())
            assert key in lock, f"{path.name}: {name} is not in requirements.lock"
            assert lock[key] == ver.strip(), f"{path.name}: {name} {ver} but the lock has {lock[key]}"
            checked += 1
    assert checked >= 10


def test_lock_pins_the_required_stack():
    lock = _lock()
    major = lambda v: int(v.split(".")[0])  # noqa: E731
    assert major(lock["snakemake"]) >= 9
    sv = [int(x) for x in lock["snakemake-executor-plugin-slurm"].split(".")[:2]]
    assert sv >= [2, 1]
    for pkg in ("numpy", "scipy", "pyfai", "extra-data", "extra-geom", "h5py", "papermill", "nbconvert",
                "ipykernel", "matplotlib"):
        assert pkg in lock, pkg
