"""The one pass over a sequence (xfel_reduce.onepass): RAW read once, corrected in memory.

Everything it produces is checked against the two-step path it replaces — RAW → CORR
files (:func:`steps.correct_file`) → annotation and technique reductions reading them —
on the same simulated sequence: same frames, same photons and lit pixels, same SAXS
profiles, same kept frames, and with ``write_corr`` the same CORR files.  The reader
thread's errors reach the caller and leave no output; constants are loaded for the used
memory cells only; the correction histograms give the report's zero-photon peak.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from xfel_reduce import annotate, onepass, steps, techniques
from xfel_reduce.calibrate import agipd
from xfel_reduce.calibrate.check import CorrectionHistogram
from xfel_reduce.config import modules_of
from xfel_reduce.io import sources
from xfel_reduce.io.frames import SequenceFrames
from xfel_reduce.io.redu import read_partials
from xfel_reduce.io.trains import train_files


def _raw(r, seq=0):
    return [r["raw_dir"] / sources.raw_filename(10, m, seq) for m in modules_of(r["cfg"])]


def _corr(r, seq=0):
    return [r["corr_dir"] / sources.corr_filename(10, m, seq) for m in modules_of(r["cfg"])]


def _consts(r):
    return [r["constants"][m] for m in modules_of(r["cfg"])]


def _datasets(path, group="/") -> dict:
    """Every dataset under ``group`` (no METADATA, no provenance), by path."""
    out = {}
    with h5py.File(path) as f:
        f[group].visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                            and not n.startswith("METADATA") and "provenance" not in n else None)
    return out


def test_raw_reader_equals_corr_files(tiny_reduced):
    """RAW corrected in memory gives the CORR files' frames, masks and gain stages."""
    r = tiny_reduced
    raw = agipd.RawSequenceFrames(dict(enumerate(_raw(r))), dict(enumerate(_consts(r))), with_gain=True)
    corr = SequenceFrames(dict(enumerate(_corr(r))), with_gain=True)
    for a, b in zip(raw.iter_chunks(2, prefetch=True), corr.iter_chunks(2)):
        np.testing.assert_array_equal(a.train_ids, b.train_ids)
        np.testing.assert_array_equal(a.cell_ids, b.cell_ids)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.gain, b.gain)
    tid, pid, cid = raw.frame_ids()
    chunks = list(raw.iter_chunks(1))
    np.testing.assert_array_equal(tid, np.concatenate([c.train_ids for c in chunks]))
    np.testing.assert_array_equal(cid, np.concatenate([c.cell_ids for c in chunks]))


def test_constants_of_used_cells_only(tiny_reduced):
    """A corrector set up for some cells holds only their constants and corrects as the full set."""
    r = tiny_reduced
    path = _consts(r)[0]
    full = agipd.load_constants(path)
    part = agipd.ModuleCorrector(path, np.array([3, 1]))
    assert part.constants.offset.shape[1] == 2 and full.offset.shape[1] >= 4
    from xfel_reduce.calibrate.correct import correct
    from xfel_reduce.io.runs import iter_module_chunks

    _, _, chunk = next(iter_module_chunks(_raw(r)[0], 0, True, 2))
    sel = np.isin(chunk.cell_ids, [1, 3])
    d1, g1, m1 = part(chunk.data[sel], chunk.cell_ids[sel])
    d2, g2, m2 = correct(chunk.data[sel], chunk.cell_ids[sel], full)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(m1, m2)
    with pytest.raises(Exception, match="memory cell 0"):
        part(chunk.data[:1], np.array([0]))


