"""A dataset's arrays in one file that every dashboard process maps into memory read-only: built once per
generation by whichever process needs it first, then shared through the page cache instead of copied into each
worker.

A file is a 4 KiB header (a magic line, then JSON naming the database, the dataset and its generation, the arrays'
dtypes and shapes, and a CRC-32 of everything after the header), the arrays, each at a 64-byte aligned offset, and
last a JSON document (the images' paths and labels, say). A file whose header, size or checksum does not match is
rebuilt, never trusted. Writers write a temporary file in the same folder and rename it into place, so a reader
sees a whole file or none, and two processes building the same file at once each put a whole one there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import mmap
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"dinoscope shared matrix\n"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
ALIGNMENT = 64
SUFFIX = ".matrix"
DTYPES = ("<i4", "<i8", "<f4")  # what the arrays may hold


@dataclass(frozen=True)
class MatrixKey:
    """What a file holds: one generation of one dataset of one database, in the layout `content` of its writer
    (who changes that number whenever it changes what it stores)."""

    database_url: str
    dataset_id: int
    dataset_created: str  # a dataset removed and made again under the same id is another dataset
    generation: int
    content: int = 1

    @property
    def database(self) -> str:
        """The database's URL hashed: file names and headers never show it (a server URL may hold a password)."""
        return hashlib.sha256(self.database_url.encode()).hexdigest()[:16]

    @property
    def file_name(self) -> str:
        return f"{self.database}-{self.dataset_id}-g{self.generation}{SUFFIX}"

    def header(self) -> dict:
        return {"database": self.database, "dataset_id": self.dataset_id, "dataset_created": self.dataset_created,
                "generation": self.generation, "content": self.content}


@dataclass(frozen=True)
class SharedContent:
    arrays: dict[str, np.ndarray]  # read-only views of the mapped file when read back
    document: dict  # anything JSON can hold


def read_shared(folder: Path, key: MatrixKey) -> SharedContent | None:
    """The content of `key`'s file, its arrays mapped from the file; None when there is no valid file."""
    try:
        with open(Path(folder) / key.file_name, "rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # missing, unreadable, or empty (mmap refuses length 0)
        return None
    header = _parse_header(mapped[:HEADER_BYTES])
    try:
        if header["key"] != key.header():
            return None
        layout = _layout({name: (dtype, tuple(shape)) for name, dtype, shape in header["arrays"]},
                         header["document_bytes"])
        valid = len(mapped) == layout.end and zlib.crc32(memoryview(mapped)[HEADER_BYTES:]) == header["crc32"]
        document = json.loads(mapped[layout.document:layout.end]) if valid else None
    except (AttributeError, KeyError, TypeError, ValueError):  # a header that is not what a writer writes
        return None
    if not isinstance(document, dict):
        return None
    return SharedContent({name: np.frombuffer(mapped, dtype, math.prod(shape), offset).reshape(shape)
                          for name, (dtype, shape, offset) in layout.arrays.items()}, document)


@contextmanager
def one_builder(folder: Path, key: MatrixKey) -> Iterator[None]:
    """Held by one process at a time per dataset (an advisory lock on a file in `folder`): processes that find no
    file build it one after the other, so the second finds the first's instead of building it again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{key.database}-{key.dataset_id}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_shared(folder: Path, key: MatrixKey, content: SharedContent) -> None:
    """Write `key`'s file (a temporary file renamed into place) and remove older generations' files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = json.dumps(content.document).encode()
    arrays = {name: np.ascontiguousarray(array) for name, array in content.arrays.items()}
    layout = _layout({name: (array.dtype.str, array.shape) for name, array in arrays.items()}, len(document))
    pieces = []
    position = HEADER_BYTES
    for name, (_, _, offset) in layout.arrays.items():
        pieces += [bytes(offset - position), arrays[name].reshape(-1).view(np.uint8)]
        position = offset + arrays[name].nbytes
    pieces += [bytes(layout.document - position), document]
    crc = 0
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    header = {"format": FORMAT_VERSION, "key": key.header(), "crc32": crc, "document_bytes": len(document),
              "arrays": [[name, array.dtype.str, list(array.shape)] for name, array in arrays.items()]}  # in order
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{key.file_name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(_header_bytes(header))
            for piece in pieces:
                file.write(piece)
        os.replace(temporary, folder / key.file_name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _remove_other_generations(folder, key)


@dataclass(frozen=True)
class _Layout:
    arrays: dict[str, tuple[np.dtype, tuple[int, ...], int]]  # name: (dtype, shape, offset)
    document: int  # offset of the JSON document
    end: int  # the file's size


def _layout(arrays: dict[str, tuple[str, tuple[int, ...]]], document_bytes: int) -> _Layout:
    """Where each array starts after the header (aligned), where the document starts, and where the file ends."""
    placed, position = {}, HEADER_BYTES
    for name, (dtype, shape) in arrays.items():
        if dtype not in DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"cannot share array {name!r} of dtype {dtype} and shape {shape}")
        position = _aligned(position)
        placed[name] = (np.dtype(dtype), shape, position)
        position += math.prod(shape) * np.dtype(dtype).itemsize
    document = _aligned(position)
    return _Layout(placed, document, document + int(document_bytes))


def _aligned(position: int) -> int:
    return -(-position // ALIGNMENT) * ALIGNMENT


def _header_bytes(header: dict) -> bytes:
    encoded = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n"
    if len(encoded) > HEADER_BYTES:
        raise ValueError("too many arrays for the header")
    return encoded.ljust(HEADER_BYTES, b"\0")


def _parse_header(raw: bytes) -> dict | None:
    if not raw.startswith(MAGIC):
        return None
    try:
        header = json.loads(raw[len(MAGIC):].split(b"\n", 1)[0])
    except ValueError:
        return None
    return header if isinstance(header, dict) and header.get("format") == FORMAT_VERSION else None


def _remove_other_generations(folder: Path, key: MatrixKey) -> None:
    """Older generations' files of the same dataset. A process that still maps one keeps reading it: removing a
    file only drops its name."""
    for path in folder.glob(f"{key.database}-{key.dataset_id}-g*{SUFFIX}"):
        if path.name != key.file_name:
            path.unlink(missing_ok=True)
