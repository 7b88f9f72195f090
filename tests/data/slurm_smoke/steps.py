"""Job bodies of the smoke workflow (run through Snakemake's ``script:``).

Kept in a script rather than ``run:`` blocks because, like the real workflow's
``workflow/scripts``, a script job costs one Python start-up, whereas a
``run:`` block on a cluster costs a whole extra Snakemake start-up per job.
"""

import io
import json
import time

import numpy as np

SHAPE = (64, 32)  # a small "module"
OFFSET_ADU, ADU_PER_PHOTON = 1000.0, 50.0

sm = snakemake  # noqa: F821  (injected by Snakemake)
cfg = sm.config


def radius(mod: int) -> np.ndarray:
    """Distance of each pixel from the beam, modules side by side."""
    y, x = np.indices(SHAPE)
    return np.hypot(y - SHAPE[0] / 2, x + 8.0 * mod)


def simulate() -> None:
    run, mod, seq = (int(sm.wildcards[k]) for k in ("run", "mod", "seq"))
    rng = np.random.default_rng([run, mod, seq])
    # Radially decaying mean photon count: a SAXS-like pattern.
    lam = 20.0 * np.exp(-radius(mod) / 15.0)
    photons = rng.poisson(lam, size=(int(cfg.get("frames", 4)), *SHAPE))
    adu = OFFSET_ADU + ADU_PER_PHOTON * photons + rng.normal(0, 5, photons.shape)
    buf = io.BytesIO()
    np.save(buf, np.round(adu).astype(np.uint16))
    data = buf.getvalue()
    if f"{run}/{mod}/{seq}" in cfg.get("corrupt", []):
        data = data[: len(data) // 3]  # a transfer cut short
    with open(sm.output[0], "wb") as f:
        f.write(data)


def calibrate() -> None:
    try:
        raw = np.load(sm.input[0])
    except Exception as err:
        raise ValueError(
            f"corrupt raw sequence file {sm.input[0]} ({err}); re-transfer it "
            "or exclude the sequence from the run"
        ) from err
    corr = ((raw.astype(np.float32) - OFFSET_ADU) / ADU_PER_PHOTON).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, corr)
    data = buf.getvalue()
    # Write in two halves with a pause in between: an interruption here
    # leaves a truncated file that must never be taken as complete.
    with open(sm.output[0], "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(float(cfg.get("delay_s", 0)))
        f.write(data[len(data) // 2:])


def saxs_chunk() -> None:
    corr = np.load(sm.input[0])
    nbins = int(sm.params.nbins)
    r = radius(int(sm.wildcards["mod"]))
    idx = np.minimum((r / r.max() * nbins).astype(int), nbins - 1).ravel()
    # Mergeable partials (sums and counts per bin): the run average does not
    # depend on how the run is split into jobs.
    np.savez(
        sm.output[0],
        sum=np.bincount(idx, corr.sum(axis=0).ravel(), nbins),
        sumsq=np.bincount(idx, (corr.astype(np.float64) ** 2).sum(axis=0).ravel(), nbins),
        count=np.bincount(idx, minlength=nbins) * corr.shape[0],
    )


def aggregate() -> None:
    parts = [np.load(p) for p in sm.input]
    s = sum(p["sum"] for p in parts)
    s2 = sum(p["sumsq"] for p in parts)
    n = sum(p["count"] for p in parts)
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    var = np.divide(s2, n, out=np.zeros_like(s), where=n > 0) - mean**2
    with open(sm.output[0], "w") as f:
        json.dump({"I": mean.tolist(), "var": var.tolist(), "n": n.tolist()}, f)


def report() -> None:
    with open(sm.input.iq) as f:
        iq = json.load(f)
    photons = float(sum(np.load(p).sum(dtype=np.float64) for p in sm.input.corr))
    with open(sm.output[0], "w") as f:
        json.dump({"run": int(sm.wildcards["run"]), "photons": photons,
                   "nbins": len(iq["I"]), "I0": iq["I"][0]}, f, sort_keys=True)


{"simulate": simulate, "calibrate": calibrate, "saxs_chunk": saxs_chunk,
 "aggregate": aggregate, "report": report}[sm.rule]()
