"""LayerDiffusion's mechanisms, each checked through `run` on tiny random models (issue 14).

Every test here fails when its mechanism is removed, inverted, fed the wrong tensor or given the
wrong weight (tests/mutants/m_layer_diffusion.py names the breakages):
- Eq. 1 (DDPM forward process): the UNet is trained on sqrt(a_t) x0 + sqrt(1 - a_t) eps of the
  photo and the reference.
- Eq. 2: the first embedding-optimisation losses are the masked losses of the text encoder's
  e_a on the photo's subject region and e_b on the reference's background region.
- Eq. 3: e_opt is linear in alpha between the optimised e_a and e_b (not the text encoder's).
- Eq. 4-5: the first fine-tuning losses are the masked losses at e_opt on the same regions.
- Eq. 6: lambda1 / lambda2 steer which region the fine-tuning fits.
- Eq. 8: sampling alternates e_a (even t) and e_opt (odd t), with the optimised embeddings.
- The fine-tuned UNet (LoRA or private copy) is the one that samples; an untrained one changes
  nothing.
- Without a reference, O_r is generated from T_b and counts as background everywhere.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from engine.core import layered_training as LT
from engine.core import sampling as S
from engine.methods import layer_diffusion as L

from tests.conftest import ROOT
from tests.test_layer_diffusion import one_thread, photo64, square_mask  # noqa: F401 (fixtures)

SUBJECT = "a cat jumping"
BACKGROUND = "in a forest"



@pytest.fixture(scope="module")
def reference64() -> Image.Image:
    return Image.open(ROOT / "assets" / "examples" / "coffee.png").convert("RGB").resize((64, 64))



@pytest.fixture(scope="module")
def left_half_mask() -> Image.Image:
    """The subject in the reference: its left half, so its background is latent columns 4..8."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    return mask


# Latent masks written out by hand (not through the code under test).
M_SUBJECT = torch.zeros(1, 1, 8, 8)
M_SUBJECT[..., 2:6, 2:6] = 1.0
M_REF_BACKGROUND = torch.zeros(1, 1, 8, 8)
M_REF_BACKGROUND[..., :, 4:] = 1.0


def _inputs(photo, mask, **kw):
    args = dict(image=photo, text=f"{SUBJECT} {BACKGROUND}", subject_text=SUBJECT, background_text=BACKGROUND,
                subject_mask=mask, embed_steps=2, tune_steps=2, steps=2, resolution=64)
    args.update(kw)
    return L.LayerDiffusionInputs(**args)


class Spy:
    """Records the text condition of every sampling call and the latents that are decoded; with
    `fixed=True`, training draws always the same t and noise (recorded with x0)."""

    T = (300, 600)

    def __init__(self, monkeypatch, fixed=False):
        self.conds, self.decoded, self.batches = [], [], []
        predict, decode, noised = S.predict_noise, S.decode_latents, LT.noised_batch

        def predict_spy(unet, latents, t, cond, counter, **kw):
            self.conds.append(cond.detach().float().clone())
            return predict(unet, latents, t, cond, counter, **kw)

        def decode_spy(sd, latents):
            self.decoded.append(latents.detach().float().clone())
            return decode(sd, latents)

        def noised_fixed(scheduler, x0, generator):
            gen = torch.Generator().manual_seed(123)
            t = torch.tensor(self.T[: x0.shape[0]])
            noise = torch.randn(tuple(x0.shape), generator=gen)
            a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0.float() + (1 - a).sqrt() * noise
            self.batches.append((x0.detach().clone(), x_t, t, noise))
            return x_t, t, noise

        def noised_spy(scheduler, x0, generator):
            x_t, t, noise = noised(scheduler, x0, generator)
            self.batches.append((x0.detach().clone(), x_t.detach().clone(), t.clone(), noise.clone()))
            return x_t, t, noise

        monkeypatch.setattr(S, "predict_noise", predict_spy)
        monkeypatch.setattr(S, "decode_latents", decode_spy)
        monkeypatch.setattr(LT, "noised_batch", noised_fixed if fixed else noised_spy)


def masked_loss(eps, noise, mask):
    """Eq. 2/4/5 written out: the squared error inside the mask, per masked element."""
    return float(((eps - noise) ** 2 * mask).sum() / (mask.sum() * eps.shape[1]))


# -- Eq. 1 ----------------------------------------------------------------------------------------

def test_eq1_training_inputs_are_the_noised_photo_and_reference(photo64, reference64, square_mask,
                                                                left_half_mask, tiny_models, monkeypatch):
    spy = Spy(monkeypatch)
    unet = tiny_models.sd().unet
    seen = []
    handle = unet.register_forward_pre_hook(lambda mod, args, kw: seen.append((args or (kw["sample"],))[0].clone()),
                                            with_kwargs=True)
    try:
        L.run(_inputs(photo64, square_mask, reference=reference64, reference_mask=left_half_mask, steps=1),
              tiny_models)
    finally:
        handle.remove()
    sd = tiny_models.sd()
    x_photo, x_ref = S.encode_image(sd, photo64).float(), S.encode_image(sd, reference64).float()
    assert len(spy.batches) == 4  # 2 embedding + 2 fine-tuning steps
    ts = set()
    for (x0, x_t, t, noise), unet_input in zip(spy.batches, seen):
        assert torch.allclose(x0[0], x_photo[0], atol=1e-5) and torch.allclose(x0[1], x_ref[0], atol=1e-5)
        a = sd.scheduler().alphas_cumprod[t.cpu()].view(-1, 1, 1, 1).float()
        assert torch.allclose(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-5)  # DDPM Eq. 4
        assert torch.equal(unet_input.float(), x_t)  # the UNet sees x_t, not x0
        assert float((noise - noise.mean()).std()) > 0.5
        ts.update(t.tolist())
    assert len(ts) > 2  # t is drawn per sample and step


