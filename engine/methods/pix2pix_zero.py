"""pix2pix-zero (Parmar et al., 2023): prompt-free edits along a direction "source -> target".

1. Caption the photo with BLIP (or take the user's caption) and encode it: c.
2. Regularised DDIM inversion of the photo's latent with c (Sec. 3.1, Eq. 1-3): at every step the
   predicted noise takes 5 gradient steps on L_auto = L_pair + lambda L_KL (engine.core.autocorr).
3. Reconstruction from the inverted noise with c, recording the reference cross-attention maps
   M_ref(t) of every cross-attention layer (conditional half, kept on the device) (Algorithm 1, top).
4. Edit direction Delta c_edit from two sentence banks (Sec. 3.2, engine.methods.p2pz_directions).
5. Edit (Algorithm 1, bottom): at every step a gradient step on x_t of
   L_xa = ||M_edit(t) - M_ref(t)||^2 (Eq. 5) with weight lambda_xa, then the noise is predicted again
   with c_edit = c + Delta c_edit under classifier-free guidance and x_t takes the DDIM step.
   Following the released implementations, the DDIM step starts from the guided x_t.

Steps 2-3 depend only on (photo, caption, steps, model, regularisation, seed); they are kept in a
small LRU in memory, so moving lambda_xa or picking another direction re-runs only step 5.
Only cross-attention layers compute explicit attention probabilities; self-attention stays on SDPA.
CFG's unconditional prompt is the caption by default (negative_prompt=None), as in the official
real-image script: with Delta c = 0 and lambda_xa = 0 the edit then reproduces the reconstruction
exactly (the empty prompt drifted: mean 7 / max 48 grey levels on the tiny model at 64 px).

Mechanisms and the run-level tests that guard them (tests/test_pix2pix_zero_mechanisms.py; the
breakages they kill are registered in tests/mutants/m_pix2pix_zero.py):
- Sec. 3.1 regularised inversion with c: test_run_inversion_is_section_3_1_written_out (the run's
  x_inv equals DDIM inversion with L_auto written out with loops: pyramid, offsets, lambda, step).
- L_auto lowers the autocorrelation (METHODS.md check): test_regularised_inverted_noise_has_less_autocorrelation.
- Eq. 3 L_pair alone decorrelates: test_pair_term_alone_lowers_the_autocorrelation.
- lambda L_KL: test_lambda_slider_pulls_the_noise_towards_unit_gaussian (KL falls strictly with lambda).
- 5 iterations per step: test_more_iterations_regularise_more.
- random roll offsets from the seed: test_seed_draws_the_roll_offsets.
- Sec. 3.2 Delta c = mean E(target) - mean E(source): test_direction_in_the_run_is_the_mean_embedding_difference.
- c_edit = c + Delta c, CFG with the caption as negative prompt, M_ref from the plain reconstruction
  with c: test_edit_without_guidance_is_cfg_sampling_with_c_plus_delta,
  test_zero_direction_without_guidance_reproduces_the_reconstruction.
- CFG on the edit pass: test_cfg_scale_moves_the_edit_monotonically.
- Algorithm 1, M_ref(t) per step: test_zero_direction_guidance_is_a_no_op_at_every_step.
- Eq. 5 on the conditional half: test_xa_loss_is_measured_on_the_conditional_half.
- x_t <- x_t - lambda_xa grad L_xa: test_every_guidance_step_lowers_the_cross_attention_loss
  (sign), test_guidance_weight_moves_the_edit_monotonically (weight).
- UNet calls per stage (batch 1 inversion / reconstruction / guided pass, batch 2 CFG): test_unet_calls_per_stage.
- cache key (photo, caption, steps, ...): test_cache_key_holds_caption_and_steps.
"""
from __future__ import annotations

import argparse
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from engine.core import sampling as S
from engine.core.attention import capture_cross_attention
from engine.core.autocorr import make_regularizer, noise_image, noise_stats
from engine.core.image import image_hash, load_image
from engine.core.inversion import ddim_invert
from engine.methods import p2pz_directions as D
from engine.methods.common import RunLog, check_number, check_seed, check_text, params_of, to_host
from engine.types import EditResult, StepCallback

