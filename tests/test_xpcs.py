"""XPCS: truth recovery on the simulated Brownian scene, split invariance, peers.

Tolerances
----------
* D (from Γ = D q² over the intra-train g2 fits): 5 % of truth (acceptance).
* β (g2 fit, pixel-weighted over rings; and XSVS factorial moments): 5 % of truth.
* Γ ∝ qⁿ: |n − 2| < 0.1 and within 4σ of 2.
* Split invariance: merged chunk partials equal the single-job result to 1e-12.
* scikit-beam peers: ≤ 1e-8 absolute (multi-tau g2, two-time).
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from xfel_reduce import geometry as geo
from xfel_reduce import xpcs
from xfel_reduce.simulate.scene import SceneContext, TrainBeam
from xfel_reduce.simulate.scenes.xpcs import DEFAULTS, XpcsScene

PULSE_S = 222e-9  # 4.5 MHz
TRAIN_S = 0.1
ENERGY_KEV = 9.0
DISTANCE_M = 5.5
MODULES = [3]  # the module reaching down to q ≈ 0.04 nm⁻¹ at 5.5 m


def _context(params: dict, pulses: int, seed: int = 7) -> SceneContext:
    pos = geo.pixel_positions(geo.agipd_geometry(), DISTANCE_M, modules=MODULES)
    return SceneContext(positions=pos, modules=MODULES, photon_energy_kev=ENERGY_KEV,
                        pulses_per_train=pulses, pulse_spacing_s=PULSE_S,
                        train_spacing_s=TRAIN_S, seed=seed, params=params)


def _simulate(params: dict, pulses: int, trains: int, seed: int = 7):
    """Run the scene with fluctuating XGM energies (10 % rms); returns ctx, scene, frames."""
    ctx = _context(params, pulses, seed)
    scene = XpcsScene(ctx)
    rng = np.random.default_rng(seed + 1)
    frames = []
    for i in range(trains):
        beam = TrainBeam(train_index=i, train_id=10_000 + i, xray=np.ones(pulses, bool),
                         ppl=np.zeros(pulses, bool),
                         pulse_energy_uj=rng.normal(1000.0, 100.0, pulses))
        frames.append(scene.photons(beam))
    return ctx, scene, np.stack(frames)


@pytest.fixture(scope="module")
def default_run():
    """The scene with its default truth (D, β, μ, q range): 10 trains × 100 pulses."""
    ctx, scene, frames = _simulate({}, pulses=100, trains=10)
    q = geo.q_map(ctx.positions, ENERGY_KEV)
    lo, hi = DEFAULTS["q_range_nm"]
    labels = xpcs.ring_labels(q, None, np.linspace(lo, hi, 7))
    return ctx, scene, frames, q, labels


@pytest.fixture(scope="module")
def default_analysis(default_run):
    ctx, scene, frames, q, labels = default_run
    part = xpcs.XpcsPartial(labels, n_frames=frames.shape[1], max_train_lag=3)
    part.add_trains(10_000 + np.arange(len(frames)), frames)
    return part, xpcs.analyse(part, xpcs.ring_q(q, labels), PULSE_S, TRAIN_S)


# --- ROIs -------------------------------------------------------------------------------
def test_ring_labels_edges_pairs_and_mask():
    q = np.linspace(0.0, 1.0, 101)[None, :].repeat(3, axis=0)
    mask = np.zeros_like(q, dtype=np.uint32)
    mask[1, 25] = 4  # a bad pixel inside ring 1
    lab = xpcs.ring_labels(q, mask, [0.2, 0.3, 0.5])
    assert lab[0, 25] == 1 and lab[1, 25] == 0 and lab[0, 30] == 2 and lab[0, 50] == 0
    assert (lab == 1).sum() == 3 * 10 - 1
    pairs = xpcs.ring_labels(q, None, [(0.6, 0.7), (0.1, 0.2)])
    assert pairs[0, 65] == 1 and pairs[0, 15] == 2
    with pytest.raises(ValueError, match="overlap"):
        xpcs.ring_labels(q, None, [(0.1, 0.3), (0.2, 0.4)])
    with pytest.raises(ValueError, match="mask shape"):
        xpcs.ring_labels(q, mask[:2], [0.1, 0.2])
    rq = xpcs.ring_q(q, lab)
    assert np.all((rq > [0.2, 0.3]) & (rq < [0.3, 0.5]))


def test_bad_input_errors_name_the_train(default_run):
    _, _, frames, _, labels = default_run
    part = xpcs.XpcsPartial(labels, n_frames=4)
    with pytest.raises(ValueError, match="train 5: 5 frames"):
        part.add_train(5, frames[0, :5])
    part.add_train(7, frames[0, :4])
    with pytest.raises(ValueError, match="increasing train ID"):
        part.add_train(6, frames[1, :4])
    with pytest.raises(ValueError, match="do not match"):
        part.add_train(8, frames[1, :4, :, :100])


# --- truth recovery ---------------------------------------------------------------------
def test_diffusion_and_contrast_recovered(default_run, default_analysis):
    _, scene, _, _, _ = default_run
    _, ana = default_analysis
    truth = scene.truth()
    d = ana["diffusion"]["D_m2_per_s"]
    assert abs(d / truth["diffusion_m2_per_s"] - 1) < 0.05, d
    beta_fit, _ = xpcs.ring_average(ana["fit"]["beta"], ana["fit"]["beta_err"])
    assert abs(beta_fit / truth["beta"] - 1) < 0.05, ana["fit"]["beta"]
    beta_mom, beta_mom_err = xpcs.ring_average(ana["beta_moments"], ana["beta_moments_err"])
    assert abs(beta_mom / truth["beta"] - 1) < 0.05, ana["beta_moments"]
    # every ring's moment estimate agrees with the truth within its own error
    pull = (ana["beta_moments"] - truth["beta"]) / ana["beta_moments_err"]
    assert np.all(np.abs(pull) < 4), pull
    # Every ring individually within 10 % (statistics per ring are ~6x poorer).
    assert np.all(np.abs(ana["fit"]["beta"] / truth["beta"] - 1) < 0.10)
    # Train-to-train errors must be meaningful: fit χ²_red of order 1.
    assert np.all(ana["fit"]["chi2_red"] < 3.0), ana["fit"]["chi2_red"]


def test_gamma_scales_as_q_squared(default_analysis):
    _, ana = default_analysis
    n, n_err = ana["diffusion"]["q_exponent"], ana["diffusion"]["q_exponent_err"]
    assert abs(n - 2.0) < 0.1 and abs(n - 2.0) < 4 * n_err + 1e-3, (n, n_err)
    # The fastest and slowest rings must differ by the q² ratio, not by chance.
    g = ana["fit"]["gamma"]
    q = ana["q_nm"]
    assert g[-1] / g[0] == pytest.approx((q[-1] / q[0]) ** 2, rel=0.15)


def test_intensity_and_no_inter_train_memory_for_fast_dynamics(default_run, default_analysis):
    _, scene, _, _, _ = default_run
    _, ana = default_analysis
    mu = scene.truth()["mean_photons_per_pixel"]
    assert np.allclose(ana["train_ring_mean"], mu, rtol=0.05)
    # Γ·100 ms ≫ 1 for every ring: trains are uncorrelated, g2_inter = 1 within errors.
    z = (ana["g2_inter"] - 1.0) / ana["g2_inter_err"]
    assert np.all(np.abs(z) < 5)


def test_inter_train_g2_recovers_slow_diffusion():
    d_true = 4e-16  # Γ(0.1 nm⁻¹) = 4 s⁻¹: decay over a few 100 ms train gaps
    params = {"diffusion_m2_per_s": d_true, "q_range_nm": [0.06, 0.16],
              "mean_photons_per_pixel": 0.3}
    ctx, scene, frames = _simulate(params, pulses=8, trains=40, seed=11)
    q = geo.q_map(ctx.positions, ENERGY_KEV)
    labels = xpcs.ring_labels(q, None, np.linspace(0.06, 0.16, 5))
    part = xpcs.XpcsPartial(labels, n_frames=8, max_train_lag=6)
    part.add_trains(10_000 + np.arange(40), frames)
    ana = xpcs.analyse(part, xpcs.ring_q(q, labels), PULSE_S, TRAIN_S, fit_inter_train=True)
    # Intra-train g2 is flat at 1 + β (no decay in 1.6 µs).
    # Checked against each lag's own error (40 trains: ~0.02), not a fixed band.
    pull = (ana["g2"][:, 1:] - 1.2) / ana["g2_err"][:, 1:]
    assert np.all(np.abs(pull) < 4), pull
    assert abs(np.mean(ana["g2"][:, 1:]) - 1.2) < 0.01
    d = ana["diffusion_inter"]["D_m2_per_s"]
    assert abs(d / d_true - 1) < 0.10, d


def test_negative_binomial_contrast():
    rng = np.random.default_rng(3)
    beta = 0.25
    counts = rng.poisson(rng.gamma(1 / beta, 1.0 * beta, size=400_000))
    hist = np.bincount(counts, minlength=40)[:40]
    b, err = xpcs.negative_binomial_contrast(hist)
    # Expected 1σ ≈ 0.002 at k̄ = 1; the error estimate must be of that order.
    assert abs(b / beta - 1) < 0.03 and 0.0005 < err < 0.005
    assert abs(b - beta) < 4 * err


# --- split invariance ---------------------------------------------------------------------
def test_split_invariance_and_h5_roundtrip(default_run, tmp_path):
    _, _, frames, q, labels = default_run
    frames = frames[:, :40]
    tids = 10_000 + np.arange(len(frames))
    tids[6:] += 1  # a missing train: lags are counted in train IDs
    whole = xpcs.XpcsPartial(labels, n_frames=40, max_train_lag=4)
    whole.add_trains(tids, frames)
    parts = []
    for sl in (slice(0, 3), slice(3, 4), slice(4, 8), slice(8, 10)):
        p = xpcs.XpcsPartial(labels, n_frames=40, max_train_lag=4)
        p.add_trains(tids[sl], frames[sl])
        with h5py.File(tmp_path / f"p{sl.start}.h5", "w") as f:
            p.to_h5(f.create_group("xpcs_partial"))
        with h5py.File(tmp_path / f"p{sl.start}.h5", "r") as f:
            parts.append(xpcs.XpcsPartial.from_h5(f["xpcs_partial"]))
    # Merge out of order: (3 + 1) + (0 + 2).
    a = parts[3].merge(parts[1])
    b = parts[0].merge(parts[2])
    merged = b.merge(a)
    rw, rm = whole.result(), merged.result()
    for key in ("g2", "two_time", "g2_inter", "beta_moments", "frame_mean", "hist",
                "train_ring_mean"):
        np.testing.assert_allclose(rm[key], rw[key], rtol=1e-12, atol=1e-14, err_msg=key)
    # Errors come from Σx² − (Σx)²/n, which loses ~4 digits to cancellation.
    for key in ("g2_err", "g2_inter_err", "two_time_sem"):
        np.testing.assert_allclose(rm[key], rw[key], rtol=1e-8, err_msg=key)
    np.testing.assert_array_equal(rm["train_ids"], tids)
    np.testing.assert_array_equal(rm["g2_inter_pairs"], rw["g2_inter_pairs"])
    # Train 10006 is missing: lag-1 pairs 5 + 3, lag-2 4 + 2 + 1 across the gap, ...
    assert rw["g2_inter_pairs"][0].tolist() == [8, 7, 6, 5]
    with pytest.raises(ValueError, match="share trains"):
        merged.merge(whole)


def test_write_h5_with_provenance(default_analysis, tmp_path):
    _, ana = default_analysis
    out = xpcs.write_xpcs_h5(tmp_path / "r0001" / "xpcs.h5", ana, {"config": {"run": 1}})
    with h5py.File(out) as f:
        assert f["xpcs/g2"].shape == ana["g2"].shape
        assert f["xpcs/two_time"].shape[1:] == (100, 100)
        assert np.isclose(f["xpcs/diffusion/D_m2_per_s"][()], ana["diffusion"]["D_m2_per_s"])
        assert json.loads(f.attrs["xfel_reduce_provenance"])["config"] == {"run": 1}
    assert not list(out.parent.glob(".*tmp*"))


# --- peers: scikit-beam -------------------------------------------------------------------
@pytest.fixture(scope="module")
def skb():
    return pytest.importorskip("skbeam.core.correlation")


def _peer_data(n_frames=160, nan_frame=None):
    rng = np.random.default_rng(42)
    # Correlated speckle-like frames so the comparison exercises non-trivial values.
    base = rng.gamma(2.0, 0.5, size=(1, 24, 40))
    img = rng.poisson(base * (1 + 0.3 * np.sin(np.arange(n_frames) / 7.0))[:, None, None])
    img = img.astype(np.float64)
    if nan_frame is not None:
        img[nan_frame, 5, 6] = np.nan
    labels = np.zeros((24, 40), dtype=np.int64)
    labels[1:8, 2:30] = 1
    labels[9:20, 5:38] = 4  # non-consecutive label values are renumbered by both
    labels[22, :3] = 2
    return img, labels


@pytest.mark.parametrize("num_levels,num_bufs,nan_frame", [
    (1, 16, None), (5, 8, None), (7, 12, 33), (9, 8, None),  # (9, 8): truncated lags
])
def test_multi_tau_matches_scikit_beam(skb, num_levels, num_bufs, nan_frame):
    img, labels = _peer_data(nan_frame=nan_frame)
    g_ref, lag_ref = skb.multi_tau_auto_corr(num_levels, num_bufs, labels, img)
    g, lag = xpcs.multi_tau_g2(img, labels, num_levels, num_bufs)
    np.testing.assert_array_equal(lag, lag_ref)
    assert g.shape == g_ref.shape
    assert np.max(np.abs(g - g_ref)) <= 1e-8


def test_two_time_matches_scikit_beam(skb):
    img, labels = _peer_data(n_frames=60)
    ref = skb.two_time_corr(labels, img, 60, 60, 1).g2
    c = xpcs.two_time(img, labels)
    assert c.shape == ref.shape
    assert np.max(np.abs(c - ref)) <= 1e-8
    # g2 from the two-time diagonal equals scikit-beam's one_time_from_two_time.
    np.testing.assert_allclose(xpcs.g2_from_two_time(c), skb.one_time_from_two_time(ref),
                               rtol=0, atol=1e-8)


def test_add_train_to_a_bin_partial_equals_a_partial_of_the_bin_alone():
    """A binned run's train goes to the run's sums and its bin's (computed once): the
    bin's partial is the one made from the bin's trains alone, and merging the bins'
    partials of two sequences equals the bin's partial of the whole run."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(1, 4), 40).reshape(1, 10, 12)
    trains = {t: rng.poisson(0.8, (5, 1, 10, 12)).astype(np.float32) for t in range(100, 110)}
    bin_of = {t: (t - 100) // 4 for t in trains}
    new = lambda: xpcs.XpcsPartial(labels, n_frames=5, max_train_lag=2)  # noqa: E731
    run, alone = new(), {b: new() for b in range(3)}
    seqs = [{b: new() for b in range(3)}, {b: new() for b in range(3)}]
    for t, f in trains.items():
        run.add_train(t, f, seqs[t >= 105][bin_of[t]])
        alone[bin_of[t]].add_train(t, f)
    reference = new()
    for t, f in trains.items():
        reference.add_train(t, f)
    np.testing.assert_allclose(run.result()["g2"], reference.result()["g2"], equal_nan=True)
    for b in range(3):
        got, want = seqs[0][b].merge(seqs[1][b]).result(), alone[b].result()
        for k in ("g2", "g2_inter", "beta_moments"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12, equal_nan=True)
