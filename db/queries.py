"""Reading the database in the domain's words: datasets, their images, embeddings, patch grids and thumbnails."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session, aliased

from db.arrays import decode_array
from db.errors import CorruptArray, DatasetNotFound
from db.patch_pca import PatchPca
from db.schema import (
    SCHEMA_VERSION,
    SCHEMA_VERSION_INFO,
    Dataset,
    Embedding,
    Image,
    IndexRun,
    PatchBasis,
    PatchGrid,
    Thumbnail,
    UploadedSet,
)

EMBEDDING_DTYPE = "<f4"
PATCH_GRID_DTYPE = "<f2"
PATCH_BASIS_DTYPE = "<f4"
READ_BATCH = 4096  # rows fetched and decoded per step when every embedding or patch grid of a dataset is read
GRID_BATCH_BYTES = 32 * 1024**2  # stored patch grids read per statement at most, by patch_grid_batches
GRID_BATCH_IDS = 500  # image ids per statement at most (SQLite's older builds allow 999 parameters)


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
    uploaded_set: UploadedSet | None = None  # None for a dataset indexed from the command line


@dataclass(frozen=True)
class DatasetEmbeddings:
    """A dataset's images in relative-path order, with their embeddings as stored."""

    image_ids: np.ndarray  # int64 (N,)
    relpaths: list[str]
    labels: list[str | None]
    sizes: np.ndarray  # int32 (N, 2): width and height
    embeddings: np.ndarray  # float32 (N, D)
    content_hashes: list[str]


@dataclass(frozen=True)
class DatasetImageFacts:
    """A dataset's images in relative-path order, without their embeddings: what tells a new generation's rows
    from the previous one's (an embedding is derived from its image's content, so the content hash tells whether
    it changed)."""

    image_ids: np.ndarray  # int64 (N,)
    relpaths: list[str]
    labels: list[str | None]
    sizes: np.ndarray  # int32 (N, 2): width and height
    content_hashes: list[str]


@dataclass(frozen=True)
class StoredThumbnail:
    jpeg: bytes
    content_hash: str  # of the image it shows: changes whenever the thumbnail may


def find_dataset(session: Session, name: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.name == name))


def dataset_by_name(session: Session, name: str) -> Dataset:
    dataset = find_dataset(session, name)
    if dataset is None:
        known = session.scalars(select(Dataset.name).order_by(Dataset.name)).all()
        listing = ", ".join(known) if known else "none yet"
        raise DatasetNotFound(f"no dataset named {name!r} (datasets: {listing})")
    return dataset


