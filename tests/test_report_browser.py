"""The report as a person sees it: a real run's ``index.html`` opened from disk (``file://``) in headless Chromium
(Debian's ``chromium``, driven by Playwright's Python package; ``.ci/run`` installs the browser when it is
missing). Screenshots go to each test's temporary folder.

Checked: no console error, no failed request and no request outside the run folder; every image loads; sorting and each filter change the rows; a
click on a leaderboard cell opens the sample explorer with best and worst samples; a sample's pair view shows
every method. A copy of the run folder with one output deleted fails the image check (the check can fail).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sxbench.cli import main

CHROMIUM = Path(os.environ.get("SXBENCH_CHROMIUM", "/usr/bin/chromium"))
"""Debian's Chromium; $SXBENCH_CHROMIUM names another Chromium-family binary (GitHub's runners: google-chrome)."""
METHODS = ("identity", "reinhard", "histmatch")
ARGS = ["--protocol", "synth-smoke", "--methods", ",".join(METHODS), "--metrics",
        "content_ssim,style_color_swd,target_ssim", "--no-progress"]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
"""Chromium's flags here: without the background-networking ones it tries Google's hosts from a closed network."""

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} missing: apt-get install chromium "
                                "(.ci/run installs it)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "run"
    assert main(["run", *ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


class Page:
    """A page at 1280×800 that records console errors, uncaught exceptions and failed requests."""

    def __init__(self, browser, run: Path) -> None:
        self.problems: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})"))
        self.page.on("request", lambda r: None if r.url.startswith(("file://", "data:")) else
                     self.problems.append(f"network request: {r.url}"))  # nothing leaves the run folder
        self.page.goto((run / "index.html").as_uri())
        self.page.wait_for_load_state("load")

    def broken_images(self) -> list[str]:
        """Load every image (lazy ones too) and return the sources of those that did not decode."""
        return self.page.evaluate("""async () => {
            const imgs = Array.from(document.querySelectorAll('img'));
            imgs.forEach(i => { i.loading = 'eager'; });
            await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
            return imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
        }""")

    def board_rows(self) -> list[list[str]]:
        """The first leaderboard table's visible rows, as their cells' text."""
        return self.page.evaluate("""() => Array.from(document.querySelector('table.board').querySelectorAll('tbody tr'))
            .filter(r => r.style.display !== 'none').map(r => Array.from(r.cells).map(c => c.textContent.trim()))""")


def test_report_loads_clean_and_every_image_decodes(browser, run_dir, tmp_path):
    page = Page(browser, run_dir)
    page.page.screenshot(path=str(tmp_path / "top.png"))
    assert page.broken_images() == []
    assert page.page.locator("table.summary tbody tr").count() == 6
    assert page.page.locator("table.grid tr[data-method]").count() == len(METHODS)
    # the grid fits the window: nothing of the page overflows 1280 px
    assert page.page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.page.screenshot(path=str(tmp_path / "full.png"), full_page=True)
    assert page.problems == []


def test_sorting_and_each_filter_change_the_rows(browser, run_dir, tmp_path):
    page = Page(browser, run_dir)
    before = page.board_rows()
    assert len(before) == len(METHODS)
    page.page.locator("table.board").first.locator("th").nth(1).click()  # sort by the first metric
    after = page.board_rows()
    page.page.locator("table.board").first.locator("th").nth(1).click()  # the other way
    again = page.board_rows()
    assert sorted(map(tuple, after)) == sorted(map(tuple, before)) and after != again

    page.page.select_option("#f-level", "texture")
    level = page.board_rows()
    assert sorted(level) != sorted(before), "the level filter changed no cell"
    page.page.select_option("#f-split", "unseen")
    both = page.board_rows()
    assert sorted(both) != sorted(level), "the split filter changed no cell"
    page.page.select_option("#f-level", "")
    page.page.select_option("#f-split", "")
    assert sorted(page.board_rows()) == sorted(before)
    page.page.locator(".f-method[value='reinhard']").uncheck()
    rows = page.board_rows()
    assert len(rows) == len(METHODS) - 1 and not any(r[0].startswith("reinhard") for r in rows)
    page.page.screenshot(path=str(tmp_path / "filtered.png"))
    assert page.problems == []


def test_explorer_opens_a_sample_and_the_pair_view_shows_every_method(browser, run_dir, tmp_path):
    page = Page(browser, run_dir)
    page.page.locator("table.board tr[data-method='reinhard'] td.cellv").first.click()
    page.page.wait_for_selector("#x-best .xcard")
    best, worst = page.page.locator("#x-best .xcard"), page.page.locator("#x-worst .xcard")
    assert best.count() > 0 and worst.count() > 0
    assert best.first.locator("img").count() == 4  # content, style, target, output
    assert "reinhard" in page.page.locator("#x-method").input_value()
    page.page.screenshot(path=str(tmp_path / "explorer.png"))
    assert page.broken_images() == []

    pair = best.first.get_attribute("data-pair")
    best.first.locator("a.pairlink").click()
    page.page.wait_for_selector("#pairview")
    methods = page.page.locator("#pairview tbody tr").evaluate_all("rs => rs.map(r => r.dataset.method)")
    assert sorted(methods) == sorted(METHODS)
    assert page.page.locator("#pairview tbody img").count() == len(METHODS)
    assert pair in page.page.locator("#explorer .controls-bar").first.inner_text()
    page.page.screenshot(path=str(tmp_path / "pair.png"))
    assert page.broken_images() == []
    assert page.problems == []


def test_a_broken_image_path_is_caught(browser, run_dir, tmp_path):
    """The image check can fail: in a copy of the run folder with one grid output deleted, it names that file."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    victim = next(iter(sorted((copy / "images" / "reinhard").glob("*.png"))))
    html = (copy / "index.html").read_text()
    rel = victim.relative_to(copy).as_posix()
    assert rel in html, "the victim is not in the grid: pick another"
    victim.unlink()
    page = Page(browser, copy)
    assert page.broken_images() == [rel]
    assert any(rel in p for p in page.problems)
