"""ITO: optimisation-based multi-modal semantic image editing (papers/ito.txt).

Edit a photo by text, scribble or pose (any combination), preserving everything else:

1. Conditions: C_0 = (caption; the photo's scribble and/or pose), C_EDIT = (edit prompt; the
   edited scribble and/or pose). Layout conditions go through ControlNets, several at once as a
   multi-ControlNet (their residuals add up).
2. DDIM inversion of x_0 under C_0 to the encoding level t_E (Eq. 2): the targets x_t.
3. Edit mask (Eq. 7, engine.core.ito_mask): n seeds x {C_0, C_EDIT}, one batched UNet call per step,
   from DiffEdit's mask encoding level (0.5 of the schedule) down to the last step.
   A user mask replaces it or is added to it.
4. Guidance image (Fig. 1a): SDEdit encoding of x_0 with random noise, decoded under C_EDIT with the
   ITO update at lambda = 1 (preservation only); its latents g_0 are DDIM-inverted under C_EDIT to
   give g_t. Skipped when lambda = 1.
5. Final edit (Fig. 1b): from x_{t_E} (DDIM inversion), decoded under C_EDIT with the ITO update of
   Eq. 6 (engine.core.ito_optim) during the first t_u steps. Each loss's gradient is normalised by
   its own Adam moments before lambda weights it, so lambda is a graded trade-off (Fig. 5); why,
   in engine.core.ito_optim's docstring.

The optimisation acts on latents only: the UNet is evaluated without gradients, never
differentiated (backward = 0), and no weight is touched.

Mechanisms and the tests that guard them (M = tests/test_ito_mechanisms.py, T = tests/test_ito.py;
each breakage is registered in tests/mutants/m_ito.py, `python -m tests.mutants --method ito`):

- Eq. 2, x_t = DDIM inversion of x_0 under C_0 (text and ControlNet image), stopped at t_E:
  M::test_every_update_of_the_run_is_eq6_on_x_t_and_g_t (the edit starts from x_{t_E} and is pulled
  to x_t of its own timestep), M::test_c0_and_c_edit_reach_the_right_passes_and_batch_rows,
  M::test_encoding_ratio_sets_where_inversion_stops_and_the_edit_starts.
- Eq. 4, L_REC only outside the mask (keep = 1 - m):
  M::test_every_update_of_the_run_is_eq6_on_x_t_and_g_t (the guidance pass never moves a latent
  inside the mask), T::test_update_moves_towards_x_outside_the_mask_and_not_inside,
  T::test_zero_mask_lambda_one_keeps_the_latents_closer_to_x_t.
- Eq. 5, L_G against g_t, the guidance image's inversion under C_EDIT:
  M::test_every_update_of_the_run_is_eq6_on_x_t_and_g_t (g_0 is the guidance image's latents; each
  update uses g_t of its timestep), M::test_c0_and_c_edit_reach_the_right_passes_and_batch_rows.
- Eq. 6, (1 - lambda) L_G + lambda L_REC, gamma, k, first t_u steps:
  M::test_every_update_of_the_run_is_eq6_on_x_t_and_g_t (two settings of lambda, t_u, k, lr; no
  update from step t_u on), M::test_lambda_is_a_graded_trade_off_across_its_range (lambda 0, 0.25,
  0.5, 0.75, 1: distance to the photo outside the mask falls, to the guidance image inside grows,
  every quarter carrying 10-50 % of the change),
  M::test_t_u_k_and_lr_set_how_hard_the_edit_is_pulled_to_the_photo (t_u = 0 and k = 0 both give the
  plain decode; more t_u, k or gamma, closer to the photo outside the mask).
- Fig. 1a, guidance image = SDEdit (random noise) + ITO at lambda = 1, skipped at lambda = 1:
  M::test_guidance_starts_from_noise_and_the_edit_from_the_inversion,
  M::test_every_update_of_the_run_is_eq6_on_x_t_and_g_t, T::test_lambda_one_runs_no_guidance_pass.
- Fig. 1b, final edit from the inversion under C_EDIT:
  M::test_guidance_starts_from_noise_and_the_edit_from_the_inversion (seed-independent at lambda = 1
  with a drawn mask), M::test_c0_and_c_edit_reach_the_right_passes_and_batch_rows.
- Eq. 7, mask = mean over n seeds of |eps(C_EDIT) - eps(C_0)| at the last step, smoothed,
  normalised, > tau: M::test_run_mask_is_eq7_over_n_seeds_thresholded_at_tau (against a per-seed
  reference written in the test), M::test_tau_thins_the_mask_monotonically,
  M::test_c0_and_c_edit_reach_the_right_passes_and_batch_rows (batch rows),
  T::test_mask_is_one_batched_unet_call_per_step_and_matches_per_seed_runs,
  T::test_identical_conditions_give_an_empty_mask, T::test_mask_grows_with_the_scribble_change.
- User mask, replace or add: M::test_user_mask_replaces_or_is_added_to_the_estimate,
  T::test_same_seed_same_edit_and_user_mask_modes.
- No model gradient, weights untouched:
  T::test_optimisation_needs_no_model_gradient_and_leaves_weights_untouched.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from engine.core import conditions as K
from engine.core import ito_inputs as I
from engine.core import sampling as S
from engine.core.image import load_image
from engine.core.inversion import ddim_invert
from engine.core.ito_mask import estimate_edit_mask
from engine.core.ito_optim import ito_decode
from engine.core.masks import mask_from_image, to_latent
from engine.methods.common import RunLog, check_number, check_seed, check_text, params_of
from engine.types import EditResult, StepCallback

NAME = "ito"
TITLE = "ITO: text, scribble and pose editing"
ORDER = 2
SUMMARY = ("Edit by text, scribble or pose with inference-time optimisation of the latents "
           "(preservation + guidance losses, estimated edit mask).")
MASK_MODES = ("replace", "add")
MASK_SIGMA = 1.0  # Gaussian smoothing of the Eq. 7 map, in latent cells


@dataclass(frozen=True)
class ITOInputs:
    image: Image.Image
    prompt: Optional[str] = None          # edit text; None/empty keeps the caption
    caption: Optional[str] = None         # C_0's text; None/empty: BLIP captions the photo
    scribble: Any = None                  # edited scribble (white on black, or an RGBA stroke layer)
    scribble_source: Any = None           # the photo's scribble; extracted when None
    pose: Any = None                      # edited pose: Pose, OpenPose JSON dict or string
    pose_source: Any = None               # the photo's pose; detected when None
    mask: Optional[Image.Image] = None    # user mask (white = edit)
    mask_mode: str = "replace"            # "replace" the estimate, or "add" to it
    lam: float = 0.6                      # lambda of Eq. 6 (1 = preservation only)
    steps: int = 25
    t_u: int = 15                         # ITO updates during the first t_u decoding steps
    k: int = 1                            # Adam steps per update
    lr: float = 0.1                       # gamma
    encode_ratio: float = 1.0             # t_E / T
    tau: float = 0.1                      # mask threshold
    mask_seeds: int = 10                  # n of Eq. 7
    mask_encode_ratio: float = 0.5        # the mask pass's encoding level x_E(s) / T (DiffEdit's 0.5, see below)
    cfg: float = 7.5                      # classifier-free guidance while decoding (paper: unstated; SD's 7.5)
    control_scale: float = 1.0
    seed: int = 0
    resolution: int = 512


@dataclass
class Prepared:
    """What the UI shows when a photo arrives: its caption, scribble and pose (+ notes)."""

    image: Image.Image
    caption: str
    scribble: Image.Image
    pose: K.Pose
    notes: list[str]
    pose_note: Optional[str] = None  # why the pose is a default skeleton, if it is


def prepare(models, image, resolution: int = 512, with_caption: bool = True,
            on_step: Optional[StepCallback] = None) -> Prepared:
    """The photo's own conditions (C_0) at the size `run` uses, for the editors of the UI."""
    image = load_image(image, resolution)
    notes: list[str] = []
    log = RunLog(on_step)
    log.step("reading the photo's scribble, pose and caption", 0, 3)
    scribble, note = I.source_scribble(models, image)
    notes += [note] if note else []
    pose, pose_note, detected = I.source_pose(models, image)
    if pose is None:
        pose = K.default_pose(*image.size)
        pose_note = "no person found in the photo: showing a default skeleton to drag into place"
    notes += [pose_note] if pose_note else []
    log.step("captioning", 2, 3)
    text = I.photo_caption(models, image) if with_caption else ""
    return Prepared(image, text, scribble, pose, notes, pose_note)


