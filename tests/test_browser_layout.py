"""Issue 15 (8), in headless Chromium at 1366x768: on every method tab the photo, the method's main
control and the Edit button are on screen together without scrolling; the result column stays in
view while the controls scroll, so a result arriving while scrolled down is on screen at full size;
no output is shown twice."""
from pathlib import Path

import pytest

from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, running_app

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
VIEW = {"width": 1366, "height": 768}
# tab -> (photo, main control, Edit)
TABS = {"SDEdit (baseline)": ("#sdedit-photo", "#sdedit-prompt", "#sdedit-run"),
        "pix2pix-zero": ("#p2pz-photo", "#p2pz-target", "#p2pz-run"),
        "ITO (text, scribble, pose)": ("#ito-photo", "#ito-prompt", "#ito-run"),
        "IIR-Net": ("#iir_net-photo", "#iir-net-prompt", "#iir-net-run"),
        "iEdit": ("#iedit-photo", "#iedit-prompt", "#iedit-run"),
        "LayerDiffusion": ("#layer_diffusion-photo", "#ld-text", "#ld-run")}


@pytest.fixture(scope="module")
def page(tiny_models):
    from playwright.sync_api import sync_playwright

    tiny_models.sd()
    with running_app(tiny_models) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEW)
        page.goto(url)
        page.wait_for_selector("#sdedit-run")
        yield page
        browser.close()


@pytest.mark.parametrize("tab", list(TABS))
def test_photo_main_control_and_edit_fit_one_screen(page, tab, artifacts):
    page.get_by_role("tab", name=tab).click()
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(500)
    for selector in TABS[tab]:
        box = page.locator(selector).first.bounding_box()
        assert box is not None, f"{selector} is not rendered"
        assert box["y"] >= 0 and box["y"] + box["height"] <= VIEW["height"], (tab, selector, box)
    page.screenshot(path=str(artifacts / f"layout_{TABS[tab][2][1:]}.png"))


def test_the_result_arrives_in_view_while_scrolled_down_and_is_shown_once(page, artifacts):
    page.get_by_role("tab", name="SDEdit (baseline)").click()
    page.locator("#sdedit-photo input[type=file]").first.set_input_files(str(ROOT / "assets/examples/cat.png"))
    page.locator("#sdedit-prompt textarea").fill("a photo of a tiger")
    page.get_by_text("Advanced").first.click()
    page.get_by_label("DDIM steps", exact=False).first.fill("4")
    page.get_by_label("Resolution (longest side)", exact=False).first.fill("128")
    page.locator("#sdedit-run").click()
    page.mouse.wheel(0, 900)  # the person scrolls down to the settings while the edit runs
    page.wait_for_selector("text=unet_evals", timeout=180_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(artifacts / "layout_result_in_view.png"))
    compare = page.evaluate("""() => Array.from(document.querySelectorAll('.result-compare'))
        .filter(e => e.offsetParent !== null).map(e => e.getBoundingClientRect().toJSON())""")
    assert len(compare) == 1, compare
    box = compare[0]
    assert box["top"] >= 0 and box["bottom"] <= VIEW["height"] and box["height"] > 150, box
    assert page.evaluate("window.scrollY") > 300  # the page did scroll; the column stayed


def test_no_output_is_shown_twice(page):
    page.get_by_role("tab", name="ITO (text, scribble, pose)").click()
    for hidden in ("#ito-mask", "#ito-guidance", "#ito-edit"):
        assert not page.locator(hidden).is_visible()
    page.get_by_role("tab", name="pix2pix-zero").click()
    assert not page.locator("#p2pz-reconstruction").is_visible()
