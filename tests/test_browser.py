"""The index and a run report in a real headless browser (Debian chromium + chromedriver).

Serves a synthetic results tree (the demo's run types, the workflow's file names
and summaries) from a localhost http.server, opens ``index.html``, checks the table
lists every run and sorts, fits a 1400 px window (folded and unfolded), shows hit
rate and kept frames only where hit finding ran and has no empty column, follows
the link to a run report, checks the verdict block, the embedded images and the
code toggle, saves screenshots, and asserts the browser console logged no error.

Needs ``apt-get install -y chromium chromium-driver`` and PyPI ``selenium``.
"""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from test_reports import TEMPLATES, make_results_tree
from xfel_reduce.report import render_report
from xfel_reduce.report_index import build_index

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# the demo's AGIPD run types, with its run numbers
RUNS = {10: "spi", 11: "sfx", 12: "xpcs", 13: "saxs"}
REPORT_RUN = 11
WIDTH = 1400


def _have_browser() -> bool:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()


needs_browser = pytest.mark.skipif(not _have_browser(),
                                   reason="needs Debian chromium, chromium-driver and selenium")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output readable
        pass


@pytest.fixture(scope="module")
def served_results(tmp_path_factory):
    """A results tree with one rendered report and the index, served on localhost."""
    results = tmp_path_factory.mktemp("browser") / "results"
    truth = make_results_tree(results, RUNS)
    run = REPORT_RUN
    render_report(TEMPLATES / "annotation.ipynb", results / f"r{run:04d}/reports/annotation.html",
                  {"run": run, "annotation_files": [str(p) for p in truth[run]["annotation"]]})
    # the other reports of the demo as placeholders: the index only links them
    for r, run_type in RUNS.items():
        for stage in ("calibration", "annotation", run_type):
            page = results / f"r{r:04d}/reports/{stage}.html"
            if stage != "spi" and not page.exists():
                page.parent.mkdir(parents=True, exist_ok=True)
                page.write_text(f"<!DOCTYPE html><title>{stage}</title><p>{stage}</p>")
                page.with_suffix(".verdict.json").write_text(json.dumps({"overall": "pass"}))
    build_index(results)
    handler = functools.partial(_QuietHandler, directory=str(results))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield results, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={WIDTH},1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


