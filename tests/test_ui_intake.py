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
