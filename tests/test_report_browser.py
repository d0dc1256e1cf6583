"""The report in a real headless Chromium (Debian's ``chromium``, driven by Playwright): it loads from
disk with no console error and no network request, every image decodes, the audio plays, the hostile
title is text and runs nothing, the page is not blank, and the tables read from the DOM equal the
manifests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.report import write_report
from tests.test_report import check_tables
from tests.test_report_fixture import HOSTILE_TAG, HOSTILE_TITLE, build_run

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright downloads no browser here
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TABLES_JS = """() => Object.fromEntries([...document.querySelectorAll('table[data-stat]')].map(t => [
  t.dataset.stat, {headers: [...t.tHead.rows[0].cells].map(c => c.textContent),
                   rows: [...t.tBodies[0].rows].map(r => [r.dataset.key, Object.fromEntries(
                     [...r.cells].slice(1).map((c, i) => [t.tHead.rows[0].cells[i + 1].textContent, c.dataset.value]))])}]))"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (Debian package 'chromium'; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def loaded(browser, tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    root = build_run(d / "run")
    index = write_report(root, d / "out", samples=8, seed=1)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    events = {"console": [], "errors": [], "requests": []}
    page.on("console", lambda m: events["console"].append((m.type, m.text)))
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.on("request", lambda r: events["requests"].append(r.url))
    page.goto(index.resolve().as_uri(), wait_until="load")
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=15_000)
    page.wait_for_function(
        "[...document.querySelectorAll('audio')].every(a => a.readyState >= 1 || a.error)", timeout=15_000
    )
    yield root, index, page, events
    page.close()


def test_page_loads_from_disk_without_errors_or_network(loaded):
    _, index, page, events = loaded
    assert [c for c in events["console"] if c[0] in ("error", "warning")] == []
    assert events["errors"] == []
    assert events["requests"] and all(u.startswith("file://") for u in events["requests"]), events["requests"]
    assert page.title().startswith("vidal report")


def test_every_image_decodes_and_every_audio_player_loads(loaded):
    _, _, page, _ = loaded
    widths = page.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert len(widths) > 50 and all(w > 0 for _, w in widths), [s for s, w in widths if not w]
    durations = page.evaluate(
        "[...document.querySelectorAll('audio')].map(a => [a.error && a.error.code, a.duration])"
    )
    assert durations and all(err is None and d == pytest.approx(1.0, abs=0.05) for err, d in durations), (
        durations
    )


def test_hostile_title_is_text_and_runs_nothing(loaded):
    _, _, page, _ = loaded
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.scripts.length") == 0
    card = page.locator('article.sample[data-key="yt-vid00"]')
    assert card.locator("h3.title").inner_text() == HOSTILE_TITLE
    assert HOSTILE_TAG in card.locator('dd[data-field="raw"]').inner_text()
    assert card.locator('dd[data-field="mplug"]').inner_text() == "<b>a bold cat</b> & friends"
    assert page.locator("img[src='x']").count() == 0


def test_tables_in_the_dom_equal_the_manifests(loaded):
    root, _, page, _ = loaded
    check_tables(page.evaluate(TABLES_JS), root)


def test_screenshot_is_not_blank(loaded, tmp_path):
    _, _, page, _ = loaded
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")).astype(float)
    assert shot.shape[0] > 2000 and shot.shape[1] == 1400
    assert shot.std() > 20  # a blank or single-colour page is near 0
    assert len(np.unique(shot.reshape(-1, 3)[::7], axis=0)) > 500
