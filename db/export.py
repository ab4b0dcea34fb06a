"""Exporting a dataset to a NumPy .npz archive that `numpy.load` opens without pickle, and the Python that reads a
selection of images from the database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from db.errors import CorruptArray
from db.queries import dataset_patch_pca, read_embeddings, stored_patch_grids
from db.schema import Dataset


def export_npz(session: Session, dataset: Dataset, target: Path, *, patch_grids: bool = False) -> int:
    """Write relative paths, labels, image ids, embeddings (and patch grids) in one order; return the image count.

    Patch grids are written as stored: full grids as `patch_grids` (N, grid height, grid width, embed dim); reduced
    ones as `patch_coords` (N, grid height, grid width, patch dims) with their basis, `patch_mean` (embed dim,) and
    `patch_axes` (patch dims, embed dim), so `patch_mean + patch_coords @ patch_axes` gives the grids the dashboard
    shows (up to float16 rounding), without writing the full size that reducing saved.
    """
    read = read_embeddings(session, dataset)
    arrays = {
        "image_ids": read.image_ids,
        "relpaths": np.array(read.relpaths, dtype=str),
        "labels": np.array([label or "" for label in read.labels], dtype=str),
        "embeddings": read.embeddings,
        "provenance": np.array(json.dumps(_provenance(dataset))),
    }
    if patch_grids:
        arrays.update(_patch_grids(session, dataset, read.image_ids))
    with open(target, "wb") as handle:
        np.savez(handle, **arrays)
    return len(read.image_ids)


def _patch_grids(session: Session, dataset: Dataset, image_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The grids in the order of `image_ids`, read in one statement, with the basis of reduced ones."""
    rows = {int(image_id): row for row, image_id in enumerate(image_ids)}
    grids = np.empty((len(rows), dataset.grid_height, dataset.grid_width, dataset.stored_patch_dims), np.float16)
    filled = np.zeros(len(rows), bool)
    for image_id, grid in stored_patch_grids(session, dataset):
        if image_id in rows:
            grids[rows[image_id]] = grid
            filled[rows[image_id]] = True
    if not filled.all():
        raise CorruptArray(f"dataset {dataset.name!r} holds {int((~filled).sum())} images without a patch grid: "
                           f"remove it (`dinoscope remove {dataset.name}`) and index it again")
    if dataset.patch_dims is None:
        return {"patch_grids": grids}
    if not rows:
        return {"patch_coords": grids}
    pca = dataset_patch_pca(session, dataset)  # a reduced dataset has a basis from its first stored grid on
    return {"patch_coords": grids, "patch_mean": pca.mean, "patch_axes": pca.axes}


def _provenance(dataset: Dataset) -> dict:
    provenance = {}
    for column in Dataset.__table__.columns:
        value = getattr(dataset, column.key)
        provenance[column.key] = value.isoformat() if hasattr(value, "isoformat") else value
    return provenance



SNIPPET_CHUNK = 10_000  # ids per query: under SQLite's limit of bound parameters (32,766)


def selection_snippet(db_url: str, image_ids: list[int] | None, ids_file: str | None = None) -> str:
    """Python that reads a selection's images from the database with SQLAlchemy and numpy: `image_ids`, and
    their `relpaths`, `labels` and `embeddings` (float32, n x D, in the order of `image_ids`), decoded as
    db.arrays stores them (raw little-endian bytes with the dtype and shape beside them). The ids are written
    in, or (for `ids_file`, a selection's JSON export) read from that file. A server's password is left out."""
    url = make_url(db_url).render_as_string(hide_password=True)
    if ids_file is None:
        ids = f"image_ids = {list(map(int, image_ids or []))!r}"
    else:
        ids = f"image_ids = json.load(open({ids_file!r}))[\"image_ids\"]  # the selection's JSON download"
    return f'''import json

import numpy as np
from sqlalchemy import bindparam, create_engine, text

{ids}
query = text(
    "SELECT images.id, images.relpath, images.label, embeddings.data, embeddings.dtype, embeddings.shape "
    "FROM images JOIN embeddings ON embeddings.image_id = images.id WHERE images.id IN :ids"
).bindparams(bindparam("ids", expanding=True))
rows = {{}}
with create_engine({url!r}).connect() as connection:
    for start in range(0, len(image_ids), {SNIPPET_CHUNK}):
        for row in connection.execute(query, {{"ids": image_ids[start:start + {SNIPPET_CHUNK}]}}):
            rows[row.id] = row
relpaths = [rows[i].relpath for i in image_ids]
labels = [rows[i].label for i in image_ids]
# Each embedding is stored as raw little-endian bytes, with its dtype (such as <f4) and shape beside it.
embeddings = np.stack([
    np.frombuffer(rows[i].data, dtype=rows[i].dtype).reshape([int(n) for n in rows[i].shape.split(",")])
    for i in image_ids
])
'''
