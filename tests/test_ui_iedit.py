"""The iEdit tab through gradio_client on the tiny profile: four results with their seeds, picking one
for the before/after slider, the mode badge (base / fine-tuned with a checkpoint the training script
wrote), and readable errors."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.ui_helpers import ROOT, editor_payload, running_app

CAT = ROOT / "assets" / "examples" / "cat.png"


@pytest.fixture(scope="module")
def checkpoint(tiny_models, tmp_path_factory):
    """The folder of a 10-step iEdit fine-tuning run on one tiny pair."""
    from engine.train import iedit as trainer

    data = tmp_path_factory.mktemp("ui_iedit_data")
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        im = Image.new("RGB", (64, 64), (240, 240, 240))
        ImageDraw.Draw(im).ellipse((12, 12, 52, 52), fill=colour)
        im.save(data / f"{name}.png")
    (data / "pairs.jsonl").write_text(json.dumps({"source": "red.png", "target": "blue.png",
                                                  "edit_prompt": "a photo of a blue circle",
                                                  "target_diff": "blue circle"}) + "\n")
    out = tmp_path_factory.mktemp("ui_iedit_run")
    result = trainer.train(trainer.TrainConfig(pairs=str(data / "pairs.jsonl"), out=str(out), steps=10,
                                               resolution=64, save_every=10, overwrite=True), tiny_models,
                           progress=False)
    assert result.eval_loss_end < result.eval_loss_start
    return str(out)


@pytest.fixture(scope="module")
def client(tiny_models):
    from gradio_client import Client

    with running_app(tiny_models) as url:
        yield Client(url, verbose=False)


def _payload(tmp_path, painted=True):
    from gradio_client import handle_file

    payload = editor_payload(CAT)
    if painted:
        photo = Image.open(CAT)
        layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
        layer.paste((255, 255, 255, 255), (0, 0, photo.width // 2, photo.height))
        layer.save(tmp_path / "layer.png")
        payload["layers"] = [handle_file(str(tmp_path / "layer.png"))]
    return payload


def _closest(path, arrays) -> int:
    shown = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return int(np.argmin([np.abs(shown - a.astype(np.float32)).mean() for a in arrays]))


def _edit(client, tmp_path, **kw):
    args = dict(editor=_payload(tmp_path), grow=0, feather=0, invert=False, whole=False,
                prompt="a photo of a tiger", term="cat", strength=0.7, checkpoint="", num_results=4, steps=3, cfg=7.5, threshold=0.5, resolution=96,
                seed=11)
    args.update(kw)
    return client.predict(*args.values(), api_name="/iedit")


def test_four_results_with_seeds_and_pick_one(client, tmp_path):
    results, compare, intermediates, details, badge, shown = _edit(client, tmp_path)
    assert len(results) == 4 and all(item["caption"].startswith("seed 11") for item in results)
    arrays = [np.asarray(Image.open(item["image"])) for item in results]
    assert not np.array_equal(arrays[0], arrays[1])
    assert details["params"]["mode"] == "base" and "base model (no iEdit fine-tuning)" in badge
    assert [item["caption"] for item in intermediates] == ["mask"] and shown == 1
    assert _closest(compare[1], arrays) == 0  # the slider shows result 1 (stored lossy: nearest, not equal)
    before, after = client.predict(3, api_name="/iedit_compare")
    assert _closest(after, arrays) == 2
    assert Image.open(before).size == Image.open(after).size


def test_checkpoint_from_training_loads_into_the_tab(client, checkpoint, tmp_path):
    results, _, _, details, badge, _ = _edit(client, tmp_path, checkpoint=checkpoint, num_results=1)
    assert details["params"]["mode"] == "fine-tuned" and "fine-tuned iEdit" in badge and len(results) == 1


def _fill(client, editor, term="cat", method="CLIPSeg", threshold=0.0):
    """'Mask the edit term': CLIPSeg (or Grounded-SAM) of the term, painted into the photo's editor."""
    return client.predict(editor, term, method, 0.3, 0.25, threshold, False, 0, 0, False, False,
                          api_name="/iedit_fill_mask")


def _as_payload(value):
    from gradio_client import handle_file

    return {"background": handle_file(value["background"]), "composite": handle_file(value["composite"]),
            "layers": [handle_file(v) for v in value["layers"]]}


def test_the_edit_term_fills_the_mask_on_screen_and_the_edit_uses_it(client, tmp_path):
    value, overlay, status, message, clicks = _fill(client, _payload(tmp_path, painted=False))
    assert message.startswith("CLIPSeg: 100.0%") and "whole photo" in status  # threshold 0: everything
    _, _, _, details, _, _ = _edit(client, tmp_path, editor=_as_payload(value), num_results=1)
    assert details["params"]["mask_source"] == "brush" and details["params"]["mask_coverage"] == 1.0


def test_the_painted_mask_is_the_one_used(client, tmp_path):
    """The left half is painted: the edit uses exactly that, whatever CLIPSeg would find for the term."""
    _, _, _, details, _, _ = _edit(client, tmp_path, num_results=1, resolution=64)
    assert details["params"]["mask_source"] == "brush"
    assert details["params"]["mask_coverage"] == pytest.approx(0.5, abs=0.02)


def test_nothing_on_screen_is_refused_and_names_the_fill_button(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Mask the edit term"):
        _edit(client, tmp_path, editor=_payload(tmp_path, painted=False), num_results=1)
    value, _, status, message, _ = _fill(client, _payload(tmp_path, painted=False), threshold=1.0)
    assert "Nothing in the photo scored above the CLIPSeg threshold 1" in message and "Nothing selected" in status


@pytest.mark.parametrize("kw, message", [
    ({"editor": None}, "Upload a photo"),
    ({"prompt": ""}, "edit prompt is empty"),
    ({"checkpoint": "/nowhere/iedit"}, "no checkpoint at"),
])
def test_bad_input_is_a_readable_error(client, tmp_path, kw, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _edit(client, tmp_path, num_results=1, **kw)
