"""The ITO tab answers gradio_client on the tiny profile: the photo's conditions on upload, edits by
pose and by scribble (a stroke layer, as the canvas sends it), History restoring both, and readable
errors."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.core import conditions as K
from engine.core.image import load_image
from tests.ui_helpers import ROOT, editor_payload, running_app

CAT = ROOT / "assets" / "examples" / "cat.png"
SIZE = load_image(CAT, 128).size  # the photo at resolution 128 (128x88)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def client(tiny_models, outputs):
    from gradio_client import Client

    with running_app(tiny_models, outputs=outputs) as url:
        yield Client(url, verbose=False)


def _edit(client, **kw):
    args = dict(editor=editor_payload(CAT), grow=0, feather=0, invert=False, whole=False,
                mask_mode="replace the estimated mask", conditions=["Pose"], caption="a cat", prompt="",
                scribble=None, scribble_source=None, pose_json="", pose_source="", lam=0.6, t_u=2, k=1, lr=0.1,
                encode_ratio=1.0, tau=0.1, mask_seeds=2, mask_encode_ratio=0.5, steps=3, cfg=7.5, control_scale=1.0, resolution=128, seed=3)
    args.update(kw)
    return client.predict(*args.values(), api_name="/ito")


def _moved(pose_text: str) -> str:
    data = json.loads(pose_text)
    flat = data["people"][0]["pose_keypoints_2d"]
    flat[12], flat[13] = flat[12] + 6, flat[13] - 6  # RWrist
    return json.dumps(data)


def test_prepare_fills_caption_canvas_and_pose(client):
    caption, prompt, canvas, source, html, pose_json, pose_source, notes = client.predict(
        editor_payload(CAT), 128, api_name="/ito_prepare")
    assert caption and prompt == caption
    assert Image.open(canvas["background"]).size == SIZE and len(canvas["layers"]) == 1
    layer = Image.open(canvas["layers"][0])
    assert layer.mode == "RGBA" and layer.getchannel("A").getextrema() == (0, 255)  # strokes on transparency
    assert Image.open(source).size == SIZE
    assert K.pose_from_json(pose_json).size == SIZE and pose_json == pose_source
    assert json.loads(html)["pose"] == json.loads(pose_json)
    assert "default standing skeleton" in notes and "edge-based fallback" in notes


def test_pose_edit_returns_mask_guidance_and_edit(client):
    _, _, _, _, _, pose_json, _, _ = client.predict(editor_payload(CAT), 128, api_name="/ito_prepare")
    mask, guidance, edited, results, compare, intermediates, details, caption = _edit(
        client, pose_json=_moved(pose_json), pose_source=pose_json)
    assert Image.open(edited).size == SIZE and Image.open(guidance).size == SIZE and Image.open(mask).size == SIZE
    # 3 steps each for inversion, guidance, its inversion and the edit; round(0.5 * 3) = 2 mask steps
    assert details["unet_evals"] == {"forward": 4 * 3 + 2, "backward": 0}
    assert details["params"]["mask_encode_ratio"] == 0.5 and details["params"]["mask_steps"] == 2
    assert details["params"]["conditions"] == ["pose"]
    assert {item["caption"] for item in intermediates} == {"mask", "guidance", "condition_source", "condition_edit"}
    assert caption == "a cat"


def test_scribble_layer_edit_with_lambda_one(client, tmp_path):
    from gradio_client import handle_file

    _, _, canvas, source, _, _, _, _ = client.predict(editor_payload(CAT), 128, api_name="/ito_prepare")
    layer = Image.open(canvas["layers"][0]).convert("RGBA")
    ImageDraw.Draw(layer).line((10, 10, 100, 60), fill=(30, 64, 255, 255), width=4)  # a new stroke
    layer.save(tmp_path / "layer.png")
    payload = {"background": handle_file(canvas["background"]), "layers": [handle_file(str(tmp_path / "layer.png"))],
               "composite": handle_file(canvas["background"])}
    mask, guidance, edited, *_, details, _ = _edit(client, conditions=["Scribble"], scribble=payload,
                                                   scribble_source=handle_file(source), lam=1.0)
    assert guidance is None and Image.open(edited).size == SIZE
    # inversion and edit, 3 steps each, + round(0.5 * 3) = 2 mask steps; no guidance pass at lambda = 1
    assert details["unet_evals"]["forward"] == 2 * 3 + 2 and details["params"]["changed"] == {"text": False,
                                                                                          "scribble": True}


@pytest.mark.parametrize("kw, message", [
    ({"conditions": ["Text"], "prompt": "a cat"}, "no condition changed"),
    ({"conditions": ["Pose"], "pose_json": json.dumps({"canvas_width": 128, "canvas_height": 88, "people": [
        {"pose_keypoints_2d": [300, 10, 1] + [0, 0, 0] * 17}]})}, "outside the 128x88 canvas"),
    ({"conditions": ["Scribble"]}, "scribble canvas is empty"),
    ({"conditions": ["Text"], "prompt": "a dog", "lam": 3}, "lambda|greater than maximum"),
    ({"editor": None}, "Upload a photo"),
])
def test_bad_input_is_a_readable_error(client, kw, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _edit(client, **kw)


def test_history_restores_the_scribble_and_pose_and_reproduces_the_edit(client, outputs, tmp_path):
    """A saved ITO result carries its scribbles (PNG chunks) and poses (settings): restoring it fills
    the canvas, the pose editor and the ticked conditions, and Edit gives the same pixels again."""
    from gradio_client import handle_file

    from engine import history

    _, _, canvas, source, _, pose_json, _, _ = client.predict(editor_payload(CAT), 128, api_name="/ito_prepare")
    layer = Image.open(canvas["layers"][0]).convert("RGBA")
    ImageDraw.Draw(layer).line((10, 10, 100, 60), fill=(30, 64, 255, 255), width=4)
    layer.save(tmp_path / "layer.png")
    moved = _moved(pose_json)
    payload = {"background": handle_file(canvas["background"]), "layers": [handle_file(str(tmp_path / "layer.png"))],
               "composite": handle_file(canvas["background"])}
    before = set(history.recent(outputs, limit=1000))
    first = _edit(client, conditions=["Text", "Scribble", "Pose"], prompt="a dog", scribble=payload,
                  scribble_source=handle_file(source), pose_json=moved, pose_source=pose_json, seed=11)
    saved = [p for p in history.recent(outputs, limit=1000) if p not in before]
    assert len(saved) == 1
    assert {"image", "scribble", "scribble_source"} <= set(history.read_images(saved[0]))

    restored = client.predict(handle_file(str(saved[0])), api_name="/history_restore")
    i = restored.index(["Text", "Scribble", "Pose"])
    # The photo editor comes before the mask editor's settings and the ticked conditions.
    editor = next(v for v in reversed(restored[:i]) if isinstance(v, dict) and "background" in v)
    canvas2, source2, _, pose2, pose_source2, notes, loaded = restored[i + 1:i + 8]
    assert "Restored from History" in notes and loaded.endswith("@128")
    assert K.pose_from_json(pose2) == K.pose_from_json(moved)
    assert K.pose_from_json(pose_source2) == K.pose_from_json(pose_json)
    strokes = np.asarray(Image.open(canvas2["layers"][0]).getchannel("A")) > 0
    drawn = np.asarray(layer.getchannel("A")) > 0
    assert strokes.shape == drawn.shape and (strokes == drawn).mean() > 0.99
    settings = restored[0]["params"]
    payload2 = {"background": handle_file(canvas2["background"]), "layers": [handle_file(canvas2["layers"][0])],
                "composite": handle_file(canvas2["background"])}
    again = _edit(client, editor=editor_payload(editor["background"]), conditions=["Text", "Scribble", "Pose"],
                  caption=settings["caption"], prompt=settings["prompt"], scribble=payload2,
                  scribble_source=handle_file(source2), pose_json=pose2, pose_source=pose_source2,
                  seed=restored[0]["seed"])
    assert np.array_equal(np.asarray(Image.open(first[2])), np.asarray(Image.open(again[2])))
