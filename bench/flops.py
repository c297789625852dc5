"""Work per edit at SD1.5 size, whatever the device: python -m bench.flops METHOD [the CLI's flags] [--px 512]

Takes exactly the flags of `python -m engine METHOD`. The method runs once with the tiny profile
(fast on a CPU; the call pattern does not depend on the model's size or the photo's) while one
global forward hook records every call of the networks that carry the cost:

- the UNet and each ControlNet, with the batch size, and whether a backward pass follows
  (the output needs a gradient) and whether it reaches the weights (full fine-tuning; LoRA
  adapters count as a backward to the inputs, their own gradients being a few percent);
- the VAE's encoder and decoder, and the CLIP text encoder, with the batch size.

Each call is multiplied by the FLOPs of one sample through the SD1.5-shaped network of that kind
at `--px` x `--px` (a square photo: a 3:2 one costs about two thirds), counted by
`torch.utils.flop_counter` on the meta device (no weights, no memory): forward, backward to the
inputs only, or backward to the inputs and the weights. Captioning, segmentation and annotators
are not counted (SAM's ViT-H image encoder alone is a few TFLOPs): the rows name those that ran.

The row it appends to bench/RESULTS.md gives the total TFLOPs and a lower bound on the seconds
on an H100 SXM, TFLOPs / 989 (its dense fp16 tensor-core peak): no GPU edit can be faster.
Real runs reach a fraction of peak (batch-1 UNet calls are bound by kernel launches more than by
arithmetic), so this says what a target needs, not what a GPU measures: `bench/latency.py` does that.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from datetime import date
from functools import lru_cache

import torch

from bench.results import add_row, command_line, numbers, run_cli

H100_SXM_FP16_TFLOPS = 989.4  # dense, tensor cores (NVIDIA H100 datasheet, SXM5)
SECTION = "## Work per edit (TFLOPs at SD1.5 size)"
HEADER = ("| date | method | px | settings | calls (UNet / ControlNet / VAE enc / VAE dec / text) "
          "| UNet samples fwd / bwd | TFLOPs fwd / bwd / total | H100 lower bound s | not counted | command |\n"
          "|---|---|---|---|---|---|---|---|---|---|\n")
INTRO = ("Rows appended by `python -m bench.flops METHOD ...` (the command is in the row; see its docstring): "
         "the method's calls recorded on the tiny profile, each costed at the SD1.5-shaped network's FLOPs per "
         "sample, counted by torch's FLOP counter. Hardware-independent; the H100 column is TFLOPs / 989, "
         "the fastest any H100 could go, not a measurement.")
KINDS = ("unet", "controlnet", "vae_encoder", "vae_decoder", "text_encoder")


def kind_of(module) -> str | None:
    """Which costed network a module is, by class (the tiny models share the full ones' classes)."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.models.autoencoders.vae import Decoder, Encoder
    from transformers import CLIPTextModel

    for cls, kind in ((UNet2DConditionModel, "unet"), (ControlNetModel, "controlnet"), (Encoder, "vae_encoder"),
                      (Decoder, "vae_decoder"), (CLIPTextModel, "text_encoder")):
        if isinstance(module, cls):
            return kind
    return None


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0]) if out else None
    for name in ("sample", "down_block_res_samples", "last_hidden_state"):
        if hasattr(out, name):
            return _first_tensor(getattr(out, name))
    return None


class CallRecorder:
    """Counts (kind, mode) -> samples, where mode is fwd, bwd_input or bwd_weights."""

    def __init__(self):
        self.samples: Counter = Counter()
        self.calls: Counter = Counter()
        self._handle = None

    def __enter__(self):
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()

    def _hook(self, module, args, output):
        kind = kind_of(module)
        if kind is None:
            return
        x = args[0] if args and isinstance(args[0], torch.Tensor) else _first_tensor(output)
        batch = int(x.shape[0]) if x is not None else 1
        self.calls[kind] += 1
        self.samples[(kind, "fwd")] += batch
        out = _first_tensor(output)
        if torch.is_grad_enabled() and out is not None and out.requires_grad:
            # Fine-tuning the network's own weights adds their gradients; LoRA adapters (a few percent
            # of the weights) or frozen weights leave the backward to the inputs only.
            sizes = [(p.numel(), p.requires_grad) for p in module.parameters()]
            weights = sum(n for n, grad in sizes if grad) > 0.5 * sum(n for n, _ in sizes)
            self.samples[(kind, "bwd_weights" if weights else "bwd_input")] += batch


