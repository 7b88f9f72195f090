"""Automatic pass/warn/fail checks shown at the top of every validation report.

A report notebook computes a list of :class:`Check` objects from the data it
reads (residual dark offset, bad-pixel fraction, hit rate, fit quality, ...),
shows them with :func:`render_verdict` as a coloured block *before* any plot,
and writes :func:`verdict_summary` as JSON next to the HTML report so that
``results/index.html`` can show the verdict of every run without parsing HTML.

The overall verdict is the worst status of all checks: one ``fail`` makes the
report fail, otherwise one ``warn`` makes it warn.  A report without checks is
``warn`` rather than ``pass`` because "nothing was verified" must not look
green to a user skimming the index.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .io.atomic import write_json

__all__ = [
    "STATUSES",
    "Check",
    "check_range",
    "check_max",
    "check_min",
    "overall_status",
    "render_verdict",
    "verdict_html",
    "verdict_summary",
    "write_verdict",
    "read_verdict",
]

#: Allowed statuses, ordered from best to worst.  ``error`` is reserved for a
#: report whose notebook could not be executed at all (set by the renderer).
STATUSES: tuple[str, ...] = ("pass", "warn", "fail", "error")

_COLOURS = {
    # (background, border/text) — colour-blind safe enough and readable in print
    "pass": ("#e6f4ea", "#1e7b34"),
    "warn": ("#fff4e0", "#a15c00"),
    "fail": ("#fde8e8", "#b3261e"),
    "error": ("#fde8e8", "#b3261e"),
}
_SYMBOL = {"pass": "\u2714", "warn": "\u26a0", "fail": "\u2716", "error": "\u2716"}


@dataclass(frozen=True)
class Check:
    """One automatic check of a report.

    Parameters
    ----------
    name : str
        Short human-readable name, e.g. ``"residual dark offset (module 3)"``.
    status : {"pass", "warn", "fail", "error"}
        Outcome of the check.
    value : float, int, str or None
        The measured value (``None`` if it could not be computed).
    expected : str
        The acceptance criterion in words, e.g. ``"0.02 ≤ x ≤ 0.3"``.
    message : str, optional
        What the value means or what to do about it.
    """

    name: str
    status: str
    value: float | int | str | None
    expected: str
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(
                f"Check {self.name!r}: status must be one of {STATUSES}, "
                f"got {self.status!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (non-finite floats become ``None``)."""
        return _jsonable_tree(asdict(self))


