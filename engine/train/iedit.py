"""Fine-tune Stable Diffusion's UNet for iEdit (Bodur et al., 2023, Sec. 3.3-3.4 and 4.1).

    python -m engine.train.iedit --pairs PAIRS.jsonl --out DIR [--steps 10000] [--lr 2e-4]
        [--resolution 384] [--lambda-perc 0.1] [--save-every 1000] [--seed 0]
        [--profile sd15|tiny] [--resume [latest|FOLDER]] [--overwrite] [--batch 1] [--grad-accum 1]
        [--mixed-precision auto|no|fp16|bf16] [--gradient-checkpointing] [--workers 2]
    accelerate launch --multi_gpu --num_processes 8 -m engine.train.iedit ...   (the same flags)

Per step, one pair (x_1 source, x_2 pseudo-target, y_2 edit prompt, masks M_1, M_2):
    z_t   = sqrt(a_t) z_1 + sqrt(1 - a_t) eps_1                                  (Eq. 2)
    eps_2 = (z_t - sqrt(a_t) z_2) / sqrt(1 - a_t)                                (Eq. 3)
    L_mask = |(eps_2 - eps_theta) * M_2|^2 + |(eps_1 - eps_theta) * (1 - M_1)|^2  (Eq. 8-9)
    x^_1  = D((z_t - sqrt(1 - a_t) eps_theta) / sqrt(a_t))                      (Eq. 6-7)
    L_global = D_CLIP(x^_1, y_2), L_loc = D_CLIP(x^_1 * M_1, y_2^diff)          (Eq. 5, 11)
    L_perc = |V(x^_1 * M_1) - V(x_2 * M_2)|^2                                    (Eq. 10)
    L = (1 - t/T)(L_loc + L_global) + (t/T) L_mask + lambda_perc L_perc          (Eq. 12)
The UNet's input blocks (conv_in + down blocks) and middle block are updated alternately
(Sec. 4.1), on a private copy of the UNet: the cached model is never touched. Batch size 1
by default (--batch).
The paper does not give lambda_perc; 0.1 is this implementation's choice.

DIR/checkpoint-NNNNNN/ holds unet/ (diffusers layout, safetensors: `python -m engine iedit
--checkpoint DIR` loads the latest), trainer_state.json (losses, evaluations) and accelerate's
state (model.safetensors, optimizer, RNG, progress.json), so --resume [latest|FOLDER] continues
exactly. An existing checkpoint is never replaced without --overwrite. Bad input (missing
images...) -> one line on stderr, exit 2.

Pairs stream from disk (`iedit_data.PairDataset` read by a DataLoader, --workers processes):
only the records (paths, texts) are held; each step reads and encodes its own pairs, whose
indices come from (seed, step) (engine/train/accel.py: epoch-wise permutations), so memory does
not grow with the number of pairs and --resume is exact.

At scale: `accelerate launch --multi_gpu --num_processes N -m engine.train.iedit ...` trains
data-parallel (DDP via accelerator.prepare). --batch pairs per process and --grad-accum micro
steps: a step averages Eq. 12 over batch x N x accumulation pairs, each pair's t and eps_1 drawn
from (seed, step, its position), so N processes reproduce one with N times the batch. The
resting block group (Sec. 4.1) gets its gradient dropped before AdamW's step (AdamW skips
parameters without a gradient), which DDP needs (every trained parameter takes part each step).
--mixed-precision auto|no|fp16|bf16 (auto: bf16 on a GPU that has it, fp16 on older GPUs, no on
the CPU), --gradient-checkpointing (the UNet copy), logging from the main process only.

Mechanisms and the tests that guard them (tests/test_iedit_train.py unless named; breakages
in tests/mutants/m_iedit.py):
- Eq. 2-3 (z_t from z_1 and eps_1; eps_2 from z_2), Eq. 4 (eps_theta conditioned on y_2),
  Eq. 8-9 (eps_2 inside M_2, eps_1 outside M_1), Eq. 6-7 (x^_1), Eq. 5 and 11 (L_global,
  L_loc on x^_1 * M_1 against y_2^diff), Eq. 10 (L_perc of the masked images) and Eq. 12
  (weights 1 - t/T and t/T): test_every_training_step_optimises_eq_2_to_12_on_its_own_pair
  (every step's pair tensors and loss values against the paper written out in the test).
- Eq. 12 reaches the update: test_perceptual_weight_steers_the_update;
  test_iedit::test_training_lowers_loss_and_checkpoint_loads.
- Sec. 4.1 alternate input / middle blocks: test_input_and_middle_blocks_are_updated_alternately.
- Streaming: test_pairs_stream_from_disk_memory_does_not_grow_with_the_pairs,
  test_loader_workers_give_the_same_steps_and_pairs_are_drawn_from_the_whole_set.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from engine.core import clip as CL
from engine.core import masks as MK
from engine.core import sampling as S
from engine.train import accel
from engine.train.iedit_data import PairDataset
from engine.train.perceptual import perceptual_loss

EVAL_TIMESTEPS = (100, 500, 900)
EVAL_PAIRS = 4


@dataclass
class TrainConfig:
    pairs: str
    out: str
    steps: int = 10000
    lr: float = 2e-4
    resolution: int = 384
    lambda_perc: float = 0.1
    save_every: int = 1000
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    mask_threshold: float = 0.5
    workers: int = 0  # DataLoader processes reading pairs from disk (0: the training process)
    batch: int = 1  # pairs per process per step (the paper: 1 on one GPU)
    grad_accum: int = 1
    mixed_precision: str = "auto"  # accel.resolve_precision: bf16 on a GPU that has it, no on the CPU
    gradient_checkpointing: bool = False
    keep_checkpoints: int = 0  # 0: keep every checkpoint (each holds the UNet users load)


@dataclass
class TrainResult:
    step: int
    checkpoint: Optional[Path]
    eval_loss_start: float
    eval_loss_end: float
    curves: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    """One pair, encoded once: latents, masks at both resolutions, prompt embeddings."""

    z1: torch.Tensor
    z2: torch.Tensor
    x2: torch.Tensor
    m1: torch.Tensor      # pixel masks (1, 1, R, R)
    m2: torch.Tensor
    m1_lat: torch.Tensor  # latent masks (1, 1, r, r), area-averaged
    m2_lat: torch.Tensor
    y2: torch.Tensor      # text encoder embedding of the edit prompt (1, 77, d)
    clip_y2: torch.Tensor       # CLIP text embedding of y_2 (1, D)
    clip_y2_diff: torch.Tensor  # CLIP text embedding of y_2^diff


# -- setup ------------------------------------------------------------------------------------------
def validate(cfg: TrainConfig) -> None:
    from engine.methods.common import check_number

    check_number("steps", cfg.steps, 1, 10_000_000, integer=True)
    check_number("learning rate", cfg.lr, 1e-8, 1.0)
    check_number("lambda_perc", cfg.lambda_perc, 0.0, 1000.0)
    check_number("save every", cfg.save_every, 1, 10_000_000, integer=True)
    check_number("mask threshold", cfg.mask_threshold, 0.0, 1.0)
    check_number("workers", cfg.workers, 0, 64, integer=True)
    check_number("batch", cfg.batch, 1, 4096, integer=True)
    accel.check_arguments(cfg.grad_accum, cfg.save_every)
    res = check_number("resolution", cfg.resolution, 64, 1024, integer=True)
    if res % 8:
        raise ValueError(f"resolution must be a multiple of 8, got {res}")


def _mask_for(models, image, phrase: str, threshold: float) -> torch.Tensor:
    from engine.core.segment import clipseg_mask

    m = MK.binarize(clipseg_mask(models.get("clipseg"), image, phrase), threshold)
    return torch.from_numpy(m)[None, None]


def prepare_item(item: dict, models, cfg: TrainConfig) -> tuple[Prepared, int]:
    """One pair from the PairDataset, encoded on the device for one step: VAE latents z_1, z_2
    (Eq. 2-3), masks M_1, M_2 (made with CLIPSeg when the pairs file has none), the edit
    prompt's embeddings. Returns it with the number of masks CLIPSeg had to make."""
    sd, clip = models.sd(), models.get("clip")
    device = models.device
    with torch.no_grad():
        x1, x2 = item["x1"][None], item["x2"][None]
        m1, m2, made = item["m1"], item["m2"], 0
        if m1 is None:
            m1, made = _mask_for(models, S.tensor_to_pil(x1)[0], item["y1_diff"], cfg.mask_threshold)[0], made + 1
        if m2 is None:
            m2, made = _mask_for(models, S.tensor_to_pil(x2)[0], item["y2_diff"], cfg.mask_threshold)[0], made + 1
        m1, m2 = m1[None].float(), m2[None].float()
        z1 = _encode(sd, x1)
        z2 = _encode(sd, x2)
        h, w = z1.shape[-2:]
        prepared = Prepared(
            z1=z1, z2=z2, x2=x2.to(device), m1=m1.to(device), m2=m2.to(device),
            m1_lat=MK.to_latent(m1, h, w).to(device), m2_lat=MK.to_latent(m2, h, w).to(device),
            y2=S.encode_prompts(sd, [item["edit_prompt"]]).float(),
            clip_y2=CL.text_embeddings(clip, [item["edit_prompt"]]).to(device),
            clip_y2_diff=CL.text_embeddings(clip, [item["y2_diff"]]).to(device))
    return prepared, made


