"""The app answers gradio_client on the SDEdit endpoint, refuses bad input readably and keeps serving."""
import numpy as np
import pytest
from PIL import Image

from tests.ui_helpers import ROOT, editor_payload, running_app

CAT = ROOT / "assets" / "examples" / "cat.png"


@pytest.fixture(scope="module")
def app_url(tiny_models):
    with running_app(tiny_models) as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _edit(client, **kw):
    args = dict(editor=editor_payload(CAT), grow=0, feather=0, invert=False, whole_image=False,
                prompt="a photo of a dog", strength=0.6, steps=8, cfg=7.5,
                num_results=2, negative="", resolution=128, seed=5)
    args.update(kw)
    return client.predict(*args.values(), api_name="/sdedit")


def test_sdedit_endpoint_returns_results(client):
    results, compare, intermediates, details = _edit(client)
    assert len(results) == 2
    before, after = compare
    assert Image.open(after).size == Image.open(before).size
    assert details["unet_evals"]["forward"] == 5 and details["seed"] == 5


def test_same_seed_same_image_through_the_api(client):
    a = _edit(client, num_results=1)[1][1]
    b = _edit(client, num_results=1)[1][1]
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_brushed_mask_round_trips(client, tmp_path):
    from gradio_client import handle_file

    photo = Image.open(CAT).convert("RGB")
    layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, photo.width // 2, photo.height))
    layer.save(tmp_path / "layer.png")
    payload = editor_payload(CAT)
    payload["layers"] = [handle_file(str(tmp_path / "layer.png"))]
    _, _, intermediates, details = _edit(client, editor=payload, num_results=1)
    assert details["params"]["masked"] is True
    assert [item["caption"] for item in intermediates] == ["mask"]


@pytest.mark.parametrize("kw, message", [
    ({"prompt": ""}, "prompt is empty"),
    ({"strength": 7.0}, "strength|greater than maximum"),
    ({"steps": 100000}, "steps|greater than maximum"),
    ({"editor": None}, "Upload a photo"),
])
def test_bad_input_is_a_readable_error_and_the_app_keeps_serving(client, kw, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        _edit(client, **kw)
    assert len(_edit(client, num_results=1)[0]) == 1
