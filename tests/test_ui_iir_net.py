"""The IIR-Net tab through gradio_client: training-free by default, trained with a checkpoint that
the training script wrote, the mode badge, and readable errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.ui_helpers import ROOT, editor_payload, running_app

CAT = ROOT / "assets" / "examples" / "cat.png"


@pytest.fixture(scope="module")
def checkpoint(tiny_models, tmp_path_factory):
    """A 4-step IIR-Net ControlNet trained on two tiny captioned images."""
    from engine.train import iir_net as trainer

    data = tmp_path_factory.mktemp("ui_iir_data")
    rng = np.random.default_rng(0)
    for i, caption in enumerate(["a red cat", "a blue car"]):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(caption)
    out = tmp_path_factory.mktemp("ui_iir_ckpt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = trainer.main(["--data", str(data), "--out", str(out), "--steps", "4", "--batch", "2", "--lr", "1e-3",
                             "--resolution", "64", "--roi", "whole", "--quiet"], models=tiny_models)
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return str(out)


@pytest.fixture(scope="module")
def client(tiny_models, monkeypatch_module):
    from gradio_client import Client

    with running_app(tiny_models) as url:
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DES_IIR_CHECKPOINT", raising=False)
        yield mp


def _payload(tmp_path):
    """The cat with its left half painted: the brushed RoI (no Grounded-SAM needed)."""
    from gradio_client import handle_file

    photo = Image.open(CAT).convert("RGB")
    layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, photo.width // 2, photo.height))
    layer.save(tmp_path / "layer.png")
    payload = editor_payload(CAT)
    payload["layers"] = [handle_file(str(tmp_path / "layer.png"))]
    return payload


def _edit(client, editor, **kw):
    args = dict(editor=editor, grow=0, feather=0, invert=False, whole_image=False, prompt="a white cat", roi="",
                noise=200, canny_low=100,
                canny_high=200, steps=4, cfg=9.0, resolution=128, seed=3, checkpoint="")
    args.update(kw)
    return client.predict(*args.values(), api_name="/iir_net")


def test_training_free_by_default_with_the_badge(client, tmp_path):
    results, (before, after), intermediates, details, badge = _edit(client, _payload(tmp_path))
    assert len(results) == 1 and Image.open(after).size == Image.open(before).size == (128, 88)
    assert details["params"]["mode"] == "training-free" and details["params"]["roi_source"] == "mask"
    assert "training-free approximation" in badge
    assert [item["caption"] for item in intermediates] == ["roi", "removal", "edges"]
    assert details["seed"] == 3 and details["unet_evals"]["forward"] == 3  # strength 0.68 of 4 steps


def test_roi_found_from_the_prompt_or_the_whole_image(client):
    *_, details, _ = _edit(client, editor_payload(CAT), prompt="a green cat", steps=2)
    assert details["params"]["roi_source"] == "grounded-sam" and details["params"]["roi_text"] == "cat"
    *_, details, _ = _edit(client, editor_payload(CAT), prompt="winter", whole_image=True, steps=2)
    assert details["params"]["roi_source"] == "whole image" and details["params"]["roi_coverage"] == 1.0


def test_trained_checkpoint_from_the_field(client, checkpoint, tmp_path):
    *_, details, badge = _edit(client, _payload(tmp_path), checkpoint=checkpoint)
    assert details["params"]["mode"] == "trained" and "trained IIR-Net" in badge and checkpoint in badge
    assert details["unet_evals"]["forward"] == 4


@pytest.mark.parametrize("kw, message", [
    ({"editor": None}, "Upload a photo"),
    ({"prompt": "sunset"}, "names no object"),
    ({"noise": 5000}, "noise level|greater than maximum"),
    ({"checkpoint": str(ROOT / "assets")}, "config.json is missing"),
])
def test_bad_input_is_a_readable_error(client, kw, message):
    from gradio_client.exceptions import AppError

    kw = dict(kw)
    kw.setdefault("editor", editor_payload(CAT))
    with pytest.raises(AppError, match=message):
        _edit(client, **kw)


def test_a_checkpoint_sets_the_canny_sliders_it_was_trained_with(tmp_path):
    """The engine refuses thresholds that differ from the checkpoint's iir_net.json, so choosing a
    checkpoint in the tab moves the sliders to them (and an empty field leaves them alone)."""
    import json

    from ui.tabs.iir_net import checkpoint_changed

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "iir_net.json").write_text(json.dumps({"max_noise": 600, "canny_low": 50, "canny_high": 150}))
    (folder / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel", "conditioning_channels": 4}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")  # checked for, not read, here
    badge, low, high = checkpoint_changed(str(folder))
    assert (low, high) == (50, 150) and "trained" in badge.lower()
    badge, low, high = checkpoint_changed("")
    assert low == {"__type__": "update"} and high == {"__type__": "update"}


def test_the_badge_claims_the_trained_mode_only_for_a_usable_checkpoint(checkpoint, tmp_path):
    """A typed path that is no checkpoint says why (it said "trained" for any text); a real one and a
    hub id (checked when it loads) say trained; an empty field says training-free."""
    from ui.tabs.iir_net import badge_text

    for bad, why in ((tmp_path / "nowhere", "no checkpoint folder"), (ROOT / "assets", "config.json is missing")):
        text = badge_text(str(bad))
        assert "cannot be used" in text and why in text and "trained IIR-Net" not in text, text
    assert "trained IIR-Net" in badge_text(checkpoint)
    assert "trained IIR-Net" in badge_text("someone/iir-net-sd15")
    assert "training-free" in badge_text("")