NAME = "pix2pix-zero"
TITLE = "pix2pix-zero"
ORDER = 1
SUMMARY = "Prompt-free edit along a direction (cat -> dog) that keeps the photo's structure."

Sentences = Union[str, Sequence[str], None]


@dataclass(frozen=True)
class Pix2PixZeroInputs:
    image: Image.Image
    source: str
    target: str
    caption: Optional[str] = None          # None or empty: BLIP captions the photo
    source_sentences: Sentences = None      # pasted sentences (one a line) replace the templates
    target_sentences: Sentences = None
    steps: int = 50                         # paper: 100
    xa_guidance: float = 0.1                # lambda_xa
    cfg: float = 5.0
    seed: int = 0
    resolution: int = 512
    reg_lambda: float = 20.0                # lambda of L_auto
    reg_iters: int = 5                      # gradient iterations per inversion step
    # The edit's unconditional prompt. None: the caption itself, as the official real-image script
    # passes it (negative_prompt=caption), so that a zero direction without guidance reproduces the
    # reconstruction exactly. "" gives the usual empty unconditional prompt.
    negative_prompt: Optional[str] = None

    @property
    def caption_as_negative(self) -> bool:
        """Whether the edit's CFG uses the caption as its unconditional prompt (the default)."""
        return self.negative_prompt is None


# -- cross-attention maps ---------------------------------------------------------------------------
class AttentionMaps:
    """Sink for capture_cross_attention: records M_ref, or sums L_xa (Eq. 5) against a reference.

    Only the conditional half is used: CFG batches are [uncond, cond], so it is the last sample.
    L_xa per layer = sum over pixels and tokens of the squared difference, averaged over heads,
    summed over layers.
    """

    def __init__(self):
        self.mode = "off"
        self.maps: dict[str, torch.Tensor] = {}
        self.ref: Optional[dict[str, torch.Tensor]] = None
        self.loss: Optional[torch.Tensor] = None

    def __call__(self, name: str, probs: torch.Tensor) -> None:
        cond_half = probs[-1]  # CFG batches are [uncond, cond]: the conditional half is the last sample
        if self.mode == "record":
            self.maps[name] = cond_half.detach()
        elif self.mode == "loss":
            diff = cond_half.float() - self.ref[name].float()
            term = diff.pow(2).sum(dim=(-2, -1)).mean()  # ||M_edit - M_ref||^2 (Eq. 5), mean over heads
            self.loss = term if self.loss is None else self.loss + term


def invert(sd, scheduler, x0, cond, steps, counter, reg_lambda, reg_iters, generator, log=None):
    """Regularised DDIM inversion (Eq. 1-3): x_0 -> x_inv (the losses go to log's curves)."""
    last = {}

    def record(i, l_pair, l_kl):
        last.update(inversion_l_pair=l_pair, inversion_l_kl=l_kl)

    regularize = make_regularizer(reg_lambda, reg_iters, generator, record) if reg_iters > 0 else None

    def on_step(info):
        if log is not None:
            log.step(info.stage, info.i, info.n, **last)

    return ddim_invert(sd, scheduler, x0, cond, steps, counter, regularize=regularize, on_step=on_step)[-1]


@torch.no_grad()
def reconstruct(sd, scheduler, x_inv, cond, steps, counter, log=None):
    """Sample from x_inv with c (no CFG), recording M_ref(t) for every step (Algorithm 1, top)."""
    sink = AttentionMaps()
    maps = []
    x = x_inv
    ts = S.timesteps(scheduler, steps, x.device)
    with capture_cross_attention(sd.unet, sink):
        sink.mode = "record"
        for i, t in enumerate(ts):
            sink.maps = {}
            eps = S.predict_noise(sd.unet, x, t, cond, counter)
            maps.append(sink.maps)
            x = S.ddim_step(scheduler, eps, t, x)  # UPDATE (Algorithm 1)
            if log is not None:
                log.step("reconstruction", i + 1, len(ts))
    return x, maps


