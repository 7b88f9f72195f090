"""The workflow's steps as plain functions (what the Snakemake scripts call).

Each step takes the workflow config and explicit input/output paths, so it can be
run and tested without Snakemake and reused by the CLI.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np

from . import annotate, techniques
from .aggregate import Moments
from .calibrate import agipd
from .calibrate.dark import BadPixelRules
from .config import modules_of, trains_per_chunk
from .io import sources
from .io.atomic import write_json
from .io.euxfel import AtomicH5File
from .io.frames import corr_source, frame_key
from .io.provenance import attach_provenance, provenance
from .io.redu import read_partials, write_frame_table
from .io.runs import InputDataError, open_file

log = logging.getLogger("xfel_reduce")


def named_inputs(named: Mapping[str, object], exclude: Sequence[str] = ()) -> dict[str, list[str]]:
    """A rule's named inputs as ``{name: [paths]}`` (Snakemake gives a str for one
    file and a list for several), without the names in ``exclude``."""
    return {k: [v] if isinstance(v, str) else [str(p) for p in v] for k, v in named.items() if k not in exclude}


def setup_logging(log_file: str | Path | None, threads: int | None = None) -> logging.Logger:
    """Log to the rule's ``log:`` file (and stderr), with timestamps.

    ``threads`` (the job's Snakemake ``threads``) caps numba's thread pool: by
    default it takes every core of the node, so two jobs sharing a laptop, or
    jobs packed onto a cluster node, would oversubscribe it.
    """
    if threads is not None:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return log


# -- simulation ---------------------------------------------------------------------
def simulate_detector(config: dict) -> None:
    from .simulate.beamtime import iter_runs, write_detector_truth
    from .simulate.jungfrau import JUNGFRAU_RUN_TYPES, write_jungfrau_detector_truth

    sim = config["simulate"]
    write_detector_truth(Path(config["proposal_dir"]), sim, config)
    if any(r.get("type") in JUNGFRAU_RUN_TYPES for r in iter_runs(sim)):
        write_jungfrau_detector_truth(Path(config["proposal_dir"]), sim, config)


def simulate_run(config: dict, run: int) -> list[Path]:
    from .simulate.beamtime import iter_runs, simulate_run as _sim
    from .simulate.jungfrau import JUNGFRAU_RUN_TYPES, simulate_jungfrau_run

    sim = config["simulate"]
    for run_cfg in iter_runs(sim):
        if int(run_cfg["run"]) == int(run):
            fn = simulate_jungfrau_run if run_cfg.get("type") in JUNGFRAU_RUN_TYPES else _sim
            return fn(Path(config["proposal_dir"]), sim, run_cfg, config, progress=log)
    raise ValueError(f"run {run} is not among the simulated runs of the config")


# -- calibration --------------------------------------------------------------------
def dark_module(config: dict, module: int, dark_run_dirs: Sequence[Path], output: Path,
                inputs: Sequence[Path] = ()) -> None:
    cal = config["calibration"]
    dark = agipd.characterise_module(
        {stage: Path(d) for stage, d in enumerate(dark_run_dirs)}, module,
        int(cal["memory_cells"]), BadPixelRules.from_dict(cal.get("badpixels")),
    )
    gain = agipd.read_gain_constants(Path(cal["gain_constants"]), module)
    if gain.shape[1] < dark.offset.shape[1]:
        raise InputDataError(
            f"gain constants cover {gain.shape[1]} memory cells, darks {dark.offset.shape[1]}")
    prov = provenance(config, list(inputs) + [cal["gain_constants"]], step="dark", module=module)
    agipd.write_constants(Path(output), module, dark, gain[:, : dark.offset.shape[1]], prov)
    bad = dark.badpixels[0] != 0
    log.info("module %d: median HG offset %.1f ADU, median HG noise %.2f ADU, %.3f %% bad (HG)",
             module, float(np.nanmedian(dark.offset[0])), float(np.nanmedian(dark.noise[0])), 100 * bad.mean())


def correct_file(config: dict, module: int, raw: Path, constants: Path, output: Path) -> dict:
    """RAW → CORR for one module sequence (the one pass writes CORR only when asked;
    this is the stand-alone correction)."""
    prov = provenance(config, [raw, constants], step="correct", module=module)
    consts = agipd.load_constants(Path(constants))
    return agipd.correct_sequence(Path(raw), Path(output), module, consts, prov, agipd.common_mode_of(config),
                                  trains_per_chunk=trains_per_chunk(config), progress=log)


# -- annotation -----------------------------------------------------------------------
def sequence_beam(config: dict, train_files: Sequence[Path], train_ids: np.ndarray,
                  xray_frames: object = None, raw_dir: Path | None = None):
    """The beam table (:class:`xfel_reduce.beam.TrainBeam`) of a sequence's trains.

    Timeserver (or pulse-pattern decoder, or the recorded lit-frame finder), AGIPD
    control and XGM are read by train ID from all of the run's train-level files.
    Without a pulse pattern the X-ray frames are unknown: an error naming what is
    missing, unless the user declares them (``annotation.xray_frames``; returns
    ``None`` when the run has no beam data at all).
    """
    from . import beam
    from .io.trains import open_train_data, resolve_sources

    paths = [Path(p) for p in train_files]
    where = str(raw_dir or (paths[0].parent if paths else "the run"))
    try:
        dc = open_train_data(raw_dir or (paths[0].parent if paths else where), paths)
    except InputDataError:
        if xray_frames is None:
            raise
        log.warning("%s: no train-level files; X-ray frames as declared (annotation.xray_frames)", where)
        return None
    rs = resolve_sources(config, dc, where)
    log.info("beam sources of %s: %s", where, rs.as_dict())
    has_pattern = rs.timeserver or rs.pulse_pattern_decoder or rs.lit_frame_finder
    if not (has_pattern and (rs.agipd_control or rs.lit_frame_finder)):
        missing = [n for n, v in (("timeserver or pulse-pattern decoder", has_pattern),
                                  ("AGIPD control device (…/MDL/FPGA_COMP)", rs.agipd_control)) if not v]
        if xray_frames is None:
            raise InputDataError(
                f"{where} has no {' and no '.join(missing)}, so which frames saw X-rays is unknown. "
                "If the run has them under other names, set `sources.timeserver` / "
                "`sources.detector_control`; otherwise declare the X-ray frames with "
                "`annotation.xray_frames: all` (or a list of memory cells).")
        log.warning("%s has no %s: X-ray frames as declared (annotation.xray_frames)", where,
                    " and no ".join(missing))
        return None
    return beam.train_beam(dc, beam.BeamSources.from_run_sources(rs), train_ids)


def annotate_chunk(config: dict, corr_files: Sequence[Path], train_files: Sequence[Path], output: Path,
                   raw_dir: Path | None = None) -> None:
    """Annotate one sequence from its CORR files: frame table + image partials (before
    hit flags); the one pass (:func:`xfel_reduce.onepass.reduce_sequence`) with no technique."""
    from .onepass import reduce_sequence

    reduce_sequence(config, None, None, corr_files, train_files, Path(output), raw_dir=raw_dir)


def hit_thresholds(config: dict, partials: Sequence[Path], output: Path) -> None:
    """Run-wide hit thresholds (adaptive thresholds need the whole run); with
    ``hit_mode: spi`` the SPI finder's full result goes to the group ``spi``."""
    cfg = annotate.AnnotationConfig.from_dict(config.get("annotation"))
    table = annotate.concat_tables([read_partials(Path(p))[0] for p in partials])
    table, result = annotate.finalise_hits(table, cfg)
    if result is not None:
        log.info("SPI hit finder: %s", result.summary())
    with AtomicH5File(output) as f:
        attach_provenance(f, provenance(config, partials, step="hit_thresholds"))
        for k in ("trainId", "pulseId", "hit_threshold", "hit", "hit_score", "hit_flags"):
            f[k] = table[k]
        if result is not None:
            from .spi import save_result

            save_result(f.create_group("spi"), result)


def write_annotation(config: dict, run: int, seq: int, partial: Path, thresholds: Path, output: Path) -> None:
    table, _ = read_partials(Path(partial))
    table = annotate.concat_tables([table])
    with h5py.File(thresholds, "r") as f:
        key_all = frame_key(f["trainId"][()], f["pulseId"][()])
        run_cols = {k: f[k][()] for k in ("hit_threshold", "hit", "hit_score", "hit_flags")}
    idx = np.searchsorted(key_all, frame_key(table["trainId"], table["pulseId"]))
    for k, v in run_cols.items():
        table[k] = v[idx]
    prov = provenance(config, [partial, thresholds], step="annotation", run=run, sequence=seq)
    write_frame_table(Path(output), sources.ANNOTATION_SOURCE, table, prov,
                      proposal=int(config.get("simulate", {}).get("proposal", 0)), run=run, sequence=seq,
                      run_type="annotation")


# -- aggregation ----------------------------------------------------------------------
def aggregate_run(config: dict, run: int, partials: Sequence[Path], annotation_files: Sequence[Path],
                  output: Path, hit_tables: Sequence[Path] = (), technique: str | None = None) -> dict:
    """Merge the per-sequence partials into run images and a run annotation table.

    With the technique's hit tables (``hit_tables``: SFX peak tables) the technique
    merges its hits into the run table (:meth:`xfel_reduce.techniques.Technique.merge_hits`).
    """
    from .io.redu import read_frame_table

    merged: dict[str, Moments] = {}
    for p in partials:
        _, moments = read_partials(Path(p))
        for name, m in moments.items():
            merged[name] = merged[name].merge(m) if name in merged else m
    tables = [read_frame_table(Path(a), sources.ANNOTATION_SOURCE) for a in annotation_files]
    table = annotate.concat_tables(tables) if tables else annotate.empty_table(0)
    if hit_tables:
        table = techniques.get(technique).merge_hits(table, hit_tables)
    prov = provenance(config, list(partials) + list(annotation_files) + list(hit_tables), step="aggregate", run=run)
    with AtomicH5File(output) as f:
        attach_provenance(f, prov)
        for name, m in merged.items():
            g = f.create_group(f"images/{name}")
            g.create_dataset("mean", data=m.mean.astype(np.float32), compression="gzip", compression_opts=1)
            g.create_dataset("std", data=np.nan_to_num(m.std).astype(np.float32), compression="gzip", compression_opts=1)
            g.create_dataset("count", data=m.count.astype(np.int32), compression="gzip", compression_opts=1)
        for k, v in table.items():
            f[f"annotation/{k}"] = v
        f["modules"] = np.array(modules_of(config))
    x = table["xray"]
    return {"frames": int(table["trainId"].size), "xray_frames": int(x.sum()),
            "hits": int(table["hit"].sum())}


def binning_run(config: dict, run: int, table_files: Sequence[Path], train_files: Sequence[Path], output: Path,
                technique: str | None = None, partials: Sequence[Path] = ()) -> dict:
    """The run's bins (:mod:`xfel_reduce.binning`): axes from its train data, every
    frame of the run table (:meth:`~xfel_reduce.techniques.Technique.frame_table` of
    ``table_files``: the aggregate, or the spectroscopy partials) placed, X-ray frames
    and hit rate per bin and, from the one pass's ``partials``, the images per bin."""
    from .binning import merge_binned_images, pass_binning, run_binning, write_binning

    table = techniques.get(technique).frame_table([Path(p) for p in table_files])
    b = run_binning(config, run, list(train_files), table)
    images = merge_binned_images([Path(p) for p in partials])
    why = ""
    if images is None:
        why = pass_binning(config, run, train_files)[1] or "the one pass made none (annotation.binned_images_gb)"
        if not partials:
            why = "no detector images (the run's table comes from its spectrometer)"
    prov = provenance(config, [*table_files, *train_files, *partials], step="binning", run=run,
                      axes={a.name: a.source for a in b.axes}, images=why or "made")
    return write_binning(Path(output), b, table, prov, hit_finding=techniques.get(technique).hit_finding,
                         images=images, images_why=why)


def binned_run(config: dict, run: int, technique: str, binning_file: Path, inputs: dict[str, Sequence[Path]],
               output: Path) -> dict:
    """The technique's products per bin (:meth:`xfel_reduce.techniques.Technique.binned`)."""
    prov = provenance(config, [binning_file, *[p for v in inputs.values() for p in v]], step="binned", run=run)
    return techniques.get(technique).binned(config, run, Path(binning_file), inputs, Path(output), prov)


def reduce_run_in_process(config: dict, run: int, technique: str | None = None) -> dict[str, object]:
    """The workflow's chain for one run in this process (tests, benchmarks, notebooks):
    dark constants if missing, the one pass per sequence, hit thresholds, annotation,
    aggregate, the technique's gather and, with ``bins``, binning and binned products.
    Simulated runs only (sequences from the simulation plan); returns the paths."""
    from .binning import bins_of
    from .io.trains import train_files
    from .onepass import reduce_sequence
    from .simulate.beamtime import iter_runs, run_plan

    res, pd = Path(config["results_dir"]), Path(config["proposal_dir"])
    mods = modules_of(config)
    r = f"{int(run):04d}"
    rd = pd / "raw" / f"r{r}"
    consts = [res / "calibration" / "constants" / f"AGIPD{m:02d}.h5" for m in mods]
    dark_dirs = [pd / "raw" / f"r{d:04d}" for d in config["calibration"]["dark_runs"]]
    for m, c in zip(mods, consts):
        if not c.exists():
            dark_module(config, m, dark_dirs, c)
    technique = technique or next(e["technique"] for e in config["runs"] if int(e["run"]) == int(run))
    plugin = techniques.get(technique)
    plan = run_plan(config["simulate"], next(x for x in iter_runs(config["simulate"]) if int(x["run"]) == int(run)))
    tfiles = train_files(rd)
    partials, annots, seq_out = [], [], []
    for seq in range(plan["n_sequences"]):
        raw = [rd / sources.raw_filename(int(run), m, seq) for m in mods]
        outs = {k: Path(v[0]) for k, v in plugin.sequence_paths(res, int(run), [seq]).items()}
        p = res / f"r{r}" / "partials" / f"S{seq:05d}.h5"
        reduce_sequence(config, int(run), seq, raw, tfiles, p, constants=consts, technique=technique, outputs=outs,
                        static_mask_inputs=consts, raw_dir=rd)
        partials.append(p)
        seq_out.append(outs)
    thr = res / f"r{r}" / "partials" / "hit_thresholds.h5"
    hit_thresholds(config, partials, thr)
    for seq, p in enumerate(partials):
        a = res / f"r{r}" / "annotation" / f"REDU-R{r}-ANNOT-S{seq:05d}.h5"
        write_annotation(config, int(run), seq, p, thr, a)
        annots.append(a)
    agg = Path(techniques.aggregate_path(res, int(run)))
    inputs = {k: [o[k] for o in seq_out] for k in plugin.sequence_files}
    # as the aggregate rule: the technique's own hits (SFX peak counts) merged in
    aggregate_run(config, int(run), partials, annots, agg, technique=technique,
                  hit_tables=inputs[plugin.hit_table] if plugin.hit_table else ())
    out: dict[str, object] = {"partials": partials, "annotation": annots, "aggregate": agg, "sequence_files": inputs}
    if plugin.run_files:
        run_out = {k: Path(v) for k, v in plugin.run_paths(res, int(run)).items()}
        plugin.gather(config, int(run), {**inputs, "static_mask": consts, "train": tfiles}, run_out)
        out["run_files"] = run_out
    if bins_of(config, int(run)):
        out["binning"] = Path(techniques.binning_path(res, int(run)))
        binning_run(config, int(run), [agg], tfiles, out["binning"], technique, partials=partials)
        if plugin.binned_files:
            out["binned"] = Path(plugin.binned_paths(res, int(run))["binned"])
            binned_run(config, int(run), technique, out["binning"], {**inputs, "static_mask": consts, "train": tfiles},
                       out["binned"])
    return out


def read_benchmarks(directory: Path) -> dict[str, dict[str, float]]:
    """Wall time and peak memory of every job that wrote a ``benchmark:`` file.

    Keys are the file paths relative to ``directory`` without suffix
    (e.g. ``correct/S00000``).
    """
    out = {}
    directory = Path(directory)
    for b in sorted(directory.rglob("*.tsv")):
        lines = b.read_text().splitlines()
        if len(lines) < 2:
            continue
        row = dict(zip(lines[0].split("\t"), lines[1].split("\t")))
        key = str(b.relative_to(directory).with_suffix(""))
        out[key] = {"s": float(row.get("s", "nan")), "max_rss_mb": float(row.get("max_rss", "nan"))}
    return out


def load_run_table(aggregate_file: Path) -> dict[str, np.ndarray]:
    """The run's per-frame annotation table from the aggregate file."""
    with h5py.File(aggregate_file, "r") as f:
        return {k: f["annotation"][k][()] for k in f["annotation"]}


def _decided_by(t: dict[str, np.ndarray]) -> dict[str, int] | None:
    """X-ray frames per beam source (what decided their X-ray flag), for the summary."""
    if "beam_source" not in t:
        return None
    codes, counts = np.unique(t["beam_source"][t["xray"].astype(bool)], return_counts=True)
    return {annotate.BEAM_SOURCES[int(c)]: int(n) for c, n in zip(codes, counts)}


def run_summary(config: dict, run: int, technique: str, raw_files: Sequence[Path], products: dict[str, list[Path]],
                table: dict[str, np.ndarray], benchmark_dir: Path | None, output: Path,
                inputs: Sequence[Path] = (), extra: dict | None = None,
                kept_summary_file: Path | None = None, truth_file: Path | None = None) -> dict:
    """``summary.json``: frames, bytes, reduction ratios, hit rate, timings, provenance.

    ``table`` is the run's per-frame table (annotation, or the spectroscopy frame
    table); columns a technique does not produce (``hit``, ``modules_present``…)
    are reported as absent rather than invented.  With a kept-frames summary its
    numbers go in as ``kept_frames``; with the simulator's per-frame truth of a
    hit-finding run, recall and precision of the hits as ``hits_vs_truth``.
    """
    import json

    extra = dict(extra or {})
    if kept_summary_file is not None:
        ks = json.loads(Path(kept_summary_file).read_text())
        extra["kept_frames"] = {k: v for k, v in ks.items() if k != "provenance"}
    hit_finding = techniques.get(technique).hit_finding
    if truth_file is not None and hit_finding:
        with h5py.File(truth_file, "r") as f:
            # the simulator's truth.h5: beam per frame in `frames`, the scene's hits in `scene`
            truth = {k: f["frames"][k][()] for k in ("trainId", "pulseId")}
            if "hit" in f.get("scene", {}):
                truth["hit"] = f["scene"]["hit"][()]
        if "hit" in truth:
            extra["hits_vs_truth"] = annotate.compare_with_truth(table, truth)
    t = table
    bytes_in = int(sum(Path(p).stat().st_size for p in raw_files))
    bytes_out = {name: int(sum(Path(p).stat().st_size for p in paths)) for name, paths in products.items()}
    ratio = {name: (bytes_in / b if b else None) for name, b in bytes_out.items()}
    timings = read_benchmarks(benchmark_dir) if benchmark_dir else {}
    x = t["xray"].astype(bool)
    n_x = int(x.sum())
    hits = int(t["hit"].sum()) if ("hit" in t and hit_finding) else None
    summary = {
        "run": int(run),
        "run_type": technique,
        "hit_finding": hit_finding,
        "frames_in": int(t["trainId"].size),
        "xray_frames": n_x,
        "frames_out": {"annotation": int(t["trainId"].size), **({"hits": hits} if hits is not None else {})},
        "frames_incomplete": (int((t["modules_present"] < len(modules_of(config))).sum())
                              if "modules_present" in t else None),
        "frames_without_beam_data": int((~t["beam_data"]).sum()) if "beam_data" in t else None,
        "xray_frames_decided_by": _decided_by(t),
        "nan_pixels": ({"pixels": int(t["nan_pixels"].sum()), "frames": int((t["nan_pixels"] > 0).sum())}
                       if "nan_pixels" in t else None),
        "trains": int(np.unique(t["trainId"]).size),
        "bytes_in": bytes_in,
        # RAW detector files when the run has them, else the facility's proc files
        "bytes_in_from": "raw" if all(Path(p).name.startswith("RAW-") for p in raw_files) else "proc",
        "bytes_out": bytes_out,
        "reduction_ratio": ratio,
        "hit_rate": (hits / n_x) if (n_x and hits is not None) else None,
        "laser_on_fraction": (float((t["ppl"] & x).sum()) / n_x) if n_x else None,
        "mean_pulse_energy_uj": float(t["pulse_energy"][x].mean()) if n_x else None,
        "timings": timings,
        "total_job_seconds": float(sum(v["s"] for v in timings.values())),
        "peak_job_memory_mb": (float(max(v["max_rss_mb"] for v in timings.values())) if timings else None),
        "provenance": provenance(config, list(raw_files) + list(inputs), step="summary", run=run),
        **extra,
    }
    if "kept_frames" in extra:
        summary["frames_out"]["kept"] = extra["kept_frames"]["frames_kept"]
    write_json(output, summary, indent=2, allow_nan=False)
    return summary


# -- kept frames (SPI/SFX reduced data) -------------------------------------------------
def _proposal_of(path: Path) -> int:
    """``METADATA/proposalNumber`` of an EuXFEL file (0 when absent)."""
    with h5py.File(path, "r") as f:
        md = f.get("METADATA")
        return int(md["proposalNumber"][0]) if md is not None and "proposalNumber" in md else 0


def _detector_file_info(path: Path, module: int) -> tuple[str, int, np.ndarray]:
    """(detector name, proposal, trains) of a module's RAW or CORR sequence file."""
    from .io.runs import raw_module_source

    f = open_file(path)
    try:
        src = corr_source(f, module, Path(path))
    except InputDataError:
        src = raw_module_source(f, module, Path(path))
    return src.split("/", 1)[0], _proposal_of(Path(path)), np.asarray(f.train_ids, np.uint64)


def kept_frames(config: dict, run: int, seq: int, technique: str, frame_files: Sequence[Path],
                aggregate_file: Path, out_dir: Path, constants: Sequence[Path] = ()) -> dict:
    """One sequence's kept frames (:mod:`xfel_reduce.kept`): copied from CORR files, or
    with ``constants`` read from the RAW files and corrected (only the kept frames)."""
    from . import geometry, kept

    cfg = kept.ReductionConfig.from_dict(config.get("reduction"))
    mods = modules_of(config)
    table = load_run_table(aggregate_file)
    frac = cfg.validation.roi_pixel_fraction or kept.VALIDATION_ROI_DEFAULT[technique]
    roi = kept.validation_roi(geometry.geometry_from_config(config.get("geometry", {})), mods, frac)
    e = table["pulse_energy"][table["xray"] & (table["pulse_energy"] > 0)]
    e_ref = float(np.median(e)) if e.size else None
    proposal = _proposal_of(Path(frame_files[0]))
    prov = provenance(config, list(frame_files) + list(constants) + [aggregate_file], step="kept_frames", run=run,
                      sequence=seq, reduction=cfg.to_dict(), validation_roi_pixel_fraction=frac,
                      validation_reference_energy_uj=e_ref)
    stats = kept.write_kept_sequence(dict(zip(mods, frame_files)), table, out_dir, run, seq, cfg, roi,
                                     e_ref, prov, proposal,
                                     constants=dict(zip(mods, constants)) if constants else None,
                                     common_mode=agipd.common_mode_of(config))
    log.info("r%04d S%05d kept %s, %.1f MB", run, seq, stats["frames"], stats["bytes"] / 1e6)
    return stats


def spi_redu(config: dict, run: int, seq: int, frame_file: Path, aggregate_file: Path, thresholds_file: Path,
             output: Path) -> Path:
    """The SPI hit finder's result for one sequence's trains in the facility's REDU layout
    (what ``extra_redu.spi.SpiHitfinder.from_datacollection`` reads); ``missFlag`` is
    the kept validation sample, so ``dataFlag`` marks exactly the kept frames.
    ``frame_file``: the first module's RAW or CORR file of the sequence (its trains)."""
    from . import kept, spi

    cfg = kept.ReductionConfig.from_dict(config.get("reduction"))
    table = load_run_table(aggregate_file)
    with h5py.File(thresholds_file, "r") as f:
        if "spi" not in f:
            raise ValueError(f"{thresholds_file} holds no SPI hit-finder result: set "
                             "annotation.hit_mode: spi for SPI runs")
        result = spi.load_result(f["spi"])
        same = np.array_equal(frame_key(f["trainId"][()], f["pulseId"][()]),
                              frame_key(table["trainId"], table["pulseId"]))
    if not same:
        raise ValueError(f"{thresholds_file} and {aggregate_file} cover different frames")
    reasons = kept.kept_reasons(table, cfg.miss_fraction, cfg.seed)
    result.miss = (reasons & np.uint8(kept.Reason.SAMPLED)) != 0
    mods = modules_of(config)
    detector, proposal, trains = _detector_file_info(Path(frame_file), mods[0])
    seq_trains = np.intersect1d(trains, table["trainId"])
    prov = provenance(config, [frame_file, aggregate_file, thresholds_file], step="spi_redu", run=run, sequence=seq)
    return spi.write_redu(output, table, result, detector=detector, modules=mods, provenance=prov,
                          proposal=proposal, run=run, sequence=seq, train_ids=seq_trains)


def kept_summary(config: dict, run: int, technique: str, kept_files: Sequence[Path],
                 raw_files: Sequence[Path], aggregate_file: Path, output: Path) -> dict:
    """``kept/kept_summary.json``: frames and bytes kept against the RAW run and the seed's
    table, and the missed-hit estimate from the validation sample."""
    from . import kept
    from .io.redu import read_frame_table

    cfg = kept.ReductionConfig.from_dict(config.get("reduction"))
    table = load_run_table(aggregate_file)
    reason = kept.kept_reasons(table, cfg.miss_fraction, cfg.seed)
    tables = [read_frame_table(Path(p), sources.KEPT_SOURCE) for p in kept_files
              if Path(p).name.startswith("REDU-") and "-KEPT-" in Path(p).name]
    rows = annotate.concat_tables_any(tables)
    sampled = (rows["kept_reason"] & np.uint8(kept.Reason.SAMPLED)) != 0
    n_hits = int(((reason & np.uint8(kept.Reason.HIT)) != 0).sum())
    undecided = (reason & np.uint8(kept.Reason.UNDECIDED)) != 0
    n_misses = int((table["xray"] & ~table["hit"] & ~undecided).sum())
    estimate = kept.missed_hit_estimate(rows["validation_score"][sampled], n_misses, n_hits, cfg.validation)
    bytes_raw = int(sum(Path(p).stat().st_size for p in raw_files))
    bytes_kept = int(sum(Path(p).stat().st_size for p in kept_files))
    n_kept = int((reason != 0).sum())
    n_in = int(table["trainId"].size)
    lo, hi = kept.SEED_REDUCTION_RANGE[technique]
    out = {
        "run": int(run), "technique": technique,
        "frames_in": n_in, "xray_frames": int(table["xray"].sum()), "frames_kept": n_kept,
        "kept": {"hits": n_hits, "sampled_misses": int(sampled.sum()), "undecided": int(undecided.sum())},
        "frames_ratio": n_kept / n_in if n_in else None,
        "bytes_raw": bytes_raw, "bytes_kept": bytes_kept,
        "bytes_ratio": bytes_kept / bytes_raw if bytes_raw else None,
        "seed_bytes_ratio_range": [lo, hi],
        "hit_rate": n_hits / int(table["xray"].sum()) if table["xray"].any() else None,
        "missed_hits": estimate,
        "reduction": cfg.to_dict(),
        "provenance": provenance(config, list(kept_files) + [aggregate_file], step="kept_summary", run=run),
    }
    write_json(output, out, indent=2, allow_nan=False)
    log.info("r%04d: %s; bytes %.3g of RAW; %s", run, out["kept"], out["bytes_ratio"] or 0, estimate["statement"])
    return out
