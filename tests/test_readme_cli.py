"""Every command of README.md's "Command line" section, run as a real subprocess.

The commands are read from the README itself (the bash block of that section, continuation lines
joined), so a README edit cannot escape: each line's required part runs as `python -m engine ...`
on the tiny profile, offline, with the few flags listed in RUN_EXTRAS that make it fast on random
weights (small resolution, 2 steps, a painted mask where random GroundingDINO might find nothing),
and must exit 0 and write its files and report.json. Every optional flag the README shows is
parsed by the CLI's parser with a sample value, so a renamed flag fails here too. The set of
commands must match RUN_EXTRAS and the methods the CLI offers.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT

README = ROOT / "README.md"

# Per command (the word after `python -m engine`): flags added to the README's required part so a
# run finishes in seconds on tiny random models. They are speed settings or a painted mask, never
# a replacement for a flag the README shows as required.
RUN_EXTRAS = {
    "--help": [],
    "sdedit": ["--steps", "2"],
    "pix2pix-zero": ["--steps", "10", "--reg-iters", "1"],  # 10: pix2pix-zero's minimum
    "pix2pix-zero-fast": [],  # a distilled checkpoint (CKPT) made by the `files` fixture
    # The README shows every ITO condition as optional; one must be given.
    "ito": ["--prompt", "a photo of a dog", "--steps", "2", "--tu", "1", "--mask-seeds", "2"],
    "iir-net": ["--steps", "2"],
    "iedit": ["--mask", "{mask}", "--num-results", "2", "--steps", "2"],
    "layer-diffusion": ["--subject-mask", "{mask}", "--embed-steps", "2", "--tune-steps", "2", "--steps", "2"],
    "segment": [],
}
# Commands also run with one of their optional flags (the README's alternatives that take another path).
EXTRA_RUNS = [
    ("segment", ["--method", "clipseg"]),
    ("segment", ["--points", "20,20,+", "50,50,-"]),
]
# Sample values for the README's placeholders when its optional flags are parsed.
PLACEHOLDERS = {
    "IN": "{image}", "DIR": "{out}", "out/": "{out}", "EDIT": "a photo of a dog", "EDIT.png": "{mask}",
    "EDIT.json": "{pose}", "MASK.png": "{mask}", "M.png": "{mask}", "REF.png": "{image}", "PHRASE": "cat",
    "K": "2", "TEXT": "a photo of a dog", "TERM": "cat", "x,y,+": "20,20,+", "CKPT": "{checkpoint}",
}
FAST = ["--profile", "tiny", "--device", "cpu"]
METHOD_FILES = {"segment": ("mask.png", "overlay.png", "report.json")}


def readme_commands() -> list[str]:
    """The lines of the bash block under "## Command line", continuations joined, comments dropped."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            lines.append(words)
    return [" ".join(shlex.quote(w) for w in words) for words in lines]


