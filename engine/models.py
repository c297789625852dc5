"""The model cache: every model loads once, lazily, under one lock, and is shared by all methods.

Profiles
- `sd15`: the real weights, by hub id; each component's source can be overridden by a flag
  (`--model NAME=ID_OR_FOLDER`) or an environment variable (`DES_MODEL_<NAME>`), local folders allowed.
- `tiny`: random SD1.5-shaped models built in code with a fixed seed, written once with
  `save_pretrained` into the cache folder and loaded back through the same `from_pretrained`
  code as the real weights. Fast on a CPU; outputs are noise.
- `sd15-shape`: the full SD1.5 architecture with random weights, for timing on a GPU.

fp16 on CUDA, fp32 on CPU. Memory modes: "gpu" (everything resident) or "offload" (each model
moves to the GPU when it runs; models of other families go back to the CPU: engine/offload.py). Importing this module loads
nothing and does not touch CUDA.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

PROFILES = ("sd15", "tiny", "sd15-shape")
MEMORY_MODES = ("gpu", "offload")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # --compile's; inductor is the one that speeds up
SD15_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass(frozen=True)
class ComponentSpec:
    """How to find, load and fake one model.

    loader:        "module:function" called as fn(source, device, dtype) for every profile.
    tiny_builder:  "module:function" called as fn(folder) to write a tiny random version.
    shape_builder: like tiny_builder but full-size (sd15-shape); None means use the tiny one.
    """

    name: str
    hub_id: str
    loader: str
    tiny_builder: Optional[str]
    shape_builder: Optional[str] = None
    description: str = ""
    offload: bool = True  # False: stays on the GPU in offload mode (small models called outside forward)
    probe: str = "config.json"  # a file every copy of the weights has: is it on this machine?

    @property
    def env_var(self) -> str:
        return "DES_MODEL_" + self.name.upper()


COMPONENTS: dict[str, ComponentSpec] = {
    spec.name: spec
    for spec in (
        ComponentSpec("sd", SD15_ID, "engine.models:load_sd", "engine.tiny.sd:build_tiny_sd",
                      "engine.tiny.sd:build_sd15_shape", "Stable Diffusion 1.5 (UNet, VAE, text encoder)",
                      probe="model_index.json"),
        ComponentSpec("blip", "Salesforce/blip-image-captioning-base", "engine.core.caption:load_blip",
                      "engine.tiny.blip:build_tiny_blip", None, "BLIP captioner"),
        ComponentSpec("controlnet_scribble", "lllyasviel/control_v11p_sd15_scribble", "engine.models:load_controlnet",
                      "engine.tiny.controlnet:build_tiny_controlnet", "engine.tiny.controlnet:build_full_controlnet",
                      "ControlNet 1.1 scribble"),
        ComponentSpec("controlnet_openpose", "lllyasviel/control_v11p_sd15_openpose", "engine.models:load_controlnet",
                      "engine.tiny.controlnet:build_tiny_controlnet", "engine.tiny.controlnet:build_full_controlnet",
                      "ControlNet 1.1 openpose"),
        ComponentSpec("controlnet_canny", "lllyasviel/control_v11p_sd15_canny", "engine.models:load_controlnet",
                      "engine.tiny.controlnet:build_tiny_controlnet", "engine.tiny.controlnet:build_full_controlnet",
                      "ControlNet 1.1 canny"),
        ComponentSpec("grounding_dino", "IDEA-Research/grounding-dino-tiny", "engine.core.segment:load_grounding_dino",
                      "engine.tiny.segment:build_tiny_grounding_dino", None, "GroundingDINO (transformers)", offload=False),
        ComponentSpec("sam", "facebook/sam-vit-base", "engine.core.segment:load_sam",
                      "engine.tiny.segment:build_tiny_sam", None, "Segment Anything (transformers)", offload=False),
        ComponentSpec("clipseg", "CIDAS/clipseg-rd64-refined", "engine.core.segment:load_clipseg",
                      "engine.tiny.segment:build_tiny_clipseg", None, "CLIPSeg", offload=False),
        ComponentSpec("clip", "openai/clip-vit-base-patch32", "engine.core.clip:load_clip",
                      "engine.tiny.clip:build_tiny_clip", None, "CLIP ViT-B/32 (iEdit losses, pair retrieval, metrics)"),
        ComponentSpec("vgg", "timm/vgg16.tv_in1k", "engine.train.perceptual:load_vgg",
                      "engine.train.perceptual:build_tiny_vgg", None, "VGG16 features (perceptual loss)"),
        ComponentSpec("annotators", "lllyasviel/Annotators", "engine.core.conditions:load_annotators",
                      None, None, "controlnet-aux detectors (HED scribble, OpenPose)", probe="body_pose_model.pth"),
        ComponentSpec("lpips", "timm/vgg16.tv_in1k", "engine.core.metric_models:load_lpips",
                      "engine.core.metric_models:build_tiny_lpips", None, "LPIPS trunk (evaluation; see engine/core/metric_models.py)"),
        ComponentSpec("dino", "facebook/dino-vitb8", "engine.core.metric_models:load_dino",
                      "engine.core.metric_models:build_tiny_dino", None, "DINO ViT (evaluation: Structure Dist)"),
        ComponentSpec("pickscore", "yuvalkirstain/PickScore_v1", "engine.core.metric_models:load_pickscore",
                      "engine.tiny.clip:build_tiny_clip", None, "PickScore (evaluation)"),
        ComponentSpec("taesd", "madebyollin/taesd", "engine.models:load_taesd", "engine.tiny.taesd:build_tiny_taesd",
                      "engine.tiny.taesd:build_taesd_shape", "TAESD tiny autoencoder (live previews)", offload=False),
    )
}


# What the studio needs for its edit tabs, checked at start-up (the evaluation models load on demand).
APP_COMPONENTS = ("sd", "blip", "controlnet_scribble", "controlnet_openpose", "controlnet_canny",
                  "grounding_dino", "sam", "clipseg", "clip")


class ModelUnavailable(Exception):
    """Real weights that cannot be loaded: not on this machine, and not downloadable from here.
    The message says what is missing and the three ways out (download, local folder, tiny)."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def how_to_fix(name: str) -> str:
    spec = COMPONENTS[name]
    return (f"put a copy laid out like the hub repository in a folder and pass --model {name}=FOLDER "
            f"(or set {spec.env_var}), or start with --profile tiny to try every button on random weights")


