"""ITO's mechanisms, each guarded at the level of `ito.run` (papers/ito.txt; METHODS.md section 2).

A probe hooks the UNet, the ControlNets and the VAE decoder during one `run` and rebuilds what
the run did from what the models saw: the DDIM inversion x_t (Eq. 2), the guidance latents g_t,
every latent update y_t -> y'_t of the guidance pass and the final edit (Eq. 4-6), the mask pass
(Eq. 7) and which condition went where. The tests then check those against the paper:

- Eq. 6 + Eq. 4 + Eq. 5: every update of the edit equals (1 - lambda) * Adam(grad L_G(y_t, g_t)) +
  lambda * Adam(grad L_REC(y_t, x_t, 1 - m)) (torch.optim.Adam as the reference normaliser), for the
  first t_u steps only, with k steps of size gamma; the guidance pass is the same with lambda = 1;
- lambda is a graded trade-off: the edit's distance from the photo outside the mask falls, and its
  distance from the guidance image inside the mask grows, steadily across lambda in [0, 1];
- Fig. 1a: the guidance image starts from random noise (SDEdit), the final edit from the inversion;
- Eq. 7: the run's mask is the thresholded, smoothed average over n seeds of |eps_EDIT - eps_0|;
  a user mask replaces it or is added to it; C_0 and C_EDIT (text and ControlNet images) go to the
  right passes and the right rows of the batched mask call;
- t_E: the inversion and the edit run over the last round(ratio * steps) timesteps.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.core import conditions as K
from engine.core import ito_inputs as I
from engine.core import sampling as S
from engine.methods import ito
from tests.test_controlnet_features import whole_controlnets
from tests.test_ito import _photo, photo64  # noqa: F401 (a fixture)

BASE = dict(caption="a cat on grass", prompt="a red sports car", resolution=64, mask_seeds=2, cfg=7.5)
CFG = BASE["cfg"]



@pytest.fixture(scope="module")
def left_half():
    user = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(user).rectangle((0, 0, 31, 63), fill=255)
    return user


LEFT = torch.zeros(1, 1, 8, 8)
LEFT[..., :4] = 1.0  # the left-half user mask on the 8x8 latent grid (1 = edit)


# -- the probe ------------------------------------------------------------------------------------------
@dataclass
class Call:
    x: torch.Tensor      # UNet input (both CFG halves)
    t: int
    emb: torch.Tensor    # text embeddings, one row per sample
    out: torch.Tensor    # raw UNet output


@dataclass
class Probe:
    unet: list = field(default_factory=list)
    control: list = field(default_factory=list)   # (controlnet_cond, encoder_hidden_states) per ControlNet call
    decoded: list = field(default_factory=list)   # latents handed to the VAE decoder (scaled back)


@contextmanager
def probe(models):
    sd = models.sd()
    p = Probe()
    sf = sd.vae.config.scaling_factor
    hooks = [
        sd.unet.register_forward_hook(
            lambda m, a, kw, out: p.unet.append(Call(a[0].detach().clone(), int(a[1]),
                                                     kw["encoder_hidden_states"].detach().clone(),
                                                     out.sample.detach().clone())), with_kwargs=True),
        sd.vae.post_quant_conv.register_forward_pre_hook(lambda m, a: p.decoded.append(a[0].detach().clone() * sf)),
    ]
    for name in ("controlnet_scribble", "controlnet_openpose"):
        hooks.append(models.get(name).register_forward_pre_hook(
            lambda m, a, kw: p.control.append((kw["controlnet_cond"].detach().clone(),
                                               kw["encoder_hidden_states"].detach().clone())), with_kwargs=True))
    try:
        with whole_controlnets():  # the probe reads each ControlNet call's condition image
            yield p
    finally:
        for h in hooks:
            h.remove()


def _cfg(call: Call) -> torch.Tensor:
    """predict_noise's guided eps from the raw UNet output of a CFG batch [uncond; cond]."""
    eps_u, eps_c = call.out.chunk(2)
    return eps_u + CFG * (eps_c - eps_u)


