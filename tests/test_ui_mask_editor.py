"""The shared mask editor: resolve_mask on synthetic brush layers, and the Segment tab's endpoints
(brushed mask round trip, text selection, SAM clicks) through gradio_client on the tiny profile."""
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from ui.mask_editor import ALPHA_THRESHOLD, editor_value, parse_clicks, preview, resolve_mask

W, H = 64, 48


def _photo(w=W, h=H):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _layer(box=(16, 12, 40, 36), size=(W, H), alpha=255):
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, alpha), box)
    return layer


def _editor(layers=(), photo=None):
    photo = photo or _photo()
    return {"background": photo.convert("RGBA"), "layers": list(layers), "composite": photo}


def _arr(mask):
    return np.asarray(mask, dtype=np.float32) / 255.0


# -- resolve_mask -------------------------------------------------------------------------------

def test_brushed_layer_is_the_mask():
    photo, mask = resolve_mask(_editor([_layer()]))
    assert photo.size == (W, H) and photo.mode == "RGB"
    assert mask.mode == "L" and mask.size == (W, H)
    m = _arr(mask)
    assert set(np.unique(m)) == {0.0, 1.0}  # binary until feathered
    assert m[12:36, 16:40].all() and m.sum() == 24 * 24


def test_grow_and_shrink_by_pixels():
    base = _arr(resolve_mask(_editor([_layer()]))[1])
    grown = _arr(resolve_mask(_editor([_layer()]), grow_px=3)[1])
    shrunk = _arr(resolve_mask(_editor([_layer()]), grow_px=-3)[1])
    assert (grown >= base).all() and grown.sum() > base.sum()
    assert (shrunk <= base).all() and shrunk.sum() < base.sum()
    assert grown[12, 13] == 1 and grown[12, 12] == 0  # 3 px to the left of the square, not 4
    assert shrunk[15:33, 19:37].all() and not shrunk[14, 20]


def test_feather_softens_only_the_edge():
    m = _arr(resolve_mask(_editor([_layer()]), feather_px=4)[1])
    soft = (m > 0) & (m < 1)
    assert soft.any()
    assert m[24, 28] == 1.0 and m[2, 2] == 0.0  # far inside / far outside keep their values
    ys, xs = np.nonzero(soft)
    assert xs.min() >= 16 - 4 and xs.max() < 40 + 4 and ys.min() >= 12 - 4 and ys.max() < 36 + 4


def test_invert_and_whole_image():
    base = _arr(resolve_mask(_editor([_layer()]))[1])
    inverted = _arr(resolve_mask(_editor([_layer()]), invert=True)[1])
    assert np.array_equal(inverted, 1 - base)
    whole = _arr(resolve_mask(_editor([_layer()]), grow_px=-5, invert=True, whole_image=True)[1])
    assert whole.shape == (H, W) and whole.min() == 1.0


def test_empty_and_full_masks_are_defined():
    photo, mask = resolve_mask(_editor([]))
    assert photo is not None and mask is None  # nothing selected: the tab decides (SDEdit: everywhere)
    assert resolve_mask(_editor([_layer(alpha=0)]))[1] is None
    with pytest.raises(gr.Error, match="Nothing is selected"):
        resolve_mask(_editor([]), required=True)
    full = _layer(box=(0, 0, W, H))
    assert _arr(resolve_mask(_editor([full]))[1]).min() == 1.0
    assert resolve_mask(_editor([full]), invert=True)[1] is None
    assert _arr(resolve_mask(_editor([]), invert=True)[1]).min() == 1.0
    assert resolve_mask(None) == (None, None)
    with pytest.raises(gr.Error, match="Upload a photo"):
        resolve_mask(None, required=True)


def test_layer_of_another_size():
    # Same aspect ratio (a 2x canvas): resized to the photo, nearest neighbour.
    big = _layer(box=(32, 24, 80, 72), size=(2 * W, 2 * H))
    assert np.array_equal(_arr(resolve_mask(_editor([big]))[1]), _arr(resolve_mask(_editor([_layer()]))[1]))
    # Another aspect ratio: a readable error, not a traceback.
    with pytest.raises(gr.Error, match=r"does not fit the photo.*30x30.*64x48"):
        resolve_mask(_editor([_layer(box=(0, 0, 10, 10), size=(30, 30))]))
    image, status = preview(_editor([_layer(box=(0, 0, 10, 10), size=(30, 30))]))
    assert image is None and "does not fit" in status


