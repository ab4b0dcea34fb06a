"""Exporting a dataset to a NumPy .npz archive that `numpy.load` opens without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from db.queries import dataset_images, dataset_patch_pca, load_embeddings, stored_patch_grid
from db.schema import Dataset


def export_npz(session: Session, dataset: Dataset, target: Path, *, patch_grids: bool = False) -> int:
    """Write relative paths, labels, image ids, embeddings (and patch grids) in one order; return the image count.

    Patch grids are written as stored: full grids as `patch_grids` (N, grid height, grid width, embed dim); reduced
    ones as `patch_coords` (N, grid height, grid width, patch dims) with their basis, `patch_mean` (embed dim,) and
    `patch_axes` (patch dims, embed dim), so `patch_mean + patch_coords @ patch_axes` gives the grids the dashboard
    shows (up to float16 rounding), without writing the full size that reducing saved.
    """
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
        grids = np.empty((len(ordered), dataset.grid_height, dataset.grid_width, dataset.stored_patch_dims),
                         np.float16)
        for row, image_id in enumerate(image_ids):
            grids[row] = stored_patch_grid(session, dataset, int(image_id))
        if dataset.patch_dims is None:
            arrays["patch_grids"] = grids
        else:
            arrays["patch_coords"] = grids
            if ordered:  # a reduced dataset has a basis from its first stored grid on
                pca = dataset_patch_pca(session, dataset)
                arrays.update(patch_mean=pca.mean, patch_axes=pca.axes)
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)
    return len(ordered)


def _provenance(dataset: Dataset) -> dict:
    provenance = {}
    for column in Dataset.__table__.columns:
        value = getattr(dataset, column.key)
        provenance[column.key] = value.isoformat() if hasattr(value, "isoformat") else value
    return provenance

