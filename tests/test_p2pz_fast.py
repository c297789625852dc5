"""pix2pix-zero's distilled model in use (engine.methods.pix2pix_zero_fast): the edit is the
checkpoint's generator applied at its resolution, the cached generator is never changed by a
request, bad checkpoints are refused with a sentence, and the real CLI (one photo or a folder)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.methods import p2pz_generator as G
from engine.methods import pix2pix_zero_fast as fast
from tests.conftest import ROOT

CAT = ROOT / "assets" / "examples" / "cat.png"
CONFIG = G.GeneratorConfig(base=8, depth=3, style_dim=16, max_channels=32)  # multiple of 8


def make_checkpoint(folder: Path, resolution: int = 64, source="cat", target="dog", seed=0) -> Path:
    """A small generator whose output differs from its input (to_rgb is zero when untrained)."""
    torch.manual_seed(seed)
    generator = G.DistilledGenerator(CONFIG)
    with torch.no_grad():
        generator.to_rgb.weight.normal_(0, 0.2)
        generator.to_rgb.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    return G.save_checkpoint(generator, G.DistilledMeta(source, target, resolution, CONFIG), folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("distilled") / "cat2dog")


def _run(checkpoint, photo, models, resolution=None):
    return fast.run(fast.Pix2PixZeroFastInputs(photo, str(checkpoint), resolution), models)


def test_run_is_the_generator_applied_at_the_checkpoint_resolution(checkpoint, photo, tiny_models):
    result = _run(checkpoint, photo, tiny_models)
    generator, meta = G.load_checkpoint(checkpoint)
    expected = G.apply(generator, photo, meta.resolution)
    assert np.array_equal(np.asarray(result.image), np.asarray(expected))
    assert max(result.image.size) == 64 and result.image.size == G.working_size(photo.size, 64, 8)
    # the edit changes the photo (not an identity generator)
    assert not np.array_equal(np.asarray(result.image), np.asarray(photo.resize(result.image.size)))
    assert result.params["direction"] == {"source": "cat", "target": "dog"}
    assert result.params["resolution"] == 64 and result.unet_evals == {"forward": 0, "backward": 0}
    assert {"load", "edit", "total"} <= set(result.seconds) and result.seconds["total"] >= result.seconds["edit"]
    assert any("cat → dog" in n for n in result.notes)
    again = _run(checkpoint, photo, tiny_models)
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))  # deterministic (z = 0)
    assert again.params["loaded_from_cache"] is True
    # an explicit resolution is honoured
    assert max(_run(checkpoint, photo, tiny_models, resolution=96).image.size) == 96


def test_shape_follows_the_checkpoint_resolution(tmp_path, photo, tiny_models):
    ck = make_checkpoint(tmp_path / "big", resolution=128)
    assert max(_run(ck, photo, tiny_models).image.size) == 128


def test_a_request_leaves_the_cached_generator_unchanged(checkpoint, photo, tiny_models):
    generator, _meta, _ = fast.load(checkpoint, tiny_models.device, fast.dtype_for(tiny_models.device))
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    _run(checkpoint, photo, tiny_models)
    _run(checkpoint, photo.rotate(90, expand=True), tiny_models, resolution=96)
    cached, _meta, was_cached = fast.load(checkpoint, tiny_models.device, fast.dtype_for(tiny_models.device))
    assert was_cached and cached is generator
    after = generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not generator.training and not any(p.requires_grad for p in generator.parameters())


def test_a_checkpoint_rewritten_on_disk_is_reloaded(tmp_path, photo, tiny_models):
    ck = make_checkpoint(tmp_path / "ck", seed=1)
    first = _run(ck, photo, tiny_models).image
    make_checkpoint(ck, seed=2)
    os.utime(ck / G.WEIGHTS, ns=(1, 10**18))  # a different mtime even within the clock's resolution
    second = _run(ck, photo, tiny_models)
    assert second.params["loaded_from_cache"] is False
    assert not np.array_equal(np.asarray(first), np.asarray(second.image))


def _bad_checkpoints(root: Path, good: Path) -> dict:
    cases = {"missing folder": (root / "nowhere", "no distilled checkpoint folder")}
    pt = root / "generator.pt"
    torch.save({"x": torch.zeros(1)}, pt)
    cases["a .pt pickle file"] = (pt, "pickle")
    pickled = root / "pickled"
    pickled.mkdir()
    shutil.copy(good / G.META, pickled / G.META)
    torch.save({"x": torch.zeros(1)}, pickled / "generator.pth")
    cases["a folder with a pickle"] = (pickled, "pickle")
    shapes = root / "shapes"
    other = G.DistilledGenerator(G.GeneratorConfig(base=4, depth=3, style_dim=16, max_channels=32))
    G.save_checkpoint(other, G.DistilledMeta("cat", "dog", 64, other.config), shapes)
    meta = json.loads((shapes / G.META).read_text())
    meta["generator"]["base"] = 8  # the JSON says base 8, the weights are base 4
    (shapes / G.META).write_text(json.dumps(meta))
    cases["wrong weight shapes"] = (shapes, "does not match")
    for name, value, message in (("resolution 3000", 3000, "resolution"), ("resolution 100", 100, "multiple of 8"),
                                 ("resolution text", "64", "resolution")):
        folder = root / name.replace(" ", "_")
        shutil.copytree(good, folder)
        meta = json.loads((folder / G.META).read_text())
        meta["resolution"] = value
        (folder / G.META).write_text(json.dumps(meta))
        cases[name] = (folder, message)
    wrong = root / "format"
    shutil.copytree(good, wrong)
    meta = json.loads((wrong / G.META).read_text())
    meta["format"] = "something-else"
    (wrong / G.META).write_text(json.dumps(meta))
    cases["wrong format"] = (wrong, "not a distilled pix2pix-zero checkpoint")
    empty = root / "empty"
    empty.mkdir()
    cases["an empty folder"] = (empty, "distilled.json is missing")
    cases["nothing chosen"] = ("", "no distilled checkpoint was given")
    return cases


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, checkpoint) -> dict:
    return _bad_checkpoints(tmp_path_factory.mktemp("bad"), checkpoint)


def test_bad_checkpoints_are_refused_with_a_sentence(bad_checkpoints, photo, tiny_models):
    for name, (path, message) in bad_checkpoints.items():
        with pytest.raises(ValueError, match=message):
            _run(path, photo, tiny_models)


def test_bad_resolution_and_photo_are_refused(checkpoint, photo, tiny_models):
    for value, message in ((100, "multiple of 8"), (4096, "multiple of 8"), (64.5, "whole number")):
        with pytest.raises(ValueError, match=message):
            _run(checkpoint, photo, tiny_models, resolution=value)
    with pytest.raises(ValueError, match="upload a photo"):
        _run(checkpoint, None, tiny_models)
    with pytest.raises(ValueError, match="must be a folder path"):  # an API client sending a list
        fast.run(fast.Pix2PixZeroFastInputs(photo, ["a", "b"]), tiny_models)


# -- the real command line ------------------------------------------------------------------------
def _cli(argv, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               DES_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "engine", "pix2pix-zero-fast", *argv, "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_one_photo_writes_edited_png_and_report(checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = _cli(["--checkpoint", str(checkpoint), "--image", str(CAT), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "pix2pix-zero-fast"
    assert {"seed", "params", "seconds", "unet_evals", "intermediates", "notes"} <= set(report)
    assert {"load", "edit", "total"} <= set(report["seconds"])
    assert report["params"]["direction"] == {"source": "cat", "target": "dog"}
    assert max(Image.open(out / "edited.png").size) == 64


def test_cli_folder_of_photos_gives_one_output_each(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(CAT, photos / "cat.png")
    shutil.copy(ROOT / "assets" / "examples" / "coffee.png", photos / "coffee.png")
    Image.open(CAT).convert("RGB").save(photos / "cat_again.jpg")
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    proc = _cli(["--checkpoint", str(checkpoint), "--image", str(photos), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert sorted(f["input"] for f in report["files"]) == ["cat.png", "cat_again.jpg", "coffee.png"]
    for item in report["files"]:
        assert max(Image.open(out / item["output"]).size) == 64
    assert sorted(p.name for p in out.glob("*.png")) == ["cat.png", "cat_again.png", "coffee.png"]
    assert report["params"]["images"] == 3 and report["method"] == "pix2pix-zero-fast"


def test_cli_bad_checkpoint_exits_2_with_one_line(bad_checkpoints, tmp_path):
    for name in ("missing folder", "a .pt pickle file", "wrong weight shapes"):
        path, message = bad_checkpoints[name]
        proc = _cli(["--checkpoint", str(path), "--image", str(CAT), "--out", str(tmp_path / "o")], tmp_path)
        assert proc.returncode == 2, (name, proc.stderr)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, proc.stderr)
        assert "Traceback" not in proc.stderr
