"""The simulator's counter-based random numbers against their distributions.

Every simulated photon and noise sample comes from these draws, so the truth the
other tests compare with is only as good as they are.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import stats

from xfel_reduce.simulate.counter_rng import normal_pair, poisson


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.5, 3.0, 9.9, 10.0, 30.0, 200.0, 5000.0])
def test_poisson_mean_and_variance(lam):
    x = poisson(np.random.default_rng(1), lam, (400_000,)).astype(np.float64)
    # both within 5 standard errors (var of the sample variance ≈ (2λ² + λ)/n)
    se_mean = np.sqrt(max(lam, 1e-12) / x.size)
    se_var = np.sqrt((2 * lam**2 + lam) / x.size)
    assert abs(x.mean() - lam) < 5 * se_mean + 1e-12
    assert abs(x.var() - lam) < 5 * se_var + 1e-12
    assert np.all(x == np.round(x)) and np.all(x >= 0)


@pytest.mark.parametrize("lam", [4.0, 20.0])  # inversion and transformed rejection
def test_poisson_matches_pmf(lam):
    x = poisson(np.random.default_rng(2), lam, (400_000,)).astype(int)
    ks = np.arange(int(3 * lam))
    expected = stats.poisson.pmf(ks, lam) * x.size
    observed = np.array([(x == k).sum() for k in ks])
    sel = expected > 20
    chi2 = (((observed - expected) ** 2) / expected)[sel].sum()
    assert stats.chi2.sf(chi2, sel.sum() - 1) > 1e-3, chi2


def test_poisson_reproducible_and_array_means():
    lam = np.random.default_rng(0).exponential(0.3, (4, 512, 128)).astype(np.float32)
    a = poisson(np.random.default_rng(5), lam)
    b = poisson(np.random.default_rng(5), lam)
    np.testing.assert_array_equal(a, b)
    assert abs(a.sum() / lam.sum() - 1) < 5 / np.sqrt(lam.sum())
    with pytest.raises(ValueError, match=">= 0"):
        poisson(np.random.default_rng(0), -1.0, (3,))


@numba.njit
def _normals(n, key):
    out = np.empty(2 * n)
    for i in range(n):
        a, b = normal_pair(key, np.uint64(i))
        out[2 * i] = a
        out[2 * i + 1] = b
    return out


def test_normal_pair_is_standard_normal():
    z = _normals(1_000_000, np.uint64(9))
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.std() - 1) < 5 / np.sqrt(2 * z.size)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # tails: beyond 4σ as often as for a Gaussian (within 5 Poisson σ)
    n4 = (np.abs(z) > 4).sum()
    e4 = 2 * stats.norm.sf(4) * z.size
    assert abs(n4 - e4) < 5 * np.sqrt(e4)
    # the two members of a pair are uncorrelated
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / np.sqrt(z.size / 2)
