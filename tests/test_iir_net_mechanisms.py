"""IIR-Net's mechanisms, each guarded at the level of `run` (or of the training entry point):
the noise slider k reaching R(x0) (Eq. 5-6), gray inside the RoI (Eq. 4), the edge channel
(Eq. 7), the trained ControlNet reading R(x0) (Eq. 3), the training-free mode's start and
background blending, Eq. 8's target and random k in training, training from an fp16 cache,
and the checkpoint's iir_net.json (K, Canny thresholds). tests/mutants/m_iir_net.py breaks each
of them once; every breakage must fail a test here."""
import json
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core import sampling as S
from engine.core.iir_checkpoint import clear_cache
from engine.core.masks import to_latent
from engine.core.removal import LUMA, MAX_NOISE, edge_tensor, mask_tensor, removal_image
from engine.methods import iir_net
from engine.models import ModelCache
from engine.train import iir_net as trainer
from tests.test_controlnet_features import whole_controlnets
from tests.test_iir_net import _picture, no_default_checkpoint, one_thread  # noqa: F401 (fixtures)



def _left_half(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))
    return mask


def _run(models, **kw):
    args = dict(image=_picture(), prompt="a green square", mask=_left_half(), steps=2, resolution=64)
    args.update(kw)
    return iir_net.run(iir_net.IIRNetInputs(**args), models)


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, np.float64)


@contextmanager
def _inputs_of(module: torch.nn.Module, seen: list):
    """Record the call arguments of `module` (a cached model: the hook is removed on exit)."""
    handle = module.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args, dict(kwargs))), with_kwargs=True)
    try:
        with whole_controlnets():  # a ControlNet's condition image is read at each call
            yield seen
    finally:
        handle.remove()


def _checkpoint(tiny_models, folder, trained: bool, meta: dict | None = None):
    """A 4-channel IIR-Net ControlNet folder. `trained`: the zero convolutions that from_unet
    leaves at 0 get random weights (as any training moves them), so R(x0) reaches the UNet."""
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        net = ControlNetModel.from_unet(tiny_models.sd().unet, conditioning_channels=4)
        if trained:
            with torch.no_grad():
                for p in net.parameters():
                    if p.abs().sum() == 0:
                        p.normal_(0, 0.05)
                net.controlnet_cond_embedding.conv_out.weight.normal_(0, 0.5)  # R(x0) weighs in clearly
    net.save_pretrained(folder, safe_serialization=True)
    if meta is not None:
        (folder / "iir_net.json").write_text(json.dumps(meta))
    return str(folder)


META_DEFAULT = {"max_noise": MAX_NOISE, "canny_low": 100, "canny_high": 200}


