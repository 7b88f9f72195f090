"""Acceptance tests of the SAXS/WAXS reduction (issue 3).

Photons come straight from the SAXS scene on four AGIPD modules of the real
geometry (no raw→CORR pipeline here), so every number is checked against the
scene's ground truth; the batched engine is checked against pyFAI on the same
frames.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from xfel_reduce import geometry as g
from xfel_reduce.saxs import AzimuthalEngine, SaxsAccumulator, fit_sphere, sphere_form_factor
from xfel_reduce.simulate.scene import SceneContext, TrainBeam
from xfel_reduce.simulate.scenes.saxs import SaxsScene

MODULES = [0, 1, 2, 3]
DISTANCE_M = 5.0
ENERGY_KEV = 9.3
NPT = 400
POL = 0.99


@pytest.fixture(scope="module")
def geom():
    return g.agipd_geometry()


_ENGINES: dict[str, AzimuthalEngine] = {}


def _engine(geom, split: str) -> AzimuthalEngine:
    # building pyFAI's CSR matrix takes seconds: one engine per split for the module
    if split not in _ENGINES:
        _ENGINES[split] = AzimuthalEngine.from_geometry(
            geom, DISTANCE_M, ENERGY_KEV, NPT, split=split, modules=MODULES, polarisation=POL
        )
    return _ENGINES[split]


@pytest.fixture(scope="module", params=["no", "bbox"])
def engine(request, geom):
    return _engine(geom, request.param)


@pytest.fixture(scope="module")
def engine_no(geom):
    return _engine(geom, "no")


@pytest.fixture(scope="module")
def scene(geom):
    pos = g.pixel_positions(geom, DISTANCE_M, modules=MODULES)
    params = {"radius_nm": 20.0, "radius_change": 0.03, "polarisation": POL}
    ctx = SceneContext(pos, MODULES, ENERGY_KEV, 16, 1e-6, 0.1, seed=7, params=params)
    return SaxsScene(ctx)


@pytest.fixture(scope="module")
def simulated(scene, engine_no):
    """Two trains × 16 pulses, every second pulse pumped, XGM energy jitter."""
    rng = np.random.default_rng(3)
    acc = SaxsAccumulator(engine_no.radial, engine_no.frame_shape, xgm_normalised=True, poisson_k=engine_no.poisson_k)
    for t in range(2):
        n = 16
        beam = TrainBeam(
            train_index=t, train_id=1000 + t, xray=np.ones(n, bool), ppl=(np.arange(n) % 2 == 1),
            pulse_energy_uj=rng.normal(1000.0, 100.0, n).clip(500, None),
        )
        frames = scene.photons(beam)
        intensity, sigma = engine_no.integrate(frames)
        # XGM-normalised profiles: per-µJ intensities remove the pulse-energy jitter
        e = beam.pulse_energy_uj[:, None]
        acc.add(intensity / e, sigma / e, beam.ppl, beam.pulse_energy_uj, frames)
    return acc


def _pyfai(engine, frame, **kw):
    return engine.integrator.integrate1d(
        np.asarray(frame, np.float32).reshape(engine.image_shape), engine.npt, unit="q_nm^-1",
        method=(engine.split, "csr", "cython"), error_model="poisson", polarization_factor=POL,
        correctSolidAngle=True, **kw,
    )


# --------------------------------------------------------------------------- engine vs pyFAI
def test_engine_matches_pyfai_every_bin(engine):
    rng = np.random.default_rng(0)
    frames = rng.poisson(3.0, (3,) + engine.frame_shape).astype(np.float32)
    frames[1] *= 0.25  # many zeros: exercises the max(1, x) Poisson variance floor
    intensity, sigma = engine.integrate(frames, empty=0.0)
    for i in range(3):
        ref = _pyfai(engine, frames[i])
        np.testing.assert_allclose(engine.radial, ref.radial, rtol=1e-12)
        # ≤ 1e-5 relative on every bin, intensity and σ (empty bins: both 0)
        np.testing.assert_allclose(intensity[i], ref.intensity, rtol=1e-5, atol=0)
        np.testing.assert_allclose(sigma[i], ref.sigma, rtol=1e-5, atol=0)


def test_engine_per_frame_mask_and_nan_match_pyfai_dummy(engine):
    """A per-frame (CORR) mask and NaN pixels act like pyFAI's dynamic dummy mask."""
    rng = np.random.default_rng(1)
    frames = rng.poisson(5.0, (2,) + engine.frame_shape).astype(np.float32)
    mask = (rng.random(frames.shape) < 0.05).astype(np.uint32) * 4
    frames[0, 1, 100:110, :] = np.nan
    intensity, sigma = engine.integrate(frames, mask, empty=0.0)
    for i in range(2):
        dummy = np.where((mask[i] != 0) | ~np.isfinite(frames[i]), -1.0, frames[i])
        ref = _pyfai(engine, dummy, dummy=-1.0, delta_dummy=0.5)
        np.testing.assert_allclose(intensity[i], ref.intensity, rtol=1e-5, atol=0)
        np.testing.assert_allclose(sigma[i], ref.sigma, rtol=1e-5, atol=0)
    # frames picked in place by index: the same numbers as the frames copied out
    picked, picked_sigma = engine.integrate(frames, mask, empty=0.0, index=[1])
    np.testing.assert_array_equal(picked, intensity[1:])
    np.testing.assert_array_equal(picked_sigma, sigma[1:])
    with pytest.raises(IndexError):
        engine.integrate(frames, mask, index=[2])


