"""Write files in the European XFEL HDF5 layout (RAW, CORR and REDU files).

The layout is the one the facility's DAQ writes and extra-data reads:

* ``INDEX/trainId`` (+ ``timestamp``, ``flag``) — the trains in the file;
* ``INDEX/<source>/<group>/first|count`` — rows of each instrument group per train;
* ``INSTRUMENT/<source>/<group>/<key>`` — per-row data (frames, pulses, …);
* ``INDEX/<source>/first|count``, ``CONTROL/<source>/<key>/value|timestamp`` and
  ``RUN/<source>/<key>/value|timestamp`` — slow (one value per train) data;
* ``METADATA`` — data sources, format version, proposal/run/sequence numbers.

Files are written to a temporary name beside the target and renamed only once
complete and closed, so a crash never leaves a file that looks finished (Snakemake,
extra-data and the user all rely on that).
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Iterable, Mapping

import h5py
import numpy as np

from .provenance import attach_provenance

FORMAT_VERSION = "1.2"

vlen_str = h5py.string_dtype("ascii")


def _split_key(key: str) -> tuple[str, str]:
    group, _, rest = key.partition(".")
    if not rest:
        raise ValueError(f"instrument key {key!r} must look like 'group.name'")
    return group, rest


class AtomicH5File:
    """An ``h5py.File`` opened for writing under a temporary name.

    On clean exit the file is closed and renamed to its final path; on an exception
    the temporary file is removed, so no partial output is ever left behind.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.h5: h5py.File | None = None

    def __enter__(self) -> h5py.File:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.h5 = h5py.File(self.tmp_path, "w", libver=("earliest", "v110"))
        return self.h5

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.h5 is not None
        self.h5.close()
        if exc_type is None:
            os.replace(self.tmp_path, self.path)
        else:
            self.tmp_path.unlink(missing_ok=True)


def write_h5(path: str | os.PathLike, prov: dict, datasets: dict[str, np.ndarray],
             attrs: dict | None = None, compressed: Iterable[str] = ()) -> Path:
    """Write a flat HDF5 file of named arrays atomically, with provenance.

    Parameters
    ----------
    path : path
        Output file (written under a temporary name, then renamed).
    prov : dict
        Provenance record (see :mod:`xfel_reduce.io.provenance`).
    datasets : dict
        ``{name: array}``; an array may carry an ``axes`` description as
        ``(array, "gain, cell, ...")``.
    attrs : dict, optional
        File attributes.
    compressed : iterable of str
        Names of datasets to store gzip-compressed (bit masks and counts shrink
        by orders of magnitude; noisy float maps hardly do).

    Returns
    -------
    Path
        The written file.
    """
    compressed = set(compressed)
    with AtomicH5File(path) as f:
        attach_provenance(f, prov)
        for name, value in datasets.items():
            arr, axes = value if isinstance(value, tuple) else (value, None)
            kw = {"compression": "gzip", "compression_opts": 1, "shuffle": True} if name in compressed else {}
            ds = f.create_dataset(name, data=arr, **kw)
            if axes:
                ds.attrs["axes"] = axes
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return Path(path)


