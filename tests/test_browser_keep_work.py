"""The mask editor and History never lose the user's work, in headless Chromium at 1366x768 on the
tiny profile (issue 15):

- (2) SAM clicks survive the editor re-sending the same photo (Gradio 6.31's ImageEditor fires
  "upload" again when Python sets its value or it re-mounts): the next background click adds to
  the object click instead of failing with "only negative clicks given". Choosing the same file
  again stands in for the re-sent photo (the mask stays in the editor too). On the 2-core test
  machine the spontaneous re-fire did not wipe the clicks on the old code either, so this test
  guards the behaviour rather than reproducing the report. (It was skipped as an open bug: its
  background click landed on the preview's letterbox margin, where Gradio sends no event; clicks
  are now placed on the photo itself.);
- (3) iEdit edits inside the mask on screen, and "Mask the edit term" fills that same mask;
- (4) the results gallery serves the saved PNG with its settings, and History restores the iEdit
  tab so Edit gives the same pixels;
- (9) a file that is not an image, a 10x10 image and painting with no photo are refused where they
  happen, with a readable message; a large photo is downscaled on upload and says so.

Screenshots: tests/artifacts/keep_work_*.png."""
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import history
from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, running_app

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
CAT = ROOT / "assets" / "examples" / "cat.png"
VIEWPORT = {"width": 1366, "height": 768}
PREVIEW_STATE = ("(() => { const i = document.querySelector('#%s-preview img'); return i ? {src: i.src.slice(-60), "
                 "loading: i.loading, complete: i.complete, naturalWidth: i.naturalWidth, "
                 "top: Math.round(i.getBoundingClientRect().top)} : null; })()")
TABS = {"sdedit": "SDEdit (baseline)", "iedit": "iEdit", "segment": "Segment"}


@pytest.fixture(scope="module")
def studio(tiny_models, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    tiny_models.sd()  # load before the browser starts waiting
    outputs = tmp_path_factory.mktemp("keep-work-outputs")
    with running_app(tiny_models, outputs=outputs) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser, url, outputs
        browser.close()


def _open(studio, tab):
    browser, url, _ = studio
    page = browser.new_page(viewport=VIEWPORT)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#sdedit-photo")
    if tab != "sdedit":  # the first tab is open already
        page.get_by_role("tab", name=TABS[tab]).click()
    page.wait_for_selector(f"#{tab}-photo")
    page.wait_for_timeout(500)
    return page


def _settled(page, timeout=120_000):
    """No event of the page is pending (no visible progress tracker)."""
    page.wait_for_function("document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0",
                           timeout=timeout)
    page.wait_for_timeout(800)


def _upload(page, tab, path):
    page.locator(f"#{tab}-photo input[type=file]").first.set_input_files(str(path))


def _status(page, tab):
    return page.inner_text(f"#{tab}-mask-status")


def _message(page, tab):
    return page.inner_text(f"#{tab}-select-message")


def _clicks(page, tab):
    _refine_open(page, tab)
    return page.eval_on_selector(f"#{tab}-clicks textarea, #{tab}-clicks input", "e => e.value")


def _toasts(page):
    return " | ".join(page.locator(".toast-body").all_inner_texts())


def _wait_text(page, selector, text, timeout=120_000):
    page.wait_for_function(f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}})"
                           f".innerText.includes({json.dumps(text)})", timeout=timeout)


def _wait_toast(page, text, timeout=60_000):
    page.wait_for_function("Array.from(document.querySelectorAll('.toast-body')).some(t => t.innerText.includes("
                           f"{json.dumps(text)}))", timeout=timeout)


def _refine_open(page, tab):
    """The selection tools may fold into "Select or refine the region" (f"{tab}-refine"): open it."""
    if page.locator(f"#{tab}-refine").count() and not page.locator(f"#{tab}-clicks").first.is_visible():
        page.locator(f"#{tab}-refine").get_by_text("Select or refine the region").first.click()
        page.wait_for_selector(f"#{tab}-clicks", state="visible", timeout=30_000)


