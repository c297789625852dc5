"""Running a method or a baseline on one evaluation photo.

- `build_inputs`: a method's Inputs dataclass from a Case: the photo, the seed, the resolution and
  the task's words and prompts under the field names each method uses, then the user's
  `--set NAME=VALUE` overrides (e.g. `--set steps=10`), checked against the dataclass's fields.
- Baselines of pix2pix-zero's Table 1 (Sec. 4.3):
  `sdedit-swap`: SDEdit (engine.methods.sdedit) with the source caption's word swapped for the target;
  `ddim-swap`: deterministic DDIM inversion with the source caption, then DDIM sampling with the
  swapped caption and classifier-free guidance (`ddim_swap` below).
"""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Optional

import torch
from PIL import Image

from bench.tasks import Case
from engine.core import sampling as S
from engine.core.image import load_image
from engine.core.inversion import ddim_invert
from engine.methods.common import RunLog, check_number, check_seed, check_text, params_of
from engine.types import EditResult

# The methods of the studio's papers; a name here that is not in engine/methods yet gets a clear error.
PAPER_METHODS = ("sdedit", "pix2pix-zero", "ito", "iir-net", "iedit", "layer-diffusion")
BASELINES = ("sdedit-swap", "ddim-swap", "none")


def method_module(name: str):
    from engine import methods

    found = methods.available()
    if name in found:
        return found[name]
    if name in PAPER_METHODS:
        raise ValueError(f"the method {name!r} is not in this checkout yet "
                         f"(engine/methods/{name.replace('-', '_')}.py is missing); "
                         f"available now: {', '.join(found)}")
    raise ValueError(f"unknown method {name!r}; available: {', '.join(found)}")


def inputs_class(module):
    for value in vars(module).values():
        if isinstance(value, type) and is_dataclass(value) and value.__name__.endswith("Inputs") \
                and value.__module__ == module.__name__ and "image" in {f.name for f in fields(value)}:
            return value
    raise ValueError(f"the method {module.NAME!r} has no Inputs dataclass with an 'image' field")


def parse_sets(items) -> dict:
    """["steps=10", "caption=a photo of a cat"] -> {"steps": 10, "caption": "a photo of a cat"}:
    values are read as JSON (numbers, true/false, null) where they parse, else kept as text."""
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _mask_image(case: Case):
    """A mask file given with the photo, as an image (None: the method segments by itself)."""
    if case.mask is None or case.mask_origin != "file":
        return None
    from engine.core.masks import to_pil

    return to_pil(case.mask)


def _preset(name: str, case: Case) -> dict:
    """Each method's reading of the task, by the names of its Inputs fields."""
    common = {"prompt": case.target_prompt, "text": case.target_prompt, "edit_prompt": case.target_prompt,
              "target_prompt": case.target_prompt, "source_prompt": case.source_prompt,
              "source": case.source, "target": case.target}
    per_method = {
        # the method captions the photo itself (BLIP) unless a caption is given, as in the paper
        "pix2pix-zero": {"caption": case.caption},
        # IIR-Net's RoI is the object the text changes; iEdit's mask is the edited term (CLIPSeg)
        "iir-net": {"roi_text": case.source},
        "iedit": {"mask_text": case.source, "num_results": 1, "mask": _mask_image(case)},  # used with brush
        # ITO's C_0 is the original class's caption, C_EDIT the new one's (DiffEdit's ImageNet protocol)
        "ito": {"caption": case.caption or case.source_prompt},
        # TEdBench edits act in place: the photo is its own background reference; T_b is the task's
        # (or prompts.json's) background phrase when the text names no place
        "layer-diffusion": {"keep_background": True, "background_text": case.background or None,
                            "subject_mask": _mask_image(case)},
    }
    return {**common, **per_method.get(name, {})}


