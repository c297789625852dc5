"""Distil pix2pix-zero into a fast image-conditional GAN (papers/pix2pix-zero.txt, Sec. 4.5 and
Appendix A, "Fast Distillation").

    python -m engine.train.p2pz_distill pairs --direction "cat -> dog" --images DIR --out PAIRS [...]
    python -m engine.train.p2pz_distill train --pairs PAIRS --out CKPT [--steps 10000] [--batch 64]
        [--lr 0.001] [--resolution 256] [--size small|base] [--l1-weight 1] [--lpips-weight 1]
        [--adv-weight 0.1] [--noise 0.05] [--no-augment] [--min-pairs 4] [--seed 0] [--profile sd15|tiny]
        [--save-every 1000] [--resume [latest|FOLDER]] [--overwrite] [--mixed-precision ...] [--workers 2]
    accelerate launch --multi_gpu --num_processes N -m engine.train.p2pz_distill train ...  (the same flags)

`pairs` (engine/train/p2pz_pairs.py) edits a folder of photos with pix2pix-zero and keeps the pairs
that pass Appendix A's filters (segmentation IoU >= 0.70, CLIP increase >= 0.10). `train` fits
the generator of engine/methods/p2pz_generator.py (Co-Mod-GAN-like, as the paper distils with
Co-Mod-GAN [67]) and its PatchGAN discriminator to the kept pairs:
- Appendix A, "Fast GAN Training": learning rate 0.001 and batch 64 (both defaults; --batch is
  the global batch, split over the processes); a reconstruction objective of L1 and VGG-based
  LPIPS (the project's LPIPS, `models.get("lpips")`, differentiable, frozen; the tiny profile's is
  a random VGG-like trunk): L_rec = w_l1 |G(x) - y|_1 + w_lpips LPIPS(G(x), y);
- plus the adversarial loss, written out: the non-saturating logistic GAN loss of StyleGAN2 /
  Co-Mod-GAN, L_G,adv = softplus(-D(x, G(x))) = -log sigmoid(D(x, G(x))) and
  L_D = softplus(D(x, G(x))) + softplus(-D(x, y)), D judging (input, output) pairs (PatchGAN:
  a logit per patch, averaged). Adam with betas (0, 0.99) (StyleGAN2's). The loss weights are not
  in the paper: ours are 1, 1 and 0.1;
- Appendix A's augmentation: brightness, contrast, hue, saturation, noise and random crops. The
  crop (same window) and the colour transform (same brightness, contrast, saturation and hue
  draws) are applied to the input and its target alike, so the pair stays aligned; the noise is
  added to the input only (the generator should not learn to produce noise; our choice, the
  paper does not say). Every draw and the latent z ~ N(0, I) of Co-Mod-GAN's M(z) come from
  accel.sample_generator(seed, step, j): N processes see what one process with N x the batch sees.
- Every --save-every steps accelerate's state goes to CKPT/checkpoints/checkpoint-NNNNNN (--resume)
  and the distilled checkpoint (p2pz_generator.save_checkpoint: generator.safetensors +
  distilled.json, with the pairs' direction and `training`: steps, pairs, final losses) to CKPT.
Bad input (folders, direction, thresholds, a pairs folder without pairs.json, fewer pairs than
--min-pairs, flags out of range) -> one line `error: ...` on stderr and exit code 2.

Guarding tests (tests/test_p2pz_distill_train.py; breakages in tests/mutants/m_p2pz_distill.py):
- the objective (L1 + LPIPS + non-saturating adversarial; logistic D loss, real/fake the right way):
  test_generator_objective_is_l1_lpips_and_nonsaturating_adv, test_discriminator_objective_is_logistic;
- augmentation aligned (same crop and colour on both) and not a no-op, noise on the input only:
  test_augmentation_keeps_the_pair_aligned, test_augmentation_varies;
- the losses fall: test_training_losses_fall; overfitting 4 pairs moves the output towards the
  teacher's edits: test_overfitting_four_pairs_approaches_the_teacher;
- resume and the checkpoint's meta: test_training_checkpoint_and_resume; 2 processes:
  test_two_process_training; bad input: test_train_cli_bad_input.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from engine.methods.p2pz_generator import (MAX_RESOLUTION, META, MIN_RESOLUTION, SIZES, WEIGHTS, DistilledGenerator,
                                           DistilledMeta, PatchDiscriminator, save_checkpoint)
from engine.train import accel
from engine.train.p2pz_pairs import PAIRS, PAIRS_FORMAT, add_pairs_arguments, run_pairs

CHECKPOINTS = "checkpoints"
JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05}  # torchvision-style ranges
LOSSES = ("l1", "lpips", "adv", "recon", "d")


# -- the pairs ------------------------------------------------------------------------------------
def read_pairs(folder, min_pairs: int = 1) -> tuple[dict, list[tuple[Path, Path]]]:
    """The pairs manifest of a `pairs` folder and its kept pairs as (input, edit) paths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no pairs folder at {folder}")
    file = folder / PAIRS
    if not file.is_file():
        raise ValueError(f"{folder} has no {PAIRS}: make the pairs with `python -m engine.train.p2pz_distill pairs`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PAIRS_FORMAT:
        raise ValueError(f"{file} is not a pix2pix-zero pairs manifest (format {PAIRS_FORMAT!r})")
    direction = manifest.get("direction") or {}
    if not all(isinstance(direction.get(k), str) and direction[k].strip() for k in ("source", "target")):
        raise ValueError(f'{file}: "direction" must be {{"source": ..., "target": ...}}')
    pairs = []
    for row in manifest.get("pairs") or []:
        a, b = folder / str(row.get("input", "")), folder / str(row.get("edit", ""))
        if not (a.is_file() and b.is_file()):
            raise ValueError(f"{file}: the files of pair {row.get('key')!r} are missing ({a.name}, {b.name})")
        pairs.append((a, b))
    if len(pairs) < min_pairs:
        raise ValueError(f"{folder} holds {len(pairs)} kept pair(s); training needs at least {min_pairs} "
                         f"(--min-pairs); make more pairs or loosen the filters")
    return manifest, pairs


class PairImages(torch.utils.data.Dataset):
    """(input, edit) tensors in [-1, 1], (3, H, W), read from disk (in DataLoader workers)."""

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        x, y = (Image.open(p).convert("RGB") for p in self.pairs[i])
        if y.size != x.size:
            y = y.resize(x.size, Image.LANCZOS)
        return tuple(torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1.0).permute(2, 0, 1) for im in (x, y))


