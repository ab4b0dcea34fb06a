"""Writing the database: what the indexer stores per image and per dataset. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.arrays import encode_array
from db.patch_pca import PatchPca
from db.queries import EMBEDDING_DTYPE, PATCH_BASIS_DTYPE, PATCH_GRID_DTYPE, patch_pca, stored_patch_grid
from db.records import DatasetProvenance, FileFacts, ImageContent, JpegImage
from db.schema import Dataset, Embedding, Image, PatchBasis, PatchGrid, Thumbnail, UploadedSet, utcnow


def create_dataset(session: Session, provenance: DatasetProvenance) -> Dataset | None:
    """Add a dataset; None, with nothing added, where one of its name exists (another process, a shard of the same
    job say, may have created it since the caller looked)."""
    dataset = Dataset(**asdict(provenance))
    try:
        with session.begin_nested():
            session.add(dataset)
    except IntegrityError:
        return None
    return dataset


def record_uploaded_set(session: Session, dataset: Dataset, set_id: str, owner: str | None) -> UploadedSet:
    """Record that `dataset` was added from the browser by `owner` (None on a server without login), its files in
    the uploads folder's set `set_id`. A dataset has one set: recording a second raises ConflictingWrite."""
    uploaded = UploadedSet(dataset_id=dataset.id, set_id=set_id, owner=owner)
    session.add(uploaded)
    session.flush()
    return uploaded


def add_image(session: Session, dataset: Dataset, facts: FileFacts, content: ImageContent) -> Image:
    image = Image(dataset_id=dataset.id, relpath=facts.relpath, label=facts.label, content_hash=facts.content_hash,
                  size_bytes=facts.size_bytes, mtime_ns=facts.mtime_ns, width=content.width, height=content.height)
    session.add(image)
    session.flush()
    _insert_contents(session, [(image.id, content)])
    return image


def add_images_in_bulk(session: Session, dataset: Dataset, images: Sequence[tuple[FileFacts, ImageContent]]) -> None:
    """Add many new images at once: one multi-row INSERT per table, without loading a row back as an object."""
    if not images:
        return
    image_ids = session.scalars(
        insert(Image).returning(Image.id, sort_by_parameter_order=True),
        [{"dataset_id": dataset.id, "relpath": facts.relpath, "label": facts.label,
          "content_hash": facts.content_hash, "size_bytes": facts.size_bytes, "mtime_ns": facts.mtime_ns,
          "width": content.width, "height": content.height} for facts, content in images],
    ).all()
    _insert_contents(session, list(zip(image_ids, [content for _, content in images])))


def replace_image_content(session: Session, image_id: int, facts: FileFacts, content: ImageContent) -> None:
    """A file changed in place: its row keeps its id, its derived data is replaced."""
    for table in (Embedding, PatchGrid, Thumbnail):
        session.execute(delete(table).where(table.image_id == image_id))
    session.execute(
        update(Image).where(Image.id == image_id).values(
            label=facts.label, content_hash=facts.content_hash, size_bytes=facts.size_bytes,
            mtime_ns=facts.mtime_ns, width=content.width, height=content.height, indexed_at=utcnow(),
        )
    )
    _insert_contents(session, [(image_id, content)])


def stored_content(session: Session, dataset: Dataset, image_id: int) -> ImageContent:
    """Read back an image's derived data, to give a file with the same bytes without running the model."""
    image = session.get(Image, image_id)
    embedding = session.get(Embedding, image_id).array(EMBEDDING_DTYPE, (dataset.embed_dim,))
    grid = stored_patch_grid(session, dataset, image_id)  # copied as stored: reduced grids stay reduced
    thumbnails = {
        t.kind: JpegImage(t.jpeg, t.width, t.height)
        for t in session.scalars(select(Thumbnail).where(Thumbnail.image_id == image_id))
    }
    return ImageContent(image.width, image.height, embedding, grid, thumbnails)


def move_image(session: Session, image_id: int, from_relpath: str, facts: FileFacts) -> bool:
    """A file was renamed or moved within the dataset: same bytes, new path (and so maybe a new label). False, with
    nothing changed, where the row no longer holds `from_relpath`: another run moved or removed it meanwhile."""
    moved = session.execute(
        update(Image).where(Image.id == image_id, Image.relpath == from_relpath).values(
            relpath=facts.relpath, label=facts.label, size_bytes=facts.size_bytes, mtime_ns=facts.mtime_ns
        )
    )
    return moved.rowcount == 1


def touch_image(session: Session, image_id: int, facts: FileFacts) -> None:
    """A file's time stamp changed but its bytes did not: remember the new time stamp, keep the embedding."""
    session.execute(update(Image).where(Image.id == image_id).values(size_bytes=facts.size_bytes,
                                                                     mtime_ns=facts.mtime_ns))


def remove_images(session: Session, image_ids: list[int]) -> None:
    for start in range(0, len(image_ids), 500):
        session.execute(delete(Image).where(Image.id.in_(image_ids[start:start + 500])))


def remove_vanished_images(session: Session, images: list[tuple[int, str]]) -> int:
    """Remove the rows (id, relative path) of files that vanished, each only while it still holds that path (a
    concurrent run, another shard, may have moved it to where its bytes are now); return how many went."""
    removed = 0
    for start in range(0, len(images), 500):
        chunk = images[start:start + 500]
        removed += session.execute(delete(Image).where(tuple_(Image.id, Image.relpath).in_(chunk))).rowcount
    return removed


def bump_generation(session: Session, dataset: Dataset) -> None:
    session.execute(
        update(Dataset).where(Dataset.id == dataset.id).values(generation=Dataset.generation + 1, updated_at=utcnow())
    )


def store_patch_pca(session: Session, dataset: Dataset, pca: PatchPca) -> PatchPca:
    """Store a reduced dataset's basis unless one is stored already; return the stored one, which every grid of
    the dataset must use (two processes indexing one new dataset at once both fit one, and the first one wins)."""
    row = PatchBasis(dataset_id=dataset.id, fitted_images=pca.fitted_images, fitted_tokens=pca.fitted_tokens,
                     explained_variance=pca.explained_variance)
    row.set_array(np.vstack([pca.mean[None, :], pca.axes]), PATCH_BASIS_DTYPE)
    if patch_pca(session, dataset) is None:
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # another process stored one between our look and our insert
            pass
    return patch_pca(session, dataset)


def remove_dataset(session: Session, dataset: Dataset) -> None:
    session.execute(delete(Dataset).where(Dataset.id == dataset.id))


def _insert_contents(session: Session, contents: Sequence[tuple[int, ImageContent]]) -> None:
    """The derived data of images (by id): one executemany INSERT per table, whatever the number of images."""
    session.execute(insert(Embedding), [
        {"image_id": image_id, "normalized": False, **asdict(encode_array(content.embedding, EMBEDDING_DTYPE))}
        for image_id, content in contents])
    session.execute(insert(PatchGrid), [
        {"image_id": image_id, **asdict(encode_array(content.patch_grid, PATCH_GRID_DTYPE))}
        for image_id, content in contents])
    session.execute(insert(Thumbnail), [
        {"image_id": image_id, "kind": kind, "width": t.width, "height": t.height, "jpeg": t.jpeg}
        for image_id, content in contents for kind, t in content.thumbnails.items()])