def test_one_pass_equals_two_steps_and_writes_corr_on_request(tiny_reduced, tmp_path):
    """Annotation partial from RAW in one pass = the partial from the CORR files; with
    write_corr the CORR files equal steps.correct_file's."""
    r = tiny_reduced
    cfg = r["cfg"]
    out = tmp_path / "S00000.h5"
    corr_out = [tmp_path / "proc" / sources.corr_filename(10, m, 0) for m in modules_of(cfg)]
    stats = onepass.reduce_sequence(cfg, 10, 0, _raw(r), train_files(r["raw_dir"]), out, constants=_consts(r),
                                    corr_out=corr_out)
    assert stats["frames"] == 16 and stats["module_frames_per_s"] > 0
    t1, im1 = read_partials(out)
    t2, im2 = read_partials(r["partials"][0])
    for k in annotate.COLUMNS:
        np.testing.assert_array_equal(t1[k], t2[k], err_msg=k)
    for k in im2:
        np.testing.assert_array_equal(im1[k].count, im2[k].count)
        np.testing.assert_allclose(im1[k].mean, im2[k].mean, rtol=1e-6)
    for a, b in zip(corr_out, _corr(r)):
        la, lb = _datasets(a, "INSTRUMENT"), _datasets(b, "INSTRUMENT")
        assert la.keys() == lb.keys() and any(k.endswith("image/data") for k in la)
        for k in la:
            np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
        np.testing.assert_array_equal(_datasets(a, "INDEX")["trainId"], _datasets(b, "INDEX")["trainId"])
    # the correction check is in the partial, and a CORR-made one agrees
    with h5py.File(out) as f:
        h = CorrectionHistogram.from_h5(f["correction_check"])
    hc = CorrectionHistogram.from_corr_files(_corr(r))
    np.testing.assert_array_equal(h.counts, hc.counts)
    assert h.frames.tolist() == [16, 16]


def test_zero_photon_peak_from_histogram_equals_sampled_values(tiny_reduced):
    """The histogram's zero-photon peak equals a Gaussian fit to the raw values (the
    calibration report's former sample), to a bin."""
    r = tiny_reduced
    reader = SequenceFrames(dict(enumerate(_corr(r))), with_gain=True)
    h = CorrectionHistogram([0, 1])
    values = []
    for chunk in reader.iter_chunks(4):
        h.add(chunk.data, chunk.mask, chunk.gain, chunk.present)
        good = (chunk.mask[:, 0] == 0) & (chunk.gain[:, 0] == 0)
        values.append(chunk.data[:, 0][good])
    v = np.concatenate(values)
    pos, width = h.zero_peak(0)
    core = v[np.abs(v - np.median(v)) < 0.3]
    assert abs(pos - np.median(core)) < 0.02
    assert 0.5 * core.std() < width < 2.5 * core.std()
    merged = h.merge(h)
    assert merged.zero_peak(0) == pytest.approx(h.zero_peak(0))


def test_saxs_in_the_pass_equals_saxs_from_corr(tiny_reduced, tmp_path):
    """The SAXS plug-in fed by the pass writes what integrate_sequence writes from CORR files."""
    from xfel_reduce.saxs import integrate_sequence, read_annotation

    r = tiny_reduced
    cfg = dict(r["cfg"], saxs={"npt": 40})
    cfg["runs"] = [{"run": 10, "technique": "saxs", "distance_m": 5.0, "photon_energy_kev": 9.0}]
    consts = _consts(r)
    outs = {"frames": tmp_path / "pass.h5", "partial": tmp_path / "pass_partial.h5"}
    onepass.reduce_sequence(cfg, 10, 0, _raw(r), train_files(r["raw_dir"]), tmp_path / "annot.h5",
                            constants=consts, technique="saxs", outputs=outs, static_mask_inputs=consts)
    eng = techniques.saxs.engine(cfg, 10, consts)
    integrate_sequence(eng, SequenceFrames(dict(enumerate(_corr(r)))), r["annotation"][0],
                       tmp_path / "corr.h5", tmp_path / "corr_partial.h5", {"config": {}})
    with h5py.File(outs["frames"]) as a, h5py.File(tmp_path / "corr.h5") as b:
        key = "INSTRUMENT/SPB_DET_AGIPD1M-1/REDU/SAXS:output/saxs/intensity"
        assert a[key].shape[0] == int(read_annotation(r["annotation"][0])["xray"].sum())
        np.testing.assert_array_equal(a[key][()], b[key][()])


def test_reader_thread_error_reaches_caller_and_leaves_nothing(tiny_reduced, tmp_path, monkeypatch):
    """A read that fails mid-pass in the reader thread (here: the second chunk of module 1)
    is raised in the caller with its message, and no partial, technique output or CORR
    file is left behind."""
    r = tiny_reduced
    calls = {"n": 0}
    original = agipd.RawSequenceFrames._fill

    def failing(self, module, *args):
        calls["n"] += 1
        if module == 1 and calls["n"] > 2:
            raise OSError(f"{self.paths[module]}: truncated file (simulated)")
        return original(self, module, *args)

    monkeypatch.setattr(agipd.RawSequenceFrames, "_fill", failing)
    out = tmp_path / "S00000.h5"
    corr_out = [tmp_path / "proc" / f"c{m}.h5" for m in (0, 1)]
    with pytest.raises(OSError, match="truncated file"):
        onepass.reduce_sequence(r["cfg"], 10, 0, _raw(r), train_files(r["raw_dir"]), out,
                                constants=_consts(r), corr_out=corr_out)
    assert not out.exists()
    assert not list(tmp_path.rglob("*.h5")), list(tmp_path.rglob("*"))


