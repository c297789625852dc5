"""SDEdit, the foundation's method, and the diffusion pieces under it."""
import numpy as np
import pytest
import torch
from PIL import Image

from engine.core import sampling as S
from engine.core.blended import masked_sdedit
from engine.core.inversion import ddim_invert
from engine.core.masks import to_latent
from engine.methods import sdedit
from engine.types import StepInfo


def _run(photo, models, **kw):
    args = dict(image=photo, prompt="a photo of a dog", steps=10, resolution=128)
    args.update(kw)
    return sdedit.run(sdedit.SDEditInputs(**args), models)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_output_other_seed_differs(photo, tiny_models):
    a = _run(photo, tiny_models, seed=1)
    b = _run(photo, tiny_models, seed=1)
    c = _run(photo, tiny_models, seed=2)
    assert a.image.size == photo.size
    assert np.array_equal(_pixels(a.image), _pixels(b.image))
    assert not np.array_equal(_pixels(a.image), _pixels(c.image))


def test_result_contract(photo, tiny_models):
    steps_seen = []
    res = sdedit.run(sdedit.SDEditInputs(image=photo, prompt="a dog", steps=10, strength=0.5, num_results=3,
                                         resolution=128), tiny_models, on_step=steps_seen.append)
    assert len(res.images) == 3
    assert res.unet_evals == {"forward": 5, "backward": 0}  # round(0.5 * 10) batched steps
    assert {"encode", "denoise", "decode", "total"} <= set(res.seconds)
    assert [s.i for s in steps_seen] == [1, 2, 3, 4, 5] and all(isinstance(s, StepInfo) for s in steps_seen)
    assert not np.array_equal(_pixels(res.images[0]), _pixels(res.images[1]))


def test_masked_latents_outside_equal_the_noised_input_at_every_step(photo, tiny_models):
    sd = tiny_models.sd()
    sched = sd.scheduler()
    x0 = S.encode_image(sd, photo)
    h, w = x0.shape[-2:]
    mask = np.zeros((photo.height, photo.width), np.float32)
    mask[: photo.height // 2, : photo.width // 2] = 1.0
    m = to_latent(mask, h, w)
    outside = (m == 0).expand_as(x0)
    assert outside.any() and (~outside).any()
    gen = S.make_generator(0, "cpu")
    noise = S.randn(x0.shape, gen, "cpu", x0.dtype)
    ts = S.sdedit_timesteps(sched, 10, 0.7)
    cond = S.encode_prompts(sd, ["a dog"])
    uncond = S.encode_prompts(sd, [""])
    seen = []

    def check(i, x, _background):
        seen.append(i)
        if i < len(ts) - 1:
            expected = S.add_noise(sched, x0, noise, S.previous_timestep(sched, ts[i]))
        else:
            expected = x0
        assert torch.allclose(x[outside], expected[outside], atol=1e-6)
        assert not torch.allclose(x[~outside], expected[~outside], atol=1e-3)

    final = masked_sdedit(sd.unet, sched, x0, noise, ts, cond, uncond, 7.5, S.UNetCounter(), mask=m,
                          on_latents=check)
    assert seen == list(range(len(ts)))
    assert torch.equal(final[outside], x0[outside])


def test_masked_run_keeps_the_photo_outside_roughly(photo, tiny_models):
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (0, 0, photo.width // 2, photo.height))
    res = _run(photo, tiny_models, mask=mask, seed=3)
    assert "mask" in res.intermediates and res.params["masked"]
    full = _run(photo, tiny_models, seed=3)
    right = slice(photo.width // 2 + 16, None)
    recon = S.decode_latents(tiny_models.sd(), S.encode_image(tiny_models.sd(), photo))[0]
    err_masked = np.abs(_pixels(res.image)[:, right] - _pixels(recon)[:, right]).mean()
    err_full = np.abs(_pixels(full.image)[:, right] - _pixels(recon)[:, right]).mean()
    assert err_masked < err_full


def test_ddim_inversion_reconstructs_better_than_random(photo, tiny_models):
    sd = tiny_models.sd()
    sched = sd.scheduler()
    x0 = S.encode_image(sd, photo)
    cond = S.encode_prompts(sd, ["a photo of a cat"])
    counter = S.UNetCounter()
    traj = ddim_invert(sd, sched, x0, cond, 20, counter)
    assert len(traj) == 21 and counter.forward == 20

    def sample(x):
        for t in S.timesteps(sched, 20):
            x = S.ddim_step(sched, S.predict_noise(sd.unet, x, t, cond, counter), t, x)
        return x

    err_inverted = (sample(traj[-1]) - x0).pow(2).mean()
    random_start = S.randn(x0.shape, S.make_generator(0, "cpu"), "cpu", x0.dtype)
    err_random = (sample(random_start) - x0).pow(2).mean()
    assert err_inverted < 0.25 * err_random


@pytest.mark.parametrize("field, value, message", [
    ("prompt", "   ", "prompt is empty"),
    ("strength", 1.5, "strength must be between"),
    ("strength", float("nan"), "finite"),
    ("steps", 0, "steps must be between"),
    ("steps", 2.5, "whole number"),
    ("cfg", "lots", "must be a number"),
    ("num_results", 5, "number of results"),
    ("seed", -1, "seed"),
    ("resolution", 100, "resolution"),
])
def test_bad_input_is_refused(photo, tiny_models, field, value, message):
    with pytest.raises(ValueError, match=message):
        _run(photo, tiny_models, **{field: value})


def test_bad_masks_are_refused(photo, tiny_models):
    with pytest.raises(ValueError, match="mask is empty"):
        _run(photo, tiny_models, mask=Image.new("L", photo.size, 0))
    with pytest.raises(ValueError, match="mask is"):
        _run(photo, tiny_models, mask=Image.new("L", (photo.width, photo.width * 2), 255))


# -- SDEdit's mechanisms at the level of run (tests/mutants/m_sdedit.py breaks each once) ---------
def _unet_inputs(models, seen):
    """Record (latents, t) of every UNet call; the hook goes when the test ends."""
    return models.sd().unet.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0].detach().clone(), int(args[1]))), with_kwargs=True)


