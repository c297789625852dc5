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


class RunLog:
    """Seconds per stage, UNet evaluations and loss curves of one run."""

    def __init__(self, on_step: Optional[StepCallback] = None):
        self.on_step = on_step
        self.counter = UNetCounter()
        self.seconds: dict[str, float] = {}
        self.curves: dict[str, list[float]] = {}
        self.notes: list[str] = []
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def step(self, stage: str, i: int, n: int, **losses: float) -> None:
        for key, value in losses.items():
            self.curves.setdefault(key, []).append(float(value))
        if self.on_step:
            self.on_step(StepInfo(stage, i, n, losses=dict(losses) or None))

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