def test_static_mask_matches_pyfai_mask(geom):
    rng = np.random.default_rng(2)
    static = rng.random((len(MODULES), 512, 128)) < 0.1
    eng = AzimuthalEngine.from_geometry(geom, DISTANCE_M, ENERGY_KEV, 200, split="bbox", modules=MODULES,
                                        mask=static, q_range=(0.1, 1.2), polarisation=POL)
    frame = rng.poisson(4.0, eng.frame_shape).astype(np.float32)
    intensity, sigma = eng.integrate(frame, empty=0.0)
    ref = eng.integrator.integrate1d(frame.reshape(eng.image_shape), 200, unit="q_nm^-1", mask=static.reshape(eng.image_shape),
                                     radial_range=(0.1, 1.2), method=("bbox", "csr", "cython"), error_model="poisson",
                                     polarization_factor=POL)
    np.testing.assert_allclose(eng.radial, ref.radial, rtol=1e-12)
    np.testing.assert_allclose(intensity[0], ref.intensity, rtol=1e-5, atol=0)
    np.testing.assert_allclose(sigma[0], ref.sigma, rtol=1e-5, atol=0)


def test_flat_image_integrates_to_constant(engine):
    # photons = c·ω (solid angle × polarisation): after correction every bin is c
    c = 7.5
    frame = (c * engine.pixel_normalisation).astype(np.float32)
    intensity, _ = engine.integrate(frame)
    good = np.isfinite(intensity[0])
    assert good.sum() > 0.9 * engine.npt
    np.testing.assert_allclose(intensity[0][good], c, rtol=1e-5)


def test_flux_is_conserved(engine):
    rng = np.random.default_rng(4)
    frame = rng.poisson(2.0, engine.frame_shape).astype(np.float32)
    mask = (rng.random(frame.shape) < 0.03).astype(np.uint8)
    sums = engine.integrate_sums(frame[None], mask[None])
    # without a radial range every pixel with weight lands in some bin (bbox
    # fractions sum to 1), so Σ over bins of the signal is the photon total
    expected = float(np.where(mask == 0, frame, 0).astype(np.float64).sum())
    assert sums[0, 0].sum() == pytest.approx(expected, rel=1e-9)
    # and I·norm returns the same flux
    intensity, _ = engine.sums_to_profile(sums)
    assert np.nansum(intensity[0] * sums[0, 2]) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- physics vs truth
def test_radius_from_run_average_within_1_percent(simulated, scene):
    truth = scene.truth()
    fit = fit_sphere(simulated.radial, simulated.mean("off")[0], simulated.error("off"))
    assert fit["radius_nm"] == pytest.approx(truth["radius_nm"], rel=0.01)
    # the model is right, so the residuals are noise
    assert 0.5 < fit["chi2_red"] < 2.0
    # absolute scale: scale = profile_scale · φΔρ²V and background = profile_scale · b₀
    assert fit["scale"] == pytest.approx(truth["profile_scale_per_uj"] * truth["forward_cross_section_cm1"], rel=0.05)
    assert fit["background"] == pytest.approx(truth["profile_scale_per_uj"] * truth["background_cm1"], rel=0.2)
    fit_on = fit_sphere(simulated.radial, simulated.mean("on")[0], simulated.error("on"))
    assert fit_on["radius_nm"] == pytest.approx(truth["radius_on_nm"], rel=0.01)
    assert 0.5 < fit_on["chi2_red"] < 2.0


