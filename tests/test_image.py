"""Image intake: EXIF, modes, sizes, and every bad kind refused with a readable message."""
import io

import numpy as np
import pytest
from PIL import Image

from engine.core.image import MAX_PIXELS, fit_size, load_image


def _png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_resize_to_longest_side_multiple_of_8():
    img = load_image(Image.new("RGB", (451, 300), "red"), max_side=512)
    assert max(img.size) == 512 and img.width % 8 == 0 and img.height % 8 == 0
    assert fit_size(300, 451, 128) == (88, 128)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    img = Image.new("RGB", (100, 80), (200, 30, 30)).convert(mode)
    out = load_image(img, max_side=128)
    assert out.mode == "RGB" and out.size == (128, 104)


def test_transparency_becomes_white():
    img = Image.new("RGBA", (100, 100), (255, 0, 0, 0))
    assert load_image(img, 128).getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_keeps_its_range():
    arr = np.full((80, 80), 65535, dtype=np.uint16)
    img = Image.fromarray(arr)
    out = load_image(_png(img), 128)
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (120, 80), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _png(img, "JPEG", exif=exif.tobytes())
    out = load_image(data, 128)
    assert out.height > out.width


@pytest.mark.parametrize("data, message", [
    (b"this is not an image", "not an image"),
    (b"", "not an image"),
])
def test_non_images_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        load_image(data)


def test_truncated_file_is_refused():
    data = _png(Image.effect_noise((200, 200), 50).convert("RGB"))
    with pytest.raises(ValueError, match="damaged or truncated|not an image"):
        load_image(data[: len(data) // 2])


def test_small_images_are_refused():
    with pytest.raises(ValueError, match="at least 64 px"):
        load_image(Image.new("RGB", (63, 200)))


def test_decompression_bombs_are_refused():
    side = int(MAX_PIXELS ** 0.5) + 100
    data = _png(Image.new("1", (side, side)))
    with pytest.raises(ValueError, match="megapixels|too large"):
        load_image(data)


def test_missing_file_and_none():
    with pytest.raises(ValueError, match="no image file"):
        load_image("/no/such/file.png")
    with pytest.raises(ValueError, match="upload a photo"):
        load_image(None)


@pytest.mark.parametrize("res", [63, 100, 4096])
def test_bad_resolution(res):
    with pytest.raises(ValueError, match="resolution"):
        load_image(Image.new("RGB", (100, 100)), res)