@torch.no_grad()
def edit(sd, scheduler, x_inv, cond_edit, uncond, maps, steps, cfg, xa_guidance, counter, log=None):
    """Algorithm 1, bottom: cross-attention guidance, then a CFG DDIM step with c_edit.

    Returns (x_0, curves): "xa_loss" is L_xa at the x_t the DDIM step starts from (measured in the
    CFG pass, so it costs nothing), "xa_loss_before_guidance" the value before the gradient step.
    """
    sink = AttentionMaps()
    curves = {"xa_loss": []}
    if xa_guidance > 0:
        curves["xa_loss_before_guidance"] = []
    x = x_inv
    ts = S.timesteps(scheduler, steps, x.device)
    with capture_cross_attention(sd.unet, sink):
        for i, t in enumerate(ts):
            ref = maps[i]  # M_ref(t), recorded at this very timestep of the reconstruction (Algorithm 1)
            if xa_guidance > 0:
                x_in = x.detach().requires_grad_(True)
                sink.mode, sink.ref, sink.loss = "loss", ref, None
                with torch.enable_grad():
                    S.predict_noise(sd.unet, x_in, t, cond_edit, counter)
                    grad, = torch.autograd.grad(sink.loss, x_in)  # Delta x_t = grad of L_xa (Eq. 5)
                counter.backward += 1
                curves["xa_loss_before_guidance"].append(sink.loss.detach())
                x = (x - xa_guidance * grad).detach()         # x_t <- x_t - lambda_xa Delta x_t
            sink.mode, sink.ref, sink.loss = "loss", ref, None
            eps = S.predict_noise(sd.unet, x, t, cond_edit, counter, uncond=uncond, cfg=cfg)
            curves["xa_loss"].append(sink.loss.detach())  # 0-d tensors: read once, after the loop
            sink.mode, sink.ref = "off", None
            x = S.ddim_step(scheduler, eps, t, x)               # UPDATE (Algorithm 1)
            if log is not None:
                log.step("edit", i + 1, len(ts), latents=x, xa_loss=curves["xa_loss"][-1])
    return x, {k: to_host(v) for k, v in curves.items()}


# -- the inversion cache ----------------------------------------------------------------------------
@dataclass
class Inversion:
    x_inv: torch.Tensor
    maps: list
    reconstruction: Image.Image
    noise: dict
    curves: dict
    nbytes: int = 0
    psnr: float = 0.0  # reconstruction vs photo, dB


class InversionCache:
    """A locked LRU of inversions (inverted noise + reference maps), bounded in entries and bytes."""

    def __init__(self, max_entries: int = 3, max_bytes: int = 4 << 30, store_on_cpu: bool = False):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # On ZeroGPU no CUDA tensor may outlive a call: keep entries on the CPU there.
        self.store_on_cpu = store_on_cpu
        self._items: "OrderedDict[tuple, Inversion]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, device=None) -> Optional[Inversion]:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
        if item is not None and self.store_on_cpu and device is not None:
            item = _moved(item, device)
        return item

    def put(self, key, item: Inversion) -> None:
        item.nbytes = int(item.x_inv.numel() * item.x_inv.element_size()
                          + sum(m.numel() * m.element_size() for step in item.maps for m in step.values()))
        if self.store_on_cpu:
            item = _moved(item, "cpu")
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > 1 and (len(self._items) > self.max_entries or
                                            sum(v.nbytes for v in self._items.values()) > self.max_bytes):
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _moved(item: Inversion, device) -> Inversion:
    """A copy of `item` with its tensors on `device`."""
    from dataclasses import replace

    maps = [{name: m.to(device) for name, m in step.items()} for step in item.maps]
    return replace(item, x_inv=item.x_inv.to(device), maps=maps)


CACHE = InversionCache(int(os.environ.get("DES_P2PZ_CACHE_ENTRIES", 3)),
                       int(os.environ.get("DES_P2PZ_CACHE_MB", 4096)) << 20,
                       store_on_cpu=os.environ.get("DES_CACHE_ON_CPU") == "1")
