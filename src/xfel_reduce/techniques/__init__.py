"""Techniques as plug-ins: one module each, behind one small interface.

A technique (``runs[].technique`` in the config) is a :class:`Technique` subclass in
its own module of this package, registered by name.  It says

* what its part of a sequence's **one pass** writes (:attr:`Technique.sequence_files`)
  and returns the :class:`SequenceReducer` that writes it (:meth:`Technique.reducer`):
  corrected frames and their annotation rows go in, chunk by chunk, a mergeable
  partial comes out (:mod:`xfel_reduce.onepass` drives the pass);
* what its **run-level gather** writes (:attr:`Technique.run_files`,
  :meth:`Technique.gather`);
* its **products** (for ``summary.json``'s bytes and ratios), its **report** notebook
  and that notebook's inputs.

The workflow (``workflow/rules/common.smk``, each technique's rule file), the run
summary and the aggregation find techniques here, never through branches of their
own.  Paths are templates relative to the results folder with ``{run}`` (4 digits)
and ``{seq}`` (5 digits).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Mapping, Protocol, Sequence

import numpy as np

#: the run's aggregate (annotation table, class images), relative to the results folder;
#: the workflow's AGGREGATE_FILE and the plug-ins that read it use this one template
AGGREGATE_FILE = "r{run}/aggregate/run.h5"


def aggregate_path(results: str | Path, run: int) -> str:
    """The run's aggregate file (:data:`AGGREGATE_FILE`)."""
    return str(Path(results) / AGGREGATE_FILE.format(run=f"{int(run):04d}"))


#: the run's bins (runs with ``bins``: :mod:`xfel_reduce.binning`)
BINNING_FILE = "r{run}/binning/binning.h5"


def binning_path(results: str | Path, run: int) -> str:
    return str(Path(results) / BINNING_FILE.format(run=f"{int(run):04d}"))

log = logging.getLogger("xfel_reduce")


class SequenceReducer(Protocol):
    """A technique's part of a sequence's one pass."""

    def add(self, chunk, rows: Mapping[str, np.ndarray]) -> None:
        """One chunk of corrected frames (:class:`xfel_reduce.io.frames.FrameChunk`) with
        its annotation rows (chunk order: ``xray``, ``ppl``, ``pulse_energy`` …)."""

    def finish(self) -> dict:
        """Write the outputs (atomically); a small JSON-able summary."""

    def abort(self) -> None:
        """The pass failed: leave no output behind."""


