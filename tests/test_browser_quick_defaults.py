"""Issue 15 (1): on the tiny profile every tab starts from quick defaults (engine/profile_defaults.py),
says so under its advanced settings, and a default run (upload, type, Edit, nothing else touched)
answers with the quick settings named in its notes. The seconds are in bench/RESULTS.md
(python -m bench.tiny_defaults), never asserted here."""
from pathlib import Path

import pytest

from engine.methods import sdedit
from engine.profile_defaults import QUICK, defaults, describe
from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, running_app


def test_quick_defaults_change_only_the_tiny_profile():
    assert defaults(sdedit, "sd15")["steps"] == 50 and defaults(sdedit, "sd15")["resolution"] == 512
    assert defaults(sdedit, "sd15-shape") == defaults(sdedit, "sd15")
    assert defaults(sdedit, "tiny")["steps"] == QUICK["sdedit"]["steps"] < 50
    assert describe(sdedit, "sd15") == "" and "paper 512" in describe(sdedit, "tiny")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_a_default_sdedit_run_uses_and_names_the_quick_defaults(tiny_models, artifacts):
    from playwright.sync_api import sync_playwright

    tiny_models.sd()
    with running_app(tiny_models) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(url)
        page.wait_for_selector("#sdedit-run")
        page.get_by_text("Advanced").first.click()
        note = page.locator(".quick-defaults").first
        note.wait_for(timeout=10_000)
        assert "steps 20 (paper 50)" in note.inner_text() and "resolution 256 (paper 512)" in note.inner_text()
        page.locator("#sdedit-photo input[type=file]").first.set_input_files(str(ROOT / "assets/examples/cat.png"))
        page.locator("#sdedit-prompt textarea").fill("a photo of a tiger")
        page.locator("#sdedit-run").click()
        page.wait_for_selector("text=unet_evals", timeout=300_000)
        page.screenshot(path=str(artifacts / "quick_defaults.png"))
        body = page.locator("body").inner_text()
        assert "tiny profile's quick defaults: resolution 256 (paper 512), steps 20 (paper 50)" in body
        browser.close()