_CAPTIONS: "OrderedDict[tuple, str]" = OrderedDict()
_CAPTION_LOCK = threading.Lock()


def auto_caption(models, image, resolution: int = 512) -> str:
    """BLIP's caption of the photo (cached per photo), as the UI's "Caption" action shows it."""
    from engine.core.caption import caption

    img = load_image(image, resolution)
    key = (image_hash(img), models.profile, models.source("blip"))
    with _CAPTION_LOCK:
        if key in _CAPTIONS:
            return _CAPTIONS[key]
    text = caption(models.get("blip"), img) or "a photo"
    with _CAPTION_LOCK:
        _CAPTIONS[key] = text
        while len(_CAPTIONS) > 64:
            _CAPTIONS.popitem(last=False)
    return text


# -- the run ----------------------------------------------------------------------------------------
def run(inputs: Pix2PixZeroInputs, models, on_step: Optional[StepCallback] = None) -> EditResult:
    # -- 1. validate --------------------------------------------------------------------------------
    image = load_image(inputs.image, inputs.resolution)
    steps = check_number("steps", inputs.steps, 10, 200, integer=True)
    xa = check_number("cross-attention guidance (lambda_xa)", inputs.xa_guidance, 0.0, 2.0)
    cfg = check_number("guidance scale (CFG)", inputs.cfg, 1.0, 30.0)
    seed = check_seed(inputs.seed)
    reg_lambda = check_number("regularisation weight lambda", inputs.reg_lambda, 0.0, 1000.0)
    reg_iters = check_number("regularisation iterations", inputs.reg_iters, 0, 20, integer=True)
    user_caption = check_text("caption", inputs.caption, allow_empty=True, max_len=500)
    negative = None if inputs.negative_prompt is None else check_text(
        "negative prompt", inputs.negative_prompt, allow_empty=True, max_len=500)
    log = RunLog(on_step)
    sd = models.sd()
    device = models.device
    src_bank, tgt_bank = D.make_banks(sd.tokenizer, inputs.source, inputs.target,
                                      inputs.source_sentences, inputs.target_sentences)

    # -- 2. caption and direction -------------------------------------------------------------------
    with log.stage("caption"):
        # From the photo as given: the resized one may be under the 64 px minimum on its short side
        # (64 px resolution, non-square photo), which load_image would refuse a second time.
        caption = user_caption or auto_caption(models, inputs.image, inputs.resolution)
    with log.stage("direction"):
        direction = D.direction_from_banks(models, sd, src_bank, tgt_bank)
    scheduler = sd.scheduler()
    with torch.no_grad():
        with log.stage("encode"):
            cond = S.encode_prompts(sd, [caption]).float()
            # CFG's unconditional prompt: the caption by default (official real-image script), so that
            # eps = eps(c) + cfg (eps(c + Delta c) - eps(c)) and a zero direction changes nothing.
            uncond = cond if negative is None else S.encode_prompts(sd, [negative]).float()
            cond_edit = cond + direction.delta.to(cond.device)  # c_edit = c + Delta c_edit

    # -- 3. inversion and reference maps, or the cached ones ----------------------------------------
    key = (image_hash(image), caption, steps, models.profile, sd.source, str(device), str(models.dtype),
           float(reg_lambda), reg_iters, seed if reg_iters > 0 else None)
    entry = CACHE.get(key, device)
    cached = entry is not None
    if not cached:
        with torch.no_grad(), log.stage("encode"):
            x0 = S.encode_image(sd, image).float()
        with log.stage("inversion"):
            x_inv = invert(sd, scheduler, x0, cond, steps, log.counter, reg_lambda, reg_iters,
                           S.make_generator(seed, device), log)
            inv_curves = {k: list(v) for k, v in log.curves.items() if k.startswith("inversion_")}
        with log.stage("reconstruction"):
            x_rec, maps = reconstruct(sd, scheduler, x_inv, cond, steps, log.counter, log)
            reconstruction = S.decode_latents(sd, x_rec)[0]
        entry = Inversion(x_inv, maps, reconstruction, noise_stats(x_inv), inv_curves,
                          psnr=_psnr(image, reconstruction))
        CACHE.put(key, entry)
    else:
        log.notes.append("inversion and reference attention maps reused from the cache "
                         "(same photo, caption, steps and seed)")

    # -- 4. edit with cross-attention guidance --------------------------------------------------------
    with log.stage("edit"):
        x_edit, edit_curves = edit(sd, scheduler, entry.x_inv, cond_edit, uncond, entry.maps, steps, cfg, xa,
                                   log.counter, log)
    with torch.no_grad(), log.stage("decode"):
        images = S.decode_latents(sd, x_edit)

    log.curves.update(entry.curves)
    log.curves.update(edit_curves)
    if not user_caption:
        log.notes.append(f"caption by BLIP: {caption!r}")
    if direction.source.from_templates and direction.source.label.lower() not in caption.lower():
        log.notes.append(f"the caption does not mention {direction.source.label!r}; the edit may be weak")
    if len(sd.tokenizer(caption).input_ids) > sd.tokenizer.model_max_length:
        log.notes.append("the caption is longer than the text encoder's 77 tokens and was cut")
    params = params_of(inputs, skip=("image", "source_sentences", "target_sentences"))
    params.update(negative_prompt=caption if negative is None else negative, caption=caption, caption_source="user" if user_caption else "blip", steps=steps, xa_guidance=xa,
                  cfg=cfg, reg_lambda=reg_lambda, reg_iters=reg_iters, size=list(image.size),
                  inversion_cached=cached,
                  direction=direction.describe(), inverted_noise=entry.noise, reconstruction_psnr=entry.psnr)
    intermediates = {"reconstruction": entry.reconstruction, "inverted_noise": noise_image(entry.x_inv)}
    return EditResult(images=images, intermediates=intermediates, seed=seed, seconds=log.finish(),
                      unet_evals=log.counter.as_dict(), params=params, curves=log.curves, notes=log.notes)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return round(10 * np.log10(255.0 ** 2 / mse), 3) if mse > 0 else float("inf")