def split_command(line: str) -> tuple[str, list[str], list[list[list[str]]]]:
    """`python -m engine NAME ...` -> (NAME, required words, optional groups as lists of alternatives)."""
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "engine"], line
    name, rest = words[3], words[4:]
    required, groups, current = [], [], None
    for w in rest:
        if current is None and w.startswith("["):
            current, w = [], w[1:]
        if current is None:
            required.append(w)
            continue
        closing = w.endswith("]")
        w = w[:-1] if closing else w
        if w:
            current.append(w)
        if closing:
            alternatives, alt = [], []
            for x in current:
                if x == "|":
                    alternatives.append(alt)
                    alt = []
                else:
                    alt.append(x)
            alternatives.append(alt)
            groups.append(alternatives)
            current = None
    return name, required, groups


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 64 px copy of the README's example photo, a subject mask and a pose file."""
    folder = tmp_path_factory.mktemp("readme-cli")
    example = ROOT / "assets" / "examples" / "cat.png"
    Image.open(example).convert("RGB").resize((64, 64)).save(folder / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(folder / "mask.png")
    from engine.methods import p2pz_generator as G

    config = G.GeneratorConfig(base=8, depth=3, style_dim=16, max_channels=32)
    G.save_checkpoint(G.DistilledGenerator(config), G.DistilledMeta("cat", "dog", 64, config), folder / "ckpt")
    return {"image": str(folder / "in.png"), "mask": str(folder / "mask.png"), "pose": str(folder / "pose.json"),
            "checkpoint": str(folder / "ckpt"), "root": folder}


def fill(words: list[str], files: dict, out: str) -> list[str]:
    values = dict(files, out=out)
    filled = []
    for w in words:
        if w == "...":
            continue
        if w == "assets/examples/cat.png":  # the README's example photo: its 64 px copy
            assert (ROOT / w).is_file()
            w = "IN"
        filled.append(PLACEHOLDERS.get(w, w).format(**values))
    return filled


def test_readme_lists_every_cli_command():
    from engine import methods

    names = [split_command(line)[0] for line in readme_commands()]
    assert sorted(names) == sorted(RUN_EXTRAS), "README's Command line section and RUN_EXTRAS differ"
    assert set(names) - {"--help"} == set(methods.available()) | {"segment"}, \
        "a method of the CLI is missing from README's Command line section (or the README names an unknown one)"


@pytest.mark.parametrize("line", readme_commands())
def test_readme_optional_flags_parse(line, files, tmp_path):
    """Each flag the README shows (every alternative of every [...] group) is one the CLI accepts."""
    from engine.__main__ import build_parser

    name, required, groups = split_command(line)
    if name == "--help":
        return
    for alternatives in groups:
        for alt in alternatives:
            argv = [name] + fill(required + alt, files, str(tmp_path))
            if "grounded-sam|clipseg" in alt:
                argv.remove("grounded-sam|clipseg")
                for value in ("grounded-sam", "clipseg"):
                    build_parser().parse_args(argv + [value])
                continue
            build_parser().parse_args(argv)


def _run(argv: list[str], cache_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", DES_CACHE_DIR=str(cache_dir), PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "engine", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _check_outputs(name: str, argv: list[str], out, proc) -> None:
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}"
    report = json.loads((out / "report.json").read_text())
    assert report["profile"] == "tiny"
    if name == "segment":
        for f in METHOD_FILES["segment"]:
            assert (out / f).is_file(), f
        segmenter = argv[argv.index("--method") + 1] if "--method" in argv else "grounded-sam"
        assert report["method"] == segmenter
        assert {"text", "points", "boxes", "message", "coverage", "seconds"} <= set(report)
        assert Image.open(out / "mask.png").size == (64, 64)
        return
    assert report["method"] == name and {"seed", "params", "seconds", "unet_evals", "intermediates"} <= set(report)
    assert report["unet_evals"]["forward"] > 0 or name == "pix2pix-zero-fast"  # a GAN: no UNet
    n = int(argv[argv.index("--num-results") + 1]) if "--num-results" in argv else 1
    edited = ["edited.png"] + [f"edited_{i}.png" for i in range(1, n)]
    for f in edited:
        assert Image.open(out / f).size == (64, 64), f
    for label, f in report["intermediates"].items():
        assert (out / f).is_file(), f"intermediate {label}: {f} missing"


def _runs():
    for line in readme_commands():
        name = split_command(line)[0]
        yield pytest.param(line, [], id=name)
        for extra_name, extra in EXTRA_RUNS:
            if extra_name == name:
                yield pytest.param(line, extra, id=f"{name}-{extra[0].lstrip('-')}")


@pytest.mark.parametrize("line, extra", list(_runs()))
def test_readme_command_runs(line, extra, files, tiny_models, tmp_path):
    name, required, _groups = split_command(line)
    out = tmp_path / "out"
    if name == "--help":
        proc = _run(["--help"], tiny_models.cache_dir)
        assert proc.returncode == 0
        from engine import methods

        for method in list(methods.available()) + ["segment"]:
            assert method in proc.stdout
        return
    argv = [name] + fill(required, files, str(out)) + fill(RUN_EXTRAS[name] + extra, files, str(out)) + FAST
    if name != "segment":
        argv += ["--resolution", "64"]
    assert "--image" in argv and "--out" in argv
    proc = _run(argv, tiny_models.cache_dir)
    _check_outputs(name, argv, out, proc)