@dataclass
class SDModels:
    """Stable Diffusion's parts. Schedulers keep state, so each request makes its own."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    source: str

    def scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def _resolve(ref: str):
    module, _, fn = ref.partition(":")
    return getattr(importlib.import_module(module), fn)


def _freeze(module):
    module.eval()
    module.requires_grad_(False)
    return module


def add_speed_arguments(parser) -> None:
    """--channels-last and --compile, the same in the app, the CLI and the benchmarks."""
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="convolutions in channels-last memory order (auto: on a GPU only)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        choices=COMPILE_BACKENDS, help="torch.compile the UNet, VAE decoder and ControlNets "
                        "(BACKEND default inductor); the first edit at each size compiles")


def speed_options(args) -> dict:
    """ModelCache keywords from add_speed_arguments' options."""
    return {"channels_last": {"auto": None, "on": True, "off": False}[args.channels_last],
            "compile_backend": args.compile}


def to_channels_last(model) -> None:
    """The UNet, VAE and ControlNets of a loaded component in channels-last memory order (their
    4-D weights; activations follow the weights). The numbers are the same up to rounding."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    parts = [model.unet, model.vae] if isinstance(model, SDModels) else [model]
    for part in parts:
        if isinstance(part, (UNet2DConditionModel, AutoencoderKL, ControlNetModel)):
            part.to(memory_format=torch.channels_last)


def compile_parts(model, backend: str) -> None:
    """torch.compile, in place, of the parts that run at every step (the UNet, the ControlNets) and
    the VAE decoder, for static shapes: each new image size or batch compiles once, on first use.
    The module objects stay the same (hooks, attention processors and adapters keep working; a
    change to them recompiles), and a deep copy (LayerDiffusion's full fine-tune, a LoRA checkpoint's
    UNet, the fp32 VAE) runs its own weights (tests/test_fast_path.py checks it)."""
    from diffusers import ControlNetModel

    if isinstance(model, SDModels):
        parts = [model.unet, model.vae.decoder]
    elif isinstance(model, ControlNetModel):
        # its blocks, not the model: the studio calls them one by one with the condition's features
        # computed once per edit (engine/core/controlnet_features.py); the model's own forward runs
        # the same compiled blocks
        parts = [model.controlnet_cond_embedding, *model.down_blocks] + ([model.mid_block] if model.mid_block else [])
    else:  # captioner, segmenters, CLIP...: called once per edit, not worth compiling
        return
    for part in parts:
        part.compile(backend=backend, dynamic=False)


def load_sd(source: str, device: torch.device, dtype: torch.dtype) -> SDModels:
    """Load SD1.5's parts from a hub id or a local folder laid out like the hub repository."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    scheduler_config = dict(DDIMScheduler.load_config(source, subfolder="scheduler"))
    for m in (unet, vae, text_encoder):
        _freeze(m).to(device)
    return SDModels(unet, vae, text_encoder, tokenizer, scheduler_config, source)