# -- Eq. 2, 4, 5: the losses are the masked losses of the right image, text and region --------------

def test_eq2_eq4_eq5_losses_are_masked_losses_of_the_right_image_text_and_region(
        photo64, reference64, square_mask, left_half_mask, tiny_models, monkeypatch):
    spy = Spy(monkeypatch, fixed=True)
    res = L.run(_inputs(photo64, square_mask, reference=reference64, reference_mask=left_half_mask,
                        embed_lr=0.05, tune_lr=1e-3), tiny_models)
    sd = tiny_models.sd()
    unet = sd.unet
    x0, x_t, t, noise = spy.batches[0]
    assert torch.allclose(x0[0], S.encode_image(sd, photo64)[0].float(), atol=1e-5), "photo first"
    assert torch.allclose(x0[1], S.encode_image(sd, reference64)[0].float(), atol=1e-5), "reference second"
    e_a0, e_b0 = S.encode_prompts(sd, [SUBJECT]).float(), S.encode_prompts(sd, [BACKGROUND]).float()
    with torch.no_grad():
        eps = unet(x_t, t, encoder_hidden_states=torch.cat([e_a0, e_b0])).sample.float()
    # Eq. 2: e_a on the subject of the photo, e_b on the background of the reference.
    assert res.curves["embed_loss_a"][0] == pytest.approx(masked_loss(eps[:1], noise[:1], M_SUBJECT), rel=1e-4)
    assert res.curves["embed_loss_b"][0] == pytest.approx(masked_loss(eps[1:], noise[1:], M_REF_BACKGROUND), rel=1e-4)
    # The wrong region gives another value (so the check above can tell them apart).
    assert masked_loss(eps[1:], noise[1:], M_REF_BACKGROUND) != pytest.approx(
        masked_loss(eps[1:], noise[1:], 1 - M_REF_BACKGROUND), rel=1e-3)

    # Eq. 8 with steps = 2: t = 2 (even) samples with e_a, t = 1 (odd) with e_opt.
    assert len(spy.conds) == 2
    e_a, e_opt = spy.conds[0], spy.conds[1]
    assert (e_a - e_a0).abs().max() > 1e-3, "sampling used the text encoder's e_a, not the optimised one"
    # Eq. 4-5: the first fine-tuning step (the adapter's B is 0) at e_opt, same regions.
    with torch.no_grad():
        eps = unet(x_t, t, encoder_hidden_states=e_opt.expand(2, -1, -1)).sample.float()
    assert res.curves["tune_loss_obj"][0] == pytest.approx(masked_loss(eps[:1], noise[:1], M_SUBJECT), rel=1e-4)
    assert res.curves["tune_loss_bg"][0] == pytest.approx(masked_loss(eps[1:], noise[1:], M_REF_BACKGROUND), rel=1e-4)


# -- Eq. 3 and Eq. 8 --------------------------------------------------------------------------------

def test_eq3_eq8_sampling_alternates_optimised_e_a_and_e_opt_linear_in_alpha(photo64, square_mask, tiny_models,
                                                                             monkeypatch):
    """Two runs that differ only in alpha: the even-t condition is the same e_a in both (it does
    not depend on alpha), the odd-t one is e_opt, and (e_opt - alpha e_a) / (1 - alpha) is the
    same optimised e_b in both."""
    sd = tiny_models.sd()
    e_a0, e_b0 = S.encode_prompts(sd, [SUBJECT]).float(), S.encode_prompts(sd, [BACKGROUND]).float()
    found = {}
    for alpha in (0.7, 0.2):
        spy = Spy(monkeypatch)
        res = L.run(_inputs(photo64, square_mask, keep_background=True, alpha=alpha, embed_steps=3, embed_lr=0.05,
                            tune_steps=1, steps=4), tiny_models)
        c = spy.conds
        assert len(c) == 4 and res.params["guidance_schedule"] == ["e_a", "e_opt", "e_a", "e_opt"]
        assert torch.equal(c[0], c[2]) and torch.equal(c[1], c[3])  # t = 4, 2: e_a; t = 3, 1: e_opt
        found[alpha] = (c[0], (c[1] - alpha * c[0]) / (1 - alpha))
    (a1, b1), (a2, b2) = found[0.7], found[0.2]
    assert torch.equal(a1, a2), "the even-t condition depends on alpha: it is not e_a"
    assert torch.allclose(b1, b2, atol=1e-4), "e_opt is not alpha e_a + (1 - alpha) e_b"
    assert (a1 - e_a0).abs().max() > 1e-3 and (b1 - e_b0).abs().max() > 1e-3, "embeddings not optimised"
    # and e_b is closer to the text encoder's e_b than to e_a (not e_a mislabelled)
    assert (b1 - e_b0).norm() < (b1 - a1).norm()


