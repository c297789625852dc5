"""Train IIR-Net's ControlNet (Zhang et al., IIR-Net, Sec. 3 and 4.1).

    python -m engine.train.iir_net --data FOLDER_OR_DATASET --out DIR [--steps N] [--batch 8]
        [--lr 1e-6] [--resolution 512] [--profile sd15|tiny] [--resume [latest|FOLDER]] [--overwrite]
        [--mixed-precision auto|no|fp16|bf16] [--grad-accum N] [--gradient-checkpointing] [--workers 2]
    accelerate launch --multi_gpu --num_processes 8 -m engine.train.iir_net ...   (the same flags)

- The ControlNet starts as a copy of the UNet's encoder (`ControlNetModel.from_unet`) with a
  4-channel conditioning input (Sec. 4.1: 3 channels for the image, 1 for the edge map).
- For each image, the RoI comes from Grounded-SAM on the caption's noun phrase (the whole image
  when the caption names no object or nothing is found), cached under DIR/rois/.
- Each sample draws its own noise level k in {0..K} (Sec. 3.2) and builds R(x0) (Eq. 4-7).
- The loss is Eq. 8: || eps - eps_theta(z_t, t, tau1(S), tau2(R(x0))) ||^2, the standard
  epsilon objective, with t uniform in {0..999}.
- AdamW updates the ControlNet only; the UNet, VAE and text encoder stay frozen (and are never
  written to). Mixed precision (autocast fp16 + gradient scaling) on a GPU. With --no-amp (or
  whenever the cached models are not fp32 and autocast is off) the loss runs through a private
  frozen fp32 copy of the UNet, and the ControlNet is built in fp32 from it: the shared cache
  (fp16 on a GPU) is never cast in place.
- DIR/iir_net.json records K (--max-noise) and the Canny thresholds; inference reads it and
  refuses a noise level above K or other thresholds (engine.core.iir_checkpoint.trained_settings).
- DIR is itself the checkpoint (config.json + diffusion_pytorch_model.safetensors): pass it to
  `python -m engine iir-net --checkpoint DIR`. A finished checkpoint is never replaced unless
  --overwrite is given.
- At scale (engine/train/accel.py): `accelerate launch --multi_gpu --num_processes N -m
  engine.train.iir_net ...` trains data-parallel (DDP through accelerator.prepare); --batch is per
  process, so a step sees batch x N x --grad-accum images; every sample's noise, k, t and dropout
  come from (seed, step, its position in the global batch), so N processes reproduce one process
  with N times the batch. --mixed-precision auto|no|fp16|bf16 (auto: bf16 on a GPU that has it,
  fp16 on older GPUs, no on the CPU; --no-amp = no), --gradient-checkpointing, --workers (images
  decoded in DataLoader processes). Every --save-every steps accelerate's state (model,
  optimizer, scaler, RNG) goes to DIR/checkpoints/checkpoint-NNNNNN (the newest
  --keep-checkpoints kept) and the weights to DIR; --resume (latest) or --resume FOLDER continues.
Bad data or output folders: one line on stderr and exit code 2.

Mechanisms and the tests that guard them (tests/test_iir_net_mechanisms.py unless named;
broken once each in tests/mutants/m_iir_net.py):
- Eq. 8 target: z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps and the loss compares eps_theta with that eps:
  test_training_feeds_eq8_with_the_added_noise_and_R_x0_with_a_random_k (at the entry point, main: the
  target's relation to z_t and z0, and the loss value written out) and
  test_eq8_loss_is_the_squared_error_of_the_predicted_noise (iir_loss alone).
- R(x0) with k drawn per sample from 0..K (--max-noise), Sec. 3.2 and Eq. 4-7: the same entry-point test.
- fp32 copies from an fp16 cache without autocast: test_training_from_an_fp16_cache_without_amp_builds_its_own_fp32_copies.
- The loss falls; resume is exact; the frozen models are never written: tests/test_iir_net.py.
- 2 processes = 1 process with twice the batch; kill and --resume latest: tests/test_accel_train.py.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.core import sampling as S
from engine.core.iir_checkpoint import META, WEIGHTS
from engine.core.phrases import noun_phrase
from engine.core.removal import CONDITION_CHANNELS, MAX_NOISE, condition, edge_tensor, mask_tensor, removal_image
from engine.train import accel
from engine.train.iir_data import DataError, open_data, square
from engine.train.shards import save_image

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
OWN_FILES = ("config.json", WEIGHTS, STATE_JSON, STATE_TENSORS, META)
CHECKPOINTS = "checkpoints"  # OUT/checkpoints/checkpoint-NNNNNN: accelerate's state, for --resume


def build_parser() -> argparse.ArgumentParser:
    from engine.__main__ import _model_override
    from engine.models import PROFILES

    p = argparse.ArgumentParser(prog="python -m engine.train.iir_net", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder of images + captions (.txt or metadata.jsonl) or a dataset name")
    p.add_argument("--out", required=True, help="output folder: the checkpoint and the training state")
    p.add_argument("--steps", type=int, default=1000, help="total optimisation steps")
    p.add_argument("--batch", type=int, default=8, help="images per step (the paper: 8)")
    p.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate (the paper's maximum: 1e-6)")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0 = off)")
    p.add_argument("--resolution", type=int, default=512, help="square training size in pixels")
    p.add_argument("--max-noise", type=int, default=MAX_NOISE, help=f"K: k is drawn from 0..K (at most {MAX_NOISE})")
    p.add_argument("--roi", choices=("grounded-sam", "whole"), default="grounded-sam",
                   help="RoIs from Grounded-SAM on the caption's noun, or always the whole image")
    p.add_argument("--canny-low", type=int, default=100)
    p.add_argument("--canny-high", type=int, default=200)
    p.add_argument("--caption-dropout", type=float, default=0.0, help="probability of an empty caption")
    p.add_argument("--split", default="train", help="dataset split (dataset names only)")
    p.add_argument("--eval-every", type=int, default=100, help="loss on a fixed batch every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    p.add_argument("--no-amp", action="store_true", help="the same as --mixed-precision no")
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes reading images (0: none)")
    accel.add_arguments(p, save_every=500)
    p.add_argument("--profile", choices=PROFILES, default="sd15")
    p.add_argument("--device", default=None)
    p.add_argument("--model", action="append", type=_model_override, default=[], metavar="NAME=SRC")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_args(a) -> None:
    def need(ok: bool, msg: str):
        if not ok:
            raise ValueError(msg)
    need(a.steps >= 1, f"--steps must be at least 1, got {a.steps}")
    need(a.batch >= 1, f"--batch must be at least 1, got {a.batch}")
    need(0 < a.lr < 1, f"--lr must be between 0 and 1, got {a.lr}")
    need(a.warmup >= 0 and a.weight_decay >= 0 and a.grad_clip >= 0, "--warmup, --weight-decay, --grad-clip must be >= 0")
    need(64 <= a.resolution <= 1024 and a.resolution % 8 == 0,
         f"--resolution must be a multiple of 8 between 64 and 1024, got {a.resolution}")
    need(0 <= a.max_noise <= MAX_NOISE, f"--max-noise must be between 0 and {MAX_NOISE}, got {a.max_noise}")
    need(0 <= a.canny_low <= a.canny_high <= 255, "Canny thresholds need 0 <= low <= high <= 255")
    need(0 <= a.caption_dropout <= 1, f"--caption-dropout must be between 0 and 1, got {a.caption_dropout}")
    need(a.save_every >= 1 and a.eval_every >= 1, "--save-every and --eval-every must be at least 1")
    need(0 <= a.workers <= 64, f"--workers must be between 0 and 64, got {a.workers}")
    accel.check_arguments(a.grad_accum, a.save_every)


def prepare_out(out: Path, resume, overwrite: bool, ours: bool = False) -> Optional[dict]:
    """The saved state to resume from, or None for a fresh run; refuses to clobber a checkpoint."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    state_file = out / STATE_JSON
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    has_model = (out / "config.json").exists() or (out / WEIGHTS).exists()
    if overwrite:
        for name in OWN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "rois", ignore_errors=True)
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        return None
    if state is not None and state.get("finished"):
        raise ValueError(f"{out} already holds a finished IIR-Net checkpoint ({state['step']} steps); pass "
                         "--overwrite to replace it, or choose another --out")
    if state is not None and not resume:
        raise ValueError(f"{out} holds an unfinished run (step {state['step']} of {state['total_steps']}): "
                         "pass --resume to continue it, or --overwrite to start over")
    if state is None and has_model and not ours:  # ours: a checkpoint of this trainer is there to resume
        raise ValueError(f"{out} already holds a model that this script did not start; pass --overwrite "
                         "to replace it, or choose another --out")
    if state is None and resume:
        print(f"nothing to resume in {out}: starting a new run", file=sys.stderr)
    return state


