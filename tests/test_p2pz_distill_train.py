"""pix2pix-zero distillation (papers/pix2pix-zero.txt, Sec. 4.5 and Appendix A): the pairs job and its
two filters (engine/train/p2pz_pairs.py), the GAN trainer (engine/train/p2pz_distill.py). Tiny
profile, 64 px; the training tests use synthetic pairs (the target is a colour transform of the
input) written in the pairs folder format. Breakages: tests/mutants/m_p2pz_distill.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine.train import p2pz_distill as T
from engine.train import p2pz_pairs as P
from tests.launch_helpers import ROOT, launch

EXAMPLES = ROOT / "assets" / "examples"
PAIR_ARGS = ["--direction", "cat -> dog", "--steps", "10", "--resolution", "64", "--profile", "tiny", "--quiet"]
TRAIN_STEPS = 40


def _train_args(pairs, out, steps=TRAIN_STEPS, *extra):
    return ["train", "--pairs", str(pairs), "--out", str(out), "--steps", str(steps), "--batch", "4",
            "--resolution", "64", "--profile", "tiny", "--workers", "0", "--save-every", "20", "--quiet", *extra]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("p2pz_photos")
    for name in ("cat.png", "coffee.png", "grass.png"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


def _write_pairs(folder: Path, n: int = 4) -> Path:
    """Synthetic pairs in the `pairs` format: 96x96 photos, target = 0.6 x + a tint (a colour transform)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(["cat.png", "coffee.png", "astronaut.png", "grass.png"][:n]):
        x = Image.open(EXAMPLES / name).convert("RGB").resize((96, 96), Image.LANCZOS)
        a = np.asarray(x, np.float32)
        y = Image.fromarray(np.clip(0.6 * a + np.array([110, -20, 50]), 0, 255).astype(np.uint8))
        x.save(folder / "images" / f"p{i}_input.png")
        y.save(folder / "images" / f"p{i}_edit.png")
        rows.append({"key": name, "input": f"images/p{i}_input.png", "edit": f"images/p{i}_edit.png"})
    manifest = {"format": P.PAIRS_FORMAT, "version": 1, "direction": {"source": "cat", "target": "dog"},
                "pairs": rows, "dropped": [{"key": "x.png", "reason": "CLIP gain 0.01 < 0.10"}]}
    (folder / P.PAIRS).write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def syn_pairs(tmp_path_factory):
    return _write_pairs(tmp_path_factory.mktemp("p2pz_syn_pairs"))


