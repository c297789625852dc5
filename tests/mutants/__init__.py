"""The mutation harness: a registry of named mechanism breakages, one module per method.

Each `Mutant` names one line of a paper mechanism (the exact text, which must occur exactly
once in its file), the text that breaks it, and the paper equation it breaks. The runner
(`python -m tests.mutants [--method M] [--name N]`) applies each breakage to a private copy of
the tree, runs that method's tests there, and reports KILLED (some test failed) or SURVIVED
(every test passed: the mechanism has no test that would miss it). Target: every breakage
killed.

Registry modules are `tests/mutants/m_<method>.py`, each with:

    TESTS   = ("tests/test_x.py", ...)   # the method's tests, run for each of its mutants
    MUTANTS = [Mutant(...), ...]

A mutant may name its own `tests` (files or node ids) when the method's whole suite is
not where its guard lives (a CLI test, a training test).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Mutant:
    name: str            # "ito.eq6-lambda-dropped": method, then what breaks
    file: str            # path relative to the repository root
    original: str        # exact text, found exactly once in `file`
    replacement: str     # what it becomes
    breaks: str          # the paper equation or mechanism it breaks, in words
    tests: tuple[str, ...] = field(default=())  # override the method's TESTS

    @property
    def method(self) -> str:
        return self.name.split(".", 1)[0]

    def apply(self, root: Path) -> None:
        """Rewrite `file` under `root`; ValueError if the original text is missing or repeated."""
        path = root / self.file
        text = path.read_text(encoding="utf-8")
        count = text.count(self.original)
        if count != 1:
            raise ValueError(f"{self.name}: the original text occurs {count} times in {self.file} "
                             f"(must be exactly once): {self.original!r}")
        path.write_text(text.replace(self.original, self.replacement), encoding="utf-8")


def registry() -> dict[str, tuple[tuple[str, ...], list[Mutant]]]:
    """method -> (its tests, its mutants), from every m_<method> module of this package."""
    out: dict[str, tuple[tuple[str, ...], list[Mutant]]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("m_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        out[info.name[2:]] = (tuple(module.TESTS), list(module.MUTANTS))
    return out


def all_mutants() -> list[tuple[Mutant, tuple[str, ...]]]:
    """Every mutant with the tests that must kill it."""
    found = []
    for _method, (tests, mutants) in registry().items():
        for m in mutants:
            found.append((m, m.tests or tests))
    return found
