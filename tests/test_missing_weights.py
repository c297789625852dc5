"""Issue 15 (6): started as the README says (sd15) on a machine without the weights, the studio
says which models are missing and how to get them, at start-up and at Edit, and the CLI prints
one line and exits 2 (no 60-line traceback, no "OSError: ... config.json")."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models import APP_COMPONENTS, ModelCache, ModelUnavailable
from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, running_app


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """No weights anywhere: an empty hub cache, downloads forbidden."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for name in APP_COMPONENTS:
        monkeypatch.delenv(f"DES_MODEL_{name.upper()}", raising=False)
    return tmp_path


def test_missing_lists_every_absent_model_without_downloading(empty_hub):
    cache = ModelCache("sd15", device="cpu", overrides={"sd": str(empty_hub / "nowhere")})
    missing = cache.missing()
    assert set(missing) == set(APP_COMPONENTS)
    assert missing["sd"] == f"no folder at {empty_hub / 'nowhere'}"
    assert "HF_HUB_OFFLINE=1" in missing["blip"]
    assert ModelCache("tiny", device="cpu").missing() == {}  # random profiles build their own


def test_a_local_folder_counts_as_present(empty_hub):
    (empty_hub / "sd").mkdir()
    assert "sd" not in ModelCache("sd15", device="cpu", overrides={"sd": str(empty_hub / "sd")}).missing()


def test_loading_says_what_is_missing_and_the_ways_out(empty_hub):
    cache = ModelCache("sd15", device="cpu")
    with pytest.raises(ModelUnavailable) as info:
        cache.sd()
    message = str(info.value)
    assert "Stable Diffusion 1.5" in message and "stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "--model sd=FOLDER" in message and "DES_MODEL_SD" in message and "--profile tiny" in message
    assert "config.json" not in message and "\n" not in message
    assert cache.loaded() == []


def test_cli_without_weights_is_one_line_and_exit_2(empty_hub):
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "engine", "sdedit", "--image", str(ROOT / "assets/examples/cat.png"),
                          "--out", str(empty_hub / "out"), "--prompt", "a tiger", "--device", "cpu"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip() and "Warning" not in line
             and not line.startswith("  warnings.warn")]
    assert len(lines) == 1 and lines[0].startswith("error: Stable Diffusion 1.5"), out.stderr[-2000:]
    assert "--profile tiny" in lines[0] and "Traceback" not in out.stderr


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_the_app_shows_a_banner_and_edit_names_the_missing_model(empty_hub, artifacts):
    from playwright.sync_api import sync_playwright

    cache = ModelCache("sd15", device="cpu")
    with running_app(cache) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(url)
        page.wait_for_selector("#sdedit-run")
        banner = page.locator("#missing-banner")
        assert banner.is_visible()
        text = banner.inner_text()
        assert "Stable Diffusion 1.5" in text and "--profile tiny" in text and "--model NAME=FOLDER" in text
        page.locator("#sdedit-photo input[type=file]").first.set_input_files(str(ROOT / "assets/examples/cat.png"))
        page.locator("#sdedit-prompt textarea").fill("a photo of a tiger")
        page.locator("#sdedit-run").click()
        toast = page.get_by_text("could not be loaded", exact=False).first
        toast.wait_for(timeout=60_000)
        page.screenshot(path=str(artifacts / "missing_weights.png"))
        body = page.locator("body").inner_text()
        assert "could not be loaded" in body and "--profile tiny" in body
        assert "OSError" not in body and "config.json" not in body
        browser.close()
