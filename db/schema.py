"""The database schema: SQLAlchemy 2 declarative models and the schema version they make up.

Arrays (embeddings, patch grids) live in their own tables so that reading every embedding of a dataset never
touches a patch grid or a thumbnail. Every child row cascades from its dataset, so removing a dataset is one
DELETE on SQLite (with foreign keys on) and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.arrays import decode_array, encode_array

# Bump whenever a table or column changes meaning; db.engine upgrades older files it knows how to, and refuses others.
SCHEMA_VERSION = 3  # 2: patch grids reduced by PCA (datasets.patch_dims, patch_bases); 3: uploaded_sets
SCHEMA_VERSION_INFO = "schema_version"  # a session's info entry: the version of the file it reads (db.engine)

def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    __tablename__ = "dinoscope_schema"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Dataset(Base):
    """One indexed collection and the provenance every one of its vectors shares."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    root: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(200))
    weights_kind: Mapped[str] = mapped_column(String(16))  # "hub", "file" or "random"
    weights_identity: Mapped[str] = mapped_column(Text)
    weights_source: Mapped[str | None] = mapped_column(Text)
    image_size: Mapped[int] = mapped_column(Integer)
    patch_size: Mapped[int] = mapped_column(Integer)
    grid_height: Mapped[int] = mapped_column(Integer)
    grid_width: Mapped[int] = mapped_column(Integer)
    embed_dim: Mapped[int] = mapped_column(Integer)
    # None: patch grids hold all embed_dim dimensions; a number: their coordinates in the dataset's PatchBasis.
    patch_dims: Mapped[int | None] = mapped_column(Integer)
    precision: Mapped[str] = mapped_column(String(8))
    preprocessing: Mapped[dict] = mapped_column(JSON)
    library_versions: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Bumped by every transaction that changes the dataset's images: caches key on it.
    generation: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def stored_patch_dims(self) -> int:
        """The last axis of the patch grids as stored."""
        return self.patch_dims or self.embed_dim


class UploadedSet(Base):
    """Where the files of a dataset added from the browser are (its set in the uploads folder), and who added it.
    Datasets indexed from the command line have none."""

    __tablename__ = "uploaded_sets"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    set_id: Mapped[str] = mapped_column(String(255), unique=True)
    owner: Mapped[str | None] = mapped_column(String(255))  # the user name; None on a server without login
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    """One image file of a dataset, by its path relative to the dataset's root."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "relpath"),
        Index("ix_images_dataset_hash", "dataset_id", "content_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    relpath: Mapped[str] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class _StoredArray:
    """Columns and codec shared by the tables that hold one typed array per image."""

    data: Mapped[bytes] = mapped_column(LargeBinary)
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[str] = mapped_column(String(64))

    def set_array(self, array: np.ndarray, dtype: str) -> None:
        encoded = encode_array(array, dtype)
        self.data, self.dtype, self.shape = encoded.data, encoded.dtype, encoded.shape

    def array(self, expected_dtype: str, expected_shape: tuple[int | None, ...]) -> np.ndarray:
        return decode_array(self.data, self.dtype, self.shape,
                            expected_dtype=expected_dtype, expected_shape=expected_shape)


class Embedding(_StoredArray, Base):
    """The global (CLS) vector of an image, float32 of length D, as the model gave it (not normalised)."""

    __tablename__ = "embeddings"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    normalized: Mapped[bool] = mapped_column(Boolean, default=False)


class PatchGrid(_StoredArray, Base):
    """The patch tokens of an image, float16 of shape (grid height, grid width, D), registers dropped; D is the
    dataset's stored_patch_dims (its coordinates in the PatchBasis when the dataset stores reduced grids)."""

    __tablename__ = "patch_grids"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)


class PatchBasis(_StoredArray, Base):
    """The PCA basis of a dataset whose patch grids are stored reduced, fitted once on its first embedded images:
    float32 of shape (1 + patch dims, embed dim), the mean token in row 0 and the principal axes below it."""

    __tablename__ = "patch_bases"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    fitted_images: Mapped[int] = mapped_column(Integer)
    fitted_tokens: Mapped[int] = mapped_column(Integer)
    explained_variance: Mapped[float] = mapped_column(Float)  # fraction of the fitted tokens' variance kept


class Thumbnail(Base):
    """A JPEG of an image: a small one for galleries and a larger preview for patch overlays."""

    __tablename__ = "thumbnails"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary)


class IndexRun(Base):
    """One run of the indexer over a dataset, with what it did."""

    __tablename__ = "index_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="running")  # then completed, interrupted or failed
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    added: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    moved: Mapped[int] = mapped_column(Integer, default=0)
    removed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column()
    options: Mapped[dict] = mapped_column(JSON)


class Failure(Base):
    """A file that could not be indexed in a run, and why."""

    __tablename__ = "failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id", ondelete="CASCADE"))
    relpath: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
