"""pix2pix-zero's mechanisms, each guarded at the level of `run` (issue 14): a test per equation of
METHODS.md section 1 that fails when the mechanism is removed, inverted, fed the wrong tensor or
given the wrong weight. tests/mutants/m_pix2pix_zero.py names the breakages these tests must kill.

Everything runs on the tiny random models at 64 px (latents 8x5) and 10 steps (the minimum); the
directions come from two pasted sentences per side, so no template bank is embedded here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.core import autocorr as A
from engine.core import sampling as S
from engine.core.image import load_image
from engine.core.inversion import ddim_invert
from engine.methods import p2pz_directions as D
from engine.methods import pix2pix_zero as P

ROOT = Path(__file__).resolve().parent.parent
STEPS = 10
CAPTION = "a photo of a cat"
SRC = "a photo of a cat\na cat sitting on a sofa"
TGT = "a photo of a dog\na dog sitting on a sofa"
# Two banks with the same sentences in another order: a valid request whose direction is exactly zero.
ZERO = dict(source="", target="", source_sentences="a cat\na dog", target_sentences="a dog\na cat")


@pytest.fixture(scope="module")
def cat():
    return load_image(ROOT / "assets" / "examples" / "cat.png", 128)


@pytest.fixture
def run(tiny_models, cat):
    """run(**fields) -> EditResult on the cat at 64 px, cat -> dog from pasted sentences, 10 steps."""

    def go(on_step=None, **kw):
        base = dict(image=cat, source="cat", target="dog", caption=CAPTION, source_sentences=SRC,
                    target_sentences=TGT, steps=STEPS, resolution=64)
        base.update(kw)
        return P.run(P.Pix2PixZeroInputs(**base), tiny_models, on_step=on_step)

    return go


def px(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def dist(a, b) -> float:
    """Mean absolute pixel difference of two images."""
    return float(np.abs(px(a) - px(b)).mean())


def same(a, b) -> bool:
    """Equal images up to rounding: at most one grey level apart, in under 1 % of the values."""
    d = np.abs(px(a) - px(b))
    return d.max() <= 1 and (d > 0).mean() < 0.01


def mean(values) -> float:
    return float(np.mean(values))


# -- Edit direction (Sec. 3.2) and c_edit = c + Delta c_edit ------------------------------------------
def test_zero_direction_without_guidance_reproduces_the_reconstruction(run):
    """The caption is CFG's unconditional prompt (official real-image script): with Delta c = 0 and
    lambda_xa = 0 every edit step is eps(c) + cfg (eps(c) - eps(c)) = eps(c), the reconstruction's step."""
    result = run(xa_guidance=0.0, cfg=5.0, **ZERO)
    assert result.params["direction"]["direction_norm"] == 0.0
    assert result.params["negative_prompt"] == CAPTION
    # equal up to the batch-2 vs batch-1 UNet numerics (bit-exact here; one grey level without the regulariser)
    assert same(result.image, result.intermediates["reconstruction"])
    # The empty unconditional prompt (the old default) drifts away from the reconstruction.
    empty = run(xa_guidance=0.0, cfg=5.0, negative_prompt="", **ZERO)
    assert dist(empty.image, empty.intermediates["reconstruction"]) > 1.0


