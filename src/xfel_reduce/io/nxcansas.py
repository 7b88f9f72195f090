"""NXcanSAS writer for per-run SAXS profiles (all, laser on, laser off, on − off).

One HDF5 file holds one ``SASentry`` per profile, each with a ``SASdata`` group
(``Q``, ``I``, ``Idev``; ``I_axes = "Q"``, ``Q_indices = 0``, ``signal = "I"``),
a ``SASprocess`` with the reduction description and the provenance JSON, and a
``SASinstrument/SASsource`` with the radiation type.  This follows the NXcanSAS
application definition (NeXus ``NX_class`` and canSAS ``canSAS_class``
attributes side by side) so that sasview/sasdata load it.

Units: Q in ``1/nm``; I in detector photons per pixel-equivalent solid angle
(arbitrary units, ``a.u.``; per µJ when XGM-normalised).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from .provenance import provenance_json

__all__ = ["write_nxcansas", "read_nxcansas"]

ENTRIES = ("all", "on", "off", "on_minus_off")


def _str(group, name: str, value: str) -> None:
    group.create_dataset(name, data=np.bytes_(value))


def _entry(f: h5py.File, name: str, title: str, q: np.ndarray, i: np.ndarray, idev: np.ndarray,
           i_units: str, process: Mapping[str, Any], prov: str, frames: int, run: str) -> None:
    e = f.create_group(f"sasentry_{name}")
    e.attrs.update({"NX_class": "NXentry", "canSAS_class": "SASentry", "version": "1.1", "default": "sasdata"})
    _str(e, "definition", "NXcanSAS")
    _str(e, "title", f"{title} [{name}]")
    _str(e, "run", run)
    e["run"].attrs["name"] = name
    d = e.create_group("sasdata")
    d.attrs.update({"NX_class": "NXdata", "canSAS_class": "SASdata", "signal": "I",
                    "I_axes": "Q", "Q_indices": np.int64(0)})
    # NXcanSAS data must be finite: bins that are empty or have no error are dropped
    ok = np.isfinite(q) & np.isfinite(i) & np.isfinite(idev)
    qd = d.create_dataset("Q", data=q[ok].astype(np.float64))
    qd.attrs["units"] = "1/nm"
    idata = d.create_dataset("I", data=i[ok].astype(np.float64))
    idata.attrs.update({"units": i_units, "uncertainties": "Idev"})
    d.create_dataset("Idev", data=idev[ok].astype(np.float64)).attrs["units"] = i_units
    inst = e.create_group("sasinstrument")
    inst.attrs.update({"NX_class": "NXinstrument", "canSAS_class": "SASinstrument"})
    src = inst.create_group("sassource")
    src.attrs.update({"NX_class": "NXsource", "canSAS_class": "SASsource"})
    _str(src, "radiation", "X-ray free-electron laser")
    _str(src, "type", "Free-Electron Laser")
    _str(src, "probe", "x-ray")
    p = e.create_group("sasprocess")
    p.attrs.update({"NX_class": "NXprocess", "canSAS_class": "SASprocess"})
    _str(p, "name", "xfel-reduce SAXS")
    _str(p, "description", json.dumps({**process, "frames": int(frames)}, default=str))
    _str(p, "provenance", prov)


def write_nxcansas(
    path: str | os.PathLike,
    acc,
    *,
    title: str = "SAXS",
    run: str = "",
    provenance: Mapping[str, Any] | None = None,
    engine_info: Mapping[str, Any] | None = None,
    fits: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write the run averages of a :class:`xfel_reduce.saxs.SaxsAccumulator`.

    Entries ``sasentry_all``, ``sasentry_on``, ``sasentry_off`` (mean profile,
    ``Idev`` = :meth:`SaxsAccumulator.error`) and
    ``sasentry_on_minus_off``.  The file is written to a temporary name and
    renamed, so a crashed job never leaves a half-written result.  Besides the
    NXcanSAS entries, a plain group ``xfel_reduce`` keeps the full bin axis,
    counts, propagated Poisson errors, the 2-D mean image and fit results for
    the report.

    Parameters
    ----------
    path
        Output file.
    acc
        The merged run partial.
    title, run
        Human-readable title and run label.
    provenance
        From :func:`xfel_reduce.io.provenance.provenance`.
    engine_info
        :meth:`AzimuthalEngine.describe` output (integration settings).
    fits
        Optional ``{"all"|"on"|"off": fit_sphere(...) result}``; arrays dropped.
    """
    path = Path(path)
    prov = provenance_json(dict(provenance or {}))
    i_units = "a.u./uJ" if acc.xgm_normalised else "a.u."
    process = {"engine": dict(engine_info or {}), "xgm_normalised": bool(acc.xgm_normalised),
               "Idev": "max(standard error of the mean over frames, Poisson error of the mean)"}
    q = np.asarray(acc.radial, dtype=np.float64)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"NX_class": "NXroot", "default": "sasentry_all",
                        "file_name": path.name, "creator": "xfel-reduce"})
        for g in ("all", "on", "off"):
            _entry(f, g, title, q, acc.mean(g)[0], acc.error(g), i_units, process, prov, acc.frames[g], run)
        diff, err = acc.difference()
        _entry(f, "on_minus_off", title, q, diff, err, i_units, process, prov,
               min(acc.frames["on"], acc.frames["off"]), run)
        extra = f.create_group("xfel_reduce")
        extra.attrs["NX_class"] = "NXcollection"
        extra.create_dataset("q", data=q).attrs["units"] = "1/nm"
        for g in ("all", "on", "off"):
            mean, sem, perr = acc.mean(g)
            sub = extra.create_group(g)
            sub.create_dataset("I", data=mean)
            sub.create_dataset("sem", data=sem)
            sub.create_dataset("poisson_err", data=perr)
            sub.create_dataset("error", data=acc.error(g))
            sub.create_dataset("n_frames_per_bin", data=acc.n[g])
            sub.attrs["frames"] = int(acc.frames[g])
            sub.attrs["pulse_energy_sum_uj"] = float(acc.energy_sum[g])
        img = acc.mean_image()
        if img is not None:
            extra.create_dataset("mean_image", data=img.astype(np.float32), compression="gzip", compression_opts=1)
            extra.create_dataset("image_count", data=acc.image_count.astype(np.int32), compression="gzip",
                                 compression_opts=1)
        if fits:
            clean = {k: {kk: vv for kk, vv in v.items() if not isinstance(vv, np.ndarray)} for k, v in fits.items()}
            extra.attrs["fits"] = json.dumps(clean, default=float)
            # the fitted curves too, on `q`: reports show the stored fit, never a refit
            for g, fit in fits.items():
                for key in ("model", "residuals"):
                    if g in extra and isinstance(fit.get(key), np.ndarray):
                        extra[g].create_dataset(f"fit_{key}", data=np.asarray(fit[key], np.float64))
        extra.attrs["engine"] = json.dumps(dict(engine_info or {}), default=str)
        extra.attrs["provenance"] = prov
    os.replace(tmp, path)
    return path


def read_nxcansas(path: str | os.PathLike, entry: str = "all") -> dict[str, np.ndarray]:
    """Read ``Q``, ``I``, ``Idev`` of one entry (``all``, ``on``, ``off``, ``on_minus_off``)."""
    with h5py.File(path, "r") as f:
        name = f"sasentry_{entry}"
        if name not in f:
            raise KeyError(f"{path}: no {name}; entries are {[k for k in f if k.startswith('sasentry_')]}")
        d = f[name]["sasdata"]
        return {"Q": d["Q"][()], "I": d["I"][()], "Idev": d["Idev"][()]}
