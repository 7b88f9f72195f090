"""Simulate → calibrate → annotate → aggregate on the tiny beamtime, against truth."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from xfel_reduce import annotate, steps
from xfel_reduce.aggregate import Moments
from xfel_reduce.io import sources, trains
from xfel_reduce.io.frames import SequenceFrames
from xfel_reduce.io.provenance import read_provenance
from xfel_reduce.io.runs import InputDataError


def _truth(r):
    with h5py.File(r["proposal"] / "truth" / "r0010" / "truth.h5") as f:
        return {k: f["frames"][k][()] for k in f["frames"]}, {k: f["scene"][k][()] for k in f["scene"]}


def _run_table(r):
    with h5py.File(r["aggregate"]) as f:
        return {k: f["annotation"][k][()] for k in f["annotation"]}


def test_pulse_flags_and_energies_equal_truth(tiny_reduced):
    frames, _ = _truth(tiny_reduced)
    t = _run_table(tiny_reduced)
    for key in ("trainId", "pulseId", "cellId", "xray", "ppl"):
        np.testing.assert_array_equal(t[key], frames[key], err_msg=key)
    np.testing.assert_array_equal(t["pulse_energy"], frames["pulse_energy"])
    assert t["ppl"].any() and (~t["ppl"] & t["xray"]).any()


def test_hit_flags_recall_and_precision_against_truth(tiny_reduced):
    # judged by recall and precision: agreement over all frames would reward a finder
    # that flags nothing at a low hit rate
    frames, scene = _truth(tiny_reduced)
    t = _run_table(tiny_reduced)
    cmp = annotate.compare_with_truth(t, {"trainId": frames["trainId"], "pulseId": frames["pulseId"],
                                          "hit": scene["hit"]})
    assert cmp["true_hits"] >= 2  # the test would be vacuous without hits
    assert cmp["recall"] >= 0.98 and cmp["precision"] >= 0.98, cmp


def test_outputs_pass_extra_data_validate(tiny_reduced):
    for d in (tiny_reduced["corr_dir"], tiny_reduced["annotation"][0].parent):
        # The CLI sits beside the interpreter running the tests; CI need not have it on PATH.
        cli = Path(sys.executable).with_name("extra-data-validate")
        res = subprocess.run([str(cli), str(d)], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


def test_corr_opens_like_facility_proc_data(tiny_reduced):
    import extra_data
    from extra_data.components import AGIPD1M

    run = extra_data.RunDirectory(str(tiny_reduced["corr_dir"]))
    det = AGIPD1M(run, modules=[0, 1], raw=False)
    arr = det.get_array("image.data")
    assert arr.dims[:3] == ("module", "train", "pulse")
    assert arr.dtype == np.float32 and arr.shape[-2:] == (512, 128)
    mask = det.get_array("image.mask")
    assert mask.dtype == np.uint32


def test_annotation_redu_opens_with_extra_data(tiny_reduced):
    import extra_data

    f = extra_data.H5File(str(tiny_reduced["annotation"][0]))
    photons = f[sources.ANNOTATION_SOURCE, "data.photons"].ndarray()
    assert photons.shape[0] == f[sources.ANNOTATION_SOURCE, "data.pulseId"].ndarray().shape[0]
    assert set(annotate.COLUMNS) - {"trainId"} <= {k.split(".", 1)[1] for k in f[sources.ANNOTATION_SOURCE].keys()}


def test_every_output_carries_provenance(tiny_reduced):
    r = tiny_reduced
    files = [*r["constants"].values(), *sorted(r["corr_dir"].glob("*.h5")), *r["annotation"],
             *r["partials"], r["aggregate"], r["thresholds"]]
    for path in files:
        with h5py.File(path) as f:
            prov = read_provenance(f)
        assert prov["packages"]["numpy"] and prov["config"]["calibration"], path
        assert prov["inputs"], path
    summary = json.loads(r["summary"].read_text())
    assert summary["provenance"]["config"]["modules"] == 2


def test_summary_reports_reduction(tiny_reduced):
    s = json.loads(tiny_reduced["summary"].read_text())
    assert s["frames_in"] == 32 and s["xray_frames"] == 24
    raw_bytes = sum(p.stat().st_size for p in tiny_reduced["raw_dir"].glob("*.h5"))
    assert s["bytes_in"] == raw_bytes
    assert s["reduction_ratio"]["annotation"] == pytest.approx(raw_bytes / s["bytes_out"]["annotation"])
    assert s["reduction_ratio"]["annotation"] > 100
    assert 0 < s["hit_rate"] < 1


def test_frame_stats_kernel_equals_numpy(tiny_reduced):
    reader = SequenceFrames({m: tiny_reduced["corr_dir"] / sources.corr_filename(10, m, 0) for m in (0, 1)})
    chunk = next(reader.iter_chunks(2))
    cfg = annotate.AnnotationConfig()
    p1, l1 = annotate.frame_stats(chunk.data, chunk.mask, chunk.present, cfg)
    p2, l2 = annotate.frame_stats_reference_numpy(chunk.data, chunk.mask, chunk.present, cfg)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_allclose(p1, p2, rtol=1e-5)


@pytest.mark.parametrize("splits", [[1, 2, 3], [2], [1]])
def test_aggregation_is_split_invariant(tiny_reduced, splits):
    """The same trains processed as one chunk or as several give the same run result."""
    r = tiny_reduced
    corr = {m: r["corr_dir"] / sources.corr_filename(10, m, 0) for m in (0, 1)}
    cfg = annotate.AnnotationConfig()
    tids = SequenceFrames(corr).train_ids
    beam = steps.sequence_beam(r["cfg"], trains.train_files(r["raw_dir"]), tids)
    whole_table, whole = annotate.annotate_sequence(SequenceFrames(corr), cfg, beam, trains_per_chunk=4)
    bounds = [0, *splits, len(tids)]
    tables, merged = [], None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        t, im = annotate.annotate_sequence(SequenceFrames(corr, tids[lo:hi]), cfg, beam, trains_per_chunk=1)
        tables.append(t)
        merged = im if merged is None else {k: merged[k].merge(im[k]) for k in im}
    table = annotate.concat_tables(tables)
    for k in whole_table:
        np.testing.assert_array_equal(table[k], whole_table[k])
    for k in whole:
        np.testing.assert_array_equal(merged[k].count, whole[k].count)
        np.testing.assert_allclose(merged[k].mean, whole[k].mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(merged[k].var, whole[k].var, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_moments_merge_matches_direct():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, (100, 7)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    direct = Moments((7,)).add(x)
    parts = Moments.merged([Moments((7,)).add(x[:13]), Moments((7,)).add(x[13:60]), Moments((7,)).add(x[60:])])
    np.testing.assert_allclose(parts.mean, np.nanmean(x, axis=0), rtol=1e-6)
    np.testing.assert_allclose(parts.var, np.nanvar(x, axis=0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(direct.var, parts.var, rtol=1e-6)


def test_moments_add_masked_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(5, 2, (40, 3, 5000)).astype(np.float32)  # > one pixel block
    x[rng.random(x.shape) < 0.05] = np.nan
    mask = (rng.random(x.shape) < 0.1).astype(np.uint32) * 4
    rows = rng.random(40) < 0.6
    acc = Moments((3, 5000)).add_masked(x[:25], mask[:25], rows[:25]).add_masked(x[25:], mask[25:], rows[25:])
    ref = np.where(mask == 0, x, np.nan)[rows].astype(np.float64)
    np.testing.assert_array_equal(acc.count, np.isfinite(ref).sum(axis=0))
    np.testing.assert_allclose(acc.mean, np.nanmean(ref, axis=0), rtol=1e-9)
    np.testing.assert_allclose(acc.var, np.nanvar(ref, axis=0, ddof=1), rtol=1e-9)


# -- bad input ---------------------------------------------------------------------------
def test_truncated_file_gives_clear_error(tiny_reduced, tmp_path):
    src = tiny_reduced["corr_dir"] / sources.corr_filename(10, 0, 0)
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    with pytest.raises(InputDataError, match=r"truncated or corrupt.*exclude"):
        SequenceFrames({0: bad, 1: tiny_reduced["corr_dir"] / sources.corr_filename(10, 1, 0)})


def test_missing_module_gives_clear_error(tiny_reduced, tmp_path):
    with pytest.raises(InputDataError, match=r"missing input file .*AGIPD01.*modules"):
        SequenceFrames({0: tiny_reduced["corr_dir"] / sources.corr_filename(10, 0, 0),
                        1: tmp_path / sources.corr_filename(10, 1, 0)})


def test_train_with_missing_frames_is_flagged_not_dropped(tmp_path):
    """A module that lost frames of a train: every frame keeps its row, flagged."""
    from conftest import reduce_run, tiny_config

    cfg = tiny_config(tmp_path)
    cfg["simulate"]["runs"][0]["faults"] = {"drop_frames": {"module": 1, "train_index": 2, "keep": 1}}
    r = reduce_run(cfg, 10)
    t = _run_table(r)
    assert t["trainId"].size == 32  # nothing dropped
    incomplete = t["modules_present"] < 2
    assert incomplete.sum() == 3
    assert np.all(t["trainId"][incomplete] == t["trainId"][incomplete][0])
    s = json.loads(r["summary"].read_text())
    assert s["frames_incomplete"] == 3
    log_free_check = (r["corr_dir"] / sources.corr_filename(10, 1, 0))
    assert log_free_check.exists()


def test_nonexistent_run_is_reported(tmp_path):
    from xfel_reduce.io.runs import require_run_dir

    with pytest.raises(InputDataError, match=r"r0099 does not exist.*run number"):
        require_run_dir(tmp_path / "raw" / "r0099")


@pytest.mark.parametrize("fault", ["train_id_zero", "out_of_order"])
def test_daq_faults_are_flagged_not_fatal(tmp_path, fault):
    """A module file with a trainId-0 row or a non-increasing train ID (faults the
    facility's files show): the run reduces, every good frame keeps its row, and the
    affected module's frames of that train are flagged as missing, not mixed in."""
    from conftest import reduce_run, tiny_config

    cfg = tiny_config(tmp_path)
    cfg["simulate"]["runs"][0]["faults"] = {fault: {"module": 1, "train_index": 2}}
    r = reduce_run(cfg, 10)
    t = _run_table(r)
    tids = np.unique(t["trainId"])
    good = tids[tids < tids.min() + 8]
    assert 0 not in tids and good.size == 8 and np.all(np.diff(good) == 1)
    incomplete = t["modules_present"] < 2
    s = json.loads(r["summary"].read_text())
    assert s["frames_incomplete"] == int(incomplete.sum())
    if fault == "train_id_zero":
        assert t["trainId"].size == 32 and s["trains"] == 8
        assert incomplete.sum() == 4 and np.unique(t["trainId"][incomplete]).size == 1
    else:
        # the frames under the bogus train ID keep their rows, flagged: one module
        # only, and no beam data (the train is not in the run's train-level data)
        bogus = ~np.isin(t["trainId"], good)
        assert bogus.sum() == 4 and not t["beam_data"][bogus].any() and not t["xray"][bogus].any()
        assert incomplete[bogus].all()


def test_spi_hit_mode_in_the_annotation_steps(tmp_path):
    """`annotation.hit_mode: spi` runs the pulse-energy normalised finder (xfel_reduce.spi)
    in the run-wide hit step: hits against the truth, its score and flags in the table."""
    from conftest import reduce_run, tiny_config

    cfg = tiny_config(tmp_path)
    cfg["annotation"] = {"hit_mode": "spi"}
    cfg["simulate"]["runs"][0]["trains"] = 16
    r = reduce_run(cfg, 10)
    t = _run_table(r)
    frames, scene = _truth(r)
    truth = np.asarray(scene["hit"], bool)
    hit = t["hit"].astype(bool)
    recall = (hit & truth).sum() / max(truth.sum(), 1)
    precision = (hit & truth).sum() / max(hit.sum(), 1)
    assert truth.sum() >= 5 and recall >= 0.98 and precision >= 0.98, (recall, precision)
    assert np.isfinite(t["hit_score"][t["xray"].astype(bool)]).all()
    assert (t["hit_flags"][~t["xray"].astype(bool)] != 0).all()  # frames without X-rays: flagged NO_XRAY
