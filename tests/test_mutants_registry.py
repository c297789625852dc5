"""The mutation harness's registry stays true to the tree: every breakage applies to exactly one
place and leaves a file that compiles, and every method names tests that exist."""
from __future__ import annotations

import py_compile

import pytest

from tests.mutants import ROOT, all_mutants, registry


def test_registry_has_every_method_with_existing_tests():
    reg = registry()
    assert reg, "no m_<method> registry modules"
    for method, (tests, mutants) in reg.items():
        assert mutants, f"{method} registers no breakage"
        for t in tests:
            assert (ROOT / t.split("::")[0]).is_file(), f"{method}: no test file {t}"


@pytest.mark.parametrize("mutant,tests", all_mutants(), ids=lambda v: getattr(v, "name", ""))
def test_every_breakage_applies_once_and_compiles(mutant, tests, tmp_path):
    (tmp_path / mutant.file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / mutant.file).write_text((ROOT / mutant.file).read_text(encoding="utf-8"), encoding="utf-8")
    mutant.apply(tmp_path)
    py_compile.compile(str(tmp_path / mutant.file), doraise=True)
    for t in tests:
        assert (ROOT / t.split("::")[0]).is_file(), f"{mutant.name}: no test file {t}"
