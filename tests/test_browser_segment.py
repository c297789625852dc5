"""A person's path in headless Chromium: open the Segment tab, upload a photo, type a phrase, click
Select, and see the mask tinted over the photo (thresholds 0: the tiny random GroundingDINO then
finds boxes)."""
import os
from pathlib import Path

import pytest

from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, running_app

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")

READ_PIXELS = """img => {
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let r = 0, g = 0;
    for (let i = 0; i < d.length; i += 4) { r += d[i]; g += d[i + 1]; }
    return {w: c.width, h: c.height, red_minus_green: (r - g) / (d.length / 4), src: img.src};
}"""

# The preview's image has loaded (a new src reads as 0x0 until then).
LOADED = ("(() => { const i = document.querySelector('#segment-preview img'); "
          "return !!i && i.complete && i.naturalWidth > 0; })()")


@pytest.fixture(scope="module")
def page(tiny_models):
    from playwright.sync_api import sync_playwright

    with running_app(tiny_models) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.get_by_role("tab", name="Segment").click()
        page.wait_for_selector("#segment-run")
        yield page
        browser.close()


def test_type_a_phrase_and_see_the_overlay(page, artifacts):
    page.locator("#segment-photo input[type=file]").first.set_input_files(str(ROOT / "assets/examples/cat.png"))
    # The upload fills the preview with the plain photo.
    page.wait_for_function("(document.querySelector('#segment-mask-status') || {}).innerText"
                           "?.includes('Nothing selected')", timeout=60_000)
    page.wait_for_function(LOADED, timeout=30_000)  # the status can come before the preview's image loads
    before = page.locator("#segment-preview img").first.evaluate(READ_PIXELS)
    assert (before["w"], before["h"]) == (451, 300)

    page.locator("#segment-select-text textarea").fill("the cat")
    page.locator("#segment-thresholds").get_by_text("Selection thresholds").click()
    page.locator("#segment-box-threshold input[type=number]").fill("0")
    page.locator("#segment-text-threshold input[type=number]").fill("0")
    page.locator("#segment-select").click()
    page.wait_for_function("/found/i.test(document.querySelector('#segment-select-message').innerText)",
                           timeout=60_000)
    message = page.locator("#segment-select-message").inner_text()
    page.wait_for_function(f"document.querySelector('#segment-preview img').src !== {before['src']!r} && {LOADED}",
                           timeout=30_000)
    after = page.locator("#segment-preview img").first.evaluate(READ_PIXELS)
    page.screenshot(path=str(artifacts / "segment.png"), full_page=True)

    assert message.startswith("Found"), message  # thresholds 0: the tiny model finds boxes
    assert "covers" in page.locator("#segment-mask-status").inner_text()
    # The overlay is the same photo, tinted red where the mask is.
    assert (after["w"], after["h"]) == (451, 300)
    assert after["red_minus_green"] > before["red_minus_green"] + 10
    assert os.path.getsize(artifacts / "segment.png") > 10_000


def test_make_mask_png_and_download_it(page, artifacts):
    """Then the person makes mask.png and downloads it: a white-on-black PNG of the photo's size
    (after the test above, the selection; run alone, the all-black mask of nothing selected)."""
    import numpy as np
    from PIL import Image

    if not page.locator("#segment-mask-status").inner_text().strip():
        page.locator("#segment-photo input[type=file]").first.set_input_files(str(ROOT / "assets/examples/cat.png"))
        page.wait_for_function("(document.querySelector('#segment-mask-status') || {}).innerText"
                               "?.includes('Nothing selected')", timeout=60_000)
    page.locator("#segment-run").click()
    link = page.locator("#segment-download a").first
    link.wait_for(timeout=60_000)
    assert "mask.png" in page.locator("#segment-download").inner_text()
    with page.expect_download(timeout=30_000) as info:
        link.click()
    mask = Image.open(info.value.path())
    page.screenshot(path=str(artifacts / "segment-download.png"), full_page=True)
    assert (mask.size, mask.mode) == ((451, 300), "L")
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
