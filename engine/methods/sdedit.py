"""SDEdit (Meng et al., 2022): noise the photo's latent part-way, then denoise it with a prompt.

The baseline every paper in the studio compares against. With a mask, the latents outside it
are replaced at every step by the input's latents noised to that step, and by the input's own
latents at the end, so only the masked region changes.

Mechanisms and the tests that guard them (tests/test_sdedit.py, at the level of `run`; each is
broken once in tests/mutants/m_sdedit.py):
- start x_t0 = sqrt(abar_t0) x0 + sqrt(1 - abar_t0) eps (the photo, not pure noise, at the first
  step's level): test_unet_sees_the_photo_noised_to_each_step_and_kept_outside_the_mask.
- strength: the last round(strength * steps) DDIM steps, from about strength * T down to t = 0:
  test_strength_runs_the_last_ddim_steps_down_to_t0.
- masked blending (outside: the input noised to each step, the input itself at the end; an
  all-ones mask is plain SDEdit): test_unet_sees_the_photo_noised_to_each_step_and_kept_outside_the_mask,
  test_mask_keeps_the_input_latents_outside_and_all_ones_is_plain_sdedit (and, on the helper,
  test_masked_latents_outside_equal_the_noised_input_at_every_step).
- CFG, eps = eps_neg + w (eps_pos - eps_neg) with the negative prompt as the unconditional branch:
  test_cfg_is_eps_uncond_plus_scale_times_the_difference_and_reads_the_negative_prompt.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import torch
from PIL import Image

from engine.core import sampling as S
from engine.core.blended import masked_sdedit
from engine.core.image import load_image
from engine.core.masks import mask_from_image, to_latent
from engine.methods.common import RunLog, check_number, check_seed, check_text, params_of
from engine.types import EditResult, StepCallback

NAME = "sdedit"
TITLE = "SDEdit (baseline)"
ORDER = 0
SUMMARY = "Noise the photo part-way and denoise it with a prompt; optionally only inside a mask."


@dataclass(frozen=True)
class SDEditInputs:
    image: Image.Image
    prompt: str
    strength: float = 0.7
    steps: int = 50
    cfg: float = 7.5
    seed: int = 0
    mask: Optional[Image.Image] = None
    num_results: int = 1
    negative_prompt: str = ""
    resolution: int = 512


def run(inputs: SDEditInputs, models, on_step: Optional[StepCallback] = None) -> EditResult:
    # -- 1. validate ---------------------------------------------------------------------------
    image = load_image(inputs.image, inputs.resolution)
    prompt = check_text("prompt", inputs.prompt)
    negative = check_text("negative prompt", inputs.negative_prompt, allow_empty=True)
    strength = check_number("strength", inputs.strength, 0.05, 1.0)
    steps = check_number("steps", inputs.steps, 1, 200, integer=True)
    cfg = check_number("guidance scale (CFG)", inputs.cfg, 1.0, 30.0)
    seed = check_seed(inputs.seed)
    n = check_number("number of results", inputs.num_results, 1, 4, integer=True)
    mask = None if inputs.mask is None else mask_from_image(inputs.mask, image.size)
    if mask is not None and mask.max() <= 0:
        raise ValueError("the mask is empty: paint the region to edit, or remove the mask to edit everywhere")

    log = RunLog(on_step)
    with log.stage("load models"):
        sd = models.sd()
    device = models.device
    scheduler = sd.scheduler()
    with torch.no_grad():
        # -- 2. encode the photo and the prompts ----------------------------------------------
        with log.stage("encode"):
            x0 = S.encode_image(sd, image)
            cond = S.encode_prompts(sd, [prompt])
            uncond = S.encode_prompts(sd, [negative])
        gen = S.make_generator(seed, device)
        noise = S.randn((n,) + tuple(x0.shape[1:]), gen, device, x0.dtype)
        ts = S.sdedit_timesteps(scheduler, steps, strength, device)
        m = None if mask is None else to_latent(mask, x0.shape[-2], x0.shape[-1]).to(device, x0.dtype)

        # -- 3. SDEdit: start at x_t ~ q(x_t | x_0), DDIM with CFG, blend outside the mask --------
        with log.stage("denoise"):
            x = masked_sdedit(sd.unet, scheduler, x0, noise, ts, cond, uncond, cfg, log.counter, mask=m,
                              on_step=lambda i, k, x: log.step("denoise", i, k, latents=x))
        with log.stage("decode"):
            images = S.decode_latents(sd, x)

    intermediates = {}
    if mask is not None:
        from engine.core.masks import overlay

        intermediates["mask"] = overlay(image, mask)
    params = params_of(inputs)
    params.update(strength=strength, steps=steps, cfg=cfg, num_results=n, masked=mask is not None,
                  denoising_steps=len(ts))
    return EditResult(images=images, intermediates=intermediates, seed=seed, seconds=log.finish(),
                      unet_evals=log.counter.as_dict(), params=params, notes=log.notes)


# -- command line ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="what the edited photo should show")
    parser.add_argument("--strength", type=float, default=0.7, help="how far to noise the photo (0-1)")
    parser.add_argument("--mask", help="PNG mask: white = edit, black = keep")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--num-results", type=int, default=1)
    parser.add_argument("--negative-prompt", default="")


def inputs_from_args(args, image: Image.Image, open_image) -> SDEditInputs:
    return SDEditInputs(image=image, prompt=args.prompt, strength=args.strength, steps=args.steps,
                        cfg=args.cfg, seed=args.seed, mask=open_image(args.mask) if args.mask else None,
                        num_results=args.num_results, negative_prompt=args.negative_prompt,
                        resolution=args.resolution)
