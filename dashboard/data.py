"""What the pages read: datasets as arrays, cached per process by (dataset, generation).

One `DatasetStore` belongs to one app in one process. It asks the database for a dataset's generation on every
call (one small query) and reloads the arrays only when the indexer has changed the dataset since. With a cache
folder, a dataset's arrays come from a file in it that every process maps into memory (dashboard.shared_matrix):
the first process to need a generation builds it from the database, the others map it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from dashboard.analysis.projection import REDUCED_DIMENSIONS, principal_basis, row_norms
from dashboard.analysis.similarity import ReducedSearch, bounded_top_k, top_k
from dashboard.matrix_content import CONTENT, PATH_SEPARATOR, full_content, next_content
from dashboard.shared_matrix import MatrixKey, SharedContent, one_builder, previous_shared, read_shared, write_shared
from db.engine import Database, open_database
from db.patch_pca import PatchPca
from db.queries import (
    ByteCopy,
    byte_copies,
    content_hashes,
    dataset_by_name,
    dataset_generation,
    dataset_generations,
    dataset_summaries,
    datasets_sharing_images,
    latest_run_state,
    patch_grid,
    patch_grid_batches,
    patch_grids,
    patch_pca,
    read_embeddings,
    thumbnail,
)
from db.schema import Dataset, UploadedSet

log = logging.getLogger(__name__)
BOUNDED_SEARCH_FROM = 50_000  # images from which a query reads only the embeddings its bounds cannot rule out


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
    synthetic: bool = False  # written by `dinoscope synthetic`, never indexed
    # Of a dataset added from the browser: its set in the uploads folder, and who added it (None without login).
    uploaded_set: str | None = None
    owner: str | None = None
    root: str = ""  # the folder it was indexed from, on the indexer's machine

    @property
    def random_weights(self) -> bool:
        return self.weights_kind == "random"


@dataclass(frozen=True)
class DatasetView:
    """A dataset's images in one order: ids, paths, labels, sizes, and embeddings (float32, N x D) as stored.

    Two derived arrays are computed here unless given: `norms`, the embeddings' L2 norms (N,), so a query never
    normalises the matrix, and `reduced`, the L2-normalised embeddings on their first 50 principal axes (N, <= 50),
    which K-Means, the PCA projection and the pre-reduction of t-SNE and UMAP use, with `search`, what bounds a
    query's scores from them (similarity.ReducedSearch; None when `reduced` is given without it). Arrays may be
    read-only.
    """

    name: str
    generation: int
    image_ids: np.ndarray
    relpaths: list[str]
    labels: list[str | None]
    sizes: Sequence[tuple[int, int]]  # (width, height) per image; an (N, 2) int array when read from a store
    embeddings: np.ndarray
    norms: np.ndarray = None
    reduced: np.ndarray = None
    search: ReducedSearch | None = None

    def __post_init__(self) -> None:
        if self.norms is None:
            object.__setattr__(self, "norms", row_norms(self.embeddings))
        if self.reduced is None:
            basis = principal_basis(self.embeddings, REDUCED_DIMENSIONS)
            object.__setattr__(self, "reduced", basis.coordinates)
            object.__setattr__(self, "search", ReducedSearch.of(basis.coordinates, basis.axes, basis.mean,
                                                                 self.norms))

    def __len__(self) -> int:
        return len(self.image_ids)

    def position(self, image_id: int) -> int | None:
        found = np.flatnonzero(self.image_ids == image_id)
        return int(found[0]) if found.size else None

    def nearest(self, query: int | np.ndarray, k: int, *, exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the k images most cosine-similar to a row or a vector, and their scores (see top_k); from
        BOUNDED_SEARCH_FROM images on the same answer from bounded_top_k, which reads far fewer embeddings."""
        if self.search is not None and len(self) >= BOUNDED_SEARCH_FROM:
            return bounded_top_k(self.embeddings, self.norms, self.search, query, k, exclude_self=exclude_self)
        return top_k(self.embeddings, query, k, exclude_self=exclude_self, norms=self.norms)


