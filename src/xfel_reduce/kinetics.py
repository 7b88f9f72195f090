"""Pump-probe kinetics: an exponential rise after time zero, fitted to a delay scan.

Model of an observable ``y`` (a radius change, a line shift …) against the delay ``t``::

    y(t) = base                                   t ≤ t0
    y(t) = base + A · (1 − exp(−(t − t0) / τ))    t > t0

The kink at ``t0`` makes the χ² surface rough in ``t0``: the fit first scans ``t0`` over
a fine grid (the other three parameters by least squares at each value), then refines
all four from the best grid point; errors from the Jacobian, scaled by χ²_red when it
is above 1.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import least_squares


def rise_model(t: np.ndarray, t0: float, tau: float, amplitude: float, base: float = 0.0) -> np.ndarray:
    """The model above."""
    dt = np.asarray(t, np.float64) - t0
    return base + amplitude * np.where(dt > 0, -np.expm1(-np.maximum(dt, 0.0) / max(tau, 1e-12)), 0.0)


def fit_rise(t: np.ndarray, y: np.ndarray, sigma: np.ndarray, grid: int = 60) -> dict[str, Any]:
    """Fit :func:`rise_model`; points with non-finite values or σ ≤ 0 are ignored.

    Returns
    -------
    dict
        ``t0``, ``tau``, ``amplitude``, ``base`` with ``*_err``, ``chi2_red``,
        ``n_points``, ``success``; raises ValueError with fewer than 5 points.
    """
    t, y, s = (np.asarray(a, np.float64) for a in (t, y, sigma))
    ok = np.isfinite(t) & np.isfinite(y) & np.isfinite(s) & (s > 0)
    t, y, s = t[ok], y[ok], s[ok]
    if t.size < 5:
        raise ValueError(f"kinetics fit needs ≥ 5 delays with a value, got {t.size}")
    order = np.argsort(t)
    t, y, s = t[order], y[order], s[order]
    span = float(t[-1] - t[0])

    def resid(p):
        return (rise_model(t, *p) - y) / s

    best = None
    for t0 in np.linspace(t[0], t[-1] - 0.05 * span, grid):
        late = t > t0
        if late.sum() < 2:
            continue
        # τ from where the rise reaches 63 % of the late values' range, as a start
        tau0 = max(0.3 * float(t[late][-1] - t0), 1e-3 * span)
        p0 = [tau0, float(y[late][-1] - y[~late].mean()) if (~late).any() else float(y[-1] - y[0]),
              float(y[~late].mean()) if (~late).any() else float(y[0])]
        sol = least_squares(lambda q: resid([t0, *q]), p0, bounds=([1e-3 * span, -np.inf, -np.inf],
                                                                    [10 * span, np.inf, np.inf]))
        cost = float(np.sum(sol.fun ** 2))
        if best is None or cost < best[0]:
            best = (cost, [t0, *sol.x])
    sol = least_squares(resid, best[1], x_scale="jac")
    if float(np.sum(sol.fun ** 2)) > best[0]:  # the refinement slid off the kink: keep the grid point
        x, fun, jac = np.asarray(best[1]), resid(best[1]), None
    else:
        x, fun, jac = sol.x, sol.fun, sol.jac
    dof = max(1, t.size - 4)
    chi2 = float(np.sum(fun ** 2) / dof)
    if jac is None:
        jac = least_squares(resid, x, max_nfev=1).jac
    try:
        err = np.sqrt(np.diag(np.linalg.inv(jac.T @ jac)) * max(chi2, 1.0))
    except np.linalg.LinAlgError:
        err = np.full(4, np.nan)
    names = ("t0", "tau", "amplitude", "base")
    out: dict[str, Any] = {n: float(v) for n, v in zip(names, x)}
    out.update({f"{n}_err": float(e) for n, e in zip(names, err)})
    out.update(chi2_red=chi2, n_points=int(t.size), success=bool(np.all(np.isfinite(x))))
    return out
