"""Reading the database in the domain's words: datasets, their images, embeddings, patch grids and thumbnails."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.errors import CorruptArray, DatasetNotFound
from db.patch_pca import PatchPca
from db.schema import Dataset, Embedding, Image, IndexRun, PatchBasis, PatchGrid, Thumbnail

EMBEDDING_DTYPE = "<f4"
PATCH_GRID_DTYPE = "<f2"
PATCH_BASIS_DTYPE = "<f4"


@dataclass(frozen=True)
class StoredImage:
    id: int
    relpath: str
    content_hash: str
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class PatchBasisFacts:
    """How a reduced dataset's basis was fitted, without its arrays."""

    fitted_images: int
    fitted_tokens: int
    explained_variance: float


@dataclass(frozen=True)
class DatasetSummary:
    dataset: Dataset
    image_count: int
    last_run: IndexRun | None
    patch_basis: PatchBasisFacts | None = None  # None for full grids, or while a reduced dataset has no basis yet


def find_dataset(session: Session, name: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.name == name))


def dataset_by_name(session: Session, name: str) -> Dataset:
    dataset = find_dataset(session, name)
    if dataset is None:
        known = session.scalars(select(Dataset.name).order_by(Dataset.name)).all()
        listing = ", ".join(known) if known else "none yet"
        raise DatasetNotFound(f"no dataset named {name!r} (datasets: {listing})")
    return dataset


def datasets_newest_first(session: Session) -> list[Dataset]:
    """Every dataset, the most recently updated first."""
    return list(session.scalars(select(Dataset).order_by(Dataset.updated_at.desc(), Dataset.id.desc())))


def dataset_summaries(session: Session) -> list[DatasetSummary]:
    counts = dict(session.execute(select(Image.dataset_id, func.count()).group_by(Image.dataset_id)).all())
    bases = {row.dataset_id: PatchBasisFacts(row.fitted_images, row.fitted_tokens, row.explained_variance)
             for row in session.execute(select(PatchBasis.dataset_id, PatchBasis.fitted_images,
                                               PatchBasis.fitted_tokens, PatchBasis.explained_variance))}
    summaries = []
    for dataset in session.scalars(select(Dataset).order_by(Dataset.name)):
        last_run = session.scalar(
            select(IndexRun).where(IndexRun.dataset_id == dataset.id).order_by(IndexRun.id.desc()).limit(1)
        )
        summaries.append(DatasetSummary(dataset, counts.get(dataset.id, 0), last_run, bases.get(dataset.id)))
    return summaries


def dataset_generations(session: Session) -> dict[str, int]:
    """Each dataset's generation by name, in name order: the one small query a page polls to learn of changes."""
    return dict(session.execute(select(Dataset.name, Dataset.generation).order_by(Dataset.name)).all())


def latest_run_state(session: Session) -> tuple | None:
    """(id, status, finished_at) of the newest index run of any dataset: what changes when a run starts or ends,
    even one that changed no image."""
    row = session.execute(select(IndexRun.id, IndexRun.status, IndexRun.finished_at)
                          .order_by(IndexRun.id.desc()).limit(1)).first()
    return tuple(row) if row else None


def stored_images(session: Session, dataset_id: int) -> dict[str, StoredImage]:
    """What the database holds of a dataset's files, by relative path."""
    rows = session.execute(
        select(Image.id, Image.relpath, Image.content_hash, Image.size_bytes, Image.mtime_ns)
        .where(Image.dataset_id == dataset_id)
    )
    return {row.relpath: StoredImage(*row) for row in rows}


def dataset_images(session: Session, dataset_id: int) -> list[Image]:
    return list(session.scalars(select(Image).where(Image.dataset_id == dataset_id).order_by(Image.relpath)))


def load_embeddings(session: Session, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, float32 matrix of shape (N, D)) of a dataset, in relative-path order."""
    rows = session.execute(
        select(Image.id, Embedding.data, Embedding.dtype, Embedding.shape)
        .join(Embedding, Embedding.image_id == Image.id)
        .where(Image.dataset_id == dataset.id)
        .order_by(Image.relpath)
    ).all()
    matrix = np.empty((len(rows), dataset.embed_dim), dtype=np.float32)
    for i, row in enumerate(rows):
        matrix[i] = Embedding(data=row.data, dtype=row.dtype, shape=row.shape).array(
            EMBEDDING_DTYPE, (dataset.embed_dim,)
        )
    return np.array([row.id for row in rows], dtype=np.int64), matrix


def patch_grid(session: Session, image_id: int) -> np.ndarray:
    """The float16 patch grid (grid height, grid width, embed dim) of an image; a reduced grid comes back
    reconstructed from its dataset's basis."""
    grid, dataset = session.execute(
        select(PatchGrid, Dataset)
        .join(Image, Image.id == PatchGrid.image_id)
        .join(Dataset, Dataset.id == Image.dataset_id)
        .where(PatchGrid.image_id == image_id)
    ).one()
    stored = _stored_grid(grid, dataset)
    return stored if dataset.patch_dims is None else dataset_patch_pca(session, dataset).reconstruct(stored)


def stored_patch_grid(session: Session, dataset: Dataset, image_id: int) -> np.ndarray:
    """An image's patch grid as stored: (grid height, grid width, dataset.stored_patch_dims) float16."""
    return _stored_grid(session.execute(select(PatchGrid).where(PatchGrid.image_id == image_id)).scalar_one(),
                        dataset)


def _stored_grid(grid: PatchGrid, dataset: Dataset) -> np.ndarray:
    return grid.array(PATCH_GRID_DTYPE, (dataset.grid_height, dataset.grid_width, dataset.stored_patch_dims))


def patch_pca(session: Session, dataset: Dataset) -> PatchPca | None:
    """The basis of a dataset that stores reduced patch grids, or None where there is none (yet)."""
    row = session.get(PatchBasis, dataset.id)
    if row is None:
        return None
    stacked = row.array(PATCH_BASIS_DTYPE, (dataset.patch_dims + 1, dataset.embed_dim))
    return PatchPca(stacked[0], stacked[1:], row.fitted_images, row.fitted_tokens, row.explained_variance)


def dataset_patch_pca(session: Session, dataset: Dataset) -> PatchPca:
    """The basis that a dataset's stored reduced grids need."""
    pca = patch_pca(session, dataset)
    if pca is None:
        raise CorruptArray(f"dataset {dataset.name!r} stores reduced patch grids but has no basis to read them")
    return pca


def thumbnail(session: Session, image_id: int, kind: str = "gallery") -> bytes | None:
    """The JPEG bytes of an image's gallery thumbnail or preview, or None for an unknown id."""
    return session.scalar(select(Thumbnail.jpeg).where(Thumbnail.image_id == image_id, Thumbnail.kind == kind))