def test_edit_without_guidance_is_cfg_sampling_with_c_plus_delta(tiny_models, cat, run):
    """Algorithm 1 with lambda_xa = 0: DDIM from x_inv with eps(c) + cfg (eps(c + Delta c) - eps(c)),
    written here with engine.core.sampling pieces; the reconstruction is the same DDIM with c alone. Fails on c - Delta c, on a dropped Delta c, on a
    CFG scale that is not applied and on the wrong unconditional prompt."""
    result = run(xa_guidance=0.0, cfg=4.0, seed=3)
    sd = tiny_models.sd()
    image = load_image(cat, 64)
    x0 = S.encode_image(sd, image).float()
    cond = S.encode_prompts(sd, [CAPTION]).float()
    delta = D.edit_direction(tiny_models, "cat", "dog", SRC, TGT).delta
    x = P.invert(sd, sd.scheduler(), x0, cond, STEPS, S.UNetCounter(), 20.0, 5, S.make_generator(3, "cpu"))
    scheduler = sd.scheduler()
    x_rec = x
    with torch.no_grad():
        for t in S.timesteps(scheduler, STEPS):
            eps = S.predict_noise(sd.unet, x, t, cond + delta, S.UNetCounter(), uncond=cond, cfg=4.0)
            x = S.ddim_step(scheduler, eps, t, x)
            # the reconstruction (where M_ref comes from): the same DDIM with c alone, no CFG
            x_rec = S.ddim_step(scheduler, S.predict_noise(sd.unet, x_rec, t, cond, S.UNetCounter()), t, x_rec)
        plain = S.decode_latents(sd, x)[0]
        reconstruction = S.decode_latents(sd, x_rec)[0]
    assert np.abs(px(result.image) - px(plain)).max() <= 1
    assert np.abs(px(result.intermediates["reconstruction"]) - px(reconstruction)).max() <= 1
    # and the direction does move the edit away from the reconstruction, differently for its reverse
    assert dist(result.image, result.intermediates["reconstruction"]) > 1.0
    back = run(xa_guidance=0.0, cfg=4.0, seed=3, source_sentences=TGT, target_sentences=SRC)
    assert dist(back.image, result.image) > 1.0


def test_direction_in_the_run_is_the_mean_embedding_difference(tiny_models, run):
    """Sec. 3.2: Delta c_edit = mean E(target sentences) - mean E(source sentences), (77, dim)."""
    sd = tiny_models.sd()
    result = run(xa_guidance=0.0)
    expected = (S.encode_prompts(sd, TGT.splitlines()).float().mean(0)
                - S.encode_prompts(sd, SRC.splitlines()).float().mean(0))
    assert result.params["direction"]["direction_norm"] == pytest.approx(float(expected.norm()), rel=1e-4)


def test_cfg_scale_moves_the_edit_monotonically(run):
    """CFG on the edit pass: the further the scale from 1, the further the edit from the CFG-1 edit."""
    base = run(xa_guidance=0.0, cfg=1.0)
    d3 = dist(run(xa_guidance=0.0, cfg=3.0).image, base.image)
    d8 = dist(run(xa_guidance=0.0, cfg=8.0).image, base.image)
    assert 0.5 < d3 < d8


# -- Cross-attention guidance (Eq. 4-5, Algorithm 1) ---------------------------------------------------
def test_zero_direction_guidance_is_a_no_op_at_every_step(run):
    """With Delta c = 0 the edit pass retraces the reconstruction, so M_edit(t) = M_ref(t) at every step
    and the gradient of L_xa is zero: even a strong lambda_xa reproduces the reconstruction. Guiding
    step t towards the maps of another step (the first one, say) pulls it away."""
    result = run(xa_guidance=2.0, **ZERO)
    assert max(result.curves["xa_loss_before_guidance"]) < 1e-9
    assert max(result.curves["xa_loss"]) < 1e-9
    assert same(result.image, result.intermediates["reconstruction"])


def test_xa_loss_is_measured_on_the_conditional_half(run):
    """At the first step both passes start from x_inv; with Delta c = 0 the conditional half of the CFG
    batch sees exactly the reference's input, so L_xa(T) = 0 although the unconditional half (the empty
    prompt here) differs. Later steps drift (the empty prompt's CFG), so the curve is not trivially 0."""
    result = run(xa_guidance=0.0, negative_prompt="", **ZERO)
    xa = result.curves["xa_loss"]
    assert xa[0] < 1e-9
    assert min(xa[1:]) > 1e-5


