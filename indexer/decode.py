"""Turning an image file's bytes into an upright RGB picture and its JPEG thumbnails, or a clear reason why not.

No torch here: this runs in the DataLoader's worker processes and in tests on its own.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from db.mutations import JpegImage

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

    JPEGs decode at the smallest of 1/8, 1/4, 1/2 or full scale that still covers both, which is most of the
    decoding time saved on camera-sized files.
    """
    working_size = max(image_size, PREVIEW_LONG_SIDE)
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
                image.draft("RGB", (working_size, working_size))
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
        scaled = values / (255 if top <= 255 else 65535 if top <= 65535 else top)
    return Image.fromarray(np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def jpeg_thumbnail(rgb: Image.Image, long_side: int) -> JpegImage:
    """A JPEG whose longer side is exactly `long_side`, keeping the aspect ratio."""
    scale = long_side / max(rgb.size)
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    buffer = io.BytesIO()
    rgb.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return JpegImage(buffer.getvalue(), *size)


def thumbnails(rgb: Image.Image) -> dict[str, JpegImage]:
    return {"gallery": jpeg_thumbnail(rgb, GALLERY_LONG_SIDE), "preview": jpeg_thumbnail(rgb, PREVIEW_LONG_SIDE)}