def test_kept_frames_from_raw_equal_kept_from_corr(tmp_path):
    """The kept set's second read: only the kept frames are read from RAW and corrected,
    and they equal the kept frames copied from CORR files."""
    from conftest import reduce_run, tiny_config

    cfg = tiny_config(tmp_path)
    cfg["annotation"] = {"hit_mode": "spi"}
    cfg["reduction"] = {"kept_frames": ["spi"], "miss_fraction": 0.3}
    r = reduce_run(cfg, 10)
    mods = modules_of(cfg)
    a = steps.kept_frames(cfg, 10, 0, "spi", _corr(r), r["aggregate"], tmp_path / "from_corr")
    b = steps.kept_frames(cfg, 10, 0, "spi", _raw(r), r["aggregate"], tmp_path / "from_raw",
                          constants=[r["constants"][m] for m in mods])
    assert a["frames"] == b["frames"] and sum(a["frames"].values()) > 0
    for fa, fb in zip(sorted(a["files"]), sorted(b["files"])):
        la, lb = _datasets(fa), _datasets(fb)
        assert la.keys() == lb.keys()
        for k in la:
            if not k.startswith("METADATA") and "timestamp" not in k:
                np.testing.assert_array_equal(la[k], lb[k], err_msg=f"{Path(fa).name}:{k}")


def test_static_mask_from_constants(tiny_reduced):
    """The run's static mask comes from the constants (any gain, any cell) and is the
    same for every chunk; every pixel bad in a frame's mask at high gain is in it."""
    r = tiny_reduced
    mask = techniques.static_mask(r["cfg"], _consts(r))
    assert mask.shape == (2, 512, 128)
    chunk = next(SequenceFrames(dict(enumerate(_corr(r))), with_gain=True).iter_chunks(1))
    from xfel_reduce.calibrate.badpixels import BadPixels

    dynamic = np.uint32(BadPixels.VALUE_OUT_OF_RANGE | BadPixels.VALUE_IS_NAN | BadPixels.WRONG_GAIN_VALUE)
    hg_bad = ((chunk.mask & ~dynamic) != 0) & (chunk.gain == 0)
    assert not (hg_bad & (mask[None] == 0)).any()
    assert 0 < (mask != 0).mean() < 0.2


