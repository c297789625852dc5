"""Finding, checking and loading a trained IIR-Net ControlNet (4 conditioning channels).

A checkpoint is a diffusers ControlNet folder (config.json + diffusion_pytorch_model.safetensors,
as `engine.train.iir_net` writes it) on disk, or a hub id laid out the same way. Anything else
is refused with a ValueError a user can act on: a regular 3-channel ControlNet, a folder
without config or weights, or pickle weights (.bin/.pt/.ckpt can run code when loaded; only
safetensors are read). Loaded checkpoints are kept in a small locked LRU so a request does
not reload them; they are frozen like every cached model.

Training also writes `iir_net.json` beside the weights (META): the largest noise level K the
ControlNet saw (k was drawn from 0..K) and the Canny thresholds its edge channel was made with.
`trained_settings` reads it; the method refuses requests that disagree with it (a noise level
above K, other Canny thresholds), since the ControlNet never saw such conditions.
"""
from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from engine.core.removal import CONDITION_CHANNELS, MAX_NOISE

WEIGHTS = "diffusion_pytorch_model.safetensors"
META = "iir_net.json"  # written by engine.train.iir_net: K and the Canny thresholds of training
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ENV_VAR = "DES_IIR_CHECKPOINT"  # a default checkpoint for every request that names none
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_CACHE: "OrderedDict[tuple, Any]" = OrderedDict()
_CACHE_SIZE = 2
_LOCK = threading.Lock()


def configured(checkpoint: Optional[str]) -> Optional[str]:
    """The checkpoint to use: the request's, else $DES_IIR_CHECKPOINT, else None (training-free)."""
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint must be a folder path or a hub id, got {type(checkpoint).__name__}")
    text = str(checkpoint).strip() if checkpoint is not None else ""
    if not text:
        text = os.environ.get(ENV_VAR, "").strip()
    return text or None


def check_config(config: dict, where: str) -> None:
    """Refuse configs that are not a ControlNet reading IIR-Net's 4-channel condition."""
    cls = config.get("_class_name")
    if cls is not None and cls != "ControlNetModel":
        raise ValueError(f"{where} holds a {cls}, not a ControlNet: an IIR-Net checkpoint is a "
                         "ControlNetModel with 4 conditioning channels")
    channels = config.get("conditioning_channels", 3)
    if channels != CONDITION_CHANNELS:
        raise ValueError(f"{where} is a ControlNet with {channels} conditioning channels; an IIR-Net "
                         f"checkpoint reads {CONDITION_CHANNELS} (the removal image x'_k and the "
                         "edges). Train one with `python -m engine.train.iir_net`, or leave the "
                         "checkpoint empty for the training-free mode")


def inspect_folder(path: Path) -> Path:
    """Check a local checkpoint folder without loading weights; return the folder."""
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ValueError(f"{path.name} is a pickle file, which can run code when loaded; this "
                             "studio reads IIR-Net checkpoints in safetensors only (a folder with "
                             "config.json and diffusion_pytorch_model.safetensors)")
        raise ValueError(f"{path} is a file; point to the folder that holds config.json and "
                         f"{WEIGHTS}")
    if not path.is_dir():
        raise ValueError(f"no checkpoint folder at {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} is not an IIR-Net checkpoint: config.json is missing")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_file} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} is not a model config")
    check_config(config, str(path))
    if not ((path / WEIGHTS).is_file() or (path / WEIGHTS_INDEX).is_file()):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"{path} holds pickle weights ({', '.join(pickles)}), which can run code "
                             "when loaded; this studio loads safetensors only. Re-save the model "
                             "with save_pretrained(..., safe_serialization=True)")
        raise ValueError(f"{path} is not an IIR-Net checkpoint: {WEIGHTS} is missing")
    return path