@pytest.fixture(scope="module")
def trained(syn_pairs, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("p2pz_trained") / "ckpt"
    assert T.main(_train_args(syn_pairs, out), models=tiny_models) == 0
    progress = json.loads((out / "checkpoints" / f"checkpoint-{TRAIN_STEPS:06d}" / "progress.json").read_text())
    return out, progress["record"]


# -- the filters (Appendix A) ---------------------------------------------------------------------
def test_filter_scores_are_iou_and_clip_gain(monkeypatch):
    """overlap = IoU(mask of the source word on the input, mask of the target word on the edit);
    gain = cos(edit, T) - cos(input, T). Every other pairing gives another number."""
    photo, edited = Image.new("RGB", (8, 8), (10, 0, 0)), Image.new("RGB", (8, 8), (200, 0, 0))

    def rows(lo, hi):
        m = np.zeros((8, 8), bool)
        m[lo:hi] = True
        return m

    masks = {("input", "cat"): rows(0, 4), ("edit", "dog"): rows(2, 6),   # IoU 16 / 48
             ("input", "dog"): rows(0, 8), ("edit", "cat"): rows(5, 8)}

    def which(im):
        return "input" if im.getpixel((0, 0))[0] == 10 else "edit"

    monkeypatch.setattr(P, "segment_mask", lambda models, seg, im, phrase, thr: masks[(which(im), phrase)])
    emb = {"input": torch.tensor([1.0, 0.0, 0.0]), "edit": torch.tensor([0.6, 0.8, 0.0])}
    import engine.core.clip as C

    monkeypatch.setattr(C, "image_embeddings", lambda clip, ims: torch.stack([emb[which(im)] for im in ims]))
    monkeypatch.setattr(C, "text_embeddings", lambda clip, texts: torch.tensor([[0.8, 0.6, 0.0]]))

    class Models:
        def get(self, name):
            return None

    s = P.score_pair(Models(), photo, edited, "cat", "dog", "a photo of a dog", "clipseg")
    assert s["overlap"] == pytest.approx(16 / 48, abs=1e-6)
    assert s["clip_input"] == pytest.approx(0.8) and s["clip_edit"] == pytest.approx(0.96)
    assert s["clip_gain"] == pytest.approx(0.16, abs=1e-6)
    assert P.mask_iou(rows(0, 0), rows(0, 0)) == 0.0
    assert P.score_pair(Models(), photo, edited, "cat", "dog", "t", None)["overlap"] is None


def test_filter_decision_uses_both_thresholds():
    rec = {"overlap": 0.70, "clip_gain": 0.10, "clip_input": 0.2, "clip_edit": 0.3}
    assert P.drop_reason(rec, 0.70, 0.10) is None  # at the threshold: kept
    low_overlap = P.drop_reason(dict(rec, overlap=0.69), 0.70, 0.10)
    assert low_overlap.startswith("segmentation overlap 0.690 < 0.70") and "CLIP" not in low_overlap
    low_gain = P.drop_reason(dict(rec, clip_gain=0.09), 0.70, 0.10)
    assert low_gain.startswith("CLIP gain 0.090 < 0.10") and "segmentation" not in low_gain
    assert "; " in P.drop_reason(dict(rec, overlap=0.1, clip_gain=-0.5), 0.70, 0.10)
    assert P.drop_reason(dict(rec, overlap=0.0), 0.0, 0.10) is None  # trees: the segmentation filter off
    assert P.drop_reason(dict(rec, overlap=None), 0.0, 0.10) is None
    assert P.drop_reason(dict(rec, overlap=0.99, clip_gain=0.5), 0.70, 0.10) is None


# -- the pairs job ---------------------------------------------------------------------------------
def test_pairs_job_drops_keeps_and_resumes(photos, tiny_models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pairs"
    # an unreachable CLIP gain: every pair is dropped and listed with its reason
    assert T.main(["pairs", *PAIR_ARGS, "--images", str(photos), "--out", str(out), "--min-clip-gain", "2"],
                  models=tiny_models) == 0
    m = json.loads((out / P.PAIRS).read_text())
    assert m["pairs"] == [] and [d["key"] for d in m["dropped"]] == ["cat.png", "coffee.png", "grass.png"]
    for d in m["dropped"]:
        assert "CLIP gain" in d["reason"] and "< 2.00" in d["reason"]
        assert d["overlap"] is not None and 0 <= d["overlap"] <= 1
    err = capsys.readouterr().err
    assert all(f"dropped {k}: CLIP gain" in err for k in ("cat.png", "coffee.png", "grass.png"))

    # permissive thresholds: the finished items are re-filtered, not re-edited
    import engine.methods.pix2pix_zero as PZ

    real_run, calls = PZ.run, []

    def counting_run(inputs, models, *a, **k):
        calls.append(inputs.image)
        return real_run(inputs, models, *a, **k)

    monkeypatch.setattr(PZ, "run", counting_run)
    permissive = ["pairs", *PAIR_ARGS, "--images", str(photos), "--out", str(out), "--min-overlap", "0",
                  "--min-clip-gain", "-2"]
    assert T.main(permissive, models=tiny_models) == 0
    m = json.loads((out / P.PAIRS).read_text())
    assert calls == [] and m["dropped"] == [] and len(m["pairs"]) == 3
    for row in m["pairs"]:
        a, b = Image.open(out / row["input"]), Image.open(out / row["edit"])
        assert a.size == b.size and max(a.size) == 64
    # an item whose output is gone is redone, the others skipped
    (out / m["pairs"][1]["edit"]).unlink()
    assert T.main(permissive, models=tiny_models) == 0
    assert [Path(str(c)).name for c in calls] == ["coffee.png"]
    assert "(2 finished before)" in capsys.readouterr().err
    # the pairs folder is what training reads
    manifest, pairs = T.read_pairs(out, 3)
    assert manifest["direction"] == {"source": "cat", "target": "dog"} and len(pairs) == 3


def test_pairs_cli_bad_input(photos, tiny_models, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(["--images", str(tmp_path / "nope")], "no image folder"),
             (["--images", str(empty)], "holds no images"),
             (["--images", str(photos), "--direction", "cat dog"], "source -> target"),
             (["--images", str(photos), "--min-overlap", "1.5"], "--min-overlap"),
             (["--images", str(photos), "--min-clip-gain", "3"], "--min-clip-gain"),
             (["--images", str(photos), "--limit", "0"], "--limit")]
    for extra, words in cases:
        rc = T.main(["pairs", *PAIR_ARGS, "--out", str(tmp_path / "o"), *extra], models=tiny_models)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], (extra, err)


# -- augmentation ----------------------------------------------------------------------------------
def _pattern(h=80, w=96):
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, h, w, generator=g) * 2 - 1


