"""``results/index.html``: one row per run, the table users otherwise keep by hand.

For every run directory ``results/r{run:04d}/`` the index shows the run number,
run type, frames in, frames kept, hit rate, reduction ratio, the overall verdict
(worst of the run's report verdicts) and links to every report and product file.
The page is a single self-contained HTML file (inline CSS and JS, relative links
only), sortable by clicking a column header, usable without network, and fits a
1400 px wide window without horizontal scrolling (products and per-product
ratios fold into ``<details>`` lists, long names wrap).

Inputs per run (all optional, missing ones are shown as such, never invented):

* ``summary.json`` written by the summary step (:func:`xfel_reduce.steps.run_summary`):
  ``run``, ``run_type``, ``frames_in``, ``xray_frames``, ``frames_out`` (a number,
  or ``{"annotation": rows, "hits": n}`` and, when written, ``"kept": n``),
  ``bytes_in``, ``bytes_out`` and ``reduction_ratio`` (each a number or
  ``{product: value}``), ``hit_rate``, optionally ``hit_finding`` (bool);
* ``reports/<stage>.html``, ``reports/<stage>.verdict.json`` and the report's
  figure ``reports/<stage>.png`` (part of the report, not listed as a product);
* any other file below the run directory is listed as a product.

Cells say "—" when a value is unknown (no summary, key absent) and "n/a" when it
does not apply: hit rate and frames kept mean something only where hit finding
selected frames (:func:`hit_finding_ran`).  A column that would be empty in every
row is left out.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import techniques
from .io.atomic import write_atomic
from .verdict import STATUSES

__all__ = ["HIT_FINDING_RUN_TYPES", "RunEntry", "collect_runs", "hit_finding_ran", "kept_frames",
           "build_index", "render_index"]

_RUN_DIR_RE = re.compile(r"^r(\d{4,})$")
# Verdict order for the index: "missing" (no verdict at all) is worse than warn
# because an unverified run must not look fine, but better than fail.
_RANK = {"pass": 0, "warn": 1, "missing": 2, "fail": 3, "error": 4}
_COLOURS = {"pass": "#1e7b34", "warn": "#a15c00", "missing": "#666666", "fail": "#b3261e",
            "error": "#b3261e"}
# Files that are bookkeeping, not products.
_SKIP_SUFFIXES = (".tmp", ".lock", ".log")
# Run types whose reduction selects frames by hit finding, used when the summary
# does not say so itself (``hit_finding``).  The same techniques get hit-rate
# checks in the annotation report (workflow/rules/common.smk, ``stage_defaults``):
# for XPCS, SAXS and spectroscopy every frame is reduced and a lit-pixel "hit"
# is only a bright frame.
HIT_FINDING_RUN_TYPES = frozenset(n for n in techniques.names() if techniques.get(n).hit_finding)
# Report stages in data-flow order (calibration before annotation before the
# technique's, which follow alphabetically), so the chips read like the pipeline.
_STAGE_ORDER = ("calibration", "annotation")
# Up to this many products are listed inline; more fold into a <details> list.
_INLINE_PRODUCTS = 3
_UNKNOWN = "\u2014"  # em dash: the value is not known
_NOT_APPLICABLE = "n/a"


@dataclass
class RunEntry:
    """Everything the index shows about one run."""

    run: int
    directory: Path
    summary: dict[str, Any] | None
    reports: list[tuple[str, Path, str]] = field(default_factory=list)  # (stage, html, verdict)
    products: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """Worst verdict of the run's reports; ``missing`` if none has one."""
        if not self.reports:
            return "missing"
        return max((v for _, _, v in self.reports), key=_RANK.__getitem__)

    def get(self, key: str) -> Any:
        """A summary value, ``None`` when the summary or the key is missing."""
        return (self.summary or {}).get(key)


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name} unreadable ({exc.__class__.__name__}: {exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object")
        return None
    return data


def collect_runs(results: str | os.PathLike, runs: Iterable[int] | None = None) -> list[RunEntry]:
    """Scan ``results`` for run directories and read what the index needs.

    Parameters
    ----------
    results : path
        The results directory (contains ``r0001/``, ``r0002/``, ...).
    runs : iterable of int, optional
        Restrict to (and require) these runs; a requested run without a
        directory still gets a row, flagged as missing.

    Returns
    -------
    list of RunEntry
        Sorted by run number.
    """
    results = Path(results)
    found: dict[int, Path] = {}
    if results.is_dir():
        for d in results.iterdir():
            m = _RUN_DIR_RE.match(d.name)
            if m and d.is_dir():
                found[int(m.group(1))] = d
    wanted = sorted(set(runs)) if runs is not None else sorted(found)
    entries = []
    for run in wanted:
        d = found.get(run, results / f"r{run:04d}")
        entry = RunEntry(run, d, None)
        if not d.is_dir():
            entry.problems.append(f"run directory {d} missing")
            entries.append(entry)
            continue
        summary_path = d / "summary.json"
        if summary_path.is_file():
            entry.summary = _read_json(summary_path, entry.problems)
        else:
            entry.problems.append("summary.json missing")
        reports_dir = d / "reports"
        report_files = set()
        if reports_dir.is_dir():
            for h in sorted(reports_dir.glob("*.html")):
                stage = h.stem
                vpath = h.with_name(stage + ".verdict.json")
                verdict = "missing"
                if vpath.is_file():
                    v = _read_json(vpath, entry.problems)
                    if v is not None and v.get("overall") in STATUSES:
                        verdict = v["overall"]
                    elif v is not None:
                        entry.problems.append(f"{vpath.name} has no valid 'overall'")
                entry.reports.append((stage, h, verdict))
                # the key plot is embedded in the report page: not a product of its own
                report_files.update({h, vpath, h.with_suffix(".png")})
            entry.reports.sort(key=lambda r: (_STAGE_ORDER.index(r[0]) if r[0] in _STAGE_ORDER
                                              else len(_STAGE_ORDER), r[0]))
        for p in sorted(d.rglob("*")):
            if (p.is_file() and p not in report_files and p != summary_path
                    and not p.name.startswith(".") and not p.name.endswith(_SKIP_SUFFIXES)):
                entry.products.append(p)
        entries.append(entry)
    return entries


def _num(x: Any) -> float | None:
    if isinstance(x, bool):  # JSON true/false are not counts
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def hit_finding_ran(summary: dict[str, Any] | None) -> bool | None:
    """Whether hit finding selected the run's frames, so hit rate and kept frames apply.

    The summary's own ``hit_finding`` flag decides when present; otherwise the
    run type (``HIT_FINDING_RUN_TYPES``: SPI, SFX).  ``None`` when neither is known.
    """
    if not summary:
        return None
    flag = summary.get("hit_finding")
    if isinstance(flag, bool):
        return flag
    run_type = summary.get("run_type")
    if not isinstance(run_type, str) or not run_type:
        return None
    return run_type.lower() in HIT_FINDING_RUN_TYPES


def kept_frames(summary: dict[str, Any] | None) -> tuple[float | None, str]:
    """(count, what it counts) of the frames a run keeps.

    ``frames_out`` in the summary is either one number (the frames written) or
    ``{product: frames}`` with ``annotation`` (one row per frame, i.e. every
    frame) and ``hits``.  ``kept`` (hits plus sampled misses, or the frames in a
    hit-only file such as SFX's CXI) is used when the summary has it, otherwise
    ``hits`` — but only where hit finding ran: for the other techniques a
    lit-pixel "hit" selects nothing.  ``(None, "")`` when not known or not
    applicable.
    """
    if not summary:
        return None, ""
    out = summary.get("frames_out")
    if isinstance(out, dict):
        kept = _num(out.get("kept"))
        if kept is not None:
            return kept, "kept"
        hits = _num(out.get("hits"))
        if hits is not None and hit_finding_ran(summary):
            return hits, "hits"
        return None, ""
    n = _num(out)
    if n is not None and hit_finding_ran(summary):
        return n, "kept"
    return None, ""


def _total(x: Any) -> float | None:
    """A byte count given as a number or as ``{product: bytes}`` (summed)."""
    if isinstance(x, dict):
        parts = [v for v in map(_num, x.values()) if v is not None]
        return sum(parts) if parts else None
    return _num(x)


def _size(n: float) -> str:
    """A byte count as text, in decimal units (1 kB = 1000 B)."""
    if n < 1000:
        return f"{n:,.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:,.1f} {unit}"
    return f"{n / 1000:,.1f} TB"


@dataclass
class _Cell:
    """One table cell: its HTML, sort key ('' sorts last) and whether it holds a value."""

    text: str
    sort: Any = None
    cls: str = ""
    has_value: bool = True
    title: str = ""

    def render(self) -> str:
        sort_attr = "" if self.sort is None else f' data-sort="{html.escape(str(self.sort))}"'
        cls_attr = f' class="{self.cls}"' if self.cls else ""
        title_attr = f' title="{html.escape(self.title)}"' if self.title else ""
        return f"<td{cls_attr}{sort_attr}{title_attr}>{self.text}</td>"


def _unknown(cls: str = "", title: str = "not in the summary") -> _Cell:
    return _Cell(f'<span class="none">{_UNKNOWN}</span>', "", cls, False, title)


def _not_applicable(run_type: Any, what: str, cls: str = "num") -> _Cell:
    where = f"{run_type} runs" if run_type else "this run"
    return _Cell(f'<span class="none">{_NOT_APPLICABLE}</span>', "", cls, False,
                 f"no hit finding in {where}: every frame is reduced, {what} does not apply")


def _reduction_cell(entry: RunEntry) -> _Cell:
    """Overall ratio bytes_in / (all bytes written) in bold, per product folded below.

    The sort key is the overall ratio when known, else the largest per-product ratio.
    """
    rr = entry.get("reduction_ratio")
    overall = None
    b_in, b_out = _num(entry.get("bytes_in")), _total(entry.get("bytes_out"))
    if b_in is not None and b_out:
        overall = b_in / b_out
    if isinstance(rr, dict):
        parts = [(str(k), _num(v)) for k, v in rr.items()]
        parts = [(k, v) for k, v in parts if v is not None]
        if overall is None and not parts:
            return _unknown("num")
        key = overall if overall is not None else max(v for _, v in parts)
        lines = "".join(f"<li>{html.escape(k)} <b>{v:,.0f}\u00d7</b></li>" for k, v in parts)
        head = f"<b>{key:,.0f}\u00d7</b>"
        title = ("raw bytes / bytes of all products" if overall is not None
                 else "largest per-product ratio (total bytes out unknown)")
        if parts:
            text = (f'<details class="ratios"><summary>{head}</summary>'
                    f'<ul class="plain">{lines}</ul></details>')
        else:
            text = head
        return _Cell(text, key, "num", True, title)
    v = _num(rr)
    if v is None:
        v = overall
    if v is None:
        return _unknown("num")
    return _Cell(f"<b>{v:,.0f}\u00d7</b>", v, "num", True, "raw bytes / bytes of all products")


def _products_cell(entry: RunEntry, rel: Callable[[Path], str]) -> _Cell:
    """Product links; more than a few fold into a <details> list grouped by folder."""
    if not entry.products:
        return _Cell('<span class="none">none</span>', "", "products", False)
    sizes: dict[Path, int | None] = {}
    for p in entry.products:
        try:
            sizes[p] = p.stat().st_size
        except OSError:  # vanished since the scan: list it, without a size
            sizes[p] = None

    def link(p: Path, name: str) -> str:
        size = sizes[p]
        size_html = f' <span class="size">{_size(size)}</span>' if size is not None else ""
        return f'<a href="{rel(p)}">{html.escape(name)}</a>{size_html}'

    names = [Path(os.path.relpath(p, entry.directory)).as_posix() for p in entry.products]
    total = sum(s for s in sizes.values() if s is not None)
    if len(entry.products) <= _INLINE_PRODUCTS:
        text = '<ul class="plain files">' + "".join(
            f"<li>{link(p, n)}</li>" for p, n in zip(entry.products, names, strict=True)) + "</ul>"
        return _Cell(text, total, "products")
    groups: dict[str, list[str]] = {}
    for p, n in zip(entry.products, names, strict=True):
        folder, _, base = n.rpartition("/")
        groups.setdefault(folder, []).append(link(p, base))
    items = "".join(
        "<li>" + (f'<span class="dir">{html.escape(folder)}/</span> ' if folder else "")
        + ", ".join(links) + "</li>" for folder, links in groups.items())
    text = (f'<details class="products"><summary>{len(names)} files · {_size(total)}'
            f' <span class="size">in {len(groups)} folder{"s" if len(groups) != 1 else ""}</span>'
            f'</summary><ul class="plain files">{items}</ul></details>')
    return _Cell(text, total, "products")


def _cells(entry: RunEntry, root: Path) -> dict[str, _Cell]:
    """Every cell of one run's row, by column name."""
    def rel(p: Path) -> str:
        return html.escape(Path(os.path.relpath(p, root)).as_posix(), quote=True)

    verdict = entry.verdict
    run_type = entry.get("run_type")
    hit_finding = hit_finding_ran(entry.summary)
    cells: dict[str, _Cell] = {}

    summary_link = (f' <a class="small" href="{rel(entry.directory / "summary.json")}">summary</a>'
                    if entry.summary is not None else "")
    cells["run"] = _Cell(f"{entry.run}{summary_link}", entry.run, "num")
    cells["type"] = (_Cell(html.escape(str(run_type)), str(run_type)) if run_type
                     else _unknown())

    frames_in, xray = _num(entry.get("frames_in")), _num(entry.get("xray_frames"))
    if frames_in is None:
        cells["frames in"] = _unknown("num")
    else:
        xray_html = f'<br><span class="small">{xray:,.0f} X-ray</span>' if xray is not None else ""
        cells["frames in"] = _Cell(f"{frames_in:,.0f}{xray_html}", frames_in, "num", True,
                                   "frames recorded" + (", of them with X-rays" if xray_html else ""))

    kept, what = kept_frames(entry.summary)
    if kept is not None:
        cells["frames kept"] = _Cell(f'{kept:,.0f}<br><span class="small">{what}</span>', kept, "num",
                                     True, "hit frames" if what == "hits" else "frames kept")
    elif hit_finding is False:
        cells["frames kept"] = _not_applicable(run_type, "frame selection")
    else:
        cells["frames kept"] = _unknown("num")

    hit_rate = _num(entry.get("hit_rate"))
    if hit_finding is False:
        cells["hit rate"] = _not_applicable(run_type, "a hit rate")
    elif hit_rate is None:
        cells["hit rate"] = _unknown("num")
    else:
        cells["hit rate"] = _Cell(f"{100 * hit_rate:.2f} %", hit_rate, "num", True,
                                  "hits / X-ray frames")

    cells["reduction"] = _reduction_cell(entry)

    problems = (f'<div class="problem">{"; ".join(html.escape(p) for p in entry.problems)}</div>'
                if entry.problems else "")
    cells["verdict"] = _Cell(f'<span class="verdict v-{verdict}">{verdict.upper()}</span>{problems}',
                             _RANK[verdict])
    reports = " ".join(
        f'<a class="rep v-{v}" href="{rel(h)}" title="verdict: {v}">{html.escape(stage)}</a>'
        for stage, h, v in entry.reports)
    cells["reports"] = (_Cell(reports) if reports
                        else _Cell('<span class="none">none</span>', "", "", False))
    cells["products"] = _products_cell(entry, rel)
    return cells


# (column, header tooltip, kept even when no row has a value)
_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("run", "run number; link to its summary.json", True),
    ("type", "run type (technique)", False),
    ("frames in", "frames recorded (X-ray frames below)", False),
    ("frames kept", "frames kept by hit finding (SPI, SFX); n/a where every frame is reduced", False),
    ("hit rate", "hits / X-ray frames, where hit finding ran (SPI, SFX)", False),
    ("reduction", "raw bytes / bytes written; click for the ratio per product", False),
    ("verdict", "worst verdict of the run's reports", True),
    ("reports", "validation reports, coloured by verdict", True),
    ("products", "files written for the run; click to list them", True),
)

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
.meta { color: #555; font-size: 0.9em; margin-bottom: 1em; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
td.products, .problem { overflow-wrap: anywhere; }
/* Long file names may wrap anywhere, but not down to a few letters per line;
   below ~1100 px the other columns need that room to avoid horizontal scrolling. */
@media (min-width: 1100px) { td.products { min-width: 14em; } }
th { background: #f0f0f0; cursor: pointer; user-select: none; position: sticky; top: 0;
     white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; white-space: nowrap; }
tr:hover td { background: #fafafa; }
.verdict { font-weight: bold; padding: 1px 6px; border-radius: 3px; color: white; white-space: nowrap; }
a.rep { display: inline-block; margin: 1px 2px; padding: 1px 6px; border-radius: 3px;
        border: 1px solid; text-decoration: none; }
.none, .small, .size { color: #888; font-size: 0.85em; }
.size { white-space: nowrap; }
.problem { color: #b3261e; font-size: 0.8em; }
.counts span { margin-right: 1em; }
ul.plain { list-style: none; margin: 0; padding: 0; }
ul.files li { margin: 1px 0; }
.dir { color: #555; font-weight: bold; }
details > summary { cursor: pointer; }
details.ratios ul { font-size: 0.85em; color: #555; }
details.ratios b { color: #222; font-weight: normal; }
"""
_CSS += "".join(f".verdict.v-{k} {{ background: {c}; }}\na.rep.v-{k} {{ color: {c}; border-color: {c}; }}\n"
                for k, c in _COLOURS.items())

# Sort on click: numbers by data-sort, text otherwise; empty values last.
_JS = """
(function () {
  "use strict";
  var table = document.getElementById("runs");
  var headers = table.tHead.rows[0].cells;
  function key(row, i) {
    var cell = row.cells[i];
    var v = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    var n = parseFloat(v);
    return (v !== "" && !isNaN(n) && isFinite(v)) ? n : v.trim().toLowerCase();
  }
  function sortBy(i) {
    var th = headers[i];
    var asc = th.getAttribute("aria-sort") !== "ascending";
    for (var k = 0; k < headers.length; k++) { headers[k].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, i), y = key(b, i);
      if (x === "" && y !== "") { return 1; }
      if (y === "" && x !== "") { return -1; }
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(headers, function (th, i) {
    th.addEventListener("click", function () { sortBy(i); });
  });
}());
"""


def render_index(entries: list[RunEntry], root: str | os.PathLike, title: str = "xfel-reduce runs") -> str:
    """The index page as HTML text; links are relative to ``root`` (where the page lives)."""
    root = Path(root)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.verdict] = counts.get(e.verdict, 0) + 1
    count_html = "".join(f'<span><span class="verdict v-{k}">{k.upper()}</span> {counts[k]}</span>'
                         for k in sorted(counts, key=_RANK.__getitem__))
    table = [(e, _cells(e, root)) for e in entries]
    # A column with nothing in any row only costs width: leave it out.
    columns = [(name, tip) for name, tip, always in _COLUMNS
               if always or any(cells[name].has_value for _, cells in table)]
    head = "".join(f'<th scope="col" title="{html.escape(tip)} (click to sort)">{name}</th>'
                   for name, tip in columns)
    rows = "\n".join(
        f'<tr data-run="{e.run}">' + "".join(cells[name].render() for name, _ in columns) + "</tr>"
        for e, cells in table)
    created = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">{len(entries)} runs · generated {html.escape(created)} · click a column header to sort ·
{_UNKNOWN} not known, {_NOT_APPLICABLE} does not apply (hit rate and kept frames: runs with hit finding only)</div>
<div class="counts">{count_html}</div>
<table id="runs">
<thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
<script>{_JS}</script>
</body>
</html>
"""


def build_index(results: str | os.PathLike, output: str | os.PathLike | None = None,
                runs: Iterable[int] | None = None, title: str = "xfel-reduce runs") -> Path:
    """Write the run index (atomically) and return its path.

    Parameters
    ----------
    results : path
        Results directory.
    output : path, optional
        Where to write; default ``results/index.html``.
    runs : iterable of int, optional
        Runs to list (default: every ``r????`` directory found).
    title : str, optional
        Page title.

    Returns
    -------
    Path
    """
    results = Path(results)
    output = Path(output) if output is not None else results / "index.html"
    entries = collect_runs(results, runs)
    page = render_index(entries, output.parent, title)
    return write_atomic(output, page)