@dataclass(frozen=True)
class TrainedSettings:
    """What a checkpoint was trained with (from its iir_net.json)."""

    max_noise: int  # K: training drew k from 0..K (Eq. 5-6)
    canny_low: int  # C(x0) of Eq. 7 was made with these thresholds
    canny_high: int


def parse_settings(meta, where: str) -> TrainedSettings:
    """Check the content of an iir_net.json; a malformed one is a ValueError naming the field."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where} is not a JSON object")
    values = {}
    for key, hi in (("max_noise", MAX_NOISE), ("canny_low", 255), ("canny_high", 255)):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            raise ValueError(f"{where} has no valid {key!r} (a whole number from 0 to {hi}), got {value!r}")
        values[key] = value
    if values["canny_low"] > values["canny_high"]:
        raise ValueError(f"{where} has canny_low {values['canny_low']} above canny_high {values['canny_high']}")
    return TrainedSettings(**values)


def trained_settings(source: str) -> Optional[TrainedSettings]:
    """The training settings of the checkpoint at `source` (a local folder or a hub id), or None
    when it has no iir_net.json (a ControlNet trained elsewhere). Reads no weights."""
    folder = preflight(source)
    if folder is not None:
        file = folder / META
        if not file.is_file():
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(source, META))
        except Exception:  # no such file on the hub, or the hub unreachable: the model load reports it
            return None
    try:
        meta = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON ({exc})") from None
    return parse_settings(meta, str(file))


def check_compatible(controlnet, unet, where: str) -> None:
    """The ControlNet's residuals must fit the UNet it is paired with."""
    c, u = controlnet.config, unet.config
    for key in ("block_out_channels", "cross_attention_dim", "in_channels"):
        if list(_as_list(c.get(key))) != list(_as_list(u.get(key))):
            raise ValueError(f"{where} was trained for another base model ({key} {c.get(key)} vs the "
                             f"loaded Stable Diffusion's {u.get(key)})")


def _as_list(value):
    return value if isinstance(value, (list, tuple)) else [value]


def _cache_key(source: str, folder: Optional[Path], device, dtype) -> tuple:
    if folder is None:
        return (source, None, str(device), str(dtype))
    stamps = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("*.safetensors*")))
    return (str(folder.resolve()), stamps, str(device), str(dtype))


def preflight(source: str) -> Optional[Path]:
    """Check a checkpoint before anything loads: a local folder is inspected (and returned);
    a hub id (owner/name with no such local folder) is checked when it loads."""
    path = Path(source).expanduser()
    local = path.exists() or source.startswith((".", "/", "~")) or not _HUB_ID.match(source)
    return inspect_folder(path) if local else None


def load_iir_controlnet(source: str, unet, device, dtype) -> Any:
    """Load (or reuse) the IIR-Net ControlNet at `source`, a local folder or a hub id."""
    from diffusers import ControlNetModel

    folder = preflight(source)
    key = _cache_key(source, folder, device, dtype)
    with _LOCK:
        model = _CACHE.get(key)
        if model is not None:
            _CACHE.move_to_end(key)
    if model is None:
        model = _load(ControlNetModel, str(folder) if folder else source, folder is None, dtype)
        model.requires_grad_(False)
        model = model.eval().to(device)
        with _LOCK:
            _CACHE[key] = model
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    check_compatible(model, unet, source)
    return model


def _load(cls, source: str, hub: bool, dtype):
    where = f"the hub id {source!r}" if hub else source
    try:
        if hub:
            check_config(dict(cls.load_config(source)), where)
        model = cls.from_pretrained(source, torch_dtype=dtype, use_safetensors=True)
    except ValueError:
        raise
    except Exception as exc:  # hub errors, corrupt safetensors, shape mismatches
        hint = (" (there is no local folder of that name, and the model hub could not be reached "
                "or has no such repository)") if hub else ""
        raise ValueError(f"could not load the IIR-Net checkpoint from {where}{hint}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    check_config(dict(model.config), where)
    return model


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