class Technique:
    """Defaults: a technique with no per-sequence reduction of its own (the annotation
    and the aggregate are its products) and no report of its own."""

    name: ClassVar[str] = "none"
    #: hits decided per frame (``summary.json`` reports hit rates)
    hit_finding: ClassVar[bool] = False
    #: the annotation's lit-pixel / SPI hits are this technique's hits (judged in the
    #: annotation report, against the truth too)
    annotation_hits: ClassVar[bool] = False
    #: detector family of the run (``agipd`` runs take the one pass)
    detector: ClassVar[str] = "agipd"
    #: report notebook ``reports/<notebook>.ipynb`` (``None``: none of its own)
    notebook: ClassVar[str | None] = None
    #: the one pass's outputs of this technique, {name: template}
    sequence_files: ClassVar[dict[str, str]] = {}
    #: the gather's outputs, {name: template}
    run_files: ClassVar[dict[str, str]] = {}
    #: products, {product: [names of sequence_files or run_files]}
    product_files: ClassVar[dict[str, list[str]]] = {}
    #: run-level products per bin (runs with ``bins``), relative to the results folder
    binned_files: ClassVar[dict[str, str]] = {}
    #: per-sequence tables that decide the run's hits in the aggregate (name in sequence_files)
    hit_table: ClassVar[str | None] = None
    #: the report wants the simulator's per-frame truth (truth.h5) instead of truth.json
    truth_per_frame: ClassVar[bool] = False

    # -- paths --------------------------------------------------------------------------
    @classmethod
    def sequence_paths(cls, results: str | Path, run: int, seqs: Sequence[str | int]) -> dict[str, list[str]]:
        r = f"{int(run):04d}"
        return {k: [str(Path(results) / t.format(run=r, seq=f"{int(s):05d}")) for s in seqs]
                for k, t in cls.sequence_files.items()}

    @classmethod
    def run_paths(cls, results: str | Path, run: int) -> dict[str, str]:
        r = f"{int(run):04d}"
        return {k: str(Path(results) / t.format(run=r)) for k, t in cls.run_files.items()}

    @classmethod
    def products(cls, results: str | Path, run: int, seqs: Sequence[str | int]) -> dict[str, list[str]]:
        """``{product: [files]}`` of the technique's own products."""
        per_seq, per_run = cls.sequence_paths(results, run, seqs), cls.run_paths(results, run)
        return {p: [f for n in names for f in (per_seq[n] if n in per_seq else [per_run[n]])]
                for p, names in cls.product_files.items()}

    @classmethod
    def report_inputs(cls, results: str | Path, run: int, seqs: Sequence[str | int]) -> dict:
        """The report notebook's file parameters (truth added by the workflow)."""
        return {}

    # -- the pass and the gather ----------------------------------------------------------
    def reducer(self, config: dict, run: int, seq: int, frames: Mapping[str, np.ndarray], train_ids: np.ndarray,
                outputs: Mapping[str, Path], provenance: dict, static_mask_inputs: Sequence[Path] = (),
                where: str = "?") -> SequenceReducer | None:
        """This technique's part of the sequence's pass (``None``: nothing of its own).

        ``frames``: ``trainId``, ``pulseId``, ``cellId`` and the beam columns of every
        frame of the sequence, known before its first image is read.
        """
        return None

    def gather(self, config: dict, run: int, inputs: Mapping[str, Sequence[Path]],
               outputs: Mapping[str, Path]) -> dict:
        raise NotImplementedError(f"technique {self.name} has no run-level gather")

    def binned(self, config: dict, run: int, binning_file: Path, inputs: Mapping[str, Sequence[Path]],
               output: Path, provenance: dict) -> dict:
        """This technique's products per bin of the run (``binned_files``), from its
        per-sequence files (``inputs``, named as in ``sequence_files``)."""
        raise NotImplementedError(f"technique {self.name} has no binned products")

    @classmethod
    def binned_paths(cls, results: str | Path, run: int) -> dict[str, str]:
        r = f"{int(run):04d}"
        return {k: str(Path(results) / t.format(run=r)) for k, t in cls.binned_files.items()}

    def merge_hits(self, table: dict[str, np.ndarray], hit_tables: Sequence[Path]) -> dict[str, np.ndarray]:
        """The run table with this technique's hits (``hit_table``) merged in."""
        return table

    def frame_table(self, paths: Sequence[Path]) -> dict[str, np.ndarray]:
        """The run's per-frame table for the summary, from the summary's ``table`` inputs."""
        from ..steps import load_run_table

        return load_run_table(Path(paths[0]))


_REGISTRY: dict[str, type[Technique]] = {Technique.name: Technique}


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: make a technique known by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str | None) -> Technique:
    """The technique plug-in of a run (``None``, like ``none``, is the base: annotation
    and aggregate only); an unknown name is an error naming the known ones."""
    name = "none" if name is None else name
    if name not in _REGISTRY:
        raise ValueError(f"unknown technique {name!r}: known are {sorted(_REGISTRY)} (runs[].technique)")
    return _REGISTRY[name]()


def names() -> list[str]:
    return sorted(_REGISTRY)


