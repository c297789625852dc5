"""Grounded-SAM, SAM clicks and CLIPSeg on tiny random models built offline.

Random weights detect noise, so these tests check properties that hold whatever the weights:
shapes, thresholds, unions, validation, the embedding cache, and the CLI's files.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core import segment as S
from engine.segment_cli import add_cli_args, parse_point, run_cli
from engine.tiny.segment import build_tiny_sam

PHOTO_W, PHOTO_H = 160, 120  # 4:3, not square: catches swapped width/height


@pytest.fixture(scope="module")
def folders(tiny_models):
    """The tiny segmenters' folders, written once by the session's model cache (DES_TEST_CACHE
    keeps them between runs) with the builders of engine.tiny.segment."""
    from engine.models import COMPONENTS

    return {name: Path(tiny_models._fake_folder(COMPONENTS[name])) for name in ("grounding_dino", "sam", "clipseg")}


@pytest.fixture(scope="module")
def models(folders):
    cpu, f32 = torch.device("cpu"), torch.float32
    return {
        "grounding_dino": S.load_grounding_dino(str(folders["grounding_dino"]), cpu, f32),
        "sam": S.load_sam(str(folders["sam"]), cpu, f32),
        "clipseg": S.load_clipseg(str(folders["clipseg"]), cpu, f32),
    }


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (PHOTO_H, PHOTO_W, 3), dtype=np.uint8))


class VisionCalls:
    """Counts forward passes of SAM's image encoder."""

    def __init__(self, sam):
        self.n = 0
        self.handle = sam.model.vision_encoder.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


@pytest.fixture
def vision_calls(models):
    counter = VisionCalls(models["sam"])
    yield counter
    counter.handle.remove()


# -- loading ------------------------------------------------------------------------------

def test_tiny_models_load_back_through_the_loaders(models, folders):
    from transformers import (CLIPSegForImageSegmentation, GroundingDinoForObjectDetection,
                              SamModel)

    expected = {"grounding_dino": GroundingDinoForObjectDetection, "sam": SamModel,
                "clipseg": CLIPSegForImageSegmentation}
    for name, cls in expected.items():
        seg = models[name]
        assert isinstance(seg.model, cls)
        assert not seg.model.training
        assert not any(p.requires_grad for p in seg.model.parameters())
        assert seg.source == str(folders[name]) and seg.processor is not None
    # GroundingDINO's hard-coded special ids ([CLS]=101, [SEP]=102, "."=1012) match the tiny vocab.
    ids = models["grounding_dino"].processor.tokenizer("the cat.")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and 1012 in ids


def test_builders_are_deterministic_and_leave_the_global_rng_alone(tmp_path, folders):
    from safetensors.torch import load_file

    state = torch.random.get_rng_state()
    build_tiny_sam(tmp_path / "again")
    assert torch.equal(state, torch.random.get_rng_state())
    a = load_file(folders["sam"] / "model.safetensors")
    b = load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- GroundingDINO boxes -------------------------------------------------------------------

def test_box_threshold_zero_finds_boxes_and_one_finds_none(models, photo):
    gdino = models["grounding_dino"]
    boxes = S.detect_boxes(gdino, photo, "the cat", box_threshold=0.0, text_threshold=0.0)
    assert len(boxes) >= 1
    assert S.detect_boxes(gdino, photo, "the cat", box_threshold=1.0) == []
    scores = [b.score for b in boxes]
    assert scores == sorted(scores, reverse=True)
    for b in boxes:
        assert 0 <= b.x0 <= b.x1 <= PHOTO_W and 0 <= b.y0 <= b.y1 <= PHOTO_H
        assert isinstance(b.label, str) and b.label
    # A higher threshold keeps a subset: exactly the boxes scoring above it.
    mid = S.detect_boxes(gdino, photo, "the cat", box_threshold=0.5, text_threshold=0.0)
    assert [b.score for b in mid] == [s for s in scores if s > 0.5]


@pytest.mark.parametrize("kwargs, message", [
    ({"phrase": "   "}, "phrase is empty"),
    ({"phrase": "cat", "box_threshold": -0.1}, "box threshold"),
    ({"phrase": "cat", "text_threshold": 1.5}, "text threshold"),
])
def test_bad_text_input_is_a_value_error(models, photo, kwargs, message):
    with pytest.raises(ValueError, match=message):
        S.grounded_sam(models["grounding_dino"], models["sam"], photo, **kwargs)


