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


def scan_folder(root: Path) -> list[FoundFile]:
    """Every image file under `root`, sorted by relative path.

    Hidden files and folders are skipped. Symbolic links to folders are followed, but each real folder is
    visited once, so a link back up the tree cannot make the walk loop.
    """
    root = root.resolve()
    found: list[FoundFile] = []
    visited: set[tuple[int, int]] = set()

    def walk(folder: Path, prefix: str) -> None:
        stat = folder.stat()
        if (stat.st_dev, stat.st_ino) in visited:
            return
        visited.add((stat.st_dev, stat.st_ino))
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        walk(Path(entry.path), f"{prefix}{entry.name}/")
                    elif entry.is_file() and is_image_name(entry.name):
                        stat = entry.stat()
                        found.append(FoundFile(f"{prefix}{entry.name}", Path(entry.path), stat.st_size, stat.st_mtime_ns))
                except OSError:
                    continue  # a dangling link or a file that vanished while walking

    walk(root, "")
    return sorted(found, key=lambda f: f.relpath)


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
