"""The evaluation metrics on hand-made cases with known answers, on the tiny random networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bench import metrics as M
from engine.core.metric_models import LPIPSNet, key_projection, linear_weights_file, read_linear_weights


@pytest.fixture(scope="module")
def nets(tiny_models):
    return {name: tiny_models.get(name) for name in ("lpips", "dino", "clip", "pickscore")}


@pytest.fixture(scope="module")
def cat(photo) -> Image.Image:
    return photo.resize((96, 64), Image.Resampling.LANCZOS)


def _shift(image: Image.Image, px: int) -> Image.Image:
    return Image.fromarray(np.roll(np.asarray(image), px, axis=1))


def _recolour(image: Image.Image, f: float) -> Image.Image:
    arr = np.asarray(image).astype(np.float32) * np.array([1.0, f, f], np.float32)
    return Image.fromarray(arr.round().astype(np.uint8))


def _box_mask(image: Image.Image, box=(24, 16, 56, 48)) -> np.ndarray:
    m = np.zeros((image.height, image.width), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1.0
    return m


def _noise_inside(image: Image.Image, mask: np.ndarray, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.asarray(image).copy()
    noise = rng.integers(0, 256, arr.shape, dtype=np.uint8)
    arr[mask > 0] = noise[mask > 0]
    return Image.fromarray(arr)


def test_identical_images_have_the_known_answers(nets, cat):
    mask = _box_mask(cat)
    assert M.lpips(nets["lpips"], cat, cat) == 0.0
    assert M.bg_lpips(nets["lpips"], cat, cat, mask) == 0.0
    assert M.structure_dist(nets["dino"], cat, cat) == pytest.approx(0.0, abs=1e-10)
    assert M.structure_dist(nets["dino"], cat, cat, reduction="frobenius") == pytest.approx(0.0, abs=1e-5)
    assert M.ssim(cat, cat) == pytest.approx(1.0, abs=1e-9)
    assert M.ssim_inside_outside(cat, cat, mask) == pytest.approx((1.0, 1.0), abs=1e-9)
    assert M.l1(cat, cat) == 0.0


def test_l1_has_known_values():
    black, white = Image.new("RGB", (32, 32), "black"), Image.new("RGB", (32, 32), "white")
    half = np.asarray(black).copy()
    half[:, 16:] = 255
    half = Image.fromarray(half)
    right = np.zeros((32, 32), np.float32)
    right[:, 16:] = 1
    assert M.l1(black, white) == pytest.approx(1.0)
    assert M.l1(black, half) == pytest.approx(0.5)
    assert M.l1(black, half, mask=right) == pytest.approx(1.0)
    assert M.l1(black, half, mask=1 - right) == 0.0


def test_a_small_shift_is_closer_than_a_large_one(nets, cat):
    small, large = _shift(cat, 1), _shift(cat, 8)
    assert 0 < M.lpips(nets["lpips"], cat, small) < M.lpips(nets["lpips"], cat, large)
    assert 0 < M.structure_dist(nets["dino"], cat, small) < M.structure_dist(nets["dino"], cat, large)
    assert 0 < M.l1(cat, small) < M.l1(cat, large)
    assert 1 > M.ssim(cat, small) > M.ssim(cat, large)


def test_a_stronger_recolouring_is_further(nets, cat):
    mild, strong = _recolour(cat, 0.9), _recolour(cat, 0.5)
    assert 0 < M.lpips(nets["lpips"], cat, mild) < M.lpips(nets["lpips"], cat, strong)
    assert 0 < M.structure_dist(nets["dino"], cat, mild) < M.structure_dist(nets["dino"], cat, strong)
    assert 0 < M.l1(cat, mild) < M.l1(cat, strong)
    assert 1 > M.ssim(cat, mild) > M.ssim(cat, strong)


def test_a_mask_excludes_changes_outside_it(nets, cat):
    obj = _box_mask(cat)
    edited = _noise_inside(cat, obj)
    # the change is all inside the object: the background sees none of it
    assert M.bg_lpips(nets["lpips"], cat, edited, obj) == pytest.approx(0.0, abs=1e-7)
    assert M.lpips(nets["lpips"], cat, edited) > 0.01
    elsewhere = np.roll(obj, 40, axis=1)  # an "object" that is not where the change is
    assert M.bg_lpips(nets["lpips"], cat, edited, elsewhere) > 0.01
    assert M.l1(cat, edited, mask=1 - obj) == 0.0 and M.l1(cat, edited, mask=obj) > 0.1
    inside, outside = M.ssim_inside_outside(cat, edited, obj)
    assert inside < 0.5 < 0.9 < outside < 1.0  # the Gaussian window leaks a little over the edge
    assert inside < M.ssim(cat, edited) < outside


def test_mismatched_inputs_are_refused(nets, cat):
    with pytest.raises(ValueError, match="differ in size"):
        M.lpips(nets["lpips"], cat, cat.resize((64, 64)))
    with pytest.raises(ValueError, match="mask"):
        M.ssim_inside_outside(cat, cat, np.ones((10, 10), np.float32))
    with pytest.raises(ValueError, match="reduction"):
        M.structure_dist(nets["dino"], cat, cat, reduction="max")


def test_lpips_follows_eq_1_and_reads_the_official_weight_format(tmp_path, monkeypatch):
    import torchvision

    trunk = torchvision.models.AlexNet().features  # random AlexNet: LPIPS-alex's trunk
    net = LPIPSNet(trunk, "alex")
    assert not net.calibrated and net.taps == [1, 4, 7, 9, 11]
    channels = [64, 192, 384, 256, 256]  # what the lpips package's alex.pth holds per layer
    gen = torch.Generator().manual_seed(0)
    state = {f"lin{l}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for l, c in enumerate(channels)}
    path = tmp_path / "alex.pth"
    torch.save(state, path)
    monkeypatch.setenv("DES_LPIPS_LINEAR", str(path))
    assert linear_weights_file("alex") == path
    linear = read_linear_weights(path)
    a = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    b = (a + 0.2 * torch.randn(a.shape, generator=gen)).clamp(-1, 1)
    with torch.no_grad():
        d1 = LPIPSNet(trunk, "alex", linear)(a, b)
        d2 = LPIPSNet(trunk, "alex", [2 * w for w in linear])(a, b)
        # Eq. 1 by hand for the first layer
        fa, fb = net.activations(a)[0], net.activations(b)[0]
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        first = (linear[0].view(1, -1, 1, 1) * (na - nb).pow(2)).sum(1).mean()
        layers = LPIPSNet(trunk, "alex", linear).layer_distances(a, b)
    assert torch.allclose(d2, 2 * d1) and d1.item() > 0
    assert layers[0, 0].item() == pytest.approx(first.item(), rel=1e-5)
    with pytest.raises(ValueError, match="channels"):
        LPIPSNet(trunk, "alex", linear[:4])


def test_lpips_matches_the_lpips_package_when_installed():
    lpips = pytest.importorskip("lpips")  # the reference implementation, for comparison only
    ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    layers = [m for s in (ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5) for m in s]
    mine = LPIPSNet(torch.nn.Sequential(*layers), "alex", read_linear_weights(linear_weights_file("alex")))
    a = torch.rand(2, 3, 64, 64) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.allclose(ref(a, b).flatten(), mine(a, b), rtol=1e-4)


def test_structure_dist_reads_the_last_layer_keys_and_leaves_no_hook(nets, cat):
    dino = nets["dino"]
    keys = M.dino_keys(dino, [cat, _shift(cat, 8)], size=64)
    assert keys.shape == (2, 1 + (64 // 8) ** 2, dino.config.hidden_size)  # CLS + patches
    s = M.self_similarity(keys[0])
    assert torch.allclose(s, s.T, atol=1e-6) and torch.allclose(s.diagonal(), torch.ones(len(s)), atol=1e-5)
    assert not key_projection(dino)._forward_hooks
    a, b = cat, _shift(cat, 8)
    n = M.dino_keys(dino, [a]).shape[1]
    mse = M.structure_dist(dino, a, b)
    frob = M.structure_dist(dino, a, b, reduction="frobenius")
    assert frob ** 2 / n ** 2 == pytest.approx(mse, rel=1e-4)


def test_clip_metrics_agree_with_the_cosines(nets, cat):
    clip = nets["clip"]
    texts = ["a photo of a cat", "a photo of a dog"]
    cos = M.clip_cosines(clip, [cat], texts)[0].tolist()
    assert cos[0] != cos[1]
    assert M.clip_acc(clip, [cat], texts[0], texts[1]) == [cos[1] > cos[0]]
    assert M.clip_acc(clip, [cat], texts[1], texts[0]) == [cos[0] > cos[1]]  # swapping the texts flips it
    assert M.clip_acc(clip, [cat], texts[0], texts[0]) == [False]  # a tie is no success
    assert M.clip_score(clip, [cat], texts[1])[0] == pytest.approx(100 * cos[1], abs=1e-3)
    pre = M.clip_cosines(clip, [cat], ["A photo depicts " + texts[1]])[0, 0].item()
    assert M.clipscore(clip, [cat], texts[1])[0] == pytest.approx(250 * max(pre, 0.0), abs=1e-3)
    classes = ["cat", "dog", "fox"]
    ccos = M.clip_cosines(clip, [cat], [f"a photo of a {c}." for c in classes])[0]
    assert M.clip_classify(clip, [cat], classes) == [classes[int(ccos.argmax())]]
    with pytest.raises(ValueError, match="two class"):
        M.clip_classify(clip, [cat], ["cat"])


def test_pickscore_and_preference(nets, cat):
    pick = nets["pickscore"]
    scores = M.pickscore(pick, [cat, _recolour(cat, 0.5)], "a photo of a cat")
    cos = M.clip_cosines(pick, [cat], ["a photo of a cat"])[0, 0].item()
    assert scores[0] == pytest.approx(pick.model.logit_scale.exp().item() * cos, rel=1e-4)
    assert M.preference([1.0, 1.0]) == [0.5, 0.5]
    p = M.preference(scores)
    assert math.isclose(sum(p), 1.0) and (p[0] > p[1]) == (scores[0] > scores[1])
    assert M.preference([3.0, 1.0])[0] == pytest.approx(1 / (1 + math.exp(-2.0)))
