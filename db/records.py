"""What the indexer hands the storage layer, as plain records: no SQLAlchemy here, so the processes that decode
files (the indexer's DataLoader workers) never import it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JpegImage:
    jpeg: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ImageContent:
    """Everything derived from an image's bytes: the same bytes always give the same content."""

    width: int
    height: int
    embedding: np.ndarray  # (D,)
    patch_grid: np.ndarray  # (grid height, grid width, D), D the dataset's stored_patch_dims once stored
    thumbnails: dict[str, JpegImage]  # by kind: "gallery", "preview"


@dataclass(frozen=True)
class FileFacts:
    """What the file system says about an image file."""

    relpath: str
    label: str | None
    content_hash: str
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class DatasetProvenance:
    """What a new dataset records once, and every one of its vectors shares: where its images are, the model,
    weights, input size and precision that embed them, and how its patch grids are stored."""

    name: str
    root: str
    model_name: str
    weights_kind: str  # "hub", "file" or "random"
    weights_identity: str
    weights_source: str | None
    image_size: int
    patch_size: int
    grid_height: int
    grid_width: int
    embed_dim: int
    patch_dims: int | None  # None: full patch grids
    precision: str
    preprocessing: dict
    library_versions: dict
