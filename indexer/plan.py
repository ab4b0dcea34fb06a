"""What an index run has to do: the difference between a folder as scanned and the dataset as stored.

A file whose size and modification time are unchanged is trusted as unchanged; any other file is hashed, and
its content hash decides: same bytes under the same path is unchanged, same bytes under a path that vanished is
a move, same bytes as an image already stored is a copy, and only bytes never seen before go to the model. A
path the scan could not read (a folder it could not list) is a failure, never a removal: what is stored under it
stays as it is.

A shard run (`--shard I/N`) writes only the paths of its shard: it adds and changes its own files, removes its
own vanished files, and takes a vanished row of any shard when one of its new files holds the same bytes. Every
shard pairs vanished rows with new files the same way (both in path order), so the shard of the vanished path
knows to leave the row to the shard of the new path, and N shard runs leave the dataset as one whole run would.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from db.queries import StoredImage
from db.records import FileFacts
from indexer.scan import FolderScan, FoundFile, lies_under


@dataclass(frozen=True)
class Shard:
    """Shard `number` of `count`, counted from 1: the files whose relative path hashes to it. The hash is SHA-256
    of the path, so every process on every machine splits a folder alike (Python's hash() is salted per process)."""

    number: int = 1
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'2/4' is the second of four shards; raises ValueError with a readable message."""
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not I/N: give the shard's number and the number of shards, like 1/4")
        number, count = int(match[1]), int(match[2])
        if count < 1 or not 1 <= number <= count:
            raise ValueError(f"there is no shard {number}/{count}: shards are counted from 1, so N shards are "
                             f"1/N to N/N (like 1/{max(count, 2)})")
        return cls(number, count)

    @property
    def whole(self) -> bool:
        return self.count == 1

    def holds(self, relpath: str) -> bool:
        if self.count == 1:
            return True
        digest = hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.number - 1

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"


WHOLE_FOLDER = Shard(1, 1)


@dataclass
class EmbedJob:
    """Distinct bytes to embed once, then store under every path that holds them."""

    path: Path
    targets: list[tuple[FileFacts, int | None]]  # (facts, id of the image row it replaces, or None if new)


@dataclass
class IndexPlan:
    unchanged: int = 0
    touched: list[tuple[int, FileFacts]] = field(default_factory=list)
    moved: list[tuple[StoredImage, FileFacts]] = field(default_factory=list)  # (the vanished row, where it went)
    copies: list[tuple[int, FileFacts, int | None]] = field(default_factory=list)  # (source id, facts, replaced id)
    embed: list[EmbedJob] = field(default_factory=list)
    removed: list[StoredImage] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)

    @property
    def changes_without_model(self) -> bool:
        return bool(self.touched or self.moved or self.copies or self.removed)


def plan_index(
    scan: FolderScan,
    stored: dict[str, StoredImage],
    hash_file: Callable[[Path], str],
    hashing_progress: Callable[[Iterable[FoundFile]], Iterable[FoundFile]] = lambda files: files,
    shard: Shard = WHOLE_FOLDER,
) -> IndexPlan:
    """What to do. Rows at or under a path the scan could not read are left as they are (not removed, not moved),
    and that path is reported as a failure."""
    plan = IndexPlan()
    for path, reason in scan.unreadable:
        kept = sum(lies_under(relpath, path) for relpath in stored)
        plan.unreadable.append((path, reason if not kept else f"{reason}; the image stored under it is kept"
                                if kept == 1 else f"{reason}; the {kept} images stored under it are kept"))
    stored = {relpath: image for relpath, image in stored.items() if not scan.hides(relpath)}
    found = scan.found
    found_paths = {f.relpath for f in found}
    current_by_hash: dict[str, int] = {}  # bytes already stored under a path that still holds them
    candidates = []
    for f in found:
        known = stored.get(f.relpath)
        if known and (known.size_bytes, known.mtime_ns) == (f.size_bytes, f.mtime_ns):
            plan.unchanged += shard.holds(f.relpath)
            current_by_hash.setdefault(known.content_hash, known.id)
        else:
            candidates.append(f)
    gone = sorted((image for relpath, image in stored.items() if relpath not in found_paths),
                  key=lambda image: image.relpath)

    # New files of other shards are hashed too where they may hold the bytes of a vanished file (same size):
    # that vanished row is theirs to move, not this shard's to remove.
    gone_sizes = {image.size_bytes for image in gone}
    to_hash = [f for f in candidates if shard.holds(f.relpath)
               or (f.relpath not in stored and f.size_bytes in gone_sizes)]
    digests: dict[str, str] = {}
    for f in hashing_progress(to_hash):
        try:
            digests[f.relpath] = hash_file(f.path)
        except OSError as error:
            if shard.holds(f.relpath):
                plan.unreadable.append((f.relpath, f"cannot read file: {error.strerror or error}"))

    new_by_hash: dict[str, list[FoundFile]] = defaultdict(list)
    for f in to_hash:
        if f.relpath in digests and f.relpath not in stored:
            new_by_hash[digests[f.relpath]].append(f)
    gone_by_hash: dict[str, list[StoredImage]] = defaultdict(list)
    for image in gone:
        gone_by_hash[image.content_hash].append(image)
    move_sources: dict[str, StoredImage] = {}  # new relative path -> the vanished row it takes over
    for digest, images in gone_by_hash.items():
        for image, f in zip(images, new_by_hash.get(digest, [])):
            move_sources[f.relpath] = image
            current_by_hash.setdefault(digest, image.id)
    taken = {image.id for image in move_sources.values()}
    plan.removed = [image for image in gone if image.id not in taken and shard.holds(image.relpath)]

    fresh: list[tuple[Path, FileFacts, int | None]] = []
    for f in to_hash:
        if f.relpath not in digests or not shard.holds(f.relpath):
            continue
        digest = digests[f.relpath]
        facts = FileFacts(f.relpath, f.label, digest, f.size_bytes, f.mtime_ns)
        known = stored.get(f.relpath)
        if known and known.content_hash == digest:
            plan.unchanged += 1
            plan.touched.append((known.id, facts))
            current_by_hash.setdefault(digest, known.id)
        elif f.relpath in move_sources:
            plan.moved.append((move_sources[f.relpath], facts))
        else:
            fresh.append((f.path, facts, known.id if known else None))

    jobs: dict[str, EmbedJob] = {}
    for path, facts, replaced in fresh:
        source = current_by_hash.get(facts.content_hash)
        if source is not None:
            plan.copies.append((source, facts, replaced))
        else:
            jobs.setdefault(facts.content_hash, EmbedJob(path, [])).targets.append((facts, replaced))
    plan.embed = list(jobs.values())
    return plan