def _click_preview(page, tab, fx, fy):
    """Click the preview at (fx, fy) of the photo itself: the image is letterboxed in its box (a click
    on the margin is not a click on the photo, and Gradio sends no event for it)."""
    _refine_open(page, tab)
    img = page.locator(f"#{tab}-preview img").first
    img.scroll_into_view_if_needed()
    page.wait_for_function("(sel) => { const i = document.querySelector(sel); "
                           "return !!i && i.complete && i.naturalWidth > 0; }", arg=f"#{tab}-preview img",
                           timeout=60_000)  # the preview is loaded (not being replaced)
    box = img.bounding_box()
    natural = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    scale = min(box["width"] / natural[0], box["height"] / natural[1], 1)
    left, top = (box["width"] - natural[0] * scale) / 2, (box["height"] - natural[1] * scale) / 2
    img.click(position={"x": left + natural[0] * scale * fx, "y": top + natural[1] * scale * fy})


def _set_number(page, elem_id_or_label, value):
    box = (page.locator(f"#{elem_id_or_label} input[type=number]") if not " " in elem_id_or_label
           else page.get_by_label(elem_id_or_label, exact=False).first)
    box.fill(str(value))
    box.press("Enter")


# -- (2) ------------------------------------------------------------------------------------------

def test_sam_clicks_survive_the_editor_resending_its_photo(studio, artifacts):
    tab = "segment"
    page = _open(studio, tab)
    _upload(page, tab, CAT)
    _wait_text(page, f"#{tab}-mask-status", "Nothing selected")
    _settled(page)
    _click_preview(page, tab, 0.5, 0.5)  # an object click
    _wait_text(page, f"#{tab}-select-message", "SAM mask for 1 object")
    _settled(page)
    object_click = _clicks(page, tab)
    assert object_click.endswith(",+")
    selected = _status(page, tab)
    assert "covers" in selected
    # The editor sends the same photo again (as it does after Python sets its value, or on re-mount;
    # choosing the file again also wipes the editor's layer in the browser).
    _upload(page, tab, CAT)
    page.wait_for_timeout(3000)  # the editor's upload and change events (no progress shown) have run
    _settled(page)
    assert _clicks(page, tab) == object_click, "the object click was wiped"
    assert "SAM mask for 1 object" in _message(page, tab)
    _wait_text(page, f"#{tab}-mask-status", selected, timeout=60_000)  # the mask is still in the editor
    page.wait_for_timeout(1500)
    _settled(page)
    # The next click, on the background, adds to it.
    page.locator(f"#{tab}-click-mode label", has_text="background").click()
    page.wait_for_timeout(500)
    _click_preview(page, tab, 0.05, 0.05)
    try:
        page.wait_for_function(f"document.querySelector('#{tab}-select-message').innerText.includes('background "
                               f"click') && !document.querySelector('#{tab}-select-message').innerText.includes("
                               "'and 0 background') || document.querySelectorAll('.toast-body').length > 0",
                               timeout=120_000)
        _settled(page)
    finally:
        page.screenshot(path=str(artifacts / "keep_work_clicks.png"))
    assert "1 object and 1 background" in _message(page, tab), (_message(page, tab), _toasts(page))
    assert "only negative clicks" not in _toasts(page)
    assert _clicks(page, tab).startswith(object_click + " ")
    assert not page.errors, page.errors
    page.close()


# -- (3) and (4) -------------------------------------------------------------------------------------

def _iedit_settings(page):
    page.locator("#iedit-run").locator("xpath=preceding::*[normalize-space()='Advanced'][1]").click()
    for label, value in (("Results (one batch)", 1), ("DDIM steps", 3), ("Resolution (longest side)", 64)):
        box = page.get_by_label(label, exact=False).first
        box.fill(str(value))
        box.press("Enter")
    page.locator("#iedit-prompt textarea").fill("a photo of a tiger")
    page.locator("#iedit-term textarea").fill("cat")


