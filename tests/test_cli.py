"""The CLI contract: python -m engine METHOD ... writes edited.png and report.json; bad input exits 2."""
import json
import os
import subprocess
import sys

from PIL import Image

from engine.__main__ import main
from tests.ui_helpers import ROOT

CAT = str(ROOT / "assets" / "examples" / "cat.png")


def test_sdedit_writes_the_contract(tmp_path, model_dir, capsys):
    out = tmp_path / "run"
    mask = tmp_path / "mask.png"
    Image.new("L", (451, 300), 255).save(mask)
    code = main(["sdedit", "--image", CAT, "--out", str(out), "--prompt", "a dog", "--profile", "tiny",
                 "--resolution", "128", "--steps", "6", "--seed", "3", "--mask", str(mask), "--num-results", "2"]
                + ["--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert (out / "edited.png").exists() and (out / "edited_1.png").exists()
    report = json.loads((out / "report.json").read_text())
    assert {"method", "profile", "seed", "params", "seconds", "unet_evals", "intermediates"} <= set(report)
    assert report["method"] == "sdedit" and report["profile"] == "tiny" and report["seed"] == 3
    assert report["params"]["prompt"] == "a dog" and report["params"]["strength"] == 0.7
    assert "total" in report["seconds"]
    assert set(report["unet_evals"]) == {"forward", "backward"} and report["unet_evals"]["forward"] == 4
    assert report["intermediates"] == {"mask": "mask.png"} and (out / "mask.png").exists()
    assert Image.open(out / "edited.png").size == (128, 88)


def _cli(args, tmp_path, model_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", DES_CACHE_DIR=str(model_dir))
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_bad_input_exits_2_with_one_line(tmp_path, model_dir):
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    for args in (["--image", str(not_image), "--prompt", "x"],
                 ["--image", CAT, "--prompt", "x", "--strength", "3"],
                 ["--image", CAT, "--prompt", "x", "--mask", str(tmp_path / "missing.png")]):
        res = _cli(["sdedit", "--out", str(tmp_path / "o"), "--profile", "tiny", "--resolution", "64", *args],
                   tmp_path, model_dir)
        assert res.returncode == 2, res.stderr
        lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert "Traceback" not in res.stderr


def test_help_lists_every_method(tmp_path, model_dir):
    from engine import methods

    res = _cli(["--help"], tmp_path, model_dir)
    assert res.returncode == 0
    for name in methods.available():
        assert name in res.stdout
    assert "segment" in res.stdout
