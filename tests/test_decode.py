"""Decoding every kind of image file to an upright RGB picture, or a clear reason why not."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from indexer.decode import GALLERY_LONG_SIDE, PREVIEW_LONG_SIDE, UnreadableImage, decode_image, thumbnails
from tests.images import EXIF_ORIENTATION, encoded, jpeg_bytes, write_bad_files


def _pixel(data: bytes, xy=(0, 0)) -> tuple[int, int, int]:
    return decode_image(data, 56).rgb.getpixel(xy)


def test_exif_orientation_is_applied_and_sizes_are_as_displayed():
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 20))  # red on the stored left edge
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # display turned 90 degrees clockwise: the stored left edge becomes the top
    decoded = decode_image(jpeg_bytes(stored, exif=exif.tobytes(), quality=95), 56)
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.rgb.size == (20, 40)
    top, bottom = decoded.rgb.getpixel((10, 2)), decoded.rgb.getpixel((10, 37))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    data = encoded(rgba, "PNG")
    assert _pixel(data) == (255, 255, 255)
    assert _pixel(data, (1, 1)) == (255, 0, 0)
    grey_alpha = Image.new("LA", (4, 4), (0, 0))
    assert _pixel(encoded(grey_alpha, "PNG")) == (255, 255, 255)


def test_palette_with_transparency_and_gif_first_frame():
    frames = [Image.new("P", (6, 6), 0) for _ in range(2)]
    palette = [0, 255, 0] + [0, 0, 255] + [0] * (256 * 3 - 6)
    for index, frame in enumerate(frames):
        frame.putpalette(palette)
        frame.paste(index, (0, 0, 6, 6))
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert _pixel(buffer.getvalue()) == (0, 255, 0)  # the first frame, green

    transparent = Image.new("P", (4, 4), 1)
    transparent.putpalette(palette)
    assert _pixel(encoded(transparent, "PNG", transparency=1)) == (255, 255, 255)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 32768], [65535, 65535]], dtype=np.uint16)
    data = encoded(Image.fromarray(values), "PNG")
    rgb = decode_image(data, 56).rgb
    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((1, 0)) == (128, 128, 128)
    assert rgb.getpixel((0, 1)) == (255, 255, 255)


def test_cmyk_and_greyscale_become_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red ink mix
    red = _pixel(encoded(cmyk, "JPEG", quality=95))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert _pixel(encoded(Image.new("L", (8, 8), 77), "PNG")) == (77, 77, 77)
    assert _pixel(encoded(Image.new("1", (8, 8), 1), "BMP")) == (255, 255, 255)


def test_large_jpegs_decode_reduced_but_keep_their_true_size():
    decoded = decode_image(jpeg_bytes(Image.new("RGB", (4000, 3000), (10, 200, 30))), 224)
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.rgb.size == (1000, 750)  # draft mode: 1/4 scale still covers the 512-pixel preview


@pytest.mark.parametrize("name", ["empty.jpg", "notes.png", "truncated.jpg", "bomb.png"])
def test_bad_files_are_refused_with_their_reason(tmp_path, name):
    expected = write_bad_files(tmp_path)
    with pytest.raises(UnreadableImage, match=expected[name]):
        decode_image((tmp_path / name).read_bytes(), 56)


def test_thumbnails_keep_the_aspect_ratio_at_their_long_side():
    made = thumbnails(Image.new("RGB", (300, 100)))
    assert (made["gallery"].width, made["gallery"].height) == (GALLERY_LONG_SIDE, GALLERY_LONG_SIDE // 3)
    assert (made["preview"].width, made["preview"].height) == (PREVIEW_LONG_SIDE, round(PREVIEW_LONG_SIDE / 3))
    assert Image.open(io.BytesIO(made["preview"].jpeg)).size == (PREVIEW_LONG_SIDE, round(PREVIEW_LONG_SIDE / 3))


def test_the_decode_workers_do_not_import_sqlalchemy():
    """The DataLoader's workers run the decoding and embedding modules: they take their records from db.records."""
    script = ("import sys, indexer.decode, indexer.embed; "
              "sys.exit('sqlalchemy' in sys.modules and 'imported sqlalchemy' or 0)")
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