@pytest.fixture
def final_latents(monkeypatch):
    """The latents each run decodes (its output before the VAE)."""
    seen = []
    real = S.decode_latents
    monkeypatch.setattr(S, "decode_latents", lambda sd, z: seen.append(z.clone()) or real(sd, z))
    return seen


def _left_mask(photo) -> Image.Image:
    mask = Image.new("L", photo.size, 0)
    mask.paste(255, (0, 0, photo.width // 2, photo.height))
    return mask


def test_strength_runs_the_last_ddim_steps_down_to_t0(photo, tiny_models):
    """SDEdit starts part-way: round(strength * steps) steps, from about strength * T down to the
    last DDIM step (the one that lands on t = 0), never the noisiest ones."""
    full = S.timesteps(tiny_models.sd().scheduler(), 10).tolist()
    for strength in (0.3, 0.6):
        seen = []
        handle = _unet_inputs(tiny_models, seen)
        try:
            _run(photo, tiny_models, strength=strength)
        finally:
            handle.remove()
        ts = [t for _, t in seen]
        assert len(ts) == round(strength * 10) and ts == sorted(ts, reverse=True)
        assert ts[-1] == min(full) and ts[0] <= strength * 1000


def test_unet_sees_the_photo_noised_to_each_step_and_kept_outside_the_mask(photo, tiny_models):
    """x_t ~ q(x_t | x_0): with one seed (one noise), two photos' UNet inputs differ by
    sqrt(abar_t) (x0_a - x0_b): everywhere at the first step, outside the mask at every step."""
    sd = tiny_models.sd()
    sched = sd.scheduler()
    other = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    calls = []
    for image in (photo, other):
        seen = []
        handle = _unet_inputs(tiny_models, seen)
        try:
            _run(image, tiny_models, strength=0.5, mask=_left_mask(photo), seed=4)
        finally:
            handle.remove()
        calls.append(seen)
    dx0 = S.encode_image(sd, photo) - S.encode_image(sd, other)
    m = to_latent(np.asarray(_left_mask(photo), np.float32) / 255, *dx0.shape[-2:])
    outside = (m == 0).expand_as(dx0)
    assert outside.any() and len(calls[0]) == 5
    for i, ((xa, t), (xb, _)) in enumerate(zip(*calls)):
        diff = (xa - xb)[:1]  # the CFG batch repeats the latents: take one
        expected = S.alpha_bar(sched, t).sqrt() * dx0
        where = torch.ones_like(outside) if i == 0 else outside
        assert torch.allclose(diff[where], expected[where], atol=1e-5), f"step {i} (t={t})"
    assert dx0.abs().mean() > 1e-2


def test_mask_keeps_the_input_latents_outside_and_all_ones_is_plain_sdedit(photo, tiny_models, final_latents):
    sd = tiny_models.sd()
    x0 = S.encode_image(sd, photo)
    _run(photo, tiny_models, mask=_left_mask(photo), seed=3)
    m = to_latent(np.asarray(_left_mask(photo), np.float32) / 255, *x0.shape[-2:])
    outside, inside = (m == 0).expand_as(x0), (m == 1).expand_as(x0)
    assert torch.equal(final_latents[0][outside], x0[outside])
    assert (final_latents[0][inside] - x0[inside]).abs().mean() > 1e-2
    _run(photo, tiny_models, mask=Image.new("L", photo.size, 255), seed=3)
    _run(photo, tiny_models, seed=3)
    assert torch.allclose(final_latents[1], final_latents[2], atol=1e-6)


def test_cfg_is_eps_uncond_plus_scale_times_the_difference_and_reads_the_negative_prompt(photo, tiny_models,
                                                                                       final_latents):
    """One DDIM step is linear in eps, so with eps = eps_neg + w (eps_pos - eps_neg) the output at
    CFG w is out_neg + w (out_pos - out_neg), where out_p is the output of the unguided run
    (CFG 1) on prompt p. A CFG ignored, halves swapped or the negative prompt dropped break it."""
    one_step = dict(steps=1, strength=1.0, seed=2)
    _run(photo, tiny_models, prompt="a dog", negative_prompt="a cat", cfg=1.0, **one_step)
    _run(photo, tiny_models, prompt="a cat", cfg=1.0, **one_step)
    _run(photo, tiny_models, prompt="a dog", negative_prompt="a cat", cfg=3.0, **one_step)
    _run(photo, tiny_models, prompt="a dog", negative_prompt="a cat", cfg=5.0, **one_step)
    pos, neg, w3, w5 = final_latents
    assert (pos - neg).abs().max() > 1e-4
    assert torch.allclose(w3, neg + 3.0 * (pos - neg), atol=1e-6, rtol=0)
    assert torch.allclose(w5, neg + 5.0 * (pos - neg), atol=1e-6, rtol=0)
