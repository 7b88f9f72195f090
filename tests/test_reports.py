"""Validation reports: papermill notebooks → self-contained HTML, verdicts, run index.

The notebooks are fed tiny synthetic pipeline outputs that follow the data
contracts (dark constants, CORR files, annotation REDU files, summary.json) and
whose truth is known, so the verdict numbers are compared with the truth.  The
end-to-end test of the whole workflow should feed them real pipeline outputs.

Wall time: ~60 s on an idle 2-core machine (seven kernel starts), mostly the
Snakemake run of two runs × two stages.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import nbformat
import numpy as np
import pytest

from xfel_reduce.report import (ReportExecutionError, external_references, render_report,
                                verdict_path_for)
from xfel_reduce.report_index import build_index, collect_runs, hit_finding_ran, kept_frames
from xfel_reduce.verdict import Check, check_max, check_range, overall_status, verdict_summary

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "reports"
RULES = REPO / "workflow" / "rules" / "report.smk"
# External fetches a page could make; SVG namespace identifiers are not fetches.
URL_RE = re.compile(r"https?://(?!www\.w3\.org/)")
IMG_RE = re.compile(r'<img[^>]+src="data:image/png;base64,[A-Za-z0-9+/=]{200,}')

# ---------------------------------------------------------------------------
# Synthetic pipeline outputs following the data contracts of the notebooks
# ---------------------------------------------------------------------------
from xfel_reduce.io.euxfel import write_euxfel_file
from xfel_reduce.io.provenance import attach_provenance, provenance
from xfel_reduce.config import INSTRUMENTS
from xfel_reduce.io.sources import ANNOTATION_SOURCE, corr_filename

CORR_SOURCE = INSTRUMENTS["SPB"].agipd + "/CORR/{module}CH0:output"

NOISE_ADU = np.array([10.0, 6.0, 4.0])
ADU_PER_PHOTON_HG = 60.0


def make_dark_file(path: Path, n_mod: int = 2, n_cells: int = 8, bad_fraction: float = 0.005,
                   bad_module_fraction: dict[int, float] | None = None, seed: int = 0) -> dict:
    """Write dark constants ``(3, n_cells, n_mod, 512, 128)``; return the true bad fractions.

    ``bad_module_fraction`` overrides the bad-pixel fraction of selected modules.
    Bad pixels are per pixel (all cells, all gains), flagged with bit 1 (noise).
    """
    rng = np.random.default_rng(seed)
    shape = (3, n_cells, n_mod, 512, 128)
    offset = np.empty(shape, np.float32)
    noise = np.empty(shape, np.float32)
    for g, mean in enumerate((5000.0, 5600.0, 5300.0)):
        offset[g] = rng.normal(mean, 150.0, (n_mod, 512, 128))[None] + rng.normal(0, 30, shape[1:])
        noise[g] = NOISE_ADU[g] * (1 + 0.08 * rng.standard_normal((n_mod, 512, 128)))[None]
    bad = np.zeros(shape, np.uint32)
    truth = {}
    for m in range(n_mod):
        frac = (bad_module_fraction or {}).get(m, bad_fraction)
        pix = rng.random((512, 128)) < frac
        bad[:, :, m, pix] = 1 << 1
        noise[:, :, m, pix] *= 8
        truth[m] = float(pix.mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["offset"] = offset
        f["noise"] = noise
        f["badpixels"] = bad
        f.attrs["modules"] = np.arange(n_mod)
        attach_provenance(f, provenance({"test": "synthetic dark"}, []))
    return truth


def make_corr_files(directory: Path, run: int, n_mod: int = 2, n_trains: int = 6, n_cells: int = 8,
                    residual_offset: float = 0.0, sigma: float = 0.17, rate: float = 0.05,
                    seed: int = 1) -> list[Path]:
    """Write one CORR sequence file per module with sparse photons on a known residual offset."""
    rng = np.random.default_rng(seed)
    train_ids = 10_000 + np.arange(n_trains)
    counts = np.full(n_trains, n_cells)
    n = n_trains * n_cells
    paths = []
    for m in range(n_mod):
        photons = rng.poisson(rate, (n, 512, 128)).astype(np.float32)
        data = photons + rng.normal(residual_offset, sigma, photons.shape).astype(np.float32)
        gain = np.zeros(data.shape, np.uint8)
        strong = rng.random(data.shape) < 1e-3  # a few medium-gain pixels with many photons
        gain[strong] = 1
        data[strong] = rng.uniform(80, 300, strong.sum())
        mask = np.zeros(data.shape, np.uint32)
        mask[:, :2] = 1 << 1
        cell = np.tile(np.arange(n_cells, dtype=np.uint16), n_trains)
        src = CORR_SOURCE.format(module=m)
        p = directory / corr_filename(run, m, 0)
        write_euxfel_file(p, train_ids, instrument={src: (counts, {
            "image.data": data, "image.mask": mask, "image.gain": gain, "image.cellId": cell,
            "image.pulseId": cell.astype(np.uint64), "image.trainId": np.repeat(train_ids, n_cells)})},
            provenance=provenance({"test": "synthetic corr"}, []), run=run)
        paths.append(p)
    return paths


def make_annotation_file(path: Path, run: int, n_trains: int = 40, n_pulses: int = 16,
                         hit_rate: float = 0.2, seed: int = 2, threshold: float = 50.0,
                         dark_hits: bool = False) -> dict:
    """Write an annotation REDU file; return the true numbers (hit rate among X-ray frames...).

    Every 4th pulse slot has no X-rays (dark reference frames), every 2nd pulse has
    the pump laser.  Hits have many lit pixels, misses few; ``dark_hits`` puts hits
    on X-ray-free frames too (a broken annotation the verdict must catch).
    """
    rng = np.random.default_rng(seed)
    train_ids = 20_000 + np.arange(n_trains)
    n = n_trains * n_pulses
    pulse = np.tile(np.arange(n_pulses, dtype=np.uint64), n_trains)
    xray = (pulse % 4) != 3
    ppl = (pulse % 2) == 0
    energy = np.where(xray, rng.normal(1.5, 0.2, n), 0.0).astype(np.float32)  # mJ
    photons = np.where(xray, energy * 4000 + rng.normal(0, 100, n), rng.normal(0, 5, n)).astype(np.float32)
    hit = xray & (rng.random(n) < hit_rate)
    if dark_hits:
        hit |= ~xray & (rng.random(n) < 0.5)
    lit = np.where(hit, rng.normal(400, 80, n), rng.gamma(2.0, 5.0, n)).clip(0).astype(np.uint32)
    hit = lit > threshold  # the flag is what the threshold says
    path.parent.mkdir(parents=True, exist_ok=True)
    write_euxfel_file(path, train_ids, instrument={ANNOTATION_SOURCE: (np.full(n_trains, n_pulses), {
        "data.trainId": np.repeat(train_ids, n_pulses).astype(np.uint64), "data.pulseId": pulse,
        "data.cellId": pulse.astype(np.uint16), "data.xray": xray, "data.ppl": ppl,
        "data.pulse_energy": energy, "data.photons": photons, "data.lit_pixels": lit,
        "data.n_peaks": np.where(hit, rng.poisson(30, n), rng.poisson(0.3, n)).astype(np.uint32),
        "data.hit": hit, "data.hit_threshold": np.full(n, threshold, np.float32)})},
        provenance=provenance({"test": "synthetic annotation"}, []), run=run)
    return {"frames": n, "hit_rate": float(hit[xray].mean()), "hits": int(hit.sum()),
            "dark_hits": int((hit & ~xray).sum())}


# Files the workflow writes below results/rNNNN/ per technique for a one-sequence run
# ({product name in summary.json: [paths]}, as technique_products in
# workflow/rules/common.smk), and the intermediate files it leaves there too.
_COMMON_PRODUCTS = {"annotation": ["annotation/REDU-R{r}-ANNOT-S00000.h5"], "aggregate": ["aggregate/run.h5"]}
_TECHNIQUE_PRODUCTS = {
    "spi": {},
    "sfx": {"cxi_hits": ["sfx/hits-S00000.cxi"], "peak_tables": ["sfx/peaks/REDU-R{r}-SFX-S00000.h5"],
            "crystfel": ["sfx/hits.lst", "sfx/agipd.geom", "sfx/hit_statistics.json"]},
    "xpcs": {"xpcs": ["xpcs/xpcs.h5"]},
    "saxs": {"saxs_frames": ["saxs/REDU-R{r}-SAXS-S00000.h5"],
             "nxcansas": ["saxs/saxs_nxcansas.h5", "saxs/saxs_summary.json"]},
}
_INTERMEDIATE = {"": ["partials/S00000.h5", "partials/hit_thresholds.h5"],
                 "xpcs": ["xpcs/partials/S00000.h5"], "saxs": ["saxs/partials/S00000.h5"]}
# snakemake's benchmark: file header; run_summary reads s and max_rss
_BENCHMARK = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _placeholder(path: Path, n_bytes: int) -> None:
    """A small product file of about ``n_bytes`` (HDF5 for .h5/.cxi, text otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".h5", ".cxi"):
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros(max(n_bytes // 8, 1))
    else:
        path.write_text("x" * n_bytes)


def make_results_tree(results: Path, runs: dict[int, str], n_mod: int = 2,
                      residual_offsets: dict[int, float] | None = None,
                      dark_hit_runs: tuple[int, ...] = ()) -> dict[int, dict]:
    """A results/ tree as the workflow leaves it before the report rules.

    Per run: dark constants, CORR and annotation files (real content, read by the
    notebooks), placeholder products and intermediates under the paths the
    workflow uses for the run type, and ``summary.json`` written by the workflow's
    own :func:`xfel_reduce.steps.run_summary` from the annotation table, sparse
    RAW files of full size (outside ``results/``) and a benchmark file, so it
    holds exactly the keys and shapes the real summary has (``frames_out`` as
    ``{"annotation": frames, "hits": hits}``, bytes and ratios per product).
    """
    from xfel_reduce import steps
    from xfel_reduce.io.redu import read_frame_table

    out = {}
    for k, (run, run_type) in enumerate(sorted(runs.items())):
        r = f"{run:04d}"
        rdir = results / f"r{r}"
        dark = results / "calibration" / f"dark_r{r}.h5"
        make_dark_file(dark, n_mod=n_mod, seed=run)
        corr = make_corr_files(results / "proc" / f"r{r}", run, n_mod=n_mod, seed=run + 1,
                               residual_offset=(residual_offsets or {}).get(run, 0.0))
        ann = rdir / "annotation" / f"REDU-R{r}-ANNOT-S00000.h5"
        truth = make_annotation_file(ann, run, seed=run + 2, hit_rate=0.1 + 0.1 * k,
                                     dark_hits=run in dark_hit_runs)
        products = {name: [rdir / f.format(r=r) for f in files]
                    for name, files in {**_COMMON_PRODUCTS, **_TECHNIQUE_PRODUCTS[run_type]}.items()}
        for name, files in products.items():
            for f in files:
                if not f.exists():
                    # hit-only products grow with the hits, the others with the frames
                    per_frame = truth["hits"] if name in ("cxi_hits", "crystfel") else truth["frames"]
                    _placeholder(f, 200 + 40 * per_frame)
        for f in _INTERMEDIATE[""] + _INTERMEDIATE.get(run_type, []):
            _placeholder(rdir / f, 2000)
        # RAW as big as the real one (sparse: no disk space), outside results/
        raw = [results.parent / "raw" / f"r{r}" / f"RAW-R{r}-{agg}-S00000.h5"
               for agg in [f"AGIPD{m:02d}" for m in range(n_mod)] + ["DA01"]]
        for f in raw:
            f.parent.mkdir(parents=True, exist_ok=True)
            with open(f, "wb") as fh:
                fh.truncate(truth["frames"] * 2 * 512 * 128 * 2 if "AGIPD" in f.name else 10**6)
        bench = results / "benchmarks" / f"r{r}" / "aggregate.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(_BENCHMARK + "1.5\t0:00:01\t300.0\t900\t250\t260\t1\t2\t50\t1.2\n")
        table = read_frame_table(ann, ANNOTATION_SOURCE)
        summary = steps.run_summary({"test": "synthetic results tree"}, run, run_type, raw, products,
                                    table, bench.parent, rdir / "summary.json", inputs=[ann])
        out[run] = {"dark": dark, "corr": corr, "annotation": [ann], "truth": truth,
                    "summary": summary, "products": products,
                    "product": products[next(iter(_TECHNIQUE_PRODUCTS[run_type]), "aggregate")][0]}
    return out


SNAKEFILE = """
RESULTS = "results"
RUNS = {runs!r}
config.setdefault("report", {{}})
config["report"]["templates"] = {templates!r}
config["report"]["run_params"] = {run_params!r}


CONDA_ENV = "../../envs/xfel-reduce.yaml"


def scaled(value):
    return lambda wildcards, attempt: value * attempt


def stage_defaults(run, stage):
    return {{}}


def run_stages(run):
    return ["calibration", "annotation"]


def stage_inputs(run, stage):
    if stage == "calibration":
        return {{"dark_file": f"{{RESULTS}}/calibration/dark_r{{run:04d}}.h5",
                 "corr_files": sorted(str(p) for p in Path(RESULTS, "proc", f"r{{run:04d}}").glob("CORR-*.h5"))}}
    return {{"annotation_files": [f"{{RESULTS}}/r{{run:04d}}/annotation/REDU-R{{run:04d}}-ANNOT-S00000.h5"]}}


rule all:
    input: RESULTS + "/index.html"


include: {rules!r}
"""

RUNS = {1: "sfx", 2: "saxs"}
# run 1: residual offset 0.15 photon (calibration warns), expected hit rate met;
# run 2: perfect offset, but its hit rate (~0.2) is far outside the expected range
# and its hit threshold sits in the noise (hits on X-ray-free frames).
RESIDUAL = {1: 0.15, 2: 0.0}
RUN_PARAMS = {1: {"annotation": {"hit_rate_range": [0.05, 0.2]}},
              2: {"annotation": {"hit_rate_range": [0.6, 0.9]}}}


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "agg"}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--nolock",
                           "-s", "Snakefile", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workflow_results(tmp_path_factory):
    """Run the report rules with Snakemake on a two-run synthetic results tree."""
    work = tmp_path_factory.mktemp("reports_wf")
    truth = make_results_tree(work / "results", RUNS, residual_offsets=RESIDUAL, dark_hit_runs=(2,))
    (work / "Snakefile").write_text("from pathlib import Path\n" + SNAKEFILE.format(
        runs=sorted(RUNS), templates=str(TEMPLATES), run_params=RUN_PARAMS, rules=str(RULES)))
    t0 = time.perf_counter()
    proc = run_snakemake(work)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-5000:]
    return work, truth, wall