class RoIs:
    """Per-image RoI masks (Grounded-SAM on the caption's noun, or the whole image), cached as PNGs."""

    def __init__(self, models, mode: str, folder: Path):
        self.models, self.mode, self.folder = models, mode, folder
        self.counts = {"grounded-sam": 0, "whole image": 0}

    def __call__(self, i: int, image: Image.Image, caption: str) -> torch.Tensor:
        file = self.folder / f"{image.width}" / f"{i:08d}.png"
        if self.mode == "whole":
            mask = np.ones((image.height, image.width), np.float32)
        elif file.is_file():
            mask = np.asarray(Image.open(file), dtype=np.float32) / 255.0
        else:
            mask = self._segment(image, caption)
            save_image(Image.fromarray((mask * 255).astype(np.uint8)), file)  # atomic: processes share rois/
        return mask_tensor(mask)

    def _segment(self, image: Image.Image, caption: str) -> np.ndarray:
        from engine.core.segment import grounded_sam

        phrase = noun_phrase(caption)
        if phrase is not None:
            found = grounded_sam(self.models.get("grounding_dino"), self.models.get("sam"), image, phrase)
            if found.mask.any():
                self.counts["grounded-sam"] += 1
                return found.mask.astype(np.float32)
        self.counts["whole image"] += 1
        return np.ones((image.height, image.width), np.float32)


