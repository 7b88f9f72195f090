"""Reduced data: per-frame tables in the EuXFEL layout, and per-chunk partials."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from ..aggregate import Moments
from .euxfel import AtomicH5File, write_euxfel_file
from .provenance import attach_provenance


def write_frame_table(
    path: Path,
    source: str,
    table: Mapping[str, np.ndarray],
    prov: dict,
    group: str = "data",
    **meta,
) -> Path:
    """Write a per-frame table as an EuXFEL instrument source (one row per frame).

    ``table`` must contain ``trainId`` (sorted); all its columns become
    ``<group>.<column>`` keys, with INDEX first/count per train.
    """
    tids = np.asarray(table["trainId"], np.uint64)
    if tids.size and np.any(np.diff(tids.astype(np.int64)) < 0):
        raise ValueError("table rows must be sorted by trainId")
    trains, counts = np.unique(tids, return_counts=True)
    data = {f"{group}.{k}": np.asarray(v) for k, v in table.items() if k != "trainId"}
    return write_euxfel_file(path, trains, instrument={source: (counts, data)}, provenance=prov, **meta)


def read_frame_table(path: Path, source: str, group: str = "data") -> dict[str, np.ndarray]:
    """Read a table written by :func:`write_frame_table` (via extra-data)."""
    from .runs import open_file

    f = open_file(path)
    sd = f[source]
    out = {}
    for key in sd.keys():
        if key.startswith(group + ".") and not key.endswith(".trainId"):
            out[key.split(".", 1)[1]] = sd[key].ndarray()
    out["trainId"] = np.asarray(sd[f"{group}.{next(iter(out))}"].train_id_coordinates(), np.uint64)
    return out


def write_partials(path: Path, table: Mapping[str, np.ndarray], moments: Mapping[str, Moments], prov: dict,
                   groups: Mapping[str, object] | None = None) -> None:
    """A chunk's partial results: its frame table and mergeable accumulators, and
    further mergeable objects (anything with ``to_h5(group)``) in named groups."""
    with AtomicH5File(path) as f:
        attach_provenance(f, prov)
        for k, v in table.items():
            f[f"table/{k}"] = v
        for name, m in moments.items():
            m.to_h5(f.create_group(f"moments/{name}"))
        for name, obj in (groups or {}).items():
            obj.to_h5(f.create_group(name))


def read_partials(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Moments]]:
    with h5py.File(path, "r") as f:
        table = {k: f["table"][k][()] for k in f["table"]}
        moments = {k: Moments.from_h5(f["moments"][k]) for k in f.get("moments", {})}
    return table, moments