# -- shared by the q-based techniques --------------------------------------------------------
def run_setup(config: dict, run: int) -> dict:
    """Distance and photon energy of a run, and what decided each.

    In this order: the run's entry in ``runs``; the simulation plan of a simulated
    run; for the photon energy, the XGM's ``pulseEnergy.wavelengthUsed`` recorded in
    the RAW run; the ``geometry`` section. Neither is ever guessed: a q-based
    technique without a distance (or energy) stops with the key to set. The result
    goes into the outputs' provenance (``setup``).
    """
    from ..config import ConfigError

    entry = next((r for r in config["runs"] if int(r["run"]) == int(run)), {})
    out: dict = {"decided": {}}
    for key in ("distance_m", "photon_energy_kev"):
        if entry.get(key):
            out[key], out["decided"][key] = float(entry[key]), f"config runs[{run}].{key}"
    sim = config.get("simulate", {})
    if sim.get("enabled"):
        from ..simulate.beamtime import iter_runs, run_plan
        for rc in iter_runs(sim):
            if int(rc["run"]) == int(run):
                plan = run_plan(sim, rc)
                for key in ("distance_m", "photon_energy_kev"):
                    if key not in out:
                        out[key], out["decided"][key] = float(plan[key]), "simulation plan"
    if "photon_energy_kev" not in out:
        kev = _recorded_photon_energy(config, run)
        if kev is not None:
            out["photon_energy_kev"], out["decided"]["photon_energy_kev"] = kev, "XGM pulseEnergy.wavelengthUsed"
    geo = config.get("geometry", {})
    for key in ("distance_m", "photon_energy_kev"):
        if key not in out and geo.get(key):
            out[key], out["decided"][key] = float(geo[key]), f"config geometry.{key}"
        if key not in out:
            raise ConfigError(
                f"run {run}: {'the sample-detector distance' if key == 'distance_m' else 'the photon energy'} "
                f"is unknown{'' if key == 'distance_m' else ' (no XGM wavelength recorded in the run)'}: set "
                f"`{key}` in the run's entry of `runs` (or `geometry.{key}` for all runs)")
    return out


def _recorded_photon_energy(config: dict, run: int) -> float | None:
    """Photon energy (keV) from the run's XGM ``pulseEnergy.wavelengthUsed`` (nm), if recorded."""
    from ..io import discovery
    from ..io.trains import open_train_data, resolve_sources, train_files

    raw = Path(config["proposal_dir"]) / "raw" / f"r{int(run):04d}"
    files = train_files(raw)
    if not files:
        return None
    dc = open_train_data(raw, files)
    xgm = resolve_sources(config, dc, str(raw)).xgm
    device = xgm.split(":", 1)[0] if xgm else None
    if not device or device not in dc.control_sources or "pulseEnergy.wavelengthUsed" not in dc[device]:
        return None
    nm = float(dc[device, "pulseEnergy.wavelengthUsed"].as_single_value(rtol=1e-3))
    return discovery.photon_energy_kev(nm) if nm > 0 else None


def static_mask(config: dict, inputs: Sequence[Path]) -> np.ndarray:
    """The run's static mask ``(n_modules, 512, 128)`` uint32 (non-zero = bad).

    From the modules' dark constants: pixels flagged in any gain stage or memory cell.
    With facility proc data (no constants), from the run's first CORR sequence: pixels
    bad in any frame of its first train.  Either way every chunk of a run uses the same
    mask, so ring labels and bins — and thus the partial sums — are defined identically
    however the run is split.
    """
    import h5py

    from ..config import modules_of
    from ..io.frames import SequenceFrames

    paths = [Path(p) for p in inputs]
    with h5py.File(paths[0], "r") as f:
        is_constants = "badpixels" in f
    if is_constants:
        from ..calibrate.agipd import read_badpixels_any

        by_module = dict(read_badpixels_any(p) for p in paths)
        return np.stack([by_module[m] for m in modules_of(config)]).astype(np.uint32)
    chunk = next(SequenceFrames(dict(zip(modules_of(config), paths))).iter_chunks(1))
    return np.bitwise_or.reduce(chunk.mask, axis=0)


# the plug-ins register themselves
from . import saxs, sfx, spectroscopy, spi, xpcs  # noqa: E402,F401