def _inverted(sched, calls, steps):
    """The DDIM inversion trajectory [x_0 .. x_{t_n}] rebuilt from the inversion's UNet calls (Eq. 2)."""
    asc = S.timesteps(sched, steps).flip(0)
    traj = [c.x for c in calls]
    n = len(calls)
    a_from = S.alpha_bar(sched, asc[n - 2]) if n > 1 else S.alpha_bar(sched, -1)
    traj.append(S.ddim_move(calls[-1].x, calls[-1].out, a_from, S.alpha_bar(sched, asc[n - 1])))
    return traj


def _updates(sched, calls, start):
    """(y_t before, y'_t after) of each ITO update of a decoding pass, from its UNet calls (Eq. 1)."""
    pairs, y = [], start
    for c in calls:
        y_upd = c.x.chunk(2)[0]
        pairs.append((y, y_upd))
        y = S.ddim_step(sched, _cfg(c), c.t, y_upd)
    return pairs


def _reference_update(y, x_t, g_t, keep, lam, k, lr):
    """Eq. 6 with torch.optim.Adam normalising each loss's gradient (ito_optim's docstring)."""
    z = y.clone()
    terms = []
    if lam > 0:  # Eq. 4: squared distance to x_t where the mask keeps the photo
        terms.append((lam, lambda v: ((keep * (v - x_t)) ** 2).sum()))
    if g_t is not None and lam < 1:  # Eq. 5: 1 - cosine similarity with g_t
        terms.append((1 - lam, lambda v: 1 - (v * g_t).sum() / (v.norm() * g_t.norm())))
    shadows = [torch.zeros_like(z, requires_grad=True) for _ in terms]
    opts = [torch.optim.Adam([s], lr=1.0) for s in shadows]
    for _ in range(k):
        step = torch.zeros_like(z)
        for (w, fn), s, opt in zip(terms, shadows, opts):
            v = z.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(v), v)
            before = s.detach().clone()
            s.grad = grad
            opt.step()
            step = step + w * (before - s.detach())
        z = z - lr * step
    return z