@needs_browser
def test_index_and_report_in_browser(served_results, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    results, base = served_results
    browser.get(f"{base}/index.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    assert sorted(int(r.get_attribute("data-run")) for r in rows) == sorted(RUNS)
    for r in rows:
        assert RUNS[int(r.get_attribute("data-run"))] in r.text

    # sorting: a click on "run" sorts ascending, a second click descending
    header = browser.find_element(By.XPATH, "//table[@id='runs']//th[normalize-space()='run']")
    header.click()
    header.click()
    order = [int(r.get_attribute("data-run"))
             for r in browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")]
    assert order == sorted(RUNS, reverse=True)
    assert header.get_attribute("aria-sort") == "descending"
    index_png = tmp_path / "index.png"
    assert browser.save_screenshot(str(index_png))
    assert not _console_errors(browser), _console_errors(browser)

    # follow the link from the index to run 1's annotation report
    link = next(a for a in browser.find_elements(By.CSS_SELECTOR, f'tr[data-run="{REPORT_RUN}"] a.rep')
                if a.text == "annotation")
    link.click()
    WebDriverWait(browser, 30).until(ec.url_contains(f"/r{REPORT_RUN:04d}/reports/annotation.html"))
    verdict = browser.find_element(By.CSS_SELECTOR, ".xfel-verdict")
    assert verdict.get_attribute("data-verdict") in ("pass", "warn", "fail")
    assert "verdict" in verdict.text.lower()
    images = browser.find_elements(By.CSS_SELECTOR, "img")
    loaded = [browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
              for i in images]
    assert len(images) >= 2 and all(w and w > 100 for w in loaded), loaded
    # verdict block is above the first plot
    assert verdict.location["y"] < images[0].location["y"]

    report_png = tmp_path / "report.png"
    assert browser.save_screenshot(str(report_png))
    # code is hidden until the toggle is clicked
    code = browser.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-Cell-inputWrapper")
    assert code and not any(c.is_displayed() for c in code)
    browser.find_element(By.ID, "xr-code-toggle").click()
    assert any(c.is_displayed() for c in code)
    assert not _console_errors(browser), _console_errors(browser)
    for png in (index_png, report_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # keep the screenshots where a person can look at them
    out = results.parent / "screenshots"
    out.mkdir(exist_ok=True)
    for png in (index_png, report_png):
        shutil.copy(png, out / png.name)
    print(f"screenshots in {out}")


# Layout and text of the index table, measured by the browser itself.
_TABLE_JS = """
var table = document.getElementById("runs");
var heads = Array.prototype.map.call(table.tHead.rows[0].cells, function (c) { return c.textContent.trim(); });
var rows = Array.prototype.map.call(table.tBodies[0].rows, function (r) {
  return {run: r.getAttribute("data-run"),
          cells: Array.prototype.map.call(r.cells, function (c) { return c.innerText.trim(); })};
});
var cellRight = 0;
table.querySelectorAll("td, th").forEach(function (c) {
  cellRight = Math.max(cellRight, c.getBoundingClientRect().right);
});
return {heads: heads, rows: rows, innerWidth: window.innerWidth,
        scrollWidth: document.documentElement.scrollWidth,
        bodyScrollWidth: document.body.scrollWidth,
        tableRight: table.getBoundingClientRect().right, cellRight: cellRight};
"""


def _assert_fits(m: dict, state: str) -> None:
    # The window really is the width asked for (a scroll bar may take a few px).
    assert WIDTH - 40 <= m["innerWidth"] <= WIDTH, m
    assert m["scrollWidth"] <= m["innerWidth"], (state, m)
    assert m["bodyScrollWidth"] <= m["innerWidth"], (state, m)
    assert m["tableRight"] <= m["innerWidth"], (state, m)
    assert m["cellRight"] <= m["innerWidth"], (state, m)


@needs_browser
def test_index_fits_1400px_and_shows_only_what_applies(served_results, browser, tmp_path):
    """At 1400 px: no horizontal overflow, folded or unfolded; hit rate and kept
    frames only for runs with hit finding; no column empty in every row."""
    results, base = served_results
    browser.set_window_size(WIDTH, 1000)
    browser.get(f"{base}/index.html")
    folded = browser.execute_script(_TABLE_JS)
    _assert_fits(folded, "folded")
    shots = {"index-1400.png": None, "index-1400-open.png": None}
    shots["index-1400.png"] = browser.get_screenshot_as_png()

    # Unfold every <details> (products, ratios per product): the widest the table gets.
    n_details = browser.execute_script(
        "var d = document.querySelectorAll('details'); d.forEach(function (x) { x.open = true; });"
        "return d.length;")
    assert n_details >= len(RUNS)  # every demo run has more products than fit inline
    unfolded = browser.execute_script(_TABLE_JS)
    _assert_fits(unfolded, "unfolded")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, min(max(height + 150, 1000), 4000))
    _assert_fits(browser.execute_script(_TABLE_JS), "unfolded, tall window")
    shots["index-1400-open.png"] = browser.get_screenshot_as_png()
    assert not _console_errors(browser), _console_errors(browser)

    heads = folded["heads"]
    assert heads[0] == "run" and "hit rate" in heads and "frames kept" in heads, heads
    cells = {int(r["run"]): dict(zip(heads, r["cells"], strict=True)) for r in folded["rows"]}
    assert sorted(cells) == sorted(RUNS)
    for run, run_type in RUNS.items():
        summary = json.loads((results / f"r{run:04d}" / "summary.json").read_text())
        row = cells[run]
        if run_type in ("spi", "sfx"):
            assert row["hit rate"] == f"{100 * summary['hit_rate']:.2f} %", row
            assert row["frames kept"].split() == [f"{summary['frames_out']['hits']:,}", "hits"], row
        else:
            # no hit finding ran: the summary says so and has no hit rate
            assert summary["hit_rate"] is None and summary["hit_finding"] is False
            assert row["hit rate"] in ("", "n/a"), row
            assert row["frames kept"] in ("", "n/a"), row
        assert row["frames in"].split()[0] == f"{summary['frames_in']:,}", row
    # every column says something for at least one run
    empty = {"", "\u2014", "n/a", "none"}
    for i, h in enumerate(heads):
        assert any(r["cells"][i] not in empty for r in folded["rows"]), f"column {h!r} is empty"

    out = results.parent / "screenshots"
    out.mkdir(exist_ok=True)
    for name, png in shots.items():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        (out / name).write_bytes(png)
    print(f"index at {WIDTH} px: scrollWidth {folded['scrollWidth']} / {unfolded['scrollWidth']} "
          f"(folded / unfolded), innerWidth {folded['innerWidth']}, table right edge "
          f"{folded['tableRight']:.0f} / {unfolded['tableRight']:.0f} px; screenshots in {out}")