@pytest.fixture(scope="module")
def checkpoints(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("iir_ckpts")
    clear_cache()
    return SimpleNamespace(
        trained=_checkpoint(tiny_models, root / "trained", True, META_DEFAULT),
        untrained=_checkpoint(tiny_models, root / "untrained", False, META_DEFAULT),
        narrow=_checkpoint(tiny_models, root / "narrow", True, {"max_noise": 300, "canny_low": 50, "canny_high": 150}),
        bare=_checkpoint(tiny_models, root / "bare", True, None))


@pytest.fixture
def final_latents(monkeypatch):
    """The latents each `run` decodes (its output before the VAE)."""
    seen = []
    real = S.decode_latents
    monkeypatch.setattr(S, "decode_latents", lambda sd, z: seen.append(z.clone()) or real(sd, z))
    return seen


@pytest.fixture
def controlnet_calls(monkeypatch):
    """Every call of the trained-mode ControlNet that `run` loads: (args, kwargs)."""
    seen, handles = [], {}
    real = iir_net.load_iir_controlnet

    def load(*args, **kw):
        model = real(*args, **kw)
        if id(model) not in handles:  # the same cached model comes back for the same folder
            handles[id(model)] = model.register_forward_pre_hook(
                lambda _m, a, k: seen.append((a, dict(k))), with_kwargs=True)
        return model

    monkeypatch.setattr(iir_net, "load_iir_controlnet", load)
    monkeypatch.setattr(S, "supports_features", lambda model: False)  # whole ControlNets, as whole_controlnets()
    yield seen
    for h in handles.values():
        h.remove()


def _photo_tensors():
    image = iir_net.load_image(_picture(), 64)
    x = S.pil_to_tensor(image)
    m = mask_tensor(np.asarray(_left_half(), np.float32) / 255)
    return image, x, m


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


# -- Eq. 4-6 through run: the removal image and the noise slider ------------------------------------
def test_run_removal_image_is_gray_at_k0_noisier_with_k_and_the_input_outside(tiny_models):
    """Eq. 4: gray inside the RoI; Eq. 5-6: the slider's k adds more noise inside as it grows;
    outside the RoI the removal image is the input for every k. The training-free img2img
    strength (so the UNet calls) grows with k too."""
    image, _, _ = _photo_tensors()
    photo = _px(image)
    gray = photo @ np.array(LUMA)
    deviation, calls = [], []
    for k in (0, 200, 600, MAX_NOISE):
        res = _run(tiny_models, noise=k, steps=10)
        removal = _px(res.intermediates["removal"])
        assert np.array_equal(removal[:, 32:], photo[:, 32:]), f"outside the RoI changed at k={k}"
        inside = removal[:, :32]
        if k == 0:
            assert np.abs(inside - gray[:, :32, None]).max() <= 0.51  # gray, up to 8-bit rounding
            assert np.abs(photo[:, :32, 0] - photo[:, :32, 1]).mean() > 5  # it was coloured
        deviation.append(np.abs(inside - gray[:, :32, None]).mean())
        calls.append(res.unet_evals["forward"])
    assert deviation == sorted(deviation) and len(set(deviation)) == 4, deviation
    assert deviation[-1] > 30
    assert calls == sorted(calls) and calls[0] < calls[-1] == 10, calls


# -- Eq. 3 and 7: the trained mode's ControlNet reads R(x0) = [x'_k, C(x0)] ----------------------------
def test_trained_controlnet_reads_the_removal_image_and_the_edges(tiny_models, checkpoints, controlnet_calls):
    image, x, m = _photo_tensors()
    alphas = tiny_models.sd().scheduler().alphas_cumprod
    edges = edge_tensor(image, 100, 200)[0, 0]
    assert edges.sum() > 0
    for k in (0, MAX_NOISE):
        controlnet_calls.clear()
        res = _run(tiny_models, checkpoint=checkpoints.trained, noise=k)
        assert res.params["mode"] == "trained" and len(controlnet_calls) == 2  # one per step
        cond = controlnet_calls[0][1]["controlnet_cond"][0].float()
        assert cond.shape == (4, 64, 64)
        assert torch.equal(cond[:3, :, 32:], x[0, :, :, 32:])  # outside the RoI: the photo
        assert torch.equal(cond[3], edges)  # channel 4: C(x0)
        inside = cond[:3, :, :32]
        if k == 0:  # Eq. 4: gray inside; no noise at k = 0
            expected = removal_image(x, m, 0, torch.zeros_like(x), alphas)[0]
            assert torch.allclose(cond[:3], expected, atol=1e-6)
            assert torch.allclose(inside[0], inside[1]) and torch.allclose(inside[1], inside[2])
        else:  # Eq. 5-6 at k = K: next to nothing of the gray image is left
            corr = np.corrcoef(inside.flatten().numpy(), _gray(x)[0, :, :, :32].expand(3, -1, -1).flatten().numpy())[0, 1]
            assert corr < 0.3


def test_trained_checkpoint_steers_the_edit_and_an_untrained_one_does_not(tiny_models, checkpoints, final_latents):
    """The ControlNet adds its residuals (scale 1) to the UNet: a trained one makes the edit
    follow R(x0) (the slider k moves it); an untrained one (zero convolutions) adds nothing."""
    for ckpt in (checkpoints.trained, checkpoints.untrained):
        for k in (0, MAX_NOISE):
            _run(tiny_models, checkpoint=ckpt, noise=k)
    t0, t1, u0, u1 = final_latents
    assert torch.equal(u0, u1)
    assert (t0 - t1).abs().mean() > 1e-3 * t0.abs().mean()
    assert (t0 - u0).abs().mean() > 1e-2 * t0.abs().mean()


# -- the training-free mode ---------------------------------------------------------------------------
def test_training_free_canny_controlnet_reads_the_edges_and_they_steer_the_edit(tiny_models, final_latents):
    """C(x0) goes to the Canny ControlNet, whose residuals (scale 1, not 0) reach the UNet: other
    edges, other latents (the tiny random ControlNet weighs little, but every bit of the
    difference comes from the edges: the runs are otherwise identical)."""
    image, _, _ = _photo_tensors()
    seen, unet_calls = [], []
    with _inputs_of(tiny_models.get("controlnet_canny"), seen), _inputs_of(tiny_models.sd().unet, unet_calls):
        _run(tiny_models, canny_low=100, canny_high=200)
    cond = seen[0][1]["controlnet_cond"][0].float()
    edges = edge_tensor(image, 100, 200)[0, 0]
    assert all(torch.equal(cond[c], edges) for c in range(3)) and edges.sum() > 0
    residuals = unet_calls[0][1]["down_block_additional_residuals"]
    assert all(r.abs().sum() > 0 for r in residuals)
    _run(tiny_models, canny_low=0, canny_high=10)  # other edges, same everything else
    assert not torch.equal(edge_tensor(image, 0, 10)[0, 0], edges)
    assert not torch.equal(final_latents[0], final_latents[1])


def test_training_free_final_latents_are_the_inputs_outside_the_roi(tiny_models, final_latents):
    latents = final_latents
    res = _run(tiny_models, noise=300, steps=4)
    assert res.params["mode"] == "training-free" and len(latents) == 1
    sd = tiny_models.sd()
    z0 = S.encode_image(sd, iir_net.load_image(_picture(), 64))
    m = to_latent(np.asarray(_left_half(), np.float32) / 255, *z0.shape[-2:])
    outside, inside = (m == 0).expand_as(z0), (m == 1).expand_as(z0)
    assert torch.equal(latents[0][outside], z0[outside])
    assert (latents[0][inside] - z0[inside]).abs().mean() > 1e-2


def test_training_free_img2img_starts_from_the_removal_image(tiny_models):
    """Whole image, k = 0: the photo and its own gray version share the removal image, so the
    first UNet call sees the same latents; another photo gives other latents."""
    sd = tiny_models.sd()
    photo = _picture()
    gray = _run(tiny_models, image=photo, mask=None, whole_image=True).intermediates["removal"]

    def first_latents(image):
        seen = []
        with _inputs_of(sd.unet, seen):
            _run(tiny_models, image=image, mask=None, whole_image=True)
        return seen[0][0][0]

    a, b, c = first_latents(photo), first_latents(gray), first_latents(_picture(5))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-2


# -- training (Eq. 8, random k per sample) --------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iir_mech_data")
    for i, caption in enumerate(["a red cat", "a blue car", "sunset over the sea", "a green tree"]):
        _picture(10 + i).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
    return folder


def _train(data, out, models, *extra):
    return trainer.main(["--data", str(data), "--out", str(out), "--steps", "2", "--batch", "2", "--lr", "1e-3",
                         "--resolution", "64", "--profile", "tiny", "--roi", "whole", "--eval-every", "1",
                         "--quiet", *extra], models=models)


def test_training_feeds_eq8_with_the_added_noise_and_R_x0_with_a_random_k(tiny_models, data_dir, tmp_path,
                                                                         monkeypatch):
    """At the training entry point: the loss's target is the eps that made z_t from z0
    (z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps); its condition is [removal image, edges]
    with k drawn per sample from 0..K (--max-noise)."""
    sd = tiny_models.sd()
    scale = sd.vae.config.scaling_factor
    means, removals, ks, losses = [], [], [], []
    real_encode = sd.vae.encode

    def encode(x):  # the posterior's mean only, so z0 is known exactly
        dist = real_encode(x).latent_dist
        means.append((dist.mean * scale).float())
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=dist.mean, std=torch.zeros_like(dist.mean)))

    def removal(x, m, k, noise, alphas):
        out = removal_image(x, m, k, noise, alphas)
        ks.extend(torch.as_tensor(k).flatten().tolist())
        removals.append(out)
        return out

    real_loss = trainer.iir_loss

    def loss(controlnet, unet, z_t, t, emb, r, noise):
        losses.append((z_t.detach().clone(), t.clone(), r.clone(), noise.clone()))
        value = real_loss(controlnet, unet, z_t, t, emb, r, noise)
        with torch.no_grad():  # Eq. 8 written out: || eps - eps_theta(z_t, t, S, R(x0)) ||^2
            down, mid = controlnet(z_t, t, encoder_hidden_states=emb, controlnet_cond=r, return_dict=False)
            eps = unet(z_t, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample
            assert float(value) == pytest.approx(float(((eps.float() - noise) ** 2).mean()), rel=1e-4)
        return value

    monkeypatch.setattr(sd.vae, "encode", encode)
    monkeypatch.setattr(trainer, "removal_image", removal)
    monkeypatch.setattr(trainer, "iir_loss", loss)
    assert _train(data_dir, tmp_path / "out", tiny_models, "--max-noise", "400") == 0
    alphas = sd.scheduler().alphas_cumprod
    assert len(losses) >= 4
    for z_t, t, r, noise in losses:
        a = alphas[t].view(-1, 1, 1, 1)
        z0 = (z_t - (1 - a).sqrt() * noise) / a.sqrt()  # what z0 must be if `noise` is Eq. 8's eps
        assert any(m.shape == z0.shape and torch.allclose(z0, m, atol=1e-3) for m in means), t
        assert r.shape[1] == 4 and any(torch.equal(r[:, :3], out) for out in removals)
        edges = r[:, 3]
        assert set(edges.unique().tolist()) <= {0.0, 1.0} and edges.sum() > 0
    assert all(0 <= k <= 400 for k in ks) and len(set(ks)) > 3 and max(ks) > 100, ks
    meta = json.loads((tmp_path / "out" / "iir_net.json").read_text())
    assert (meta["max_noise"], meta["canny_low"], meta["canny_high"]) == (400, 100, 200)


def test_eq8_loss_is_the_squared_error_of_the_predicted_noise():
    """iir_loss: || eps - eps_theta(z_t, t, S, R(x0)) ||^2, the ControlNet's residuals going into the UNet."""
    z_t, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    residuals = ([torch.ones(1)], torch.ones(1))
    seen = {}

    def controlnet(z, t, encoder_hidden_states, controlnet_cond, return_dict):
        seen["cond"] = controlnet_cond
        return residuals

    def unet_predicting(pred):
        def unet(z, t, encoder_hidden_states, down_block_additional_residuals, mid_block_additional_residual):
            seen["residuals"] = (down_block_additional_residuals, mid_block_additional_residual)
            return SimpleNamespace(sample=pred)
        return unet

    r = torch.rand(2, 4, 64, 64)
    args = (z_t, torch.tensor([5, 900]), torch.zeros(2, 77, 32), r, noise)
    assert float(trainer.iir_loss(controlnet, unet_predicting(noise), *args)) == 0.0
    assert float(trainer.iir_loss(controlnet, unet_predicting(noise + 0.5), *args)) == pytest.approx(0.25)
    assert float(trainer.iir_loss(controlnet, unet_predicting(z_t), *args)) > 0.5
    assert seen["cond"] is r and seen["residuals"] == residuals


class _HalfCache(ModelCache):
    """The cache as on a GPU (fp16 weights), here on the CPU."""

    @property
    def dtype(self):
        return torch.float16


def test_training_from_an_fp16_cache_without_amp_builds_its_own_fp32_copies(model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    half = _HalfCache("tiny", device="cpu", cache_dir=model_dir)
    unet = half.sd().unet
    assert unet.dtype == torch.float16
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    assert _train(data_dir, tmp_path / "out", half, "--no-amp") == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["finished"] and all(np.isfinite(v) for _, v in state["eval_loss"])
    weights = load_file(tmp_path / "out" / "diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert unet.dtype == torch.float16 and all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())


# -- the checkpoint's iir_net.json sets K and the Canny thresholds ---------------------------------------
def test_checkpoint_settings_come_from_its_iir_net_json(tiny_models, checkpoints, controlnet_calls):
    with pytest.raises(ValueError, match=r"noise level 301 is above .*K = 300"):
        _run(tiny_models, checkpoint=checkpoints.narrow, noise=301)
    with pytest.raises(ValueError, match=r"Canny thresholds 100/200 differ from the 50/150"):
        _run(tiny_models, checkpoint=checkpoints.narrow, canny_low=100, canny_high=200)
    with pytest.raises(ValueError, match=r"Canny thresholds 100/None differ"):
        _run(tiny_models, checkpoint=checkpoints.narrow, canny_low=100)
    res = _run(tiny_models, checkpoint=checkpoints.narrow, noise=300)
    assert (res.params["max_noise"], res.params["canny_low"], res.params["canny_high"]) == (300, 50, 150)
    image, _, _ = _photo_tensors()
    edges = edge_tensor(image, 50, 150)[0, 0]
    assert not torch.equal(edges, edge_tensor(image, 100, 200)[0, 0])
    assert torch.equal(controlnet_calls[-1][1]["controlnet_cond"][0, 3].float(), edges)
    same = _run(tiny_models, checkpoint=checkpoints.narrow, noise=300, canny_low=50, canny_high=150)
    assert np.array_equal(_px(same.image), _px(res.image))
    # No iir_net.json (a ControlNet trained elsewhere): the defaults, said in the notes.
    bare = _run(tiny_models, checkpoint=checkpoints.bare, noise=MAX_NOISE)
    assert bare.params["max_noise"] == MAX_NOISE and any("iir_net.json" in n for n in bare.notes)


def test_a_malformed_iir_net_json_is_refused(tiny_models, checkpoints, tmp_path):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(checkpoints.bare, folder)
    for content, message in [("{", "not valid JSON"), ('{"max_noise": 2000, "canny_low": 1, "canny_high": 2}',
                                                       "max_noise"),
                             ('{"max_noise": 10, "canny_low": 200, "canny_high": 100}', "above canny_high")]:
        (folder / "iir_net.json").write_text(content)
        with pytest.raises(ValueError, match=message):
            _run(tiny_models, checkpoint=str(folder))
