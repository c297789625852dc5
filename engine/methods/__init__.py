"""One module per paper. A method module defines:

NAME, TITLE, ORDER, SUMMARY      how the CLI and the UI list it
<X>Inputs                        a frozen dataclass of everything a run needs, with the paper's defaults
run(inputs, models, on_step)     validates, runs, returns an EditResult (ValueError on bad input)
add_arguments(parser)            its CLI flags
inputs_from_args(args, image, open_image) -> <X>Inputs

`available()` finds them by listing this package, so a new method needs no registration.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_NOT_METHODS = {"common"}


def available() -> dict[str, ModuleType]:
    """CLI name -> method module, in the order the UI shows them."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_METHODS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            found.append(module)
    found.sort(key=lambda m: (getattr(m, "ORDER", 99), m.NAME))
    return {m.NAME: m for m in found}


def get(name: str) -> ModuleType:
    methods = available()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(methods)}")
    return methods[name]