def _result_pngs(page):
    """The bytes the results gallery serves (what its download button gives)."""
    srcs = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.src).filter(s => s.includes('result_'))")
    return [page.request.get(src).body() for src in srcs]


def _coverage(status: str) -> float:
    return float(status.split("covers ")[1].split("%")[0]) / 100


def test_iedit_edits_the_mask_on_screen_and_history_restores_it(studio, artifacts):
    tab = "iedit"
    _, _, outputs = studio
    page = _open(studio, tab)
    _upload(page, tab, CAT)
    _wait_text(page, f"#{tab}-mask-status", "Nothing selected")
    _settled(page)
    _iedit_settings(page)
    # A selection on screen: SAM clicks on the cat's face (the shared editor).
    _click_preview(page, tab, 0.5, 0.5)
    _wait_text(page, f"#{tab}-select-message", "SAM mask")
    _settled(page)
    on_screen = _coverage(_status(page, tab))
    assert 0 < on_screen < 1
    page.locator("#iedit-run").click()
    _wait_text(page, "body", "unet_evals", timeout=240_000)
    _settled(page)
    page.screenshot(path=str(artifacts / "keep_work_iedit.png"), full_page=True)
    body = page.inner_text("body")
    assert re.search(r"mask_source\W+brush", body)
    coverage = float(re.search(r"mask_coverage\W+([0-9.]+)", body).group(1))
    assert coverage == pytest.approx(on_screen, abs=0.06), (coverage, on_screen)  # at 64 px, not 451 px

    # (4) The gallery serves the saved PNG: its settings restore the tab.
    saved = history.recent(outputs)
    assert saved
    served = _result_pngs(page)
    assert served, "the results gallery shows no saved PNG"
    settings = history.read_settings(Image.open(io.BytesIO(served[0])))
    assert settings["method"] == "iedit" and settings["params"]["prompt"] == "a photo of a tiger"
    first = np.asarray(Image.open(io.BytesIO(served[0])).convert("RGB"))

    # "Mask the edit term" fills the same editor (CLIPSeg, threshold 0: everything).
    page.get_by_label("CLIPSeg mask threshold", exact=False).first.fill("0")
    page.get_by_label("CLIPSeg mask threshold", exact=False).first.press("Enter")
    page.locator("#iedit-fill").click()
    _wait_text(page, f"#{tab}-select-message", "CLIPSeg")
    _settled(page)
    assert "whole photo" in _status(page, tab)
    page.screenshot(path=str(artifacts / "keep_work_iedit_fill.png"), full_page=True)

    # History: drop the first result's PNG (another mask is on screen now); Edit gives the same pixels.
    page.get_by_role("tab", name="History").click()
    page.locator("#history-drop input[type=file]").set_input_files(str(saved[0]))
    page.wait_for_selector("#iedit-run", state="visible", timeout=60_000)
    _wait_text(page, f"#{tab}-mask-status", "covers", timeout=60_000)
    _settled(page)
    restored = _coverage(_status(page, tab))
    assert restored == pytest.approx(on_screen, abs=0.005), (restored, on_screen)
    page.screenshot(path=str(artifacts / "keep_work_restored.png"), full_page=True)
    page.locator("#iedit-run").click()
    for _ in range(480):
        if len(history.recent(outputs)) >= 2 or "Error" in _toasts(page):
            break
        page.wait_for_timeout(500)
    _settled(page)
    newest = history.recent(outputs)[0]
    assert newest != saved[0], _toasts(page)
    again = np.asarray(Image.open(newest).convert("RGB"))
    assert np.array_equal(first, again)
    assert not page.errors, page.errors
    page.close()


# -- (9) ----------------------------------------------------------------------------------------------

