"""Defaults per profile: the paper's settings on real weights, quick ones on the tiny profile.

The `<X>Inputs` dataclasses carry the papers' defaults (512 px, 50 DDIM steps, ITO's n = 10
seeds, LayerDiffusion's 500 + 250 optimisation steps...), and they stay the defaults of the
`sd15` and `sd15-shape` profiles and of the CLI. On the `tiny` profile, where the weights are
random and the point is to try every button on a laptop, the UI starts from smaller settings so
that every tab's default run answers within about 20 s on 2 CPU cores (bench/RESULTS.md, "Tiny
profile: default run per tab"). The UI says so next to the controls, and each result's notes
name the quick settings that differ from the paper's.
"""
from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from types import ModuleType

QUICK: dict[str, dict] = {
    "sdedit": {"resolution": 256, "steps": 20},
    "pix2pix-zero": {"resolution": 128, "steps": 10},
    "ito": {"resolution": 128, "steps": 10, "t_u": 6, "mask_seeds": 4},
    "iir-net": {"resolution": 256, "steps": 10},
    "iedit": {"resolution": 256, "steps": 20},
    "layer-diffusion": {"resolution": 128, "embed_steps": 20, "tune_steps": 10, "steps": 10},
}
BY_PROFILE: dict[str, dict[str, dict]] = {"tiny": QUICK}


def inputs_class(module: ModuleType) -> type:
    """The method's `<X>Inputs` dataclass."""
    found = [v for k, v in vars(module).items() if k.endswith("Inputs") and is_dataclass(v)
             and getattr(v, "__module__", "") == module.__name__]
    if len(found) != 1:
        raise LookupError(f"{module.__name__} must define exactly one <X>Inputs dataclass")
    return found[0]


def paper_defaults(module: ModuleType) -> dict:
    return {f.name: f.default for f in fields(inputs_class(module)) if f.default is not MISSING}


def overrides(module: ModuleType, profile: str) -> dict:
    """What `profile` changes from the paper's defaults for this method (empty for sd15)."""
    return dict(BY_PROFILE.get(profile, {}).get(module.NAME, {}))


def defaults(module: ModuleType, profile: str) -> dict:
    """Field -> default value of the method's inputs on `profile`."""
    return {**paper_defaults(module), **overrides(module, profile)}


def describe(module: ModuleType, profile: str) -> str:
    """'resolution 128 (paper 512), steps 10 (paper 50)', or '' when the paper's defaults apply."""
    paper = paper_defaults(module)
    return ", ".join(f"{k} {v} (paper {paper[k]})" for k, v in overrides(module, profile).items())
