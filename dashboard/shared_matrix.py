"""A dataset's arrays as plain `.npy` files that every dashboard process maps into memory read-only: built once per
generation by whichever process needs it first, then shared through the page cache instead of copied into each
worker.

A generation is a folder: one `.npy` file per array (numpy's own format: `np.save` writes it, `np.load` maps it),
`document.json` (anything JSON holds: the images' paths and labels, say) and `manifest.json`, which names the
database, the dataset and its generation, lists the arrays' dtypes and shapes, and gives the document's size and
CRC-32. Opening a generation reads the manifest, the document and each array's header, never the arrays themselves:
a folder whose manifest does not name the key, whose document does not match its CRC, or whose array files'
headers or sizes do not match the manifest (a truncated file, say) is rebuilt, never trusted. Writers write a
temporary folder beside it and rename it into place, so a reader sees a whole generation or none, and two processes
building the same generation at once each leave a whole one there.

A new generation may be built from the previous one (`previous_shared`): the writer maps the previous files and
writes new ones, copying the rows it keeps (`Gathered`) and adding those it read anew. It never writes to a file of
the previous generation, which readers that still map it keep reading after it is removed. A generation is one
whole file per array rather than a list of segments, so every reader maps one contiguous matrix (a search is one
matrix product) and no reader ever concatenates.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import os
import secrets
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
DOCUMENT = "document.json"
DTYPES = ("<i4", "<i8", "<f4")  # what the arrays may hold
PLACING_ATTEMPTS = 5  # renames tried against other writers replacing the same damaged generation
TAKEN = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)  # a rename refused: the name is in use


@dataclass(frozen=True)
class MatrixKey:
    """What a folder holds: one generation of one dataset of one database, in the layout `content` of its writer
    (who changes that number whenever it changes what it stores)."""

    database_url: str
    dataset_id: int
    dataset_created: str  # a dataset removed and made again under the same id is another dataset
    generation: int
    content: int = 1

    @property
    def database(self) -> str:
        """The database's URL hashed: folder names and manifests never show it (a server URL may hold a password)."""
        return hashlib.sha256(self.database_url.encode()).hexdigest()[:16]

    @property
    def folder_name(self) -> str:
        return f"{self.database}-{self.dataset_id}-g{self.generation}"

    def header(self) -> dict:
        return {"database": self.database, "dataset_id": self.dataset_id, "dataset_created": self.dataset_created,
                "generation": self.generation, "content": self.content}


@dataclass(frozen=True)
class Gathered:
    """An array to write as rows of another (`source`, a mapped file say) and new rows, without holding it whole
    in memory: row i is source[taken[i]] where taken[i] >= 0, else the next row of `fresh`."""

    source: np.ndarray
    taken: np.ndarray  # int64 (N,)
    fresh: np.ndarray  # (number of -1 in taken, *source.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.taken), *self.source.shape[1:])

    def runs(self) -> Iterator[np.ndarray]:
        """The rows in order, as slices: each run of consecutive source rows is one (a batch added to a large
        matrix leaves few), each new row another."""
        kept = self.taken >= 0
        continues = np.zeros(len(kept), bool)
        continues[1:] = kept[1:] & kept[:-1] & (np.diff(self.taken) == 1)
        bounds, fresh = np.append(np.flatnonzero(~continues), len(kept)).tolist(), 0
        for start, stop in itertools.pairwise(bounds):
            if kept[start]:
                first = int(self.taken[start])
                yield self.source[first:first + stop - start]
            else:
                yield self.fresh[fresh:fresh + 1]
                fresh += 1

    def write_to(self, file: BinaryIO) -> None:
        """Write the array as a `.npy` file: written rather than mapped, as a new mapped file's page faults cost
        several times the copy."""
        header = {"descr": self.dtype.str, "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(file, header)
        file.writelines(np.ascontiguousarray(rows, self.dtype).data for rows in self.runs())

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.concatenate(list(self.runs())) if len(self.taken) else np.empty(self.shape, self.dtype)
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True)
class SharedContent:
    arrays: dict[str, np.ndarray | Gathered]  # read-only views of the mapped files when read back
    document: dict  # anything JSON can hold

    def in_memory(self) -> SharedContent:
        """The content with every Gathered array made."""
        return SharedContent({name: np.asarray(array) for name, array in self.arrays.items()}, self.document)


