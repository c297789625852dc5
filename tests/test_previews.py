"""Live previews through TAESD (issue 18): a model component like the others (hub id, local folder,
its own tiny builder), and a method run whose callback carries a Previewer gets preview images of
its sampling steps, decoded by TAESD and never by the full VAE, without changing the result. A run
without a previewer does no preview work. The page side is tests/test_ui_live_preview.py."""
import numpy as np
import pytest
import torch
from PIL import Image

from bench.tiny_defaults import TEXTS, tab_inputs
from engine import methods
from engine.core.previews import Previewer


def test_taesd_loads_through_the_cache_from_its_saved_folder(tiny_models, model_dir):
    from diffusers import AutoencoderTiny

    from engine.models import COMPONENTS

    taesd = tiny_models.get("taesd")
    assert isinstance(taesd, AutoencoderTiny) and not taesd.training
    assert not any(p.requires_grad for p in taesd.parameters())
    assert COMPONENTS["taesd"].hub_id == "madebyollin/taesd"
    folder = tiny_models._fake_folder(COMPONENTS["taesd"])
    assert (model_dir / "tiny").exists() and (__import__("pathlib").Path(folder) / "config.json").exists()


def test_previewer_decodes_with_taesd_at_most_once_per_interval(tiny_models):
    taesd = tiny_models.get("taesd")
    latents = torch.randn(2, 4, 16, 12)
    every = Previewer(taesd, every_s=0.0)
    image = every(latents)
    assert isinstance(image, Image.Image) and image.size == (96, 128)  # 8x the latents, first sample only
    assert every(latents) is not None and every.count == 2
    rare = Previewer(taesd, every_s=3600.0)
    assert rare(latents) is not None and rare(latents) is None and rare.count == 1
    small = Previewer(taesd, every_s=0.0, max_side=64)
    seen = []
    hook = taesd.decoder.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        assert max(small(latents).size) == 64
    finally:
        hook.remove()
    assert seen == [(1, 4, 8, 6)]  # decoded small (the latents resized first), not decoded large then shrunk


def _run(name, photo, tiny_models, previewer=None, monkeypatch=None):
    module = methods.available()[name]
    if hasattr(module, "InversionCache"):  # pix2pix-zero: invert again (its cache would skip a VAE decode)
        monkeypatch.setattr(module, "CACHE", module.InversionCache())
    inputs = tab_inputs(module, photo)
    infos = []

    def on_step(info):
        infos.append(info)

    if previewer is not None:
        on_step.previewer = previewer
    decodes = []
    hooks = [tiny_models.get("sd").vae.decoder.register_forward_pre_hook(lambda m, a: decodes.append("vae")),
             tiny_models.get("taesd").decoder.register_forward_pre_hook(lambda m, a: decodes.append("taesd"))]
    try:
        result = module.run(inputs, tiny_models, on_step=on_step)
    finally:
        for h in hooks:
            h.remove()
    return result, infos, decodes


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_a_run_with_a_previewer_gets_taesd_previews_and_the_same_result(name, photo, tiny_models, monkeypatch):
    plain, plain_infos, plain_decodes = _run(name, photo, tiny_models, monkeypatch=monkeypatch)
    assert all(i.preview is None for i in plain_infos) and "taesd" not in plain_decodes  # no work unasked
    shown, infos, decodes = _run(name, photo, tiny_models, Previewer(tiny_models.get("taesd"), every_s=0.0),
                                 monkeypatch)
    previews = [i for i in infos if i.preview is not None]
    assert len(previews) >= 3, (name, [i.stage for i in infos])
    assert all(isinstance(i.preview, Image.Image) and max(i.preview.size) <= 256 for i in previews)
    assert decodes.count("taesd") == len(previews)
    assert decodes.count("vae") == plain_decodes.count("vae")  # previews never use the full VAE
    for a, b in zip(plain.images, shown.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # previews change nothing in the edit