def mask_overlay(photo: Image.Image, result: EditResult) -> Optional[Image.Image]:
    """The run's edit mask tinted over the photo (at the result's size), for display."""
    from engine.core.masks import overlay

    mask = result.intermediates.get("mask")
    if mask is None:
        return None
    return overlay(photo.convert("RGB").resize(mask.size, Image.LANCZOS), mask)


def _resolve(inputs: ITOInputs, image: Image.Image, models, log: RunLog):
    """Read and check the conditions: (caption, prompt, [(name, source, edit)], flags)."""
    size = image.size
    layouts = []
    # -- cheap checks first (no model needed) -----------------------------------------------
    scribble = None if inputs.scribble is None else I.read_scribble(inputs.scribble, size, "edited scribble")
    scribble_src = None
    if scribble is not None and inputs.scribble_source is not None:
        scribble_src = I.read_scribble(inputs.scribble_source, size, "source scribble")
    pose = None if inputs.pose is None else I.read_pose(inputs.pose, size, "edited pose")
    pose_src = None
    if pose is not None and inputs.pose_source is not None:
        pose_src = I.read_pose(inputs.pose_source, size, "source pose")
    prompt = check_text("edit prompt", inputs.prompt, allow_empty=True, max_len=500)
    caption = check_text("caption", inputs.caption, allow_empty=True, max_len=500)
    if not prompt and scribble is None and pose is None:
        raise ValueError("nothing to edit: give an edit prompt, an edited scribble or an edited pose")
    # -- the photo's own conditions (may need models) -----------------------------------------
    if scribble is not None:
        if scribble_src is None:
            scribble_src, note = I.source_scribble(models, image)
            if note:
                log.notes.append(note)
        layouts.append(("scribble", scribble_src, scribble, K.scribble_changed(scribble_src, scribble)))
    if pose is not None:
        if pose_src is None:
            pose_src, note, detected = I.source_pose(models, image)
            if pose_src is None:
                raise ValueError("a pose edit needs a person in the photo, but the pose detector found nobody; "
                                 "give the photo's pose as JSON (pose source / --pose-source)")
            if note:
                log.notes.append(note)
        layouts.append(("pose", pose_src, pose, K.pose_changed(pose_src, pose)))
    if not caption:
        caption = I.photo_caption(models, image)
        log.notes.append(f"caption by BLIP: {caption!r}")
    prompt = prompt or caption
    text_changed = prompt.lower() != caption.lower()
    if not text_changed and not any(changed for *_, changed in layouts):
        given = ["the edit prompt equals the caption" if inputs.prompt else "no edit prompt"]
        given += [f"the {name} is unchanged" for name, *_ in layouts]
        raise ValueError("no condition changed (" + ", ".join(given) + "): change the prompt, "
                         "the scribble or the pose, otherwise the edit would return the photo")
    return caption, prompt, layouts, text_changed


