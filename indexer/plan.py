"""What an index run has to do: the difference between a folder as scanned and the dataset as stored.

A file whose size and modification time are unchanged is trusted as unchanged; any other file is hashed, and
its content hash decides: same bytes under the same path is unchanged, same bytes under a path that vanished is
a move, same bytes as an image already stored is a copy, and only bytes never seen before go to the model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from db.mutations import FileFacts
from db.queries import StoredImage
from indexer.scan import FoundFile


@dataclass
class EmbedJob:
    """Distinct bytes to embed once, then store under every path that holds them."""

    path: Path
    targets: list[tuple[FileFacts, int | None]]  # (facts, id of the image row it replaces, or None if new)


@dataclass
class IndexPlan:
    unchanged: int = 0
    touched: list[tuple[int, FileFacts]] = field(default_factory=list)
    moved: list[tuple[int, FileFacts]] = field(default_factory=list)
    copies: list[tuple[int, FileFacts, int | None]] = field(default_factory=list)  # (source id, facts, replaced id)
    embed: list[EmbedJob] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)

    @property
    def changes_without_model(self) -> bool:
        return bool(self.touched or self.moved or self.copies or self.removed)


def plan_index(
    found: list[FoundFile],
    stored: dict[str, StoredImage],
    hash_file: Callable[[Path], str],
    hashing_progress: Callable[[Iterable[FoundFile]], Iterable[FoundFile]] = lambda files: files,
) -> IndexPlan:
    plan = IndexPlan()
    found_paths = {f.relpath for f in found}
    current_by_hash: dict[str, int] = {}  # bytes already stored under a path that still holds them
    candidates = []
    for f in found:
        known = stored.get(f.relpath)
        if known and (known.size_bytes, known.mtime_ns) == (f.size_bytes, f.mtime_ns):
            plan.unchanged += 1
            current_by_hash.setdefault(known.content_hash, known.id)
        else:
            candidates.append(f)

    gone = {relpath: image for relpath, image in stored.items() if relpath not in found_paths}
    gone_by_hash: dict[str, list[StoredImage]] = defaultdict(list)
    for image in gone.values():
        gone_by_hash[image.content_hash].append(image)

    fresh: list[tuple[Path, FileFacts, int | None]] = []
    for f in hashing_progress(candidates):
        try:
            digest = hash_file(f.path)
        except OSError as error:
            plan.unreadable.append((f.relpath, f"cannot read file: {error.strerror or error}"))
            continue
        facts = FileFacts(f.relpath, f.label, digest, f.size_bytes, f.mtime_ns)
        known = stored.get(f.relpath)
        if known and known.content_hash == digest:
            plan.unchanged += 1
            plan.touched.append((known.id, facts))
            current_by_hash.setdefault(digest, known.id)
        elif known is None and gone_by_hash.get(digest):
            source = gone_by_hash[digest].pop()
            del gone[source.relpath]
            plan.moved.append((source.id, facts))
            current_by_hash.setdefault(digest, source.id)
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
    plan.removed = [image.id for image in gone.values()]
    return plan
