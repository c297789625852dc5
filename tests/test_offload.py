"""`--memory offload` (engine/offload.py): a run moves each model to the GPU at most once, the
UNet and its ControlNets share the GPU instead of swapping every step, and `cuda` is `cuda:0`.

No GPU here: the cache runs on the CPU with offload forced on, and the Offloader's moves are
recorded (a move to the CPU "device" is a no-op), which is exactly what a GPU run would copy."""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from engine.methods import iir_net, sdedit
from engine.models import ModelCache
from engine.offload import DENOISER, Offloader, family_of, same_device


def _photo(size=64):
    img = Image.new("RGB", (size, size), (90, 120, 160))
    ImageDraw.Draw(img).ellipse((16, 16, 48, 48), fill=(220, 180, 140))
    return img


@pytest.fixture
def offloaded(model_dir, monkeypatch):
    cache = ModelCache("tiny", device="cpu", memory="offload", cache_dir=model_dir)
    monkeypatch.setattr(cache, "_offload_enabled", lambda: True)
    log = []
    off = cache.offloader()
    off._move = lambda module, where: log.append((type(module).__name__, torch.device(where).type))
    return cache, log


def test_devices_compare_normalised():
    assert same_device(torch.device("cuda"), torch.device("cuda:0"))
    assert same_device("cuda:0", "cuda")
    assert not same_device("cuda:1", "cuda:0") and not same_device("cpu", "cuda")


def test_controlnets_share_the_unets_family():
    assert family_of("sd") == family_of("controlnet_canny") == family_of("controlnet_openpose") == DENOISER
    assert family_of("blip") != DENOISER and family_of("clip") != DENOISER


def test_a_controlnet_run_moves_each_model_once_and_a_second_run_moves_nothing(offloaded):
    cache, log = offloaded
    inputs = iir_net.IIRNetInputs(image=_photo(), prompt="a green ball", whole_image=True, noise=0, steps=3,
                                  resolution=64)
    iir_net.run(inputs, cache)  # text encoder, VAE, Canny ControlNet + UNet for 3 steps, VAE decode
    moves = cache.offloader().moves
    assert {"sd.UNet2DConditionModel", "sd.AutoencoderKL", "sd.CLIPTextModel",
            "controlnet_canny.ControlNetModel"} <= set(moves), moves
    assert all(n == 1 for n in moves.values()), moves  # not once per step, not once per child hook
    assert all(where == "cpu" for _, where in log)  # the recording "device" of this test is the CPU
    before = dict(moves)
    iir_net.run(inputs, cache)
    assert cache.offloader().moves == before  # the family stayed resident: nothing copied again


def test_another_family_evicts_the_denoisers_once(offloaded):
    cache, log = offloaded
    off = cache.offloader()
    sdedit.run(sdedit.SDEditInputs(image=_photo(), prompt="a tiger", steps=4, strength=0.5, resolution=64), cache)
    assert all(n == 1 for n in off.moves.values())
    blip = torch.nn.Linear(2, 2)
    off.attach("blip", blip)
    evictions = len(log)
    blip(torch.zeros(1, 2))
    evicted = [name for name, where in log[evictions:] if where == "cpu"]
    # Three SD parts went out, BLIP came in; nothing else moved.
    assert sorted(evicted) == sorted(["UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel", "Linear"])
    assert off.moves["blip.Linear"] == 1
    sdedit.run(sdedit.SDEditInputs(image=_photo(), prompt="a tiger", steps=4, strength=0.5, resolution=64), cache)
    assert off.moves["sd.UNet2DConditionModel"] == 2 and off.moves["blip.Linear"] == 1


def test_hooks_do_not_move_a_resident_model_again():
    calls = []
    off = Offloader(torch.device("cpu"), move=lambda m, where: calls.append(where))
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    off.attach("sd", net)
    for _ in range(5):
        net(torch.zeros(1, 2))
        net[0](torch.zeros(1, 2))  # a child called directly (the VAE's encoder inside vae.encode)
    assert len(calls) == 1
