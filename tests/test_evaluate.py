"""bench.evaluate end to end on the tiny profile: three generated photos, tiny step counts, both reports."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bench import evaluate as E
from bench.paper_numbers import PAPER_ROWS, row_for
from bench.tasks import METRICS, TASKS


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three 64 px "photos" (a blob on a background), their object masks and one prompt override."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "masks").mkdir()
    for i in range(3):
        box = (14 + 4 * i, 14, 46 + 2 * i, 52)
        im = Image.new("RGB", (64, 64), (40 + 60 * i, 120, 200 - 50 * i))
        ImageDraw.Draw(im).ellipse(box, fill=(220, 180 - 40 * i, 90))
        im.save(folder / f"photo{i}.png")
        m = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(m).ellipse(box, fill=255)
        m.save(folder / "masks" / f"photo{i}.png")
    (folder / "prompts.json").write_text(json.dumps({"photo2.png": {"target_prompt": "a photo of a puppy"}}))
    return folder


@pytest.fixture()
def cache_env(model_dir, monkeypatch):
    monkeypatch.setenv("DES_CACHE_DIR", str(model_dir))


def _common(photos, out):
    return ["--task", "cat-dog", "--images", str(photos), "--out", str(out), "--profile", "tiny",
            "--device", "cpu", "--resolution", "64"]


def _check_reports(out, method, baseline, metrics, count=3):
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == method and results["baseline"] == baseline and results["count"] == count
    assert results["metrics"] == metrics and results["real_weights"] is False
    assert [c["seed"] for c in results["cases"]] == list(range(count))
    sides = ["ours"] + (["baseline"] if baseline != "none" else [])
    for side in sides:
        for m in metrics:
            values = [c[side][m] for c in results["cases"]]
            assert all(isinstance(v, float) and math.isfinite(v) for v in values), (side, m, values)
            assert results["summary"][side][m] == pytest.approx(sum(values) / len(values))
        for c in results["cases"]:
            assert (out / c["images"][side]).is_file() and (out / c["images"]["input"]).is_file()
    grid = Image.open(out / "grid.png")
    assert grid.height > count * 256 and grid.width > len(sides) * 256
    report = (out / "report.md").read_text()
    assert "![input | ours | baseline](grid.png)" in report and "Random weights" in report
    return results, report


def test_sdedit_with_the_ddim_baseline_end_to_end(photos, tmp_path, cache_env, capsys):
    out = tmp_path / "sdedit"
    code = E.main(["--method", "sdedit", *_common(photos, out), "--set", "steps=4",
                   "--baseline", "ddim-swap", "--baseline-set", "steps=3"])
    assert code == 0, capsys.readouterr().err
    results, report = _check_reports(out, "sdedit", "ddim-swap", ["clip_acc", "bg_lpips", "structure_dist"])
    for c in results["cases"]:
        assert c["mask"] == "file" and c["ours"]["clip_acc"] in (0.0, 100.0)
        assert c["unet_evals_baseline"]["forward"] == 6  # 3 inversion + 3 sampling steps
    assert results["cases"][2]["target_prompt"] == "a photo of a puppy"  # prompts.json override
    assert results["cases"][0]["target_prompt"] == "a photo of a dog"
    assert results["settings"] == {"method": {"steps": 4}, "baseline": {"steps": 3}}
    assert isinstance(results["method_notes"], list) and results["scored"] == 3
    # the paper's rows beside ours: SDEdit + word swap (our method here) and DDIM + word swap
    assert "| CLIP-Acc (%) ↑ |" in report and "71.2" in report and "72.0" in report and "92.4" in report
    assert "pix2pix-zero paper: SDEdit [35] + word swap" in report and "paper: DDIM + word swap" in report
    assert report in capsys.readouterr().out


def test_pix2pix_zero_end_to_end(photos, tmp_path, cache_env, capsys):
    from engine import methods

    if "pix2pix-zero" not in methods.available():
        pytest.skip("pix2pix-zero is not in this checkout")
    out = tmp_path / "p2pz"
    code = E.main(["--method", "pix2pix-zero", *_common(photos, out), "--set", "steps=10", "--set", "reg_iters=0",
                   "--set", "caption=a photo of a cat", "--baseline", "none"])
    assert code == 0, capsys.readouterr().err
    results, report = _check_reports(out, "pix2pix-zero", "none", ["clip_acc", "bg_lpips", "structure_dist"])
    assert all(c["unet_evals_ours"]["backward"] == 10 for c in results["cases"])  # the guided edit ran
    assert "pix2pix-zero paper: pix2pix-zero (ours)" in report and "0.044" in report


@pytest.mark.parametrize("task", ["iedit-real", "imagenet-class", "cub", "tedbench"])
def test_every_metric_runs_on_its_task(task, photos, tmp_path, cache_env, capsys):
    """One photo per task, no masks folder: iEdit's SSIM-M then gets a CLIPSeg mask."""
    out = tmp_path / task
    code = E.main(["--method", "sdedit", "--task", task, "--images", str(photos), "--out", str(out),
                   "--masks", str(tmp_path / "none"), "--profile", "tiny", "--device", "cpu", "--resolution", "64",
                   "--limit", "1", "--set", "steps=2", "--baseline-set", "steps=2"])
    assert code == 0, capsys.readouterr().err
    results, report = _check_reports(out, "sdedit", "sdedit-swap", list(TASKS[task].metrics), count=1)
    case = results["cases"][0]
    if task == "iedit-real":
        assert case["mask"] == "clipseg" and (out / case["images"]["mask"]).is_file()
    if task == "imagenet-class":
        assert case["ours"]["pick_preference"] + case["baseline"]["pick_preference"] == pytest.approx(1.0)
        assert case["ours"]["class_acc_new"] + case["ours"]["class_acc_orig"] in (0.0, 100.0)
    for row in PAPER_ROWS[task]:
        assert row.row in report


