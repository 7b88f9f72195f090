"""DAMNIT context file: xfel-reduce results of each run in the DAMNIT run table.

Copy this file as ``context.py`` into the proposal's DAMNIT database directory
(``<proposal>/usr/Shared/amore/``), or append it to an existing ``context.py``:
every name it defines starts with ``xfel_reduce`` / ``XFEL_REDUCE`` / ``_xr_``
and every column title with "xfel-reduce", so it does not collide with other
variables.  Then set ``XFEL_REDUCE_RESULTS_DIR`` below (or the environment
variable ``XFEL_REDUCE_RESULTS``) to the workflow's ``results_dir``.

The variables only read the files the workflow writes for a run:

* ``rNNNN/summary.json``: technique, frames in and kept, hit rate, reduction ratio;
* ``rNNNN/reports/<stage>.verdict.json``: the overall verdict (worst of the run's
  reports, the same rule as ``results/index.html``);
* ``saxs/saxs_summary.json``: SAXS sphere radius R and its laser on − off change ΔR;
* ``xpcs/xpcs.h5``: XPCS diffusion coefficient D and speckle contrast β;
* ``spectroscopy/spectra_summary.json``: line energies and laser-induced shift;
* ``sfx/hit_statistics.json`` and ``sfx/hits-S*.cxi``: SFX hits and peaks per hit.

A run without a product (not reduced yet, another technique, a failed fit) gets
a grey "Skipped" cell saying which file or value is missing; only unreadable
files and a malformed results setting raise.  DAMNIT evaluates a run when it is
migrated, usually before xfel-reduce has reduced it: once the workflow has
finished, fill the columns in with ``damnit reprocess --match xfel-reduce <runs>``.

DAMNIT runs context files in the facility's Python environment, which has
numpy and h5py but not xfel-reduce; so this file uses nothing else.  It does not
read the ``run`` object DAMNIT passes, only the proposal path and run number.
"""
import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
from damnit_ctx import Cell, Skip, Variable

# --- Edit here -----------------------------------------------------------------------
#: The xfel-reduce ``results_dir`` (the folder holding ``r0001/``, ``index.html`` …).
#: ``{proposal_path}`` (the proposal folder, e.g. /gpfs/exfel/exp/SPB/202601/p900001)
#: and ``{proposal}`` (its number) are filled in; a relative path is taken from the
#: folder of this file.  The environment variable XFEL_REDUCE_RESULTS, when set,
#: overrides it (same placeholders).
XFEL_REDUCE_RESULTS_DIR = "{proposal_path}/scratch/xfel-reduce/results"
# ---------------------------------------------------------------------------------------

XFEL_REDUCE_RESULTS_ENV = "XFEL_REDUCE_RESULTS"

# The rules of results/index.html (xfel_reduce.report_index), restated because this
# file cannot import xfel-reduce.  Run types whose reduction selects frames by hit
# finding: elsewhere every frame is reduced and a lit-pixel "hit" selects nothing.
_XR_HIT_FINDING_RUN_TYPES = frozenset({"spi", "sfx"})
# A run without any verdict ranks between warn and fail: unverified must not look fine.
_XR_VERDICT_RANK = {"pass": 0, "warn": 1, "missing": 2, "fail": 3, "error": 4}
_XR_VERDICT_COLOURS = {"pass": "#e6f4ea", "warn": "#fff4e0", "missing": "#eeeeee",
                       "fail": "#fde8e8", "error": "#fde8e8"}


# --- Helpers (not Variables: DAMNIT only collects Variable objects) ---------------------
def _xr_context_dir() -> Path:
    """Folder of this context file, for relative result paths.

    DAMNIT compiles the file under its absolute path, which is what the code
    objects of its functions record; a context given as a string has none.
    """
    path = Path(_xr_context_dir.__code__.co_filename)
    return path.parent if path.is_absolute() else Path.cwd()


