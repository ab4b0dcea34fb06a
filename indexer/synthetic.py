"""Synthetic datasets written straight into the database, without a model: for benchmarks and tests at scale.

Every image belongs to one of `clusters` groups (labelled group0, group1, ...). Its embedding is its group's random
centre plus noise. Its picture is an ellipse in its group's colour on a plain background, at one of a few places;
its patch grid follows the picture: cells over the ellipse hold the image's embedding plus noise, the others a
background token shared by the dataset, so the within-image page finds the object where the picture shows it.
Pictures are drawn once per (colour, place) and their JPEGs (gallery and preview, at the indexer's sizes) are
stored for every image that has them; rows go in with one multi-row INSERT per table and batch
(db.mutations.add_images_in_bulk).
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image as PilImage
from PIL import ImageDraw

from db.engine import Database
from db.errors import DatasetExists
from db.mutations import add_images_in_bulk, bump_generation, create_dataset
from db.records import DatasetProvenance, FileFacts, ImageContent, JpegImage
from indexer.decode import thumbnails

BATCH_BYTES = 32 * 1024**2  # float32 patch tokens generated per batch (and transaction) at most
MAX_BATCH = 2000  # images per batch at most
COLOURS = 24  # distinct hues; groups beyond that share them


@dataclass(frozen=True)
class Place:
    """Where the object sits: an ellipse's box as fractions (x0, y0, x1, y1) of a picture of `size` pixels."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]

    def mask(self, grid: int) -> np.ndarray:
        """(grid, grid) bool: the patch cells whose centres lie inside the ellipse."""
        centres = (np.arange(grid) + 0.5) / grid
        x0, y0, x1, y1 = self.box
        dx = (centres[None, :] - (x0 + x1) / 2) / ((x1 - x0) / 2)
        dy = (centres[:, None] - (y0 + y1) / 2) / ((y1 - y0) / 2)
        return dx**2 + dy**2 <= 1.0


PLACES = (
    Place((0.2, 0.15, 0.8, 0.85), (640, 480)),
    Place((0.05, 0.1, 0.55, 0.7), (640, 480)),
    Place((0.45, 0.3, 0.95, 0.9), (640, 480)),
    Place((0.15, 0.25, 0.85, 0.75), (480, 640)),
    Place((0.1, 0.45, 0.6, 0.95), (480, 640)),
    Place((0.3, 0.05, 0.9, 0.55), (800, 450)),
)


def write_synthetic_dataset(database: Database, name: str, count: int, *, dim: int = 768, clusters: int = 20,
                            spread: float = 0.5, grid: int = 1, seed: int = 0,
                            progress: Callable[[int], None] | None = None) -> None:
    """Add a dataset of `count` images in `clusters` groups; `progress` is called with the images written so far.

    Embedding noise has standard deviation `spread` per dimension (centres have 1), patch tokens the same around
    the image's embedding or the background token.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    background = rng.standard_normal(dim, dtype=np.float32)
    groups = rng.integers(clusters, size=count)
    places = rng.integers(len(PLACES), size=count)
    masks = np.stack([place.mask(grid) for place in PLACES])
    pictures: dict[tuple[int, int], dict[str, JpegImage]] = {}
    batch = max(1, min(MAX_BATCH, BATCH_BYTES // (grid * grid * dim * 4)))
    with database.session() as session:
        dataset = create_dataset(session, DatasetProvenance(
            name=name, root=f"synthetic:{name}", model_name="synthetic", weights_kind="random",
            weights_identity=f"synthetic (seed {seed})", weights_source=None, image_size=grid * 14, patch_size=14,
            grid_height=grid, grid_width=grid, embed_dim=dim, patch_dims=None, precision="fp32",
            preprocessing={"synthetic": True}, library_versions={}))
        if dataset is None:
            raise DatasetExists(f"a dataset named {name!r} exists already: pick another name, or "
                                f"`dinoscope remove {name}` first")
    for start in range(0, count, batch):
        rows = range(start, min(start + batch, count))
        chosen = slice(rows.start, rows.stop)
        embeddings = centres[groups[chosen]] + spread * rng.standard_normal((len(rows), dim), dtype=np.float32)
        inside = masks[places[chosen]][..., None]  # (images, grid, grid, 1)
        tokens = np.where(inside, embeddings[:, None, None, :], background)
        tokens += spread * rng.standard_normal(tokens.shape, dtype=np.float32)
        images = []
        for i, vector, cells in zip(rows, embeddings, tokens):
            jpegs = _picture(pictures, int(groups[i]) % COLOURS, int(places[i]))
            group, (width, height) = int(groups[i]), PLACES[places[i]].size
            facts = FileFacts(f"group{group}/{i:07d}.jpg", f"group{group}", f"{seed:08x}{i:056x}",
                              len(jpegs["preview"].jpeg), 0)
            images.append((facts, ImageContent(width, height, vector, cells, jpegs)))
        with database.session() as session:
            add_images_in_bulk(session, dataset, images)
            bump_generation(session, dataset)
        if progress:
            progress(rows.stop)
    database.checkpoint()


def _picture(drawn: dict, colour: int, place: int) -> dict[str, JpegImage]:
    if (colour, place) not in drawn:
        spot = PLACES[place]
        width, height = spot.size
        picture = PilImage.new("RGB", spot.size, (222, 226, 230))
        x0, y0, x1, y1 = spot.box
        fill = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(colour / COLOURS, 0.7, 0.85))
        ImageDraw.Draw(picture).ellipse((x0 * width, y0 * height, x1 * width, y1 * height), fill=fill)
        drawn[(colour, place)] = thumbnails(picture)
    return drawn[(colour, place)]