def test_moments_in_batches_equal_numpy():
    """The blockwise moments kernel (count, sum, deviations, pairwise merge) over masked
    batches equals numpy's nanmean / nanvar of everything at once."""
    from xfel_reduce.aggregate import Moments

    rng = np.random.default_rng(3)
    data = rng.poisson(0.3, (40, 3, 64, 48)).astype(np.float32) + 1000  # an offset stresses cancellation
    mask = (rng.random(data.shape) < 0.05).astype(np.uint32)
    data[rng.random(data.shape) < 0.01] = np.nan
    m = Moments(data.shape[1:])
    for lo, hi in ((0, 7), (7, 8), (8, 40)):
        m.add_masked(data[lo:hi], mask[lo:hi])
    ref = np.where(mask == 0, data, np.nan).astype(np.float64)
    np.testing.assert_array_equal(m.count, np.isfinite(ref).sum(axis=0))
    np.testing.assert_allclose(m.mean, np.nanmean(ref, axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.var, np.nanvar(ref, axis=0, ddof=1), rtol=1e-9)


def test_read_rows_as_slices_equals_fancy_indexing(tmp_path):
    """kept.read_rows (contiguous slices instead of h5py's point selection) returns
    ds[rows] for dense and for scattered rows."""
    from xfel_reduce.kept import read_rows

    data = np.arange(200 * 6, dtype=np.uint16).reshape(200, 2, 3)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = data
    with h5py.File(tmp_path / "d.h5") as f:
        for rows in (np.array([3, 4, 5, 9]), np.array([0, 1, 2, 50, 51, 120, 199]), np.array([7]),
                     np.zeros(0, np.int64)):
            np.testing.assert_array_equal(read_rows(f["x"], rows), data[rows])


def test_static_mask_map_of_the_dark_job_equals_all_cells(tiny_reduced, tmp_path):
    """The dark job's ``badpixels_any`` (read by every SAXS/XPCS job instead of all cells'
    maps) is the OR over gain stages and cells, which older constants files compute."""
    import shutil

    path = _consts(tiny_reduced)[0]
    old = tmp_path / path.name
    shutil.copy(path, old)
    with h5py.File(old, "r+") as f:
        del f["badpixels_any"]
        full = np.bitwise_or.reduce(f["badpixels"][()].reshape(-1, 512, 128), axis=0)
    assert agipd.read_badpixels_any(path)[1].tolist() == full.tolist()
    assert agipd.read_badpixels_any(old)[1].tolist() == full.tolist()


def test_technique_none_is_the_base_plugin():
    """``technique: none`` (schema) and no technique are the base: no products of their own."""
    for name in (None, "none"):
        t = techniques.get(name)
        assert type(t) is techniques.Technique and not t.sequence_files and t.notebook is None
    with pytest.raises(ValueError, match="known are"):
        techniques.get("saxx")


def test_annotation_pixel_pass_equals_numpy(monkeypatch):
    """The annotation's one read of the pixels (photons, lit pixels and the class images
    in one kernel) equals the numpy reference per frame and numpy's nanmean / nanvar
    per class, with NaN pixels, masked pixels, a missing module and frames of every
    class (laser on, laser off, dark, no beam data) split over two chunks."""
    from xfel_reduce.io.frames import FrameChunk

    rng = np.random.default_rng(7)
    n, n_mod = 14, 2
    data = (rng.poisson(0.4, (n, n_mod, 512, 128)) * 1.1).astype(np.float32)
    data[rng.random(data.shape) < 0.002] = np.nan
    mask = (rng.random(data.shape) < 0.05).astype(np.uint32)
    present = np.ones((n, n_mod), bool)
    present[3, 1] = False
    data[3, 1], mask[3, 1] = np.nan, 1 << 31
    tid = np.repeat(np.arange(1000, 1000 + n // 2, dtype=np.uint64), 2)
    pid = np.tile(np.arange(2, dtype=np.uint64), n // 2)
    cols = {"xray": rng.random(n) < 0.6, "ppl": rng.random(n) < 0.5, "beam_data": rng.random(n) < 0.9}
    cols["ppl"] &= cols["xray"]

    def beam_columns(beam_table, train_ids, cell_ids, cfg):
        sel = np.flatnonzero(np.isin(tid, train_ids))  # the chunks hold whole trains
        return {"xray": cols["xray"][sel], "ppl": cols["ppl"][sel], "beam_data": cols["beam_data"][sel],
                "n_pulses": np.zeros(sel.size, np.uint16), "pulse_energy": np.zeros(sel.size, np.float32),
                "beam_source": np.zeros(sel.size, np.uint8)}

    monkeypatch.setattr(annotate, "frame_beam_columns", beam_columns)
    cfg = annotate.AnnotationConfig()
    red = annotate.AnnotationReducer(n_mod, cfg)
    for lo, hi in ((0, 6), (6, n)):
        red.add(FrameChunk(train_ids=tid[lo:hi], pulse_ids=pid[lo:hi], cell_ids=pid[lo:hi].astype(np.uint16),
                           data=data[lo:hi], mask=mask[lo:hi], present=present[lo:hi],
                           nan_pixels=np.zeros(hi - lo, np.int32), chunk_train_ids=np.unique(tid[lo:hi])))
    table, images = red.result()
    photons, lit = annotate.frame_stats_reference_numpy(data, mask, present, cfg)
    np.testing.assert_allclose(table["photons"], photons, rtol=1e-6)
    np.testing.assert_array_equal(table["lit_pixels"], lit)
    x, ppl = cols["xray"], cols["ppl"]
    for name, sel in (("xray", x), ("laser_on", x & ppl), ("laser_off", x & ~ppl), ("dark", ~x & cols["beam_data"])):
        ref = np.where(mask == 0, data, np.nan).astype(np.float64)[sel]
        m = images[name]
        np.testing.assert_array_equal(m.count, np.isfinite(ref).sum(axis=0), err_msg=name)
        with warnings.catch_warnings():  # all-NaN pixels of a class
            warnings.simplefilter("ignore", RuntimeWarning)
            good = m.count > 1
            np.testing.assert_allclose(m.mean[good], np.nanmean(ref, axis=0)[good], rtol=1e-10, err_msg=name)
            np.testing.assert_allclose(m.var[good], np.nanvar(ref, axis=0, ddof=1)[good], rtol=1e-8, atol=1e-12,
                                       err_msg=name)