# ---------------------------------------------------------------------------
# verdict
# ---------------------------------------------------------------------------

def test_check_range_bands():
    assert check_range("x", 0.5, 0, 1).status == "pass"
    assert check_range("x", 1.0, 0, 1).status == "pass"  # inclusive
    assert check_range("x", 1.2, 0, 1, warn_hi=1.5).status == "warn"
    assert check_range("x", 1.6, 0, 1, warn_hi=1.5).status == "fail"
    assert check_range("x", -0.1, 0, 1, warn_hi=1.5).status == "fail"  # no warn band below
    assert check_range("x", -0.1, 0, 1, -0.2, 1.5).status == "warn"
    assert check_range("x", float("nan"), 0, 1, -1, 2).status == "fail"
    assert check_range("x", None, 0, 1).status == "fail"
    assert check_max("x", np.float32(0.01), 0.02).value == pytest.approx(0.01)
    with pytest.raises(ValueError):
        check_range("x", 1, 2, 1)
    with pytest.raises(ValueError):
        check_range("x", 1, 0, 2, warn_lo=0.5)
    with pytest.raises(ValueError):
        Check("x", "ok", 1, "")


def test_verdict_summary_is_worst_and_json():
    checks = [check_range("a", 1, 0, 2), check_range("b", 3, 0, 2, warn_hi=4)]
    assert overall_status(checks) == "warn"
    s = verdict_summary(checks + [check_max("c", float("inf"), 1)], run=3)
    assert s["overall"] == "fail" and s["counts"]["fail"] == 1 and s["run"] == 3
    assert s["checks"][2]["value"] is None  # inf is not JSON
    json.dumps(s, allow_nan=False)
    assert overall_status([]) == "warn"  # nothing verified is not a pass


