"""python -m tests.mutants [--method M ...] [--name SUBSTRING ...] [--list] [--jobs J]

For each registered breakage: copy the tree (git's tracked and untracked-not-ignored files) into
a private folder, apply the breakage, check the file still compiles, run the method's tests there
with pytest -x, and print KILLED (a test failed, naming it) or SURVIVED. Ends with
"K killed of N"; exit code 0 only when every breakage was killed (2 for a stale registry entry).

The tiny models are built once into a seed folder and hard-linked into each copy, so a run costs
the tests' own time. Each copy gets its own DES_CACHE_DIR: nothing cached on disk (edit
directions, say) leaks from one mutant to another.
"""
from __future__ import annotations

import argparse
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.mutants import ROOT, Mutant, all_mutants


def tree_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def copy_tree(root: Path, dest: Path, files: list[str]) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def build_models(folder: Path) -> None:
    """Write every tiny model once (the same builders and folder names as ModelCache uses)."""
    from engine.models import COMPONENTS, ModelCache

    cache = ModelCache("tiny", device="cpu", cache_dir=folder)
    for spec in COMPONENTS.values():
        if spec.tiny_builder:
            cache._fake_folder(spec)


def link_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, copy_function=os.link, dirs_exist_ok=True)


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def run_one(mutant: Mutant | None, tests: tuple[str, ...], files: list[str], seed_models: Path, work: Path,
            timeout: float, label: str = "") -> tuple[str, str, float]:
    """(verdict, detail, seconds) for one mutant; `mutant` None runs the unmutated tree (the baseline)."""
    start = time.perf_counter()
    label = label or mutant.name
    tree = work / label
    copy_tree(ROOT, tree, files)
    if mutant is not None:
        mutant.apply(tree)
        try:
            py_compile.compile(str(tree / mutant.file), doraise=True)
        except py_compile.PyCompileError as exc:
            return "INVALID", f"the mutated file does not compile: {exc.msg.strip().splitlines()[-1]}", 0.0
    models = work / f"{label}-models"
    link_tree(seed_models, models)
    env = dict(os.environ, HF_HUB_OFFLINE="1", DES_TEST_CACHE=str(models),
               DES_CACHE_DIR=str(work / f"{label}-cache"), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "KILLED", f"timed out after {timeout:.0f} s", time.perf_counter() - start
    finally:
        shutil.rmtree(tree, ignore_errors=True)
        shutil.rmtree(models, ignore_errors=True)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "SURVIVED", "every test passed", seconds
    if proc.returncode == 5:
        return "INVALID", "no test ran (check the registry's test names)", seconds
    failed = FAILED.findall(output)
    return "KILLED", f"by {failed[0]}" if failed else f"pytest exit {proc.returncode}", seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", action="append", default=[], help="only this method's breakages (repeatable)")
    parser.add_argument("--name", action="append", default=[], help="only breakages whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the registry and check it applies; run nothing")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (each pytest uses one thread)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant before it counts as killed")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the chosen tests on the unmutated tree first")
    args = parser.parse_args(argv)

    chosen = [(m, t) for m, t in all_mutants()
              if (not args.method or m.method in args.method) and (not args.name or any(s in m.name for s in args.name))]
    if not chosen:
        print("no breakage matches", file=sys.stderr)
        return 2
    files = tree_files(ROOT)
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        work = Path(tmp)
        # Every entry must apply to today's tree: a stale one is a registry bug, not a verdict.
        stale = []
        for m, _ in chosen:
            probe = work / "probe"
            (probe / m.file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / m.file, probe / m.file)
            try:
                m.apply(probe)
            except (ValueError, FileNotFoundError) as exc:
                stale.append(str(exc))
        if stale:
            print("stale registry entries:\n  " + "\n  ".join(stale), file=sys.stderr)
            return 2
        if args.list:
            for m, tests in chosen:
                print(f"{m.name:48s} {m.file}  [{m.breaks}]  tests: {' '.join(tests)}")
            print(f"{len(chosen)} breakages, all apply")
            return 0
        seed_models = work / "seed-models"
        build_models(seed_models)
        if not args.no_baseline:
            # A test that fails on the unmutated tree would "kill" every mutant: check first.
            suites = sorted({t for _, t in chosen})
            for i, tests in enumerate(suites):
                verdict, detail, secs = run_one(None, tests, files, seed_models, work, args.timeout, f"baseline{i}")
                if verdict != "SURVIVED":
                    print(f"BASELINE FAILS {' '.join(tests)}: {detail}; fix the tests before judging mutants",
                          file=sys.stderr)
                    return 2
                print(f"baseline passes ({secs:.0f} s): {' '.join(tests)}", flush=True)

        def one(item):
            m, tests = item
            verdict, detail, secs = run_one(m, tests, files, seed_models, work, args.timeout)
            line = f"{verdict:8s} {m.name:48s} {secs:6.1f} s  {m.breaks}  ({detail})"
            print(line, flush=True)
            return verdict

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(one, chosen))
    killed = sum(v == "KILLED" for v in results)
    invalid = sum(v == "INVALID" for v in results)
    print(f"{killed} killed of {len(results)}" + (f" ({invalid} invalid)" if invalid else ""))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
