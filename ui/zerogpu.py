"""Hugging Face ZeroGPU support, inert everywhere else.

On a ZeroGPU Space a GPU is attached only inside functions wrapped by `spaces.GPU`, for a
duration the Space asks for. `wrap(fn, duration)` does that when the `spaces` package says it
runs on ZeroGPU, and returns `fn` unchanged otherwise (no `spaces` package: nothing changes).
`prepare_environment()` makes the engine's caches keep CPU copies there, since no CUDA tensor
may outlive a call.
"""
from __future__ import annotations

import os
from typing import Callable

DEFAULT_SECONDS = 60
MAX_SECONDS = 300


def active() -> bool:
    try:
        import spaces.config  # type: ignore[import-not-found]
    except ImportError:
        return False
    return bool(getattr(spaces.config.Config, "zero_gpu", False))


def prepare_environment() -> bool:
    """Call once at start-up, before models load. Returns whether ZeroGPU is active."""
    if not active():
        return False
    os.environ.setdefault("DES_CACHE_ON_CPU", "1")
    return True


def wrap(fn: Callable, duration: Callable[..., float]) -> Callable:
    """fn wrapped with spaces.GPU(duration=...) on ZeroGPU, with the duration computed from the
    call's own arguments (clamped to [10, MAX_SECONDS] seconds); fn itself elsewhere."""
    if not active():
        return fn
    import spaces  # type: ignore[import-not-found]

    def seconds(*args, **kwargs) -> int:
        try:
            value = float(duration(*args, **kwargs))
        except Exception:
            value = DEFAULT_SECONDS
        return int(min(MAX_SECONDS, max(10, value)))

    return spaces.GPU(duration=seconds)(fn)