def _encode(sd, x: torch.Tensor) -> torch.Tensor:
    """E(x): the VAE posterior mean, scaled (as S.encode_image, from a tensor in [-1, 1])."""
    x = x.to(sd.vae.device, sd.vae.dtype)
    return (sd.vae.encode(x).latent_dist.mean * sd.vae.config.scaling_factor).float()


def block_groups(unet) -> dict[str, list[torch.nn.Parameter]]:
    """The two groups iEdit updates alternately: input blocks (conv_in + down blocks) and the middle block."""
    return {"input": list(unet.conv_in.parameters()) + list(unet.down_blocks.parameters()),
            "middle": list(unet.mid_block.parameters())}


def _masked(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x ⊙ M for images in [-1, 1]: multiply in [0, 1] (black outside the mask)."""
    return (x + 1.0) * m - 1.0


# -- the loss (Eq. 2-12) ------------------------------------------------------------------------------
def iedit_loss(unet, p: Prepared, t: int, eps1: torch.Tensor, models, alphas: torch.Tensor,
               lambda_perc: float, counter: Optional[S.UNetCounter] = None) -> dict[str, torch.Tensor]:
    sd, clip, vgg = models.sd(), models.get("clip"), models.get("vgg")
    T = alphas.shape[0]
    a_t = alphas[t].to(p.z1.device, torch.float32)
    z_t = a_t.sqrt() * p.z1 + (1 - a_t).sqrt() * eps1                       # Eq. 2
    eps2 = (z_t - a_t.sqrt() * p.z2) / (1 - a_t).sqrt()                      # Eq. 3
    dtype = getattr(unet, "dtype", torch.float32)  # (a DDP-wrapped UNet has no dtype: fp32 master weights)
    eps = unet(z_t.to(dtype), t, encoder_hidden_states=p.y2.to(dtype)).sample.float()
    if counter is not None:
        counter.forward += 1
    fg = ((eps2 * p.m2_lat - eps * p.m2_lat) ** 2).mean()                   # Eq. 9, foreground
    bg = ((eps1 * (1 - p.m1_lat) - eps * (1 - p.m1_lat)) ** 2).mean()       # Eq. 9, background
    l_mask = fg + bg                                                          # Eq. 8
    z1_hat = (z_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()                     # Eq. 7
    x1_hat = sd.vae.decode(z1_hat.to(sd.vae.dtype) / sd.vae.config.scaling_factor).sample.float()  # Eq. 6
    x1_hat = x1_hat.clamp(-1, 1)
    l_global = CL.clip_distance(CL.embed_pixels(clip, x1_hat), p.clip_y2).mean()                    # Eq. 5
    l_loc = CL.clip_distance(CL.embed_pixels(clip, _masked(x1_hat, p.m1)), p.clip_y2_diff).mean()   # Eq. 11
    l_perc = perceptual_loss(vgg, _masked(x1_hat, p.m1), _masked(p.x2, p.m2))                       # Eq. 10
    w = t / T
    total = (1 - w) * (l_loc + l_global) + w * l_mask + lambda_perc * l_perc                        # Eq. 12
    return {"loss": total, "mask": l_mask, "fg": fg, "bg": bg, "global": l_global, "loc": l_loc, "perc": l_perc}


@torch.no_grad()
def evaluate(unet, prepared: list[Prepared], models, alphas, lambda_perc: float) -> float:
    """Eq. 12 on the first pairs at fixed timesteps and fixed noise: comparable across steps."""
    gen = S.make_generator(12345, models.device)
    total, count = 0.0, 0
    for p in prepared[:EVAL_PAIRS]:
        for t in EVAL_TIMESTEPS:
            t = min(t, alphas.shape[0] - 1)
            eps1 = S.randn(tuple(p.z1.shape), gen, p.z1.device, torch.float32)
            total += float(iedit_loss(unet, p, t, eps1, models, alphas, lambda_perc)["loss"])
            count += 1
    return total / count


# -- checkpoints ----------------------------------------------------------------------------------------
def save_checkpoint(accelerator, out: Path, step: int, unet, state: dict) -> Path:
    """DIR/checkpoint-NNNNNN: accelerate's state (model, optimizer, RNG) for --resume, plus unet/
    (diffusers layout, safetensors) for inference and trainer_state.json; renamed into place last."""
    def users_files(folder: Path) -> None:
        accelerator.unwrap_model(unet).save_pretrained(folder / "unet", safe_serialization=True)
        (folder / "trainer_state.json").write_text(json.dumps(dict(state, step=step), indent=1))

    return accel.save_checkpoint(accelerator, out, step, {"state": state}, extra=users_files)


def _start(out: Path, cfg: TrainConfig, notes: list[str], main: bool) -> Optional[Path]:
    """The checkpoint to resume from (or None), after the overwrite rules."""
    resume = "latest" if cfg.resume is True else (cfg.resume or None)
    if resume:
        found = accel.find_resume(out, resume)
        if found is None:
            notes.append(f"--resume: no checkpoint in {out} yet, starting from the base UNet")
        return found
    stale = [p for p in out.iterdir() if p.is_dir() and accel.CHECKPOINT.match(p.name)] if out.is_dir() else []
    if stale and not cfg.overwrite:
        raise ValueError(f"{out} already holds {sorted(stale)[-1].name}; pass --resume to continue that run "
                         "or --overwrite to start again and replace its checkpoints")
    if main:
        for folder in stale:  # --overwrite: a fresh run replaces the old checkpoints
            shutil.rmtree(folder)
    return None


# -- training --------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, models, on_step: Optional[Callable[[int, int, dict], None]] = None,
          progress: bool = True) -> TrainResult:
    """Train on this process's share of every step (accelerate: one process or many, see
    engine/train/accel.py); step s uses the pairs global_indices(seed, s) and each pair's t and
    eps_1 come from (seed, s, its position), so N processes with batch b reproduce one process
    with batch N x b. The result's losses are means over all processes."""
    validate(cfg)
    dataset = PairDataset(cfg.pairs, cfg.resolution)  # records only: pairs stream from disk per step
    out = Path(cfg.out)
    device = models.device
    accelerator, precision_why = accel.make_accelerator(cfg.mixed_precision, cpu=device.type == "cpu")
    main = accelerator.is_main_process
    notes: list[str] = [f"mixed precision: {precision_why}"]
    resume_from = _start(out, cfg, notes, main)
    accelerator.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)

    sd = models.sd()
    # The few evaluation pairs are encoded once (main process); the training pairs step by step.
    made = 0
    prepared = []
    for i in range(min(EVAL_PAIRS, len(dataset))) if main else ():
        p, k = prepare_item(dataset[i], models, cfg)
        prepared.append(p)
        made += k
    alphas = sd.scheduler().alphas_cumprod.float()

    # A private float32 copy of the UNet: the cached one is never changed.
    unet = copy.deepcopy(sd.unet)
    unet._forward_pre_hooks.clear()  # not the cache's CPU-offload hooks
    if unet.dtype != torch.float32 or unet.device != device:
        unet = unet.to(device=device, dtype=torch.float32)
    unet.train()
    unet.requires_grad_(False)
    groups = block_groups(unet)
    for params in groups.values():  # trainable for DDP; the resting group's gradients are dropped each step
        for prm in params:
            prm.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(groups["input"] + groups["middle"], lr=cfg.lr, weight_decay=0.0)
    wrapped, optimizer = accelerator.prepare(unet, optimizer)
    state = {"config": asdict(cfg), "losses": [], "eval": []}
    start = 0
    if resume_from is not None:
        state = accel.load_checkpoint(accelerator, resume_from)["state"]
        start = int(accel.read_progress(resume_from)["step"])
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
        notes.append(f"resumed from {resume_from.name}")
        if start >= cfg.steps:
            notes.append(f"already trained for {start} steps (--steps {cfg.steps}); nothing to do")
            ev = state["eval"][-1]["loss"] if state.get("eval") else float("nan")
            return TrainResult(start, resume_from, ev, ev, _curves(state["losses"]), notes)
    state["config"] = asdict(cfg)

    def evaluate_now() -> float:
        if not main:
            return float("nan")
        with accelerator.autocast():
            return evaluate(accelerator.unwrap_model(wrapped), prepared, models, alphas, cfg.lambda_perc)

    if start == 0 or not state.get("eval"):
        eval_start = evaluate_now()
        state["eval"].append({"step": start, "loss": eval_start})
    else:  # resumed: the evaluation stored with the checkpoint
        eval_start = float(state["eval"][-1]["loss"])
    last_saved = resume_from
    T = alphas.shape[0]
    bar = accel.MainLog(accelerator, quiet=not progress).bar(cfg.steps, start, "iEdit fine-tuning")
    eval_end = eval_start
    loader = iter(accel.step_loader(dataset, cfg.seed, start, cfg.steps, cfg.batch, cfg.grad_accum, accelerator,
                                    cfg.workers))
    micro_count = cfg.batch * cfg.grad_accum  # pairs of this process in a step; the loss is their mean
    try:
        for step in range(start, cfg.steps):
            # Input and middle blocks in turn (Sec. 4.1).
            active = "input" if step % 2 == 0 else "middle"
            began = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            seen_t, seen_pairs = [], []
            for micro in range(cfg.grad_accum):
                at, samples = next(loader)  # this process's pairs of the step, read from disk
                assert at == step, (at, step)
                for n, (j, index, item) in enumerate(samples):
                    p, k = prepare_item(item, models, cfg)
                    made += k
                    g = accel.sample_generator(cfg.seed, step, j)
                    t = int(torch.randint(T, (1,), generator=g))
                    eps1 = torch.randn(tuple(p.z1.shape), generator=g).to(device)
                    last = micro == cfg.grad_accum - 1 and n == len(samples) - 1
                    with (nullcontext() if last else accelerator.no_sync(wrapped)):
                        with accelerator.autocast():
                            losses = iedit_loss(wrapped, p, t, eps1, models, alphas, cfg.lambda_perc)
                        accelerator.backward(losses["loss"] / micro_count)
                    for key, v in losses.items():
                        sums[key] = sums.get(key, 0) + v.detach().float() / micro_count
                    seen_t.append(t)
                    seen_pairs.append(int(index))
            for name, params in groups.items():  # only the active group moves (AdamW skips grad None)
                for prm in params:
                    if name != active:
                        prm.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            keys = sorted(sums)
            means = accelerator.reduce(torch.stack([sums[k] for k in keys]), reduction="mean")
            values = {k: round(float(v), 6) for k, v in zip(keys, means)}
            row = dict(values, step=step + 1, t=seen_t[0], blocks=active, pair=seen_pairs[0],
                       seconds=round(time.perf_counter() - began, 4))  # bench.scaling reads it
            if len(seen_t) > 1 or accelerator.num_processes > 1:
                row.update(t_local=seen_t, pairs_local=seen_pairs)
            state["losses"].append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}", blocks=active)
            if on_step:
                on_step(step + 1, cfg.steps, values)
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                eval_end = evaluate_now()
                state["eval"].append({"step": step + 1, "loss": eval_end})
                last_saved = save_checkpoint(accelerator, out, step + 1, wrapped, state)
                if main and cfg.keep_checkpoints:
                    accel.prune(out, cfg.keep_checkpoints)
    finally:
        bar.close()
        del loader  # stops the loader's worker processes
    unet.requires_grad_(False)
    if made:
        notes.append(f"masks missing from the pairs file were made with CLIPSeg ({made} times)")
    return TrainResult(cfg.steps, last_saved, eval_start, eval_end, _curves(state["losses"]), notes)