class DatasetStore:
    """Read-only access for one app in one process. The database is opened on first use, so a server started
    before the first index run works as soon as that run has written something."""

    def __init__(self, db_url: str, cache_dir: Path | None = None, capacity: int = 4) -> None:
        """`cache_dir`: the folder shared by the app's processes, where datasets' arrays are kept for mapping
        (in its `matrices` folder); None keeps each process's arrays in its own memory."""
        self.db_url = db_url
        self.cache_dir = cache_dir
        self._database: Database | None = None
        self._capacity = capacity
        self._views: dict[str, tuple[MatrixKey, DatasetView]] = {}
        self._provenances: tuple[tuple, list[Provenance]] | None = None  # (the state they are of, the list)
        self._loading = threading.Lock()

    def __getstate__(self) -> dict:
        """Background jobs receive the store pickled: the address, cache folder and size travel, connections and
        arrays do not."""
        return {"db_url": self.db_url, "cache_dir": self.cache_dir, "capacity": self._capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["db_url"], state["cache_dir"], state["capacity"])

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

    def grid_shape(self, name: str) -> tuple[int, int]:
        """The patch grid shape (rows, columns) of every image of dataset `name`, without reading a grid; raises
        db.errors.DatasetNotFound for an unknown name."""
        with self.database.session() as session:
            dataset = dataset_by_name(session, name)
            return dataset.grid_height, dataset.grid_width

    def patch_grids(self, dataset: str, image_ids: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(image id, float16 patch grid) of those of `image_ids` that are images of `dataset`, in no particular
        order, read in one statement a few grids at a time (db.queries.patch_grids): iterate to the end."""
        with self.database.session() as session:
            yield from patch_grids(session, dataset_by_name(session, dataset), image_ids)
    def patch_grid_batches(self, name: str, image_ids: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(image ids, patch grids as stored) of these images of the dataset, in batches (db.queries
        patch_grid_batches), all read in one snapshot; reduced grids are coordinates in patch_basis(name)."""
        with self.database.session() as session:
            dataset = dataset_by_name(session, name)
            yield from patch_grid_batches(session, dataset, image_ids)

    def patch_basis(self, name: str) -> PatchPca | None:
        """The basis of a dataset that stores reduced patch grids (--patch-dims); None for full grids."""
        with self.database.session() as session:
            dataset = dataset_by_name(session, name)
            return None if dataset.patch_dims is None else patch_pca(session, dataset)

    def content_hashes(self, name: str) -> dict[int, str]:
        """Each image's content hash by image id."""
        with self.database.session() as session:
            return content_hashes(session, dataset_by_name(session, name).id)

    def datasets_sharing_images(self, name: str) -> dict[str, int]:
        """The other datasets holding a file of this one, with how many of its contents each holds."""
        with self.database.session() as session:
            return datasets_sharing_images(session, dataset_by_name(session, name).id)

    def thumbnail(self, image_id: int, kind: str) -> tuple[bytes, str] | None:
        """(JPEG bytes, an ETag that changes with the image's content), or None for an unknown id."""
        with self.database.session() as session:
            found = thumbnail(session, image_id, kind)
        return None if found is None else (found.jpeg, f"{found.content_hash}-{kind}")

    def byte_copies(self, name: str, among: list[str]) -> list[ByteCopy]:
        """The images of dataset `name` and of the datasets `among` whose bytes another of them holds too, for the
        contents that an image of `name` holds (see db.queries.byte_copies)."""
        with self.database.session() as session:
            return byte_copies(session, name, among)

    def provenances(self) -> list[Provenance]:
        """Every dataset's provenance. Counting the images reads every image's row, and every page asks for this:
        the list is kept until a dataset's generation or the newest index run changes (two small queries tell), or
        the database file is replaced."""
        with self.database.session() as session:
            state = (self.database.identity, dataset_generations(session), latest_run_state(session))
            kept = self._provenances
            if kept is not None and kept[0] == state:
                return kept[1]
            found = [_provenance(summary.dataset, summary.image_count,
                                 summary.last_run.finished_at if summary.last_run else None, summary.uploaded_set)
                     for summary in dataset_summaries(session)]
        self._provenances = (state, found)
        return found

    def generations(self) -> dict[str, int]:
        with self.database.session() as session:
            return dataset_generations(session)

    def view(self, name: str) -> DatasetView:
        """The dataset's current arrays; raises db.errors.DatasetNotFound for an unknown name."""
        with self.database.session() as session:
            dataset = dataset_by_name(session, name)
            key = MatrixKey(self.db_url, dataset.id, dataset.created_at.isoformat(), dataset.generation,
                            CONTENT)
            cached = self._views.get(name)
            if cached is not None and cached[0] == key:
                return cached[1]
            with self._loading:  # one load at a time in a process: the second thread then finds the first's
                cached = self._views.get(name)
                if cached is not None and cached[0] == key:
                    return cached[1]
                view = self._load(session, dataset, key)
                self._views.pop(name, None)
                self._views[name] = (key, view)
                while len(self._views) > self._capacity:
                    self._views.pop(next(iter(self._views)))
        return view

    def _load(self, session, dataset: Dataset, key: MatrixKey) -> DatasetView:
        folder = None if self.cache_dir is None else Path(self.cache_dir) / "matrices"
        shared = None if folder is None else read_shared(folder, key)
        if shared is None and folder is not None:
            try:
                with one_builder(folder, key):
                    shared = read_shared(folder, key) or _build_shared(session, dataset, key, folder)
            except OSError as error:  # a cache folder that cannot be made: this process keeps its own arrays
                log.warning("shared matrix of dataset %r not used (%s): this process reads its own copy",
                            dataset.name, error)
        if shared is None:
            shared = _read_dataset(session, dataset)
        arrays, images = shared.arrays, shared.document
        relpaths = images["relpaths"].split(PATH_SEPARATOR) if len(arrays["image_ids"]) else []
        labels = np.array(images["labels"], dtype=object)[arrays["label_codes"]].tolist()
        search = ReducedSearch(arrays["reduced"], arrays["pca_axes"], arrays["offset"], arrays["residuals"])
        return DatasetView(dataset.name, dataset.generation, arrays["image_ids"], relpaths, labels, arrays["sizes"],
                           arrays["embeddings"], arrays["norms"], arrays["reduced"], search)


def _provenance(dataset: Dataset, image_count: int, last_indexed: datetime | None,
                uploaded: UploadedSet | None) -> Provenance:
    return Provenance(dataset.name, dataset.model_name, dataset.weights_kind, dataset.weights_identity,
                      dataset.image_size, (dataset.grid_height, dataset.grid_width), dataset.embed_dim,
                      dataset.precision, image_count, last_indexed, dataset.generation,
                      bool((dataset.preprocessing or {}).get("synthetic")),
                      uploaded.set_id if uploaded else None, uploaded.owner if uploaded else None, dataset.root)


def _build_shared(session, dataset: Dataset, key: MatrixKey, folder: Path) -> SharedContent:
    """Write the dataset's shared generation, from the previous one where it can (dashboard.matrix_content), else
    from the database; the content comes back mapped from it."""
    previous = previous_shared(folder, key)
    built = None if previous is None else next_content(session, dataset, previous[1])
    if built is None:
        built = _read_dataset(session, dataset)
        # On PostgreSQL each statement may see a newer commit: share only what one generation holds.
        if dataset_generation(session, dataset.id) != key.generation:
            return built
    try:
        write_shared(folder, key, built)
    except OSError as error:  # a cache folder that cannot be written: this process keeps its own arrays
        log.warning("cannot write the shared matrix of dataset %r to %s: %s", dataset.name, folder, error)
        return built.in_memory()
    return read_shared(folder, key) or built.in_memory()


def _read_dataset(session, dataset: Dataset) -> SharedContent:
    """A dataset's images and embeddings from the database in relative-path order, with the derived arrays."""
    return full_content(read_embeddings(session, dataset))
