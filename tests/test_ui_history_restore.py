"""History restores everything a run depends on, in every tab: run an edit with settings away from the
defaults (mask grown, feathered, inverted; IIR-Net's whole image; iEdit's mask), restore the saved PNG
into a page left at its defaults, run again with what History put back, and get the same pixels.
The results gallery serves the saved PNG itself, so its download carries the settings."""
import numpy as np
import pytest
from PIL import Image

from engine import history
from tests.ui_helpers import ROOT, running_app

CAT = ROOT / "assets" / "examples" / "cat.png"


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    from gradio_client import Client

    outputs = tmp_path_factory.mktemp("history-outputs")
    with running_app(tiny_models, outputs=outputs) as url:
        yield Client(url, verbose=False), outputs


class Page:
    """One endpoint's inputs as a page would send them: every widget at its default value, by
    elem_id or label, and History's restore applied on top of them."""

    def __init__(self, client, api_name):
        self.client, self.api_name = client, api_name
        config = client.config
        self.components = {c["id"]: c for c in config["components"]}
        dep = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
        self.inputs = [i for i in dep["inputs"] if not self._skip(i)]
        self.values = {i: self.components[i].get("props", {}).get("value") for i in self.inputs}

    def _skip(self, cid):
        return bool(self.components[cid].get("skip_api"))

    def find(self, key):
        for cid in self.inputs:
            props = self.components[cid].get("props", {})
            if props.get("elem_id") == key or props.get("label") == key:
                return cid
        for cid in self.inputs:
            if key in str(self.components[cid].get("props", {}).get("label", "")):
                return cid
        raise KeyError(key)

    def set(self, **by_key):
        for key, value in by_key.items():
            self.values[self.find(key.replace("__", "-"))] = value
        return self

    def restore(self, png):
        from gradio_client import handle_file

        dep = next(d for d in self.client.config["dependencies"] if d.get("api_name") == "history_restore")
        returned = [o for o in dep["outputs"] if not self._skip(o)]
        values = self.client.predict(handle_file(str(png)), api_name="/history_restore")
        for cid, value in zip(returned, values):
            if cid in self.values and value is not None:
                self.values[cid] = value
        return values[0]

    def run(self):
        return self.client.predict(*[_payload(self.values[i]) for i in self.inputs], api_name=f"/{self.api_name}")


def _payload(value):
    """A returned value -> what the client sends (files become uploads)."""
    from gradio_client import handle_file

    if isinstance(value, dict) and "background" in value:
        def up(v):
            if v is None:
                return None
            path = v.get("path") if isinstance(v, dict) else v
            return handle_file(str(path))
        return {"background": up(value.get("background")), "composite": up(value.get("composite")),
                "layers": [up(v) for v in value.get("layers") or []]}
    if isinstance(value, dict) and value.get("path") and value.get("meta"):
        return handle_file(value["path"])
    if isinstance(value, str) and value.endswith((".png", ".webp", ".jpg")) and "/" in value:
        return handle_file(value)
    return value


def _editor(tmp_path, box=(10, 10, 60, 50)):
    from gradio_client import handle_file

    photo = Image.open(CAT)
    layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 153), box)
    layer.save(tmp_path / "layer.png")
    return {"background": handle_file(str(CAT)), "composite": handle_file(str(CAT)),
            "layers": [handle_file(str(tmp_path / "layer.png"))]}


def _pixels(results):
    first = results[0]
    path = first["image"] if isinstance(first, dict) and "image" in first else first
    path = path.get("path") if isinstance(path, dict) else path
    return np.asarray(Image.open(path).convert("RGB"))


def _fresh(client, api_name):
    return Page(client, api_name)