def _curves(losses: list[dict]) -> dict[str, list[float]]:
    keys = ("loss", "mask", "global", "loc", "perc")
    return {k: [row[k] for row in losses if k in row] for k in keys}


# -- command line --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from engine.models import PROFILES

    p = argparse.ArgumentParser(prog="python -m engine.train.iedit",
                                description="Fine-tune the UNet for iEdit on (source, target, edit prompt, masks) pairs.")
    p.add_argument("--pairs", required=True, help="pairs file from python -m engine.train.iedit_pairs")
    p.add_argument("--out", required=True, help="folder for checkpoint-NNNNNN/ subfolders")
    p.add_argument("--steps", type=int, default=10000, help="total optimisation steps (paper: ~10,000)")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate (paper: 2e-4)")
    p.add_argument("--resolution", type=int, default=384, help="training square in pixels (paper: 384)")
    p.add_argument("--lambda-perc", type=float, default=0.1, help="weight of the perceptual loss (not given in the paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-threshold", type=float, default=0.5, help="CLIPSeg threshold for masks missing from the pairs")
    p.add_argument("--workers", type=int, default=2, help="processes loading pairs from disk (0: none)")
    accel.add_arguments(p, save_every=1000)
    p.add_argument("--batch", type=int, default=1, help="pairs per process per step (the paper: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing checkpoints in --out")
    p.add_argument("--profile", choices=PROFILES, default="sd15")
    p.add_argument("--device", default=None)
    p.add_argument("--model", action="append", default=[], metavar="NAME=SRC", help="override a model's source")
    return p