def _control(models, layouts, which: int, device, dtype, scale: float) -> Optional[S.Control]:
    """C_0's (which = 1) or C_EDIT's (which = 2) multi-ControlNet, None for text only."""
    if not layouts:
        return None
    nets, images = [], []
    for entry in layouts:
        name = entry[0]
        nets.append(models.get("controlnet_scribble" if name == "scribble" else "controlnet_openpose"))
        picture = entry[which] if name == "scribble" else K.render_openpose(entry[which])
        images.append(I.control_tensor(picture, device, dtype))
    return S.Control(models=nets, images=images, scales=[scale] * len(nets))


def run(inputs: ITOInputs, models, on_step: Optional[StepCallback] = None) -> EditResult:
    # -- 1. validate -----------------------------------------------------------------------------------
    image = load_image(inputs.image, inputs.resolution)
    steps = check_number("steps", inputs.steps, 2, 200, integer=True)
    lam = check_number("lambda", inputs.lam, 0.0, 1.0)
    t_u = check_number("t_u (update steps)", inputs.t_u, 0, steps, integer=True)
    k = check_number("k (gradient steps per update)", inputs.k, 0, 100, integer=True)
    lr = check_number("learning rate", inputs.lr, 1e-5, 10.0)
    ratio = check_number("encoding ratio", inputs.encode_ratio, 0.05, 1.0)
    tau = check_number("mask threshold tau", inputs.tau, 0.0, 0.99)
    n_seeds = check_number("mask seeds n", inputs.mask_seeds, 1, 64, integer=True)
    mask_ratio = check_number("mask encoding ratio", inputs.mask_encode_ratio, 0.05, 1.0)
    cfg = check_number("guidance scale (CFG)", inputs.cfg, 1.0, 30.0)
    scale = check_number("ControlNet scale", inputs.control_scale, 0.0, 2.0)
    seed = check_seed(inputs.seed)
    if inputs.mask_mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {inputs.mask_mode!r}")
    user_mask = None if inputs.mask is None else mask_from_image(inputs.mask, image.size)
    if user_mask is not None and user_mask.max() <= 0:
        raise ValueError("the mask is empty: paint the region to edit, or remove the mask")

    log = RunLog(on_step)
    with log.stage("conditions"):
        caption, prompt, layouts, text_changed = _resolve(inputs, image, models, log)
    with log.stage("load models"):
        sd = models.sd()
        device, dtype = models.device, models.dtype
        control0 = _control(models, layouts, 1, device, dtype, scale)
        control_e = _control(models, layouts, 2, device, dtype, scale)
    unet, scheduler = sd.unet, sd.scheduler()
    gen = S.make_generator(seed, device)

    with torch.no_grad():
        with log.stage("encode"):
            x0 = S.encode_image(sd, image).float()
            cond0, cond_e, uncond = S.encode_prompts(sd, [caption, prompt, ""]).chunk(3)
        ts = S.sdedit_timesteps(scheduler, steps, ratio, device)
        n_enc = len(ts)
        t_u_eff = min(t_u, n_enc)
        h, w = x0.shape[-2:]

        # -- 2. DDIM inversion of x_0 under C_0 up to t_E (Eq. 2) ----------------------------------
        with log.stage("inversion"):
            traj = ddim_invert(sd, scheduler, x0, cond0, steps, log.counter, until=n_enc, control=control0,
                               on_step=lambda info: log.step("inversion", info.i, info.n))
        targets = [traj[n_enc - i].float() for i in range(n_enc)]  # x_t paired with ts[i]

        # -- 3. edit mask (Eq. 7), or the user's -----------------------------------------------------
        user_lat, mask_ts = None, None
        if user_mask is not None:
            user_lat = (to_latent(user_mask, h, w, device=device) >= 0.5).float()
        if user_lat is not None and inputs.mask_mode == "replace":
            mask = user_lat
            log.notes.append("the drawn mask replaces the estimated one (no mask estimation pass)")
        else:
            with log.stage("mask"):
                # Sec. 4, Implementation: "for mask generation, we follow the parameters of (Couairon et al.,
                # 2022b)", i.e. DiffEdit's n = 10 noise draws at an encoding ratio of 0.5, so x_E(s) of Eq. 7
                # sits at half the schedule here, independent of the edit's own t_E.
                mask_ts = S.sdedit_timesteps(scheduler, steps, mask_ratio, device)
                noises = S.randn((n_seeds,) + tuple(x0.shape[1:]), gen, device, torch.float32)
                mask, _ = estimate_edit_mask(unet, scheduler, x0, noises, mask_ts, cond0, cond_e, uncond, cfg,
                                             control0, control_e, log.counter, tau=tau, sigma=MASK_SIGMA,
                                             on_step=lambda i, n: log.step("mask", i, n))
            if user_lat is not None:
                mask = torch.maximum(mask, user_lat)
        if float(mask.max()) <= 0:
            log.notes.append("the edit mask is empty: the preservation loss keeps the whole photo; "
                             "lower tau or draw a mask for a stronger edit")
        keep = 1.0 - mask

        def step_logger(stage):
            return lambda i, n, losses, y: log.step(stage, i, n, latents=y,
                                                    **{f"{stage} {key}": v for key, v in losses.items()})

        # -- 4. guidance image: SDEdit encoding + ITO with lambda = 1 (Fig. 1a) ------------------------
        guides, guidance_image = None, None
        if lam < 1.0:
            with log.stage("guidance"):
                noise = S.randn(tuple(x0.shape), gen, device, torch.float32)
                start = S.add_noise(scheduler, x0, noise, ts[0])
                g0 = ito_decode(unet, scheduler, start, ts, cond_e, uncond, cfg, control_e, log.counter,
                                targets, keep, 1.0, t_u_eff, k, lr, on_step=step_logger("guidance"))
            with log.stage("guidance inversion"):
                gtraj = ddim_invert(sd, scheduler, g0, cond_e, steps, log.counter, until=n_enc, control=control_e,
                                    on_step=lambda info: log.step("guidance inversion", info.i, info.n))
                guides = [gtraj[n_enc - i].float() for i in range(n_enc)]
                guidance_image = S.decode_latents(sd, g0)[0]

        # -- 5. final edit from the DDIM inversion, ITO with Eq. 6 (Fig. 1b) ----------------------------
        with log.stage("edit"):
            y0 = ito_decode(unet, scheduler, traj[n_enc].float(), ts, cond_e, uncond, cfg, control_e, log.counter,
                            targets, keep, lam, t_u_eff, k, lr, guides=guides, on_step=step_logger("edit"))
        with log.stage("decode"):
            edited = S.decode_latents(sd, y0)[0]

    # -- 6. report -----------------------------------------------------------------------------------------
    mask_img = Image.fromarray((mask[0, 0].cpu().numpy() * 255).astype(np.uint8)).resize(image.size, Image.NEAREST)
    intermediates = {"mask": mask_img}
    if guidance_image is not None:
        intermediates["guidance"] = guidance_image
    intermediates["condition_source"] = I.condition_picture(
        [e[1] if e[0] == "scribble" else K.render_openpose(e[1]) for e in layouts], caption, image.size)
    intermediates["condition_edit"] = I.condition_picture(
        [e[2] if e[0] == "scribble" else K.render_openpose(e[2]) for e in layouts], prompt, image.size)
    if t_u > n_enc:
        log.notes.append(f"t_u = {t_u} is more than the {n_enc} decoding steps: every step is updated")
    params = params_of(inputs, skip=("image", "mask", "scribble", "scribble_source", "pose", "pose_source"))
    params.update(caption=caption, prompt=prompt, lam=lam, steps=steps, t_u=t_u, k=k, lr=lr, encode_ratio=ratio,
                  tau=tau, mask_seeds=n_seeds, mask_encode_ratio=mask_ratio, cfg=cfg, control_scale=scale,
                  decoding_steps=n_enc, mask_steps=0 if mask_ts is None else len(mask_ts),
                  conditions=(["text"] if text_changed else []) + [e[0] for e in layouts],
                  changed={"text": text_changed, **{e[0]: bool(e[3]) for e in layouts}},
                  user_mask=None if user_mask is None else inputs.mask_mode,
                  **{key: K.pose_to_json(e[i]) for e in layouts if e[0] == "pose"  # restorable from History
                     for key, i in (("pose_source", 1), ("pose", 2))},
                  mask_fraction=round(float(mask.mean()), 4), guidance_pass=lam < 1.0,
                  optimised="latents only (no gradient through the UNet)")
    return EditResult(images=[edited], intermediates=intermediates, seed=seed, seconds=log.finish(),
                      unet_evals=log.counter.as_dict(), params=params, curves=log.curves, notes=log.notes)


