"""Model CPU offload for `ModelCache(memory="offload")`: each model lives on the CPU and moves to
the GPU when it runs, sending the models of other families back.

Families decide what may share the GPU. Stable Diffusion's parts (UNet, VAE, text encoder) and
the ControlNets are one family, "denoiser": a sampling loop calls a ControlNet and the UNet at
every step, and swapping them each step would copy gigabytes per step (about 4.9 GB for a
two-ControlNet ITO layout edit in fp16). So within one edit each model moves to the GPU at most
once; a captioner, CLIP or VGG run in between moves the denoiser family out once and back once.
The denoiser family is about 3.5 GB in fp16 with two ControlNets, which with 512 px activations
fits the 8 GB GPUs this mode is for.

Where a model is, is tracked here rather than read from its parameters (`cuda` against `cuda:0`
made every call look like a move), and the hook on an already resident model costs one lookup.
Hooks sit on each model and on its direct children, because some entry points (the VAE's
`encode`/`decode`) call children without the model's own `forward`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

DENOISER = "denoiser"


def family_of(component: str) -> str:
    """The offload family of a ModelCache component name."""
    return DENOISER if component == "sd" or component.startswith("controlnet") else component


def same_device(a: torch.device, b: torch.device) -> bool:
    """`cuda` and `cuda:0` are the same place when the current device is 0 (index None = any)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def modules_of(model: Any) -> list[torch.nn.Module]:
    """A model's offloadable groups: itself, or the modules of a bundle (SDModels' UNet, VAE...)."""
    if isinstance(model, torch.nn.Module):
        return [model]
    return [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]


class Offloader:
    """Keeps at most one family on the execution device.

    `move(module, device)` does the copy; tests give a recording one. `moves` counts every move
    to the execution device per module name, for tests and benchmarks.
    """

    def __init__(self, device: torch.device, move: Optional[Callable[[torch.nn.Module, torch.device], None]] = None):
        self.device = torch.device(device)
        self._move = move or (lambda module, where: module.to(where))
        self._groups: list[tuple[str, str, torch.nn.Module]] = []   # (family, name, module)
        self._resident: set[int] = set()                           # id() of modules on the device
        self.moves: dict[str, int] = {}

    def attach(self, component: str, model: Any) -> None:
        """Hook a model the cache has just loaded onto the CPU."""
        family = family_of(component)
        for group in modules_of(model):
            name = f"{component}.{type(group).__name__}"
            self._groups.append((family, name, group))
            hook = self._hook(family, name, group)
            for part in (group, *group.children()):
                part.register_forward_pre_hook(hook, with_kwargs=True)

    def clear(self) -> None:
        self._groups.clear()
        self._resident.clear()

    def activate(self, family: str, name: str, group: torch.nn.Module) -> None:
        """Bring `group` to the device; send every resident module of another family to the CPU."""
        if id(group) in self._resident:
            return
        for other_family, _other_name, other in self._groups:
            if other_family != family and id(other) in self._resident:
                self._move(other, torch.device("cpu"))
                self._resident.discard(id(other))
        self._move(group, self.device)
        self._resident.add(id(group))
        self.moves[name] = self.moves.get(name, 0) + 1

    def _hook(self, family: str, name: str, group: torch.nn.Module):
        device = self.device

        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, (list, tuple)):
                return type(value)(move(v) for v in value)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        def hook(_module, args, kwargs):
            self.activate(family, name, group)
            return move(args), move(kwargs)
        return hook