def main(argv=None) -> int:
    from engine.models import ModelCache

    args = build_parser().parse_args(argv)
    cfg = TrainConfig(pairs=args.pairs, out=args.out, steps=args.steps, lr=args.lr, resolution=args.resolution,
                      lambda_perc=args.lambda_perc, save_every=args.save_every, seed=args.seed,
                      resume=args.resume, overwrite=args.overwrite, mask_threshold=args.mask_threshold,
                      workers=args.workers, batch=args.batch, grad_accum=args.grad_accum,
                      mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                      keep_checkpoints=args.keep_checkpoints)
    rank = int(os.environ.get("RANK", "0"))
    try:
        overrides = dict(_override(text) for text in args.model)
        device = args.device
        if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = str(accel.process_state().device)  # this process's GPU under accelerate launch
        models = ModelCache(args.profile, device=device, overrides=overrides)
        result = train(cfg, models)
    except ValueError as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"eval loss {result.eval_loss_start:.4f} -> {result.eval_loss_end:.4f}; "
          f"checkpoint {result.checkpoint} (use: python -m engine iedit --checkpoint {cfg.out} ...)", file=sys.stderr)
    return 0


def _override(text: str) -> tuple[str, str]:
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise ValueError(f"--model expects NAME=ID_OR_FOLDER, got {text!r}")
    return name, source


if __name__ == "__main__":
    sys.exit(main())
