"""Properties of engine.core.masks on synthetic masks (no models)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engine.core import masks as M

H, W = 100, 120


def square(x0=40, y0=30, side=40):
    m = np.zeros((H, W), np.float32)
    m[y0:y0 + side, x0:x0 + side] = 1.0
    return m


def is_binary(m):
    return set(np.unique(m).tolist()) <= {0.0, 1.0}


# -- conversion --------------------------------------------------------------------------

def test_as_mask_accepts_common_types():
    m = square()
    assert M.as_mask(m > 0.5).dtype == np.float32
    np.testing.assert_array_equal(M.as_mask((m * 255).astype(np.uint8)), m)
    np.testing.assert_array_equal(M.as_mask(torch.from_numpy(m)[None, None]), m)
    np.testing.assert_array_equal(M.as_mask(m * 3 - 1), np.clip(m * 3 - 1, 0, 1))
    with pytest.raises(ValueError, match="2-D"):
        M.as_mask(np.zeros((2, 3, 4, 5)))


def test_mask_from_image_modes():
    m = square()
    gray = Image.fromarray((m * 255).astype(np.uint8))
    np.testing.assert_array_equal(M.mask_from_image(gray, (W, H)), m)
    np.testing.assert_array_equal(M.mask_from_image(gray.convert("RGB"), (W, H)), m)
    # A brush layer: transparent except the strokes -> the alpha channel counts.
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, even where transparent
    rgba[..., 3] = (m * 255).astype(np.uint8)
    np.testing.assert_array_equal(M.mask_from_image(Image.fromarray(rgba), (W, H)), m)
    # An opaque RGBA image: its luminance counts.
    np.testing.assert_array_equal(M.mask_from_image(gray.convert("RGBA"), (W, H)), m)
    np.testing.assert_array_equal(M.mask_from_image((m * 255).astype(np.uint8)), m)


def test_mask_of_same_aspect_ratio_is_resized_and_stays_binary():
    small = Image.fromarray((square(20, 15, 20)[:50, :60] * 255).astype(np.uint8))
    out = M.mask_from_image(small, (W, H))
    assert out.shape == (H, W)
    assert is_binary(out)
    assert abs(out.mean() - np.asarray(small).mean() / 255) < 0.01


def test_mask_of_other_aspect_ratio_is_a_value_error():
    with pytest.raises(ValueError, match=r"mask is 100x100 but the photo is 120x100"):
        M.mask_from_image(Image.new("L", (100, 100)), (W, H))


# -- combining ---------------------------------------------------------------------------

def test_union_is_the_pixelwise_max_and_keeps_binary():
    a, b = square(10, 10, 20), square(50, 50, 30)
    u = M.union([a, b])
    np.testing.assert_array_equal(u, np.maximum(a, b))
    assert is_binary(u)
    assert u.sum() == a.sum() + b.sum()  # disjoint squares
    np.testing.assert_array_equal(M.union([a]), a)
    with pytest.raises(ValueError, match="no masks"):
        M.union([])
    with pytest.raises(ValueError, match="shapes"):
        M.union([a, np.zeros((5, 5))])


def test_invert_and_binarize():
    m = square()
    np.testing.assert_array_equal(M.invert(M.invert(m)), m)
    assert M.invert(m).sum() == m.size - m.sum()
    soft = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    b = M.binarize(soft, 0.5)
    assert is_binary(b)
    assert np.all(b[soft >= 0.5] == 1) and np.all(b[soft < 0.5] == 0)
    with pytest.raises(ValueError):
        M.binarize(soft, 1.5)


# -- grow, shrink, feather ---------------------------------------------------------------

def test_grow_adds_about_perimeter_times_px():
    m, px, side = square(), 3, 40
    grown = M.grow(m, px)
    added = grown.sum() - m.sum()
    perimeter = 4 * side
    # Straight edges add perimeter*px; rounded corners add a little, never a full square.
    assert perimeter * px <= added <= perimeter * px + 4 * px * px
    assert is_binary(grown)
    assert np.all(grown >= m)  # nothing removed


def test_shrink_removes_about_perimeter_times_px():
    m, px, side = square(), 3, 40
    shrunk = M.grow(m, -px)
    removed = m.sum() - shrunk.sum()
    assert 4 * (side - 2 * px) * px <= removed <= 4 * side * px
    assert is_binary(shrunk)
    assert np.all(shrunk <= m)
    np.testing.assert_array_equal(M.erode(m, px), shrunk)
    np.testing.assert_array_equal(M.grow(m, 0), m)


def test_negative_pixels_are_refused_by_dilate_and_erode():
    with pytest.raises(ValueError):
        M.dilate(square(), -1)
    with pytest.raises(ValueError):
        M.feather(square(), -2)


def test_feather_softens_only_near_the_edge():
    m, px = square(), 4
    f = M.feather(m, px)
    assert f.dtype == np.float32 and f.shape == m.shape
    assert f.min() >= 0.0 and f.max() <= 1.0
    soft = (f > 0) & (f < 1)
    assert soft.any()
    # Soft values appear only within px (Chebyshev distance) of the square's edge.
    box = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    band = cv2.dilate(m, box) != cv2.erode(m, box)
    assert not np.any(soft & ~band)
    # Away from the edge the mask keeps its exact 0 and 1; the area is about the same.
    np.testing.assert_array_equal(f[~band], m[~band])
    assert abs(f.sum() - m.sum()) < 0.05 * m.sum()


def test_binary_masks_stay_binary_until_feathered():
    m = square()
    for out in (M.grow(m, 5), M.grow(m, -5), M.invert(m), M.union([m, square(0, 0, 10)]),
                M.binarize(m), M.mask_from_image(M.to_pil(m), (W, H))):
        assert is_binary(out)
    assert not is_binary(M.feather(m, 3))


# -- edge cases: empty and full masks -----------------------------------------------------

def test_empty_and_full_masks_are_defined():
    empty, full = M.empty((W, H)), M.full((W, H))
    assert empty.shape == full.shape == (H, W)
    assert M.is_empty(empty) and not M.is_empty(full)
    assert M.is_full(full) and not M.is_full(empty)
    assert M.coverage(empty) == 0.0 and M.coverage(full) == 1.0
    for op in (lambda x: M.grow(x, 4), lambda x: M.grow(x, -4), lambda x: M.feather(x, 4)):
        np.testing.assert_array_equal(op(empty), empty)
        np.testing.assert_array_equal(op(full), full)  # a full mask does not shrink from the border
    np.testing.assert_array_equal(M.invert(full), empty)
    assert M.coverage(square()) == pytest.approx(1600 / (H * W))


# -- latent resizing and previews ----------------------------------------------------------

def test_to_latent_averages_areas():
    m = np.zeros((64, 64), np.float32)
    m[8:16, 16:24] = 1.0  # exactly one 8x8 cell
    lat = M.to_latent(m, 8, 8)
    assert lat.shape == (1, 1, 8, 8) and lat.dtype == torch.float32
    assert lat.sum().item() == 1.0 and lat[0, 0, 1, 2].item() == 1.0
    half = np.zeros((64, 64), np.float32)
    half[:, :4] = 1.0  # half of each cell in the first column
    assert torch.allclose(M.to_latent(half, 8, 8)[0, 0, :, 0], torch.full((8,), 0.5))
    assert M.to_latent(square(), 13, 15, dtype=torch.float16).dtype == torch.float16


def test_overlay_tints_inside_and_keeps_outside():
    photo = Image.new("RGB", (W, H), (10, 200, 30))
    m = square()
    out = np.asarray(M.overlay(photo, m, color=(255, 0, 0), alpha=0.5))
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out[5, 5], (10, 200, 30))  # far from the mask
    np.testing.assert_array_equal(out[50, 60], (132, 100, 15))  # inside: half photo, half red
    with pytest.raises(ValueError, match="mask is"):
        M.overlay(photo, np.zeros((10, 10), np.float32))
