"""Helpers every method uses: input checks with readable messages, stage timing and the
bookkeeping that ends up in `EditResult`."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from engine.core.sampling import UNetCounter
from engine.types import StepCallback, StepInfo


def check_number(name: str, value, lo: float, hi: float, integer: bool = False):
    """Return `value` if it is a finite number in [lo, hi] (an int if `integer`), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if integer:
        if float(value) != int(value):
            raise ValueError(f"{name} must be a whole number, got {value}")
        value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def check_text(name: str, value, allow_empty: bool = False, max_len: int = 1000) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    value = " ".join(value.split())
    if not value and not allow_empty:
        raise ValueError(f"{name} is empty: type some text")
    if len(value) > max_len:
        raise ValueError(f"{name} is too long ({len(value)} characters, at most {max_len})")
    return value


def check_seed(seed) -> int:
    return check_number("seed", seed, 0, 2**32 - 1, integer=True)


def to_host(values: list) -> list[float]:
    """Floats and 0-d tensors -> floats, with one device-to-host copy for all the tensors: a step loop
    keeps its losses on the device and converts them once, after the loop (a float() per step
    would make the host wait for the device at every step; issue 18)."""
    at = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    out = list(values)
    if at:
        for i, h in zip(at, torch.stack([values[i].detach().float().reshape(()) for i in at]).tolist()):
            out[i] = h
    return [float(v) for v in out]


class RunLog:
    """Seconds per stage, UNet evaluations and loss curves of one run.

    Losses given to `step`/`record` may be 0-d tensors: they stay on the device until `curves` is
    read (after the loops), and a step callback receives them as they are (formatting one waits for
    the device; the UI's progress never reads them)."""

    def __init__(self, on_step: Optional[StepCallback] = None):
        self.on_step = on_step
        # A caller that wants live previews hangs an engine.core.previews.Previewer on its callback.
        self.previewer = getattr(on_step, "previewer", None)
        self.counter = UNetCounter()
        self.seconds: dict[str, float] = {}
        self._curves: dict[str, list] = {}
        self.notes: list[str] = []
        self._start = time.perf_counter()

    @property
    def curves(self) -> dict[str, list[float]]:
        """The loss curves as floats (converted here, once, not per step)."""
        for key, values in self._curves.items():
            if any(isinstance(v, torch.Tensor) for v in values):
                self._curves[key] = to_host(values)
        return self._curves

    def record(self, key: str, value) -> None:
        """Append a float or a 0-d tensor (kept on its device) to the curve `key`."""
        self._curves.setdefault(key, []).append(value.detach() if isinstance(value, torch.Tensor) else float(value))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def step(self, stage: str, i: int, n: int, latents: Optional[torch.Tensor] = None, **losses) -> None:
        """One step of `stage`; `latents` (the sample after this step) feed the live preview, if any."""
        for key, value in losses.items():
            self.record(key, value)
        if self.on_step:
            preview = self.previewer(latents) if self.previewer is not None and latents is not None else None
            self.on_step(StepInfo(stage, i, n, preview=preview, losses=dict(losses) or None))

    def finish(self) -> dict[str, float]:
        self.seconds["total"] = time.perf_counter() - self._start
        return {k: round(v, 4) for k, v in self.seconds.items()}


def params_of(inputs, skip: tuple[str, ...] = ("image", "mask")) -> dict:
    """The plain fields of an Inputs dataclass for reports (images and arrays left out, no copies)."""
    from dataclasses import fields

    out = {}
    for f in fields(inputs):
        if f.name in skip:
            continue
        value = getattr(inputs, f.name)
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[f.name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in value):
            out[f.name] = list(value)
        else:
            out[f.name] = f"<{type(value).__name__}>"
    return out
