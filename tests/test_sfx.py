"""SFX: peakfinder8-class peak finding, hit finding, CXI/CrystFEL output.

Acceptance (issue 4), on a simulated SFX run (scene photons, 4 AGIPD modules,
16 trains × 32 frames, scene defaults incl. hit fraction 5 %):

* hit recall ≥ 0.98 and precision ≥ 0.98 against the scene truth;
* ≥ 95 % of the true spots with SNR ≥ 8 found within 1.5 px;
* CXI files read back with h5py match the schema CrystFEL uses;
* the ``.geom`` round-trips through extra-geom with identical pixel positions;
* ≥ 95 % of peaks agree with OM's peakfinder8 at the same parameters (peer test).
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from scipy.spatial import cKDTree

from xfel_reduce import geometry, sfx
from xfel_reduce.io import cxi
from xfel_reduce.io.provenance import provenance, read_provenance
from xfel_reduce.simulate.beam import BeamConfig, make_train_beam
from xfel_reduce.simulate.scene import SceneContext
from xfel_reduce.simulate.scenes.sfx import SfxScene

MODULES = [0, 1, 2, 3]
N_TRAINS = 16
FRAMES_PER_TRAIN = 32
KEEP_TRAINS = 4  # photons of the first trains are kept for the CXI and batching tests (~6 hits)
DISTANCE_M = 0.15
ENERGY_KEV = 9.3


@pytest.fixture(scope="module")
def geom():
    return geometry.agipd_geometry()


@pytest.fixture(scope="module")
def sfx_run(geom):
    """Simulate the run train by train (bounded memory) and find peaks."""
    ctx = SceneContext(
        positions=geometry.pixel_positions(geom, DISTANCE_M, MODULES), modules=MODULES,
        photon_energy_kev=ENERGY_KEV, pulses_per_train=FRAMES_PER_TRAIN, pulse_spacing_s=2.2e-7,
        train_spacing_s=0.1, seed=2026, params={},
    )
    scene = SfxScene(ctx)
    beam_cfg = BeamConfig(frames_per_train=FRAMES_PER_TRAIN)
    rng = np.random.default_rng(1)
    radius = sfx.radius_map_px(geom, MODULES)
    finder = sfx.PeakFinder(radius)
    parts, kept, xray, tids, hit_frames = [], [], [], [], []
    for t in range(N_TRAINS):
        beam, _, _ = make_train_beam(beam_cfg, t, 1000 + t, N_TRAINS, rng)
        photons = scene.photons(beam)
        parts.append(finder.find(photons))
        xray.append(beam.xray)
        tids.append(np.full(FRAMES_PER_TRAIN, 1000 + t, np.uint64))
        if t < KEEP_TRAINS:
            kept.append(photons)
        # Hit frames of the whole run for the peer comparison (blanks: first trains).
        hit_frames.append(photons[scene.frame_truth()["hit"][-FRAMES_PER_TRAIN:]])
    return {
        "peaks": sfx.PeakList.concatenate(parts), "truth": scene.frame_truth(),
        "photons": np.concatenate(kept), "radius": radius, "finder": finder,
        "hit_photons": np.concatenate(hit_frames),
        "xray": np.concatenate(xray), "train_ids": np.concatenate(tids),
    }


# ------------------------------------------------------------------ acceptance vs truth


def test_hit_recall_and_precision(sfx_run):
    peaks, truth = sfx_run["peaks"], sfx_run["truth"]
    true_hit = truth["hit"].astype(bool)
    assert true_hit.size == N_TRAINS * FRAMES_PER_TRAIN
    assert true_hit.sum() >= 15, "too few simulated hits for a meaningful recall"
    assert not (true_hit & ~sfx_run["xray"]).any(), "a frame without X-rays was made a hit"
    found = peaks.hit
    tp = np.sum(found & true_hit)
    recall, precision = tp / true_hit.sum(), tp / max(found.sum(), 1)
    assert recall >= 0.98, f"hit recall {recall:.3f} < 0.98"
    assert precision >= 0.98, f"hit precision {precision:.3f} < 0.98"


def test_true_spots_found_within_1p5_px(sfx_run):
    peaks, truth = sfx_run["peaks"], sfx_run["truth"]
    strong = truth["spot_snr"] >= 8
    assert strong.sum() >= 100, "too few strong spots for a meaningful fraction"
    assert strong.sum() < strong.size, "all spots strong: the SNR cut tests nothing"
    dist = np.full(strong.size, np.inf)
    for f in np.unique(truth["spot_frame"]):
        rows = np.flatnonzero(truth["spot_frame"] == f)
        p = peaks.frame_peaks(int(f))
        if p["fs"].size == 0:
            continue
        # Module index × 10⁴ keeps peaks of different modules far apart.
        tree = cKDTree(np.c_[p["module"] * 1e4 + p["ss"], p["fs"]])
        d, _ = tree.query(np.c_[truth["spot_module_index"][rows] * 1e4 + truth["spot_ss"][rows],
                                truth["spot_fs"][rows]])
        dist[rows] = d
    frac = np.mean(dist[strong] < 1.5)
    assert frac >= 0.95, f"only {frac:.3f} of {strong.sum()} spots with SNR ≥ 8 found within 1.5 px"


def test_blank_frames_have_few_peaks(sfx_run):
    """Noise alone (Poisson water ring) must not produce peaks: ≤ 2 per blank frame."""
    blank = ~sfx_run["truth"]["hit"].astype(bool)
    assert sfx_run["peaks"].n_peaks[blank].max() <= 2


def test_batch_split_invariance(sfx_run):
    """Peaks do not depend on how frames are batched (per-frame algorithm)."""
    ph = sfx_run["photons"][:6]
    finder = sfx_run["finder"]
    whole = finder.find(ph)
    single = sfx.PeakList.concatenate([finder.find(ph[i]) for i in range(len(ph))])
    for k in ("n_peaks", "fs", "ss", "module", "intensity", "npix"):
        np.testing.assert_array_equal(getattr(whole, k), getattr(single, k))


# ------------------------------------------------------------------ algorithm units


def _flat_frame(n_mod=1, level=2.0, sigma=0.3, seed=0):
    rng = np.random.default_rng(seed)
    frame = rng.normal(level, sigma, (n_mod, 512, 128)).astype(np.float32)
    yy = np.arange(n_mod * 512, dtype=np.float32)[:, None].reshape(n_mod, 512, 1)
    radius = np.broadcast_to(100.0 + yy / 4.0 + np.zeros((1, 1, 128), np.float32), frame.shape).copy()
    return frame, radius


def test_known_peak_position_and_intensity():
    frame, radius = _flat_frame()
    # A 2×2 peak with 3:1 weights along fs: raw-weighted centre of mass at fs = 40.75.
    frame[0, 100:102, 40] += 30.0
    frame[0, 100:102, 41] += 90.0
    params = sfx.PeakFinderParams(adc_threshold=0.0, min_snr=6.0, min_peaks=1)
    pl = sfx.find_peaks(frame[None], radius, params)
    assert pl.n_peaks.tolist() == [1]
    p = pl.frame_peaks(0)
    assert p["npix"][0] == 4
    raw = frame[0, 100:102, 40:42]
    assert p["fs"][0] == pytest.approx(np.sum(raw * [40, 41]) / raw.sum(), abs=1e-4)
    assert p["ss"][0] == pytest.approx(100.5, abs=0.02)
    # Integrated above the local background (≈ 2.0 ± 0.3 / √n).
    assert p["intensity"][0] == pytest.approx(240.0, abs=2.0)
    assert p["snr"][0] == pytest.approx(p["intensity"][0] / p["local_sigma"][0], rel=1e-5)
    assert 0.2 < p["local_sigma"][0] < 0.4
    assert pl.hit.tolist() == [True]


def test_mask_resolution_and_size_limits():
    frame, radius = _flat_frame()
    frame[0, 100:102, 40:42] += 50.0  # radius ≈ 125 px
    frame[0, 300:302, 60:62] += 50.0  # radius ≈ 175 px
    base = dict(adc_threshold=0.0, min_snr=6.0)
    assert sfx.find_peaks(frame, radius, sfx.PeakFinderParams(**base)).n_peaks[0] == 2
    bad = np.zeros(frame.shape, np.uint32)
    bad[0, 100, 41] = 1 << 3  # one bad pixel: the peak keeps 3 pixels
    pl = sfx.find_peaks(frame, radius, sfx.PeakFinderParams(**base), bad=bad)
    assert sorted(pl.npix.tolist()) == [3, 4]
    bad[0, 300:302, 60:62] = 1
    assert sfx.find_peaks(frame, radius, sfx.PeakFinderParams(**base), bad=bad).n_peaks[0] == 1
    assert sfx.find_peaks(frame, radius, sfx.PeakFinderParams(**base, max_res=150)).n_peaks[0] == 1
    assert sfx.find_peaks(frame, radius, sfx.PeakFinderParams(**base, min_res=150)).n_peaks[0] == 1
    assert sfx.find_peaks(frame, radius, sfx.PeakFinderParams(**base, min_pix_count=5)).n_peaks[0] == 0
    assert sfx.find_peaks(frame, radius, sfx.PeakFinderParams(**base, max_pix_count=3)).n_peaks[0] == 0
    assert sfx.find_peaks(frame, radius, sfx.PeakFinderParams(**base, max_num_peaks=1)).n_peaks[0] == 1
    # The ADC threshold overrides mean + SNR·σ.
    assert sfx.find_peaks(frame, radius, sfx.PeakFinderParams(adc_threshold=60.0)).n_peaks[0] == 0


def test_peaks_stay_inside_panels_and_nan_is_bad():
    frame, radius = _flat_frame()
    # A blob across the panel boundary at ss 63|64 splits into two peaks.
    frame[0, 62:66, 50:52] += 50.0
    frame[0, 200:202, 10:12] = np.nan  # missing data: ignored, not a crash
    frame[0, 300, 10] = np.inf
    pl = sfx.find_peaks(frame, radius, sfx.PeakFinderParams(adc_threshold=0.0, min_snr=6.0))
    assert pl.n_peaks[0] == 2
    np.testing.assert_allclose(np.sort(pl.ss), [62.5, 64.5], atol=0.1)
    assert np.all(np.isfinite(pl.intensity))


def test_bad_input_errors():
    frame, radius = _flat_frame()
    with pytest.raises(ValueError, match="unknown sfx peak-finder parameter"):
        sfx.PeakFinderParams.from_config({"min_snr": 5, "minsnr": 4})
    with pytest.raises(ValueError, match="min_pix_count"):
        sfx.PeakFinderParams(min_pix_count=5, max_pix_count=2)
    with pytest.raises(ValueError, match="same module selection"):
        sfx.PeakFinder(radius).find(np.zeros((1, 2, 512, 128), np.float32))
    with pytest.raises(ValueError, match="bad-pixel mask shape"):
        sfx.PeakFinder(radius).find(frame, bad=np.zeros((2, 512, 128)))


# ------------------------------------------------------------------ peer: OM peakfinder8


def test_agrees_with_om_peakfinder8(sfx_run):
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # OM 23.8 uses the alias removed in numpy 2
    om = pytest.importorskip(
        "om.algorithms._crystallography",
        reason="ondamonitor (OM) is not installed: the peakfinder8 peer comparison needs it "
               "(pip install ondamonitor; it is in the 'test' extra)")
    # All hit frames of the run and the (mostly blank) frames of the first train.
    ph = np.concatenate([sfx_run["hit_photons"], sfx_run["photons"][:FRAMES_PER_TRAIN]])
    finder = sfx_run["finder"]
    p = finder.params
    ours = finder.find(ph)
    h = len(MODULES) * 512
    r2 = sfx_run["radius"].reshape(h, 128).astype(np.float32)
    mask = finder.good.astype(np.int8)  # bad pixels and resolution limits, as OM builds it
    n_om = n_ours = om_matched = ours_matched = 0
    rel_i = []
    for i in range(ph.shape[0]):
        o = om.peakfinder_8(p.max_num_peaks, ph[i].reshape(h, 128).astype(np.float32), mask, r2,
                            0, None, None, 0, 128, 64, 1, h // 64, p.adc_threshold, p.min_snr,
                            p.min_pix_count, p.max_pix_count, p.local_bg_radius)
        om_xy = np.c_[o[0], o[1]]
        q = ours.frame_peaks(i)
        our_xy = np.c_[q["fs"], q["module"] * 512.0 + q["ss"]]
        n_om += len(om_xy)
        n_ours += len(our_xy)
        if len(om_xy) and len(our_xy):
            d, j = cKDTree(our_xy).query(om_xy)
            ok = d < 0.5
            om_matched += ok.sum()
            ours_matched += np.sum(cKDTree(om_xy).query(our_xy)[0] < 0.5)
            rel_i += list(np.abs(q["intensity"][j[ok]] / np.asarray(o[2])[ok] - 1))
    assert n_om >= 200, "too few peaks for a meaningful comparison"
    assert om_matched / n_om >= 0.95, f"only {om_matched}/{n_om} OM peaks matched"
    assert ours_matched / n_ours >= 0.95, f"only {ours_matched}/{n_ours} of our peaks matched by OM"
    # Matched peaks are integrated the same way (same local background).
    assert np.median(rel_i) < 1e-3


# ------------------------------------------------------------------ CXI, .lst, .geom


def test_cxi_schema_and_event_list(sfx_run, tmp_path):
    ph = sfx_run["photons"]
    n = ph.shape[0]
    pl = sfx_run["finder"].find(ph)
    hit = pl.hit
    assert hit.sum() >= 2
    hits = pl.select(hit)
    mask = np.zeros(ph.shape, np.uint32)
    mask[:, 1, 5, 7] = 4  # one flagged pixel in module 1
    tids = sfx_run["train_ids"][:n]
    pids = np.tile(np.arange(FRAMES_PER_TRAIN, dtype=np.uint64), KEEP_TRAINS)
    prov = provenance({"sfx": {"peakfinder": sfx_run["finder"].params.to_dict()}}, [])
    path = tmp_path / "r0042" / "hits-S00000.cxi"
    with cxi.CxiHitWriter(path, modules=MODULES, provenance=prov, max_peaks=512,
                          photon_energy_kev=ENERGY_KEV, distance_m=DISTANCE_M) as w:
        # Two appends: streaming must give the same file as one call.
        idx = np.flatnonzero(hit)
        half = len(idx) // 2
        for part in (idx[:half], idx[half:]):
            w.append(ph[part], mask[part], tids[part], pids[part], pids[part].astype(np.uint16),
                     pl.select(part))
    assert not list(path.parent.glob(".*tmp")), "temporary file left behind"

    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == 150
        data = f[cxi.DATA_PATH]
        assert data.shape == (hit.sum(), 16 * 512, 128) and data.dtype == np.float32
        assert f["entry_1/data_1/data"].shape == data.shape  # the CXI soft link
        m = f[cxi.MASK_PATH]
        assert m.dtype == np.uint32 and m.shape == data.shape
        np.testing.assert_array_equal(data[0, :4 * 512], ph[idx[0]].reshape(-1, 128))
        assert np.all(m[0, 4 * 512:] == cxi.MISSING_MODULE)  # modules 4–15 absent
        assert m[0, 512 + 5, 7] == 4 and np.count_nonzero(m[0, :4 * 512]) == 1
        np.testing.assert_array_equal(f["entry_1/trainId"][:], tids[idx])
        np.testing.assert_array_equal(f["entry_1/pulseId"][:], pids[idx])
        res = f["entry_1/result_1"]
        npk = res["nPeaks"][:]
        np.testing.assert_array_equal(npk, hits.n_peaks)
        for key in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity"):
            assert res[key].shape == (hit.sum(), 512)
        # Peak positions point at bright pixels of the stored slab.
        for k in range(len(npk)):
            x = res["peakXPosRaw"][k, :npk[k]]
            y = res["peakYPosRaw"][k, :npk[k]]
            fp = hits.frame_peaks(k)
            np.testing.assert_allclose(y, np.asarray(MODULES)[fp["module"]] * 512 + fp["ss"], atol=1e-3)
            np.testing.assert_allclose(res["peakTotalIntensity"][k, :npk[k]], fp["intensity"])
            assert np.all(res["peakXPosRaw"][k, npk[k]:] == 0)
            img = data[k]
            vals = img[np.rint(y).astype(int), np.rint(x).astype(int)]
            assert np.median(vals) > 3 * np.median(img[:4 * 512])
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(ENERGY_KEV * 1.602176634e-16)
        assert read_provenance(f)["config"]["sfx"]["peakfinder"]["min_snr"] == sfx_run["finder"].params.min_snr

    lst = tmp_path / "r0042" / "hits.lst"
    assert cxi.write_event_list(lst, [path]) == hit.sum()
    lines = lst.read_text().splitlines()
    assert lines[0] == f"{path.resolve()} //0" and lines[-1].endswith(f" //{hit.sum() - 1}")

    # Bad input is reported with the file name.
    with pytest.raises(ValueError, match="hits-bad.cxi"):
        with cxi.CxiHitWriter(tmp_path / "hits-bad.cxi", modules=MODULES, provenance=prov) as w:
            w.append(ph[:1, :2], None, tids[:1], pids[:1], pids[:1], pl.select([0]))
    assert not (tmp_path / "hits-bad.cxi").exists()


def test_empty_cxi_is_valid(tmp_path):
    path = tmp_path / "empty.cxi"
    with cxi.CxiHitWriter(path, modules=[3], provenance={"x": 1}):
        pass
    with h5py.File(path, "r") as f:
        assert f[cxi.DATA_PATH].shape == (0, 8192, 128)
        assert f["entry_1/result_1/nPeaks"].shape == (0,)
        assert json.loads(f.attrs[next(iter(f.attrs))])
    assert cxi.write_event_list(tmp_path / "e.lst", [path]) == 0


def test_geom_round_trip(geom, tmp_path):
    from extra_geom import AGIPD_1MGeometry

    path = cxi.write_crystfel_geom(geom, tmp_path / "agipd.geom", photon_energy_kev=ENERGY_KEV,
                                   distance_m=DISTANCE_M)
    text = path.read_text()
    assert f"data = {cxi.DATA_PATH} ;" in text and f"mask = {cxi.MASK_PATH} ;" in text
    assert "mask_bad = 0xffffffff" in text and "dim0 = %" in text
    assert "p15a7/min_ss = 8128" in text and "p15a7/max_ss = 8191" in text  # slab layout
    # CrystFEL reads the CXI peaks only where the geometry points (indexamajig --peaks=cxi)
    assert f"peak_list = {cxi.RESULT_PATH}" in text and "peak_list_type = cxi" in text
    with cxi.CxiHitWriter(tmp_path / "h.cxi", modules=list(range(16)), provenance={}):
        pass
    with h5py.File(tmp_path / "h.cxi", "r") as f:
        assert {"nPeaks", "peakXPosRaw", "peakYPosRaw", "peakTotalIntensity"} <= set(f[cxi.RESULT_PATH])
    back = AGIPD_1MGeometry.from_crystfel_geom(str(path))
    # Identical up to float round-off of the text format (≪ 1 nm on 200 µm pixels).
    np.testing.assert_allclose(back.get_pixel_positions(), geom.get_pixel_positions(), rtol=0, atol=1e-12)
    assert back.metadata["crystfel"]["clen"] == pytest.approx(DISTANCE_M)


def test_process_sequence_streams_hits(sfx_run, tmp_path):
    """The workflow step: chunks in, per-frame table out, hits streamed to CXI."""
    from types import SimpleNamespace

    ph = sfx_run["photons"]
    n = ph.shape[0]
    tids = sfx_run["train_ids"][:n]
    pids = np.tile(np.arange(FRAMES_PER_TRAIN, dtype=np.uint64), KEEP_TRAINS)
    mask = np.zeros(ph.shape, np.uint32)

    class Reader:
        modules = MODULES

        def iter_chunks(self, trains_per_chunk):
            step = trains_per_chunk * FRAMES_PER_TRAIN
            for lo in range(0, n, step):
                sl = slice(lo, lo + step)
                yield SimpleNamespace(train_ids=tids[sl], pulse_ids=pids[sl], cell_ids=pids[sl].astype(np.uint16),
                                      data=ph[sl], mask=mask[sl])

    path = tmp_path / "seq.cxi"
    with cxi.CxiHitWriter(path, modules=MODULES, provenance={"t": 1}) as w:
        table = sfx.process_sequence(Reader(), sfx_run["finder"], w, trains_per_chunk=1)
    expected = sfx_run["finder"].find(ph)
    np.testing.assert_array_equal(table["n_peaks"], expected.n_peaks)
    np.testing.assert_array_equal(table["trainId"], tids)
    assert cxi.cxi_frame_count(path) == expected.hit.sum() == table["hit"].sum()
    stats = sfx.hit_statistics(table["trainId"], table["pulseId"], table["n_peaks"], table["hit"])
    assert stats["n_hits"] == expected.hit.sum()
    assert stats["hits_per_train"].sum() == stats["hits_per_pulse"].sum() == stats["n_hits"]
    assert stats["peak_hist_counts"].sum() == n