def read_shared(folder: Path, key: MatrixKey) -> SharedContent | None:
    """The content of `key`'s generation, its arrays mapped from their files; None when there is no valid one."""
    generation = Path(folder) / key.folder_name
    try:
        manifest = json.loads((generation / MANIFEST).read_bytes())
        if manifest["format"] != FORMAT_VERSION or manifest["key"] != key.header():
            return None
        raw = (generation / DOCUMENT).read_bytes()
        if len(raw) != manifest["document_bytes"] or zlib.crc32(raw) != manifest["document_crc32"]:
            return None
        document = json.loads(raw)
        arrays = {name: _mapped(generation / f"{name}.npy", dtype, tuple(shape))
                  for name, dtype, shape in manifest["arrays"]}
    except (OSError, EOFError, AttributeError, KeyError, TypeError, ValueError):  # missing, or not as written
        return None
    if not isinstance(document, dict) or any(array is None for array in arrays.values()):
        return None
    return SharedContent(arrays, document)


def previous_shared(folder: Path, key: MatrixKey) -> tuple[int, SharedContent] | None:
    """The newest valid generation of `key`'s dataset older than `key`'s, and its number; None when there is none
    (a reader may still map it while a new one is built from it: nothing here writes to it)."""
    older = []
    for path in Path(folder).glob(f"{key.database}-{key.dataset_id}-g*"):
        number = path.name.rpartition("-g")[2]
        if number.isdigit() and int(number) < key.generation:
            older.append(int(number))
    for generation in sorted(older, reverse=True):
        found = read_shared(folder, replace(key, generation=generation))
        if found is not None:
            return generation, found
    return None


@contextmanager
def one_builder(folder: Path, key: MatrixKey) -> Iterator[None]:
    """Held by one process at a time per dataset (an advisory lock on a file in `folder`): processes that find no
    generation build it one after the other, so the second finds the first's instead of building it again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{key.database}-{key.dataset_id}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_shared(folder: Path, key: MatrixKey, content: SharedContent) -> None:
    """Write `key`'s generation (a temporary folder renamed into place) and remove older generations."""
    folder = Path(folder)
    arrays = {name: array if isinstance(array, Gathered) else np.ascontiguousarray(array)
              for name, array in content.arrays.items()}
    for name, array in arrays.items():
        if not name.isidentifier() or array.dtype.str not in DTYPES:
            raise ValueError(f"cannot share array {name!r} of dtype {array.dtype} and shape {array.shape}")
    document = json.dumps(content.document).encode()
    manifest = {"format": FORMAT_VERSION, "key": key.header(), "document_bytes": len(document),
                "document_crc32": zlib.crc32(document),
                "arrays": [[name, array.dtype.str, list(array.shape)] for name, array in arrays.items()]}  # in order
    folder.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=folder, prefix=f".{key.folder_name}.", suffix=".tmp"))
    try:
        for name, array in arrays.items():
            if isinstance(array, Gathered):
                with open(temporary / f"{name}.npy", "wb") as file:
                    array.write_to(file)
            else:
                np.save(temporary / f"{name}.npy", array, allow_pickle=False)
        (temporary / DOCUMENT).write_bytes(document)
        (temporary / MANIFEST).write_text(json.dumps(manifest))
        _put_in_place(temporary, folder, key)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # already gone once renamed into place
    _remove_other_generations(folder, key)


def _mapped(path: Path, dtype: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The array of a `.npy` file mapped read-only (numpy reads its header only), or None when the header or the
    file's size is not what the manifest says."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    whole = (isinstance(array, np.memmap) and array.dtype.str == dtype and array.shape == shape
             and array.flags.c_contiguous and os.path.getsize(path) == array.offset + array.nbytes)
    return array.view(np.ndarray) if whole else None


def _put_in_place(temporary: Path, folder: Path, key: MatrixKey) -> None:
    """Rename the written folder to `key`'s name. A valid generation already there is kept (it holds the same
    arrays); anything else under that name is taken away first."""
    target = folder / key.folder_name
    for _ in range(PLACING_ATTEMPTS):
        try:
            os.rename(temporary, target)
            return
        except OSError as error:
            if error.errno not in TAKEN:
                raise
        if read_shared(folder, key) is not None:
            return
        _remove(target)
    raise OSError(errno.EEXIST, f"other writers kept replacing {target}")


def _remove(path: Path) -> None:
    """Take a generation's folder (or a file of an earlier format) away at once: renamed aside, then deleted. A
    process that still maps one of its files keeps reading it: removing a file only drops its name."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another writer took it away first
        return
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def _remove_other_generations(folder: Path, key: MatrixKey) -> None:
    """Older generations of the same dataset, and its files of the earlier one-file format (`*.matrix`)."""
    for path in folder.glob(f"{key.database}-{key.dataset_id}-g*"):
        if path.name != key.folder_name:
            _remove(path)
