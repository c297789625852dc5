"""The GPU fast path that can be checked on a CPU (issue 18): channels-last memory order gives the
same edit, and every attention layer runs PyTorch's fused scaled-dot-product attention (SDPA)
unless a method needs its probabilities (pix2pix-zero's cross-attention guidance, Eq. 5, reads
them from the cross-attention layers only). The no-host-sync check is tests/test_no_host_sync.py."""
import numpy as np
import pytest
import torch

from bench.tiny_defaults import TEXTS, tab_inputs
from engine import methods
from engine.core import controlnet_features as CF
from engine.core.attention import CrossAttentionProbe
from engine.models import ModelCache

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _inputs(name, photo, **over):
    module = methods.available()[name]
    return module, tab_inputs(module, photo, **over)


@pytest.fixture(autouse=True)
def _own_inversion_cache(monkeypatch):
    """pix2pix-zero's inversion cache is keyed by the photo and settings, not the models: each
    comparison below must invert with the models it compares (see _fresh_run)."""
    from engine.methods import pix2pix_zero

    monkeypatch.setattr(pix2pix_zero, "CACHE", pix2pix_zero.InversionCache())


def _fresh_run(module, inputs, models):
    if hasattr(module, "InversionCache"):
        module.CACHE = module.InversionCache()  # restored after the test by _own_inversion_cache
    return module.run(inputs, models)


def test_channels_last_is_on_by_default_on_a_gpu_only(model_dir):
    assert ModelCache("tiny", device="cpu", cache_dir=model_dir).channels_last is False
    assert ModelCache("tiny", device="cpu", cache_dir=model_dir, channels_last=True).channels_last is True
    assert ModelCache("tiny", device="cuda", cache_dir=model_dir).channels_last is True
    assert ModelCache("tiny", device="cuda", cache_dir=model_dir, channels_last=False).channels_last is False


@pytest.mark.parametrize("name", ["sdedit", "iir-net", "pix2pix-zero"])
def test_channels_last_gives_the_same_edit(name, model_dir, tiny_models, photo):
    """Within 2/255 per pixel (rounding of a different summation order), through the method's run;
    pix2pix-zero also takes gradients through the channels-last UNet (Eq. 5)."""
    fast = ModelCache("tiny", device="cpu", cache_dir=model_dir, channels_last=True)
    unet = fast.get("sd").unet
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert tiny_models.get("sd").unet.conv_in.weight.is_contiguous()  # the default cache is untouched
    module, inputs = _inputs(name, photo)
    a = np.asarray(_fresh_run(module, inputs, tiny_models).images[0], dtype=np.int16)
    b = np.asarray(_fresh_run(module, inputs, fast).images[0], dtype=np.int16)
    assert a.shape == b.shape and np.abs(a - b).max() <= 2, np.abs(a - b).max()


def test_the_cli_takes_channels_last(tmp_path, capsys):
    from engine.__main__ import main

    args = ["sdedit", "--image", str(ROOT / "assets" / "examples" / "cat.png"), "--prompt", "a tiger",
            "--profile", "tiny", "--device", "cpu", "--resolution", "64", "--steps", "2"]
    assert main(args + ["--out", str(tmp_path / "on"), "--channels-last", "on"]) == 0, capsys.readouterr().err
    assert (tmp_path / "on" / "edited.png").exists()
    with pytest.raises(SystemExit) as bad:
        main(args + ["--out", str(tmp_path / "bad"), "--channels-last", "sometimes"])
    assert bad.value.code == 2 and "--channels-last" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_attention_is_sdpa_unless_its_probabilities_are_needed(name, tiny_models, photo):
    """At every UNet call of a run: each attention layer's processor is diffusers' SDPA processor
    (AttnProcessor2_0), except pix2pix-zero's cross-attention probes, which compute softmax(QK^T)
    explicitly because Eq. 5 needs it, and only on cross-attention (attn2) layers."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    sd = tiny_models.get("sd")
    seen = []

    def look(module_, args):
        seen.append({k: type(v) for k, v in module_.attn_processors.items()})

    hook = sd.unet.register_forward_pre_hook(look)
    try:
        module, inputs = _inputs(name, photo)
        module.run(inputs, tiny_models)
    finally:
        hook.remove()
    assert seen
    probes = 0
    for call in seen:
        for layer, kind in call.items():
            if kind is CrossAttentionProbe:
                assert name == "pix2pix-zero" and layer.endswith("attn2.processor"), (name, layer)
                probes += 1
            else:
                assert kind is AttnProcessor2_0, (name, layer, kind)
    assert (probes > 0) == (name == "pix2pix-zero")
    for part in (sd.vae, *(tiny_models.get(c) for c in ("controlnet_scribble", "controlnet_canny"))):
        assert {type(p) for p in part.attn_processors.values()} <= {AttnProcessor2_0}


def test_an_fp16_vae_decode_that_overflows_is_redone_in_fp32_only_then(tiny_models):
    """fp16 VAE without NaNs: normal latents decode in fp16 (no fp32 copy is made); latents far out
    of range overflow fp16 (NaN, checked here) and that decode alone is redone in fp32, giving the
    fp32 VAE's image within 2/255. The cached fp16 model is not changed."""
    import copy
    from types import SimpleNamespace

    from engine.core import sampling as S

    vae32 = tiny_models.get("sd").vae
    vae16 = copy.deepcopy(vae32).half()
    sd16, sd32 = SimpleNamespace(vae=vae16), SimpleNamespace(vae=vae32)
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(1, 4, 8, 8, generator=g)
    a = np.asarray(S.decode_latents(sd16, normal)[0], dtype=np.int16)
    b = np.asarray(S.decode_latents(sd32, normal)[0], dtype=np.int16)
    assert np.abs(a - b).max() <= 3 and vae16 not in S._FP32_VAES  # fp16 all the way
    wild = normal * 10_000
    with torch.no_grad():
        raw = vae16.decode((wild / vae16.config.scaling_factor).half()).sample
    assert not torch.isfinite(raw).all()  # the case the guard exists for
    fixed = np.asarray(S.decode_latents(sd16, wild)[0], dtype=np.int16)
    exact = np.asarray(S.decode_latents(sd32, wild)[0], dtype=np.int16)
    assert np.abs(fixed - exact).max() <= 2  # the fp32 copy holds the fp16 weights: rounding only
    assert vae16 in S._FP32_VAES and next(vae16.parameters()).dtype == torch.float16


