"""Fine-tune Stable Diffusion's UNet for iEdit (Bodur et al., 2023, Sec. 3.3-3.4 and 4.1).

    python -m engine.train.iedit --pairs PAIRS.jsonl --out DIR [--steps 10000] [--lr 2e-4]
        [--resolution 384] [--lambda-perc 0.1] [--save-every 1000] [--seed 0]
        [--profile sd15|tiny] [--resume] [--overwrite]

Per step, one pair (x_1 source, x_2 pseudo-target, y_2 edit prompt, masks M_1, M_2):
    z_t   = sqrt(a_t) z_1 + sqrt(1 - a_t) eps_1                                  (Eq. 2)
    eps_2 = (z_t - sqrt(a_t) z_2) / sqrt(1 - a_t)                                (Eq. 3)
    L_mask = |(eps_2 - eps_theta) * M_2|^2 + |(eps_1 - eps_theta) * (1 - M_1)|^2  (Eq. 8-9)
    x^_1  = D((z_t - sqrt(1 - a_t) eps_theta) / sqrt(a_t))                      (Eq. 6-7)
    L_global = D_CLIP(x^_1, y_2), L_loc = D_CLIP(x^_1 * M_1, y_2^diff)          (Eq. 5, 11)
    L_perc = |V(x^_1 * M_1) - V(x_2 * M_2)|^2                                    (Eq. 10)
    L = (1 - t/T)(L_loc + L_global) + (t/T) L_mask + lambda_perc L_perc          (Eq. 12)
The UNet's input blocks (conv_in + down blocks) and middle block are updated alternately
(Sec. 4.1), on a private copy of the UNet: the cached model is never touched. Batch size 1.
The paper does not give lambda_perc; 0.1 is this implementation's choice.

DIR/checkpoint-NNNNNN/ holds unet/ (diffusers layout, safetensors: `python -m engine iedit
--checkpoint DIR` loads the latest), optimizer.safetensors and trainer_state.json (step,
random state, losses), so --resume continues exactly. An existing checkpoint is never
replaced without --overwrite. Bad input (missing images...) -> one line on stderr, exit 2.

Pairs stream from disk (`iedit_data.PairDataset` + DataLoader, --workers processes): only the
records (paths, texts) are held; each step reads and encodes its own pair, whose index comes
from (seed, step), so memory does not grow with the number of pairs and --resume is exact.

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
  test_loader_workers_and_shards_give_the_same_pairs.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from engine.core import clip as CL
from engine.core import masks as MK
from engine.core import sampling as S
from engine.train.iedit_data import PairDataset, pair_loader
from engine.train.perceptual import perceptual_loss

STEP_DIR = re.compile(r"^checkpoint-(\d+)$")
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
    eps = unet(z_t.to(unet.dtype), t, encoder_hidden_states=p.y2.to(unet.dtype)).sample.float()
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
def step_dirs(out: Path) -> list[tuple[int, Path]]:
    if not out.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name)))


def save_checkpoint(out: Path, step: int, unet, optimizer, gen: torch.Generator, state: dict,
                    overwrite: bool) -> Path:
    """Write DIR/checkpoint-NNNNNN atomically (a temporary folder renamed at the end)."""
    from safetensors.torch import save_file

    final = out / f"checkpoint-{step:06d}"
    if final.exists() and not overwrite:
        raise ValueError(f"{final} already exists; pass --overwrite to replace it")
    tmp = out / f".tmp-checkpoint-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": (v if isinstance(v, torch.Tensor) else torch.tensor(v)).detach().cpu().contiguous()
               for i, st in opt["state"].items() for k, v in st.items()}
    tensors["rng"] = gen.get_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(dict(state, step=step, param_groups=opt["param_groups"]),
                                                       indent=1))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load_checkpoint(folder: Path, unet, optimizer, gen: torch.Generator) -> dict:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from engine.core.unet_checkpoint import _check_shapes

    trained = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=torch.float32,
                                                   use_safetensors=True)
    _check_shapes(unet, trained, f"the checkpoint in {folder}")
    unet.load_state_dict(trained.state_dict())
    state = json.loads((folder / "trainer_state.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    gen.set_state(tensors.pop("rng"))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        i, _, name = key.partition(".")
        opt_state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    return state


def _start(out: Path, cfg: TrainConfig, notes: list[str]) -> Optional[Path]:
    """The checkpoint to resume from (or None), after the overwrite rules."""
    existing = step_dirs(out)
    if cfg.resume:
        if existing:
            return existing[-1][1]
        notes.append(f"--resume: no checkpoint in {out} yet, starting from the base UNet")
        return None
    if existing and not cfg.overwrite:
        raise ValueError(f"{out} already holds {existing[-1][1].name}; pass --resume to continue that run "
                         "or --overwrite to start again and replace its checkpoints")
    for _, folder in existing:  # --overwrite: a fresh run replaces the old checkpoints
        shutil.rmtree(folder)
    return None


# -- training --------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, models, on_step: Optional[Callable[[int, int, dict], None]] = None,
          progress: bool = True) -> TrainResult:
    from tqdm.auto import tqdm

    validate(cfg)
    dataset = PairDataset(cfg.pairs, cfg.resolution)  # records only: pairs stream from disk per step
    out = Path(cfg.out)
    notes: list[str] = []
    resume_from = _start(out, cfg, notes)
    out.mkdir(parents=True, exist_ok=True)

    sd = models.sd()
    device = models.device
    # The few evaluation pairs are encoded once; the training pairs are loaded step by step.
    made = 0
    prepared = []
    for i in range(min(EVAL_PAIRS, len(dataset))):
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
    optimizer = torch.optim.AdamW(groups["input"] + groups["middle"], lr=cfg.lr, weight_decay=0.0)
    gen = S.make_generator(cfg.seed, device)
    state = {"config": asdict(cfg), "losses": [], "eval": []}
    start = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, unet, optimizer, gen)
        start = int(state["step"])
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
        notes.append(f"resumed from {resume_from.name}")
        if start >= cfg.steps:
            notes.append(f"already trained for {start} steps (--steps {cfg.steps}); nothing to do")
            ev = state["eval"][-1]["loss"] if state.get("eval") else float("nan")
            return TrainResult(start, resume_from, ev, ev, _curves(state["losses"]), notes)
    state["config"] = asdict(cfg)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    if start == 0 or not state.get("eval"):
        with autocast:
            eval_start = evaluate(unet, prepared, models, alphas, cfg.lambda_perc)
        state["eval"].append({"step": start, "loss": eval_start})
    else:  # resumed: the evaluation stored with the checkpoint
        eval_start = float(state["eval"][-1]["loss"])
    last_saved = resume_from
    T = alphas.shape[0]
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="iEdit fine-tuning",
               disable=not progress, file=sys.stderr)
    eval_end = eval_start
    loader = iter(pair_loader(dataset, cfg.seed, start, cfg.steps, cfg.workers))
    try:
        for step in bar:
            # Input and middle blocks in turn (Sec. 4.1).
            active = "input" if step % 2 == 0 else "middle"
            for name, params in groups.items():
                for prm in params:
                    prm.requires_grad_(name == active)
            item = next(loader)  # this step's pair, read from disk (StepSampler)
            p, k = prepare_item(item, models, cfg)
            made += k
            t = int(torch.randint(T, (1,), generator=gen))
            eps1 = S.randn(tuple(p.z1.shape), gen, device, torch.float32)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                losses = iedit_loss(unet, p, t, eps1, models, alphas, cfg.lambda_perc)
            losses["loss"].backward()
            optimizer.step()
            values = {k: round(float(v.detach()), 6) for k, v in losses.items()}
            state["losses"].append(dict(values, step=step + 1, t=t, blocks=active, pair=int(item["index"])))
            bar.set_postfix(loss=f"{values['loss']:.4f}", t=t, blocks=active)
            if on_step:
                on_step(step + 1, cfg.steps, values)
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                with autocast:
                    eval_end = evaluate(unet, prepared, models, alphas, cfg.lambda_perc)
                state["eval"].append({"step": step + 1, "loss": eval_end})
                last_saved = save_checkpoint(out, step + 1, unet, optimizer, gen, state, cfg.overwrite)
    finally:
        bar.close()
        unet.requires_grad_(False)
        del loader  # stops the loader's worker processes
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
    p.add_argument("--save-every", type=int, default=1000, help="write a checkpoint every N steps (and at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-threshold", type=float, default=0.5, help="CLIPSeg threshold for masks missing from the pairs")
    p.add_argument("--workers", type=int, default=2, help="processes loading pairs from disk (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
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
                      workers=args.workers)
    try:
        overrides = dict(_override(text) for text in args.model)
        models = ModelCache(args.profile, device=args.device, overrides=overrides)
        result = train(cfg, models)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