def load_controlnet(source: str, device: torch.device, dtype: torch.dtype):
    from diffusers import ControlNetModel

    return _freeze(ControlNetModel.from_pretrained(source, torch_dtype=dtype)).to(device)


def load_taesd(source: str, device: torch.device, dtype: torch.dtype):
    """TAESD (diffusers' AutoencoderTiny): decodes SD1.5 latents to a preview image (engine/core/previews.py)."""
    from diffusers import AutoencoderTiny

    return _freeze(AutoencoderTiny.from_pretrained(source, torch_dtype=dtype)).to(device)


@contextmanager
def _quiet_loading():
    """No progress bars or config warnings from transformers/diffusers while loading."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = (tlog.get_verbosity(), dlog.get_verbosity())
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(levels[0])
        dlog.set_verbosity(levels[1])
        tlog.enable_progress_bar()
        dlog.enable_progress_bar()


def default_cache_dir() -> Path:
    return Path(os.environ.get("DES_CACHE_DIR", Path.home() / ".cache" / "diffusion-edit-studio"))


def pick_device(name: Optional[str] = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelCache:
    """Loads each component once, on first use, and hands the same object to every request.

    No request may change a cached model: methods restore attention processors and remove
    adapters in `finally` blocks, and never edit weights in place.
    """

    def __init__(self, profile: str = "sd15", device: Optional[str] = None, memory: str = "gpu",
                 overrides: Optional[dict[str, str]] = None, cache_dir: Optional[Path] = None,
                 channels_last: Optional[bool] = None, compile_backend: Optional[str] = None):
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        if memory not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
        if compile_backend and compile_backend not in COMPILE_BACKENDS:
            raise ValueError(f"unknown compile backend {compile_backend!r}; choose one of {', '.join(COMPILE_BACKENDS)}")
        unknown = set(overrides or {}) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown model component(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(COMPONENTS)}")
        self.profile = profile
        self.memory = memory
        self._channels_last = channels_last
        self.compile_backend = compile_backend or None  # "inductor" with --compile (tests use "aot_eager")
        self._compile_noted = False
        self._device_name = device
        self.overrides = dict(overrides or {})
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._lock = threading.RLock()
        self._models: dict[str, Any] = {}
        self._offloader = None  # engine.offload.Offloader, made on the first offloaded model

    # -- where things live -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return pick_device(self._device_name)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" else torch.float32

    @property
    def channels_last(self) -> bool:
        """Convolutions in channels-last memory order (NHWC): on by default on a GPU, where fp16
        convolutions run on tensor cores in that order; off on the CPU unless asked for."""
        return self.device.type == "cuda" if self._channels_last is None else bool(self._channels_last)

    def compile_note(self) -> Optional[str]:
        """Once per cache with --compile: what the first edit's time includes."""
        if not self.compile_backend or self._compile_noted:
            return None
        self._compile_noted = True
        return (f"--compile ({self.compile_backend}): the UNet, VAE decoder and ControlNets are compiled on first "
                "use at each image size and batch, so this first edit's time includes compiling; later ones reuse it")

    @property
    def is_fake(self) -> bool:
        """True when the weights are random (outputs are noise)."""
        return self.profile != "sd15"

    def source(self, name: str) -> str:
        """Where a component comes from: flag override, environment variable, or the hub id."""
        spec = COMPONENTS[name]
        return self.overrides.get(name) or os.environ.get(spec.env_var) or spec.hub_id

    def describe(self) -> dict[str, str]:
        """Component -> source, for reports and PNG metadata."""
        if self.profile == "sd15":
            return {name: self.source(name) for name in COMPONENTS}
        return {name: f"{self.profile}:{name}" for name in COMPONENTS}

    def loaded(self) -> list[str]:
        return sorted(self._models)

    # -- loading ---------------------------------------------------------------------
    def _fake_folder(self, spec: ComponentSpec) -> str:
        builder = spec.shape_builder if self.profile == "sd15-shape" and spec.shape_builder else spec.tiny_builder
        if builder is None:
            raise ValueError(f"{spec.description or spec.name} has no random stand-in in the "
                             f"{self.profile!r} profile; it needs real weights ({spec.hub_id})")
        tag = hashlib.sha1(builder.encode()).hexdigest()[:8]
        folder = self.cache_dir / self.profile / f"{spec.name}-{tag}"
        done = folder / ".complete"
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with _quiet_loading():
                _resolve(builder)(folder)
            done.write_text("ok\n")
        return str(folder)

    def get(self, name: str) -> Any:
        """The loaded component `name` (see COMPONENTS), loading it on first use."""
        if name not in COMPONENTS:
            raise KeyError(f"unknown model component {name!r}")
        model = self._models.get(name)
        if model is not None:
            return model
        with self._lock:
            if name not in self._models:
                spec = COMPONENTS[name]
                source = self.source(name) if self.profile == "sd15" else self._fake_folder(spec)
                offload = spec.offload and self._offload_enabled()
                target = torch.device("cpu") if offload else self.device
                try:
                    with _quiet_loading():
                        model = _resolve(spec.loader)(source, target, self.dtype)
                except OSError as exc:  # hub and filesystem errors (huggingface_hub's are OSErrors)
                    if self.profile != "sd15":
                        raise
                    raise ModelUnavailable(self._unavailable_message(name, source, exc)) from None
                if self.channels_last:
                    to_channels_last(model)
                if self.compile_backend:
                    compile_parts(model, self.compile_backend)
                if offload:
                    self.offloader().attach(name, model)
                self._models[name] = model
            return self._models[name]

    def sd(self) -> SDModels:
        return self.get("sd")

    # -- are the real weights here? ------------------------------------------------------
    def missing(self, names=APP_COMPONENTS) -> dict[str, str]:
        """Component -> why its weights are not on this machine, without downloading anything
        (sd15 only; the random profiles build theirs). Loaded components are present."""
        if self.profile != "sd15":
            return {}
        out = {}
        for name in names:
            if name in self._models:
                continue
            reason = self._absence(name)
            if reason:
                out[name] = reason
        return out

    def _absence(self, name: str) -> Optional[str]:
        spec, source = COMPONENTS[name], self.source(name)
        folder = Path(source).expanduser()
        if folder.is_dir():
            return None
        if folder.exists() or _looks_like_path(source):
            return f"no folder at {source}"
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, spec.probe)
        except Exception:  # a malformed id, say
            found = None
        if isinstance(found, str):
            return None
        if _hub_offline():
            return f"{source} is not in the local hub cache and HF_HUB_OFFLINE=1 forbids downloading it"
        return f"{source} is not in the local hub cache: the first use downloads it (needs internet)"

    def _unavailable_message(self, name: str, source: str, exc: Exception) -> str:
        spec = COMPONENTS[name]
        reason = self._absence(name) or str(exc).strip().splitlines()[0][:200]
        if not _hub_offline() and not _looks_like_path(source) and "download" in reason:
            reason = f"{source} is not on this machine and could not be downloaded from the hub"
        return f"{spec.description or name} ({name}) could not be loaded: {reason}. To fix: {how_to_fix(name)}."

    def clear(self) -> None:
        """Forget every loaded model (after an out-of-memory error, say)."""
        with self._lock:
            self._models.clear()
            if self._offloader is not None:
                self._offloader.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- model CPU offload (engine/offload.py) ---------------------------------------------
    def _offload_enabled(self) -> bool:
        return self.memory == "offload" and self.device.type == "cuda"

    def offloader(self):
        """The cache's Offloader (offload mode): it moves each model to the GPU when it runs."""
        from engine.offload import Offloader

        with self._lock:
            if self._offloader is None:
                self._offloader = Offloader(self.device)
            return self._offloader
