"""Browsing a dataset: pages of the gallery, label filters, and one image's details with its nearest neighbours."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dashboard.data import DatasetView

GALLERY_COLUMNS = 10
PAGE_SIZES = (20, 50, 100, 200)
GALLERY_PAGE_SIZE = 50
NO_LABEL = "(no label)"


@dataclass(frozen=True)
class GalleryPage:
    positions: list[int]  # rows of the dataset view shown on this page
    page: int  # 1-based, clamped to the pages that exist
    page_count: int
    total: int  # images that pass the filter


@dataclass(frozen=True)
class Neighbour:
    image_id: int
    relpath: str
    score: float


@dataclass(frozen=True)
class ImageDetail:
    image_id: int
    relpath: str
    label: str | None
    width: int
    height: int
    neighbours: list[Neighbour]


def label_options(view: DatasetView) -> list[str]:
    labels = sorted({label for label in view.labels if label})
    return labels + [NO_LABEL] if any(not label for label in view.labels) and labels else labels


def gallery_page(view: DatasetView, label: str | None, page: int, per_page: int = GALLERY_PAGE_SIZE) -> GalleryPage:
    if label == NO_LABEL:
        matching = [i for i, found in enumerate(view.labels) if not found]
    elif label:
        matching = [i for i, found in enumerate(view.labels) if found == label]
    else:
        matching = range(len(view))  # never a list of a million rows for one page of them
    page_count = max(1, math.ceil(len(matching) / per_page))
    page = min(max(1, page), page_count)
    return GalleryPage(list(matching[(page - 1) * per_page: page * per_page]), page, page_count, len(matching))


def image_detail(view: DatasetView, image_id: int, k: int = 8) -> ImageDetail | None:
    position = view.position(image_id)
    if position is None:
        return None
    indices, scores = view.nearest(position, k)
    neighbours = [Neighbour(int(view.image_ids[i]), view.relpaths[i], float(s)) for i, s in zip(indices, scores)]
    width, height = view.sizes[position]
    return ImageDetail(image_id, view.relpaths[position], view.labels[position], width, height, neighbours)
