"""History: results are saved with their settings, photo and mask inside the PNG; dropping the PNG
on the History tab restores the SDEdit tab, and the same settings reproduce the same image."""
import numpy as np
import pytest
from PIL import Image

from engine import history
from engine.methods import sdedit
from tests.ui_helpers import ROOT, editor_payload, free_port

CAT = ROOT / "assets" / "examples" / "cat.png"


def test_save_and_read_back(tmp_path, photo, tiny_models):
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (0, 0, 40, 40))
    inputs = sdedit.SDEditInputs(image=photo, prompt="a dog", steps=4, resolution=128, mask=mask, seed=9)
    result = sdedit.run(inputs, tiny_models)
    paths = history.save(result, "sdedit", "tiny", tiny_models.describe(), tmp_path, inputs=inputs)
    settings = history.read_settings(paths[0])
    assert settings["method"] == "sdedit" and settings["seed"] == 9 and settings["profile"] == "tiny"
    assert settings["params"]["prompt"] == "a dog" and settings["models"]["sd"] == "tiny:sd"
    saved = history.read_images(paths[0])
    saved_photo, saved_mask = saved["image"], saved["mask"]
    assert np.array_equal(np.asarray(saved_photo), np.asarray(photo))
    assert np.array_equal(np.asarray(saved_mask), np.asarray(mask))
    assert history.recent(tmp_path) == paths


def test_images_without_settings_are_refused(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(ValueError, match="no studio settings"):
        history.read_settings(path)


def test_a_saved_png_restores_the_tab_and_reproduces_the_result(tiny_models, tmp_path):
    from gradio_client import Client, handle_file

    from ui import build_demo, launch_kwargs

    outputs = tmp_path / "outputs"
    demo = build_demo(tiny_models, outputs=outputs)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs(outputs=outputs))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        args = [editor_payload(CAT), 0, 0, False, False, "a photo of a fox", 0.6, 6, 7.5, 1, "", 128, 42]
        first = client.predict(*args, api_name="/sdedit")
        saved = history.recent(outputs)
        assert len(saved) == 1
        restored = client.predict(handle_file(str(saved[0])), api_name="/history_restore")
        settings = restored[0]
        assert settings["method"] == "sdedit" and settings["seed"] == 42
        values = dict(zip(["prompt", "strength", "steps", "cfg", "num_results", "negative", "resolution", "seed"],
                          restored[1:9]))  # the client does not return the gr.Tabs output
        assert values["prompt"] == "a photo of a fox" and values["seed"] == 42 and values["steps"] == 6
        editor = restored[9]
        restored_photo = Image.open(editor["background"])
        assert restored_photo.size == Image.open(CAT).size and editor["layers"] == []
        again = client.predict(editor_payload(editor["background"]), 0, 0, False, False, values["prompt"],
                               values["strength"],
                               values["steps"], values["cfg"], values["num_results"], values["negative"],
                               values["resolution"], values["seed"], api_name="/sdedit")
        a = np.asarray(Image.open(first[1][1]))
        b = np.asarray(Image.open(again[1][1]))
        assert np.array_equal(a, b)
    finally:
        demo.close()


def test_files_outside_the_allowed_folders_are_refused(tiny_models, tmp_path):
    import urllib.error
    import urllib.request

    from ui import build_demo, launch_kwargs

    demo = build_demo(tiny_models, outputs=tmp_path / "outputs")
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **launch_kwargs(outputs=tmp_path / "outputs"))
    try:
        base = f"http://127.0.0.1:{port}/gradio_api/file="
        for path in ("/etc/passwd", str(ROOT / "app.py"), str(ROOT / "engine" / "models.py")):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path, timeout=10)
            assert err.value.code in (403, 404)
        with urllib.request.urlopen(base + str(ROOT / "assets" / "examples" / "cat.png"), timeout=10) as r:
            assert r.status == 200
    finally:
        demo.close()
