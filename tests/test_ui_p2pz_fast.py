"""The pix2pix-zero tab's "Fast (distilled)" mode through gradio_client against the running app:
the directions found in the app's distilled folder are listed, one is applied to a photo with the
time shown, a bad checkpoint is a readable error (and the app keeps answering), and the webcam
stream's handler edits a frame."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.methods import p2pz_generator as G
from tests.test_p2pz_fast import CAT, make_checkpoint
from tests.ui_helpers import running_app


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distilled")
    make_checkpoint(folder / "cat2dog", resolution=64)
    make_checkpoint(folder / "horse2zebra", resolution=96, source="horse", target="zebra", seed=3)
    (folder / "broken").mkdir()
    (folder / "broken" / G.META).write_text("{not json")  # skipped in the list, not an error
    return folder


@pytest.fixture(scope="module")
def client(tiny_models, distilled):
    from gradio_client import Client

    mp = pytest.MonkeyPatch()
    mp.setenv("DES_DISTILLED_DIR", str(distilled))  # what `python app.py --distilled DIR` sets up
    try:
        with running_app(tiny_models) as url:
            yield Client(url, verbose=False)
    finally:
        mp.undo()


def _fast(client, checkpoint, photo=CAT):
    from gradio_client import handle_file

    return client.predict(handle_file(str(photo)) if photo else None, checkpoint, api_name="/pix2pix_zero_fast")


def test_the_distilled_folder_is_listed(client, distilled):
    update, note = client.predict(None, api_name="/pix2pix_zero_fast_list")
    labels = {label: value for label, value in update["choices"]}
    assert labels == {"cat → dog · 64 px · cat2dog": str(distilled / "cat2dog"),
                      "horse → zebra · 96 px · horse2zebra": str(distilled / "horse2zebra")}
    assert update["value"] == str(distilled / "cat2dog")
    assert "2 directions found" in note and str(distilled) in note
    make_checkpoint(distilled / "sketch2photo", source="sketch", target="photo")  # trained while the app runs
    update, note = client.predict(str(distilled / "horse2zebra"), api_name="/pix2pix_zero_fast_list")
    assert len(update["choices"]) == 3 and "3 directions found" in note
    assert update["value"] == str(distilled / "horse2zebra")  # Rescan keeps the chosen direction


def test_apply_a_direction_and_see_the_time(client, distilled):
    results, compare, _inter, details, time_text = _fast(client, str(distilled / "horse2zebra"))
    before, after = compare
    edited = Image.open(after)
    assert max(edited.size) == 96 and Image.open(before).size == edited.size
    assert not np.array_equal(np.asarray(edited.convert("RGB")), np.asarray(Image.open(before).convert("RGB")))
    assert details["params"]["direction"] == {"source": "horse", "target": "zebra"}
    assert details["seconds"]["edit"] > 0 and details["unet_evals"] == {"forward": 0, "backward": 0}
    assert time_text.startswith("Edited in **") and " ms**" in time_text and "horse → zebra" in time_text
    assert len(results) == 1


@pytest.mark.parametrize("path, message", [("/nowhere/at/all", "no distilled checkpoint folder"),
                                           ("", "no distilled checkpoint was given")])
def test_a_bad_checkpoint_is_an_error_and_the_app_keeps_serving(client, distilled, path, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _fast(client, path)
    assert _fast(client, str(distilled / "cat2dog"))[3]["params"]["resolution"] == 64  # still answering


def test_a_pickle_and_no_photo_are_refused(client, distilled, tmp_path):
    import torch
    from gradio_client.exceptions import AppError

    pt = tmp_path / "generator.pt"
    torch.save({"x": torch.zeros(1)}, pt)
    with pytest.raises(AppError, match="pickle"):
        _fast(client, str(pt))
    with pytest.raises(AppError, match="Upload a photo"):
        _fast(client, str(distilled / "cat2dog"), photo=None)


def test_the_stream_handler_edits_a_frame(tiny_models, distilled, monkeypatch):
    """gradio_client cannot send webcam streams (it does not know the `process_streaming` message),
    so the handler is taken from the app's own event: the webcam's stream event, as the page wires it."""
    import gradio as gr

    from ui import build_demo

    demo = build_demo(tiny_models, distilled=distilled)
    dep = next(f for f in demo.fns.values() if f.api_name == "pix2pix_zero_fast_stream")
    webcam = dep.inputs[0]
    assert isinstance(webcam, gr.Image) and webcam.streaming and list(webcam.sources) == ["webcam"]
    assert any(t[1] == "stream" for t in dep.targets)
    frame = Image.open(CAT).convert("RGB")
    edited, text = dep.fn(frame, str(distilled / "cat2dog"))
    expected = G.apply(G.load_checkpoint(distilled / "cat2dog")[0], frame, 64)
    assert np.array_equal(np.asarray(edited), np.asarray(expected))
    assert text.endswith("ms per frame")
    assert dep.fn(None, str(distilled / "cat2dog")) == (None, "")  # the camera not started yet
    with pytest.raises(gr.Error, match="no distilled checkpoint folder"):
        dep.fn(frame, "/nowhere")


def test_history_restores_a_fast_result_in_the_fast_mode(tiny_models, distilled, tmp_path):
    """A saved fast result dropped on History: the tab opens in the fast mode with its checkpoint,
    and the photo goes to the hidden relay that fills the tab's photo."""
    from gradio_client import Client, handle_file

    from engine import history

    with running_app(tiny_models, outputs=tmp_path) as url:
        client = Client(url, verbose=False)
        client.predict(handle_file(str(CAT)), str(distilled / "cat2dog"), api_name="/pix2pix_zero_fast")
        saved = history.recent(tmp_path)
        assert len(saved) == 1
        values = client.predict(handle_file(str(saved[0])), api_name="/history_restore")
    components = {c["id"]: c for c in client.config["components"]}
    dep = next(d for d in client.config["dependencies"] if d.get("api_name") == "history_restore")
    returned = [o for o in dep["outputs"] if not components[o].get("skip_api")]  # what the client receives
    by_elem = {components[o]["props"].get("elem_id"): v for o, v in zip(returned, values)}
    assert values[0]["method"] == "pix2pix-zero-fast"
    assert by_elem["p2pz-mode"] == "Fast (distilled)"
    assert by_elem["p2pz-fast-direction"] == str(distilled / "cat2dog")
    restored = by_elem["p2pz-fast-restored-photo"]
    assert Image.open(restored["path"] if isinstance(restored, dict) else restored).size == Image.open(CAT).size