def test_augmentation_keeps_the_pair_aligned():
    """A pair whose target is its input stays equal: the same crop window and colour transform on
    both; the noise goes to the input only."""
    x = _pattern()
    for seed in range(6):
        a, b = T.augment(x, x.clone(), torch.Generator().manual_seed(seed), 64, noise=0.0)
        assert a.shape == b.shape == (3, 64, 64)
        assert torch.allclose(a, b, atol=1e-6)
        na, nb = T.augment(x, x.clone(), torch.Generator().manual_seed(seed), 64, noise=0.2)
        assert torch.allclose(nb, b, atol=1e-6) and not torch.allclose(na, b, atol=1e-6)


def test_augmentation_varies(monkeypatch):
    """Random crops (with the colour transform neutralised, each output is a window of the input,
    and the windows differ) and a random colour transform (a flat image changes colour)."""
    x = _pattern()
    flat = torch.full((3, 64, 64), 0.2) * torch.tensor([1.0, -0.5, 0.3]).view(3, 1, 1)
    colours = [T.augment(flat, flat, torch.Generator().manual_seed(s), 64, noise=0.0)[0].mean(dim=(1, 2))
               for s in range(6)]
    assert min((colours[0] - c).abs().max() for c in colours[1:]) > 0.005
    monkeypatch.setattr(T, "JITTER", {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0})
    windows = set()
    for s in range(8):
        out, _ = T.augment(x, x, torch.Generator().manual_seed(s), 64, noise=0.0)
        found = [(t, l) for t in range(x.shape[1] - 63) for l in range(x.shape[2] - 63)
                 if torch.allclose(out, x[:, t:t + 64, l:l + 64], atol=1e-4)]
        assert len(found) == 1, f"seed {s}: the output is not one window of the input"
        windows.add(found[0])
    assert len(windows) >= 4, windows


# -- the objective -------------------------------------------------------------------------------
def test_generator_objective_is_l1_lpips_and_nonsaturating_adv(tiny_models):
    g = torch.Generator().manual_seed(1)
    fake = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1).requires_grad_(True)
    target = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    d_fake = torch.randn(2, 1, 4, 4, generator=g) + 1.0
    lp = tiny_models.get("lpips")
    out = T.generator_losses(fake, target, d_fake, lp, 1.5, 0.7, 0.3)
    (grad,) = torch.autograd.grad(out["lpips"], fake, retain_graph=True)  # LPIPS is differentiable
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    out = {k: v.detach() for k, v in out.items()}
    with torch.no_grad():
        l1 = (fake - target).abs().mean()
        lpips = lp(fake, target).mean()
    adv = -torch.log(torch.sigmoid(d_fake)).mean()  # non-saturating: -log D(G(x))
    assert float(out["lpips"]) == pytest.approx(float(lpips), rel=1e-5) and float(lpips) > 0
    assert float(out["adv"]) == pytest.approx(float(adv), rel=1e-5)
    assert float(out["total"]) == pytest.approx(float(1.5 * l1 + 0.7 * lpips + 0.3 * adv), rel=1e-5)
    assert float(out["recon"]) == pytest.approx(float(1.5 * l1 + 0.7 * lpips), rel=1e-5)


def test_discriminator_objective_is_logistic():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    want = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert float(T.discriminator_loss(real, fake)) == pytest.approx(float(want), rel=1e-6)


# -- training ----------------------------------------------------------------------------------------
def test_training_losses_fall(trained):
    _, record = trained
    evals = record["eval"]
    assert [e[0] for e in evals] == [0, 20, TRAIN_STEPS]
    assert evals[-1][1] < 0.8 * evals[0][1], evals  # the fixed batch's reconstruction loss
    recon = record["loss"]["recon"]
    assert len(recon) == TRAIN_STEPS and np.mean(recon[-10:]) < np.mean(recon[:10])
    assert all(np.isfinite(record["loss"]["d"])) and all(np.isfinite(record["loss"]["adv"]))


def _pair_tensors(folder):
    from engine.methods.p2pz_generator import to_tensor

    _, pairs = T.read_pairs(folder, 4)
    return [(to_tensor(Image.open(a)), to_tensor(Image.open(b))) for a, b in pairs]