# ---------------------------------------------------------------------------
# renderer
# ---------------------------------------------------------------------------

def test_failing_notebook_writes_error_html_and_raises(tmp_path):
    """A missing input makes the calibration notebook fail: the page shows the error."""
    out = tmp_path / "r0007" / "reports" / "calibration.html"
    log = tmp_path / "report.log"
    with pytest.raises(ReportExecutionError) as info:
        render_report(TEMPLATES / "calibration.ipynb", out,
                      {"run": 7, "dark_file": str(tmp_path / "nope.h5")}, log=log)
    err = info.value
    msg = str(err)
    assert "calibration.ipynb" in msg and "FileNotFoundError" in msg and "nope.h5" in msg
    nb = nbformat.read(TEMPLATES / "calibration.ipynb", as_version=4)
    assert err.cell_index is not None and "dark_file" in nb.cells[err.cell_index].source
    page = out.read_text()
    assert "FileNotFoundError" in page and "run the calibration rule first" in page
    assert 'data-verdict="error"' in page
    assert json.loads(verdict_path_for(out).read_text())["overall"] == "error"
    assert not URL_RE.search(page), URL_RE.findall(page)[:3]
    assert "failed in cell" in log.read_text()


def test_notebook_without_verdict_is_rejected(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("a = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(a)")]
    tpl = tmp_path / "noverdict.ipynb"
    nbformat.write(nb, tpl)
    with pytest.raises(ReportExecutionError, match="did not write its verdict"):
        render_report(tpl, tmp_path / "out.html", {"a": 2})
    # the page is still there to look at
    assert (tmp_path / "out.html").is_file()