# -- Grounded-SAM --------------------------------------------------------------------------

def test_grounded_sam_mask_matches_the_photo(models, photo):
    res = S.grounded_sam(models["grounding_dino"], models["sam"], photo, "the dog", 0.0, 0.0,
                         embedding_cache=S.EmbeddingCache())
    assert res.mask.shape == (PHOTO_H, PHOTO_W) and res.mask.dtype == np.float32
    assert set(np.unique(res.mask).tolist()) <= {0.0, 1.0}
    assert 1 <= len(res.boxes) <= S.MAX_BOXES
    assert "the dog" in res.message


def test_nothing_found_is_an_empty_mask_and_a_message(models, photo, vision_calls):
    res = S.grounded_sam(models["grounding_dino"], models["sam"], photo, "the bus", 1.0, 0.25)
    assert res.mask.shape == (PHOTO_H, PHOTO_W) and not res.mask.any()
    assert res.boxes == []
    assert "nothing matching 'the bus' was found" in res.message
    assert "box threshold" in res.message
    assert vision_calls.n == 0  # SAM never ran


def test_mask_of_several_boxes_is_the_union_of_their_masks(models, photo):
    sam, cache = models["sam"], S.EmbeddingCache()
    a = S.Box(10, 10, 70, 60, 0.9, "a")
    b = S.Box(80, 40, 150, 110, 0.8, "b")
    both = S.sam_masks_from_boxes(sam, photo, [a, b], cache)
    ma = S.sam_masks_from_boxes(sam, photo, [a], cache)
    mb = S.sam_masks_from_boxes(sam, photo, [b], cache)
    assert both.shape == (PHOTO_H, PHOTO_W)
    # Boxes are decoded independently, so the joint mask is the union (up to float noise).
    assert np.mean(both != np.maximum(ma, mb)) < 1e-3
    assert not S.sam_masks_from_boxes(sam, photo, [], cache).any()


# -- SAM clicks and the embedding cache ------------------------------------------------------

def test_click_mask_matches_the_photo(models, photo):
    m = S.sam_mask_from_points(models["sam"], photo, [(30, 40, True)], S.EmbeddingCache())
    assert m.shape == (PHOTO_H, PHOTO_W) and m.dtype == np.float32
    assert set(np.unique(m).tolist()) <= {0.0, 1.0}
    m2 = S.sam_mask_from_points(models["sam"], photo, [(30, 40), (100, 90, False)])
    assert m2.shape == (PHOTO_H, PHOTO_W)


@pytest.mark.parametrize("points, message", [
    ([(200, 10, True)], r"click at \(200, 10\) is outside the 160x120 photo"),
    ([(10, -1, True)], "outside the 160x120 photo"),
    ([], "no points"),
    ([(10, 10, False)], "positive click"),
])
def test_bad_clicks_are_value_errors(models, photo, points, message):
    with pytest.raises(ValueError, match=message):
        S.sam_mask_from_points(models["sam"], photo, points)


def test_second_click_on_the_same_photo_skips_the_image_encoder(models, photo, vision_calls):
    sam, cache = models["sam"], S.EmbeddingCache()
    first = S.sam_mask_from_points(sam, photo, [(30, 40, True)], cache)
    assert vision_calls.n == 1
    S.sam_mask_from_points(sam, photo, [(100, 90, True)], cache)
    again = S.sam_mask_from_points(sam, photo.copy(), [(30, 40, True)], cache)  # same pixels
    assert vision_calls.n == 1 and cache.hits == 2
    np.testing.assert_array_equal(first, again)
    other = Image.fromarray(255 - np.asarray(photo))
    S.sam_mask_from_points(sam, other, [(30, 40, True)], cache)
    assert vision_calls.n == 2


def test_embedding_cache_is_bounded_and_thread_safe(models, photo):
    cache = S.EmbeddingCache(max_entries=2)
    photos = [Image.fromarray(np.full((PHOTO_H, PHOTO_W, 3), v, np.uint8)) for v in (0, 80, 160)]
    errors = []

    def click(img):
        try:
            S.sam_mask_from_points(models["sam"], img, [(5, 5, True)], cache)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=click, args=(p,)) for p in photos * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 2


# -- CLIPSeg ------------------------------------------------------------------------------