def test_faint_brush_edges_and_layers_union():
    faint = _layer(box=(0, 0, 8, 8), alpha=int(255 * ALPHA_THRESHOLD) - 10)
    translucent = _layer(box=(50, 0, 60, 10), alpha=153)  # the editor's own mask paint
    m = _arr(resolve_mask(_editor([_layer(), faint, translucent]))[1])
    assert m[0:8, 0:8].max() == 0 and m[0:10, 50:60].min() == 1 and m[12:36, 16:40].min() == 1


@pytest.mark.parametrize("kw, message", [({"grow_px": 10_000}, "Grow"), ({"feather_px": -1}, "Feather"),
                                         ({"grow_px": "a lot"}, "number of pixels")])
def test_settings_out_of_range(kw, message):
    with pytest.raises(gr.Error, match=message):
        resolve_mask(_editor([_layer()]), **kw)


def test_editor_value_round_trips_through_resolve():
    photo = _photo()
    target = np.zeros((H, W), np.float32)
    target[5:20, 30:60] = 1
    value = editor_value(photo, target)
    assert value["layers"][0].size == photo.size and value["composite"].size == photo.size
    assert np.array_equal(_arr(resolve_mask(value)[1]), target)
    image, status = preview(value)
    assert image.size == photo.size and "covers" in status


def test_parse_clicks():
    assert parse_clicks("10,20,+ 5,6,-;7,8") == [(10, 20, True), (5, 6, False), (7, 8, True)]
    with pytest.raises(gr.Error, match="x,y"):
        parse_clicks("10;20")


# -- the Segment tab through gradio_client ----------------------------------------------------------

@pytest.fixture(scope="module")
def client(tiny_models):
    from gradio_client import Client

    from tests.ui_helpers import running_app

    with running_app(tiny_models) as url:
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def cat(photo, tmp_path_factory):
    path = tmp_path_factory.mktemp("mask-editor") / "cat.png"
    photo.save(path)
    return path


def _payload(path, layers=()):
    from gradio_client import handle_file

    return {"background": handle_file(str(path)), "layers": [handle_file(str(p)) for p in layers],
            "composite": handle_file(str(path))}


def _layer_mask(value):
    return resolve_mask({"background": Image.new("RGB", Image.open(value["layers"][0]).size),
                         "layers": [Image.open(value["layers"][0])]})[1]


def test_segment_endpoint_round_trips_a_brushed_mask(client, cat, photo, tmp_path):
    w, h = photo.size
    _layer(box=(10, 20, 60, 70), size=(w, h)).save(tmp_path / "layer.png")
    from ui import components as C

    handed = lambda: set(C.HANDOUT_ROOT.glob("*/mask.png"))  # noqa: E731
    before = handed()
    mask_path, file_path, details = client.predict(_payload(cat, [tmp_path / "layer.png"]), 0, 0, False, False,
                                                   api_name="/segment")
    assert len(handed() - before) == 1  # written where old hand-outs are swept, not a new /tmp folder per click
    m = _arr(Image.open(mask_path).convert("L"))
    expected = np.zeros((h, w), np.float32)
    expected[20:70, 10:60] = 1
    assert np.array_equal(m, expected)
    assert file_path.endswith("mask.png") and np.array_equal(_arr(Image.open(file_path)), expected)
    assert details["binary"] and details["size"] == [w, h] and details["coverage"] == pytest.approx(expected.mean())
    # Invert + grow through the API act on the same mask.
    mask_path, _, details = client.predict(_payload(cat, [tmp_path / "layer.png"]), 2, 0, True, False,
                                           api_name="/segment")
    assert np.array_equal(_arr(Image.open(mask_path).convert("L")), _arr(resolve_mask(
        {"background": photo, "layers": [Image.open(tmp_path / "layer.png")]}, 2, 0, True)[1]))


def test_segment_endpoint_refuses_a_layer_of_another_shape(client, cat, tmp_path):
    from gradio_client.exceptions import AppError

    _layer(box=(0, 0, 10, 10), size=(50, 50)).save(tmp_path / "square.png")
    with pytest.raises(AppError, match="does not fit the photo"):
        client.predict(_payload(cat, [tmp_path / "square.png"]), 0, 0, False, False, api_name="/segment")
    _, _, details = client.predict(_payload(cat), 0, 0, False, False, api_name="/segment")
    assert details["empty"]  # nothing painted: an all-black mask, and the app keeps serving


