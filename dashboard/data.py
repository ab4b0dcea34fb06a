"""What the pages read: datasets as arrays, cached per process by (dataset, generation).

One `DatasetStore` belongs to one app in one process. It asks the database for a dataset's generation on every
call (one small query) and reloads the arrays only when the indexer has changed the dataset since.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select

from db.engine import Database, open_database
from db.queries import dataset_by_name, dataset_summaries, load_embeddings, patch_grid, thumbnail
from db.schema import Dataset, Image


@dataclass(frozen=True)
class Provenance:
    name: str
    model_name: str
    weights_kind: str
    weights_identity: str
    image_size: int
    grid_shape: tuple[int, int]
    embed_dim: int
    precision: str
    image_count: int
    last_indexed: datetime | None
    generation: int

    @property
    def random_weights(self) -> bool:
        return self.weights_kind == "random"


@dataclass(frozen=True)
class DatasetView:
    """A dataset's images in one order: ids, paths, labels, embeddings (float32, N x D) as stored."""

    name: str
    generation: int
    image_ids: np.ndarray
    relpaths: list[str]
    labels: list[str | None]
    sizes: list[tuple[int, int]]
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    def position(self, image_id: int) -> int | None:
        found = np.flatnonzero(self.image_ids == image_id)
        return int(found[0]) if found.size else None


class DatasetStore:
    """Read-only access for one app in one process. The database is opened on first use, so a server started
    before the first index run works as soon as that run has written something."""

    def __init__(self, db_url: str, capacity: int = 4) -> None:
        self.db_url = db_url
        self._database: Database | None = None
        self._capacity = capacity
        self._views: dict[str, DatasetView] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Background jobs receive the store pickled: the address and size travel, connections and arrays do not."""
        return {"db_url": self.db_url, "capacity": self._capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["db_url"], state["capacity"])

    @property
    def database(self) -> Database:
        """Raises a db.errors.DinoscopeDbError with a readable message when the database cannot be used."""
        if self._database is None:
            self._database = open_database(self.db_url, readonly=True)
        return self._database

    def patch_grid(self, image_id: int) -> np.ndarray:
        """The stored float16 patch grid (grid height, grid width, D) of an image."""
        with self.database.session() as session:
            return patch_grid(session, image_id)

    def thumbnail(self, image_id: int, kind: str) -> tuple[bytes, str] | None:
        """(JPEG bytes, an ETag that changes with the image's content), or None for an unknown id."""
        with self.database.session() as session:
            jpeg = thumbnail(session, image_id, kind)
            content_hash = session.scalar(select(Image.content_hash).where(Image.id == image_id))
        return None if jpeg is None else (jpeg, f"{content_hash}-{kind}")

    def provenances(self) -> list[Provenance]:
        with self.database.session() as session:
            return [_provenance(summary.dataset, summary.image_count,
                                summary.last_run.finished_at if summary.last_run else None)
                    for summary in dataset_summaries(session)]

    def view(self, name: str) -> DatasetView:
        """The dataset's current arrays; raises db.errors.DatasetNotFound for an unknown name."""
        with self.database.session() as session:
            dataset = dataset_by_name(session, name)
            cached = self._views.get(name)
            if cached is not None and cached.generation == dataset.generation:
                return cached
            view = _load_view(session, dataset)
        with self._lock:
            self._views.pop(name, None)
            self._views[name] = view
            while len(self._views) > self._capacity:
                self._views.pop(next(iter(self._views)))
        return view


def _provenance(dataset: Dataset, image_count: int, last_indexed: datetime | None) -> Provenance:
    return Provenance(dataset.name, dataset.model_name, dataset.weights_kind, dataset.weights_identity,
                      dataset.image_size, (dataset.grid_height, dataset.grid_width), dataset.embed_dim,
                      dataset.precision, image_count, last_indexed, dataset.generation)


def _load_view(session, dataset: Dataset) -> DatasetView:
    image_ids, embeddings = load_embeddings(session, dataset)
    rows = {row.id: row for row in session.execute(
        select(Image.id, Image.relpath, Image.label, Image.width, Image.height).where(Image.dataset_id == dataset.id)
    )}
    ordered = [rows[int(i)] for i in image_ids]
    return DatasetView(dataset.name, dataset.generation, image_ids, [r.relpath for r in ordered],
                       [r.label for r in ordered], [(r.width, r.height) for r in ordered], embeddings)