class SquareImages(torch.utils.data.Dataset):
    """The training images, read from disk and squared one at a time (in DataLoader workers)."""

    def __init__(self, data, resolution: int):
        self.data, self.resolution = data, resolution

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        return square(self.data.image(i), self.resolution), self.data.caption(i)


def make_batch(samples, seed: int, step: int, args, rois: RoIs, sd, alphas, device, dropout: bool = True):
    """Everything one step of Eq. 8 needs for `samples` [(global position j, image index i, (image,
    caption))]: z0, text embeddings, R(x0), t and the target noise. Every random draw of sample j
    comes from its own stream (seed, step, j), so any split of a step's samples over processes
    draws the same numbers."""
    gens = [accel.sample_generator(seed, step, j) for j, _, _ in samples]
    images = [img for _, _, (img, _) in samples]
    captions = [cap for _, _, (_, cap) in samples]
    drop = [bool(torch.rand(1, generator=g) < args.caption_dropout) for g in gens]
    if dropout and args.caption_dropout > 0:
        captions = ["" if d else c for c, d in zip(captions, drop)]
    x = torch.cat([S.pil_to_tensor(img) for img in images])
    m = torch.cat([rois(i, img, cap) for (_, i, (img, cap)) in samples])
    edges = torch.cat([edge_tensor(img, args.canny_low, args.canny_high) for img in images])
    k = torch.cat([torch.randint(0, args.max_noise + 1, (1,), generator=g) for g in gens])  # a k per sample (Sec. 3.2)
    r_noise = torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in gens])
    r = condition(removal_image(x, m, k, r_noise, alphas), edges)  # Eq. 4-7
    with torch.no_grad():
        dist = sd.vae.encode(x.to(device, sd.vae.dtype)).latent_dist
        shape = (1, *dist.mean.shape[1:])
        eps_vae = torch.cat([torch.randn(shape, generator=g) for g in gens]).to(device, dist.mean.dtype)
        z0 = ((dist.mean + dist.std * eps_vae) * sd.vae.config.scaling_factor).float()
        emb = S.encode_prompts(sd, captions).float()  # fp32 like every other input (fp16 text encoder on a GPU)
    t = torch.cat([torch.randint(0, len(alphas), (1,), generator=g) for g in gens])
    noise = torch.cat([torch.randn(shape, generator=g) for g in gens]).to(device)
    a = alphas[t].to(device).view(-1, 1, 1, 1)
    z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise  # q(z_t | z_0)
    return z_t, t.to(device), emb, r.to(device), noise