class StreamingWriter:
    """``with`` support for writers of one output file: :meth:`close` publishes
    the file on a clean exit, :meth:`abort` discards it on an exception, so an
    interrupted job never leaves a file that looks complete."""

    def close(self) -> object:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class EuXFELWriter(StreamingWriter):
    """Incremental writer for one EuXFEL-layout sequence file.

    Declare the sources with their per-train row counts first, then fill the data
    (all at once or train by train), then :meth:`close` (or leave the ``with``
    block).  Datasets are allocated at their final size up front, which keeps the
    INDEX consistent whatever order the data arrives in.

    Parameters
    ----------
    path
        Final file path.
    train_ids
        Train IDs of the file, strictly increasing.
    provenance
        Provenance record stored as an attribute of the root group.
    proposal, run, sequence
        Numbers stored in ``METADATA``.
    run_type
        Free text stored in ``METADATA/runType`` (e.g. ``"dark HG"``, ``"saxs"``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        train_ids: np.ndarray,
        provenance: dict | None = None,
        proposal: int = 0,
        run: int = 0,
        sequence: int = 0,
        run_type: str = "",
        timestamps: np.ndarray | None = None,
    ):
        self.train_ids = np.asarray(train_ids, dtype=np.uint64)
        if self.train_ids.ndim != 1:
            raise ValueError("train_ids must be one-dimensional")
        if self.train_ids.size > 1 and np.any(np.diff(self.train_ids.astype(np.int64)) <= 0):
            raise ValueError("train IDs must be strictly increasing")
        self._atomic = AtomicH5File(path)
        self.f = self._atomic.__enter__()
        self._closed = False
        self._sources: list[str] = []
        self._first: dict[tuple[str, str], np.ndarray] = {}
        n = self.train_ids.size
        self.f.create_group("RUN")
        self.f.create_group("CONTROL")
        self.f.create_group("INSTRUMENT")
        self.f["INDEX/trainId"] = self.train_ids
        if timestamps is None:
            # Trains come at 10 Hz; the absolute time does not matter for analysis.
            t0 = int(_dt.datetime.now(_dt.timezone.utc).timestamp() * 1e9)
            timestamps = t0 + np.arange(n, dtype=np.uint64) * np.uint64(100_000_000)
        self.f["INDEX/timestamp"] = np.asarray(timestamps, dtype=np.uint64)
        self.f["INDEX/flag"] = np.ones(n, dtype=np.int32)
        # format 1.2+: which DAQ node sent each train; -1 = not recorded (as the
        # facility's mock writers do)
        self.f["INDEX/origin"] = np.full(n, -1, dtype=np.int32)
        self._meta = dict(proposal=proposal, run=run, sequence=sequence, run_type=run_type)
        if provenance is not None:
            attach_provenance(self.f, provenance)

    # -- declaration -------------------------------------------------------------
    def add_instrument(
        self,
        source: str,
        counts: np.ndarray,
        keys: Mapping[str, tuple[np.dtype | str, tuple[int, ...]]],
        chunk_rows: int | None = None,
        compression: str | None = None,
        filters: Mapping | None = None,
    ) -> None:
        """Declare an instrument source.

        Parameters
        ----------
        source
            e.g. ``"SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"``.
        counts
            Rows per train (one entry per train of the file).
        keys
            ``{"group.name": (dtype, row_shape)}``; every group also gets a
            ``<group>/trainId`` dataset filled automatically.
        chunk_rows
            HDF5 chunk length along the row axis (default: whole small datasets,
            one row for large frames).
        compression
            Optional h5py compression filter (``"gzip"``…).
        filters
            Further ``create_dataset`` filter arguments of the multi-dimensional keys
            (``compression``, ``compression_opts``, ``shuffle``; e.g.
            :func:`xfel_reduce.kept.storage_filters`); ignored for empty datasets.
        """
        counts = np.asarray(counts, dtype=np.uint64)
        if counts.shape != self.train_ids.shape:
            raise ValueError(
                f"{source}: {counts.size} counts given for {self.train_ids.size} trains"
            )
        first = np.zeros_like(counts)
        first[1:] = np.cumsum(counts)[:-1]
        total = int(counts.sum())
        row_tids = np.repeat(self.train_ids, counts.astype(np.int64))
        groups = {}
        for key, (dtype, row_shape) in keys.items():
            group, name = _split_key(key)
            groups.setdefault(group, []).append((name, dtype, tuple(row_shape)))
        for group, items in groups.items():
            if (source, group) in self._first:
                raise ValueError(f"{source}/{group} declared twice")
            self._first[(source, group)] = first
            self.f[f"INDEX/{source}/{group}/first"] = first
            self.f[f"INDEX/{source}/{group}/count"] = counts
            grp = self.f.require_group(f"INSTRUMENT/{source}/{group}")
            grp["trainId"] = row_tids
            for name, dtype, row_shape in items:
                if name == "trainId":
                    continue
                row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                if chunk_rows is not None:
                    rows = chunk_rows
                else:
                    rows = max(1, min(total, (1 << 20) // max(row_bytes, 1)))
                chunks = (max(1, min(rows, total)),) + row_shape if total else None
                extra = dict(filters) if (filters and total and row_shape) else {}
                extra.setdefault("compression", compression)
                grp.create_dataset(
                    name, shape=(total,) + row_shape, dtype=dtype, chunks=chunks, **extra,
                )
            self._sources.append(f"INSTRUMENT/{source}/{group}")

    def add_control(
        self,
        source: str,
        values: Mapping[str, np.ndarray] | None = None,
        run_values: Mapping[str, object] | None = None,
        attrs: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Declare and write a control (slow) source: one value per train.

        ``values`` maps ``"a.b"`` keys to arrays with one row per train; ``run_values``
        maps keys to the single value stored in ``RUN`` (for keys present in
        ``values`` and without a run value, the first train's value is used);
        ``attrs`` maps keys to Karabo attributes (``unitSymbol`` …), stored on the
        key's group as the DAQ does.
        """
        n = self.train_ids.size
        ts = self.f["INDEX/timestamp"][:]
        self.f[f"INDEX/{source}/first"] = np.arange(n, dtype=np.uint64)
        self.f[f"INDEX/{source}/count"] = np.ones(n, dtype=np.uint64)
        ctrl = self.f.require_group(f"CONTROL/{source}")
        run = self.f.require_group(f"RUN/{source}")
        run_values = dict(run_values or {})
        for key, arr in (values or {}).items():
            path = key.replace(".", "/")
            arr = np.asarray(arr)
            if arr.shape[0] != n:
                raise ValueError(f"{source}.{key}: {arr.shape[0]} values for {n} trains")
            ctrl[f"{path}/value"] = arr
            ctrl[f"{path}/timestamp"] = ts
            ctrl[path].attrs.update(dict((attrs or {}).get(key, {})))
            run_values.setdefault(key, arr[0] if n else None)
        for key, value in run_values.items():
            path = key.replace(".", "/")
            if isinstance(value, str):
                run.create_dataset(f"{path}/value", data=[value.encode()], dtype=vlen_str)
            else:
                run[f"{path}/value"] = np.asarray([value])
            run[f"{path}/timestamp"] = ts[:1] if n else np.zeros(1, np.uint64)
        self._sources.append(f"CONTROL/{source}")

    # -- filling -------------------------------------------------------------------
    def dataset(self, source: str, key: str) -> h5py.Dataset:
        group, name = _split_key(key)
        return self.f[f"INSTRUMENT/{source}/{group}/{name}"]

    def write_rows(self, source: str, key: str, start: int, data: np.ndarray) -> None:
        """Write rows ``start:start+len(data)`` of an instrument dataset."""
        ds = self.dataset(source, key)
        ds[start:start + len(data)] = data

    def write_train(self, source: str, train_index: int, data: Mapping[str, np.ndarray]) -> None:
        """Write all rows of one train for the given keys of a source."""
        for key, arr in data.items():
            group, _ = _split_key(key)
            start = int(self._first[(source, group)][train_index])
            self.write_rows(source, key, start, arr)

    def fill(self, source: str, data: Mapping[str, np.ndarray]) -> None:
        """Write whole datasets at once."""
        for key, arr in data.items():
            self.dataset(source, key)[...] = arr

    # -- closing -------------------------------------------------------------------
    def _write_metadata(self) -> None:
        md = self.f.create_group("METADATA")
        roots = [s.split("/", 1)[0] for s in self._sources]
        devices = [s.split("/", 1)[1] for s in self._sources]
        ds = md.create_group("dataSources")
        ds.create_dataset("dataSourceId", data=[s.encode() for s in self._sources], dtype=vlen_str)
        ds.create_dataset("root", data=[s.encode() for s in roots], dtype=vlen_str)
        ds.create_dataset("deviceId", data=[s.encode() for s in devices], dtype=vlen_str)
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ").encode()
        md.create_dataset("dataFormatVersion", data=[FORMAT_VERSION.encode()], dtype=vlen_str)
        md.create_dataset("creationDate", data=[now], dtype=vlen_str)
        md.create_dataset("updateDate", data=[now], dtype=vlen_str)
        md.create_dataset("daqLibrary", data=[b"xfel-reduce"], dtype=vlen_str)
        md.create_dataset("karaboFramework", data=[b"none"], dtype=vlen_str)
        md.create_dataset("proposalNumber", data=[self._meta["proposal"]], dtype=np.uint32)
        md.create_dataset("runNumber", data=[self._meta["run"]], dtype=np.uint32)
        md.create_dataset("sequenceNumber", data=[self._meta["sequence"]], dtype=np.uint32)
        md.create_dataset("runType", data=[self._meta["run_type"].encode()], dtype=vlen_str)
        md.create_dataset("sample", data=[b"simulated" if "sim" in self._meta["run_type"] else b""],
                          dtype=vlen_str)

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        if self._closed:
            return
        self._write_metadata()
        self._atomic.__exit__(None, None, None)
        self._closed = True

    def abort(self) -> None:
        """Discard the file (nothing is left on disk)."""
        if not self._closed:
            self._atomic.__exit__(RuntimeError, None, None)
            self._closed = True


def write_euxfel_file(
    path: str | os.PathLike,
    train_ids: np.ndarray,
    instrument: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]] | None = None,
    control: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    provenance: dict | None = None,
    **meta,
) -> Path:
    """Write a complete EuXFEL-layout file from in-memory arrays.

    Parameters
    ----------
    instrument
        ``{source: (counts_per_train, {"group.key": array})}``; each array's first
        axis has ``counts.sum()`` rows.
    control
        ``{source: {"key": per-train array}}``.
    """
    with EuXFELWriter(path, train_ids, provenance=provenance, **meta) as w:
        for source, (counts, data) in (instrument or {}).items():
            keys = {k: (np.asarray(v).dtype, np.asarray(v).shape[1:]) for k, v in data.items()}
            w.add_instrument(source, counts, keys)
            w.fill(source, data)
        for source, values in (control or {}).items():
            w.add_control(source, values)
    return Path(path)
