"""``results/index.html``: one row per run, the table users otherwise keep by hand.

For every run directory ``results/r{run:04d}/`` the index shows the run number,
run type, frames in/out, hit rate, reduction ratio, the overall verdict (worst of
the run's report verdicts) and links to every report and product file.  The page
is a single self-contained HTML file (inline CSS and JS, relative links only),
sortable by clicking a column header, and usable without network.

Inputs per run (all optional, missing ones are shown as such, never invented):

* ``summary.json`` written by the aggregation step (``run``, ``run_type``,
  ``frames_in``, ``frames_out``, ``bytes_in``, ``bytes_out``, ``reduction_ratio``
  — a number or ``{product: ratio}`` —, ``hit_rate``, ``timings``, ``provenance``);
* ``reports/<stage>.html`` and ``reports/<stage>.verdict.json``;
* any other file below the run directory is listed as a product.
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
from typing import Any, Iterable

from .io.atomic import write_atomic
from .verdict import STATUSES

__all__ = ["RunEntry", "collect_runs", "build_index", "render_index"]

_RUN_DIR_RE = re.compile(r"^r(\d{4,})$")
# Verdict order for the index: "missing" (no verdict at all) is worse than warn
# because an unverified run must not look fine, but better than fail.
_RANK = {"pass": 0, "warn": 1, "missing": 2, "fail": 3, "error": 4}
_COLOURS = {"pass": "#1e7b34", "warn": "#a15c00", "missing": "#666666", "fail": "#b3261e",
            "error": "#b3261e"}
# Files that are bookkeeping, not products.
_SKIP_SUFFIXES = (".tmp", ".lock", ".log")


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
                report_files.update({h, vpath})
        for p in sorted(d.rglob("*")):
            if (p.is_file() and p not in report_files and p != summary_path
                    and not p.name.startswith(".") and not p.name.endswith(_SKIP_SUFFIXES)):
                entry.products.append(p)
        entries.append(entry)
    return entries


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _reduction(entry: RunEntry) -> tuple[float | None, str]:
    """(sort key, display text) of the reduction ratio.

    The sort key is the overall ratio bytes_in/bytes_out when known, else the
    largest per-product ratio.
    """
    rr = entry.get("reduction_ratio")
    overall = None
    b_in, b_out = _num(entry.get("bytes_in")), _num(entry.get("bytes_out"))
    if b_in is not None and b_out:
        overall = b_in / b_out
    if isinstance(rr, dict):
        parts = [(k, _num(v)) for k, v in rr.items()]
        parts = [(k, v) for k, v in parts if v is not None]
        text = ", ".join(f"{html.escape(str(k))} {v:,.0f}\u00d7" for k, v in parts)
        key = overall if overall is not None else max((v for _, v in parts), default=None)
        if overall is not None:
            text = f"<b>{overall:,.0f}\u00d7</b>" + (f"<br><small>{text}</small>" if text else "")
        return key, text or "—"
    v = _num(rr)
    if v is not None:
        return v, f"<b>{v:,.0f}\u00d7</b>"
    if overall is not None:
        return overall, f"<b>{overall:,.0f}\u00d7</b>"
    return None, "—"


def _cell(text: str, sort: Any = None, cls: str = "") -> str:
    sort_attr = "" if sort is None else f' data-sort="{html.escape(str(sort))}"'
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<td{cls_attr}{sort_attr}>{text}</td>"


def _row(entry: RunEntry, root: Path) -> str:
    def rel(p: Path) -> str:
        return html.escape(Path(os.path.relpath(p, root)).as_posix(), quote=True)

    verdict = entry.verdict
    run_type = entry.get("run_type")
    frames_in, frames_out = _num(entry.get("frames_in")), _num(entry.get("frames_out"))
    hit_rate = _num(entry.get("hit_rate"))
    red_key, red_text = _reduction(entry)
    reports = " ".join(
        f'<a class="rep v-{v}" href="{rel(h)}" title="verdict: {v}">{html.escape(stage)}</a>'
        for stage, h, v in entry.reports) or '<span class="none">none</span>'
    prod_links = [f'<a href="{rel(p)}">{html.escape(Path(os.path.relpath(p, entry.directory)).as_posix())}</a>'
                  for p in entry.products]
    if len(prod_links) > 4:
        products = (f"<details><summary>{len(prod_links)} files</summary>"
                    + "<br>".join(prod_links) + "</details>")
    else:
        products = "<br>".join(prod_links) or '<span class="none">none</span>'
    summary_link = (f' <a class="small" href="{rel(entry.directory / "summary.json")}">summary</a>'
                    if entry.summary is not None else "")
    problems = (f'<div class="problem">{"; ".join(html.escape(p) for p in entry.problems)}</div>'
                if entry.problems else "")
    return (
        f'<tr data-run="{entry.run}">'
        + _cell(f"{entry.run}{summary_link}", entry.run, "num")
        + _cell(html.escape(str(run_type)) if run_type else "—", run_type or "")
        + _cell(f"{frames_in:,.0f}" if frames_in is not None else "—", frames_in, "num")
        + _cell(f"{frames_out:,.0f}" if frames_out is not None else "—", frames_out, "num")
        + _cell(f"{100 * hit_rate:.2f} %" if hit_rate is not None else "—", hit_rate, "num")
        + _cell(red_text, red_key, "num")
        + _cell(f'<span class="verdict v-{verdict}">{verdict.upper()}</span>{problems}',
                _RANK[verdict])
        + _cell(reports)
        + _cell(products)
        + "</tr>"
    )


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
.meta { color: #555; font-size: 0.9em; margin-bottom: 1em; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; white-space: nowrap; }
tr:hover td { background: #fafafa; }
.verdict { font-weight: bold; padding: 1px 6px; border-radius: 3px; color: white; }
a.rep { display: inline-block; margin: 1px 2px; padding: 1px 6px; border-radius: 3px;
        border: 1px solid; text-decoration: none; }
.none, .small { color: #888; font-size: 0.85em; }
.problem { color: #b3261e; font-size: 0.8em; }
.counts span { margin-right: 1em; }
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

_HEADERS = ("run", "type", "frames in", "frames out", "hit rate", "reduction", "verdict",
            "reports", "products")


def render_index(entries: list[RunEntry], root: str | os.PathLike, title: str = "xfel-reduce runs") -> str:
    """The index page as HTML text; links are relative to ``root`` (where the page lives)."""
    root = Path(root)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.verdict] = counts.get(e.verdict, 0) + 1
    count_html = "".join(f'<span><span class="verdict v-{k}">{k.upper()}</span> {counts[k]}</span>'
                         for k in sorted(counts, key=_RANK.__getitem__))
    head = "".join(f'<th scope="col" title="click to sort">{h}</th>' for h in _HEADERS)
    rows = "\n".join(_row(e, root) for e in entries)
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
<div class="meta">{len(entries)} runs · generated {html.escape(created)} · click a column header to sort</div>
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
