"""Finding the image files of a folder: which files count, their labels, and their content hashes."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


@dataclass(frozen=True)
class FoundFile:
    relpath: str  # POSIX-style, relative to the scanned root
    path: Path
    size_bytes: int
    mtime_ns: int

    @property
    def label(self) -> str | None:
        """The first sub-folder under the root, if the file is in one."""
        parts = self.relpath.split("/")
        return parts[0] if len(parts) > 1 else None


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


@dataclass
class FolderScan:
    found: list[FoundFile]  # sorted by relative path
    # (relative path, reason) of the folders and files that exist but could not be read: what is stored at or
    # under such a path may well still be there, so it must not count as vanished.
    unreadable: list[tuple[str, str]]

    def hides(self, relpath: str) -> bool:
        """Whether `relpath` is, or lies under, a path that could not be read."""
        return any(lies_under(relpath, path) for path, _ in self.unreadable)


def lies_under(relpath: str, path: str) -> bool:
    """Whether `relpath` is `path` or a path inside it."""
    return relpath == path or relpath.startswith(f"{path}/")


def scan_folder(root: Path) -> FolderScan:
    """Every image file under `root`, and the sub-folders and files that exist but cannot be read.

    Hidden files and folders are skipped. Symbolic links to folders are followed, but each real folder is
    visited once, so a link back up the tree cannot make the walk loop. Raises OSError if `root` itself cannot
    be listed.
    """
    root = root.resolve()
    scan = FolderScan([], [])
    visited: set[tuple[int, int]] = set()

    def walk(folder: Path, prefix: str) -> None:
        stat = folder.stat()
        if (stat.st_dev, stat.st_ino) in visited:
            return
        visited.add((stat.st_dev, stat.st_ino))
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relpath = f"{prefix}{entry.name}"
            try:
                is_folder = entry.is_dir()
            except OSError as error:  # a link whose target cannot be looked at: a stale network mount, say
                scan.unreadable.append((relpath, _reason("cannot read", error)))
                continue
            try:
                if is_folder:
                    walk(Path(entry.path), f"{relpath}/")
                elif entry.is_file() and is_image_name(entry.name):
                    stat = entry.stat()
                    scan.found.append(FoundFile(relpath, Path(entry.path), stat.st_size, stat.st_mtime_ns))
            except FileNotFoundError:
                continue  # a dangling link, or removed while walking: gone indeed
            except OSError as error:
                if is_folder or is_image_name(entry.name):
                    scan.unreadable.append((relpath, _reason("cannot list folder" if is_folder else "cannot read file",
                                                             error)))

    walk(root, "")
    scan.found.sort(key=lambda f: f.relpath)
    scan.unreadable.sort()
    return scan


def _reason(what: str, error: OSError) -> str:
    return f"{what}: {error.strerror or error}"


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