def test_every_guidance_step_lowers_the_cross_attention_loss(run):
    """Delta x_t = grad of L_xa and x_t <- x_t - lambda_xa Delta x_t: each step descends L_xa, and the
    guided edit stays closer to the reference maps than the unguided one."""
    guided = run(xa_guidance=1.0)
    free = run(xa_guidance=0.0)
    after, before = guided.curves["xa_loss"], guided.curves["xa_loss_before_guidance"]
    assert len(after) == len(before) == STEPS
    assert all(a < b for a, b in zip(after, before))
    assert sum(after) < sum(free.curves["xa_loss"])


def test_guidance_weight_moves_the_edit_monotonically(run):
    """lambda_xa is the step size: a larger weight moves the edit further from the unguided one."""
    free = run(xa_guidance=0.0)
    d_small = dist(run(xa_guidance=0.1).image, free.image)
    d_large = dist(run(xa_guidance=1.5).image, free.image)
    assert 0.0 < d_small < d_large


def test_unet_calls_per_stage(tiny_models, run):
    """Inversion and reconstruction: one conditional call a step (batch 1, no gradient); edit: one guided
    call with a gradient (batch 1, c_edit only) and one CFG call (batch 2) a step."""
    P.CACHE.clear()
    unet = tiny_models.sd().unet
    calls = []
    handle = unet.register_forward_pre_hook(lambda mod, args: calls.append((args[0].shape[0], torch.is_grad_enabled())))
    try:
        result = run(xa_guidance=0.5, seed=11)
    finally:
        handle.remove()
    assert result.unet_evals == {"forward": 4 * STEPS, "backward": STEPS}
    assert calls[:2 * STEPS] == [(1, False)] * (2 * STEPS)
    assert calls[2 * STEPS:] == [(1, True), (2, False)] * STEPS


# -- Regularised inversion (Sec. 3.1, Eq. 3, L_auto = L_pair + lambda L_KL) ------------------------------
def test_regularised_inverted_noise_has_less_autocorrelation(run):
    """METHODS.md's check at run level: the regularised inverted noise has a lower L_pair (all offsets)
    and a lower L_KL than the plain DDIM inversion."""
    plain = run(reg_iters=0).params["inverted_noise"]
    reg = run(reg_iters=5).params["inverted_noise"]
    assert reg["l_pair_all_offsets"] < plain["l_pair_all_offsets"]
    assert reg["l_kl"] < plain["l_kl"]


def test_pair_term_alone_lowers_the_autocorrelation(run):
    """lambda = 0 leaves L_pair alone: it still decorrelates the inverted noise."""
    plain = run(reg_iters=0).params["inverted_noise"]
    pair_only = run(reg_lambda=0.0, reg_iters=5).params["inverted_noise"]
    assert pair_only["l_pair_all_offsets"] < plain["l_pair_all_offsets"]


def test_lambda_slider_pulls_the_noise_towards_unit_gaussian(run):
    """lambda weights L_KL: the KL of the regularised noise falls strictly as lambda grows."""
    kl = [mean(run(reg_lambda=lam, reg_iters=5).curves["inversion_l_kl"]) for lam in (0.0, 5.0, 50.0)]
    assert kl[0] > kl[1] > kl[2]


def test_more_iterations_regularise_more(run):
    """The number of gradient iterations per inversion step counts: 5 pull further than 1."""
    one = run(reg_iters=1).curves["inversion_l_kl"]
    five = run(reg_iters=5).curves["inversion_l_kl"]
    assert mean(five) < 0.8 * mean(one)


def test_seed_draws_the_roll_offsets(run):
    """The seed's only randomness is the regulariser's roll offsets: other seed, other inverted noise;
    without regularisation the seed changes nothing."""
    a, b = run(seed=1), run(seed=2)
    assert a.params["inverted_noise"] != b.params["inverted_noise"]
    assert dist(a.intermediates["reconstruction"], b.intermediates["reconstruction"]) > 0
    c, d = run(seed=1, reg_iters=0), run(seed=2, reg_iters=0)
    assert c.params["inverted_noise"] == d.params["inverted_noise"]