def training_unet(unet, use_amp: bool):
    """The frozen UNet the loss runs through. Under autocast the cached one (any dtype: autocast
    casts per op); without autocast an fp32 one, a private copy when the cache holds fp16
    weights (fp16 on CUDA), so the fp32 ControlNet and inputs meet fp32 weights."""
    if use_amp or unet.dtype == torch.float32:
        return unet
    private = copy.deepcopy(unet).float()
    private.requires_grad_(False)
    return private.eval()


def iir_loss(controlnet, unet, z_t, t, emb, r, noise) -> torch.Tensor:
    """Eq. 8: || eps - eps_theta(z_t, t, tau1(S), tau2(R(x0))) ||^2 (mean over elements)."""
    down, mid = controlnet(z_t, t, encoder_hidden_states=emb, controlnet_cond=r, return_dict=False)
    eps = unet(z_t, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
               mid_block_additional_residual=mid).sample
    return F.mse_loss(eps.float(), noise.float())


def save(accelerator, out: Path, controlnet, step: int, finished: bool, record: dict, args) -> None:
    """accelerate's state under OUT/checkpoints/checkpoint-NNNNNN (for --resume), then, from the
    main process, the weights users load (safetensors via save_pretrained), iir_net.json and
    trainer_state.json, the JSON last."""
    accel.save_checkpoint(accelerator, out / CHECKPOINTS, step, {"record": record, "finished": finished})
    if not accelerator.is_main_process:
        return
    accel.prune(out / CHECKPOINTS, args.keep_checkpoints)
    tmp = out / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(controlnet).save_pretrained(tmp, safe_serialization=True)
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    (out / STATE_TENSORS).unlink(missing_ok=True)  # the state of the single-process trainer before accelerate
    (out / META).write_text(json.dumps({
        "format": "iir-net-controlnet", "conditioning_channels": CONDITION_CHANNELS, "max_noise": args.max_noise,
        "canny_low": args.canny_low, "canny_high": args.canny_high, "resolution": args.resolution,
        "condition": "channels 0-2: removal image x'_k in [-1, 1] (unclamped); channel 3: Canny edges in {0, 1}",
    }, indent=2))
    state = dict(record, step=step, total_steps=args.steps, finished=finished, processes=accelerator.num_processes,
                 args={k: v for k, v in vars(args).items() if k != "model"}, saved=time.strftime("%Y-%m-%d %H:%M:%S"))
    (out / (STATE_JSON + ".tmp")).write_text(json.dumps(state, indent=1))
    os.replace(out / (STATE_JSON + ".tmp"), out / STATE_JSON)


