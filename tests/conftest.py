"""Shared fixtures: tiny random models built once per test session, loaded through the same
`from_pretrained` code as real weights; the hub is never asked (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"

# One thread: tiny models gain nothing from more, and the app's server threads, Chromium and
# the test process share two cores (two threads were up to 10x slower under that load).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: needs real weights or a GPU; set RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """Where tiny models are written once per session (or DES_TEST_CACHE to reuse between runs)."""
    reuse = os.environ.get("DES_TEST_CACHE")
    return Path(reuse) if reuse else tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_models(model_dir):
    """A ModelCache on the tiny profile, on the CPU, shared by every test of the session."""
    from engine.models import ModelCache

    return ModelCache("tiny", device="cpu", cache_dir=model_dir)


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """The example cat photo at 128 px on its longest side (96x128 after rounding: 128x88)."""
    from engine.core.image import load_image

    return load_image(ROOT / "assets" / "examples" / "cat.png", max_side=128)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
