"""The pix2pix-zero tab's "Fast (distilled)" mode as a person uses it, in headless Chromium at
1366x768: switch the mode, pick the direction, upload a photo, apply, see the edit and its time
(screenshot in tests/artifacts/p2pz_fast.png); the photo, the direction and the button fit one
screen; the webcam input is on the page (a headless browser has no camera to stream)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_p2pz_fast import CAT, make_checkpoint
from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, running_app

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
VIEW = {"width": 1366, "height": 768}


@pytest.fixture(scope="module")
def page(tiny_models, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("distilled")
    make_checkpoint(folder / "cat2dog", resolution=128)
    make_checkpoint(folder / "horse2zebra", resolution=64, source="horse", target="zebra", seed=2)
    mp = pytest.MonkeyPatch()
    mp.setenv("DES_DISTILLED_DIR", str(folder))
    try:
        with running_app(tiny_models) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEW)
            page.goto(url)
            page.get_by_role("tab", name="pix2pix-zero").click()
            page.wait_for_selector("#p2pz-run")
            yield page
            browser.close()
    finally:
        mp.undo()


def test_fast_mode_pick_upload_apply_and_see_the_time(page, artifacts):
    assert not page.locator("#p2pz-fast-run").is_visible()  # the diffusion mode first
    page.get_by_text("Fast (distilled)").click()
    page.locator("#p2pz-fast-run").wait_for(state="visible", timeout=10_000)
    assert not page.locator("#p2pz-run").is_visible() and not page.locator("#p2pz-target").is_visible()
    assert page.locator("#p2pz-fast-folder").inner_text().startswith("2 directions found")
    page.locator("#p2pz-fast-direction input").click()
    page.get_by_role("option", name="cat → dog · 128 px · cat2dog").click()
    page.locator("#p2pz-photo input[type=file]").first.set_input_files(str(CAT))
    page.locator("#p2pz-photo img").first.wait_for(timeout=30_000)
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    for selector in ("#p2pz-photo", "#p2pz-fast-direction", "#p2pz-fast-run"):  # one screen, no scrolling
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= VIEW["height"], (selector, box)
    page.locator("#p2pz-fast-run").click()
    page.wait_for_function("document.querySelector('#p2pz-fast-time').innerText.includes('Edited in')",
                           timeout=60_000)
    text = page.locator("#p2pz-fast-time").inner_text()
    assert " ms" in text and "cat → dog" in text and "128x" in text, text
    page.wait_for_function("document.querySelectorAll('.result-compare img').length >= 2", timeout=30_000)
    page.wait_for_timeout(500)
    shot = artifacts / "p2pz_fast.png"
    page.screenshot(path=str(shot))
    assert os.path.getsize(shot) > 10_000
    page.get_by_text("Live webcam").click()  # the live input: on the page (no camera to stream here)
    page.locator("#p2pz-webcam").wait_for(state="visible", timeout=10_000)
    assert page.locator("#p2pz-live").is_visible()
    page.locator("#p2pz-webcam").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "p2pz_fast_webcam.png"))
    page.get_by_text("Live webcam").click()
    page.get_by_text("Diffusion (full)").click()  # and back: the diffusion controls return
    page.locator("#p2pz-run").wait_for(state="visible", timeout=10_000)
    assert page.locator("#p2pz-target").is_visible() and not page.locator("#p2pz-fast-run").is_visible()
