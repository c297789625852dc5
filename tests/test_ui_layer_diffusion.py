"""The LayerDiffusion tab through gradio_client: the text split endpoint, an edit on the tiny profile,
readable errors, History restoring the subject mask and the reference, and Stop: the running fine-tune
ends and the shared UNet is left as it was."""
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.ui_helpers import ROOT, editor_payload, running_app

CAT = ROOT / "assets" / "examples" / "cat.png"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def client(tiny_models, outputs):
    from gradio_client import Client

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and the machine is shared
    tiny_models.sd()
    try:
        with running_app(tiny_models, outputs=outputs) as url:
            yield Client(url, verbose=False)
    finally:
        torch.set_num_threads(threads)


def _painted(tmp_path):
    """The cat with a painted subject (so no Grounded-SAM is needed on random weights)."""
    from gradio_client import handle_file

    photo = Image.open(CAT).convert("RGB")
    layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (photo.width // 4, photo.height // 4, 3 * photo.width // 4, photo.height))
    layer.save(tmp_path / "layer.png")
    payload = editor_payload(CAT)
    payload["layers"] = [handle_file(str(tmp_path / "layer.png"))]
    return payload


def _args(editor, **kw):
    args = dict(editor=editor, grow=0, feather=0, invert=False, whole=False, text="a cat jumping in a forest",
                subject="", background="", keep=False, ref_editor=None, ref_grow=0, ref_feather=0,
                ref_invert=False, ref_whole=False, alpha=0.7, lambda1=2.0, lambda2=1.0, num_results=2, embed_steps=3, tune_steps=2,
                steps=2, lora_rank=4, full=False, cfg=7.5, resolution=64, seed=11)
    args.update(kw)
    return list(args.values())


def _unet_state(unet):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return ({k: v.clone() for k, v in unet.state_dict().items()}, [n for n, _ in unet.named_modules()],
            sorted(unet.__dict__), any(isinstance(m, BaseTunerLayer) for m in unet.modules()))


def _same(a, b):
    return a[0].keys() == b[0].keys() and all(torch.equal(v, b[0][k]) for k, v in a[0].items()) and a[1:] == b[1:]


def test_split_endpoint_fills_the_two_parts(client):
    subject, background, note = client.predict("a dog jumping in a forest", api_name="/layer_diffusion_split")
    assert (subject, background, note) == ("a dog jumping", "in a forest", "")
    _, _, note = client.predict("a dog jumping", api_name="/layer_diffusion_split")
    assert "could not split" in note


def test_edit_endpoint_returns_results_intermediates_and_losses(client, tmp_path):
    results, compare, intermediates, details, losses = client.predict(*_args(_painted(tmp_path)),
                                                                      api_name="/layer_diffusion")
    assert len(results) == 2
    before, after = compare
    assert Image.open(after).size == Image.open(before).size
    assert [item["caption"] for item in intermediates] == ["photo_subject_mask", "reference",
                                                           "reference_subject_mask", "loss_curves"]
    params = details["params"]
    assert params["subject_text"] == "a cat jumping" and params["background_text"] == "in a forest"
    assert params["reference_mode"] == "generated" and params["guidance_counts"] == {"e_a": 1, "e_opt": 1}
    assert details["unet_evals"] == {"forward": 2 + 3 + 2 + 2, "backward": 3 + 2}
    rows = losses["value"]["data"] if isinstance(losses, dict) and "value" in losses else losses["data"]
    assert len(rows) == 3 + 3 + 2 + 2  # e_a, e_b per embedding step; L_obj, L_bg per fine-tuning step


def test_edited_parts_and_keep_background(client, tmp_path):
    *_, details, _ = client.predict(*_args(_painted(tmp_path), text="", subject="a cat sleeping",
                                           background="on a sofa", keep=True, num_results=1),
                                    api_name="/layer_diffusion")
    assert details["params"]["subject_text"] == "a cat sleeping" and details["params"]["reference_mode"] == "photo"


@pytest.mark.parametrize("kw, message", [
    ({"text": "a cat jumping"}, "could not split"),
    ({"alpha": 3.0}, "alpha|greater than maximum"),
    ({"tune_steps": 0}, "fine-tuning steps|less than minimum"),
    ({"editor": None}, "Upload a photo"),
])
def test_bad_input_is_readable_and_the_app_keeps_serving(client, tmp_path, kw, message):
    from gradio_client.exceptions import AppError

    editor = kw.pop("editor", _painted(tmp_path))
    with pytest.raises(AppError, match=message):
        client.predict(*_args(editor, **kw), api_name="/layer_diffusion")


def test_stop_ends_the_fine_tune_and_removes_the_adapter(client, tiny_models, tmp_path):
    unet = tiny_models.sd().unet
    before = _unet_state(unet)
    assert not before[3]
    calls = []
    hook = unet.register_forward_hook(lambda *_: calls.append(1))
    # 1000 fine-tuning steps would take minutes; Stop must end it within a few steps.
    job = client.submit(*_args(_painted(tmp_path), embed_steps=1, tune_steps=1000, steps=1, num_results=1),
                        api_name="/layer_diffusion")
    deadline = time.time() + 120
    while not _unet_state(unet)[3]:
        assert time.time() < deadline, "the fine-tuning never started"
        time.sleep(0.05)
    client.predict(api_name="/layer_diffusion_stop")
    deadline = time.time() + 30
    while _unet_state(unet)[3] or not _same(before, _unet_state(unet)):
        assert time.time() < deadline, "the adapter was not removed after Stop"
        time.sleep(0.1)
    try:
        job.result(timeout=30)
    except Exception:
        pass  # cancelled, or "Stopped": either way the run ended
    hook.remove()
    assert _same(before, _unet_state(unet))
    assert 1 < len(calls) < 300, f"{len(calls)} UNet calls: the run did not stop early"
    # the app keeps serving
    results = client.predict(*_args(_painted(tmp_path), num_results=1, embed_steps=1, tune_steps=1, steps=1),
                             api_name="/layer_diffusion")[0]
    assert len(results) == 1


def test_history_restores_the_subject_mask_and_the_reference(client, outputs, tmp_path):
    from gradio_client import handle_file

    from engine import history

    ref = ROOT / "assets" / "examples" / "grass.png"
    before = set(history.recent(outputs, limit=1000))
    first = client.predict(*_args(_painted(tmp_path), ref_editor=editor_payload(ref), num_results=1),
                           api_name="/layer_diffusion")
    saved = [p for p in history.recent(outputs, limit=1000) if p not in before]
    assert len(saved) == 1 and {"image", "mask", "reference"} <= set(history.read_images(saved[0]))
    restored = client.predict(handle_file(str(saved[0])), api_name="/history_restore")
    editors = [v for v in restored if isinstance(v, dict) and "background" in v and v.get("background")]
    sizes = [Image.open(e["background"]).size for e in editors]
    ref_editor = editors[sizes.index(Image.open(ref).size)]
    photo_editor = editors[sizes.index(Image.open(CAT).size)]
    assert len(photo_editor["layers"]) == 1 and not ref_editor["layers"]  # the subject mask; no reference mask
    payload = editor_payload(photo_editor["background"])
    payload["layers"] = [handle_file(photo_editor["layers"][0])]
    again = client.predict(*_args(payload, ref_editor=editor_payload(ref_editor["background"]), num_results=1),
                           api_name="/layer_diffusion")
    assert again[3]["params"]["reference_mode"] == "uploaded"
    a, b = (np.asarray(Image.open(r[1][1])) for r in (first, again))  # the compare slider's "after"
    assert np.array_equal(a, b)