# -- command line -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="", help="source word, e.g. cat")
    parser.add_argument("--target", default="", help="target word, e.g. dog")
    parser.add_argument("--caption", default=None, help="caption of the photo (default: BLIP writes one)")
    parser.add_argument("--sentences-source", metavar="FILE", help="source sentences, one a line (replace templates)")
    parser.add_argument("--sentences-target", metavar="FILE", help="target sentences, one a line (replace templates)")
    parser.add_argument("--xa-guidance", type=float, default=0.1, help="cross-attention guidance weight lambda_xa")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps for inversion, reconstruction and edit")
    parser.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale of the edit")
    parser.add_argument("--reg-lambda", type=float, default=20.0, help="lambda of L_auto = L_pair + lambda L_KL")
    parser.add_argument("--reg-iters", type=int, default=5, help="regularisation iterations per inversion step")
    parser.add_argument("--negative-prompt", default=None,
                        help="unconditional prompt of the edit's CFG (default: the caption, as the official code)")


def _read_sentences(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no sentence file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the sentence file {path} ({exc})") from None


def inputs_from_args(args, image: Image.Image, open_image) -> Pix2PixZeroInputs:
    src, tgt = _read_sentences(args.sentences_source), _read_sentences(args.sentences_target)
    for text, flag in ((src, "--sentences-source"), (tgt, "--sentences-target")):
        if text is not None and not text.strip():
            raise ValueError(f"the file given to {flag} holds no sentences")
    return Pix2PixZeroInputs(image=image, source=args.source, target=args.target, caption=args.caption,
                             source_sentences=src, target_sentences=tgt, steps=args.steps,
                             xa_guidance=args.xa_guidance, cfg=args.cfg, seed=args.seed,
                             resolution=args.resolution, reg_lambda=args.reg_lambda, reg_iters=args.reg_iters,
                             negative_prompt=getattr(args, "negative_prompt", None))
