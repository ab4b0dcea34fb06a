"""Turning an image file's bytes into an upright RGB picture and its JPEG thumbnails, or a clear reason why not.

No torch here: this runs in the DataLoader's worker processes and in tests on its own.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from db.records import JpegImage

GALLERY_LONG_SIDE = 192
PREVIEW_LONG_SIDE = 512
JPEG_QUALITY = 85
# EXIF orientations 5 to 8 turn the picture a quarter, so width and height swap.
_QUARTER_TURNS = {5, 6, 7, 8}


class UnreadableImage(Exception):
    """The bytes are not a usable image; the message is the reason recorded as the file's failure."""


@dataclass(frozen=True)
class DecodedImage:
    rgb: Image.Image  # upright RGB; a JPEG may come reduced, but never below what the model and preview need
    width: int  # of the original, as displayed (after EXIF orientation)
    height: int


def decode_image(data: bytes, image_size: int) -> DecodedImage:
    """Decode, orient and convert an image for a model input of `image_size` pixels and the thumbnails.

    JPEGs decode at the smallest of 1/8, 1/4, 1/2 or full scale that still covers both (the preview's long side,
    the model input on either side), which is most of the decoding time saved on camera-sized files.
    """
    if not data:
        raise UnreadableImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if image.getexif().get(0x0112) in _QUARTER_TURNS:
                width, height = height, width
            if image.format == "JPEG":
                image.draft("RGB", _draft_request(image.size, image_size))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UnreadableImage(
                f"too many pixels for a safe decode (over {Image.MAX_IMAGE_PIXELS:,}): possible decompression bomb"
            ) from None
        except UnidentifiedImageError:
            raise UnreadableImage("not an image that Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise UnreadableImage(f"damaged or truncated image: {error}") from None
    try:
        upright = ImageOps.exif_transpose(image)
        return DecodedImage(to_rgb(upright), width, height)
    except (OSError, ValueError) as error:
        raise UnreadableImage(f"cannot convert {image.mode} image to RGB: {error}") from None


def _draft_request(stored_size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """The least size a draft decode must keep: the preview's long side along the long side, the model input across."""
    long_side, short_side = max(image_size, PREVIEW_LONG_SIDE), image_size
    return (long_side, short_side) if stored_size[0] >= stored_size[1] else (short_side, long_side)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every mode: transparency composited on white, 16-bit and float scaled down, not clipped."""
    if image.mode.startswith("I") or image.mode == "F":
        return _scaled_to_8bit(np.asarray(image)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _scaled_to_8bit(values: np.ndarray) -> Image.Image:
    """Grey levels of a 16/32-bit integer or float image as 8 bits: integers by their bit depth, floats by range."""
    if np.issubdtype(values.dtype, np.floating):
        low, high = float(values.min(initial=0.0)), float(values.max(initial=1.0))
        scaled = (values - low) / ((high - low) or 1.0)
    else:
        top = int(values.max(initial=0))
        scaled = values / (255 if top <= 255 else max(65535, top))
    return Image.fromarray(np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def thumbnail_size(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """`size` scaled so that its longer side is exactly `long_side`, keeping the aspect ratio."""
    scale = long_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _jpeg(picture: Image.Image) -> JpegImage:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return JpegImage(buffer.getvalue(), picture.width, picture.height)


def thumbnails(rgb: Image.Image, displayed_size: tuple[int, int] | None = None) -> dict[str, JpegImage]:
    """The preview and the gallery thumbnail, sized from `displayed_size` (the original's, as displayed; default
    the picture's own), so a draft-decoded picture gives the same sizes as a full decode.

    Bicubic, which Pillow widens when it shrinks (no aliasing): as sharp as Lanczos to the eye at these sizes, and
    a quarter less of the decode workers' time, which on a CPU is taken from the model. The gallery thumbnail is
    resampled from the preview, a fraction of the pixels to filter.
    """
    size = displayed_size or rgb.size
    preview = rgb.resize(thumbnail_size(size, PREVIEW_LONG_SIDE), Image.Resampling.BICUBIC)
    gallery = preview.resize(thumbnail_size(size, GALLERY_LONG_SIDE), Image.Resampling.BICUBIC)
    return {"gallery": _jpeg(gallery), "preview": _jpeg(preview)}
