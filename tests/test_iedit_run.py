"""iEdit's inference mechanisms, observed through `iedit.run` itself (issue 14): a UNet pre-hook
records what every denoising call receives, a spy on the decoder records the final latents,
and the expected values are computed here from the paper (Eq. 2 and Eq. 13), not by the
engine's helpers. Tiny random models, 96x64 px, a few DDIM steps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.core import sampling as S
from engine.core.image import load_image
from engine.methods import iedit

RES = 96
SEED = 5


@pytest.fixture(scope="module")
def small():
    return load_image(Path(__file__).resolve().parent.parent / "assets" / "examples" / "cat.png", RES)


def _left_half(photo: Image.Image) -> Image.Image:
    m = Image.new("L", photo.size, 0)
    ImageDraw.Draw(m).rectangle((0, 0, photo.width // 2 - 1, photo.height - 1), fill=255)
    return m


class Trace:
    """Every UNet call of a run (latents, timestep, text embeddings) and the latents decoded."""

    def __init__(self, unet, monkeypatch):
        self.calls: list[tuple[torch.Tensor, int, torch.Tensor]] = []
        self.decoded: list[torch.Tensor] = []
        self.unet = unet
        real = S.decode_latents

        def decode(sd, z):
            self.decoded.append(z.detach().clone())
            return real(sd, z)

        monkeypatch.setattr(S, "decode_latents", decode)

    def __enter__(self):
        def hook(module, args, kwargs):
            self.calls.append((args[0].detach().clone(), int(args[1]),
                               kwargs["encoder_hidden_states"].detach().clone()))

        self.handle = self.unet.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _run(tiny_models, small, **kw):
    args = dict(image=small, prompt="a photo of a dog", mask=_left_half(small), mask_source="brush",
                steps=4, strength=0.75, num_results=2, cfg=7.5, seed=SEED, resolution=RES)
    args.update(kw)
    return iedit.run(iedit.IEditInputs(**args), tiny_models)


def _expected(tiny_models, small, n, steps, strength):
    """x_0 = E(x), the run's noise draws, its timesteps and alpha_t, from the paper's recipe."""
    sd = tiny_models.sd()
    x0 = S.encode_image(sd, small)
    noise = torch.randn((n,) + tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(SEED))
    sched = sd.scheduler()
    sched.set_timesteps(steps)
    k = int(round(strength * steps))
    ts = [int(t) for t in sched.timesteps[steps - k:]]
    return x0, noise, ts, sched.alphas_cumprod


def _q(x0, noise, a):
    """Eq. 2: z_t = sqrt(a_t) z_1 + sqrt(1 - a_t) eps."""
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def test_run_keeps_background_at_every_step_and_input_at_the_end(tiny_models, small, monkeypatch):
    """Eq. 13 inside `run`: after every DDIM step the latents outside M are the input's latents
    noised to the next step, and after the last they are z_1 itself; the start is Eq. 2."""
    n, steps, strength = 2, 4, 0.75
    with Trace(tiny_models.sd().unet, monkeypatch) as tr:
        _run(tiny_models, small, num_results=n, steps=steps, strength=strength)
    x0, noise, ts, alphas = _expected(tiny_models, small, n, steps, strength)
    keep = torch.zeros_like(x0, dtype=torch.bool).expand(n, -1, -1, -1).clone()
    keep[..., x0.shape[-1] // 2:] = True  # the right half of the photo is outside the brush mask

    assert [t for _, t, _ in tr.calls] == ts  # SDEdit from round(0.75 * 4) = 3 steps before the end
    start = tr.calls[0][0][:n]
    assert torch.allclose(start, _q(x0, noise, alphas[ts[0]]), atol=1e-5)  # Eq. 2, per-result noise
    for i in range(1, len(ts)):
        lat = tr.calls[i][0][:n]
        want = _q(x0, noise, alphas[ts[i]])
        assert torch.allclose(lat[keep], want[keep], atol=1e-5), f"step {i}: background is not z_t (Eq. 13)"
        assert not torch.allclose(lat[~keep], want[~keep], atol=1e-3), f"step {i}: the edit region was reset"
    assert len(tr.decoded) == 1
    final = tr.decoded[0]
    assert torch.equal(final[keep], x0.expand_as(final)[keep])      # blending at t = 0: exactly z_1
    assert not torch.allclose(final[~keep], x0.expand_as(final)[~keep], atol=1e-3)
    assert not torch.allclose(final[0][~keep[0]], final[1][~keep[1]], atol=1e-3)  # one noise draw per result


def test_run_feeds_edit_prompt_with_classifier_free_guidance(tiny_models, small, monkeypatch):
    """CFG 7.5 on the edit prompt: each call holds [uncond, cond] for every result, one batch."""
    sd = tiny_models.sd()
    n = 3
    with Trace(sd.unet, monkeypatch) as tr:
        r = _run(tiny_models, small, num_results=n, prompt="a photo of a red dog")
    cond = S.encode_prompts(sd, ["a photo of a red dog"])
    uncond = S.encode_prompts(sd, [""])
    assert r.unet_evals["forward"] == len(tr.calls) == 3
    for lat, _, emb in tr.calls:
        assert lat.shape[0] == emb.shape[0] == 2 * n
        assert torch.equal(lat[:n], lat[n:])
        assert torch.allclose(emb[:n], uncond.expand(n, -1, -1)) and torch.allclose(emb[n:], cond.expand(n, -1, -1))
    # The guidance scale acts: CFG 1 and CFG 7.5 give different edits inside the mask.
    plain = _run(tiny_models, small, num_results=1, cfg=1.0)
    guided = _run(tiny_models, small, num_results=1, cfg=7.5)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(guided.images[0]))


def test_sampling_ratio_slider_moves_the_edit_monotonically(tiny_models, small, monkeypatch):
    """A higher sampling ratio starts from a noisier z_t: more DDIM steps and an edit region that
    moves further from the input; the background stays the input whatever the ratio."""
    sd = tiny_models.sd()
    x0 = S.encode_image(sd, small)
    distances, evals = [], []
    with Trace(sd.unet, monkeypatch) as tr:
        for strength in (0.4, 0.7, 1.0):
            r = _run(tiny_models, small, num_results=1, steps=10, strength=strength)
            evals.append(r.unet_evals["forward"])
            final = tr.decoded[-1]
            half = x0.shape[-1] // 2
            assert torch.equal(final[..., half:], x0[..., half:])
            distances.append(float((final[..., :half] - x0[..., :half]).abs().mean()))
    assert evals == [4, 7, 10]
    assert distances[0] < distances[1] < distances[2], distances


def test_untrained_checkpoint_reproduces_the_base_model(tiny_models, small, tmp_path):
    """A checkpoint is what runs: the base UNet saved as a 'checkpoint' gives the base output,
    bit for bit, and is reported as fine-tuned (a trained one differs: test_iedit's LoRA test
    and test_iedit_train's checkpoint test)."""
    tiny_models.sd().unet.save_pretrained(tmp_path / "same")
    a = _run(tiny_models, small, num_results=1, steps=2)
    b = _run(tiny_models, small, num_results=1, steps=2, checkpoint=str(tmp_path / "same"))
    assert b.params["mode"] == "fine-tuned" and a.params["mode"] == "base"
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_clipseg_mask_is_for_the_edit_term_and_follows_the_threshold(tiny_models, small, monkeypatch):
    """M comes from CLIPSeg queried with the edit term; a higher threshold never grows M."""
    from engine.core import segment as SG

    asked = []
    real = SG.clipseg_mask

    def spy(model, image, phrase):
        asked.append(phrase)
        return real(model, image, phrase)

    monkeypatch.setattr(SG, "clipseg_mask", spy)
    soft = real(tiny_models.get("clipseg"), small, "brown dog")
    levels = np.quantile(soft, [0.2, 0.5, 0.8])
    coverages = [_run(tiny_models, small, mask=None, mask_source="clipseg", mask_text="brown dog",
                      mask_threshold=float(th), num_results=1, steps=1).params["mask_coverage"] for th in levels]
    assert asked == ["brown dog"] * 3
    assert coverages[0] > coverages[1] > coverages[2] > 0, coverages
