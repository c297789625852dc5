"""The pix2pix-zero tab: gradio_client on its endpoints (tiny profile), and a person's path in
headless Chromium (upload, caption appears, Edit, result visible, screenshot)."""
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, running_app

CAT = ROOT / "assets" / "examples" / "cat.png"
STEPS = 10


@pytest.fixture(scope="module")
def app_url(tiny_models):
    with running_app(tiny_models) as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _edit(client, **kw):
    from gradio_client import handle_file

    args = dict(photo=handle_file(str(CAT)), caption="a photo of a cat", source="cat", target="dog",
                source_sentences="", target_sentences="", xa=0.1, steps=STEPS, cfg=5.0, reg_lambda=20.0,
                reg_iters=5, resolution=96, seed=4)
    args.update(kw)
    return client.predict(*args.values(), api_name="/pix2pix_zero")


def test_edit_endpoint_and_the_cached_re_edit(client):
    results, compare, intermediates, details, reconstruction, caption = _edit(client, seed=11)
    assert len(results) == 1
    before, after = compare
    assert Image.open(after).size == Image.open(before).size == (96, 64)
    assert Image.open(reconstruction).size == (96, 64)
    assert {item["caption"] for item in intermediates} == {"reconstruction", "inverted_noise"}
    assert details["unet_evals"] == {"forward": 4 * STEPS, "backward": STEPS}
    assert caption == "a photo of a cat"
    # Another lambda_xa and another direction on the same photo: no inversion, no reconstruction.
    details = _edit(client, seed=11, xa=0.3)[3]
    assert details["unet_evals"] == {"forward": 2 * STEPS, "backward": STEPS}
    assert details["params"]["inversion_cached"] is True
    details = _edit(client, seed=11, xa=0.0, source="cat", target="cat wearing sunglasses")[3]
    assert details["unet_evals"] == {"forward": STEPS, "backward": 0}


def test_blip_writes_the_caption(client):
    from gradio_client import handle_file

    text = client.predict(handle_file(str(CAT)), 96, api_name="/pix2pix_zero_caption")
    assert isinstance(text, str) and text.strip()
    result = _edit(client, caption="")
    details, caption = result[3], result[5]
    assert caption == text and details["params"]["caption_source"] == "blip"


def test_pasted_sentences_through_the_api(client):
    details = _edit(client, source="", source_sentences="a cat on a sofa\na cat in a garden")[3]
    assert details["params"]["direction"]["source_sentences"] == 2


@pytest.mark.parametrize("kw, message", [
    ({"source": "", "target": "dog"}, "empty"),
    ({"source": "dog", "target": "dog"}, "same"),
    ({"target_sentences": "# nothing here"}, "no sentences"),
    ({"photo": None}, "Upload a photo"),
])
def test_bad_input_is_a_readable_error(client, kw, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _edit(client, **kw)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_in_headless_chromium(tiny_models, artifacts):
    from playwright.sync_api import sync_playwright

    with running_app(tiny_models) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url)
            page.get_by_role("tab", name="pix2pix-zero").click()
            page.wait_for_selector("#p2pz-run")
            page.get_by_text("Advanced").last.click()
            for elem, value in (("#p2pz-steps", STEPS), ("#p2pz-resolution", 128)):
                box = page.locator(f"{elem} input[type=number]")
                box.wait_for(state="visible")
                for attempt in range(3):  # a box typed into while the accordion still mounts can drop it
                    box.fill(str(value))
                    box.press("Enter")
                    try:
                        page.wait_for_function(f"document.querySelector('{elem} input[type=range]').value == "
                                               f"'{value}'", timeout=10_000)
                        break
                    except Exception:
                        if attempt == 2:
                            raise
            page.locator("#p2pz-photo input[type=file]").first.set_input_files(str(CAT))
            # BLIP writes the caption as soon as the photo arrives.
            page.wait_for_function("document.querySelector('#p2pz-caption textarea').value.length > 0",
                                   timeout=60_000)
            page.locator("#p2pz-direction input").click()
            page.get_by_role("option", name="horse → zebra").click()
            page.wait_for_function("document.querySelector('#p2pz-target textarea').value === 'zebra'",
                                   timeout=10_000)
            page.locator("#p2pz-run").click()
            page.wait_for_selector("text=unet_evals", timeout=120_000)
            assert page.locator("text=/\"forward\": ?%d/" % (4 * STEPS)).count() >= 1
            page.get_by_text("reconstruction", exact=True).first.wait_for(timeout=30_000)  # in the intermediates
            assert not page.locator("#p2pz-reconstruction").is_visible()  # not shown a second time
            shot = artifacts / "pix2pix_zero.png"
            page.screenshot(path=str(shot), full_page=True)
            assert page.locator("#fake-banner").is_visible()
            assert os.path.getsize(shot) > 10_000
        finally:
            browser.close()