def _stages(p: Probe, steps: int, lam: float, mask_pass: bool):
    """Split the UNet calls of a run (encode ratio 1) into its stages."""
    calls, n = list(p.unet), steps
    out = {"inversion": calls[:n]}
    calls = calls[n:]
    if mask_pass:
        out["mask"] = calls[:n // 2 if n > 1 else 1]
        calls = calls[len(out["mask"]):]
    if lam < 1:
        out["guidance"], out["guidance inversion"] = calls[:n], calls[n:2 * n]
        calls = calls[2 * n:]
    out["edit"] = calls
    assert len(calls) == n, [len(v) for v in out.values()]
    return out


def _latent_image(mask_img: Image.Image, h: int = 8, w: int = 8) -> torch.Tensor:
    """The run's mask picture back on the latent grid (it was resized with NEAREST)."""
    arr = np.asarray(mask_img.resize((w, h), Image.NEAREST)) > 127
    return torch.from_numpy(arr.astype(np.float32))[None, None]


# -- Eq. 4-6 inside the run ------------------------------------------------------------------------------
@pytest.mark.parametrize("lam,t_u,k,lr", [(0.3, 3, 1, 0.1), (0.7, 2, 2, 0.05)])
def test_every_update_of_the_run_is_eq6_on_x_t_and_g_t(tiny_models, photo64, left_half, lam, t_u, k, lr):
    """The edit's updates are Eq. 6 with this lambda, gamma and k, against the photo's inversion x_t
    outside the mask (Eq. 4) and the guidance inversion g_t (Eq. 5), during the first t_u steps only;
    the guidance pass's are Eq. 4 alone (lambda = 1, Fig. 1a)."""
    steps = 5
    sched = tiny_models.sd().scheduler()
    with probe(tiny_models) as p:
        ito.run(ito.ITOInputs(image=photo64, mask=left_half, lam=lam, steps=steps, t_u=t_u, k=k, lr=lr,
                              **BASE), tiny_models)
    st = _stages(p, steps, lam, mask_pass=False)
    assert all(c.x.shape[0] == 2 for c in st["edit"] + st["guidance"])
    traj = _inverted(sched, st["inversion"], steps)
    gtraj = _inverted(sched, st["guidance inversion"], steps)
    x_t = [traj[steps - i] for i in range(steps)]
    g_t = [gtraj[steps - i] for i in range(steps)]
    keep = 1.0 - LEFT
    assert torch.allclose(gtraj[0], p.decoded[0], atol=1e-5)  # g_0 is the guidance image's latents
    # The final edit starts from x_{t_E} of the inversion (Fig. 1b).
    edit = _updates(sched, st["edit"], traj[steps])
    for i, (y, y_new) in enumerate(edit):
        if i < t_u:
            want = _reference_update(y, x_t[i], g_t[i], keep, lam, k, lr)
            assert torch.allclose(y_new, want, atol=1e-5), (i, float((y_new - want).abs().max()))
            assert float((y_new - y).abs().max()) > 0.5 * lr * min(lam, 1 - lam)
        else:
            assert torch.equal(y_new, y), f"edit step {i} >= t_u = {t_u} was updated"
    # The guidance pass: preservation only, from its own start.
    guide = _updates(sched, st["guidance"], st["guidance"][0].x.chunk(2)[0])[1:]
    for i, (y, y_new) in enumerate(guide, start=1):
        want = _reference_update(y, x_t[i], None, keep, 1.0, k, lr) if i < t_u else y
        assert torch.allclose(y_new, want, atol=1e-5), ("guidance", i)
        assert torch.equal(y_new[..., :4], y[..., :4])  # no pull inside the edit mask


def test_lambda_is_a_graded_trade_off_across_its_range(tiny_models, photo64, left_half):
    """Fig. 5: lambda moves the edit steadily from the guidance image (0) to the photo (1). Outside the
    mask the distance to the photo's latents falls, inside the distance to the guidance latents grows,
    each of the four quarter steps of lambda carrying a real share of the whole change (the old single
    Adam on the weighted sum moved almost nothing between 0.25 and 0.75 and everything at 1)."""
    sd = tiny_models.sd()
    x0 = S.encode_image(sd, photo64).float()
    lams = (0.0, 0.25, 0.5, 0.75, 1.0)
    out_photo, in_guide, guide = [], [], None
    for lam in lams:
        with probe(tiny_models) as p:
            ito.run(ito.ITOInputs(image=photo64, mask=left_half, lam=lam, steps=4, t_u=3, **BASE), tiny_models)
        y0 = p.decoded[-1]
        if guide is None:
            guide = p.decoded[0]
        out_photo.append(float(((y0 - x0).abs() * (1 - LEFT)).sum() / (4 * (1 - LEFT).sum())))
        in_guide.append(float(((y0 - guide).abs() * LEFT).sum() / (4 * LEFT.sum())))
    for name, seq, sign in (("outside, to the photo", out_photo, -1), ("inside, to the guidance", in_guide, 1)):
        steps = np.diff(seq) * sign
        total = float(seq[-1] - seq[0]) * sign
        assert total > 0.05 * abs(seq[0]), (name, seq)
        assert (steps > 0.1 * total).all() and (steps < 0.5 * total).all(), (name, seq)


# -- Fig. 1: where each pass starts -------------------------------------------------------------------------
def test_guidance_starts_from_noise_and_the_edit_from_the_inversion(tiny_models, photo64, left_half):
    """The guidance image is an SDEdit of x_0 with the seed's noise: another seed, another guidance
    image. The final edit starts from the DDIM inversion: at lambda = 1 (no guidance) with the mask
    given, nothing random is left, so the seed changes nothing."""
    kw = dict(image=photo64, mask=left_half, steps=4, t_u=3, **BASE)
    runs = {s: ito.run(ito.ITOInputs(seed=s, lam=0.6, **kw), tiny_models) for s in (0, 1)}
    g0, g1 = (np.asarray(runs[s].intermediates["guidance"], np.float32) for s in (0, 1))
    assert np.abs(g0 - g1).mean() > 1.0
    sd = tiny_models.sd()
    with probe(tiny_models) as p:
        ito.run(ito.ITOInputs(seed=0, lam=0.6, **kw), tiny_models)
    st = _stages(p, 4, 0.6, mask_pass=False)
    sched = sd.scheduler()
    traj = _inverted(sched, st["inversion"], 4)
    noise = S.randn((1, 4, 8, 8), S.make_generator(0, "cpu"), "cpu", torch.float32)  # the run's first draw
    start = S.add_noise(sched, traj[0], noise, st["guidance"][0].t)  # SDEdit encoding of x_0 at t_E
    first = _reference_update(start, traj[4], None, 1.0 - LEFT, 1.0, 1, 0.1)
    assert torch.allclose(st["guidance"][0].x.chunk(2)[0], first, atol=1e-5)
    a = ito.run(ito.ITOInputs(seed=0, lam=1.0, **kw), tiny_models)
    b = ito.run(ito.ITOInputs(seed=7, lam=1.0, **kw), tiny_models)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


# -- Eq. 7: the mask ---------------------------------------------------------------------------------------------
def _blur(m, sigma):
    """Gaussian smoothing (replicate borders), written here as a reference."""
    r = max(1, int(round(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=m.dtype)
    k1 = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k2 = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
    return torch.nn.functional.conv2d(torch.nn.functional.pad(m, (r, r, r, r), mode="replicate"), k2[None, None])


def _reference_mask(models, photo, caption, prompt, n, tau, seed, steps, mask_ratio=0.5):
    """Eq. 7 written out per seed (no batching): x_E(s_i) = SDEdit noise of x_0; DDIM under C_0 and under
    C_EDIT to the last step; mean over seeds of |eps_EDIT - eps_0|, smoothed, normalised, > tau."""
    sd = models.sd()
    sched = sd.scheduler()
    x0 = S.encode_image(sd, photo).float()
    c0, ce, un = S.encode_prompts(sd, [caption, prompt, ""]).chunk(3)
    noises = S.randn((n, 4, 8, 8), S.make_generator(seed, "cpu"), "cpu", torch.float32)  # the run's first draw
    ts = S.sdedit_timesteps(sched, steps, mask_ratio)
    counter, total = S.UNetCounter(), torch.zeros(1, 1, 8, 8)
    for i in range(n):
        last = []
        for cond in (c0, ce):
            x = S.add_noise(sched, x0, noises[i:i + 1], ts[0])
            for j, t in enumerate(ts):
                eps = S.predict_noise(sd.unet, x, t, cond, counter, uncond=un, cfg=CFG)
                if j < len(ts) - 1:
                    x = S.ddim_step(sched, eps, t, x)
            last.append(eps)
        total += (last[1] - last[0]).abs().mean(dim=1, keepdim=True)
    soft = _blur(total / n, ito.MASK_SIGMA)
    return (soft / soft.max() > tau).float(), soft / soft.max()


@pytest.mark.parametrize("n,tau,seed", [(3, 0.5, 0), (2, 0.8, 5)])
def test_run_mask_is_eq7_over_n_seeds_thresholded_at_tau(tiny_models, photo64, n, tau, seed):
    steps = 4
    res = ito.run(ito.ITOInputs(image=photo64, lam=1.0, steps=steps, t_u=2, tau=tau, seed=seed,
                                **{**BASE, "mask_seeds": n}), tiny_models)
    want, soft = _reference_mask(tiny_models, photo64, BASE["caption"], BASE["prompt"], n, tau, seed, steps)
    near = (soft - tau).abs() < 1e-4  # a cell this close to tau may round either way
    got = _latent_image(res.intermediates["mask"])
    assert torch.equal(got[~near], want[~near]) and 0 < float(want.mean()) < 1, (got, want)
    # A single seed's map is not the average: the n seeds really count.
    one, _ = _reference_mask(tiny_models, photo64, BASE["caption"], BASE["prompt"], 1, tau, seed, steps)
    assert not torch.equal(one, want)


def test_tau_thins_the_mask_monotonically(tiny_models, photo64):
    fractions = [ito.run(ito.ITOInputs(image=photo64, lam=1.0, steps=4, t_u=0, tau=tau, **BASE),
                         tiny_models).params["mask_fraction"] for tau in (0.05, 0.4, 0.7, 0.95)]
    assert all(a >= b for a, b in zip(fractions, fractions[1:])) and fractions[0] > fractions[-1] + 0.3, fractions


def test_user_mask_replaces_or_is_added_to_the_estimate(tiny_models, photo64):
    kw = dict(image=photo64, lam=1.0, steps=4, t_u=2, tau=0.6, **BASE)
    estimate = _latent_image(ito.run(ito.ITOInputs(**kw), tiny_models).intermediates["mask"])
    r, c = (int(v) for v in (estimate[0, 0] == 0).nonzero()[0])  # a cell the estimate leaves out
    drawn = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(drawn).rectangle((8 * c, 8 * r, 8 * c + 7, 8 * r + 7), fill=255)
    user = _latent_image(drawn)
    added = _latent_image(ito.run(ito.ITOInputs(mask=drawn, mask_mode="add", **kw), tiny_models).intermediates["mask"])
    replaced = _latent_image(ito.run(ito.ITOInputs(mask=drawn, mask_mode="replace", **kw),
                                     tiny_models).intermediates["mask"])
    assert 0 < float(estimate.mean()) < 1
    assert torch.equal(added, torch.maximum(estimate, user)) and torch.equal(replaced, user)
    assert not torch.equal(estimate, added) and not torch.equal(added, user)  # both parts count


# -- conditions: C_0 and C_EDIT go where the paper puts them ---------------------------------------------------
def test_c0_and_c_edit_reach_the_right_passes_and_batch_rows(tiny_models, photo64):
    """Text and ControlNet images: the inversion (x_t and the mask's reference) under C_0, the guidance
    pass, its inversion and the edit under C_EDIT; in the batched mask call, the first n rows of each
    CFG half pair C_0's text with C_0's scribble and the last n C_EDIT's text with C_EDIT's scribble."""
    sd = tiny_models.sd()
    src = K.scribble_from_edges(photo64)
    edit = src.copy()
    ImageDraw.Draw(edit).rectangle((0, 0, 20, 20), fill=(255, 255, 255))
    c0, ce, un = S.encode_prompts(sd, [BASE["caption"], BASE["prompt"], ""]).chunk(3)
    img0, imge = (I.control_tensor(x, "cpu", torch.float32) for x in (src, edit))
    n, steps = BASE["mask_seeds"], 4
    with probe(tiny_models) as p:
        ito.run(ito.ITOInputs(image=photo64, scribble=edit, scribble_source=src, lam=0.6, steps=steps, t_u=2,
                              **BASE), tiny_models)
    st = _stages(p, steps, 0.6, mask_pass=True)
    assert len(p.control) == len(p.unet)  # the ControlNet runs with every UNet call
    ctl = dict(zip(map(id, p.unet), p.control))

    def rows(call):
        image, emb = ctl[id(call)]
        assert torch.equal(emb, call.emb)
        return image, emb

    for stage, (img, text) in (("inversion", (img0, c0)), ("guidance inversion", (imge, ce)),
                               ("guidance", (imge, ce)), ("edit", (imge, ce))):
        for call in st[stage]:
            image, emb = rows(call)
            assert all(torch.equal(r, img[0]) for r in image), stage
            cond_rows = emb[-1:]  # the conditional half (CFG puts the unconditional first)
            assert torch.equal(cond_rows[0], text[0]), stage
    for call in st["mask"]:
        image, emb = rows(call)
        assert image.shape[0] == emb.shape[0] == 4 * n
        for half in (0, 2 * n):  # [uncond half; cond half], each [C_0 x n; C_EDIT x n]
            assert all(torch.equal(image[half + i], img0[0]) for i in range(n))
            assert all(torch.equal(image[half + n + i], imge[0]) for i in range(n))
        assert all(torch.equal(emb[2 * n + i], c0[0]) and torch.equal(emb[3 * n + i], ce[0]) for i in range(n))
        assert all(torch.equal(emb[i], un[0]) for i in range(2 * n))


def test_encoding_ratio_sets_where_inversion_stops_and_the_edit_starts(tiny_models, photo64, left_half):
    sched = tiny_models.sd().scheduler()
    steps = 6
    for ratio in (0.5, 1.0):
        with probe(tiny_models) as p:
            res = ito.run(ito.ITOInputs(image=photo64, mask=left_half, lam=1.0, steps=steps, t_u=2,
                                        encode_ratio=ratio, **BASE), tiny_models)
        ts = [int(t) for t in S.sdedit_timesteps(sched, steps, ratio)]
        inv = [c.t for c in p.unet if c.x.shape[0] == 1]
        edit = [c.t for c in p.unet if c.x.shape[0] == 2]
        assert inv == ts[::-1] and edit == ts and res.params["decoding_steps"] == len(ts), (ratio, inv, edit)


# -- t_u, k, gamma: how hard the edit is pulled ----------------------------------------------------------------
def test_t_u_k_and_lr_set_how_hard_the_edit_is_pulled_to_the_photo(tiny_models, photo64, left_half):
    """Preservation only (lambda = 1), a drawn mask: no update (t_u = 0, or k = 0) is the plain DDIM
    decode of the inversion under C_EDIT, the same either way; more update steps t_u, more gradient
    steps k or a larger gamma each bring the edit's latents closer to the photo's outside the mask
    (Eq. 4's keep = 1 - m), while inside the mask they gain (almost) nothing."""
    sd = tiny_models.sd()
    x0 = S.encode_image(sd, photo64).float()

    def distances(**kw):  # (outside, inside) mean |y_0 - x_0|
        with probe(tiny_models) as p:
            ito.run(ito.ITOInputs(**{**dict(image=photo64, mask=left_half, lam=1.0, steps=4, t_u=4, k=1, lr=0.1,
                                            **BASE), **kw}), tiny_models)
        d = (p.decoded[-1] - x0).abs()
        return float((d * (1 - LEFT)).sum() / (4 * (1 - LEFT).sum())), float((d * LEFT).sum() / (4 * LEFT.sum()))

    free, free_in = distances(t_u=0)
    assert distances(k=0) == (free, free_in)
    by_t_u = [distances(t_u=t)[0] for t in (2, 3, 4)]
    by_k = [distances(k=k) for k in (1, 2, 3)]
    by_lr = [distances(lr=lr)[0] for lr in (0.02, 0.05, 0.1)]
    for name, seq in (("t_u", by_t_u), ("k", [d[0] for d in by_k]), ("lr", by_lr)):
        assert free > seq[0] > seq[1] > seq[2], (name, free, seq)
    strong_out, strong_in = by_k[-1]
    assert free_in - strong_in < 0.2 * (free - strong_out), (free, free_in, by_k[-1])
