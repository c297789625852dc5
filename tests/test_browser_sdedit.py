"""A person's path in headless Chromium: upload a photo, type a prompt, click Edit, see the result."""
import os
from pathlib import Path

import pytest

from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, running_app

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def page(tiny_models):
    from playwright.sync_api import sync_playwright

    tiny_models.sd()  # build and load the tiny models before the browser starts waiting
    with running_app(tiny_models) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        page.wait_for_selector("#sdedit-run")
        yield page
        browser.close()


def test_upload_click_and_see_the_result(page, artifacts):
    page.locator("#sdedit-photo input[type=file]").first.set_input_files(str(ROOT / "assets/examples/cat.png"))
    page.locator("#sdedit-prompt textarea").fill("a photo of a tiger")
    page.get_by_text("Advanced").click()
    page.get_by_label("DDIM steps", exact=False).first.fill("6")
    page.get_by_label("Resolution (longest side)", exact=False).first.fill("128")
    page.locator("#sdedit-run").click()
    try:
        page.wait_for_selector("text=unet_evals", timeout=120_000)
    finally:
        page.screenshot(path=str(artifacts / "sdedit.png"), full_page=True)
    page.wait_for_function("document.querySelectorAll('img').length >= 3", timeout=30_000)
    page.screenshot(path=str(artifacts / "sdedit.png"), full_page=True)
    assert page.locator("#fake-banner").is_visible()
    assert os.path.getsize(artifacts / "sdedit.png") > 10_000