def test_render_overhead(tmp_path):
    """Overhead = wall time of render_report minus the time spent inside cells.

    Measured on a notebook whose only cost is its verdict; the second render in
    the process is the steady state (imports done), the first includes them.
    The limit scales with the machine load because the kernel start is CPU-bound.
    """
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 0\nverdict_path = ''")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from xfel_reduce.verdict import check_range, write_verdict\n"
        "write_verdict([check_range('x', x, 0, 1)], verdict_path)")]
    tpl = tmp_path / "tiny.ipynb"
    nbformat.write(nb, tpl)
    first = render_report(tpl, tmp_path / "a.html", {"x": 0.5})
    second = render_report(tpl, tmp_path / "b.html", {"x": 0.5})
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    print(f"render overhead: first {first.overhead_s:.2f} s, steady {second.overhead_s:.2f} s "
          f"(execute {second.execute_s:.2f} s, convert {second.convert_s:.2f} s), load/core {load:.2f}")
    assert second.verdict["overall"] == "pass"
    assert second.overhead_s < 3.0 * max(1.0, load)


# ---------------------------------------------------------------------------
# workflow: all reports, figures, verdicts and the index
# ---------------------------------------------------------------------------

def test_workflow_produces_self_contained_reports(workflow_results):
    work, truth, wall = workflow_results
    results = work / "results"
    for run in RUNS:
        for stage in ("calibration", "annotation"):
            html = results / f"r{run:04d}" / "reports" / f"{stage}.html"
            page = html.read_text()
            assert not URL_RE.search(page), (html, URL_RE.findall(page)[:3])
            assert not external_references(page)
            assert 'class="xfel-verdict"' in page, html
            # the verdict block comes before the first plot
            assert page.index('class="xfel-verdict"') < IMG_RE.search(page).start()
            assert len(IMG_RE.findall(page)) >= 2, html
            for tag, url in re.findall(r'<(script|link|img)\b[^>]*?(?:src|href)="([^"]*)"', page):
                assert url.startswith("data:"), (html, tag, url[:80])
            png = html.with_suffix(".png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            log = results / "logs" / f"r{run:04d}" / f"report_{stage}.log"
            assert "overhead" in log.read_text()
    index = (results / "index.html").read_text()
    assert not URL_RE.search(index) and not external_references(index)
    print(f"snakemake, 4 notebooks + index: {wall:.1f} s")


def test_calibration_verdict_matches_truth(workflow_results):
    work, truth, _ = workflow_results
    for run, residual in RESIDUAL.items():
        v = json.loads((work / f"results/r{run:04d}/reports/calibration.verdict.json").read_text())
        checks = {c["name"]: c for c in v["checks"]}
        with h5py.File(truth[run]["dark"]) as f:
            bad = (f["badpixels"][0] != 0).any(axis=0)  # (n_mod, 512, 128)
        for m in range(bad.shape[0]):
            c = checks[f"bad-pixel fraction, module {m} (high gain)"]
            assert c["value"] == pytest.approx(bad[m].mean(), abs=1e-12)
            # residual offset and noise (photons) of the zero-photon peak, truth 0.17
            assert checks[f"residual dark offset, module {m}"]["value"] == pytest.approx(residual, abs=0.01)
            assert checks[f"zero-photon peak width, module {m}"]["value"] == pytest.approx(0.17, rel=0.05)
        assert v["overall"] == ("warn" if residual > 0.1 else "pass")


def test_annotation_verdict_matches_truth(workflow_results):
    work, truth, _ = workflow_results
    verdicts = {}
    for run in RUNS:
        v = json.loads((work / f"results/r{run:04d}/reports/annotation.verdict.json").read_text())
        verdicts[run] = v
        checks = {c["name"]: c for c in v["checks"]}
        t = truth[run]["truth"]
        assert checks["hit rate (X-ray frames)"]["value"] == pytest.approx(t["hit_rate"])
        assert checks["frames annotated"]["value"] == t["frames"]
        dark = checks["hit fraction among X-ray-free frames"]
        assert dark["value"] == pytest.approx(t["dark_hits"] / (t["frames"] / 4))  # 1 in 4 pulses dark
        # a threshold in the noise (hits without X-rays) must fail
        assert dark["status"] == ("fail" if t["dark_hits"] else "pass")
    # run 2's hit rate (~0.2) is outside the expected 0.6-0.9 and its warn band
    assert {c["name"]: c["status"] for c in verdicts[2]["checks"]}["hit rate (X-ray frames)"] == "fail"
    assert verdicts[2]["overall"] == "fail" and verdicts[1]["overall"] == "pass"


def _index_table(page: str) -> tuple[list[str], dict[int, dict[str, str]]]:
    """Headers of the index table and every row's cells (``<td>`` elements) by header."""
    heads = re.findall(r"<th\b[^>]*>(.*?)</th>", page)
    rows = re.findall(r'<tr data-run="(\d+)">(.*?)</tr>', page, re.S)
    return heads, {int(r): dict(zip(heads, re.findall(r"<td\b[^>]*>.*?</td>", row, re.S), strict=True))
                   for r, row in rows}


def _text(cell: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", cell).split())


def test_index_lists_every_run_with_links(workflow_results):
    work, truth, _ = workflow_results
    results = work / "results"
    page = (results / "index.html").read_text()
    heads, rows = _index_table(page)
    assert heads == ["run", "type", "frames in", "frames kept", "hit rate", "reduction", "verdict",
                     "reports", "products"]
    assert sorted(rows) == sorted(RUNS)
    for run, cells in rows.items():
        rdir = results / f"r{run:04d}"
        summary = json.loads((rdir / "summary.json").read_text())
        row = "".join(cells.values())
        for stage in ("calibration", "annotation"):
            assert f'href="r{run:04d}/reports/{stage}.html"' in cells["reports"]
            # the report's figure is part of the report page, not a product
            assert (rdir / "reports" / f"{stage}.png").is_file()
            assert f"reports/{stage}.png" not in row
        # every file the workflow left in the run directory is linked as a product
        linked = set(re.findall(r'href="([^"]+)"', cells["products"]))
        expected = {p.relative_to(results).as_posix() for p in rdir.rglob("*")
                    if p.is_file() and p.parent.name != "reports" and p.name != "summary.json"}
        assert linked == expected
        assert truth[run]["product"].relative_to(results).as_posix() in linked
        assert _text(cells["type"]) == RUNS[run]
        assert _text(cells["frames in"]).startswith(f"{summary['frames_in']:,}")
        overall = summary["bytes_in"] / sum(summary["bytes_out"].values())
        assert f"<b>{overall:,.0f}\u00d7</b>" in cells["reduction"]
        if RUNS[run] == "sfx":  # hit finding: the hit rate and the hit frames
            assert _text(cells["hit rate"]) == f"{100 * summary['hit_rate']:.2f} %"
            assert _text(cells["frames kept"]) == f"{summary['frames_out']['hits']:,} hits"
        else:  # SAXS: no hit finding, so neither the summary nor the index has a hit rate
            assert summary["hit_rate"] is None and summary["hit_finding"] is False
            assert _text(cells["hit rate"]) == _text(cells["frames kept"]) == "n/a"
        # every link resolves to a file
        for href in re.findall(r'href="([^"]+)"', row):
            assert (results / href).is_file(), href
    verdicts = {run: re.search(r'class="verdict v-(\w+)"', c["verdict"]).group(1) for run, c in rows.items()}
    assert verdicts == {1: "warn", 2: "fail"}
    assert "addEventListener" in page  # sortable


def test_index_handles_missing_and_broken_inputs(tmp_path):
    results = tmp_path / "results"
    (results / "r0003" / "reports").mkdir(parents=True)
    (results / "r0003" / "summary.json").write_text("{not json")
    (results / "r0003" / "reports" / "saxs.html").write_text("<html></html>")
    (results / "r0004").mkdir()
    (results / "r0004" / "summary.json").write_text(json.dumps(
        {"run": 4, "run_type": "xpcs", "frames_in": 10, "bytes_in": 4000, "bytes_out": 10,
         "reduction_ratio": 400, "hit_rate": None}))
    entries = collect_runs(results, runs=[3, 4, 5])
    assert [e.run for e in entries] == [3, 4, 5]
    assert entries[0].verdict == "missing" and "summary.json unreadable" in entries[0].problems[0]
    assert entries[2].problems == [f"run directory {results / 'r0005'} missing"]
    page = build_index(results, runs=[3, 4, 5]).read_text()
    assert page.count("<tr data-run=") == 3
    assert "400\u00d7" in page
    heads, rows = _index_table(page)
    # no run with hit finding: its columns would be empty in every row
    assert "hit rate" not in heads and "frames kept" not in heads
    assert _text(rows[3]["frames in"]) == "\u2014" and _text(rows[4]["frames in"]) == "10"


def _summary(run: int, run_type: str, **kw) -> dict:
    """A summary.json as run_summary writes it (the keys the index reads)."""
    return {"run": run, "run_type": run_type, "frames_in": 640, "xray_frames": 480,
            "frames_out": {"annotation": 640, "hits": 48}, "bytes_in": 10**9,
            "bytes_out": {"annotation": 10**5, "aggregate": 10**6},
            "reduction_ratio": {"annotation": 1e4, "aggregate": 1e3}, "hit_rate": 0.1, **kw}


def test_index_hit_rate_and_kept_frames_only_with_hit_finding(tmp_path):
    summaries = [_summary(1, "spi"), _summary(2, "xpcs"), _summary(3, "saxs"),
                 _summary(4, "sfx", frames_out={"annotation": 640, "hits": 48, "kept": 60}),
                 _summary(5, "xpcs", hit_finding=True),  # the summary's own flag wins
                 _summary(6, "spi", frames_out=52),  # a plain number: the frames written
                 {"run": 7, "frames_in": 5}]  # no run type: unknown, not "n/a"
    assert [hit_finding_ran(s) for s in summaries] == [True, False, False, True, True, True, None]
    assert [kept_frames(s) for s in summaries] == [(48, "hits"), (None, ""), (None, ""), (60, "kept"),
                                                  (48, "hits"), (52, "kept"), (None, "")]
    results = tmp_path / "results"
    for s in summaries:
        (results / f"r{s['run']:04d}").mkdir(parents=True)
        (results / f"r{s['run']:04d}" / "summary.json").write_text(json.dumps(s))
    heads, rows = _index_table(build_index(results).read_text())
    hit = {r: _text(c["hit rate"]) for r, c in rows.items()}
    kept = {r: _text(c["frames kept"]) for r, c in rows.items()}
    assert hit == {1: "10.00 %", 2: "n/a", 3: "n/a", 4: "10.00 %", 5: "10.00 %", 6: "10.00 %", 7: "\u2014"}
    assert kept == {1: "48 hits", 2: "n/a", 3: "n/a", 4: "60 kept", 5: "48 hits", 6: "52 kept",
                    7: "\u2014"}
    # total bytes out = sum over products
    assert "<b>909\u00d7</b>" in rows[1]["reduction"]
    # n/a and unknown cells have an empty sort key: they sort after every number
    for r in (2, 3, 7):
        assert 'data-sort=""' in re.match(r"<td[^>]*>", rows[r]["hit rate"]).group(0)


def test_snakemake_report_includes_reports(workflow_results):
    work, _, _ = workflow_results
    proc = run_snakemake(work, "--report", "report.zip")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import zipfile
    names = zipfile.ZipFile(work / "report.zip").namelist()
    # files are stored under hashed directories: count them per stage
    for stage in ("calibration", "annotation"):
        for ext in ("html", "png"):
            assert sum(n.endswith(f"/{stage}.{ext}") for n in names) == len(RUNS), (stage, ext, names)
    assert sum(n.endswith("/index.html") and "/data/raw/" in n for n in names) == 1
    # categories appear in the report's data
    blob = "".join(zipfile.ZipFile(work / "report.zip").read(n).decode("utf-8", "replace")
                   for n in names if n.endswith((".js", ".html")) and "/data/raw/" not in n)
    for category in ("Run reports", "Key plots", "Overview"):
        assert category in blob, category
