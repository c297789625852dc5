"""Fine-tuned UNet checkpoints (iEdit's, or any SD1.5 fine-tune) loaded beside the cached UNet.

A checkpoint is either
- a fine-tuned UNet in diffusers' layout (config.json + diffusion_pytorch_model.safetensors),
  given as that folder, a folder holding it in `unet/`, or a training output folder whose
  `checkpoint-NNNNNN/` subfolders hold one (the highest step is taken); or
- a LoRA in safetensors (diffusers/peft keys, with or without the "unet." prefix, or kohya's
  keys, converted by diffusers), given as the file or a folder holding one;
from a local path or a hub id ("owner/name", fetched with huggingface_hub when online).

The cached base UNet is never modified: the checkpoint is loaded into a private model (a
copy of the base for a LoRA, whose adapter is then fused into the copy's weights and unloaded),
kept in a one-entry cache so repeated requests with the same checkpoint do not reload it.
Only safetensors are read (pickle files can run code). A checkpoint whose tensors do not fit
the base UNet raises ValueError.
"""
from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")
LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class LoadedCheckpoint:
    unet: Any
    kind: str  # "unet" or "lora"
    path: str  # the file or folder actually read
    description: str


# -- finding the weights --------------------------------------------------------------------------
def _latest_step_dir(folder: Path) -> Optional[Path]:
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return max(steps)[1] if steps else None


def resolve(folder_or_file: Path) -> tuple[str, Path]:
    """(kind, path): ("unet", folder with config.json) or ("lora", .safetensors file)."""
    p = Path(folder_or_file)
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ValueError(f"{p.name}: only .safetensors checkpoints are loaded (pickle files can run code)")
        return "lora", p
    if not p.is_dir():
        raise ValueError(f"no checkpoint at {p}")
    for unet_dir in (p / "unet", p):
        if (unet_dir / "config.json").is_file():
            weights = list(unet_dir.glob("*.safetensors")) + list(unet_dir.glob("*.safetensors.index.json"))
            if not weights:
                raise ValueError(f"{unet_dir} holds a UNet config but no .safetensors weights "
                                 "(only safetensors checkpoints are loaded)")
            return "unet", unet_dir
    if (p / LORA_FILE).is_file():
        return "lora", p / LORA_FILE
    tensors = sorted(p.glob("*.safetensors"))
    if len(tensors) == 1:
        return "lora", tensors[0]
    if len(tensors) > 1:
        raise ValueError(f"{p} holds several .safetensors files; give the LoRA file itself")
    step = _latest_step_dir(p)
    if step is not None:
        return resolve(step)
    raise ValueError(f"{p} holds no fine-tuned UNet (config.json + .safetensors) and no LoRA (.safetensors)")


def locate(checkpoint: str) -> Path:
    """A local path as is; a hub id downloaded (json + safetensors only) to the hub cache."""
    text = str(checkpoint).strip()
    if not text:
        raise ValueError("the checkpoint is empty: give a folder, a .safetensors file or a hub id")
    path = Path(text).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(text):
        raise ValueError(f"no checkpoint at {text} (not a file, a folder or a hub id like owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # offline, missing repository, no access...
        raise ValueError(f"could not fetch checkpoint {text!r} from the hub ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
                         "download it and give the local folder instead") from None


# -- loading ----------------------------------------------------------------------------------------
def _check_shapes(base, model, what: str) -> None:
    ref = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad = [k for k in ref if k in got and ref[k] != got[k]]
    missing = [k for k in ref if k not in got]
    extra = [k for k in got if k not in ref]
    if bad or missing or extra:
        detail = (f"{bad[0]} is {got[bad[0]]} but the base model has {ref[bad[0]]}" if bad
                  else f"{(missing or extra)[0]} is {'missing' if missing else 'unexpected'}")
        raise ValueError(f"{what} does not fit the base UNet ({len(bad)} tensors of another shape, "
                         f"{len(missing)} missing, {len(extra)} unexpected; e.g. {detail}): "
                         "it was made for another model")


def _load_unet_folder(base, folder: Path, device, dtype):
    from diffusers import UNet2DConditionModel

    try:
        model = UNet2DConditionModel.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True)
    except Exception as exc:
        raise ValueError(f"could not load the fine-tuned UNet in {folder}: {str(exc).splitlines()[0]}") from None
    _check_shapes(base, model, f"the fine-tuned UNet in {folder}")
    return model


def _load_lora(base, file: Path, device, dtype):
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin

    try:
        state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(file))
    except Exception as exc:
        raise ValueError(f"{file.name} is not a LoRA this studio can read: {str(exc).splitlines()[0]}") from None
    if not state or not any("lora" in k for k in state):
        raise ValueError(f"{file.name} holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up keys)")
    prefix = "unet" if any(k.startswith("unet.") for k in state) else None
    model = copy.deepcopy(base)  # the base stays untouched
    model._forward_pre_hooks.clear()  # the copy must not run the base's CPU-offload hooks
    try:
        model.load_lora_adapter(state, network_alphas=alphas, prefix=prefix, adapter_name="iedit")
    except Exception as exc:
        raise ValueError(f"the LoRA in {file.name} does not fit the base UNet "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
    if not getattr(model, "peft_config", None) or "iedit" not in model.peft_config:
        raise ValueError(f"the LoRA in {file.name} has no weights for this UNet's layers")
    model.fuse_lora(adapter_names=["iedit"])
    model.unload_lora()
    _check_shapes(base, model, f"the UNet with the LoRA {file.name}")
    return model


_CACHE: dict[tuple, LoadedCheckpoint] = {}
_LOCK = threading.Lock()


def _fingerprint(path: Path) -> tuple:
    files = [path] if path.is_file() else sorted(path.glob("*"))
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


def load_checkpoint(base_unet, checkpoint: str, device, dtype) -> LoadedCheckpoint:
    """The fine-tuned UNet for `checkpoint` beside `base_unet` (never modified), cached (1 entry)."""
    kind, path = resolve(locate(checkpoint))
    key = (str(path.resolve()), _fingerprint(path), id(base_unet), str(device), str(dtype))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        _CACHE.clear()  # one checkpoint at a time: a full UNet is large
        model = (_load_unet_folder if kind == "unet" else _load_lora)(base_unet, path, device, dtype)
        model = model.to(device=torch.device(device), dtype=dtype).eval()
        model.requires_grad_(False)
        what = "fine-tuned UNet" if kind == "unet" else "LoRA fused into a copy of the base UNet"
        loaded = LoadedCheckpoint(model, kind, str(path), f"{what} from {path}")
        _CACHE[key] = loaded
        return loaded


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