def test_bad_settings_exit_2_with_one_line(photos, tmp_path, cache_env, capsys):
    for extra in (["--set", "nosuch=1"], ["--task", "cat-cow"], ["--limit", "0"],
                  ["--baseline-set", "eta=0.5"], ["--baseline", "ddim-swap", "--baseline-set", "strength=0.5"],
                  ["--set", "steps=0"]):
        args = ["--method", "sdedit", *_common(photos, tmp_path / "bad"), *extra]
        assert E.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err


def test_a_missing_method_is_named(photos, tmp_path, monkeypatch, capsys):
    from engine import methods

    only = {"sdedit": methods.available()["sdedit"]}
    monkeypatch.setattr(methods, "available", lambda: only)
    assert E.main(["--method", "ito", *_common(photos, tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'ito' is not in this checkout yet" in err and "engine/methods/ito.py" in err


def test_tasks_and_paper_numbers_fit_together(capsys):
    assert E.main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name, task in TASKS.items():
        assert name in listed
        assert set(task.metrics) <= set(METRICS)
        assert task.source.lower() in task.source_prompt.lower()
        for row in PAPER_ROWS.get(name, []):
            assert set(row.values) <= set(task.metrics), (name, row.row)
    # spot checks against the papers' tables
    assert row_for("cat-dog", "method").values == {"clip_acc": 92.4, "bg_lpips": 0.182, "structure_dist": 0.044}
    assert row_for("horse-zebra", "ddim-swap").values["structure_dist"] == 0.123
    assert row_for("coco", "method").values == {"lpips": 0.301, "clip_score": 24.30}
    assert row_for("iedit-real", "method").values["ssim_mbar"] == 80.44
    assert row_for("imagenet-class", "method").values["pick_preference"] == 0.41
    assert row_for("tedbench", "method").values["clip_cos"] == 0.35
    assert np.isclose(sum(r.values["pick_preference"] for r in PAPER_ROWS["imagenet-class"]), 0.99)


def test_every_method_gets_its_inputs_from_the_task(photos):
    """Each method present reads the task's words under its own field names (nothing is run)."""
    from engine import methods
    from bench.runners import build_inputs, method_module
    from bench.tasks import load_cases

    expect = {"sdedit": ("cat-dog", {"prompt": "a photo of a dog"}),
              "pix2pix-zero": ("cat-dog", {"source": "cat", "target": "dog", "caption": None}),
              "ito": ("imagenet-class", {"prompt": "a photo of a dog", "caption": "a photo of a tabby cat"}),
              "iir-net": ("coco", {"prompt": "a photo of a dog", "roi_text": "cat"}),
              "iedit": ("iedit-real", {"prompt": "a photograph of a tiger", "mask_text": "cat", "num_results": 1}),
              "layer-diffusion": ("tedbench", {"text": "a photo of a dog jumping", "keep_background": True,
                                               "background_text": "in the same scene"})}
    for name in methods.available():
        if name not in expect:
            continue
        task, fields = expect[name]
        case = load_cases(photos, TASKS[task], 64, limit=1)[0]
        inputs = build_inputs(method_module(name), case, 7, 64, {"steps": 12})
        assert inputs.image is case.image and inputs.seed == 7 and inputs.resolution == 64 and inputs.steps == 12
        for key, value in fields.items():
            assert getattr(inputs, key) == value, (name, key)
        if name == "layer-diffusion":
            assert inputs.subject_mask is not None  # the mask file of the photo


def test_a_metric_network_that_cannot_load_leaves_its_metrics_empty(photos, tmp_path, tiny_models, monkeypatch):
    real_get = tiny_models.get

    def get(name):
        if name == "dino":
            raise OSError("facebook/dino-vitb8 is not on this machine")
        return real_get(name)

    monkeypatch.setattr(tiny_models, "get", get)
    out = tmp_path / "nodino"
    results = E.evaluate("sdedit", TASKS["cat-dog"], photos, out, tiny_models, limit=1, resolution=64,
                         baseline="none", method_settings={"steps": 2})
    case = results["cases"][0]
    assert "structure_dist" not in case["ours"] and set(case["ours"]) == {"clip_acc", "bg_lpips"}
    assert results["summary"]["ours"]["structure_dist"] is None
    assert any("dino could not be loaded" in n for n in results["notes"])
    report = (out / "report.md").read_text()
    assert "| Structure Dist ↓ | — | 0.081 |" in report and "dino could not be loaded" in report
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["ours"]["structure_dist"] is None


def test_a_photo_the_method_refuses_is_reported_and_the_rest_scored(photos, tmp_path, cache_env):
    import shutil

    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("photo0.png", "photo1.png"):
        shutil.copy(photos / name, folder / name)
    (folder / "prompts.json").write_text(json.dumps({"photo1.png": {"target_prompt": " "}}))
    out = tmp_path / "out"
    assert E.main(["--method", "sdedit", "--task", "cat-dog", "--images", str(folder), "--out", str(out),
                   "--profile", "tiny", "--device", "cpu", "--resolution", "64", "--set", "steps=2",
                   "--baseline", "none"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["count"] == 2 and results["scored"] == 1
    bad = results["cases"][1]
    assert "prompt is empty" in bad["error"] and "ours" not in bad
    assert results["summary"]["ours"]["clip_acc"] == results["cases"][0]["ours"]["clip_acc"]
    report = (out / "report.md").read_text()
    assert "1 of 2 photo(s) scored" in report and "| photo1 | not scored: prompt is empty" in report