def test_compile_gives_the_same_edit_and_copies_run_their_own_weights(model_dir, tiny_models, photo, tmp_path):
    """--compile: the UNet, VAE decoder and ControlNets are compiled in place (here with the
    aot_eager backend, which traces the same graphs as inductor in seconds instead of minutes on
    a CPU); the edit is the same within 2/255, gradients flow (pix2pix-zero's Eq. 5), the first
    edit says it includes compiling, and a deep copy (LayerDiffusion's full fine-tune, a LoRA
    checkpoint, the fp32 VAE) runs its own weights, not the compiled original's."""
    fast = ModelCache("tiny", device="cpu", cache_dir=model_dir, compile_backend="aot_eager")
    sd = fast.get("sd")
    assert sd.unet._compiled_call_impl is not None and sd.vae.decoder._compiled_call_impl is not None
    net = fast.get("controlnet_canny")  # its blocks, which the features shortcut calls one by one
    assert all(b._compiled_call_impl is not None for b in [net.controlnet_cond_embedding, *net.down_blocks,
                                                             net.mid_block])
    assert CF.supports_features(net)
    assert getattr(tiny_models.get("sd").unet, "_compiled_call_impl", None) is None
    for name in ("sdedit", "pix2pix-zero", "iir-net"):
        module, inputs = _inputs(name, photo)
        a = np.asarray(_fresh_run(module, inputs, tiny_models).images[0], dtype=np.int16)
        b = np.asarray(_fresh_run(module, inputs, fast).images[0], dtype=np.int16)
        assert np.abs(a - b).max() <= 2, (name, np.abs(a - b).max())
    assert "compiled on first use" in fast.compile_note() and fast.compile_note() is None  # said once

    import copy

    clone = copy.deepcopy(sd.unet)  # what LayerDiffusion's full fine-tune trains
    x, t = torch.randn(2, 4, 8, 8), torch.tensor(500)
    c = torch.randn(2, 77, sd.unet.config.cross_attention_dim)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)
        assert not torch.allclose(clone(x, t, encoder_hidden_states=c).sample,
                                  sd.unet(x, t, encoder_hidden_states=c).sample)  # the copy runs its own weights


def test_the_cli_takes_compile(tmp_path, capsys):
    import json

    from engine.__main__ import main

    args = ["sdedit", "--image", str(ROOT / "assets" / "examples" / "cat.png"), "--prompt", "a tiger",
            "--profile", "tiny", "--device", "cpu", "--resolution", "64", "--steps", "2"]
    assert main(args + ["--out", str(tmp_path / "c"), "--compile", "aot_eager"]) == 0, capsys.readouterr().err
    notes = json.loads((tmp_path / "c" / "report.json").read_text()).get("notes", [])
    assert any("--compile (aot_eager)" in n for n in notes), notes
    with pytest.raises(SystemExit) as bad:
        main(args + ["--out", str(tmp_path / "bad"), "--compile", "fastest"])
    assert bad.value.code == 2 and "--compile" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["sdedit", "iir-net", "layer-diffusion"])
def test_step_loops_do_not_walk_the_models_for_their_dtype_or_device(name, tiny_models, photo, monkeypatch):
    """diffusers' `.dtype` / `.device` walk every submodule (1.9 ms each on SD1.5's UNet); asked per step
    they cost a UNet step's host time on a GPU. A run of 3x the steps must not walk more often."""
    import diffusers.models.modeling_utils as mu

    calls = []
    for fn in ("get_parameter_dtype", "get_parameter_device"):
        real = getattr(mu, fn)
        monkeypatch.setattr(mu, fn, lambda module, _real=real, _fn=fn: calls.append(_fn) or _real(module))
    module = methods.available()[name]
    counts = []
    for steps in (2, 6):
        over = {"steps": steps}
        if name == "layer-diffusion":
            over.update(embed_steps=steps, tune_steps=steps)
        calls.clear()
        _fresh_run(module, tab_inputs(module, photo, **over), tiny_models)
        counts.append(len(calls))
    assert counts[0] == counts[1], counts