def _xr_results_dir(proposal_path, proposal) -> tuple[Path, str]:
    """(results directory, where its setting came from) for one proposal."""
    template = os.environ.get(XFEL_REDUCE_RESULTS_ENV, "").strip()
    origin = f"environment variable {XFEL_REDUCE_RESULTS_ENV}"
    if not template:
        template, origin = XFEL_REDUCE_RESULTS_DIR, "XFEL_REDUCE_RESULTS_DIR in the context file"
    if "{proposal_path}" in template and not str(proposal_path or ""):
        # DAMNIT's mock runs (reprocess --mock) have no files, hence no proposal path.
        raise Skip(f"{origin} = {template!r} needs the proposal path, which DAMNIT did not "
                   "give (mock run?): set an absolute results directory")
    try:
        text = template.format(proposal_path=proposal_path, proposal=proposal)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{origin} = {template!r}: bad placeholder ({exc}); "
                         "only {proposal_path} and {proposal} are filled in") from None
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = _xr_context_dir() / path
    return path, origin


def _xr_read_json(path: Path) -> dict:
    """A JSON object written by the workflow; unreadable files are errors, not skips."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run the workflow rule that writes it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def _xr_num(value):
    """A finite number from a JSON value, else None (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _xr_hit_finding(summary: dict):
    """Whether hit finding selected the run's frames (the summary's flag, else its type)."""
    flag = summary.get("hit_finding")
    if isinstance(flag, bool):
        return flag
    run_type = summary.get("run_type")
    if not isinstance(run_type, str) or not run_type:
        return None
    return run_type.lower() in _XR_HIT_FINDING_RUN_TYPES


def _xr_run_dir(proposal_path, proposal, run_no) -> Path:
    """The run's xfel-reduce result folder (results_dir/rNNNN); Skip when absent."""
    base, origin = _xr_results_dir(proposal_path, proposal)
    if not base.is_dir():
        raise Skip(f"xfel-reduce results directory {base} does not exist (from {origin}): "
                   f"set XFEL_REDUCE_RESULTS_DIR in context.py or {XFEL_REDUCE_RESULTS_ENV} "
                   "to the workflow's results_dir")
    run_dir = base / f"r{int(run_no):04d}"
    if not run_dir.is_dir():
        raise Skip(f"run {run_no} has no xfel-reduce results ({run_dir} does not exist)")
    return run_dir


def _xr_product(proposal_path, proposal, run_no, relpath: str, what: str) -> Path:
    """A product file of the run; Skip when the run or the file is absent."""
    path = _xr_run_dir(proposal_path, proposal, run_no) / relpath
    if not path.is_file():
        raise Skip(f"no {what}: {path} does not exist (another technique, or not reduced yet)")
    return path


# --- What the workflow wrote for the run (transient: read once, shared, not stored) -------
# Each reads its file from the meta arguments directly rather than through a shared
# "run folder" variable, so that a skipped cell names the missing file in one line.
@Variable(title="xfel-reduce summary", transient=True)
def xfel_reduce_summary(run, proposal_path: "meta#proposal_path", proposal: "meta#proposal",
                        run_no: "meta#run_number"):
    """The run's summary.json."""
    return _xr_read_json(_xr_product(proposal_path, proposal, run_no, "summary.json", "run summary"))


@Variable(title="xfel-reduce reports", transient=True)
def xfel_reduce_report_verdicts(run, proposal_path: "meta#proposal_path", proposal: "meta#proposal",
                                run_no: "meta#run_number"):
    """{stage: verdict} of the run's HTML reports ("missing" without a valid verdict file)."""
    out = {}
    reports = _xr_run_dir(proposal_path, proposal, run_no) / "reports"
    for html in sorted(reports.glob("*.html")):
        verdict_file = html.with_name(html.stem + ".verdict.json")
        verdict = "missing"
        if verdict_file.is_file():
            try:
                value = json.loads(verdict_file.read_text()).get("overall")
            except (OSError, ValueError, AttributeError):
                value = None
            if value in _XR_VERDICT_RANK and value != "missing":
                verdict = value
        out[html.stem] = verdict
    return out


@Variable(title="xfel-reduce SAXS fits", transient=True)
def xfel_reduce_saxs(run, proposal_path: "meta#proposal_path", proposal: "meta#proposal",
                     run_no: "meta#run_number"):
    """saxs/saxs_summary.json: frames per group and sphere fits (all, on, off)."""
    return _xr_read_json(_xr_product(proposal_path, proposal, run_no, "saxs/saxs_summary.json",
                                     "SAXS product"))


@Variable(title="xfel-reduce XPCS fits", transient=True)
def xfel_reduce_xpcs(run, proposal_path: "meta#proposal_path", proposal: "meta#proposal",
                     run_no: "meta#run_number"):
    """D and the per-ring contrast of xpcs/xpcs.h5 (whichever of them it has)."""
    path = _xr_product(proposal_path, proposal, run_no, "xpcs/xpcs.h5", "XPCS product")
    out = {}
    with h5py.File(path, "r") as f:
        for key, dset in (("D", "xpcs/diffusion/D_m2_per_s"), ("beta", "xpcs/fit/beta"),
                          ("beta_err", "xpcs/fit/beta_err")):
            if dset in f:
                out[key] = np.asarray(f[dset][()], dtype=np.float64)
    return out


@Variable(title="xfel-reduce spectroscopy line fit", transient=True)
def xfel_reduce_spectra_fit(run, proposal_path: "meta#proposal_path", proposal: "meta#proposal",
                            run_no: "meta#run_number"):
    """The line fit of spectroscopy/spectra_summary.json: laser on/off, else all frames.

    The same choice as the spectroscopy report's verdict.
    """
    path = _xr_product(proposal_path, proposal, run_no, "spectroscopy/spectra_summary.json",
                       "spectroscopy product")
    fits = _xr_read_json(path).get("fits") or {}
    fit = fits.get("on_off") or fits.get("all")
    if not isinstance(fit, dict):
        raise Skip(f"no line fit in {path}" + (f": {fits['error']}" if "error" in fits else ""))
    return fit


@Variable(title="xfel-reduce SFX hit statistics", transient=True)
def xfel_reduce_sfx_stats(run, proposal_path: "meta#proposal_path", proposal: "meta#proposal",
                          run_no: "meta#run_number"):
    """sfx/hit_statistics.json."""
    return _xr_read_json(_xr_product(proposal_path, proposal, run_no, "sfx/hit_statistics.json",
                                     "SFX product"))


# --- Run-level numbers (summary.json, reports) --------------------------------------------
@Variable(title="xfel-reduce technique")
def xfel_reduce_run_type(run, summary: "var#xfel_reduce_summary"):
    """Run type (technique) the workflow reduced the run as."""
    run_type = summary.get("run_type")
    if not run_type:
        raise Skip("summary.json has no run_type")
    return str(run_type)


@Variable(title="xfel-reduce frames in")
def xfel_reduce_frames_in(run, summary: "var#xfel_reduce_summary"):
    """Detector frames the workflow read."""
    n = _xr_num(summary.get("frames_in"))
    if n is None:
        raise Skip("summary.json has no frames_in")
    return int(n)


@Variable(title="xfel-reduce frames kept")
def xfel_reduce_frames_kept(run, summary: "var#xfel_reduce_summary"):
    """Frames kept by hit finding (hits, plus sampled misses where written).

    Only where hit finding selects frames (SPI, SFX): for XPCS, SAXS and
    spectroscopy every frame is reduced, and the cell is skipped.
    """
    out = summary.get("frames_out")
    hit_finding = _xr_hit_finding(summary)
    if isinstance(out, dict):
        kept = _xr_num(out.get("kept"))
        if kept is not None:
            return int(kept)
        hits = _xr_num(out.get("hits"))
        if hits is not None and hit_finding:
            return int(hits)
    elif _xr_num(out) is not None and hit_finding:
        return int(_xr_num(out))
    if hit_finding is False:
        raise Skip(f"not applicable: no hit finding in {summary.get('run_type')} runs, every frame is reduced")
    raise Skip("summary.json has no kept-frame count")


@Variable(title="xfel-reduce hit rate")
def xfel_reduce_hit_rate(run, summary: "var#xfel_reduce_summary"):
    """Hits / X-ray frames, where hit finding selects frames (SPI, SFX)."""
    if _xr_hit_finding(summary) is False:
        raise Skip(f"not applicable: no hit finding in {summary.get('run_type')} runs")
    rate = _xr_num(summary.get("hit_rate"))
    if rate is None:
        raise Skip("summary.json has no hit_rate")
    return rate


@Variable(title="xfel-reduce reduction ratio")
def xfel_reduce_reduction_ratio(run, summary: "var#xfel_reduce_summary"):
    """Raw bytes / bytes of all products of the run.

    Falls back to a single reduction_ratio number, or to the largest
    per-product ratio, when the summary has no byte counts.
    """
    b_in = _xr_num(summary.get("bytes_in"))
    b_out = summary.get("bytes_out")
    if isinstance(b_out, dict):
        parts = [v for v in map(_xr_num, b_out.values()) if v is not None]
        b_out = sum(parts) if parts else None
    else:
        b_out = _xr_num(b_out)
    if b_in is not None and b_out:
        return b_in / b_out
    ratio = summary.get("reduction_ratio")
    if isinstance(ratio, dict):
        parts = [v for v in map(_xr_num, ratio.values()) if v is not None]
        ratio = max(parts) if parts else None
    ratio = _xr_num(ratio)
    if ratio is None:
        raise Skip("summary.json has neither byte counts nor a reduction ratio")
    return ratio


@Variable(title="xfel-reduce verdict")
def xfel_reduce_verdict(run, reports: "var#xfel_reduce_report_verdicts"):
    """Worst verdict of the run's reports; "missing" when there is none."""
    verdict = max(reports.values(), key=_XR_VERDICT_RANK.__getitem__) if reports else "missing"
    return Cell(verdict, bold=verdict != "pass", background=_XR_VERDICT_COLOURS[verdict])


@Variable(title="xfel-reduce report verdicts")
def xfel_reduce_reports(run, reports: "var#xfel_reduce_report_verdicts"):
    """Verdict of each report, e.g. "calibration: pass, annotation: pass, sfx: warn"."""
    if not reports:
        raise Skip("the run has no reports yet")
    return ", ".join(f"{stage}: {verdict}" for stage, verdict in reports.items())


# --- SAXS -----------------------------------------------------------------------------------
def _xr_saxs_radius(saxs: dict, group: str):
    fit = (saxs.get("fits") or {}).get(group) or {}
    return _xr_num(fit.get("radius_nm"))


@Variable(title="xfel-reduce SAXS R [nm]")
def xfel_reduce_saxs_radius(run, saxs: "var#xfel_reduce_saxs"):
    """Sphere radius fitted to the laser-off average.

    The all-frames average when the run has no laser-off frames: the same choice
    as the SAXS report's verdict.
    """
    frames_off = _xr_num((saxs.get("frames") or {}).get("off")) or 0
    group = "off" if frames_off > 1 and _xr_saxs_radius(saxs, "off") is not None else "all"
    radius = _xr_saxs_radius(saxs, group)
    if radius is None:
        raise Skip(f"no sphere fit of the {group!r} average in saxs_summary.json")
    return radius


@Variable(title="xfel-reduce SAXS ΔR on−off [nm]")
def xfel_reduce_saxs_radius_change(run, saxs: "var#xfel_reduce_saxs"):
    """Laser-induced radius change: R(laser on) − R(laser off)."""
    on, off = _xr_saxs_radius(saxs, "on"), _xr_saxs_radius(saxs, "off")
    if on is None or off is None:
        raise Skip("saxs_summary.json lacks a laser-on or a laser-off sphere fit")
    return on - off


# --- XPCS -----------------------------------------------------------------------------------
@Variable(title="xfel-reduce XPCS D [m²/s]")
def xfel_reduce_xpcs_diffusion(run, xpcs: "var#xfel_reduce_xpcs"):
    """Diffusion coefficient from Γ(q) = D q² over the rings."""
    d = _xr_num(xpcs.get("D"))
    if d is None:
        raise Skip("xpcs.h5 has no diffusion fit (xpcs/diffusion/D_m2_per_s)")
    return d


@Variable(title="xfel-reduce XPCS β")
def xfel_reduce_xpcs_contrast(run, xpcs: "var#xfel_reduce_xpcs"):
    """Speckle contrast β of the g2 fits, inverse-variance mean over the rings.

    Weights 1/σ² as the XPCS report does: dim outer rings have many pixels but
    noisy contrast.
    """
    if "beta" not in xpcs or "beta_err" not in xpcs:
        raise Skip("xpcs.h5 has no g2 fit contrast (xpcs/fit/beta)")
    beta, err = np.ravel(xpcs["beta"]), np.ravel(xpcs["beta_err"])
    ok = np.isfinite(beta) & np.isfinite(err) & (err > 0)
    if not ok.any():
        raise Skip("no ring of xpcs.h5 has a finite contrast with an error")
    w = 1.0 / err[ok] ** 2
    return float((w * beta[ok]).sum() / w.sum())


# --- Spectroscopy ---------------------------------------------------------------------------
@Variable(title="xfel-reduce spectroscopy lines [eV]")
def xfel_reduce_spectra_lines(run, fit: "var#xfel_reduce_spectra_fit"):
    """Fitted line energies (the table shows them; the cell holds the array)."""
    energies = [e for e in map(_xr_num, fit.get("energies_ev") or []) if e is not None]
    if not energies:
        raise Skip("the line fit has no line energies")
    return Cell(np.asarray(energies), summary_value=", ".join(f"{e:.2f}" for e in energies))


@Variable(title="xfel-reduce spectroscopy shift on−off [eV]")
def xfel_reduce_spectra_shift(run, fit: "var#xfel_reduce_spectra_fit"):
    """Laser-induced line shift (on − off)."""
    shift = _xr_num(fit.get("shift_ev"))
    if shift is None:
        raise Skip("no laser on/off shift in the line fit (needs laser-on and laser-off frames)")
    return shift


# --- SFX ------------------------------------------------------------------------------------
@Variable(title="xfel-reduce SFX hits")
def xfel_reduce_sfx_hits(run, stats: "var#xfel_reduce_sfx_stats"):
    """X-ray frames with at least min_peaks Bragg peaks."""
    n = _xr_num(stats.get("n_hits"))
    if n is None:
        raise Skip("hit_statistics.json has no n_hits")
    return int(n)


@Variable(title="xfel-reduce SFX peaks per hit", summary="mean")
def xfel_reduce_sfx_peaks(run, proposal_path: "meta#proposal_path", proposal: "meta#proposal",
                          run_no: "meta#run_number"):
    """Peaks found in each hit (the table shows the mean; the cell holds every hit's count)."""
    sfx_dir = _xr_run_dir(proposal_path, proposal, run_no) / "sfx"
    files = sorted(sfx_dir.glob("hits-S*.cxi"))
    if not files:
        raise Skip(f"no SFX product: no hits-S*.cxi in {sfx_dir} (another technique, or not reduced yet)")
    counts = []
    for path in files:
        with h5py.File(path, "r") as f:
            if "entry_1/result_1/nPeaks" in f:
                counts.append(np.asarray(f["entry_1/result_1/nPeaks"][()], dtype=np.int64))
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    if counts.size == 0:
        raise Skip("the run has no hits, so no peaks per hit")
    return counts