def train(args, models=None) -> dict:
    """Run (or resume) training, on this process's share of every step; returns the record
    written to trainer_state.json (the losses are means over all processes)."""
    from diffusers import ControlNetModel

    from engine.models import ModelCache

    check_args(args)
    data = open_data(args.data, args.split)
    out = Path(args.out)
    cpu = models.device.type == "cpu" if models is not None else (args.device == "cpu" or None)
    accelerator, precision_why = accel.make_accelerator("no" if args.no_amp else args.mixed_precision, cpu=cpu)
    log = accel.MainLog(accelerator, args.quiet)
    # a run killed between its checkpoint and trainer_state.json resumes from the checkpoint
    resume_from = accel.find_resume(out / CHECKPOINTS, args.resume) if args.resume and not args.overwrite else None
    state = prepare_out(out, args.resume, args.overwrite if accelerator.is_main_process else False,
                        ours=resume_from is not None)
    accelerator.wait_for_everyone()
    if state is not None and resume_from is None:
        raise ValueError(f"{out} holds an unfinished run but no complete checkpoint in {out / CHECKPOINTS}; "
                         "pass --overwrite to start over")
    models = models or ModelCache(args.profile, device=str(accelerator.device), overrides=dict(args.model))
    sd = models.sd()
    device = models.device
    for frozen in (sd.unet, sd.vae, sd.text_encoder):
        assert not any(p.requires_grad for p in frozen.parameters()), "base models must be frozen"
    use_amp = accelerator.mixed_precision != "no"
    unet = training_unet(sd.unet, use_amp)
    with torch.random.fork_rng(devices=[]):  # the new condition encoder's init, seeded, global RNG kept
        torch.manual_seed(args.seed)  # initialised from the UNet, with a 4-channel condition (Sec. 4.1)
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=CONDITION_CHANNELS)
    controlnet = controlnet.to(device, torch.float32).train()  # fp32 master weights, whatever the cache holds
    controlnet.requires_grad_(True)
    if args.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    controlnet, opt = accelerator.prepare(controlnet, opt)  # DDP over the processes; scaler for fp16
    record = {"loss": [], "eval_loss": [], "data": data.description}
    start = 0
    if resume_from is not None:
        progress = accel.load_checkpoint(accelerator, resume_from)
        record = dict(progress["record"], data=data.description)
        start = int(progress["step"])
        if start >= args.steps:
            raise ValueError(f"the run in {out} is already at step {start}; pass --steps above {start} to continue it")
        log(f"resumed from {resume_from} (step {start})")
    log(f"mixed precision: {precision_why}; {accelerator.num_processes} process(es) x batch {args.batch} x "
        f"{args.grad_accum} accumulation = {args.batch * accelerator.num_processes * args.grad_accum} images a step")
    alphas = sd.scheduler().alphas_cumprod.float()
    rois = RoIs(models, args.roi, out / "rois")
    images = SquareImages(data, args.resolution)

    # A fixed batch (first images, fixed k, t and noise) whose loss is comparable across steps (main process).
    eval_ids = list(range(min(len(data), max(args.batch, 4))))
    eval_batch = make_batch([(j, i, images[i]) for j, i in enumerate(eval_ids)], args.seed + 1, -1, args, rois, sd,
                            alphas, device, dropout=False) if accelerator.is_main_process else None

    def evaluate(step: int) -> None:
        if eval_batch is None:
            return
        net = accelerator.unwrap_model(controlnet).eval()
        with torch.no_grad(), accelerator.autocast():
            record["eval_loss"].append([step, float(iir_loss(net, unet, *eval_batch))])
        net.train()

    if start == 0:
        evaluate(0)
    bar = log.bar(args.steps, start, "IIR-Net")
    loader = iter(accel.step_loader(images, args.seed, start, args.steps, args.batch, args.grad_accum, accelerator,
                                    args.workers))
    try:
        for step in range(start + 1, args.steps + 1):
            began = time.perf_counter()
            for group in opt.param_groups:  # linear warm-up to the maximum learning rate
                group["lr"] = args.lr * min(1.0, step / args.warmup) if args.warmup else args.lr
            total = torch.zeros((), device=device)
            for micro in range(args.grad_accum):
                at, samples = next(loader)
                assert at == step - 1, (at, step)
                batch = make_batch(samples, args.seed, step - 1, args, rois, sd, alphas, device)
                sync = micro == args.grad_accum - 1
                with (nullcontext() if sync else accelerator.no_sync(controlnet)):
                    with accelerator.autocast():
                        loss = iir_loss(controlnet, unet, *batch) / args.grad_accum
                    accelerator.backward(loss)
                total += loss.detach()
            if args.grad_clip:
                accelerator.clip_grad_norm_(controlnet.parameters(), args.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            value = float(accelerator.reduce(total, reduction="mean"))  # the global batch's loss
            record["loss"].append(value)
            record.setdefault("step_seconds", []).append(round(time.perf_counter() - began, 4))  # bench.scaling
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if step % args.eval_every == 0 or step == args.steps:
                evaluate(step)
            if step % args.save_every == 0 or step == args.steps:
                counts = accelerator.reduce(torch.tensor([rois.counts["grounded-sam"], rois.counts["whole image"]],
                                                         device=device), reduction="sum").tolist()
                record["rois"] = {"grounded-sam": int(counts[0]), "whole image": int(counts[1])}
                save(accelerator, out, controlnet, step, step == args.steps, record, args)
    finally:
        bar.close()
        del loader  # stops the loader's worker processes
    return record


def main(argv=None, models=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        record = train(args, models)
    except (DataError, ValueError) as exc:
        if int(os.environ.get("RANK", "0")) == 0:  # one line, from the main process
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    evals = record["eval_loss"]
    if evals:
        print(f"fixed-batch loss {evals[0][1]:.4f} -> {evals[-1][1]:.4f}", file=sys.stderr)
    print(f"wrote {args.out} (use it with: python -m engine iir-net --checkpoint {args.out} ...)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