def test_overfitting_four_pairs_approaches_the_teacher(trained, syn_pairs):
    """The trained generator's output is clearly closer (L1) to the teacher's edits than the input
    photo is; an untrained one is the identity (its to_rgb starts at zero)."""
    from engine.methods.p2pz_generator import SIZES, DistilledGenerator, load_checkpoint

    gen, meta = load_checkpoint(trained[0])
    untrained = DistilledGenerator(SIZES["small"]).eval()
    ratios = []
    with torch.no_grad():
        for x, y in _pair_tensors(syn_pairs):
            base = float((x - y).abs().mean())
            assert float((untrained(x) - y).abs().mean()) == pytest.approx(base, abs=1e-6)
            ratios.append(float((gen(x) - y).abs().mean()) / base)
    assert max(ratios) < 0.75, ratios


def test_training_checkpoint_and_resume(trained, syn_pairs, tiny_models, tmp_path, capsys):
    out, record = trained
    meta = json.loads((out / "distilled.json").read_text())
    assert meta["direction"] == {"source": "cat", "target": "dog"} and meta["resolution"] == 64
    training = meta["training"]
    assert training["steps"] == TRAIN_STEPS and training["pairs"] == 4 and training["pairs_dropped"] == 1
    assert training["finished"] and training["batch"] == 4 and training["lr"] == 0.001
    assert set(training["final_losses"]) == {"l1", "lpips", "adv", "recon", "d"}
    # resumed from step 20, the run ends with the uninterrupted run's weights
    other = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints" / "checkpoint-000020", other / "checkpoints" / "checkpoint-000020")
    assert T.main(_train_args(syn_pairs, other, TRAIN_STEPS, "--resume"), models=tiny_models) == 0
    a, b = load_file(str(out / "generator.safetensors")), load_file(str(other / "generator.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    # a finished checkpoint is not overwritten without --resume / --overwrite
    assert T.main(_train_args(syn_pairs, out, 2), models=tiny_models) == 2
    assert "already holds a distilled checkpoint" in capsys.readouterr().err


def test_train_cli_bad_input(syn_pairs, tiny_models, tmp_path, capsys):
    no_manifest = tmp_path / "no_manifest"
    no_manifest.mkdir()
    few = _write_pairs(tmp_path / "few", n=2)
    cases = [(_train_args(tmp_path / "missing", tmp_path / "o"), "no pairs folder"),
             (_train_args(no_manifest, tmp_path / "o"), "has no pairs.json"),
             (_train_args(few, tmp_path / "o"), "at least 4"),
             (_train_args(syn_pairs, tmp_path / "o", 10, "--resolution", "80"), "--resolution"),
             (_train_args(syn_pairs, tmp_path / "o", 10, "--lr", "0"), "--lr"),
             (_train_args(syn_pairs, tmp_path / "o", 10, "--grad-accum", "2"), "--grad-accum"),
             (_train_args(syn_pairs, tmp_path / "o", 10, "--l1-weight", "0", "--lpips-weight", "0"), "both be 0")]
    for args, words in cases:
        rc = T.main(args, models=tiny_models)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], (args, err)


def test_two_process_training(syn_pairs, model_dir, tiny_models, tmp_path):
    """accelerate launch, 2 CPU processes (gloo): the global batch of 4 splits into 2 x 2, every
    sample's crop, colours, noise and z come from (seed, step, its global position), so the losses
    follow the 1-process run's within float rounding; the main process writes the checkpoint."""
    tiny_models.get("lpips")  # on disk before two processes load it
    args = {n: _train_args(syn_pairs, tmp_path / n, 4, "--save-every", "4") for n in ("one", "two")}
    assert T.main(args["one"], models=tiny_models) == 0
    run = launch("engine.train.p2pz_distill", args["two"], processes=2, env={"DES_CACHE_DIR": str(model_dir)},
                 timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es) x batch 2 = 4 pairs a step" in run.stderr
    meta = json.loads((tmp_path / "two" / "distilled.json").read_text())
    assert meta["training"]["processes"] == 2 and meta["training"]["steps"] == 4
    one, two = (json.loads((tmp_path / n / "checkpoints" / "checkpoint-000004" / "progress.json").read_text())
                ["record"]["loss"] for n in ("one", "two"))
    for k in ("recon", "d", "adv"):
        np.testing.assert_allclose(two[k], one[k], rtol=2e-3, atol=1e-5, err_msg=k)