def test_bad_and_big_uploads_are_answered_on_upload(studio, artifacts, tmp_path):
    tab = "sdedit"
    page = _open(studio, tab)
    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_text("this is a text file renamed .png\n" * 20)
    _upload(page, tab, not_an_image)
    _wait_toast(page, "'holiday.png' is not an image")
    assert "is not an image this studio can read" in _message(page, tab)
    page.screenshot(path=str(artifacts / "keep_work_not_an_image.png"))

    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (10, 10), "red").save(tiny)
    _upload(page, tab, tiny)
    _wait_toast(page, "at least 64 px")
    _wait_text(page, f"#{tab}-mask-status", "Upload a photo", timeout=30_000)  # the editor is emptied
    _settled(page)
    assert "10x10" in _message(page, tab) and "Upload a photo" in _status(page, tab)
    page.screenshot(path=str(artifacts / "keep_work_too_small.png"))

    # Just over the limit (a 12-megapixel photo behaves the same, only slower in a loaded CI browser).
    big = tmp_path / "big.jpg"
    y, x = np.mgrid[0:800, 0:1200]
    Image.fromarray(np.stack([x * 255 // 1200, y * 255 // 800, (x + y) * 255 // 2000], -1).astype(np.uint8)).save(
        big, quality=90)
    page.reload()
    page.wait_for_selector(f"#{tab}-photo")
    _upload(page, tab, big)
    _wait_text(page, f"#{tab}-select-message", "The photo was 1200x800; it was downscaled to 1024x683",
               timeout=240_000)
    _settled(page)
    _refine_open(page, tab)  # the preview is in the folded selection tools
    # The editor sends its "change" for the chosen file late, after "upload" has answered, still
    # carrying the 1200 px photo: on the old code that change put the 1200 px photo in the preview
    # (CI failed here; reproduced 3 of 3 with a page-event log). Gradio's preview <img> is
    # loading="lazy", so the test scrolls to it, as a person would to see it.
    page.locator(f"#{tab}-preview").first.scroll_into_view_if_needed()
    seen = "(document.querySelector('#%s-preview img') || {}).naturalWidth" % tab
    try:
        page.wait_for_function(f"{seen} === 1024", timeout=120_000)  # the photo every later step works on
    except Exception as exc:
        raise AssertionError(
            f"the preview is not the 1024 px photo: naturalWidth {page.evaluate(seen)!r}, img "
            f"{page.evaluate(PREVIEW_STATE % tab)}, status {_status(page, tab)!r}, page errors {page.errors}") from exc
    finally:
        page.screenshot(path=str(artifacts / "keep_work_big.png"))
    # Gradio's own editor logs the file it could not decode and, on a loaded machine, may trip over
    # its own canvas when its value is replaced while it is still drawing (Python empties it after
    # the 10x10 photo and puts the downscaled photo in it); nothing else may fail on the page.
    gradio_own = ("could not be decoded", "reading 'reset_layers'", "reading 'dimensions'")
    assert [e for e in page.errors if not any(g in e for g in gradio_own)] == [], page.errors
    page.close()


def test_painting_with_no_photo_is_refused(studio, artifacts):
    tab = "sdedit"
    page = _open(studio, tab)
    canvas = page.locator(f"#{tab}-photo canvas").first
    canvas.scroll_into_view_if_needed()
    page.locator(f"#{tab}-photo button[aria-label='Brush']").first.click()
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + 5 * i, y0 + 3 * i)
    page.mouse.up()
    _wait_toast(page, "Upload a photo first")
    _settled(page)
    assert "Upload a photo first" in _status(page, tab) and "64x64" not in _status(page, tab)
    page.locator(f"#{tab}-prompt textarea").fill("a photo of a tiger")
    page.locator(f"#{tab}-run").click()
    _wait_toast(page, "there is no photo under these strokes")
    page.screenshot(path=str(artifacts / "keep_work_paint_first.png"))
    assert "unet_evals" not in page.inner_text("body")  # no edit of a blank canvas
    page.close()