def test_on_off_difference_sign_and_size(simulated, scene):
    truth = scene.truth()
    diff, err = simulated.difference()
    q = simulated.radial
    k = truth["profile_scale_per_uj"] * truth["forward_cross_section_cm1"]
    r0, r1 = truth["radius_nm"], truth["radius_on_nm"]
    expected = k * ((r1 / r0) ** 6 * sphere_form_factor(q, r1) - sphere_form_factor(q, r0))
    ok = np.isfinite(diff) & np.isfinite(err) & (err > 0)
    # sign: a larger radius raises the forward scattering (∝ V²)
    low_q = ok & (q < 0.08)
    assert low_q.sum() >= 3
    assert np.all(expected[low_q] > 0)
    assert np.all(diff[low_q] > 0)
    # size: the measured difference is the expected one, scaled by 1 ± 0.1
    amp = np.sum(diff[ok] * expected[ok] / err[ok] ** 2) / np.sum(expected[ok] ** 2 / err[ok] ** 2)
    assert amp == pytest.approx(1.0, abs=0.1)
    chi2 = np.mean(((diff[ok] - expected[ok]) / err[ok]) ** 2)
    assert chi2 < 2.0


def test_partials_merge_independent_of_split(engine_no, scene, tmp_path):
    beam = TrainBeam(0, 1, np.ones(6, bool), np.array([0, 1, 0, 1, 0, 1], bool), np.full(6, 800.0))
    frames = scene.photons(beam)
    intensity, sigma = engine_no.integrate(frames)
    whole = SaxsAccumulator(engine_no.radial, engine_no.frame_shape, poisson_k=engine_no.poisson_k)
    whole.add(intensity, sigma, beam.ppl, beam.pulse_energy_uj, frames)
    parts = []
    for sl in (slice(0, 2), slice(2, 6)):
        p = SaxsAccumulator(engine_no.radial, engine_no.frame_shape, poisson_k=engine_no.poisson_k)
        p.add(intensity[sl], sigma[sl], beam.ppl[sl], beam.pulse_energy_uj[sl], frames[sl])
        with h5py.File(tmp_path / f"p{sl.start}.h5", "w") as f:
            p.to_h5(f.create_group("x"))
        with h5py.File(tmp_path / f"p{sl.start}.h5", "r") as f:
            parts.append(SaxsAccumulator.from_h5(f["x"]))
    merged = parts[0].merge(parts[1])
    for grp in ("all", "on", "off"):
        for a, b in zip(merged.mean(grp), whole.mean(grp)):
            np.testing.assert_allclose(a, b, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(merged.mean_image(), whole.mean_image(), rtol=1e-12, equal_nan=True)


def test_bad_frame_shape_is_a_clear_error(engine_no):
    with pytest.raises(ValueError, match="frame shape"):
        engine_no.integrate(np.zeros((2, 3, 512, 128), np.float32))


def test_nxcansas_file_structure(simulated, tmp_path):
    from xfel_reduce.io.nxcansas import write_nxcansas

    path = tmp_path / "saxs.h5"
    write_nxcansas(path, simulated, title="test run", provenance={"config": {"a": 1}}, fits=None)
    with h5py.File(path, "r") as f:
        entries = [k for k in f if f[k].attrs.get("canSAS_class") == "SASentry"]
        assert {"sasentry_all", "sasentry_on", "sasentry_off", "sasentry_on_minus_off"} <= set(entries)
        e = f["sasentry_all"]
        assert e.attrs["NX_class"] == "NXentry" and e.attrs["version"] == "1.1"
        assert e["definition"][()].decode() == "NXcanSAS"
        d = e[e.attrs["default"]]
        assert d.attrs["canSAS_class"] == "SASdata" and d.attrs["signal"] == "I"
        assert d.attrs["I_axes"] == "Q" and int(d.attrs["Q_indices"]) == 0 and d["Q"].attrs["units"] == "1/nm"
        assert d["I"].attrs["uncertainties"] == "Idev" and d["I"].shape == d["Q"].shape == d["Idev"].shape
        assert np.all(np.isfinite(d["I"][()]))
        assert e["sasprocess"].attrs["canSAS_class"] == "SASprocess"
        assert json.loads(e["sasprocess/provenance"][()])["config"] == {"a": 1}


def test_nxcansas_loads_with_sasdata(simulated, tmp_path):
    sasdata_loader = pytest.importorskip("sasdata.dataloader.loader")
    from xfel_reduce.io.nxcansas import write_nxcansas

    path = tmp_path / "saxs_run.h5"
    write_nxcansas(path, simulated, title="test run", provenance={})
    loaded = sasdata_loader.Loader().load(str(path))
    assert len(loaded) == 4
    mean, _, _ = simulated.mean("all")
    by_title = {d.title: d for d in loaded}
    d_all = by_title["test run [all]"]
    ok = np.isfinite(mean)
    # sasdata honours the "1/nm" units attribute and converts Q to its 1/Å
    np.testing.assert_allclose(np.asarray(d_all.x), simulated.radial[ok] / 10.0, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(d_all.y), mean[ok], rtol=1e-12)


def test_chunk_driver_from_corr_files(geom, scene, tmp_path):
    """CORR + annotation files → per-frame REDU file, partial, gather, NXcanSAS."""
    from xfel_reduce.io.euxfel import write_euxfel_file
    from xfel_reduce.io.nxcansas import read_nxcansas, write_nxcansas
    from xfel_reduce.io.frames import SequenceFrames
    from xfel_reduce.io.redu import write_frame_table
    from xfel_reduce.io.sources import ANNOTATION_SOURCE
    from xfel_reduce.saxs import gather_partials, integrate_chunk, read_annotation, write_frames_redu, write_partial

    mods = MODULES
    eng = _engine(geom, "bbox")
    n_tr, n_p = 2, 4
    tids = np.arange(5000, 5000 + n_tr, dtype=np.uint64)
    xray = np.tile([True, True, True, False], n_tr)  # last cell of each train is dark
    ppl = np.tile([False, True, False, True], n_tr)
    energy = np.where(xray, 900.0, 0.0)
    beam = TrainBeam(0, 5000, xray, ppl, energy)
    photons = scene.photons(beam)
    mask = np.zeros(photons.shape, np.uint32)
    mask[:, 0, :10] = 1  # a bad region in module 0
    counts = np.full(n_tr, n_p)
    frame_tid = np.repeat(tids, n_p)
    pulse = np.tile(np.arange(n_p, dtype=np.uint64), n_tr)
    files = []
    for i, m in enumerate(mods):
        path = tmp_path / f"CORR-R0001-AGIPD{m:02d}-S00000.h5"
        write_euxfel_file(path, tids, instrument={f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output": (counts, {
            "image.data": photons[:, i], "image.mask": mask[:, i], "image.trainId": frame_tid,
            "image.pulseId": pulse, "image.cellId": pulse.astype(np.uint16)})}, provenance={})
        files.append(path)
    ann_path = tmp_path / "REDU-R0001-ANNOT-S00000.h5"
    write_frame_table(ann_path, ANNOTATION_SOURCE, {"trainId": frame_tid, "pulseId": pulse, "xray": xray,
                                                    "ppl": ppl, "pulse_energy": energy}, {})

    ann = read_annotation(ann_path)
    reader = SequenceFrames.from_files(files)
    acc, per_frame = integrate_chunk(eng, reader, ann, trains_per_chunk=1)
    assert per_frame["intensity"].shape == (xray.sum(), NPT)
    # same numbers as integrating the in-memory frames directly
    direct, _ = eng.integrate(photons[xray], mask[xray])
    np.testing.assert_allclose(per_frame["intensity"], direct, rtol=1e-6)
    assert acc.frames == {"all": 6, "on": 2, "off": 4}

    redu = tmp_path / "REDU-R0001-SAXS-S00000.h5"
    write_frames_redu(redu, per_frame, eng.radial, {"config": {}})
    import extra_data

    run = extra_data.H5File(str(redu))
    src = run["SPB_DET_AGIPD1M-1/REDU/SAXS:output"]
    assert src["saxs.intensity"].shape == (6, NPT)
    part = tmp_path / "part.h5"
    write_partial(part, acc, eng.describe(), {"config": {}})
    total = gather_partials([part, part])
    assert total.frames["all"] == 12
    out = write_nxcansas(tmp_path / "saxs.h5", total, provenance={"config": {}}, engine_info=eng.describe())
    prof = read_nxcansas(out, "all")
    m_all = acc.mean("all")[0]
    np.testing.assert_allclose(prof["I"], m_all[np.isfinite(m_all)], rtol=1e-12)

    # the streaming chunk job and the gather job give the same numbers
    from xfel_reduce.saxs import gather_run, integrate_sequence

    stats = integrate_sequence(eng, reader, ann_path, tmp_path / "frames.h5", tmp_path / "part2.h5", {"config": {}},
                               trains_per_chunk=1)
    assert stats == {"frames": 8, "xray_frames": 6}
    src2 = extra_data.H5File(str(tmp_path / "frames.h5"))["SPB_DET_AGIPD1M-1/REDU/SAXS:output"]
    np.testing.assert_array_equal(src2["saxs.intensity"].ndarray(), per_frame["intensity"])
    assert list(src2["saxs.intensity"].data_counts(labelled=False)) == [3, 3]
    summary = gather_run([tmp_path / "part2.h5"], tmp_path / "saxs2.h5", {"config": {}})
    assert summary["frames"] == {"all": 6, "on": 2, "off": 4}
    np.testing.assert_allclose(read_nxcansas(tmp_path / "saxs2.h5", "all")["I"], m_all[np.isfinite(m_all)], rtol=1e-12)

    # an annotation that misses frames is a clear error naming the file
    short = {k: v[:4] for k, v in ann.items()}
    with pytest.raises(ValueError, match="not in the annotation"):
        integrate_chunk(eng, reader, short)
