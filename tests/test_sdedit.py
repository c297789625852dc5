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