def _jsonable_tree(obj: Any) -> Any:
    """:func:`_jsonable` through dicts, lists and arrays: no NaN reaches a verdict file."""
    if isinstance(obj, dict):
        return {str(k): _jsonable_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or (hasattr(obj, "ndim") and getattr(obj, "ndim", 0) > 0):
        return [_jsonable_tree(v) for v in obj]
    return _jsonable(obj)


def _jsonable(value: Any) -> Any:
    """Map numpy scalars to Python ones and NaN/inf to None (JSON has neither)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return None
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return int(value)
    return f


def _fmt(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _interval(lo: float | None, hi: float | None, fmt: str, unit: str) -> str:
    u = f" {unit}" if unit else ""
    if lo is not None and hi is not None:
        return f"{_fmt(lo, fmt)} \u2264 x \u2264 {_fmt(hi, fmt)}{u}"
    if lo is not None:
        return f"x \u2265 {_fmt(lo, fmt)}{u}"
    if hi is not None:
        return f"x \u2264 {_fmt(hi, fmt)}{u}"
    return "any value"


def check_range(
    name: str,
    value: float | None,
    lo: float | None,
    hi: float | None,
    warn_lo: float | None = None,
    warn_hi: float | None = None,
    *,
    unit: str = "",
    fmt: str = ".4g",
    message: str = "",
) -> Check:
    """Check that a value lies in an accepted interval, with an optional warn band.

    ``lo ≤ value ≤ hi`` passes.  Outside that but inside
    ``warn_lo ≤ value ≤ warn_hi`` warns.  Anything else fails, as does a value
    that is ``None`` or not finite (a NaN statistic means the data were empty or
    broken, never "fine").  A ``None`` bound is open; a ``None`` warn bound
    means there is no warn band on that side (leaving it fails directly).

    Parameters
    ----------
    name : str
        Name of the check.
    value : float or None
        Measured value.
    lo, hi : float or None
        Pass interval (inclusive).
    warn_lo, warn_hi : float or None, optional
        Outer interval (inclusive) within which a value outside ``[lo, hi]``
        only warns.  Must enclose ``[lo, hi]``.
    unit : str, optional
        Unit shown after numbers.
    fmt : str, optional
        Format spec for numbers in the expectation text.
    message : str, optional
        Extra explanation appended to the automatic one.

    Returns
    -------
    Check
    """
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"check_range {name!r}: lo={lo} > hi={hi}")
    if warn_lo is not None and lo is not None and warn_lo > lo:
        raise ValueError(f"check_range {name!r}: warn_lo={warn_lo} must be <= lo={lo}")
    if warn_hi is not None and hi is not None and warn_hi < hi:
        raise ValueError(f"check_range {name!r}: warn_hi={warn_hi} must be >= hi={hi}")

    expected = _interval(lo, hi, fmt, unit)
    if warn_lo is not None or warn_hi is not None:
        wl = warn_lo if warn_lo is not None else lo
        wh = warn_hi if warn_hi is not None else hi
        expected += f" (warn within {_interval(wl, wh, fmt, unit)})"

    v = _jsonable(value)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return Check(name, "fail", v, expected,
                     _join("value is missing or not finite", message))

    def inside(a: float | None, b: float | None) -> bool:
        return (a is None or v >= a) and (b is None or v <= b)

    if inside(lo, hi):
        status, auto = "pass", ""
    elif (warn_lo is not None or warn_hi is not None) and inside(
        warn_lo if warn_lo is not None else lo, warn_hi if warn_hi is not None else hi
    ):
        status, auto = "warn", "outside the accepted range but within tolerance"
    else:
        status, auto = "fail", "outside the accepted range"
    return Check(name, status, v, expected, _join(auto, message))


def check_max(name: str, value: float | None, hi: float, warn_hi: float | None = None,
              **kwargs: Any) -> Check:
    """Shortcut for an upper limit: ``check_range(name, value, None, hi, None, warn_hi)``."""
    return check_range(name, value, None, hi, None, warn_hi, **kwargs)


def check_min(name: str, value: float | None, lo: float, warn_lo: float | None = None,
              **kwargs: Any) -> Check:
    """Shortcut for a lower limit: ``check_range(name, value, lo, None, warn_lo, None)``."""
    return check_range(name, value, lo, None, warn_lo, None, **kwargs)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def overall_status(checks: Iterable[Check]) -> str:
    """Worst status of ``checks``; ``"warn"`` if there are none (nothing verified)."""
    ranks = [STATUSES.index(c.status) for c in checks]
    return STATUSES[max(ranks)] if ranks else "warn"


def verdict_summary(checks: Sequence[Check], **extra: Any) -> dict[str, Any]:
    """JSON-able summary for the run index.

    Parameters
    ----------
    checks : sequence of Check
    **extra
        Additional key/values to store (e.g. ``stage="calibration", run=42``).

    Returns
    -------
    dict
        ``{"overall": str, "counts": {status: n}, "checks": [check dicts], **extra}``.
    """
    checks = list(checks)
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    return {"overall": overall_status(checks), "counts": counts,
            "checks": [c.to_dict() for c in checks], **_jsonable_tree(extra)}


def write_verdict(checks: Sequence[Check] | dict[str, Any], path: str | os.PathLike,
                  **extra: Any) -> dict[str, Any]:
    """Write :func:`verdict_summary` (or an already built summary) as JSON, atomically.

    Returns the summary that was written.
    """
    summary = _jsonable_tree(checks) if isinstance(checks, dict) else verdict_summary(checks, **extra)
    write_json(path, summary, allow_nan=False)
    return summary


def read_verdict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a verdict JSON written by :func:`write_verdict`, with a clear error if broken."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read verdict file {path}: {exc}; re-run its report rule") from exc
    if summary.get("overall") not in STATUSES:
        raise ValueError(f"verdict file {path} has no valid 'overall' status; re-run its report rule")
    return summary


def verdict_html(checks: Sequence[Check], title: str = "Verdict") -> str:
    """The verdict block as an HTML string (inline CSS, no external resources)."""
    checks = list(checks)
    overall = overall_status(checks)
    bg, fg = _COLOURS[overall]
    rows = []
    for c in checks:
        cbg, cfg = _COLOURS[c.status]
        value = c.value if isinstance(c.value, str) or c.value is None else format(c.value, ".4g")
        rows.append(
            f'<tr><td style="text-align:left;padding:2px 8px;background:{cbg};color:{cfg};font-weight:bold;'
            f'white-space:nowrap">{_SYMBOL[c.status]} {c.status.upper()}</td>'
            f'<td style="text-align:left;padding:2px 8px">{html.escape(c.name)}</td>'
            f'<td style="text-align:right;padding:2px 8px;font-family:monospace">'
            f'{html.escape("—" if value is None else str(value))}</td>'
            f'<td style="text-align:left;padding:2px 8px">{html.escape(c.expected)}</td>'
            f'<td style="text-align:left;padding:2px 8px">{html.escape(c.message)}</td></tr>'
        )
    n = {s: sum(c.status == s for c in checks) for s in STATUSES}
    counts = ", ".join(f"{n[s]} {s}" for s in STATUSES if n[s]) or "no checks"
    return (
        f'<div class="xfel-verdict" data-verdict="{overall}" '
        f'style="border:3px solid {fg};background:{bg};padding:8px 12px;margin:4px 0 12px 0;'
        f'border-radius:6px;font-family:sans-serif">'
        f'<div style="font-size:1.4em;font-weight:bold;color:{fg}">{html.escape(title)}: '
        f'{_SYMBOL[overall]} {overall.upper()} <span style="font-size:0.6em;font-weight:normal">'
        f"({counts})</span></div>"
        '<table style="border-collapse:collapse;margin-top:6px;background:white;width:100%">'
        '<thead><tr style="text-align:left"><th style="text-align:left;padding:2px 8px">status</th>'
        '<th style="text-align:left;padding:2px 8px">check</th><th style="text-align:left;padding:2px 8px">value</th>'
        '<th style="text-align:left;padding:2px 8px">expected</th><th style="text-align:left;padding:2px 8px">note</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def render_verdict(checks: Sequence[Check], title: str = "Verdict") -> Any:
    """The verdict block as an ``IPython.display.HTML`` object for a notebook cell.

    The last expression of a notebook cell (or ``display(...)``) renders it.
    """
    from IPython.display import HTML  # imported lazily: only notebooks need IPython

    return HTML(verdict_html(checks, title))