def test_select_by_text_gives_an_overlay_or_says_nothing_found(client, cat, photo):
    value, overlay, status, message, clicks = client.predict(
        _payload(cat), "the cat", "Grounded-SAM", 0.0, 0.0, 0.4, False, 0, 0, False, False,
        api_name="/segment_select_text")
    assert len(value["layers"]) == 1 and Image.open(value["layers"][0]).size == photo.size
    if message.startswith("Found"):
        assert Image.open(overlay).size == photo.size and "covers" in status
        assert _layer_mask(value) is not None
    else:
        assert message.startswith("Nothing matching") and _layer_mask(value) is None
    assert clicks == ""


def test_select_by_clicks_writes_sams_mask_into_the_layer(client, cat, photo, tiny_models):
    from engine.core import masks as M
    from engine.core.segment import sam_mask_from_points

    value, overlay, status, message = client.predict(_payload(cat), "40,30,+ 100,70,-", False, 0, 0, False, False,
                                                     api_name="/segment_select_click")
    expected = M.binarize(sam_mask_from_points(tiny_models.get("sam"), photo, [(40, 30, True), (100, 70, False)]))
    layer = _layer_mask(value)
    got = np.zeros_like(expected) if layer is None else _arr(layer)
    assert np.array_equal(got, expected)
    assert message.startswith("SAM") and Image.open(overlay).size == photo.size


def test_bad_clicks_are_readable_errors(client, cat):
    from gradio_client.exceptions import AppError

    for clicks, message in [("4000,30,+", "outside the 128x88 photo"), ("40,30,-", "positive click"),
                            ("forty,30", "must be numbers"), ("", "at least once")]:
        with pytest.raises(AppError, match=message):
            client.predict(_payload(cat), clicks, False, 0, 0, False, False, api_name="/segment_select_click")


def test_nothing_found_is_a_message_and_an_empty_layer(client, cat, photo):
    # CLIPSeg's sigmoid never reaches 1.0 on the tiny model: a threshold of 1 selects nothing.
    value, overlay, status, message, _ = client.predict(
        _payload(cat), "a unicorn", "CLIPSeg", 0.3, 0.25, 1.0, False, 0, 0, False, False,
        api_name="/segment_select_text")
    assert message.startswith("Nothing in the photo scored above the CLIPSeg threshold 1")
    assert _layer_mask(value) is None and Image.open(value["layers"][0]).size == photo.size
    assert "Nothing selected" in status


def test_add_joins_the_click_mask_to_the_painted_one(client, cat, photo, tmp_path, tiny_models):
    from engine.core import masks as M
    from engine.core.segment import sam_mask_from_points

    _layer(box=(0, 0, 20, 20), size=photo.size).save(tmp_path / "corner.png")
    replaced, *_ = client.predict(_payload(cat, [tmp_path / "corner.png"]), "64,44,+", False, 0, 0, False, False,
                                  api_name="/segment_select_click")
    added, *_ = client.predict(_payload(cat, [tmp_path / "corner.png"]), "64,44,+", True, 0, 0, False, False,
                               api_name="/segment_select_click")
    sam = M.binarize(sam_mask_from_points(tiny_models.get("sam"), photo, [(64, 44, True)]))
    got = _layer_mask(replaced)
    assert np.array_equal(np.zeros_like(sam) if got is None else _arr(got), sam)  # replace: SAM's mask only
    corner = np.zeros_like(sam)
    corner[0:20, 0:20] = 1
    assert np.array_equal(_arr(_layer_mask(added)), np.maximum(sam, corner))


def test_handout_folders_older_than_the_limit_are_swept(tmp_path, monkeypatch):
    import os
    import time

    from ui import components as C

    monkeypatch.setattr(C, "HANDOUT_ROOT", tmp_path / "handouts")
    first = C.handout_path("mask.png")
    first.write_bytes(b"png")
    young = C.handout_path("photo.png")
    old = time.time() - C.HANDOUT_MAX_AGE_S - 5
    os.utime(first.parent, (old, old))
    third = C.handout_path("mask.png")
    assert third.name == "mask.png" and third.parent.parent == tmp_path / "handouts"
    assert len({first.parent, young.parent, third.parent}) == 3
    assert not first.parent.exists()  # older than the limit: removed
    assert young.parent.exists() and third.parent.exists()
