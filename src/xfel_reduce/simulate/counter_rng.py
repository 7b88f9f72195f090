"""Counter-based random numbers for the simulator's numba kernels.

Every value is a pure function of a 64-bit key and the element's index, so the
kernels can run in parallel and still give the same result for any number of
threads, without per-thread generator state or temporary arrays.  The key comes
from one draw of the caller's ``numpy.random.Generator``, which keeps a whole
simulation reproducible from the config seed.
"""
from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["key_from", "poisson"]


def key_from(rng: np.random.Generator) -> np.uint64:
    """A kernel key drawn from ``rng`` (advances it by one draw)."""
    return np.uint64(rng.integers(0, 2**63 - 1, dtype=np.int64))


@numba.njit(inline="always")
def splitmix64(z):  # pragma: no cover - compiled
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def uniform(key, j):  # pragma: no cover - compiled
    """U[0, 1) for counter ``j`` (53 random bits)."""
    return (splitmix64(key ^ j) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always")
def normal_pair(key, j):  # pragma: no cover - compiled
    """Two independent N(0, 1) values for counter ``j`` (Marsaglia's polar method).

    One hash gives two 32-bit uniforms; no sin/cos, so it is ~1.5x faster than
    Box–Muller.  Rejected points (21 %) move on to counters ``64 j + 1, 2, ...``.
    """
    t = np.uint64(0)
    while True:
        h = splitmix64(key ^ (j * np.uint64(64) + t))
        u = (h >> np.uint64(32)) * (2.0 / 4294967296.0) - 1.0
        v = (h & np.uint64(0xFFFFFFFF)) * (2.0 / 4294967296.0) - 1.0
        s = u * u + v * v
        if 0.0 < s < 1.0:
            f = math.sqrt(-2.0 * math.log(s) / s)
            return u * f, v * f
        t += np.uint64(1)


# Below this mean, inversion (walking the CDF) needs few steps; above, the
# transformed rejection of Hörmann (1993, "PTRS") has a constant cost.
_INVERSION_MAX = 10.0
# Draws per element: element i uses counters i*_STRIDE + 0, 1, ...; PTRS accepts
# with probability > 0.9 per pair, so 2 * 64 uniforms are never exhausted in practice.
_STRIDE = np.uint64(128)


@numba.njit(inline="always")
def _poisson_one(lam, key, base):  # pragma: no cover - compiled
    if lam <= 0.0:
        return 0.0
    if lam < _INVERSION_MAX:
        u = uniform(key, base)
        p = math.exp(-lam)
        s = p
        k = 0
        while u > s and k < 200:
            k += 1
            p *= lam / k
            s += p
        return float(k)
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    for t in range(64):
        u = uniform(key, base + np.uint64(2 * t)) - 0.5
        v = uniform(key, base + np.uint64(2 * t + 1))
        us = 0.5 - abs(u)
        k = math.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if (math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)
                <= -lam + k * loglam - math.lgamma(k + 1.0)):
            return k
    return math.floor(lam + 0.5)  # unreachable in practice (p < 1e-60)


@numba.njit(parallel=True, cache=True, nogil=True)
def _poisson_kernel(lam, key, out):  # pragma: no cover - compiled
    flat_lam = lam.ravel()
    flat_out = out.ravel()
    n = flat_lam.size
    block = 4096
    for b in numba.prange((n + block - 1) // block):
        for i in range(b * block, min(n, (b + 1) * block)):
            flat_out[i] = _poisson_one(float(flat_lam[i]), key, np.uint64(i) * _STRIDE)


def poisson(rng: np.random.Generator, lam: np.ndarray | float, shape: tuple | None = None,
            dtype: type = np.float32) -> np.ndarray:
    """Poisson samples with mean ``lam``, in parallel and reproducible from ``rng``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Supplies the key (one draw); same generator state, same samples.
    lam : array_like or float
        Expected counts (>= 0); a scalar is broadcast to ``shape``.
    shape : tuple, optional
        Output shape when ``lam`` is a scalar (default: ``lam``'s shape).
    dtype : numpy dtype, optional
        Output type (default float32; counts are exact integers up to 2**24).

    Returns
    -------
    numpy.ndarray
        Samples, same distribution as ``rng.poisson(lam)``.
    """
    lam = np.asarray(lam, dtype=np.float32)
    if shape is not None:
        lam = np.broadcast_to(lam, shape)
    lam = np.ascontiguousarray(lam)
    if lam.size and float(lam.min()) < 0:
        raise ValueError("Poisson mean must be >= 0")
    out = np.empty(lam.shape, dtype)
    _poisson_kernel(lam, key_from(rng), out)
    return out
