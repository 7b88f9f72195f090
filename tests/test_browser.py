"""The index and a run report in a real headless browser (Debian chromium + chromedriver).

Serves a synthetic results tree from a localhost http.server, opens
``index.html``, checks the table lists every run and sorts, follows the link to a
run report, checks the verdict block, the embedded images and the code toggle,
saves screenshots, and asserts the browser console logged no error.

Needs ``apt-get install -y chromium chromium-driver`` and PyPI ``selenium``.
"""
from __future__ import annotations

import functools
import http.server
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
RUNS = {1: "sfx", 2: "saxs", 3: "xpcs"}


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
    run = 1
    render_report(TEMPLATES / "annotation.ipynb", results / f"r{run:04d}/reports/annotation.html",
                  {"run": run, "annotation_files": [str(p) for p in truth[run]["annotation"]]})
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
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
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
    link = browser.find_element(By.CSS_SELECTOR, 'tr[data-run="1"] a.rep')
    assert link.text == "annotation"
    link.click()
    WebDriverWait(browser, 30).until(ec.url_contains("/r0001/reports/annotation.html"))
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
