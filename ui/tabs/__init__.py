"""One module per method tab. A tab module defines TITLE, ORDER and build(runner), which
creates the tab's widgets inside the current gr.Tab. `available()` finds them by listing
this package, so a new tab needs no registration."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def available() -> list[ModuleType]:
    tabs = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "build") and hasattr(module, "TITLE"):
            tabs.append(module)
    return sorted(tabs, key=lambda m: (getattr(m, "ORDER", 99), m.TITLE))