def build_inputs(module, case: Case, seed: int, resolution: int, overrides: Optional[dict] = None):
    cls = inputs_class(module)
    names = {f.name for f in fields(cls)}
    overrides = dict(overrides or {})
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"{module.NAME} has no setting {', '.join(sorted(unknown))}; "
                         f"its settings: {', '.join(sorted(names - {'image'}))}")
    values = {k: v for k, v in _preset(module.NAME, case).items() if k in names}
    values.update({"image": case.image, "seed": seed})
    if "resolution" in names:
        values["resolution"] = resolution
    values.update(overrides)
    missing = [f.name for f in fields(cls) if f.name not in values
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"cannot fill {module.NAME}'s {', '.join(missing)} from the task; "
                         f"pass --set {missing[0]}=VALUE")
    return cls(**values)


# -- DDIM + word swap -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DDIMSwapInputs:
    image: Image.Image
    source_prompt: str
    target_prompt: str
    steps: int = 50
    cfg: float = 5.0       # pix2pix-zero compares every method at the same CFG as its own (5)
    seed: int = 0
    resolution: int = 512


def ddim_swap(inputs: DDIMSwapInputs, models, on_step=None) -> EditResult:
    """Invert x_0 with DDIM under the source caption (no CFG), then sample x_T -> x_0 under the
    swapped caption with CFG (Song et al., 2021, Eq. 12 with sigma = 0, both directions)."""
    image = load_image(inputs.image, inputs.resolution)
    source = check_text("source prompt", inputs.source_prompt)
    target = check_text("target prompt", inputs.target_prompt)
    steps = check_number("steps", inputs.steps, 1, 200, integer=True)
    cfg = check_number("guidance scale (CFG)", inputs.cfg, 1.0, 30.0)
    seed = check_seed(inputs.seed)  # the run is deterministic; the seed is recorded
    log = RunLog(on_step)
    sd = models.sd()
    scheduler = sd.scheduler()
    with torch.no_grad():
        with log.stage("encode"):
            x0 = S.encode_image(sd, image)
            c_src, c_tgt, uncond = (S.encode_prompts(sd, [p]) for p in (source, target, ""))
        with log.stage("inversion"):
            x = ddim_invert(sd, scheduler, x0, c_src, steps, log.counter)[-1]
        with log.stage("edit"):
            ts = S.timesteps(scheduler, steps, x.device)
            for i, t in enumerate(ts):
                eps = S.predict_noise(sd.unet, x, t, c_tgt, log.counter, uncond=uncond, cfg=cfg)
                x = S.ddim_step(scheduler, eps, t, x)
                log.step("edit", i + 1, len(ts))
        with log.stage("decode"):
            images = S.decode_latents(sd, x)
    params = params_of(inputs)
    return EditResult(images=images, seed=seed, seconds=log.finish(), unet_evals=log.counter.as_dict(),
                      params=params, notes=log.notes)


def baseline_inputs(name: str, case: Case, seed: int, resolution: int, overrides: Optional[dict] = None):
    """The baseline's Inputs for a case (a ValueError names a setting it does not have)."""
    overrides = dict(overrides or {})
    if name == "sdedit-swap":
        from engine.methods import sdedit

        return build_inputs(sdedit, case, seed, resolution, overrides)
    if name == "ddim-swap":
        names = {f.name for f in fields(DDIMSwapInputs)}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"ddim-swap has no setting {', '.join(sorted(unknown))}; "
                             f"its settings: {', '.join(sorted(names - {'image'}))}")
        values = dict(image=case.image, source_prompt=case.source_prompt, target_prompt=case.target_prompt,
                      seed=seed, resolution=resolution)
        values.update(overrides)
        return DDIMSwapInputs(**values)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


def run_baseline(name: str, case: Case, seed: int, resolution: int, models,
                 overrides: Optional[dict] = None) -> EditResult:
    inputs = baseline_inputs(name, case, seed, resolution, overrides)
    if name == "sdedit-swap":
        from engine.methods import sdedit

        return sdedit.run(inputs, models)
    return ddim_swap(inputs, models)