def _round_trip(app, api_name, configure, results_at=0):
    client, outputs = app
    before = set(history.recent(outputs, limit=1000))
    configured = configure(_fresh(client, api_name))
    first = configured.run()
    saved = sorted(set(history.recent(outputs, limit=1000)) - before)
    assert saved, "the run saved no result"
    page = _fresh(client, api_name)  # a page at its defaults: everything must come from the PNG
    settings = page.restore(saved[0])
    again = page.run()
    a, b = _pixels(first[results_at]), _pixels(again[results_at])
    if not np.array_equal(a, b):  # name the inputs History did not put back
        for cid in page.inputs:
            if str(page.values[cid])[:80] != str(configured.values[cid])[:80]:
                print("differs:", page.components[cid]["props"].get("label"), configured.values[cid], "->",
                      page.values[cid])
    assert a.shape == b.shape and np.array_equal(a, b), (api_name, settings["params"])
    return first, settings, saved


def test_sdedit_with_a_grown_feathered_inverted_mask(app, tmp_path):
    _round_trip(app, "sdedit", lambda p: p.set(
        sdedit__photo=_editor(tmp_path), sdedit__grow=3, sdedit__feather=2, sdedit__invert=True,
        sdedit__prompt="a photo of a fox", Strength=0.6, **{"DDIM steps": 3, "Resolution (longest side)": 64,
                                                            "Seed": 5}))


def test_iedit_restores_the_mask_on_screen(app, tmp_path):
    _round_trip(app, "iedit", lambda p: p.set(
        iedit__photo=_editor(tmp_path), iedit__grow=-2, iedit__feather=3, iedit__prompt="a photo of a tiger",
        iedit__term="cat", **{"Results (one batch)": 1, "DDIM steps": 3, "Resolution (longest side)": 64,
                             "Seed": 3}))


def test_iir_net_restores_the_whole_image_and_the_roi(app, tmp_path):
    _round_trip(app, "iir_net", lambda p: p.set(
        iir_net__photo=_editor(tmp_path), iir_net__whole__image=True, iir__net__prompt="a white cat",
        iir__net__roi="the cat", **{"DDIM steps": 2, "Resolution (longest side)": 64, "Seed": 4}))


def test_gallery_download_is_the_png_with_settings(app, tmp_path):
    first, settings, saved = _round_trip(app, "sdedit", lambda p: p.set(
        sdedit__photo=_editor(tmp_path), sdedit__prompt="a photo of a fox",
        **{"DDIM steps": 2, "Resolution (longest side)": 64, "Seed": 8}))
    item = first[0][0]["image"]
    path = item.get("path") if isinstance(item, dict) else item
    served = history.read_settings(path)  # the file the gallery's download button gives
    assert served["method"] == "sdedit" and served["seed"] == 8
    assert history.read_images(path)["image"].size == Image.open(CAT).size


def test_ito_restores_the_painted_mask_and_its_mode(app, tmp_path):
    _round_trip(app, "ito", lambda p: p.set(
        ito__photo=_editor(tmp_path), ito__grow=2, ito__mask__mode="add to the estimated mask",
        ito__caption="a photo of a cat", ito__prompt="a photo of a dog", ito__resolution=64, ito__steps=3,
        ito__tu=1, ito__k=1, ito__seeds=1, Seed=6), results_at=3)


def test_layer_diffusion_restores_the_subject_mask_and_settings(app, tmp_path):
    _round_trip(app, "layer_diffusion", lambda p: p.set(
        layer_diffusion__photo=_editor(tmp_path), layer_diffusion__feather=2, ld__text="a cat sitting on a beach",
        ld__subject="a cat sitting", ld__background="on a beach", ld__alpha=0.6,
        **{"Embedding optimisation steps (Eq. 2, lr 1e-3)": 1, "Fine-tuning steps (Eq. 4-6)": 1,
           "Sampling steps (iterative guidance, Eq. 8)": 2, "Resolution (longest side)": 64, "Seed": 2}))


def test_pix2pix_zero_restores_photo_caption_and_direction(app):
    from gradio_client import handle_file

    _round_trip(app, "pix2pix_zero", lambda p: p.set(
        p2pz__photo=handle_file(str(CAT)), p2pz__caption="a photo of a cat", p2pz__source="cat",
        p2pz__target="dog", p2pz__xa=0.05, p2pz__steps=10, p2pz__resolution=64,
        **{"Regularisation iterations per inversion step": 0, "Seed": 1}))
