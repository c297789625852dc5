"""LayerDiffusion on tiny models: text split, both optimisations, Eq. 3 and Eq. 8, and the rule that
no run (finished, failed or cancelled) leaves anything behind on the cached UNet."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core import layered_training as LT
from engine.core import sampling as S
from engine.core.segment import SegmentResult
from engine.core.text_split import resolve_split, split_text, subject_phrase
from engine.methods import layer_diffusion as L
from engine.types import Cancelled

from tests.conftest import ROOT

SMALL = dict(embed_steps=6, tune_steps=4, steps=4, resolution=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """8x8 latents: one thread is faster than two, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photo64() -> Image.Image:
    return Image.open(ROOT / "assets" / "examples" / "cat.png").convert("RGB").resize((64, 64))


@pytest.fixture(scope="module")
def square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def _inputs(photo, mask, **kw):
    args = dict(image=photo, text="a cat jumping in a forest", subject_mask=mask, **SMALL)
    args.update(kw)
    return L.LayerDiffusionInputs(**args)


def _snapshot(unet):
    """Everything a request could leave behind on the cached UNet."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        "state": {k: v.detach().clone() for k, v in unet.state_dict().items()},
        "modules": [(n, type(m).__name__) for n, m in unet.named_modules()],
        "processors": {k: (type(v).__name__, id(v)) for k, v in unet.attn_processors.items()},
        "attrs": sorted(unet.__dict__),
        "grad": {n: p.requires_grad for n, p in unet.named_parameters()},
        "grads": [n for n, p in unet.named_parameters() if p.grad is not None],
        "training": [n for n, m in unet.named_modules() if m.training],
        "tuners": [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)],
        "peft_config": getattr(unet, "peft_config", None),
        "peft_flag": unet.__dict__.get("_hf_peft_config_loaded", "absent"),
    }


def _assert_same(before, after):
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"weight {k} changed"
    for key in ("modules", "processors", "attrs", "grad", "grads", "training", "tuners", "peft_config",
                "peft_flag"):
        assert before[key] == after[key], key
    assert after["tuners"] == [] and after["peft_config"] is None and after["peft_flag"] == "absent"
    assert not any(after["grad"].values())


# -- text split -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, a, b", [
    ("a dog jumping in a forest", "a dog jumping", "in a forest"),
    ("a giraffe lies on a beach", "a giraffe lies", "on a beach"),
    ("a cat in the snow", "a cat", "in the snow"),
    ("a dog playing with a ball on the beach", "a dog playing with a ball", "on the beach"),
    ("a dog with a red collar sitting in front of a house", "a dog with a red collar sitting", "in front of a house"),
    ("In a forest, a dog jumping", "a dog jumping", "In a forest"),
    ("a dog jumping, snowy mountains", "a dog jumping", "snowy mountains"),
])
def test_split_on_prepositions_and_verbs(text, a, b):
    assert split_text(text) == (a, b)


@pytest.mark.parametrize("text", ["a dog jumping", "dog", "a sleeping cat"])
def test_text_without_a_place_cannot_be_split(text):
    with pytest.raises(ValueError, match="could not split"):
        split_text(text)


def test_explicit_parts_win_and_fill_in_the_other():
    assert resolve_split("a dog jumping in a forest", "a cat sitting", None) == \
        ("a dog jumping in a forest", "a cat sitting", "in a forest")
    assert resolve_split("a dog jumping", None, "on the moon") == ("a dog jumping", "a dog jumping", "on the moon")
    assert resolve_split("", "a dog", "in snow") == ("a dog in snow", "a dog", "in snow")
    assert resolve_split("a dog running", "a dog", None) == ("a dog running", "a dog", "running")
    assert subject_phrase("a photo of a big dog jumping") == "big dog"
    assert subject_phrase("a dog with a hat") == "dog"


# -- Eq. 3 and Eq. 8 ------------------------------------------------------------------------------------

def test_interpolation_eq3():
    gen = torch.Generator().manual_seed(0)
    e_a, e_b = torch.randn(1, 77, 32, generator=gen), torch.randn(1, 77, 32, generator=gen)
    assert torch.equal(L.interpolate_embeddings(e_a, e_b, 1.0), e_a)
    assert torch.equal(L.interpolate_embeddings(e_a, e_b, 0.0), e_b)
    assert torch.allclose(L.interpolate_embeddings(e_a, e_b, 0.7), 0.7 * e_a + 0.3 * e_b)
    assert [L.guidance_uses_subject(i, 4) for i in range(4)] == [True, False, True, False]
    assert [L.guidance_uses_subject(i, 5) for i in range(5)] == [False, True, False, True, False]


class CondSpy:
    """Records the text condition of every sampling call to predict_noise."""

    def __init__(self, monkeypatch):
        self.conds = []
        real = S.predict_noise

        def spy(unet, latents, t, cond, counter, **kw):
            self.conds.append(cond.detach().clone())
            return real(unet, latents, t, cond, counter, **kw)

        monkeypatch.setattr(S, "predict_noise", spy)


def test_iterative_guidance_alternates_e_a_and_e_opt(photo64, square_mask, tiny_models, monkeypatch):
    spy = CondSpy(monkeypatch)
    res = L.run(_inputs(photo64, square_mask, keep_background=True, steps=5), tiny_models)
    assert res.params["guidance_schedule"] == ["e_opt", "e_a", "e_opt", "e_a", "e_opt"]
    assert res.params["guidance_counts"] == {"e_a": 2, "e_opt": 3}
    assert res.curves["guidance_uses_e_a"] == [0.0, 1.0, 0.0, 1.0, 0.0]
    c = spy.conds
    assert len(c) == 5  # keep_background: no reference generation, only the sampling calls
    assert torch.equal(c[0], c[2]) and torch.equal(c[0], c[4]) and torch.equal(c[1], c[3])
    assert not torch.allclose(c[0], c[1])  # the two embeddings really differ
    assert res.params["e_opt_distance"]["to_e_a"] > 0


def test_alpha_one_gives_e_opt_equal_e_a(photo64, square_mask, tiny_models, monkeypatch):
    spy = CondSpy(monkeypatch)
    res = L.run(_inputs(photo64, square_mask, keep_background=True, alpha=1.0), tiny_models)
    assert res.params["e_opt_distance"]["to_e_a"] == 0.0 and res.params["e_opt_distance"]["to_e_b"] > 0
    assert len(spy.conds) == 4 and all(torch.equal(spy.conds[0], c) for c in spy.conds)
    res0 = L.run(_inputs(photo64, square_mask, keep_background=True, alpha=0.0, embed_steps=2, tune_steps=1,
                         steps=1), tiny_models)
    assert res0.params["e_opt_distance"]["to_e_b"] == 0.0


# -- the optimisations ---------------------------------------------------------------------------------

def test_both_optimisation_losses_fall(photo64, square_mask, tiny_models, monkeypatch):
    """With t and the noise held fixed, each loss is a smooth function of what is optimised, so
    Adam must bring it down: e_a and e_b (Eq. 2) and the LoRA weights (Eq. 4-6)."""
    def fixed(scheduler, x0, generator):
        gen = torch.Generator().manual_seed(123)
        t = torch.tensor([300] * x0.shape[0])
        noise = torch.randn(tuple(x0.shape), generator=gen)
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0.float() + (1 - a).sqrt() * noise, t, noise

    monkeypatch.setattr(LT, "noised_batch", fixed)
    res = L.run(_inputs(photo64, square_mask, keep_background=True, embed_steps=10, embed_lr=0.2,
                        tune_steps=10, tune_lr=3e-3, steps=1), tiny_models)
    for name in ("embed_loss_a", "embed_loss_b", "tune_loss_obj", "tune_loss_bg"):
        curve = res.curves[name]
        assert len(curve) == 10 and all(np.isfinite(curve))
        first, last = np.mean(curve[:3]), np.mean(curve[-3:])
        assert last < 0.97 * first, f"{name} did not fall: {curve}"


def test_masked_loss_ignores_everything_outside_the_mask():
    pred, target = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    target[..., 4:, :] = 100.0  # errors only outside the mask
    assert float(LT.masked_mse(pred, target, mask)) == 0.0
    target[..., :4, :] = 2.0
    assert float(LT.masked_mse(pred, target, mask)) == pytest.approx(4.0)


# -- a whole run, its files, and the cached UNet ---------------------------------------------------------

def test_run_contract_and_determinism(photo64, square_mask, tiny_models):
    unet = tiny_models.sd().unet
    before = _snapshot(unet)
    seen = []
    res = L.run(_inputs(photo64, square_mask, num_results=2, seed=3), tiny_models, on_step=seen.append)
    _assert_same(before, _snapshot(unet))
    assert len(res.images) == 2 and all(im.size == (64, 64) for im in res.images)
    assert set(res.intermediates) == {"photo_subject_mask", "reference", "reference_subject_mask", "loss_curves"}
    assert res.intermediates["reference"].size == (64, 64)
    assert res.params["reference_mode"] == "generated" and res.params["subject_text"] == "a cat jumping"
    assert res.params["background_text"] == "in a forest" and res.params["tune_lr"] == L.LORA_LR
    # reference 4 + embedding 6 + fine-tuning 4 + sampling 4 batched UNet calls; 6 + 4 backward passes
    assert res.unet_evals == {"forward": 18, "backward": 10}
    assert L.planned_unet_evals(_inputs(photo64, square_mask, num_results=2)) == res.unet_evals
    assert [len(res.curves[k]) for k in ("embed_loss_a", "embed_loss_b", "tune_loss_obj", "tune_loss_bg")] == \
        [6, 6, 4, 4]
    stages = [s.stage for s in seen]
    assert stages == [L.STAGE_REFERENCE] * 4 + [L.STAGE_EMBED] * 6 + [L.STAGE_TUNE] * 4 + [L.STAGE_SAMPLE] * 4
    assert seen[4].losses.keys() == {"embed_loss_a", "embed_loss_b"} and seen[10].losses["tune_loss_obj"] > 0
    assert any("generated" in n for n in res.notes)
    again = L.run(_inputs(photo64, square_mask, num_results=2, seed=3), tiny_models)
    other = L.run(_inputs(photo64, square_mask, num_results=1, seed=4, embed_steps=1, tune_steps=1),
                  tiny_models)
    assert np.array_equal(np.asarray(res.images[1]), np.asarray(again.images[1]))
    assert not np.array_equal(np.asarray(res.images[0]), np.asarray(other.images[0]))


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("stage, at, error", [
    (L.STAGE_TUNE, 2, Boom),  # fails with the adapter in training
    (L.STAGE_TUNE, 3, Cancelled),  # Stop pressed during fine-tuning
    (L.STAGE_SAMPLE, 2, Cancelled),  # Stop pressed while sampling with the adapter
    (L.STAGE_EMBED, 1, Cancelled),  # before any adapter exists
])
def test_failed_or_cancelled_run_leaves_the_unet_untouched(photo64, square_mask, tiny_models, stage, at, error):
    unet = tiny_models.sd().unet
    before = _snapshot(unet)
    calls = []

    def on_step(info):
        calls.append(info.stage)
        if info.stage == stage and info.i == at:
            raise error("stop")

    with pytest.raises(error):
        L.run(_inputs(photo64, square_mask, keep_background=True), tiny_models, on_step=on_step)
    assert calls[-1] == stage
    _assert_same(before, _snapshot(unet))
    # and the next run still works
    assert len(L.run(_inputs(photo64, square_mask, keep_background=True, embed_steps=1, tune_steps=1, steps=1),
                     tiny_models).images) == 1


def test_full_finetune_trains_a_private_copy(photo64, square_mask, tiny_models):
    unet = tiny_models.sd().unet
    before = _snapshot(unet)
    res = L.run(_inputs(photo64, square_mask, keep_background=True, full_finetune=True, tune_lr=1e-3,
                        embed_steps=2, tune_steps=2, steps=2), tiny_models)
    _assert_same(before, _snapshot(unet))
    assert res.params["fine_tune_mode"].startswith("full") and res.unet_evals["backward"] == 4
    with pytest.raises(Boom):
        def fail(info):
            if info.stage == L.STAGE_TUNE:
                raise Boom()
        L.run(_inputs(photo64, square_mask, keep_background=True, full_finetune=True, embed_steps=1),
              tiny_models, on_step=fail)
    _assert_same(before, _snapshot(unet))


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_overlapping_adapters_are_both_removed(tiny_models):
    """Two requests' adapters on the shared UNet, closed out of order (a stopped run ending while
    the next one has started): each removes only its own; at the end nothing is left."""
    from engine.core.lora import temporary_lora

    unet = tiny_models.sd().unet
    before = _snapshot(unet)
    first = temporary_lora(unet, 2, torch.Generator().manual_seed(0))
    second = temporary_lora(unet, 2, torch.Generator().manual_seed(1))
    p1 = first.__enter__()
    p2 = second.__enter__()
    assert len(p1) == len(p2) > 0 and len(unet.peft_config) == 2
    first.__exit__(None, None, None)
    assert len(unet.peft_config) == 1 and _snapshot(unet)["tuners"]
    x = torch.randn(1, 4, 8, 8)
    unet(x, 10, encoder_hidden_states=torch.randn(1, 77, 32))  # the second adapter still works
    second.__exit__(None, None, None)
    _assert_same(before, _snapshot(unet))
    assert torch.equal(p1[0], torch.randn(tuple(p1[0].shape), generator=torch.Generator().manual_seed(0)) / 2)


def test_uploaded_reference_of_another_aspect_is_cropped_and_said(photo64, square_mask, tiny_models):
    ref = Image.open(ROOT / "assets" / "examples" / "coffee.png").convert("RGB").resize((160, 80))
    ref_mask = Image.new("L", (160, 80), 0)
    ref_mask.paste(255, (0, 0, 30, 80))  # left edge: cropped away by the centre crop
    res = L.run(_inputs(photo64, square_mask, reference=ref, reference_mask=ref_mask, embed_steps=1, tune_steps=1,
                        steps=1), tiny_models)
    assert res.params["reference_mode"] == "uploaded"
    assert res.intermediates["reference"].size == photo64.size
    assert any("centre-cropped" in n for n in res.notes)
    assert res.params["subject_coverage"]["reference"] == 0.0
    assert res.unet_evals["forward"] == 3  # no reference generation
    assert L.planned_unet_evals(_inputs(photo64, square_mask, reference=ref, embed_steps=1, tune_steps=1,
                                        steps=1)) == res.unet_evals


def test_subject_found_by_grounded_sam_or_a_clear_request_for_a_mask(photo64, tiny_models):
    """Tiny GroundingDINO has random weights: it finds a box or nothing; both paths must be clean."""
    try:
        res = L.run(L.LayerDiffusionInputs(image=photo64, text="a cat sitting on a sofa",
                                           embed_steps=1, tune_steps=1, steps=1, resolution=64), tiny_models)
    except ValueError as exc:
        assert "paint the subject's mask" in str(exc)
    else:
        assert res.params["subject_coverage"]["photo"] > 0
        assert any("subject mask in the photo" in n for n in res.notes)


def test_nothing_found_asks_for_a_mask(photo64, tiny_models, monkeypatch):
    monkeypatch.setattr(L, "_segment", lambda models, image, phrase: SegmentResult(
        np.zeros((image.height, image.width), np.float32), [], f"nothing matching '{phrase}' was found"))
    with pytest.raises(ValueError, match="could not find the subject 'dog'.*paint the subject's mask"):
        L.run(L.LayerDiffusionInputs(image=photo64, text="a dog jumping in a forest", **SMALL), tiny_models)


@pytest.mark.parametrize("kw, message", [
    ({"text": "a dog jumping"}, "could not split"),
    ({"text": ""}, "target text is empty"),
    ({"embed_steps": 0}, "embedding optimisation steps must be between 1"),
    ({"tune_steps": 5000}, "fine-tuning steps must be between 1"),
    ({"steps": 0}, "sampling steps must be between 1"),
    ({"steps": 2.5}, "whole number"),
    ({"lora_rank": 0}, "LoRA rank"),
    ({"num_results": 5}, "number of results"),
    ({"alpha": 1.5}, "alpha must be between 0 and 1"),
    ({"lambda1": 0, "lambda2": 0}, "both 0"),
    ({"lambda1": float("nan")}, "finite"),
    ({"tune_lr": 1.0}, "fine-tuning learning rate"),
    ({"cfg": 0.0}, "guidance scale"),
    ({"seed": -1}, "seed"),
    ({"subject_mask": Image.new("L", (64, 64), 0)}, "subject mask is empty"),
    ({"subject_mask": Image.new("L", (64, 32), 255)}, "mask is 64x32 but the photo is 64x64"),
    ({"reference_mask": Image.new("L", (64, 64), 255)}, "reference mask needs an uploaded reference"),
    ({"keep_background": True, "reference": Image.new("RGB", (64, 64))}, "not both"),
    ({"reference": Image.new("RGB", (64, 64)), "reference_mask": Image.new("L", (64, 64), 255)},
     "covers the whole reference"),
    ({"image": None}, "upload a photo"),
    ({"keep_background": True, "subject_mask": Image.new("L", (64, 64), 255)}, "covers the whole photo"),
    ({"full_finetune": "yes"}, "true or false"),
])
def test_bad_input_is_a_value_error(photo64, square_mask, tiny_models, kw, message):
    with pytest.raises(ValueError, match=message):
        L.run(_inputs(photo64, square_mask, **kw), tiny_models)


def test_cli_writes_the_contract(photo64, square_mask, tiny_models, tmp_path, monkeypatch):
    from engine.__main__ import main

    monkeypatch.setenv("DES_CACHE_DIR", str(tiny_models.cache_dir))
    photo64.save(tmp_path / "photo.png")
    square_mask.save(tmp_path / "mask.png")
    Image.new("RGB", (96, 64), (20, 120, 40)).save(tmp_path / "ref.png")
    Image.new("L", (96, 64), 0).save(tmp_path / "ref_mask.png")  # the reference shows no subject
    out = tmp_path / "out"
    code = main(["layer-diffusion", "--image", str(tmp_path / "photo.png"), "--out", str(out), "--profile", "tiny",
                 "--device", "cpu", "--resolution", "64", "--text", "a cat jumping in a forest",
                 "--subject-mask", str(tmp_path / "mask.png"), "--reference", str(tmp_path / "ref.png"),
                 "--reference-mask", str(tmp_path / "ref_mask.png"),
                 "--embed-steps", "2", "--tune-steps", "2", "--steps", "2", "--num-results", "2", "--alpha", "0.6",
                 "--lambda1", "3", "--lambda2", "0.5", "--lora-rank", "2", "--seed", "7"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "edited.png").exists() and (out / "edited_1.png").exists()
    assert report["method"] == "layer-diffusion" and report["seed"] == 7
    assert report["params"]["alpha"] == 0.6 and report["params"]["lambda1"] == 3.0
    assert report["params"]["lora_rank"] == 2 and report["params"]["reference_mode"] == "uploaded"
    assert report["unet_evals"] == {"forward": 6, "backward": 4}
    assert len(report["curves"]["tune_loss_bg"]) == 2
    for name in ("photo_subject_mask", "reference", "reference_subject_mask", "loss_curves"):
        assert (out / report["intermediates"][name]).exists()
    bad = main(["layer-diffusion", "--image", str(tmp_path / "photo.png"), "--out", str(tmp_path / "bad"),
                "--profile", "tiny", "--device", "cpu", "--resolution", "64", "--text", "a cat jumping"])
    assert bad == 2
