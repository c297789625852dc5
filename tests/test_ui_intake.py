"""What an upload must be, and what a saved result keeps of the mask editor (no browser, no server):
too small refused, too large downscaled with a note, a painted blank canvas refused, and the painted
layer and settings saved with a result and read back for History."""
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from engine import history
from ui import mask_editor as ME


def test_intake_refuses_small_downscales_large_and_keeps_the_rest():
    kept, note = ME.intake(Image.new("RGB", (10, 10)))
    assert kept is None and "10x10" in note and "at least 64 px" in note
    kept, note = ME.intake(Image.new("RGB", (2400, 1600)))
    assert kept.size == (1024, 683) and "downscaled to 1024x683" in note
    photo = Image.new("RGB", (500, 300))
    assert ME.intake(photo) == (photo, "")


def test_a_blank_canvas_is_no_photo_and_painting_on_it_is_refused():
    blank = Image.new("RGBA", ME.CANVAS_SIZE, (255, 255, 255, 255))
    stroke = Image.new("RGBA", ME.CANVAS_SIZE, (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 153), (10, 10, 30, 30))
    assert ME.read_editor({"background": blank, "layers": [], "composite": blank}) == (None, None)
    with pytest.raises(gr.Error, match="Upload a photo first"):
        ME.resolve_mask({"background": blank, "layers": [stroke], "composite": blank})
    shown, status = ME.preview({"background": blank, "layers": [stroke], "composite": blank})
    assert shown is None and "Upload a photo first" in status
    # A real 64x64 photo is not a blank canvas.
    real = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8))
    assert ME.read_editor({"background": real, "layers": [stroke]})[0] is not None


def test_unreadable_report_names_the_file():
    assert "'notes.png' is not an image" in ME.unreadable_message('{"name": "notes.png"}')
    assert "the file" in ME.unreadable_message("garbage")


def test_the_editor_state_is_saved_with_the_result_and_read_back(tmp_path, photo, tiny_models):
    from engine.methods import sdedit

    layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 153), (10, 10, 50, 40))
    image, mask = ME.resolve_mask({"background": photo, "layers": [layer]}, grow_px=3, feather_px=2, invert=True)
    inputs = sdedit.SDEditInputs(image=image, prompt="a dog", steps=2, resolution=64, mask=mask, seed=1)
    result = sdedit.run(inputs, tiny_models)
    paths = history.save(result, "sdedit", "tiny", tiny_models.describe(), tmp_path, inputs=inputs)
    assert result.saved_paths == paths
    state = history.read_editor_state(paths[0])
    assert (state["grow"], state["feather"], state["invert"], state["whole_image"]) == (3, 2, True, False)
    again = ME.resolve_mask(ME.editor_value(photo, np.asarray(state["painted"]) / 255.0), 3, 2, True)[1]
    assert np.array_equal(np.asarray(again), np.asarray(mask))  # the same soft mask, remade
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert history.read_editor_state(plain) is None  # older results: History restores the mask alone


def test_a_large_photos_change_leaves_the_preview_to_its_upload(tiny_models):
    """The editor fires "change" beside "upload" for a new file, and the two can end in either order:
    the change of a photo over UPLOAD_MAX_SIDE must not put that photo in the preview over the
    downscaled one that "upload" shows (seen as a preview that never showed the 1024 px photo)."""
    from ui import build_demo

    demo = build_demo(tiny_models)
    handlers = {}
    for dep in demo.fns.values():
        if dep.fn is not None and dep.fn.__name__ in ("changed", "uploaded") and \
                getattr(dep.inputs[0], "elem_id", "") == "sdedit-photo":
            handlers[dep.fn.__name__] = dep.fn
    assert set(handlers) == {"changed", "uploaded"}
    y, x = np.mgrid[0:800, 0:1200]
    big = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    value = {"background": big.convert("RGBA"), "layers": [], "composite": big.convert("RGBA")}
    shown, status, selection = handlers["changed"](value, 0, 0, False, False, None)
    assert shown == gr.update() and status == gr.update() and selection is None
    out = handlers["uploaded"](value, 0, 0, False, False, "", None)
    editor, shown, note = out[0], out[1], out[3]
    assert editor["background"].size == (1024, 683) and shown.size == (1024, 683) and "downscaled" in note
    shown, status, _ = handlers["changed"](editor, 0, 0, False, False, None)  # the downscaled photo's change
    assert shown.size == (1024, 683) and "Nothing selected" in status