@lru_cache(maxsize=None)
def per_sample_tflops(px: int) -> dict[tuple[str, str], float]:
    """FLOPs (in TFLOP) of one sample through each SD1.5-shaped network, forward and backward."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    h = px // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=h, cross_attention_dim=768)  # engine.tiny.sd.build_sd15_shape
        control = ControlNetModel(cross_attention_dim=768)                    # ControlNetModel.from_unet(that)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, max_position_embeddings=77, vocab_size=49408))
    t = torch.full((1,), 500, device="meta")

    def make_inputs(grad: bool):
        with torch.device("meta"):
            latent = torch.randn(1, 4, h, h, requires_grad=grad)
            cond = torch.randn(1, 77, 768, requires_grad=grad)
            image = torch.randn(1, 3, px, px, requires_grad=grad)
        return latent, cond, image

    calls = {
        "unet": lambda lat, c, img: unet(lat, t, c).sample,
        "controlnet": lambda lat, c, img: control(lat, t, c, img).mid_block_res_sample,
        "vae_encoder": lambda lat, c, img: vae.encoder(img),
        "vae_decoder": lambda lat, c, img: vae.decoder(lat),
    }
    table: dict[tuple[str, str], float] = {}
    for kind, call in calls.items():
        net = {"unet": unet, "controlnet": control}.get(kind, vae)
        for mode in ("fwd", "bwd_input", "bwd_weights"):
            net.requires_grad_(mode == "bwd_weights")
            with FlopCounterMode(display=False) as counter:
                out = call(*make_inputs(mode != "fwd"))
                forward = counter.get_total_flops()
                if mode != "fwd":
                    out.float().sum().backward()
            total = counter.get_total_flops()
            table[(kind, mode)] = (forward if mode == "fwd" else total - forward) / 1e12
    with FlopCounterMode(display=False) as counter:
        text(torch.zeros(1, 77, dtype=torch.long, device="meta"))
    table[("text_encoder", "fwd")] = counter.get_total_flops() / 1e12
    return table


def tally(recorder: CallRecorder, px: int) -> dict:
    per = per_sample_tflops(px)
    fwd = sum(n * per.get((kind, "fwd"), 0.0) for (kind, mode), n in recorder.samples.items() if mode == "fwd")
    bwd = sum(n * per.get((kind, mode), 0.0) for (kind, mode), n in recorder.samples.items() if mode != "fwd")
    unet_bwd = recorder.samples[("unet", "bwd_input")] + recorder.samples[("unet", "bwd_weights")]
    return {"fwd": fwd, "bwd": bwd, "total": fwd + bwd, "unet_fwd": recorder.samples[("unet", "fwd")],
            "unet_bwd": unet_bwd, "calls": [recorder.calls[k] for k in KINDS],
            "h100_s": (fwd + bwd) / H100_SXM_FP16_TFLOPS}


def main(argv=None) -> int:
    from engine import methods
    from engine.__main__ import _open_file, build_parser
    from engine.core.image import open_image
    from engine.models import ModelCache

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--px", type=int, default=512, help="the resolution to count FLOPs at")
    extra.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    own, rest = extra.parse_known_args(argv)
    if own.px % 8 or own.px < 64:
        print("--px must be a multiple of 8, at least 64", file=sys.stderr)
        return 2
    if "--out" not in rest:
        rest += ["--out", tempfile.mkdtemp(prefix="flops-")]
    if "--profile" not in rest:
        rest += ["--profile", "tiny"]
    if "--resolution" not in rest:
        rest += ["--resolution", "64"]
    args = build_parser().parse_args(rest)
    if args.profile != "tiny":
        print("bench.flops runs the tiny profile (the call pattern is the same; FLOPs are counted at SD1.5 "
              "size): leave --profile out", file=sys.stderr)
        return 2
    module = methods.get(args.method)
    models = ModelCache("tiny", device="cpu", overrides=dict(args.model))
    inputs = module.inputs_from_args(args, open_image(args.image), _open_file)
    with CallRecorder() as recorder:
        result = module.run(inputs, models)
    if result.unet_evals["forward"] != recorder.calls["unet"]:
        print(f"warning: the method counted {result.unet_evals['forward']} UNet evaluations, the hook "
              f"{recorder.calls['unet']}", file=sys.stderr)
    t = tally(recorder, own.px)
    costed = {"sd", "controlnet_scribble", "controlnet_openpose", "controlnet_canny"}
    skipped = [name for name in models.loaded() if name not in costed]  # captioner, segmenter, annotators
    settings = numbers(result.params, skip=("resolution",))
    print(f"{args.method} at {own.px} px: {t['total']:.1f} TFLOPs (forward {t['fwd']:.1f}, backward {t['bwd']:.1f});"
          f" UNet samples {t['unet_fwd']} forward, {t['unet_bwd']} backward; calls {dict(zip(KINDS, t['calls']))};"
          f" H100 lower bound {t['h100_s']:.3f} s")
    if not own.no_record:
        command = command_line("bench.flops", argv)
        calls = " / ".join(map(str, t["calls"]))
        add_row(SECTION, HEADER, f"| {date.today()} | {args.method} | {own.px} | {settings} | {calls} "
               f"| {t['unet_fwd']} / {t['unet_bwd']} | {t['fwd']:.1f} / {t['bwd']:.1f} / {t['total']:.1f} "
               f"| {t['h100_s']:.3f} | {', '.join(skipped) or '-'} | `{command}` |", intro=INTRO)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