# -- command line ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ITOInputs.__dataclass_fields__
    parser.add_argument("--prompt", default=None, help="edit prompt (default: keep the caption)")
    parser.add_argument("--caption", default=None, help="caption of the photo, C_0 (default: BLIP writes one)")
    parser.add_argument("--scribble", metavar="EDIT.png", help="edited scribble: white strokes on black")
    parser.add_argument("--scribble-source", metavar="ORIG.png", help="the photo's scribble (default: extracted)")
    parser.add_argument("--pose", metavar="EDIT.json", help="edited pose, OpenPose JSON")
    parser.add_argument("--pose-source", metavar="ORIG.json",
                        help="the photo's pose, OpenPose JSON (default: detected)")
    parser.add_argument("--mask", metavar="MASK.png", help="mask, white = edit (replaces the estimated mask)")
    parser.add_argument("--mask-mode", choices=MASK_MODES, default="replace",
                        help="replace the estimated mask with --mask, or add --mask to it")
    parser.add_argument("--lam", type=float, default=d["lam"].default, help="lambda: 1 = preservation only")
    parser.add_argument("--steps", type=int, default=d["steps"].default)
    parser.add_argument("--tu", type=int, default=d["t_u"].default, help="update during the first t_u steps")
    parser.add_argument("--k", type=int, default=d["k"].default, help="Adam steps per update")
    parser.add_argument("--lr", type=float, default=d["lr"].default, help="Adam learning rate gamma")
    parser.add_argument("--tau", type=float, default=d["tau"].default, help="mask threshold")
    parser.add_argument("--mask-seeds", type=int, default=d["mask_seeds"].default, help="n seeds of the mask")
    parser.add_argument("--encode-ratio", type=float, default=d["encode_ratio"].default, help="t_E / T")
    parser.add_argument("--mask-encode-ratio", type=float, default=d["mask_encode_ratio"].default,
                        help="encoding level of the mask pass / T (DiffEdit's 0.5)")
    parser.add_argument("--cfg", type=float, default=d["cfg"].default, help="classifier-free guidance scale")
    parser.add_argument("--control-scale", type=float, default=d["control_scale"].default)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"no file at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None


def inputs_from_args(args, image: Image.Image, open_image) -> ITOInputs:
    return ITOInputs(
        image=image, prompt=args.prompt, caption=args.caption,
        scribble=open_image(args.scribble) if args.scribble else None,
        scribble_source=open_image(args.scribble_source) if args.scribble_source else None,
        pose=_read_json(args.pose) if args.pose else None,
        pose_source=_read_json(args.pose_source) if args.pose_source else None,
        mask=open_image(args.mask) if args.mask else None, mask_mode=args.mask_mode,
        lam=args.lam, steps=args.steps, t_u=args.tu, k=args.k, lr=args.lr, encode_ratio=args.encode_ratio,
        tau=args.tau, mask_seeds=args.mask_seeds, mask_encode_ratio=args.mask_encode_ratio, cfg=args.cfg,
        control_scale=args.control_scale, seed=args.seed, resolution=args.resolution)
