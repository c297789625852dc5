"""iEdit (Bodur et al., 2023): localised text-guided editing with masks.

Inference (Sec. 3.4, "Inference with Masks"): SDEdit from the input at a sampling ratio of
0.6-0.8 (DDIM, CFG 7.5) where, at every DDIM step, the latents outside the mask M are
replaced by the input's latents noised to that step (Eq. 13), and by the input's own latents
after the last step; four results come out of one batch. M comes from CLIPSeg for the edit
term (as in the paper), from Grounded-SAM, or from the user's brush.

iEdit's contribution is a fine-tuned UNet (Sec. 3.3-3.4; `engine.train.iedit` trains one on
pairs built by `engine.train.iedit_pairs`). No iEdit weights are public: without a
checkpoint the base model runs the same masked inference, and the result says so
(params.mode = "base"); with one, params.mode = "fine-tuned".

Mechanisms and the tests that guard them (METHODS.md section 5; breakages registered in
tests/mutants/m_iedit.py, run with `python -m tests.mutants --method iedit`):
- Eq. 2, SDEdit start z_t = sqrt(a_t) z_1 + sqrt(1 - a_t) eps at the sampling ratio, one noise
  draw per result: test_iedit_run::test_run_keeps_background_at_every_step_and_input_at_the_end,
  ::test_sampling_ratio_slider_moves_the_edit_monotonically (more steps, edit further from the input),
  test_iedit::test_four_results_differ_and_seed_is_deterministic.
- Eq. 13, z~_t = (1 - M) z_t + M z~_t after every DDIM step and z_1 after the last, with the
  run's own mask: test_iedit_run::test_run_keeps_background_at_every_step_and_input_at_the_end
  (a UNet hook sees the background equal to the input noised to each step);
  test_iedit::test_full_mask_equals_plain_sdedit; test_iedit::test_outside_mask_final_latents_equal_input.
- CFG 7.5 on the edit prompt, [uncond, cond] in one batch:
  test_iedit_run::test_run_feeds_edit_prompt_with_classifier_free_guidance.
- M from CLIPSeg for the edit term above the threshold:
  test_iedit_run::test_clipseg_mask_is_for_the_edit_term_and_follows_the_threshold.
- The fine-tuned UNet is what runs: test_iedit::test_lora_checkpoint_runs_and_leaves_cached_unet_intact,
  test_iedit_run::test_untrained_checkpoint_reproduces_the_base_model,
  test_iedit::test_training_lowers_loss_and_checkpoint_loads.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from engine.core import masks as MK
from engine.core import blended
from engine.core import sampling as S
from engine.core.image import load_image
from engine.methods.common import RunLog, check_number, check_seed, check_text, params_of
from engine.types import EditResult, StepCallback

NAME = "iedit"
TITLE = "iEdit (masked edits)"
ORDER = 4
SUMMARY = "Localised text edits: SDEdit inside a CLIPSeg / Grounded-SAM / brush mask, four results at once."

MASK_SOURCES = ("clipseg", "grounded-sam", "brush")
PAPER_STRENGTHS = (0.6, 0.8)  # the sampling ratios the paper uses (Sec. 3.4)
STRENGTH_RANGE = (0.3, 1.0)   # what the engine accepts
BASE_NOTE = ("base model: iEdit's masked inference (Eq. 13) runs on the base Stable Diffusion "
             "without iEdit's fine-tuning (no public iEdit weights; give a checkpoint to use one)")


@dataclass(frozen=True)
class IEditInputs:
    image: Image.Image
    prompt: str                       # the edit prompt, e.g. "a photograph of a brown horse eating grass"
    mask_text: Optional[str] = None   # the edit term, e.g. "brown horse" (CLIPSeg / Grounded-SAM)
    mask: Optional[Image.Image] = None  # the brush mask (white = edit)
    mask_source: str = "clipseg"
    strength: float = 0.7             # sampling ratio; the paper uses 0.6-0.8
    num_results: int = 4
    steps: int = 50
    cfg: float = 7.5
    seed: int = 0
    checkpoint: Optional[str] = None  # fine-tuned UNet folder / LoRA .safetensors / hub id
    resolution: int = 512
    mask_threshold: float = 0.5       # CLIPSeg probability above which a pixel is in M


# -- the latent-level algorithm ------------------------------------------------------------------
def masked_sdedit(unet, scheduler, x0: torch.Tensor, noise: torch.Tensor, cond: torch.Tensor,
                  uncond: torch.Tensor, mask: torch.Tensor, steps: int, strength: float, cfg: float,
                  counter: S.UNetCounter,
                  on_step: Optional[Callable[[int, int, torch.Tensor], None]] = None) -> torch.Tensor:
    """iEdit's masked SDEdit on latents.

    x0: the input's latents (1, C, h, w); noise: (B, C, h, w), one draw per result;
    mask: (1, 1, h, w) with 1 = edit. Returns the final latents (B, C, h, w), which equal x0
    exactly wherever mask = 0.
    """
    # SDEdit start z_t = sqrt(a_t) z_1 + sqrt(1-a_t) eps (Eq. 2), DDIM steps, and Eq. 13's blend
    # z~_t = (1 - M) * z_t + M * z~_t after every step (z_1 itself after the last: blending at t = 0).
    ts = S.sdedit_timesteps(scheduler, steps, strength, x0.device)
    return blended.masked_sdedit(unet, scheduler, x0, noise, ts, cond, uncond, cfg, counter, mask=mask,
                                 on_step=on_step)


# -- the mask M -------------------------------------------------------------------------------------
def make_mask(inputs: IEditInputs, image: Image.Image, models, threshold: float) -> tuple[np.ndarray, str]:
    """The edit mask (float32 HxW in {0, 1}) and a line saying where it came from."""
    source = inputs.mask_source
    if source == "brush":
        if inputs.mask is None:
            raise ValueError("mask source is 'brush' but no mask was painted or given")
        mask = MK.binarize(MK.mask_from_image(inputs.mask, image.size), 0.5)
        if MK.is_empty(mask):
            raise ValueError("the brush mask is empty: paint the region to edit")
        return mask, "brush mask"
    term = check_text("edit term", inputs.mask_text, allow_empty=True)
    if not term:
        raise ValueError(f"type the edit term (which words of the prompt to edit, e.g. 'brown horse') "
                         f"for the {source} mask, or paint the mask with the brush")
    from engine.core import segment as SG

    if source == "clipseg":
        soft = SG.clipseg_mask(models.get("clipseg"), image, term)
        mask = MK.binarize(soft, threshold)
        if MK.is_empty(mask):
            raise ValueError(f"CLIPSeg did not find '{term}' in the photo (the mask is empty at threshold "
                             f"{threshold:g}, highest score {float(soft.max()):.2f}): try another edit term, "
                             "lower the mask threshold, or paint the mask")
        return mask, f"CLIPSeg mask for '{term}' (threshold {threshold:g})"
    found = SG.grounded_sam(models.get("grounding_dino"), models.get("sam"), image, term)
    mask = MK.binarize(found.mask, 0.5)
    if MK.is_empty(mask):
        raise ValueError(f"Grounded-SAM found no '{term}' in the photo (empty mask): {found.message}")
    return mask, f"Grounded-SAM mask for '{term}': {found.message}"


def latent_mask(mask: np.ndarray, h: int, w: int) -> torch.Tensor:
    """M on the latent grid: a cell is edited when any of its pixels is (so the whole object can change)."""
    return (MK.to_latent(mask, h, w) > 0).float()


# -- run --------------------------------------------------------------------------------------------
def run(inputs: IEditInputs, models, on_step: Optional[StepCallback] = None) -> EditResult:
    # -- 1. validate ---------------------------------------------------------------------------
    image = load_image(inputs.image, inputs.resolution)
    prompt = check_text("edit prompt", inputs.prompt)
    if inputs.mask_source not in MASK_SOURCES:
        raise ValueError(f"mask source must be one of {', '.join(MASK_SOURCES)}, got {inputs.mask_source!r}")
    strength = check_number("sampling ratio (strength)", inputs.strength, *STRENGTH_RANGE)
    steps = check_number("steps", inputs.steps, 1, 200, integer=True)
    cfg = check_number("guidance scale (CFG)", inputs.cfg, 1.0, 30.0)
    seed = check_seed(inputs.seed)
    n = check_number("number of results", inputs.num_results, 1, 4, integer=True)
    threshold = check_number("mask threshold", inputs.mask_threshold, 0.0, 1.0)
    checkpoint = (inputs.checkpoint or "").strip() or None

    log = RunLog(on_step)
    sd = models.sd()
    device, dtype = models.device, models.dtype
    with log.stage("mask"):
        mask, mask_note = make_mask(inputs, image, models, threshold)
    log.notes.append(mask_note)
    if inputs.mask_text and inputs.mask_source != "brush" and inputs.mask_text.lower() not in prompt.lower():
        log.notes.append(f"the edit term '{inputs.mask_text}' does not appear in the edit prompt")

    # -- 2. the UNet: base, or a private fine-tuned copy (the cached one is never changed) --------
    unet, mode = sd.unet, "base"
    if checkpoint is not None:
        from engine.core.unet_checkpoint import load_checkpoint

        with log.stage("checkpoint"):
            loaded = load_checkpoint(sd.unet, checkpoint, device, dtype)
        unet, mode = loaded.unet, "fine-tuned"
        log.notes.append(f"fine-tuned iEdit: {loaded.description}")
    else:
        log.notes.append(BASE_NOTE)
    if not PAPER_STRENGTHS[0] <= strength <= PAPER_STRENGTHS[1]:
        log.notes.append(f"sampling ratio {strength:g} is outside the paper's 0.6-0.8")

    scheduler = sd.scheduler()
    with torch.no_grad():
        # -- 3. encode the photo, the edit prompt and the empty prompt ---------------------------
        with log.stage("encode"):
            x0 = S.encode_image(sd, image)
            cond = S.encode_prompts(sd, [prompt])
            uncond = S.encode_prompts(sd, [""])
        m = latent_mask(mask, x0.shape[-2], x0.shape[-1]).to(device, x0.dtype)
        # One seeded generator, one batch: each result gets its own noise draw.
        gen = S.make_generator(seed, device)
        noise = S.randn((n,) + tuple(x0.shape[1:]), gen, device, x0.dtype)

        # -- 4. masked SDEdit (Eq. 13) -------------------------------------------------------------
        with log.stage("denoise"):
            x = masked_sdedit(unet, scheduler, x0, noise, cond, uncond, m, steps, strength, cfg,
                              log.counter, on_step=lambda i, k, x: log.step("denoise", i, k, latents=x))
        # -- 5. decode (Eq. 6) -------------------------------------------------------------------
        with log.stage("decode"):
            images = S.decode_latents(sd, x)

    params = params_of(inputs, skip=("image", "mask"))
    params.update(strength=strength, steps=steps, cfg=cfg, num_results=n, seed=seed, mask_threshold=threshold,
                  checkpoint=checkpoint, mode=mode, denoising_steps=max(1, min(steps, int(round(strength * steps)))),
                  mask_coverage=round(MK.coverage(mask), 4),
                  result_noise=f"results 1-{n} are the {n} noise draws of one generator seeded with {seed}")
    return EditResult(images=images, intermediates={"mask": MK.overlay(image, mask)}, seed=seed,
                      seconds=log.finish(), unet_evals=log.counter.as_dict(), params=params, notes=log.notes)


# -- command line -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="the edit prompt, e.g. 'a photograph of a brown horse'")
    parser.add_argument("--mask-text", help="the edit term to segment, e.g. 'brown horse'")
    parser.add_argument("--mask", help="PNG mask (white = edit); implies --mask-source brush")
    parser.add_argument("--mask-source", choices=MASK_SOURCES, default=None,
                        help="where M comes from (default: brush with --mask, else clipseg)")
    parser.add_argument("--mask-threshold", type=float, default=0.5, help="CLIPSeg threshold (0-1)")
    parser.add_argument("--strength", type=float, default=0.7, help="sampling ratio (paper: 0.6-0.8)")
    parser.add_argument("--num-results", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--checkpoint", help="fine-tuned iEdit UNet folder, LoRA .safetensors or hub id")


def inputs_from_args(args, image: Image.Image, open_image) -> IEditInputs:
    source = args.mask_source or ("brush" if args.mask else "clipseg")
    return IEditInputs(image=image, prompt=args.prompt, mask_text=args.mask_text,
                       mask=open_image(args.mask) if args.mask else None, mask_source=source,
                       strength=args.strength, num_results=args.num_results, steps=args.steps, cfg=args.cfg,
                       seed=args.seed, checkpoint=args.checkpoint, resolution=args.resolution,
                       mask_threshold=args.mask_threshold)