def dataset_by_id(session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def dataset_generation(session: Session, dataset_id: int) -> int | None:
    """The dataset's generation as committed now (a session on PostgreSQL may see newer commits statement by
    statement); None where the dataset is gone."""
    return session.scalar(select(Dataset.generation).where(Dataset.id == dataset_id))


def datasets_newest_first(session: Session) -> list[Dataset]:
    """Every dataset, the most recently updated first."""
    return list(session.scalars(select(Dataset).order_by(Dataset.updated_at.desc(), Dataset.id.desc())))


def dataset_summaries(session: Session) -> list[DatasetSummary]:
    """Every dataset in name order, with its image count, its newest run, its basis and its uploaded set: four
    statements however many datasets there are."""
    counts = dict(session.execute(select(Image.dataset_id, func.count()).group_by(Image.dataset_id)).all())
    bases = {row.dataset_id: PatchBasisFacts(row.fitted_images, row.fitted_tokens, row.explained_variance)
             for row in session.execute(select(PatchBasis.dataset_id, PatchBasis.fitted_images,
                                               PatchBasis.fitted_tokens, PatchBasis.explained_variance))}
    newest = select(func.max(IndexRun.id)).group_by(IndexRun.dataset_id)
    last_runs = {run.dataset_id: run for run in session.scalars(select(IndexRun).where(IndexRun.id.in_(newest)))}
    if _holds_uploaded_sets(session):
        datasets = session.execute(select(Dataset, UploadedSet).outerjoin(UploadedSet).order_by(Dataset.name)).all()
    else:
        datasets = [(dataset, None) for dataset in session.scalars(select(Dataset).order_by(Dataset.name))]
    return [DatasetSummary(dataset, counts.get(dataset.id, 0), last_runs.get(dataset.id), bases.get(dataset.id),
                           uploaded)
            for dataset, uploaded in datasets]


def uploaded_set(session: Session, dataset: Dataset) -> UploadedSet | None:
    """Where the files of a dataset added from the browser are and who added it; None for one indexed from the
    command line."""
    return uploaded_sets(session, [dataset.id]).get(dataset.id)


def uploaded_sets(session: Session, dataset_ids: list[int]) -> dict[int, UploadedSet]:
    """The uploaded sets of those of these datasets that were added from the browser, by dataset id, in one
    statement."""
    if not dataset_ids or not _holds_uploaded_sets(session):
        return {}
    found = session.scalars(select(UploadedSet).where(UploadedSet.dataset_id.in_(dataset_ids)))
    return {row.dataset_id: row for row in found}


def _holds_uploaded_sets(session: Session) -> bool:
    """Whether the database has the uploaded_sets table: a file of this schema version does; a reader of an older
    file looks, as a writer may have upgraded it since the reader opened it (db.engine)."""
    return (session.info.get(SCHEMA_VERSION_INFO, SCHEMA_VERSION) == SCHEMA_VERSION
            or inspect(session.connection()).has_table(UploadedSet.__tablename__))


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


def image_with_content(session: Session, dataset_id: int, content_hash: str, preferred: int) -> int | None:
    """The id of an image of the dataset that holds these bytes: `preferred` if it still does, else any other, as
    `preferred` may have changed since the caller looked (a row's derived data always matches its content hash)."""
    holding = select(Image.id).where(Image.dataset_id == dataset_id, Image.content_hash == content_hash)
    return session.scalar(holding.where(Image.id == preferred)) or session.scalar(holding.limit(1))


def read_embeddings(session: Session, dataset: Dataset) -> DatasetEmbeddings:
    """Every image of a dataset with its embedding, in relative-path order, in one statement read READ_BATCH rows
    at a time.

    Each embedding is checked as db.arrays checks it (dtype, shape, byte count), and the batches are appended to
    one buffer that becomes the matrix without a copy (a large buffer grows in place), so reading never holds two.
    """
    dim = dataset.embed_dim
    expected = (np.dtype(EMBEDDING_DTYPE).str, str(dim), dim * np.dtype(EMBEDDING_DTYPE).itemsize)
    statement = (select(Image.id, Image.relpath, Image.label, Image.width, Image.height, Image.content_hash,
                        Embedding.data, Embedding.dtype, Embedding.shape)
                 .join(Embedding, Embedding.image_id == Image.id).where(Image.dataset_id == dataset.id)
                 .order_by(Image.relpath).execution_options(yield_per=READ_BATCH))
    ids, relpaths, labels, sizes, hashes, matrix = [], [], [], [], [], bytearray()
    for rows in session.execute(statement).partitions():
        for row in rows:
            if (row.dtype, row.shape, len(row.data)) != expected:
                decode_array(row.data, row.dtype, row.shape, expected_dtype=EMBEDDING_DTYPE, expected_shape=(dim,))
        ids += [row.id for row in rows]
        relpaths += [row.relpath for row in rows]
        labels += [row.label for row in rows]
        sizes += [(row.width, row.height) for row in rows]
        hashes += [row.content_hash for row in rows]
        matrix += b"".join(row.data for row in rows)
    embeddings = np.frombuffer(matrix, EMBEDDING_DTYPE).reshape(-1, dim).astype(np.float32, copy=False)
    return DatasetEmbeddings(np.array(ids, np.int64), relpaths, labels, np.array(sizes, np.int32).reshape(-1, 2),
                             embeddings, hashes)


def image_facts(session: Session, dataset: Dataset) -> DatasetImageFacts:
    """Every image of a dataset in relative-path order (the order of read_embeddings), in one statement."""
    statement = (select(Image.id, Image.relpath, Image.label, Image.width, Image.height, Image.content_hash)
                 .where(Image.dataset_id == dataset.id).order_by(Image.relpath))
    rows = session.connection().execute(statement).all()  # as plain rows: the ORM's result handling doubles the time
    ids, relpaths, labels, widths, heights, hashes = zip(*rows) if rows else ((),) * 6
    return DatasetImageFacts(np.array(ids, np.int64), list(relpaths), list(labels),
                             np.array([widths, heights], np.int32).T.reshape(-1, 2), list(hashes))


def embeddings_of(session: Session, dataset: Dataset, image_ids: Sequence[int]) -> np.ndarray | None:
    """The embeddings (len(image_ids), D) float32 of these images of the dataset, in their order, checked as
    read_embeddings checks them; None when one of them has none (removed since the caller looked, say)."""
    found: dict[int, np.ndarray] = {}
    wanted = [int(image_id) for image_id in image_ids]
    for start in range(0, len(wanted), GRID_BATCH_IDS):
        chunk = wanted[start:start + GRID_BATCH_IDS]
        statement = (select(Embedding.image_id, Embedding.data, Embedding.dtype, Embedding.shape)
                     .join(Image, Image.id == Embedding.image_id)
                     .where(Image.dataset_id == dataset.id, Embedding.image_id.in_(chunk)))
        for row in session.execute(statement):
            found[row.image_id] = decode_array(row.data, row.dtype, row.shape, expected_dtype=EMBEDDING_DTYPE,
                                               expected_shape=(dataset.embed_dim,))
    if len(found) != len(set(wanted)):
        return None
    return np.array([found[image_id] for image_id in wanted], np.float32).reshape(-1, dataset.embed_dim)


def load_embeddings(session: Session, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, float32 matrix of shape (N, D)) of a dataset, in relative-path order."""
    read = read_embeddings(session, dataset)
    return read.image_ids, read.embeddings


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


def stored_patch_grids(session: Session, dataset: Dataset) -> Iterator[tuple[int, np.ndarray]]:
    """(image id, patch grid as stored) of every image of a dataset, in one statement read READ_BATCH rows at a
    time."""
    statement = (select(PatchGrid.image_id, PatchGrid.data, PatchGrid.dtype, PatchGrid.shape)
                 .join(Image, Image.id == PatchGrid.image_id).where(Image.dataset_id == dataset.id)
                 .execution_options(yield_per=READ_BATCH))
    expected = (dataset.grid_height, dataset.grid_width, dataset.stored_patch_dims)
    for row in session.execute(statement):
        yield row.image_id, decode_array(row.data, row.dtype, row.shape, expected_dtype=PATCH_GRID_DTYPE,
                                         expected_shape=expected)


def patch_grid_batches(session: Session, dataset: Dataset,
                       image_ids: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(image ids (n,) int64, their patch grids as stored (n, grid height, grid width, stored patch dims) float16)
    of these images of the dataset, a batch of at most GRID_BATCH_BYTES (and GRID_BATCH_IDS ids) per statement, in
    the order asked; ids of other datasets, or of no image, are left out."""
    expected = (dataset.grid_height, dataset.grid_width, dataset.stored_patch_dims)
    grid_bytes = int(np.prod(expected)) * np.dtype(PATCH_GRID_DTYPE).itemsize
    batch = max(1, min(GRID_BATCH_IDS, GRID_BATCH_BYTES // grid_bytes))
    for start in range(0, len(image_ids), batch):
        wanted = [int(i) for i in image_ids[start:start + batch]]
        rows = session.execute(select(PatchGrid.image_id, PatchGrid.data, PatchGrid.dtype, PatchGrid.shape)
                               .join(Image, Image.id == PatchGrid.image_id)
                               .where(Image.dataset_id == dataset.id, PatchGrid.image_id.in_(wanted))).all()
        found = {row.image_id: row for row in rows}
        ids = [i for i in wanted if i in found]
        grids = np.empty((len(ids), *expected), PATCH_GRID_DTYPE)
        for slot, image_id in enumerate(ids):
            row = found[image_id]
            grids[slot] = decode_array(row.data, row.dtype, row.shape, expected_dtype=PATCH_GRID_DTYPE,
                                       expected_shape=expected)
        yield np.array(ids, np.int64), grids


def content_hashes(session: Session, dataset_id: int) -> dict[int, str]:
    """Each image's content hash (of its file's bytes) by image id, in one statement."""
    return dict(session.execute(select(Image.id, Image.content_hash).where(Image.dataset_id == dataset_id)).all())


def datasets_sharing_images(session: Session, dataset_id: int) -> dict[str, int]:
    """The other datasets that hold a file of this dataset (the same content hash), by name in name order, with how
    many of this dataset's distinct contents each holds; one statement."""
    theirs = aliased(Image)
    # Each other image's content looked up in this dataset through the (dataset, content hash) index.
    ours = select(Image.id).where(Image.dataset_id == dataset_id, Image.content_hash == theirs.content_hash)
    rows = session.execute(
        select(Dataset.name, func.count(func.distinct(theirs.content_hash)))
        .join(theirs, theirs.dataset_id == Dataset.id)
        .where(Dataset.id != dataset_id, ours.exists()).group_by(Dataset.name).order_by(Dataset.name))
    return dict(rows.all())


def patch_grids(session: Session, dataset: Dataset, image_ids: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(image id, float16 patch grid as patch_grid gives it: a reduced dataset's reconstructed) of those of
    `image_ids` that are images of `dataset`, read by patch_grid_batches (only a batch held at once), and one more
    statement for a reduced dataset's basis."""
    if not image_ids:
        return
    pca = None if dataset.patch_dims is None else dataset_patch_pca(session, dataset)
    for ids, grids in patch_grid_batches(session, dataset, image_ids):
        for image_id, grid in zip(ids.tolist(), grids):
            yield image_id, grid if pca is None else pca.reconstruct(grid)


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


def thumbnail(session: Session, image_id: int, kind: str = "gallery") -> StoredThumbnail | None:
    """An image's gallery thumbnail or preview with its content hash, in one statement; None for an unknown id."""
    row = session.execute(select(Thumbnail.jpeg, Image.content_hash).join(Image, Image.id == Thumbnail.image_id)
                          .where(Thumbnail.image_id == image_id, Thumbnail.kind == kind)).first()
    return None if row is None else StoredThumbnail(row.jpeg, row.content_hash)


@dataclass(frozen=True)
class ByteCopy:
    """An image whose bytes another image of the datasets compared also holds."""

    content_hash: str
    image_id: int
    dataset: str
    relpath: str


def byte_copies(session: Session, dataset: str, among: list[str]) -> list[ByteCopy]:
    """The images of the datasets named `dataset` and `among` whose content hash another of them holds too, for the
    hashes that an image of `dataset` holds; by hash, dataset name and path, in one statement."""
    compared = select(Dataset.id).where(Dataset.name.in_(sorted({dataset, *among})))
    duplicated = (select(Image.content_hash).where(Image.dataset_id.in_(compared)).group_by(Image.content_hash)
                  .having(func.count() > 1))
    held = select(Image.content_hash).join(Dataset, Dataset.id == Image.dataset_id).where(Dataset.name == dataset)
    rows = session.execute(
        select(Image.content_hash, Image.id, Dataset.name, Image.relpath).join(Dataset, Dataset.id == Image.dataset_id)
        .where(Image.dataset_id.in_(compared), Image.content_hash.in_(duplicated), Image.content_hash.in_(held))
        .order_by(Image.content_hash, Dataset.name, Image.relpath))
    return [ByteCopy(*row) for row in rows]