def test_clipseg_gives_a_soft_mask_of_the_photo_size(models, photo):
    m = S.clipseg_mask(models["clipseg"], photo, "a cat on the grass")
    assert m.shape == (PHOTO_H, PHOTO_W) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert len(np.unique(m)) > 2  # soft, not binary
    with pytest.raises(ValueError, match="phrase is empty"):
        S.clipseg_mask(models["clipseg"], photo, "")


# -- CLI ----------------------------------------------------------------------------------

class StubCache:
    """Stands in for the lead's ModelCache: get(name) returns a loaded component."""

    profile = "tiny"

    def __init__(self, components):
        self.components = components

    def get(self, name):
        return self.components[name]


def cli_args(argv):
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("method", ["grounded-sam", "clipseg"])
def test_cli_writes_mask_overlay_and_report(models, photo, tmp_path, method):
    photo.save(tmp_path / "in.png")
    out = tmp_path / method
    args = cli_args(["--image", str(tmp_path / "in.png"), "--out", str(out), "--text", "the cat",
                     "--method", method, "--box-threshold", "0.0", "--points", "20,30,+",
                     "--profile", "tiny"])
    assert run_cli(args, StubCache(models)) == 0
    assert Image.open(out / "mask.png").size == (PHOTO_W, PHOTO_H)
    assert Image.open(out / "overlay.png").size == (PHOTO_W, PHOTO_H)
    report = json.loads((out / "report.json").read_text())
    assert {"method", "profile", "text", "boxes", "message", "seconds"} <= set(report)
    assert report["method"] == method and report["profile"] == "tiny"
    assert report["points"] == [[20.0, 30.0, "+"]]
    for box in report["boxes"]:
        assert len(box["box"]) == 4 and {"score", "label"} <= set(box)
    assert (len(report["boxes"]) > 0) == (method == "grounded-sam")


def test_cli_bad_input_exits_2_with_one_line(models, tmp_path, capsys, photo):
    photo.save(tmp_path / "in.png")
    args = cli_args(["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "o"),
                     "--points", "500,5,+"])
    assert run_cli(args, StubCache(models)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "outside the 160x120 photo" in err
    assert parse_point("3,4,-") == (3.0, 4.0, False)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_point("3;4")


# -- mechanisms (issue 14): what reaches SAM, what the thresholds do, what CLIPSeg's values are -------

class SamInputs:
    """Records the prompts (boxes, points, labels) each SAM forward receives."""

    def __init__(self, sam):
        self.calls = []
        self.handle = sam.model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs):
        self.calls.append({k: kwargs.get(k) for k in ("input_boxes", "input_points", "input_labels")})


@pytest.fixture
def sam_inputs(models):
    spy = SamInputs(models["sam"])
    yield spy
    spy.handle.remove()


def test_grounded_sam_prompts_sam_with_grounding_dinos_boxes(models, photo, sam_inputs):
    """Grounded-SAM: SAM's box prompts are exactly GroundingDINO's boxes for the phrase, in SAM's
    input frame (the 160x120 photo's longest edge resized to 64: x0.4), and the mask is their union."""
    gdino, sam = models["grounding_dino"], models["sam"]
    expected = S.detect_boxes(gdino, photo, "the dog", 0.2, 0.0)[:S.MAX_BOXES]
    assert 0 < len(expected) < 10  # the threshold keeps some of the 10 queries, not all
    res = S.grounded_sam(gdino, sam, photo, "the dog", 0.2, 0.0, embedding_cache=S.EmbeddingCache())
    assert res.boxes == expected
    assert len(sam_inputs.calls) == 1
    sent = sam_inputs.calls[0]["input_boxes"][0].float()
    want = torch.tensor([[b.x0, b.y0, b.x1, b.y1] for b in expected]) * 0.4
    assert sent.shape == want.shape and torch.allclose(sent, want, atol=1e-3)
    np.testing.assert_array_equal(res.mask, S.sam_masks_from_boxes(sam, photo, expected, S.EmbeddingCache()))
    whole = S.sam_masks_from_boxes(sam, photo, [S.Box(0, 0, PHOTO_W, PHOTO_H, 1.0, "all")], S.EmbeddingCache())
    assert not np.array_equal(res.mask, whole)


