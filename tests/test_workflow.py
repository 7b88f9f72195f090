"""The Snakemake workflow end to end on tiny beamtimes (real jobs, real files)."""
from __future__ import annotations

import json

import h5py
import numpy as np
from conftest import run_workflow

# tech_run (the workflow on tiny_techniques.yaml) is a session fixture in conftest.py,
# shared with test_damnit.py.


def test_spi_workflow_end_to_end(tmp_path):
    cfg, res = run_workflow("tiny.yaml", tmp_path)
    assert res.returncode == 0, res.stderr[-5000:]
    s = json.loads((tmp_path / "results" / "r0010" / "summary.json").read_text())
    assert s["frames_in"] == 32 and s["run_type"] == "spi"
    assert s["timings"], "benchmark files feed the timings"
    truth = h5py.File(tmp_path / "p900001" / "truth" / "r0010" / "truth.h5")
    with h5py.File(tmp_path / "results" / "r0010" / "aggregate" / "run.h5") as f:
        hit = f["annotation/hit"][()]
    assert (hit == truth["scene/hit"][()]).mean() >= 0.99
    # A second invocation has nothing to do: outputs are complete and up to date.
    _, again = run_workflow("tiny.yaml", tmp_path, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_sfx_run_products(tech_run):
    tmp, cfg = tech_run
    base = tmp / "results" / "r0011"
    s = json.loads((base / "summary.json").read_text())
    stats = json.loads((base / "sfx" / "hit_statistics.json").read_text())
    truth = h5py.File(tmp / "p900001" / "truth" / "r0011" / "truth.h5")
    with h5py.File(base / "aggregate" / "run.h5") as f:
        hit = f["annotation/hit"][()]
        n_peaks = f["annotation/n_peaks"][()]
    true_hit = truth["scene/hit"][()]
    assert true_hit.sum() >= 3
    assert np.array_equal(hit, true_hit)
    assert (n_peaks >= 0).all()
    lst = (base / "sfx" / "hits.lst").read_text().splitlines()
    assert len(lst) == true_hit.sum() == stats["events_in_lst"]
    assert s["frames_out"]["hits"] == true_hit.sum()
    # CXI files hold full 16-module slabs (what CrystFEL's geometry expects): data
    # float32 + mask uint32 per pixel of each hit, nothing else of size.
    slab_bytes = 16 * 512 * 128 * 8
    assert true_hit.sum() * slab_bytes <= s["bytes_out"]["cxi_hits"] < 1.2 * true_hit.sum() * slab_bytes + 2e6


def test_xpcs_run_products(tech_run):
    tmp, cfg = tech_run
    with h5py.File(tmp / "results" / "r0012" / "xpcs" / "xpcs.h5") as f:
        names = []
        f.visit(names.append)
        assert any("g2" in n for n in names)
        assert "xfel_reduce_provenance" in f.attrs


def test_saxs_run_products(tech_run):
    tmp, cfg = tech_run
    base = tmp / "results" / "r0013"
    s = json.loads((base / "summary.json").read_text())
    assert s["reduction_ratio"]["nxcansas"] > 1
    with h5py.File(base / "saxs" / "saxs_nxcansas.h5") as f:
        entries = [k for k in f if f[k].attrs.get("NX_class") in ("NXentry", b"NXentry")]
        assert len(entries) == 4  # all, laser on, laser off, on - off


def test_spectroscopy_run_products(tech_run):
    tmp, cfg = tech_run
    base = tmp / "results" / "r0014"
    s = json.loads((base / "summary.json").read_text())
    assert s["run_type"] == "spectroscopy" and s["xray_frames"] > 0
    assert s["reduction_ratio"]["spectra"] > 10
    summary = json.loads((base / "spectroscopy" / "spectra_summary.json").read_text())
    assert summary["selected_frames"] > 0


def test_every_run_has_reports_and_the_index_lists_them(tech_run):
    tmp, cfg = tech_run
    index = (tmp / "results" / "index.html").read_text()
    for run, stages in ((11, ["calibration", "annotation", "sfx"]), (12, ["calibration", "annotation", "xpcs"]),
                        (13, ["calibration", "annotation", "saxs", "binning"]), (14, ["spectroscopy", "binning"])):
        for stage in stages:
            html = tmp / "results" / f"r{run:04d}" / "reports" / f"{stage}.html"
            assert html.is_file(), html
            assert f"r{run:04d}/reports/{stage}.html" in index
            verdict = json.loads(html.with_suffix(".verdict.json").read_text())
            assert verdict["overall"] != "error", (html, verdict)
    # the SAXS report judges the fits the gather stored (it once read them from a closed file)
    saxs = json.loads((tmp / "results" / "r0013" / "reports" / "saxs.verdict.json").read_text())
    assert set(saxs["fits"]) == {"all", "on", "off"}, saxs


def test_binned_runs_in_the_workflow(tech_run):
    """Runs with ``bins`` get binning.h5, their technique's products per bin (the
    JUNGFRAU run's table from its partials) and both enter the run's products."""
    tmp, cfg = tech_run
    for run, binned, n_bins in ((13, "saxs/saxs_binned.h5", 2), (14, "spectroscopy/spectra_binned.h5", 2),
                                (12, "xpcs/xpcs_binned.h5", 3)):
        base = tmp / "results" / f"r{run:04d}"
        with h5py.File(base / "binning" / "binning.h5") as f:
            assert tuple(f["binning"].attrs["shape"]) == (n_bins,)
            xray = f["binning/xray_frames"][()]
            counts = {k: f["binning/counts"][k][()] for k in f["binning/counts"]}
            images = {s: {k: f["images"][s][k][()] for k in ("mean", "count")} for s in f.get("images", {})}
        if run == 14:  # the spectrometer's run: no detector images
            assert not images
        else:
            # the one pass's images per bin: every X-ray frame of a bin, and together the
            # run's laser-on / laser-off images (every train of these runs is in a bin)
            with h5py.File(base / "aggregate" / "run.h5") as f:
                agg = {s: {k: f[f"images/laser_{s}"][k][()] for k in ("mean", "count")} for s in ("on", "off")}
            for s in ("on", "off"):
                img = images[s]
                assert img["mean"].shape == (n_bins, 2, 512, 128)
                assert (img["count"].max(axis=(1, 2, 3)) == counts[f"xray_{s}"]).all()
                np.testing.assert_array_equal(img["count"].sum(axis=0), agg[s]["count"])
                with np.errstate(invalid="ignore", divide="ignore"):
                    pooled = (img["mean"] * img["count"]).sum(axis=0) / img["count"].sum(axis=0)
                np.testing.assert_allclose(np.nan_to_num(pooled), np.nan_to_num(agg[s]["mean"]), rtol=1e-5, atol=1e-6)
        with h5py.File(base / binned) as f:
            if run == 12:  # g2 per ring and bin, each bin from its own trains across both sequences
                g = f["binned/g2_ring00"]
                assert g["data"].shape[0] == n_bins and np.isfinite(g["data"][()][:, :2]).all()
                assert f["binned/counts/trains"][()].tolist() == [3, 3, 2]
                continue
            g = f["binned/on_minus_off"]
            assert g["data"].shape[0] == n_bins and g.attrs["NX_class"] == "NXdata"
            assert (f["binned/counts/on"][()] + f["binned/counts/off"][()] <= xray).all()
        s = json.loads((base / "summary.json").read_text())
        assert {"binning", "binned"} <= set(s["bytes_out"]), s["bytes_out"]
