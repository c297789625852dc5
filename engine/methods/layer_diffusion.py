"""LayerDiffusion (Li et al., 2023): change a subject's action or attributes and its background
together, from one photo and one text.

1. Split the text T into T_a (the subject: "a dog jumping") and T_b (the place: "in a forest").
2. The reference gives the background: uploaded, the photo itself ("keep the photo's
   background") or generated from T_b by plain DDIM text-to-image with the base model.
3. Subject masks in the photo and in the reference: Grounded-SAM with the subject's noun, or
   the user's masks.
4. Layered controlled optimisation (Eq. 2): e_a fits the subject of the photo, e_b the
   background of the reference; e_opt = alpha e_a + (1 - alpha) e_b (Eq. 3).
5. Layered diffusion fine-tuning (Eq. 4-6) at the fixed e_opt, through LoRA adapters on the
   cached UNet (removed in a `finally`) or, as an option, a full fine-tune of a private copy.
6. Iterative guidance (Eq. 8): DDIM from random noise, conditioned on e_a when the step's
   number t (counting down from `steps` to 1) is even, on e_opt when it is odd.

Guidance scale: the paper does not give one; we use classifier-free guidance 7.5 with the empty
prompt, Stable Diffusion v1.4's default (the model the paper builds on), for the generated
reference and the final sampling alike.

Fine-tuning learning rate: the paper's 2e-6 is for the full UNet. A LoRA update starts at zero
and moves only a low-rank product, so 2e-6 would leave it almost unchanged in 250 steps; the
default for LoRA is 1e-4 (the usual LoRA rate) and 2e-6 for the full fine-tune.

Mechanisms and the tests that guard them through `run` (tests/test_layer_diffusion_mechanisms.py
unless marked; breakages in tests/mutants/m_layer_diffusion.py):
- Eq. 1, training inputs x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps of [photo, reference]:
  test_eq1_training_inputs_are_the_noised_photo_and_reference.
- Eq. 2, e_a on the photo's subject M_t, e_b on the reference's background 1 - M_r, masked loss,
  both optimised: test_eq2_eq4_eq5_losses_are_masked_losses_of_the_right_image_text_and_region
  (first losses equal the loss written out with hand-made masks and the text encoder's e_a, e_b),
  test_eq3_eq8_sampling_alternates_optimised_e_a_and_e_opt_linear_in_alpha (e_a, e_b moved);
  test_both_optimisation_losses_fall (test_layer_diffusion.py).
- Eq. 3, e_opt = alpha e_a + (1 - alpha) e_b: test_eq3_eq8_... (two alphas give one e_b);
  test_alpha_one_gives_e_opt_equal_e_a, test_interpolation_eq3 (test_layer_diffusion.py).
- Eq. 4-5, fine-tuning at e_opt on M_t of the photo and 1 - M_r of the reference:
  test_eq2_eq4_eq5_... (first fine-tuning losses).
- Eq. 6, lambda1 L_obj + lambda2 L_bg: test_eq6_loss_weights_choose_the_region_the_fine_tuning_fits.
- Eq. 8, e_a when t is even, e_opt when odd, optimised embeddings: test_eq3_eq8_...,
  test_iterative_guidance_alternates_e_a_and_e_opt (test_layer_diffusion.py).
- The fine-tuned UNet samples (LoRA or private copy), an untrained one changes nothing:
  test_the_fine_tuned_unet_samples_and_an_untrained_one_changes_nothing.
- The generated reference (none given) comes from T_b's embedding and is all background:
  test_generated_reference_comes_from_t_b_and_is_all_background.
- Adapters removed, also on failure or cancel: test_run_contract_and_determinism,
  test_failed_or_cancelled_run_leaves_the_unet_untouched (test_layer_diffusion.py).
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageOps

from engine.core import sampling as S
from engine.core.image import load_image
from engine.core.layered_training import fine_tune, interpolate, optimize_embeddings, private_copy
from engine.core.line_plot import plot_panels
from engine.core.lora import temporary_lora
from engine.core.masks import coverage, is_empty, mask_from_image, overlay, to_latent, to_pil
from engine.core.text_split import resolve_split, subject_phrase
from engine.methods.common import RunLog, check_number, check_seed, check_text, params_of
from engine.types import EditResult, StepCallback

NAME = "layer-diffusion"
TITLE = "LayerDiffusion"
ORDER = 5
SUMMARY = ("Change a subject's action or attributes and its background together, from one photo and one text "
           "(per-photo fine-tuning).")

MAX_EMBED_STEPS = 2000
MAX_TUNE_STEPS = 1000
MAX_STEPS = 200
LORA_LR = 1e-4
FULL_LR = 2e-6
# Stage names sent to the progress callback (the UI shows one bar per stage).
STAGE_REFERENCE = "reference (text-to-image)"
STAGE_EMBED = "embedding optimisation"
STAGE_TUNE = "fine-tuning"
STAGE_SAMPLE = "sampling"


@dataclass(frozen=True)
class LayerDiffusionInputs:
    image: Image.Image
    text: str = ""
    subject_text: Optional[str] = None
    background_text: Optional[str] = None
    reference: Optional[Image.Image] = None
    keep_background: bool = False
    subject_mask: Optional[Any] = None
    reference_mask: Optional[Any] = None
    alpha: float = 0.7
    lambda1: float = 2.0
    lambda2: float = 1.0
    embed_steps: int = 500
    embed_lr: float = 1e-3
    tune_steps: int = 250
    tune_lr: Optional[float] = None  # None: 1e-4 with LoRA, the paper's 2e-6 for the full fine-tune
    steps: int = 50
    lora_rank: int = 4
    full_finetune: bool = False
    num_results: int = 1
    cfg: float = 7.5
    seed: int = 0
    resolution: int = 512


def _fit_reference(reference, photo: Image.Image, resolution: int, notes: list[str]):
    """The uploaded reference at the photo's size: resized, and centre-cropped if its aspect differs."""
    ref = load_image(reference, resolution)
    pw, ph = photo.size
    rw, rh = ref.size
    if abs(rw * ph - rh * pw) > 0.01 * pw * rh:
        notes.append(f"the reference ({rw}x{rh}) has another aspect ratio than the photo ({pw}x{ph}): "
                     "it was resized and centre-cropped to the photo's size")
    return ref, ImageOps.fit(ref, photo.size, Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def _segment(models, image: Image.Image, phrase: str):
    from engine.core.segment import grounded_sam

    return grounded_sam(models.get("grounding_dino"), models.get("sam"), image, phrase)


def interpolate_embeddings(e_a: torch.Tensor, e_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 3 (re-exported for tests and callers): e_opt = alpha * e_a + (1 - alpha) * e_b."""
    return interpolate(e_a, e_b, alpha)


def guidance_uses_subject(step_index: int, steps: int) -> bool:
    """Eq. 8: step i (0-based) takes I_t to I_{t-1} with t = steps - i; e_a when t is even."""
    return (steps - step_index) % 2 == 0


def planned_unet_evals(inputs: LayerDiffusionInputs) -> dict[str, int]:
    """The batched UNet calls a run will make, from the step counts alone (for a GPU-time budget):
    reference generation (when generated) + embedding + fine-tuning + sampling forwards, and one
    backward per embedding and fine-tuning step."""
    generated = inputs.reference is None and not inputs.keep_background
    embed, tune, steps = int(inputs.embed_steps), int(inputs.tune_steps), int(inputs.steps)
    return {"forward": (steps if generated else 0) + embed + tune + steps, "backward": embed + tune}


def estimate_seconds(inputs: LayerDiffusionInputs) -> float:
    """GPU seconds to ask for (ZeroGPU), from the planned UNet calls at 512 px in half precision:
    about 0.05 s per forward and 0.1 s per backward on an A100-class GPU, twice that for a
    full fine-tune, plus 20 s for loading and segmentation."""
    try:
        evals = planned_unet_evals(inputs)
    except (TypeError, ValueError):
        return 60.0
    per_step = 2.0 if inputs.full_finetune else 1.0
    return 20.0 + per_step * (0.05 * evals["forward"] + 0.1 * evals["backward"]) * max(1, int(inputs.num_results))


def run(inputs: LayerDiffusionInputs, models, on_step: Optional[StepCallback] = None) -> EditResult:
    # -- 1. validate -------------------------------------------------------------------------------
    photo = load_image(inputs.image, inputs.resolution)
    text = check_text("target text", inputs.text, allow_empty=True)
    subject_in = check_text("subject text", inputs.subject_text, allow_empty=True)
    background_in = check_text("background text", inputs.background_text, allow_empty=True)
    text, t_a, t_b = resolve_split(text, subject_in, background_in)
    phrase = subject_phrase(t_a)
    alpha = check_number("alpha", inputs.alpha, 0.0, 1.0)
    lambda1 = check_number("lambda1 (subject loss weight)", inputs.lambda1, 0.0, 10.0)
    lambda2 = check_number("lambda2 (background loss weight)", inputs.lambda2, 0.0, 10.0)
    if lambda1 == 0 and lambda2 == 0:
        raise ValueError("lambda1 and lambda2 are both 0: the fine-tuning would learn nothing; raise one of them")
    embed_steps = check_number("embedding optimisation steps", inputs.embed_steps, 1, MAX_EMBED_STEPS, integer=True)
    embed_lr = check_number("embedding learning rate", inputs.embed_lr, 1e-6, 1.0)
    tune_steps = check_number("fine-tuning steps", inputs.tune_steps, 1, MAX_TUNE_STEPS, integer=True)
    full = inputs.full_finetune
    if not isinstance(full, (bool, np.bool_)):
        raise ValueError(f"full fine-tune must be true or false, got {full!r}")
    full = bool(full)
    default_lr = FULL_LR if full else LORA_LR
    tune_lr = default_lr if inputs.tune_lr is None else check_number("fine-tuning learning rate",
                                                                     inputs.tune_lr, 1e-8, 1e-2)
    steps = check_number("sampling steps", inputs.steps, 1, MAX_STEPS, integer=True)
    rank = check_number("LoRA rank", inputs.lora_rank, 1, 128, integer=True)
    n = check_number("number of results", inputs.num_results, 1, 4, integer=True)
    cfg = check_number("guidance scale (CFG)", inputs.cfg, 1.0, 30.0)
    seed = check_seed(inputs.seed)
    keep = bool(inputs.keep_background)
    if keep and inputs.reference is not None:
        raise ValueError("choose either a reference image or 'keep the photo's background', not both")
    if inputs.reference_mask is not None and inputs.reference is None:
        raise ValueError("a reference mask needs an uploaded reference image")

    log = RunLog(on_step)
    notes = log.notes
    m_photo = None
    if inputs.subject_mask is not None:
        m_photo = mask_from_image(_as_image(inputs.subject_mask), photo.size)
        if is_empty(m_photo):
            raise ValueError("the subject mask is empty: paint the subject, or remove the mask to find it by its name")
    ref_mode, ref, m_ref = "photo", photo, None
    if inputs.reference is not None:
        ref_mode = "uploaded"
        ref_raw, ref = _fit_reference(inputs.reference, photo, inputs.resolution, notes)
        if inputs.reference_mask is not None:
            raw = mask_from_image(_as_image(inputs.reference_mask), ref_raw.size)
            m_ref = mask_from_image(ImageOps.fit(to_pil(raw), photo.size, Image.Resampling.NEAREST), photo.size)
    elif not keep:
        ref_mode = "generated"

    sd = models.sd()
    device, dtype = models.device, models.dtype
    scheduler = sd.scheduler()
    unet = sd.unet
    with torch.no_grad():
        with log.stage("encode"):
            e_a0 = S.encode_prompts(sd, [t_a]).float()
            e_b0 = S.encode_prompts(sd, [t_b]).float()
            uncond = S.encode_prompts(sd, [""])
            x_photo = S.encode_image(sd, photo).float()
        shape = tuple(x_photo.shape)

        # -- 2. the reference O_r: generated from T_b with the base model when not given ----------
        if ref_mode == "generated":
            with log.stage("reference"):
                gen = S.make_generator(seed, device)
                x = S.randn(shape, gen, device, dtype)
                ts = S.timesteps(scheduler, steps, device)
                cond_b = e_b0.to(dtype)
                for i, t in enumerate(ts):
                    eps = S.predict_noise(unet, x, t, cond_b, log.counter, uncond=uncond, cfg=cfg)
                    x = S.ddim_step(scheduler, eps, t, x)
                    log.step(STAGE_REFERENCE, i + 1, len(ts))
                ref = S.decode_latents(sd, x)[0]
            notes.append(f"reference background generated from '{t_b}' with the base model")
        x_ref = x_photo if ref_mode == "photo" else S.encode_image(sd, ref).float()

        # -- 3. subject masks (SAM via GroundingDINO boxes, or the user's) -------------------------
        with log.stage("segment"):
            if m_photo is None:
                found = _segment(models, photo, phrase)
                if is_empty(found.mask):
                    raise ValueError(f"could not find the subject '{phrase}' in the photo ({found.message}); "
                                     "paint the subject's mask on the photo and run again")
                m_photo = found.mask
                notes.append(f"subject mask in the photo: {found.message}")
            if ref_mode == "photo":
                m_ref = m_photo
            elif ref_mode == "generated":
                # Generated from T_b alone, the reference shows no subject: all of it is background.
                m_ref = np.zeros_like(m_photo)
            elif m_ref is None:
                found = _segment(models, ref, phrase)
                m_ref = found.mask
                notes.append(f"subject mask in the reference: {found.message}"
                             + ("" if found.mask.any() else " (the whole reference counts as background)"))
        h, w = shape[-2:]
        m_subject = to_latent(m_photo, h, w, device)
        m_background = 1.0 - to_latent(m_ref, h, w, device)
        if float(m_subject.sum()) < 0.5:
            raise ValueError("the subject is too small for the model (less than one 8x8 cell): paint a larger mask")
        if float(m_background.sum()) < 0.5 and ref_mode == "photo":
            raise ValueError("the subject mask covers the whole photo, so 'keep the photo's background' leaves "
                             "no background to learn from; paint a tighter subject mask")
        if float(m_background.sum()) < 0.5:
            raise ValueError("the subject covers the whole reference: no background is left to learn from; "
                             "use another reference, or give a reference mask (all black if it shows no subject)")

    # -- 4. layered controlled optimisation (Eq. 2) and interpolation (Eq. 3) ------------------------
    train_gen = S.make_generator(seed + 1, device)

    def report_embed(i, la, lb):
        log.step(STAGE_EMBED, i + 1, embed_steps, embed_loss_a=la, embed_loss_b=lb)

    with log.stage("embedding optimisation"):
        e_a, e_b = optimize_embeddings(unet, scheduler, x_photo, x_ref, m_subject, m_background, e_a0, e_b0,
                                       embed_steps, embed_lr, train_gen, log.counter, report_embed)
    e_opt = interpolate(e_a, e_b, alpha)  # Eq. 3

    # -- 5. layered diffusion fine-tuning (Eq. 4-6), 6. iterative guidance (Eq. 8) ------------------
    def report_tune(i, lo, lb):
        log.step(STAGE_TUNE, i + 1, tune_steps, tune_loss_obj=lo, tune_loss_bg=lb,
                 tune_loss_total=lambda1 * lo + lambda2 * lb)

    schedule: list[str] = []
    tuned = train_params = None
    try:
        with ExitStack() as stack:
            if full:
                tuned = private_copy(unet, device)
                train_params = list(tuned.parameters())
                autocast = dtype if dtype != torch.float32 else None  # fp32 master weights, half compute
            else:
                tuned = unet
                train_params = stack.enter_context(temporary_lora(unet, rank, S.make_generator(seed + 3, device)))
                autocast = None
            with log.stage("fine-tuning"):
                skipped = fine_tune(tuned, train_params, scheduler, x_photo, x_ref, m_subject, m_background, e_opt,
                                    lambda1, lambda2, tune_steps, tune_lr, train_gen, log.counter, report_tune,
                                    autocast=autocast)
            if skipped:
                notes.append(f"{skipped} fine-tuning step(s) skipped: fp16 gradients overflowed")
            train_params = None  # the optimiser is gone; drop the last references to the trained weights
            amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext()
            with torch.no_grad(), amp, log.stage("sampling"):
                gen = S.make_generator(seed + 2, device)
                x = S.randn((n,) + shape[1:], gen, device, dtype)
                ts = S.timesteps(scheduler, steps, device)
                cond_a, cond_opt = e_a.to(dtype), e_opt.to(dtype)
                for i, t in enumerate(ts):
                    use_a = guidance_uses_subject(i, len(ts))  # Eq. 8
                    cond = cond_a if use_a else cond_opt
                    eps = S.predict_noise(tuned, x, t, cond, log.counter, uncond=uncond, cfg=cfg)
                    x = S.ddim_step(scheduler, eps.to(x.dtype), t, x)
                    schedule.append("e_a" if use_a else "e_opt")
                    log.record("guidance_uses_e_a", 1.0 if use_a else 0.0)
                    log.step(STAGE_SAMPLE, i + 1, len(ts), latents=x)
    finally:
        train_params = None
        if full and tuned is not None:
            del tuned
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tuned = None
    with torch.no_grad(), log.stage("decode"):
        images = S.decode_latents(sd, x)

    # -- 7. report ---------------------------------------------------------------------------------
    intermediates = {
        "photo_subject_mask": overlay(photo, m_photo),
        "reference": ref,
        "reference_subject_mask": overlay(ref, m_ref, color=(64, 160, 255)),
        "loss_curves": plot_panels([
            ("embedding optimisation (Eq. 2): subject e_a, background e_b",
             {"e_a": log.curves["embed_loss_a"], "e_b": log.curves["embed_loss_b"]}),
            ("fine-tuning (Eq. 4-6): L_obj, L_bg", {"L_obj": log.curves["tune_loss_obj"],
                                                    "L_bg": log.curves["tune_loss_bg"]}),
        ]),
    }
    params = params_of(inputs, skip=("image", "reference", "subject_mask", "reference_mask"))
    params.update(
        text=text, subject_text=t_a, background_text=t_b, subject_phrase=phrase, reference_mode=ref_mode,
        alpha=alpha, lambda1=lambda1, lambda2=lambda2, embed_steps=embed_steps, embed_lr=embed_lr,
        tune_steps=tune_steps, tune_lr=tune_lr, steps=steps, lora_rank=rank, full_finetune=full,
        fine_tune_mode="full (private copy)" if full else f"LoRA rank {rank}", num_results=n, cfg=cfg,
        keep_background=keep, guidance_schedule=schedule,
        guidance_counts={"e_a": schedule.count("e_a"), "e_opt": schedule.count("e_opt")},
        e_opt_distance={"to_e_a": float((e_opt - e_a).norm()), "to_e_b": float((e_opt - e_b).norm())},
        subject_coverage={"photo": round(coverage(m_photo), 4), "reference": round(coverage(m_ref), 4)},
    )
    return EditResult(images=images, intermediates=intermediates, seed=seed, seconds=log.finish(),
                      unet_evals=log.counter.as_dict(), params=params, curves=log.curves, notes=notes)


def _as_image(mask):
    """Masks may come as PIL images or arrays; mask_from_image takes both."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().float().cpu().numpy()
    return mask


# -- command line -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", default="", help="the target text, e.g. 'a dog jumping in a forest'")
    parser.add_argument("--subject-text", help="the subject part T_a (default: split from --text)")
    parser.add_argument("--background-text", help="the background part T_b (default: split from --text)")
    parser.add_argument("--reference", help="reference background image (default: generated from T_b)")
    parser.add_argument("--keep-background", action="store_true", help="use the photo as its own reference")
    parser.add_argument("--subject-mask", help="PNG mask of the subject in the photo (default: Grounded-SAM)")
    parser.add_argument("--reference-mask", help="PNG mask of the subject in the reference (default: Grounded-SAM)")
    parser.add_argument("--alpha", type=float, default=0.7, help="e_opt = alpha e_a + (1 - alpha) e_b (Eq. 3)")
    parser.add_argument("--lambda1", type=float, default=2.0, help="weight of the subject loss L_obj (Eq. 6)")
    parser.add_argument("--lambda2", type=float, default=1.0, help="weight of the background loss L_bg (Eq. 6)")
    parser.add_argument("--embed-steps", type=int, default=500)
    parser.add_argument("--embed-lr", type=float, default=1e-3)
    parser.add_argument("--tune-steps", type=int, default=250)
    parser.add_argument("--tune-lr", type=float, default=None, help="default: 1e-4 with LoRA, 2e-6 full")
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--full-finetune", action="store_true", help="fine-tune a private copy of the whole UNet")
    parser.add_argument("--num-results", type=int, default=1)
    parser.add_argument("--cfg", type=float, default=7.5)


def inputs_from_args(args, image: Image.Image, open_image) -> LayerDiffusionInputs:
    return LayerDiffusionInputs(
        image=image, text=args.text, subject_text=args.subject_text, background_text=args.background_text,
        reference=open_image(args.reference) if args.reference else None, keep_background=args.keep_background,
        subject_mask=open_image(args.subject_mask) if args.subject_mask else None,
        reference_mask=open_image(args.reference_mask) if args.reference_mask else None,
        alpha=args.alpha, lambda1=args.lambda1, lambda2=args.lambda2, embed_steps=args.embed_steps,
        embed_lr=args.embed_lr, tune_steps=args.tune_steps, tune_lr=args.tune_lr, steps=args.steps,
        lora_rank=args.lora_rank, full_finetune=args.full_finetune, num_results=args.num_results, cfg=args.cfg,
        seed=args.seed, resolution=args.resolution)