def test_grounded_sam_box_threshold_keeps_exactly_the_boxes_above_it(models, photo):
    gdino, sam = models["grounding_dino"], models["sam"]
    scores = sorted((b.score for b in S.detect_boxes(gdino, photo, "the dog", 0.0, 0.0)), reverse=True)
    assert len(set(scores)) >= 3
    for thr in (0.0, (scores[1] + scores[2]) / 2, scores[0]):
        res = S.grounded_sam(gdino, sam, photo, "the dog", thr, 0.0, embedding_cache=S.EmbeddingCache())
        assert [b.score for b in res.boxes] == [s for s in scores if s > thr][:S.MAX_BOXES], thr
        assert res.mask.any() == bool(res.boxes)


def test_negative_clicks_reach_sam_as_background_labels(models, photo, sam_inputs):
    sam = models["sam"]
    cache = S.EmbeddingCache()
    mixed = S.sam_mask_from_points(sam, photo, [(30, 40, True), (100, 90, False)], cache)
    both = S.sam_mask_from_points(sam, photo, [(30, 40, True), (100, 90, True)], cache)
    labels = [c["input_labels"].tolist() for c in sam_inputs.calls]
    assert labels == [[[[1, 0]]], [[[1, 1]]]]
    points = sam_inputs.calls[0]["input_points"].float()
    assert torch.allclose(points, torch.tensor([[[[12.0, 16.0], [40.0, 36.0]]]]), atol=1e-3)
    assert not np.array_equal(mixed, both)  # the label changes SAM's answer


def test_cli_negative_click_and_union_of_text_and_clicks(models, photo, tmp_path, sam_inputs):
    photo.save(tmp_path / "in.png")
    args = cli_args(["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "o"), "--text", "the dog",
                     "--box-threshold", "0.2", "--text-threshold", "0.0", "--points", "30,40,+", "100,90,-"])
    assert run_cli(args, StubCache(models)) == 0
    assert sam_inputs.calls[-1]["input_labels"].tolist() == [[[1, 0]]]
    text = S.grounded_sam(models["grounding_dino"], models["sam"], photo, "the dog", 0.2, 0.0).mask
    clicks = S.sam_mask_from_points(models["sam"], photo, [(30, 40, True), (100, 90, False)])
    written = np.asarray(Image.open(tmp_path / "o" / "mask.png")) > 127
    np.testing.assert_array_equal(written, np.maximum(text, clicks) > 0.5)
    assert (text > 0.5).any() and (clicks > 0.5).any() and not np.array_equal(text > 0.5, clicks > 0.5)


def test_cli_box_threshold_reaches_grounding_dino(models, photo, tmp_path):
    photo.save(tmp_path / "in.png")
    found = {}
    for thr in ("0.0", "1.0"):
        args = cli_args(["--image", str(tmp_path / "in.png"), "--out", str(tmp_path / thr), "--text", "the dog",
                         "--box-threshold", thr, "--text-threshold", "0.0"])
        assert run_cli(args, StubCache(models)) == 0
        found[thr] = json.loads((tmp_path / thr / "report.json").read_text())
    assert len(found["0.0"]["boxes"]) > 0 and found["0.0"]["coverage"] > 0
    assert found["1.0"]["boxes"] == [] and found["1.0"]["coverage"] == 0


class ClipSegLogits:
    def __init__(self, clipseg):
        self.logits = []
        self.handle = clipseg.model.register_forward_hook(lambda m, a, out: self.logits.append(out.logits.float()))


def test_clipseg_mask_is_the_sigmoid_of_its_logits(models, photo):
    """CLIPSeg's mask is a probability: sigmoid(logits), resized. At the logits' own size (64 px,
    the tiny model's input) it equals sigmoid(logits); at another size it stays inside their range."""
    spy = ClipSegLogits(models["clipseg"])
    try:
        square = photo.resize((64, 64))
        m = S.clipseg_mask(models["clipseg"], square, "a cat")
        probs = torch.sigmoid(spy.logits[-1]).reshape(64, 64).numpy()
        np.testing.assert_allclose(m, probs, atol=1e-6)
        big = S.clipseg_mask(models["clipseg"], photo, "a cat")
        probs = torch.sigmoid(spy.logits[-1])
        assert big.shape == (PHOTO_H, PHOTO_W)
        assert float(probs.min()) - 1e-6 <= big.min() and big.max() <= float(probs.max()) + 1e-6
        assert abs(float(big.mean()) - float(probs.mean())) < 0.02
    finally:
        spy.handle.remove()