# -- augmentation (Appendix A) -------------------------------------------------------------------
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def colour(img: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """Colour transform of an image (3, H, W) in [0, 1]: brightness (scale), contrast (towards the
    mean grey), saturation (towards the pixel's grey), hue (rotation of the YIQ chroma by hue turns)."""
    img = (img * brightness).clamp(0, 1)
    gray = (_YIQ[0].view(3, 1, 1) * img).sum(0, keepdim=True)
    img = ((img - gray.mean()) * contrast + gray.mean()).clamp(0, 1)
    gray = (_YIQ[0].view(3, 1, 1) * img).sum(0, keepdim=True)
    img = ((img - gray) * saturation + gray).clamp(0, 1)
    theta = 2 * math.pi * hue
    rot = torch.tensor([[1, 0, 0], [0, math.cos(theta), -math.sin(theta)], [0, math.sin(theta), math.cos(theta)]])
    matrix = torch.linalg.inv(_YIQ) @ rot @ _YIQ
    return torch.einsum("ij,jhw->ihw", matrix, img).clamp(0, 1)


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, resolution: int, noise: float = 0.05,
            enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Appendix A's augmentation of one pair (3, H, W) in [-1, 1] -> two (3, R, R) crops: the same
    random crop window and the same colour transform on both, noise (std up to `noise`) on the
    input only. Photos whose short side is under R are first scaled up (both alike)."""
    h, w = x.shape[-2:]
    if min(h, w) < resolution:
        size = (max(resolution, round(h * resolution / min(h, w))), max(resolution, round(w * resolution / min(h, w))))
        x, y = (F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
                for t in (x, y))
        h, w = size
    if not enabled:  # the centre crop, nothing random
        top, left = (h - resolution) // 2, (w - resolution) // 2
        return (x[:, top:top + resolution, left:left + resolution], y[:, top:top + resolution, left:left + resolution])
    top = int(torch.randint(0, h - resolution + 1, (1,), generator=g))  # random crop, one window for both
    left = int(torch.randint(0, w - resolution + 1, (1,), generator=g))
    x = x[:, top:top + resolution, left:left + resolution]
    y = y[:, top:top + resolution, left:left + resolution]
    draws = {k: _uniform(g, 1 - v, 1 + v) if k != "hue" else _uniform(g, -v, v) for k, v in JITTER.items()}
    x = colour((x + 1) / 2, **draws) * 2 - 1  # the same colour transform on input and target
    y = colour((y + 1) / 2, **draws) * 2 - 1
    sigma = _uniform(g, 0.0, noise)
    x = (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)  # noise on the input only
    return x, y


def make_batch(samples, seed: int, step: int, resolution: int, style_dim: int, noise: float, enabled: bool):
    """(x, y, z) for this process's samples [(global position j, index, (input, edit))]: every
    draw of sample j from accel.sample_generator(seed, step, j)."""
    xs, ys, zs = [], [], []
    for j, _, (x, y) in samples:
        g = accel.sample_generator(seed, step, j)
        x, y = augment(x, y, g, resolution, noise, enabled)
        xs.append(x)
        ys.append(y)
        zs.append(torch.randn(style_dim, generator=g))  # Co-Mod-GAN's stochastic code z ~ N(0, I)
    return torch.stack(xs), torch.stack(ys), torch.stack(zs)


# -- the objective ---------------------------------------------------------------------------------
def generator_losses(fake: torch.Tensor, target: torch.Tensor, d_fake: torch.Tensor, lpips_net,
                     l1_weight: float, lpips_weight: float, adv_weight: float) -> dict:
    """Appendix A's reconstruction objective (L1 + VGG-LPIPS) plus the non-saturating adversarial
    loss softplus(-D(x, G(x))) (StyleGAN2, Co-Mod-GAN). Returns every term and `total`."""
    l1 = (fake.float() - target.float()).abs().mean()
    lp = lpips_net(fake, target).mean()
    adv = F.softplus(-d_fake.float()).mean()
    recon = l1_weight * l1 + lpips_weight * lp
    return {"l1": l1, "lpips": lp, "adv": adv, "recon": recon, "total": recon + adv_weight * adv}


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The logistic loss: softplus(-D(x, y)) for the teacher's edits, softplus(D(x, G(x))) for ours."""
    return F.softplus(-d_real.float()).mean() + F.softplus(d_fake.float()).mean()


# -- training --------------------------------------------------------------------------------------
def check_train_args(a) -> None:
    def need(ok: bool, msg: str):
        if not ok:
            raise ValueError(msg)
    need(a.steps >= 1, f"--steps must be at least 1, got {a.steps}")
    need(a.batch >= 1, f"--batch must be at least 1, got {a.batch}")
    need(0 < a.lr < 1, f"--lr must be between 0 and 1, got {a.lr}")
    m = SIZES[a.size].multiple
    need(MIN_RESOLUTION <= a.resolution <= MAX_RESOLUTION and a.resolution % m == 0,
         f"--resolution must be a multiple of {m} between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {a.resolution}")
    need(min(a.l1_weight, a.lpips_weight, a.adv_weight) >= 0, "the loss weights must be >= 0")
    need(a.l1_weight + a.lpips_weight > 0, "--l1-weight and --lpips-weight cannot both be 0 (no reconstruction loss)")
    need(0 <= a.noise <= 1, f"--noise must be between 0 and 1, got {a.noise}")
    need(a.min_pairs >= 1, f"--min-pairs must be at least 1, got {a.min_pairs}")
    need(0 <= a.workers <= 64, f"--workers must be between 0 and 64, got {a.workers}")
    need(not a.gradient_checkpointing, "--gradient-checkpointing is not supported by the distilled GAN "
                                       "(its generator is small enough without it)")
    need(a.grad_accum == 1, "--grad-accum is not supported by the GAN trainer (D and G alternate every step); "
                            "use more processes or a smaller --batch")
    accel.check_arguments(a.grad_accum, a.save_every)


def check_out(out: Path, resume, overwrite: bool) -> None:
    """Refuse to clobber a checkpoint (every process checks, so every process raises alike)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if (out / META).exists() and not resume and not overwrite:
        raise ValueError(f"{out} already holds a distilled checkpoint; pass --resume to continue its run, "
                         "--overwrite to replace it, or choose another --out")


def clear_out(out: Path) -> None:
    """--overwrite (main process): the old checkpoint and its training states go."""
    for name in (META, WEIGHTS):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def _final_losses(record: dict, last: int = 20) -> dict:
    return {k: round(float(np.mean(v[-last:])), 6) for k, v in record["loss"].items() if v}


def train(a, models=None) -> dict:
    """Run (or resume) the distillation on this process's share of every step; returns the record
    (per-step losses, means over all processes)."""
    from engine.models import ModelCache

    check_train_args(a)
    manifest, pairs = read_pairs(a.pairs, a.min_pairs)
    out = Path(a.out)
    cpu = models.device.type == "cpu" if models is not None else (a.device == "cpu" or None)
    accelerator, precision_why = accel.make_accelerator(a.mixed_precision, cpu=cpu)
    log = accel.MainLog(accelerator, a.quiet)
    world = accelerator.num_processes
    if a.batch % world:
        raise ValueError(f"--batch {a.batch} (the global batch) does not split over {world} processes")
    resume_from = accel.find_resume(out / CHECKPOINTS, a.resume) if a.resume and not a.overwrite else None
    check_out(out, a.resume, a.overwrite)
    accelerator.wait_for_everyone()  # every process has looked before the main one clears anything
    if a.overwrite and accelerator.is_main_process:
        clear_out(out)
    accelerator.wait_for_everyone()
    models = models or ModelCache(a.profile, device=str(accelerator.device))
    lpips_net = models.get("lpips")  # frozen; gradients flow to its input
    config = SIZES[a.size]
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's RNG kept
        torch.manual_seed(a.seed)
        gen, disc = DistilledGenerator(config), PatchDiscriminator()
    gen, disc = gen.to(accelerator.device).train(), disc.to(accelerator.device).train()
    opt_g = torch.optim.Adam(gen.parameters(), lr=a.lr, betas=(0.0, 0.99))  # Appendix A: lr 0.001
    opt_d = torch.optim.Adam(disc.parameters(), lr=a.lr, betas=(0.0, 0.99))
    gen, disc, opt_g, opt_d = accelerator.prepare(gen, disc, opt_g, opt_d)
    record = {"loss": {k: [] for k in LOSSES}}
    start = 0
    if resume_from is not None:
        progress = accel.load_checkpoint(accelerator, resume_from)
        record, start = progress["record"], int(progress["step"])
        if start >= a.steps:
            raise ValueError(f"the run in {out} is already at step {start}; pass --steps above {start} to continue it")
        log(f"resumed from {resume_from} (step {start})")
    log(f"{len(pairs)} pairs ({manifest['direction']['source']} -> {manifest['direction']['target']}); mixed "
        f"precision: {precision_why}; {world} process(es) x batch {a.batch // world} = {a.batch} pairs a step")
    direction = manifest["direction"]
    dropped = len(manifest.get("dropped") or [])

    def save(step: int) -> None:
        accel.save_checkpoint(accelerator, out / CHECKPOINTS, step, {"record": record})
        if not accelerator.is_main_process:
            return
        accel.prune(out / CHECKPOINTS, a.keep_checkpoints)
        training = {"steps": step, "total_steps": a.steps, "finished": step == a.steps, "pairs": len(pairs),
                    "pairs_dropped": dropped, "pairs_folder": str(Path(a.pairs).resolve()), "batch": a.batch,
                    "lr": a.lr, "size": a.size, "processes": world, "augment": not a.no_augment,
                    "weights": {"l1": a.l1_weight, "lpips": a.lpips_weight, "adv": a.adv_weight},
                    "final_losses": _final_losses(record),
                    "fixed_batch_recon": (record.get("eval") or [[0, None]])[-1][1], "saved": time.strftime("%Y-%m-%d %H:%M:%S")}
        meta = DistilledMeta(direction["source"].strip(), direction["target"].strip(), a.resolution, config, training)
        save_checkpoint(accelerator.unwrap_model(gen), meta, out)

    data = PairImages(pairs)
    # a fixed batch (the first pairs, centre crops, z = 0, eval mode) whose reconstruction loss is
    # comparable across steps (main process)
    fixed = [data[i] for i in range(min(len(data), 4))] if accelerator.is_main_process else []
    fixed = [augment(x, y, None, a.resolution, enabled=False) for x, y in fixed]

    def evaluate(step: int) -> None:
        if not fixed:
            return
        net = accelerator.unwrap_model(gen).eval()
        x, y = (torch.stack(t).to(accelerator.device) for t in zip(*fixed))
        with torch.no_grad():
            out = generator_losses(net(x), y, torch.zeros(1, device=x.device), lpips_net, a.l1_weight,
                                   a.lpips_weight, 0.0)
        record.setdefault("eval", []).append([step, round(float(out["recon"]), 6), round(float(out["l1"]), 6)])
        net.train()

    if start == 0:
        evaluate(0)
    bar = log.bar(a.steps, start, "distil")
    loader = iter(accel.step_loader(data, a.seed, start, a.steps, a.batch // world, 1, accelerator, a.workers))
    d_plain = accelerator.unwrap_model(disc)
    try:
        for step in range(start + 1, a.steps + 1):
            at, samples = next(loader)
            assert at == step - 1, (at, step)
            x, y, z = (t.to(accelerator.device) for t in make_batch(
                samples, a.seed, step - 1, a.resolution, config.style_dim, a.noise, not a.no_augment))
            with accelerator.autocast():
                fake = gen(x, z)
                # D step: one forward over [fake pairs; real pairs] (one DDP forward, one backward)
                logits = disc(torch.cat([x, x]), torch.cat([fake.detach(), y]))
                d_fake, d_real = logits.chunk(2)
                d_loss = discriminator_loss(d_real, d_fake)
            accelerator.backward(d_loss)
            opt_d.step()
            opt_d.zero_grad(set_to_none=True)
            # G step: through the updated, frozen D (unwrapped: no DDP reduction for a D that is not trained here)
            d_plain.requires_grad_(False)
            with accelerator.autocast():
                losses = generator_losses(fake, y, d_plain(x, fake), lpips_net, a.l1_weight, a.lpips_weight,
                                          a.adv_weight)
            accelerator.backward(losses["total"])
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            d_plain.requires_grad_(True)
            values = torch.stack([losses[k].detach().float() for k in LOSSES[:4]] + [d_loss.detach().float()])
            values = accelerator.reduce(values, reduction="mean").tolist()  # the global batch's losses
            for k, v in zip(LOSSES, values):
                record["loss"][k].append(round(float(v), 6))
            bar.update(1)
            bar.set_postfix(recon=f"{values[3]:.4f}", adv=f"{values[2]:.3f}", d=f"{values[4]:.3f}")
            if step % a.save_every == 0 or step == a.steps:
                evaluate(step)
                save(step)
    finally:
        bar.close()
        del loader
    return record


# -- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from engine.models import PROFILES

    p = argparse.ArgumentParser(prog="python -m engine.train.p2pz_distill", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    add_pairs_arguments(sub.add_parser("pairs", help="edit photos with pix2pix-zero and keep the filtered pairs"))
    t = sub.add_parser("train", help="train the distilled GAN on a pairs folder")
    t.add_argument("--pairs", required=True, help="a folder written by the pairs command")
    t.add_argument("--out", required=True,
                   help="checkpoint folder (distilled.json, generator.safetensors, checkpoints/)")
    t.add_argument("--steps", type=int, default=10000, help="optimisation steps")
    t.add_argument("--batch", type=int, default=64, help="global batch, split over the processes (Appendix A: 64)")
    t.add_argument("--lr", type=float, default=0.001, help="Adam learning rate of G and D (Appendix A: 0.001)")
    t.add_argument("--resolution", type=int, default=256, help="side of the square training crops")
    t.add_argument("--size", choices=tuple(SIZES), default="small", help="generator size")
    t.add_argument("--l1-weight", type=float, default=1.0)
    t.add_argument("--lpips-weight", type=float, default=1.0)
    t.add_argument("--adv-weight", type=float, default=0.1, help="weight of the non-saturating GAN loss (0: off)")
    t.add_argument("--noise", type=float, default=0.05, help="largest std of the noise added to inputs ([-1, 1] scale)")
    t.add_argument("--no-augment", action="store_true", help="centre crops, no colour transform, no noise")
    t.add_argument("--min-pairs", type=int, default=4, help="refuse to train on fewer kept pairs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.add_argument("--workers", type=int, default=2, help="DataLoader processes reading images (0: none)")
    accel.add_arguments(t, save_every=1000)
    t.add_argument("--profile", choices=PROFILES, default="sd15")
    t.add_argument("--device", default=None)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None, models=None) -> int:
    args = build_parser().parse_args(argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        if args.command == "pairs":
            return run_pairs(args, models)
        record = train(args, models)
    except ValueError as exc:
        if main_rank:  # one line, from the main process
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if main_rank:
        evals = record.get("eval") or [[0, float("nan")]]
        print(f"fixed-batch reconstruction loss {evals[0][1]:.4f} -> {evals[-1][1]:.4f}; wrote {args.out}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
