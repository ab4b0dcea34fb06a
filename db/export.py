"""Exporting a dataset to a NumPy .npz archive that `numpy.load` opens without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from db.queries import dataset_images, load_embeddings, patch_grid
from db.schema import Dataset


def export_npz(session: Session, dataset: Dataset, target: Path, *, patch_grids: bool = False) -> int:
    """Write relative paths, labels, image ids, embeddings (and patch grids) in one order; return the image count."""
    image_ids, embeddings = load_embeddings(session, dataset)
    images = {image.id: image for image in dataset_images(session, dataset.id)}
    ordered = [images[int(i)] for i in image_ids]
    arrays = {
        "image_ids": image_ids,
        "relpaths": np.array([image.relpath for image in ordered], dtype=str),
        "labels": np.array([image.label or "" for image in ordered], dtype=str),
        "embeddings": embeddings,
        "provenance": np.array(json.dumps(_provenance(dataset))),
    }
    if patch_grids:
        grids = np.empty((len(ordered), dataset.grid_height, dataset.grid_width, dataset.embed_dim), np.float16)
        for row, image_id in enumerate(image_ids):
            grids[row] = patch_grid(session, int(image_id))
        arrays["patch_grids"] = grids
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)
    return len(ordered)


def _provenance(dataset: Dataset) -> dict:
    provenance = {}
    for column in Dataset.__table__.columns:
        value = getattr(dataset, column.key)
        provenance[column.key] = value.isoformat() if hasattr(value, "isoformat") else value
    return provenance