def _literal_regularizer(reg_lambda, iters, generator):
    """Sec. 3.1 written out with loops over levels and channels (engine.core.autocorr vectorises it):
    pyramid eta^p (2x2 average pool x 2, down to 8x8, or 2 on tiny latents), rho = 1/S^2 sum eta eta_shift
    over the level's second moment at a random circular offset per level and axis, L_KL per channel,
    eta <- eta - STEP S_0^2 grad(L_pair + lambda L_KL). Offsets come from autocorr.draw_offsets on the
    run's generator (the same random numbers)."""

    def l_auto(eta, offsets):
        levels = [eta]
        floor = 8 if min(eta.shape[-2:]) >= 16 else 2
        while min(levels[-1].shape[-2], levels[-1].shape[-1]) // 2 >= floor:
            levels.append(F.avg_pool2d(levels[-1], 2) * 2)
        pair = 0.0
        for level, (dy, dx) in zip(levels, offsets):
            for c in range(level.shape[1]):
                e = level[0, c]
                power = (e * e).mean()
                for shift, dim in ((dy, 0), (dx, 1)):
                    if shift:
                        pair = pair + ((e * torch.roll(e, shift, dim)).mean() / power) ** 2
        kl = 0.0
        for c in range(eta.shape[1]):
            e = eta[0, c]
            mu, var = e.mean(), ((e - e.mean()) ** 2).mean()
            kl = kl + 0.5 * (var + mu ** 2 - 1 - torch.log(var))
        return pair + reg_lambda * kl, len(levels)

    def regularize(eps, i):
        eta = eps.detach().float()
        shapes = A.level_shapes(*eta.shape[-2:])
        for _ in range(iters):
            offsets = A.draw_offsets(shapes, generator)
            var = eta.clone().requires_grad_(True)
            with torch.enable_grad():
                loss, n_levels = l_auto(var, offsets)
                grad, = torch.autograd.grad(loss, var)
            assert n_levels == len(shapes) >= 2
            eta = (var - A.STEP * eta.shape[-2] * eta.shape[-1] * grad).detach()
        return eta

    return regularize


def test_run_inversion_is_section_3_1_written_out(tiny_models, cat, run, monkeypatch):
    """The inverted noise `run` edits from equals DDIM inversion with the literal regulariser above."""
    captured = []
    real = P.invert
    monkeypatch.setattr(P, "invert", lambda *a, **k: captured.append(real(*a, **k)) or captured[-1])
    P.CACHE.clear()
    run(seed=5, reg_lambda=20.0, reg_iters=5)
    assert len(captured) == 1
    sd = tiny_models.sd()
    x0 = S.encode_image(sd, load_image(cat, 64)).float()
    cond = S.encode_prompts(sd, [CAPTION]).float()
    literal = ddim_invert(sd, sd.scheduler(), x0, cond, STEPS, S.UNetCounter(),
                          regularize=_literal_regularizer(20.0, 5, S.make_generator(5, "cpu")))[-1]
    plain = ddim_invert(sd, sd.scheduler(), x0, cond, STEPS, S.UNetCounter())[-1]
    assert float((literal - plain).abs().max()) > 1e-2  # the regulariser does something measurable
    torch.testing.assert_close(captured[0], literal, rtol=0, atol=1e-4)


# -- The inversion cache: keyed by (photo, caption, steps, ...) ----------------------------------------
def test_cache_key_holds_caption_and_steps(run):
    """Another caption or step count is a new inversion: the result equals a run on an empty cache."""
    P.CACHE.clear()
    run(seed=21)
    warm = run(seed=21, xa_guidance=0.3)
    assert warm.params["inversion_cached"] is True
    for change in (dict(caption="a cat on a sofa"), dict(steps=STEPS + 2)):
        served = run(seed=21, **change)
        P.CACHE.clear()
        fresh = run(seed=21, **change)
        assert served.params["inversion_cached"] is False
        assert dist(served.image, fresh.image) == 0.0
        assert dist(served.intermediates["reconstruction"], fresh.intermediates["reconstruction"]) == 0.0
        run(seed=21)  # the original entry back in the cache for the next change