# -- Eq. 6 ---------------------------------------------------------------------------------------------

def test_eq6_loss_weights_choose_the_region_the_fine_tuning_fits(photo64, square_mask, tiny_models, monkeypatch):
    """lambda1 = 1, lambda2 = 0 fits the subject's loss and not the background's; lambda1 = 0,
    lambda2 = 1 the other way round (same embeddings, t and noise in both runs)."""
    curves = {}
    for lambdas in ((1.0, 0.0), (0.0, 1.0)):
        Spy(monkeypatch, fixed=True)
        res = L.run(_inputs(photo64, square_mask, keep_background=True, lambda1=lambdas[0], lambda2=lambdas[1],
                            embed_steps=1, tune_steps=6, tune_lr=3e-3, steps=1), tiny_models)
        curves[lambdas] = (np.array(res.curves["tune_loss_obj"]), np.array(res.curves["tune_loss_bg"]))
    (obj_a, bg_a), (obj_b, bg_b) = curves[(1.0, 0.0)], curves[(0.0, 1.0)]
    assert obj_a[0] == obj_b[0] and bg_a[0] == bg_b[0]  # the same start
    assert obj_a[-1] < obj_a[0] and bg_b[-1] < bg_b[0]  # each run fits its weighted loss
    assert obj_a[-1] < obj_b[-1], f"lambda1 did not steer L_obj: {obj_a} vs {obj_b}"
    assert bg_b[-1] < bg_a[-1], f"lambda2 did not steer L_bg: {bg_b} vs {bg_a}"


# -- the fine-tuned UNet samples ------------------------------------------------------------------------

def test_the_fine_tuned_unet_samples_and_an_untrained_one_changes_nothing(photo64, square_mask, tiny_models,
                                                                          monkeypatch):
    """Same seed and embeddings: a trained adapter (or private copy) moves the final latents, an
    adapter trained at lr 1e-8 leaves them where the untrained full copy puts them."""
    finals = {}
    for name, kw in (("lora", dict(tune_lr=1e-2)), ("lora-untrained", dict(tune_lr=1e-8)),
                     ("full", dict(tune_lr=1e-3, full_finetune=True)),
                     ("full-untrained", dict(tune_lr=1e-8, full_finetune=True))):
        spy = Spy(monkeypatch)
        L.run(_inputs(photo64, square_mask, keep_background=True, embed_steps=1, tune_steps=3, steps=3, **kw),
              tiny_models)
        finals[name] = spy.decoded[-1]
    scale = float(finals["lora-untrained"].abs().mean())
    assert float((finals["lora-untrained"] - finals["full-untrained"]).abs().max()) < 1e-3 * scale
    assert float((finals["lora"] - finals["lora-untrained"]).abs().mean()) > 1e-2 * scale, \
        "the trained LoRA adapter did not take part in sampling"
    assert float((finals["full"] - finals["full-untrained"]).abs().mean()) > 1e-2 * scale, \
        "the fine-tuned private copy did not take part in sampling"


# -- the generated reference (no reference given) ----------------------------------------------------------

def test_generated_reference_comes_from_t_b_and_is_all_background(photo64, square_mask, tiny_models, monkeypatch):
    """Without a reference, O_r is sampled from T_b's text-encoder embedding by the base model, shows
    no subject, and e_b fits all of it (Eq. 2 with 1 - M_r = 1)."""
    spy = Spy(monkeypatch, fixed=True)
    res = L.run(_inputs(photo64, square_mask, steps=2), tiny_models)
    assert res.params["reference_mode"] == "generated" and res.params["subject_coverage"]["reference"] == 0.0
    sd = tiny_models.sd()
    e_a0, e_b0 = S.encode_prompts(sd, [SUBJECT]).float(), S.encode_prompts(sd, [BACKGROUND]).float()
    assert len(spy.conds) == 4  # 2 reference steps, then 2 sampling steps
    assert all(torch.equal(c, e_b0) for c in spy.conds[:2]), "the reference is not generated from T_b"
    x0, x_t, t, noise = spy.batches[0]
    generated = res.intermediates["reference"]
    assert torch.allclose(x0[1], S.encode_image(sd, generated)[0].float(), atol=0.05)
    with torch.no_grad():
        eps = sd.unet(x_t, t, encoder_hidden_states=torch.cat([e_a0, e_b0])).sample.float()
    everywhere = torch.ones(1, 1, 8, 8)
    assert res.curves["embed_loss_b"][0] == pytest.approx(masked_loss(eps[1:], noise[1:], everywhere), rel=1e-4)
    assert res.curves["embed_loss_a"][0] == pytest.approx(masked_loss(eps[:1], noise[:1], M_SUBJECT), rel=1e-4)
