"""Real image files made by tests: plain colours, a distinctive corner, and each kind of awkward file."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def noise(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    """A different picture for every seed (so contents, hashes and embeddings all differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def checkerboard(width: int, height: int, square: int = 4) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.where(((x // square) + (y // square)) % 2, 255, 0).astype(np.uint8)


def with_corner_pattern(size: tuple[int, int], corner: str, fraction: float = 0.25) -> Image.Image:
    """Mid-grey picture with a black-and-white checkerboard in one corner ('top-left', 'top-right', ...)."""
    width, height = size
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    pw, ph = int(width * fraction), int(height * fraction)
    rows = slice(0, ph) if corner.startswith("top") else slice(height - ph, height)
    cols = slice(0, pw) if corner.endswith("left") else slice(width - pw, width)
    pixels[rows, cols] = checkerboard(pw, ph)[..., None]
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    """The bytes of `image` saved as a `fmt` file ("PNG", "JPEG", ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, **save_args) -> bytes:
    return encoded(image, "JPEG", **save_args)


def data_url(data: bytes, mime: str = "image/png") -> str:
    """What dcc.Upload sends for a file: a base64 data URL."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def mime_type(relpath: str) -> str:
    return "image/jpeg" if relpath.lower().endswith((".jpg", ".jpeg")) else "image/png"


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file of each kind that must be reported and skipped; name -> a word its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is text, not a picture\n")
    whole = jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)))
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    Image.new("1", (10_000, 10_000)).save(folder / "bomb.png")  # 100 megapixels in a few kilobytes
    return {"empty.jpg": "empty", "notes.png": "not an image", "truncated.jpg": "truncated",
            "bomb.png": "decompression bomb"}
