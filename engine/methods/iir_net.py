"""IIR-Net (Zhang et al., "Text-to-image editing by image information removal", WACV 2024).

The photo itself conditions the diffusion model, after the information the edit may change has
been removed from its region of interest (RoI): R(x0) = [x'_k, C(x0)] (Eq. 4-7, see
engine/core/removal.py). Two modes:

- trained: a ControlNet with 4 conditioning channels, trained with the loss of Eq. 8 by
  `python -m engine.train.iir_net`, reads R(x0); the image is sampled from noise with 20 DDIM
  steps and CFG 9 (Sec. 4.1). No trained weights are public, so a checkpoint must be given
  (a local folder or a hub id; or $DES_IIR_CHECKPOINT).
- training-free (no checkpoint configured; an approximation, labelled in params.mode and the
  notes): img2img that starts from the removal image x'_k, with strength growing with the noise
  level k, under the Canny ControlNet (condition C(x0)), with the latents outside the RoI
  replaced at every step by the input's latents noised to that step (the input's own latents
  at the end), so the text-irrelevant content is kept exactly in latent space.

The RoI comes from Grounded-SAM on the RoI text (by default the prompt's noun phrase), from a
drawn mask, or is the whole image (scene and style edits).

A trained checkpoint's iir_net.json (written by the training script) fixes K, the largest noise
level it saw, and the Canny thresholds of its edge channel: a request above K or with other
thresholds is refused with a ValueError; unset thresholds take the checkpoint's.

Mechanisms and the tests that guard them (T = tests/test_iir_net_mechanisms.py, O =
tests/test_iir_net.py; each is broken once in tests/mutants/m_iir_net.py):
- Eq. 4, x'_0 = rgb2gray(x * m) + x * (1 - m): T::test_run_removal_image_is_gray_at_k0_noisier_with_k_and_the_input_outside
  (gray inside at k = 0, the input outside) and T::test_trained_controlnet_reads_the_removal_image_and_the_edges;
  O::test_removal_keeps_outside_grays_inside_and_has_four_channels (helper level).
- Eq. 5-6, x'_k = sqrt(abar_k) x'_0 + sqrt(1 - abar_k) eps inside the RoI, k from the slider: the same run-level
  test (deviation from gray strictly grows with k; outside untouched for every k) and
  T::test_trained_checkpoint_steers_the_edit_and_an_untrained_one_does_not (k moves a trained edit).
- Eq. 7, R(x0) = [x'_k, C(x0)]: T::test_trained_controlnet_reads_the_removal_image_and_the_edges (the ControlNet's
  input is the removal image and the edge map, channel by channel).
- Eq. 3, tau_theta2(R(x0)) at scale 1 into the UNet: T::test_trained_checkpoint_steers_the_edit_and_an_untrained_one_does_not
  (a trained ControlNet moves the edit with R(x0); an untrained one, zero convolutions, adds nothing).
- Training-free: img2img from x'_k, T::test_training_free_img2img_starts_from_the_removal_image; strength grows
  with k, the UNet-call counts of the first test; Canny ControlNet at scale 1,
  T::test_training_free_canny_controlnet_reads_the_edges_and_they_steer_the_edit; background kept,
  T::test_training_free_final_latents_are_the_inputs_outside_the_roi; a whole-image RoI keeps no
  background and skips the photo's VAE encode, same latents,
  tests/test_iir_net.py::test_whole_image_roi_skips_the_photos_encode_and_changes_nothing.
- iir_net.json (K, Canny): T::test_checkpoint_settings_come_from_its_iir_net_json, T::test_a_malformed_iir_net_json_is_refused.
- Eq. 8 and the random k of training: see engine/train/iir_net.py.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from engine.core import sampling as S
from engine.core.iir_checkpoint import (META, TrainedSettings, configured, load_iir_controlnet,
                                        trained_settings)
from engine.core.image import load_image
from engine.core.masks import coverage, mask_from_image, overlay, to_latent
from engine.core.phrases import noun_phrase
from engine.core.removal import MAX_NOISE, condition, edge_tensor, mask_tensor, removal_image
from engine.methods.common import RunLog, check_number, check_seed, check_text, params_of
from engine.types import EditResult, StepCallback

NAME = "iir-net"
TITLE = "IIR-Net"
ORDER = 3
SUMMARY = ("Text edits that keep what the text does not mention: erase colour (and, with noise, "
           "texture) inside the region, then regenerate it from the prompt.")

# Training-free img2img strength from the noise level: s = MIN_STRENGTH + (1 - MIN_STRENGTH) k / K.
# k = 0 (colour only) still needs room to repaint the gray region; s >= k / K always, so the
# latent noise covers at least as much as the pixel noise put in at level k.
MIN_STRENGTH = 0.6
CANNY_DEFAULT = (100, 200)  # thresholds when neither the request nor the checkpoint sets them


@dataclass(frozen=True)
class IIRNetInputs:
    image: Image.Image
    prompt: str
    roi_text: Optional[str] = None  # default: the prompt's noun phrase
    mask: Optional[Image.Image] = None
    whole_image: bool = False
    noise: int = 0  # k of Eq. 5-6, 0..K: 0 = colour edits, high = texture edits
    canny_low: Optional[int] = None  # None: the checkpoint's (iir_net.json), else 100
    canny_high: Optional[int] = None  # None: the checkpoint's (iir_net.json), else 200
    steps: int = 20  # Sec. 4.1: 20 DDIM steps
    cfg: float = 9.0  # Sec. 4.1: CFG 9
    seed: int = 0
    checkpoint: Optional[str] = None
    resolution: int = 512


def settle(noise: int, low: Optional[int], high: Optional[int], trained: Optional[TrainedSettings],
           checkpoint: Optional[str]) -> tuple[int, int, int, list]:
    """(K, Canny low, Canny high, notes) for a request: a trained checkpoint's iir_net.json fixes K
    and the thresholds; a request that disagrees with them is refused (the ControlNet never saw
    k > K, nor edges made with other thresholds)."""
    if trained is None:
        notes = [] if checkpoint is None else [
            f"{checkpoint} has no {META}: assuming K = {MAX_NOISE} and Canny {CANNY_DEFAULT[0]}/{CANNY_DEFAULT[1]}, "
            "settings this ControlNet may not have been trained with"]
        low = CANNY_DEFAULT[0] if low is None else low
        high = CANNY_DEFAULT[1] if high is None else high
        return MAX_NOISE, low, high, notes
    if noise > trained.max_noise:
        raise ValueError(f"noise level {noise} is above the largest this checkpoint was trained with "
                         f"(K = {trained.max_noise}, from its {META}): choose 0 to {trained.max_noise}")
    if (low is not None and low != trained.canny_low) or (high is not None and high != trained.canny_high):
        raise ValueError(f"Canny thresholds {low}/{high} differ from the {trained.canny_low}/{trained.canny_high} this "
                         f"checkpoint was trained with (its {META}); the ControlNet reads edges as made in "
                         f"training: set {trained.canny_low}/{trained.canny_high}, or leave them empty")
    return trained.max_noise, trained.canny_low, trained.canny_high, []


def strength_for(noise: int) -> float:
    """The training-free img2img strength for noise level k (see MIN_STRENGTH)."""
    return MIN_STRENGTH + (1.0 - MIN_STRENGTH) * noise / MAX_NOISE


def denoise(unet, scheduler, ts, x, cond, uncond, cfg: float, control: S.Control, log: RunLog,
            keep: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """DDIM with CFG and a ControlNet over the timesteps `ts`, from latents `x` (at level ts[0]).

    keep = (z0, m, noise): after every step the latents where m = 0 become z0 noised to the
    next level with the same noise (z0 itself after the last step): the training-free mode's
    background blending. Trained mode passes keep=None (the paper samples freely).
    """
    for i, t in enumerate(ts):
        eps = S.predict_noise(unet, x, t, cond, log.counter, uncond=uncond, cfg=cfg, control=control)
        x = S.ddim_step(scheduler, eps, t, x)
        if keep is not None:
            z0, m, noise = keep
            last = i == len(ts) - 1
            background = z0 if last else S.add_noise(scheduler, z0, noise, S.previous_timestep(scheduler, t))
            x = S.blend(x, background, m)
        log.step("denoise", i + 1, len(ts), latents=x)
    return x


def training_free_latents(sd, scheduler, canny_net, edges_rgb: torch.Tensor, z0: Optional[torch.Tensor],
                          z_removal: torch.Tensor, m_lat: torch.Tensor, cond, uncond, steps: int,
                          strength: float, cfg: float, noise: torch.Tensor, log: RunLog) -> torch.Tensor:
    """Img2img from the removal image's latents under the Canny ControlNet, background kept.

    Returns the final latents: equal to z0 wherever m_lat = 0. z0 None: the RoI is the whole image,
    there is no background to keep, and the photo's latents are not needed (`run` skips its encode).
    """
    ts = S.sdedit_timesteps(scheduler, steps, strength, z_removal.device)
    x = S.add_noise(scheduler, z_removal, noise, ts[0])
    control = S.Control([canny_net], [edges_rgb], [1.0])
    if z0 is None:
        return denoise(sd.unet, scheduler, ts, x, cond, uncond, cfg, control, log)
    x = S.blend(x, S.add_noise(scheduler, z0, noise, ts[0]), m_lat)
    return denoise(sd.unet, scheduler, ts, x, cond, uncond, cfg, control, log, keep=(z0, m_lat, noise))


def trained_latents(sd, scheduler, controlnet, r_x0: torch.Tensor, cond, uncond, steps: int,
                    cfg: float, noise: torch.Tensor, log: RunLog) -> torch.Tensor:
    """Sampling of Sec. 3.1: eps_theta(z_t, t, tau1(S), tau2(R(x0))) from z_T = noise, DDIM."""
    ts = S.timesteps(scheduler, steps, noise.device)
    x = noise * scheduler.init_noise_sigma
    control = S.Control([controlnet], [r_x0], [1.0])
    return denoise(sd.unet, scheduler, ts, x, cond, uncond, cfg, control, log)


def plan_roi(inputs: IIRNetInputs, image: Image.Image, prompt: str) -> tuple[Optional[np.ndarray], Optional[str], dict, list]:
    """Checked before any model loads: (mask, None) for the whole image or a drawn mask, else
    (None, phrase) for Grounded-SAM; a prompt with no noun and no mask fails here, fast."""
    if not isinstance(inputs.whole_image, (bool, np.bool_)):
        raise ValueError(f"whole_image must be true or false, got {inputs.whole_image!r}")
    if inputs.whole_image:
        notes = ["whole image selected: the drawn mask was ignored"] if inputs.mask is not None else []
        return np.ones((image.height, image.width), np.float32), None, {"roi_source": "whole image"}, notes
    if inputs.mask is not None:
        mask = mask_from_image(inputs.mask, image.size)
        if mask.max() <= 0:
            raise ValueError("the mask is empty: paint the region to edit, or clear it to find the "
                             "region from the RoI text")
        return mask, None, {"roi_source": "mask"}, []
    roi = check_text("RoI text", inputs.roi_text, allow_empty=True, max_len=200)
    roi = roi or noun_phrase(prompt)
    if roi is None:
        raise ValueError(f"the prompt {prompt!r} names no object to find in the photo: type the "
                         "region in 'RoI text', draw a mask, or choose 'whole image' for scene "
                         "and style edits")
    return None, roi, {"roi_source": "grounded-sam", "roi_text": roi}, []


def segment_roi(models, image: Image.Image, phrase: str) -> tuple[np.ndarray, list, str]:
    """Grounded-SAM (GroundingDINO boxes -> SAM masks) for the phrase; nothing found -> ValueError."""
    from engine.core.segment import grounded_sam

    found = grounded_sam(models.get("grounding_dino"), models.get("sam"), image, phrase)
    if not found.mask.any():
        raise ValueError(f"Grounded-SAM found nothing matching {phrase!r} in the photo: draw the mask, "
                         "or change the RoI text")
    return found.mask.astype(np.float32), [b.to_dict() for b in found.boxes], found.message


def run(inputs: IIRNetInputs, models, on_step: Optional[StepCallback] = None) -> EditResult:
    # -- 1. validate ---------------------------------------------------------------------------
    image = load_image(inputs.image, inputs.resolution)
    prompt = check_text("prompt", inputs.prompt)
    noise_k = check_number("noise level", inputs.noise, 0, MAX_NOISE, integer=True)
    low, high = (None if v is None else check_number(f"Canny {name} threshold", v, 0, 255, integer=True)
                 for name, v in (("low", inputs.canny_low), ("high", inputs.canny_high)))
    steps = check_number("steps", inputs.steps, 1, 200, integer=True)
    cfg = check_number("guidance scale (CFG)", inputs.cfg, 1.0, 30.0)
    seed = check_seed(inputs.seed)
    checkpoint = configured(inputs.checkpoint)
    trained = trained_settings(checkpoint) if checkpoint else None  # iir_net.json: K and Canny of training
    max_noise, low, high, settle_notes = settle(noise_k, low, high, trained, checkpoint)
    if low > high:
        raise ValueError(f"the Canny low threshold ({low}) must not exceed the high one ({high})")
    mask, phrase, roi_params, roi_notes = plan_roi(inputs, image, prompt)

    log = RunLog(on_step)
    sd = models.sd()
    device = models.device
    scheduler = sd.scheduler()
    gen = S.make_generator(seed, device)
    with torch.no_grad():
        # -- 2. the region of interest (Grounded-SAM, a drawn mask, or everything) -------------
        with log.stage("roi"):
            log.notes.extend(settle_notes + roi_notes)
            if mask is None:
                mask, roi_params["boxes"], message = segment_roi(models, image, phrase)
                log.notes.append(message)
        # -- 3. R(x0) = [x'_k, C(x0)] (Eq. 4-7) ---------------------------------------------------
        with log.stage("removal"):
            x = S.pil_to_tensor(image)
            m = mask_tensor(mask)
            eps_img = S.randn(x.shape, gen, "cpu", torch.float32)
            x_k = removal_image(x, m, noise_k, eps_img, scheduler.alphas_cumprod)
            edges = edge_tensor(image, low, high)
            removal_pil = S.tensor_to_pil(x_k)[0]
        controlnet = load_iir_controlnet(checkpoint, sd.unet, device, models.dtype) if checkpoint else None
        canny_net = None if controlnet is not None else models.get("controlnet_canny")
        with log.stage("encode"):
            cond = S.encode_prompts(sd, [prompt])
            uncond = S.encode_prompts(sd, [""])
            if controlnet is None:  # training-free: img2img needs x'_k's latents, and the photo's to keep
                z_removal = S.encode_image(sd, removal_pil)
                # A RoI of the whole image keeps no background: the photo's latents would only enter
                # blends of weight 0, so its VAE encode (a second one) is skipped.
                z0 = None if bool((m >= 1).all()) else S.encode_image(sd, image)
        shape = (1, sd.unet.config.in_channels, image.height // sd.vae_scale, image.width // sd.vae_scale)
        latent_noise = S.randn(shape, gen, device, models.dtype)
        # -- 4. sampling ------------------------------------------------------------------------
        with log.stage("denoise"):
            if controlnet is not None:
                r_x0 = condition(x_k, edges).to(device)
                z = trained_latents(sd, scheduler, controlnet, r_x0, cond, uncond, steps, cfg,
                                    latent_noise, log)
                mode, strength = "trained", None
                log.notes.append(f"trained IIR-Net ControlNet from {checkpoint}")
            else:
                m_lat = to_latent(mask, shape[-2], shape[-1], device, z_removal.dtype)
                strength = strength_for(noise_k)
                edges_rgb = edges.expand(-1, 3, -1, -1).to(device)
                z = training_free_latents(sd, scheduler, canny_net, edges_rgb, z0, z_removal, m_lat, cond,
                                          uncond, steps, strength, cfg, latent_noise, log)
                mode = "training-free"
                log.notes.append("training-free approximation: no trained IIR-Net checkpoint is configured, "
                                 "so the removal image is repainted by img2img under the Canny ControlNet "
                                 "with the background kept from the input")
        with log.stage("decode"):
            images = S.decode_latents(sd, z)

    intermediates = {
        "roi": overlay(image, mask),
        "removal": removal_pil,
        "edges": Image.fromarray((edges[0, 0].numpy() * 255).astype(np.uint8)).convert("RGB"),
    }
    params = params_of(inputs, skip=("image", "mask"))
    params.update(roi_params, mode=mode, noise=noise_k, max_noise=max_noise, canny_low=low, canny_high=high,
                  steps=steps, cfg=cfg, checkpoint=checkpoint, roi_coverage=round(coverage(mask), 4),
                  masked=inputs.mask is not None and not inputs.whole_image)
    if strength is not None:
        params["strength"] = round(strength, 4)
    return EditResult(images=images, intermediates=intermediates, seed=seed, seconds=log.finish(),
                      unet_evals=log.counter.as_dict(), params=params, notes=log.notes)


# -- command line ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="the edited photo's description, e.g. 'a green airplane'")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--roi", help="what to edit, found with Grounded-SAM (default: the prompt's noun phrase)")
    where.add_argument("--mask", help="PNG mask: white = edit, black = keep")
    where.add_argument("--whole-image", action="store_true", help="edit everywhere (scene or style edits)")
    parser.add_argument("--noise", type=int, default=0,
                        help=f"noise level k, 0..{MAX_NOISE}: 0 erases colour only, higher erases texture too")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=9.0)
    parser.add_argument("--checkpoint", default=None,
                        help="trained IIR-Net ControlNet (folder or hub id); none = training-free mode")
    parser.add_argument("--canny-low", type=int, default=None,
                        help="default: the checkpoint's (its iir_net.json), else 100")
    parser.add_argument("--canny-high", type=int, default=None,
                        help="default: the checkpoint's (its iir_net.json), else 200")


def inputs_from_args(args, image: Image.Image, open_image) -> IIRNetInputs:
    return IIRNetInputs(image=image, prompt=args.prompt, roi_text=args.roi,
                        mask=open_image(args.mask) if args.mask else None, whole_image=args.whole_image,
                        noise=args.noise, canny_low=args.canny_low, canny_high=args.canny_high,
                        steps=args.steps, cfg=args.cfg, seed=args.seed, checkpoint=args.checkpoint,
                        resolution=args.resolution)
