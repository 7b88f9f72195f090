"""The kept-frames set of SPI runs (xfel_reduce.kept), against CORR, extra-data, extra-redu.

* the kept folder opens with ``extra_data.RunDirectory`` (and its AGIPD1M component),
  passes ``extra-data-validate``, and its frames and masks equal the CORR frames;
* it holds every hit, no frame without X-rays and the seeded sample of misses (split
  invariant), with the annotation rows beside;
* extra-redu's ``SpiHitfinder.from_datacollection`` reads our hit-finder REDU file from
  the same folder with the same hit and data flags;
* hits planted below the hit finder's threshold (weak scatterers) are seen by the
  second score of the sampled misses: the missed-hit estimate rises from 0 to the
  planted number;
* photon rounding equals the facility's ``extra_redu.lossy.errb_round`` and leaves a
  SAXS radius unchanged within 0.1 %.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from xfel_reduce import annotate, kept, spi, steps
from xfel_reduce.config import modules_of
from xfel_reduce.io import sources
from xfel_reduce.io.frames import frame_key
from xfel_reduce.io.redu import read_frame_table

MISS_FRACTION = 0.3


def _reduce_and_keep(tmp: Path, sim_params: dict | None = None, reduction: dict | None = None) -> dict:
    from conftest import reduce_run, tiny_config

    cfg = tiny_config(tmp)
    cfg["annotation"] = {"hit_mode": "spi"}
    cfg["simulate"]["runs"][0]["trains"] = 16
    cfg["simulate"]["runs"][0]["params"].update(sim_params or {})
    cfg["reduction"] = {"kept_frames": ["spi"], "miss_fraction": MISS_FRACTION, **(reduction or {})}
    r = reduce_run(cfg, 10)
    out = r["results"] / "r0010" / "kept"
    files = []
    for s in range(len(r["partials"])):
        corr = [r["corr_dir"] / sources.corr_filename(10, m, s) for m in modules_of(cfg)]
        files += steps.kept_frames(cfg, 10, s, "spi", corr, r["aggregate"], out)["files"]
        files.append(steps.spi_redu(cfg, 10, s, corr[0], r["aggregate"], r["thresholds"],
                                    out / spi.redu_filename(10, s)))
    r["summary_kept"] = steps.kept_summary(cfg, 10, "spi", files, sorted(r["raw_dir"].glob("*.h5")),
                                           r["aggregate"], out / "kept_summary.json")
    r.update(kept_dir=out, kept_files=files, table=steps.load_run_table(r["aggregate"]))
    with h5py.File(r["proposal"] / "truth" / "r0010" / "truth.h5") as f:
        r["truth"] = {"trainId": f["frames/trainId"][()], "pulseId": f["frames/pulseId"][()],
                      "hit": f["scene/hit"][()].astype(bool)}
    return r


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    return _reduce_and_keep(tmp_path_factory.mktemp("kept"), reduction={"compression": "gzip"})


def _kept_rows(r) -> dict:
    return annotate.concat_tables_any([read_frame_table(p, sources.KEPT_SOURCE) for p in r["kept_files"]
                                       if "-KEPT-" in Path(p).name])


def test_kept_folder_opens_like_proc_data_and_equals_corr(kept_run):
    import extra_data
    from extra_data.components import AGIPD1M

    run = extra_data.RunDirectory(str(kept_run["kept_dir"]))
    corr = extra_data.RunDirectory(str(kept_run["corr_dir"]))
    rows = _kept_rows(kept_run)
    n_kept = 0
    for m in modules_of(kept_run["cfg"]):
        src = f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"
        k, c = run[src], corr[src]
        kk = frame_key(np.asarray(k["image.data"].train_id_coordinates()), k["image.pulseId"].ndarray().ravel())
        ck = frame_key(np.asarray(c["image.data"].train_id_coordinates()), c["image.pulseId"].ndarray().ravel())
        idx = np.searchsorted(ck, kk)
        assert np.array_equal(ck[idx], kk)
        np.testing.assert_array_equal(k["image.data"].ndarray(), c["image.data"].ndarray()[idx])
        np.testing.assert_array_equal(k["image.mask"].ndarray(), c["image.mask"].ndarray()[idx])
        np.testing.assert_array_equal(k["image.cellId"].ndarray().ravel(), c["image.cellId"].ndarray().ravel()[idx])
        # the annotation rows beside name the same frames
        assert np.array_equal(kk, frame_key(rows["trainId"], rows["pulseId"]))
        n_kept = kk.size
    # every train of the run is indexed (count 0 where nothing was kept)
    assert set(run.train_ids) == set(corr.train_ids)
    arr = AGIPD1M(run, modules=modules_of(kept_run["cfg"])).get_array("image.data")
    # frames per train vary, so extra-data aligns them on (train, pulse) and fills gaps
    assert arr.sizes["module"] == len(modules_of(kept_run["cfg"]))
    assert int(arr.notnull().any(["module", "slow_scan", "fast_scan"]).sum()) == n_kept
    with h5py.File(next(kept_run["kept_dir"].glob("CORR-*AGIPD00-S00000.h5"))) as f:
        assert f["INSTRUMENT/SPB_DET_AGIPD1M-1/CORR/0CH0:output/image/data"].compression == "gzip"
    cli = Path(sys.executable).with_name("extra-data-validate")
    out = subprocess.run([str(cli), str(kept_run["kept_dir"])], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stdout + out.stderr


def test_kept_set_holds_every_hit_and_the_sample(kept_run):
    t, rows = kept_run["table"], _kept_rows(kept_run)
    reason = kept.kept_reasons(t, MISS_FRACTION, 0)
    kept_keys = frame_key(rows["trainId"], rows["pulseId"])
    assert np.array_equal(kept_keys, frame_key(t["trainId"], t["pulseId"])[reason != 0])
    assert np.array_equal(rows["kept_reason"], reason[reason != 0])
    hit = t["hit"].astype(bool)
    assert hit.sum() >= 5 and (reason[hit] & kept.Reason.HIT).all()
    assert rows["xray"].astype(bool).all()  # frames without X-rays are not kept
    misses = t["xray"].astype(bool) & ~hit
    frac = ((reason & kept.Reason.SAMPLED) != 0)[misses].mean()
    assert 0.1 < frac < 0.5, frac
    # hits against the simulator's truth: recall and precision, not agreement over all frames
    cmp = annotate.compare_with_truth(t, kept_run["truth"])
    assert cmp["recall"] >= 0.98 and cmp["precision"] >= 0.98, cmp
    s = kept_run["summary_kept"]
    assert s["frames_kept"] == rows["trainId"].size and 0 < s["bytes_ratio"] < 1
    assert s["kept"]["hits"] == int(hit.sum())
    # the sample does not depend on how the run is split
    half = t["trainId"] < np.median(t["trainId"])
    part = kept.kept_reasons({k: v[half] for k, v in t.items()}, MISS_FRACTION, 0)
    assert np.array_equal(part, reason[half])


def test_extra_redu_reads_our_hit_finder_from_the_kept_folder(kept_run):
    import extra_data
    from extra_redu.spi import SpiHitfinder

    run = extra_data.RunDirectory(str(kept_run["kept_dir"]))
    hf = SpiHitfinder.from_datacollection(run, spi.HITFINDER_SOURCE.format(detector="SPB_DET_AGIPD1M-1"))
    t = kept_run["table"]
    reason = kept.kept_reasons(t, MISS_FRACTION, 0)
    np.testing.assert_array_equal(hf.hit_mask, t["hit"].astype(bool))
    np.testing.assert_array_equal(hf.data_mask, reason != 0)  # dataFlag marks exactly the kept frames


def test_missed_hit_estimate_rises_with_hits_below_threshold(kept_run, tmp_path):
    """Strong hits: nothing suspect among the sampled misses.  Weak hits (150–400 photons,
    below the lit-pixel threshold for some): the second score finds the missed ones."""
    est = kept_run["summary_kept"]["missed_hits"]
    assert est["sampled"] >= 5 and est["suspects"] == 0 and est["missed_hits"] == 0
    weak = _reduce_and_keep(tmp_path, sim_params={"hit_photons": [150, 400]}, reduction={"miss_fraction": 1.0})
    cmp = annotate.compare_with_truth(weak["table"], weak["truth"])
    assert cmp["missed"] >= 2, cmp  # the planted hits the finder threw away
    est_w = weak["summary_kept"]["missed_hits"]
    assert est_w["suspects"] == cmp["missed"], (est_w, cmp)
    assert est_w["missed_hits_upper"] >= cmp["missed"] and est_w["rate_lower"] > 0
    assert est_w["missed_fraction"] > est["missed_fraction"]
    assert "estimated missed hits <" in est_w["statement"]


@pytest.mark.parametrize("scores", [[], [3.0], [3.0, 4.0], [np.nan] * 5])
def test_missed_hit_estimate_with_too_few_samples_is_json(scores):
    import json

    est = kept.missed_hit_estimate(np.array(scores), n_misses=20, n_hits=3)
    json.dumps(est, allow_nan=False)  # summary.json refuses NaN
    assert est["suspects"] == 0 and est["statement"]


def test_clopper_pearson_equals_scipy_exact_interval():
    from scipy.stats import binomtest

    for k, n in ((0, 10), (3, 42), (10, 10), (17, 1000)):
        lo, hi = kept.clopper_pearson(k, n, 0.95)
        ci = binomtest(k, n).proportion_ci(confidence_level=0.90, method="exact")  # one-sided 95 % each
        assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_photon_rounding_equals_extra_redu_lossy():
    from extra_redu.lossy import errb_round

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 0.3, 10000), rng.poisson(3, 10000) + rng.normal(0, 0.1, 10000),
                        [0.5, 1.5, 2.5, -0.5, np.nan, 1e5 + 0.5]]).astype(np.float32)
    ours = kept.round_photons(x)
    theirs = errb_round(x, 23, 0)
    # errb_round 1.1.0 returns |x| < 2⁻⁸ (nearly) unrounded (its C shift runs past 32 bits
    # there); we write 0, which is what the rounding means
    tiny = np.abs(x) < 2.0 ** -8
    assert tiny.sum() > 0
    np.testing.assert_array_equal(ours[~tiny], theirs[~tiny])
    assert (np.abs(theirs[tiny]) < 2.0 ** -8).all()
    assert (ours[tiny] == 0).all()
    assert not np.signbit(ours[np.isfinite(ours) & (ours == 0)]).any()


def test_saxs_radius_unchanged_by_photon_rounding():
    """A SAXS run with detector noise (σ 0.15 photons), integrated as stored and rounded:
    radius within 0.1 % and I(q) within its errors."""
    from xfel_reduce import geometry as g
    from xfel_reduce.saxs import AzimuthalEngine, SaxsAccumulator, fit_sphere
    from xfel_reduce.simulate.scene import SceneContext, TrainBeam
    from xfel_reduce.simulate.scenes.saxs import SaxsScene

    geom = g.agipd_geometry()
    mods = [0, 1, 2, 3]
    eng = AzimuthalEngine.from_geometry(geom, 5.0, 9.3, 300, split="no", modules=mods, polarisation=0.99)
    ctx = SceneContext(g.pixel_positions(geom, 5.0, modules=mods), mods, 9.3, 16, 1e-6, 0.1, seed=3,
                       params={"radius_nm": 20.0, "radius_change": 0.0, "polarisation": 0.99})
    scene = SaxsScene(ctx)
    rng = np.random.default_rng(1)
    accs = {name: SaxsAccumulator(eng.radial, eng.frame_shape, poisson_k=eng.poisson_k) for name in ("raw", "rounded")}
    for t in range(2):
        beam = TrainBeam(train_index=t, train_id=1000 + t, xray=np.ones(16, bool), ppl=np.zeros(16, bool),
                         pulse_energy_uj=np.full(16, 1000.0))
        frames = (scene.photons(beam) + rng.normal(0, 0.15, (16,) + eng.frame_shape)).astype(np.float32)
        for name, data in (("raw", frames), ("rounded", kept.round_photons(frames))):
            i, s = eng.integrate(data)
            accs[name].add(i, s, beam.ppl, beam.pulse_energy_uj, data)
    fits = {name: fit_sphere(a.radial, a.mean("off")[0], a.error("off")) for name, a in accs.items()}
    assert fits["rounded"]["radius_nm"] == pytest.approx(fits["raw"]["radius_nm"], rel=1e-3)
    diff = accs["rounded"].mean("off")[0] - accs["raw"].mean("off")[0]
    err = accs["raw"].error("off")
    ok = np.isfinite(diff) & np.isfinite(err) & (err > 0)
    assert np.median(np.abs(diff[ok]) / err[ok]) < 0.5


def test_reduction_config_mistakes_are_named():
    with pytest.raises(ValueError, match="miss_fraction"):
        kept.ReductionConfig.from_dict({"miss_fraction": 2})
    with pytest.raises(ValueError, match="unknown reduction settings"):
        kept.ReductionConfig.from_dict({"miss_fractoin": 0.1})
    with pytest.raises(ValueError, match="cannot keep frames"):
        kept.ReductionConfig.from_dict({"kept_frames": ["saxs"]})
    with pytest.raises(ValueError, match="compression"):
        kept.ReductionConfig.from_dict({"compression": "zstd"})
    with pytest.raises(ValueError, match="roi_pixel_fraction"):
        kept.ReductionConfig.from_dict({"validation": {"roi_pixel_fraction": 0}})
