"""Image sets added from the browser: the limits an upload must keep, the checks on what arrives (several image files,
or one `.zip` whose first-level folders become labels), and the sets stored under the uploads folder.

A set lives in `uploads_dir/<set id>/`: its images (`<label>/<file>`, or directly) and `set.json`, its manifest
(owner, dataset, times, files and bytes). A set is written in a hidden folder of `uploads_dir` and renamed into
place when complete; files added later are written there too and each moved in whole, the manifest replaced last.
Every target path is resolved and checked to lie inside `uploads_dir`. A `.zip` is checked entirely before anything
is extracted, and its sizes are enforced again while it is extracted, in case the declared ones lie. The limits are
counted again, with what is stored by then, under a lock file of the uploads folder just before a set or its new
files are put in place, so that two uploads at once (other processes, other machines sharing the folder) are
counted one after the other.

Plain Python, no Dash: the page hands `ImageSets` the files it received; each refusal is a `SetRefused` with a one-line
message for the uploader. Nothing of an upload is logged, only one line per set accepted or refused.
"""

from __future__ import annotations

import fcntl
import functools
import io
import json
import logging
import lzma
import os
import re
import secrets
import shutil
import stat
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from db.errors import DinoscopeError
from db.holds import hold
from indexer.query import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

MANIFEST = "set.json"
MiB = 1024**2
_SET_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,60}")
_DRIVE = re.compile(r"^[A-Za-z]:")
_SKIPPED_FOLDERS = frozenset({"__MACOSX"})  # macOS's resource forks, beside the real files
_COMPRESSIONS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_CHUNK = 1024**2
_LEFTOVER_SECONDS = 24 * 3600
# What reading a damaged or lying member raises (bz2 raises OSError, deflate zlib.error, LZMA its own).
_UNREADABLE = (zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError)


class SetRefused(DinoscopeError):
    """The upload cannot become (or join) an image set; the message says why in one line."""


class SetNotFound(SetRefused):
    """No image set of that id in the uploads folder."""


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold, enforced on the server. The defaults suit a class sharing one server: a camera or
    phone photo is 2 to 15 MB, a student's set a few hundred of them, and 30 students at most 30 GB in all.

    A zip is refused on its declared sizes before anything is extracted, and the same totals hold while it is
    extracted. No compression ratio is checked: the totals bound what a zip can unpack, whatever its ratio, while a
    ratio would refuse honest images that compress well (a BMP of flat colours).
    """

    file_bytes: int = 20 * MiB  # one image
    files_per_set: int = 1000
    set_bytes: int = 500 * MiB  # all the images of one set
    user_bytes: int = 1024 * MiB  # all the sets of one owner
    # Read from the header, never decoded. Below Pillow's own bomb threshold (about 89 megapixels), which the
    # indexer's decode refuses too; a 48-megapixel phone photo passes.
    image_pixels: int = 50_000_000
    zip_bytes: int = 500 * MiB  # uncompressed, all members of a zip, images or not
    zip_members: int = 5000  # files and folders, images or not


@dataclass(frozen=True)
class IncomingFile:
    """One file as the browser sent it: its name (a path part at most is kept) and its bytes, in memory or in a
    seekable file (a request's upload, spooled to disk by the server as it arrived)."""

    name: str
    data: bytes | BinaryIO

    @functools.cached_property  # kept: writing a file closes its stream
    def size(self) -> int:
        if isinstance(self.data, bytes):
            return len(self.data)
        return self.data.seek(0, os.SEEK_END)

    def open(self) -> BinaryIO:
        """The file's bytes from their start (for a file, its own stream, which reading it to the end closes)."""
        if isinstance(self.data, bytes):
            return io.BytesIO(self.data)
        self.data.seek(0)
        return self.data


@dataclass(frozen=True)
class SetFile:
    path: str  # POSIX-style, relative to the set's folder; the first folder, if any, is the image's label
    bytes: int


@dataclass(frozen=True)
class SetManifest:
    """What `set.json` records of a set."""

    set_id: str
    owner: str | None  # the user who added it; None on a server without logins
    dataset: str
    created: str  # ISO 8601, UTC
    updated: str
    files: tuple[SetFile, ...]

    @property
    def bytes(self) -> int:
        return sum(file.bytes for file in self.files)

    def to_json(self) -> str:
        return json.dumps({"set_id": self.set_id, "owner": self.owner, "dataset": self.dataset,
                           "created": self.created, "updated": self.updated, "bytes": self.bytes,
                           "files": [{"path": file.path, "bytes": file.bytes} for file in self.files]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SetManifest:
        found = json.loads(text)
        return cls(found["set_id"], found["owner"], found["dataset"], found["created"], found["updated"],
                   tuple(SetFile(file["path"], file["bytes"]) for file in found["files"]))


@dataclass(frozen=True)
class Received:
    """A set as it stands after an upload was stored, and what the upload brought."""

    manifest: SetManifest
    added: tuple[SetFile, ...]
    skipped: tuple[tuple[str, str], ...]  # (name, reason) of the files that are not images, left out


@dataclass(frozen=True)
class _Entry:
    """An image of an upload, checked but not yet written."""

    path: str  # in the set
    name: str  # as uploaded, for messages
    declared_bytes: int
    open: Callable[[], BinaryIO]


@dataclass(frozen=True)
class _Parcel:
    entries: tuple[_Entry, ...]
    skipped: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ImageSets:
    """The image sets of one uploads folder, under one set of limits."""

    uploads_dir: Path
    limits: UploadLimits = UploadLimits()

    def folder(self, set_id: str) -> Path:
        """The folder of a set: the root the indexer indexes it from."""
        if not _SET_ID.fullmatch(set_id):
            raise SetNotFound(f"There is no image set {_shown(set_id)}")
        return self.uploads_dir.resolve() / set_id

    def manifest(self, set_id: str) -> SetManifest:
        try:
            return SetManifest.from_json((self.folder(set_id) / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SetNotFound(f"There is no image set {_shown(set_id)}") from None

    def sets(self) -> list[SetManifest]:
        """Every set's manifest, oldest first. A folder without a readable manifest is left out (and logged): this
        module did not make it."""
        found = []
        root = self.uploads_dir.resolve()
        for folder in sorted(root.iterdir()) if root.is_dir() else ():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                manifest = SetManifest.from_json((folder / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("image set folder %s has no readable %s: %s", folder.name, MANIFEST, error)
                continue
            found.append(manifest)
        return sorted(found, key=lambda manifest: manifest.created)

    def user_bytes(self, owner: str | None) -> int:
        """The bytes of all of `owner`'s sets, as their manifests record them."""
        return sum(manifest.bytes for manifest in self.sets() if manifest.owner == owner)

    def create(self, owner: str | None, dataset: str, files: Sequence[IncomingFile]) -> Received:
        """Check an upload (several images, or one `.zip`) and store it as a new set of `owner` for `dataset`."""
        with _refusal_logged("new set", owner, files):
            parcel = _parcel(files, self.limits)
            _check_counts(parcel, self.limits, existing=())
            self._check_user_bytes(owner, _declared_bytes(parcel))  # again when storing, others may have stored
            with self._staging() as staging:
                added = _write(parcel, staging, self.limits)
                now = _now()
                manifest = SetManifest(_new_set_id(dataset), owner, dataset, now, now, added)
                (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
                with self._locked():
                    self._check_user_bytes(owner, manifest.bytes)
                    hold("image-set-commit")
                    os.rename(staging, self.folder(manifest.set_id))
        log.info("image set %s accepted: owner %s, %d files, %d bytes", manifest.set_id, owner, len(added),
                 manifest.bytes)
        return Received(manifest, added, parcel.skipped)

    def add(self, set_id: str, files: Sequence[IncomingFile]) -> Received:
        """Check an upload as `create` does, counting the limits with what the set holds, and add it to the set.

        A name the set already holds is refused, not replaced: a file's content never changes under the indexer.
        """
        existing = self.manifest(set_id)
        owner = existing.owner
        with _refusal_logged(f"addition to set {set_id}", owner, files):
            parcel = _parcel(files, self.limits)
            _check_counts(parcel, self.limits, existing=existing.files)
            self._check_user_bytes(owner, _declared_bytes(parcel))
            with self._staging() as staging:
                added = _write(parcel, staging, self.limits)
                with self._locked():
                    existing = self.manifest(set_id)  # as it stands now: another upload may have joined it
                    _check_counts(parcel, self.limits, existing=existing.files)
                    self._check_user_bytes(owner, sum(file.bytes for file in added))
                    manifest = SetManifest(set_id, owner, existing.dataset, existing.created, _now(),
                                           existing.files + added)
                    _move_in(staging, self.folder(set_id), added, manifest)
        log.info("image set %s grew: owner %s, %d files, %d bytes added", set_id, owner, len(added),
                 sum(file.bytes for file in added))
        return Received(manifest, added, parcel.skipped)

    def remove(self, set_id: str) -> None:
        """Delete a set's folder: renamed out of sight first, so no half-deleted set is ever seen."""
        manifest = self.manifest(set_id)
        with self._locked():
            hidden = self.uploads_dir.resolve() / f".removed-{set_id}-{secrets.token_hex(4)}"
            try:
                os.rename(self.folder(set_id), hidden)
            except FileNotFoundError:  # removed meanwhile by another request
                raise SetNotFound(f"There is no image set {_shown(set_id)}") from None
        shutil.rmtree(hidden)
        log.info("image set %s removed: owner %s, %d files, %d bytes", set_id, manifest.owner, len(manifest.files),
                 manifest.bytes)

    def _check_user_bytes(self, owner: str | None, adding: int) -> None:
        held = self.user_bytes(owner)
        if held + adding > self.limits.user_bytes:
            raise SetRefused(f"This upload ({_size(adding)}) would take your image sets to {_size(held + adding)}, "
                             f"over the limit of {_size(self.limits.user_bytes)} per user: remove a set first")

    @contextmanager
    def _staging(self) -> Iterator[Path]:
        """A hidden folder of the uploads folder to write in, removed on the way out unless it was renamed away.
        Those a killed process left behind a day ago or more are removed first."""
        root = self.uploads_dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
        for left in [*root.glob(".partial-*"), *root.glob(".removed-*")]:
            with suppress(OSError):
                if time.time() - left.stat().st_mtime > _LEFTOVER_SECONDS:
                    shutil.rmtree(left)
        staging = root / f".partial-{secrets.token_hex(8)}"
        staging.mkdir()
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time counts the limits and commits, so two uploads at once cannot both take the last
        bytes of a user's allowance."""
        with open(self.uploads_dir.resolve() / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _parcel(files: Sequence[IncomingFile], limits: UploadLimits) -> _Parcel:
    if not files:
        raise SetRefused("This upload holds no files: drop image files or one .zip")
    zips = [file for file in files if file.name.lower().endswith(".zip")]
    if zips and len(files) > 1:
        raise SetRefused("Drop either image files or one .zip on its own, not both or several zips")
    parcel = _zip_parcel(zips[0], limits) if zips else _loose_parcel(files, limits)
    if not parcel.entries:
        listed = ", ".join(_shown(name) for name, _ in parcel.skipped[:3])
        raise SetRefused(f"This upload holds no images{f' (only {listed}...)' if listed else ''}: the images must end "
                         f"in {', '.join(sorted(IMAGE_SUFFIXES))}")
    return parcel


def _loose_parcel(files: Sequence[IncomingFile], limits: UploadLimits) -> _Parcel:
    """Loose files: only their names are kept, without any folder a browser may send."""
    entries, skipped = [], []
    for file in files:
        name = re.split(r"[/\\]", file.name)[-1]
        _check_name_part(name, file.name)
        reason = _not_an_image(name)
        if reason:
            skipped.append((name, reason))
            continue
        _check_file_bytes(name, file.size, limits)
        entries.append(_Entry(name, name, file.size, file.open))
    return _Parcel(_no_twice(entries), tuple(skipped))


def _zip_parcel(upload: IncomingFile, limits: UploadLimits) -> _Parcel:
    """Every member checked (names, kinds, sizes) before any is extracted; the images to extract, under their
    labels."""
    try:
        archive = zipfile.ZipFile(upload.open())
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise SetRefused(f"{_shown(upload.name)} is named .zip but is not a zip archive that can be read") from None
    if len(members) > limits.zip_members:
        raise SetRefused(f"This zip holds {len(members):,} members, over the limit of {limits.zip_members:,}")
    declared, images, skipped = 0, [], []
    for member in members:
        name = member.orig_filename
        _check_member(member)
        declared += member.file_size
        if member.is_dir():
            continue
        parts = PurePosixPath(name).parts
        reason = _not_an_image(parts[-1]) or _hidden_folder(parts[:-1])
        if reason:
            skipped.append((name, reason))
            continue
        images.append(member)
    if declared > limits.zip_bytes:
        raise SetRefused(f"This zip unpacks to {_size(declared)}, over the limit of {_size(limits.zip_bytes)} "
                         "(a zip bomb?)")
    strip = _common_folder([PurePosixPath(member.orig_filename).parts for member in images])
    entries = []
    for member in images:
        parts = PurePosixPath(member.orig_filename).parts[strip:]
        for part in parts:
            _check_name_part(part, member.orig_filename)
        path = "/".join(parts)
        _check_file_bytes(member.orig_filename, member.file_size, limits)
        entries.append(_Entry(path, member.orig_filename, member.file_size, lambda member=member: archive.open(member)))
    return _Parcel(_no_twice(entries), tuple(skipped))


def _check_member(member: zipfile.ZipInfo) -> None:
    name = member.orig_filename
    shown = _shown(name)
    if "\\" in name:
        raise SetRefused(f"This zip names a member {shown} with a backslash, which could point outside its folder: "
                         "refused")
    if name.startswith("/") or _DRIVE.match(name):
        raise SetRefused(f"This zip names a member by an absolute path ({shown}): refused")
    if "\0" in name or ".." in PurePosixPath(name).parts:
        raise SetRefused(f"This zip names a member {shown} that points outside its folder: refused")
    kind = stat.S_IFMT(member.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise SetRefused(f"This zip holds a symbolic link ({shown}): links are refused")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise SetRefused(f"This zip holds a member {shown} that is not a plain file or folder: refused")
    if member.flag_bits & 0x1:
        raise SetRefused(f"This zip holds an encrypted member ({shown}): upload a zip without a password")
    if not member.is_dir() and PurePosixPath(name).suffix.lower() == ".zip":
        raise SetRefused(f"This zip holds another zip ({shown}): nested zips are refused, unpack it into a folder")
    if member.compress_type not in _COMPRESSIONS:
        raise SetRefused(f"This zip compresses {shown} in a way that cannot be read here: zip it again with the "
                         "usual settings")


def _check_counts(parcel: _Parcel, limits: UploadLimits, existing: Sequence[SetFile]) -> None:
    """The set's limits, counted with what the set holds already."""
    held = {file.path for file in existing}
    again = [entry.path for entry in parcel.entries if entry.path in held]
    if again:
        more = f" (and {len(again) - 1} more)" if again[1:] else ""
        raise SetRefused(f"This set holds {_shown(again[0])} already{more}: a name is never replaced, rename the "
                         "new file")
    files = len(existing) + len(parcel.entries)
    if files > limits.files_per_set:
        raise SetRefused(f"This set would hold {files:,} images, over the limit of {limits.files_per_set:,} per set")
    total = sum(file.bytes for file in existing) + _declared_bytes(parcel)
    if total > limits.set_bytes:
        raise SetRefused(f"This set would hold {_size(total)} of images, over the limit of "
                         f"{_size(limits.set_bytes)} per set")


def _write(parcel: _Parcel, staging: Path, limits: UploadLimits) -> tuple[SetFile, ...]:
    """Each image written under `staging` (never beyond it), its bytes counted as they come and its pixels read
    from its header."""
    written = []
    for entry in parcel.entries:
        target = (staging / entry.path).resolve()
        if not target.is_relative_to(staging):
            raise SetRefused(f"{_shown(entry.name)} would be written outside the set's folder: refused")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as sink:
                # The set's limits were checked on the declared sizes: holding each file to its own keeps them.
                size = _copy_bounded(entry, sink, min(entry.declared_bytes, limits.file_bytes))
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            raise SetRefused(f"{_shown(entry.name)} is both a file and a folder in this upload") from None
        _check_pixels(target, entry.name, limits)
        written.append(SetFile(entry.path, size))
    return tuple(written)


def _copy_bounded(entry: _Entry, sink: BinaryIO, allowed: int) -> int:
    """Copy at most `allowed` bytes of the entry; more is a refusal (a zip's declared sizes may lie)."""
    size = 0
    try:
        source = entry.open()
    except _UNREADABLE as error:
        raise _damaged(entry, error) from None
    with source:
        while True:
            try:
                chunk = source.read(min(_CHUNK, allowed + 1 - size))
            except _UNREADABLE as error:
                raise _damaged(entry, error) from None
            if not chunk:
                return size
            size += len(chunk)
            if size > allowed:
                raise SetRefused(f"{_shown(entry.name)} unpacks to more than its zip declares or the limits allow: "
                                 "refused (a zip bomb?)")
            sink.write(chunk)


def _damaged(entry: _Entry, error: Exception) -> SetRefused:
    return SetRefused(f"This zip is damaged or not what it declares: {_shown(entry.name)} cannot be read "
                      f"({type(error).__name__})")


def _check_pixels(path: Path, name: str, limits: UploadLimits) -> None:
    """Refuse a picture of too many pixels from its header, without decoding it. A file Pillow cannot read is let
    through: the index run reports it with the reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Image.DecompressionBombError:
            width = height = None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return
    if width is None or width * height > limits.image_pixels:
        found = "far too many pixels" if width is None else f"{width} x {height} pixels"
        raise SetRefused(f"{_shown(name)} has {found}, over the limit of {limits.image_pixels / 1e6:g} megapixels "
                         "per image (a decompression bomb?)")


def _move_in(staging: Path, folder: Path, added: Sequence[SetFile], manifest: SetManifest) -> None:
    """Each new file moved into the set whole, then the manifest replaced; undone if a move fails."""
    moved = []
    try:
        for file in added:
            target = (folder / file.path).resolve()
            if not target.is_relative_to(folder) or target.exists():
                raise SetRefused(f"{_shown(file.path)} cannot be added to this set: the name is taken")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging / file.path, target)
            moved.append(target)
        (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        os.replace(staging / MANIFEST, folder / MANIFEST)
    except BaseException:
        for target in moved:
            target.unlink(missing_ok=True)
        raise


def _check_name_part(part: str, name: str) -> None:
    if part in ("", ".", "..") or any(not character.isprintable() for character in part):
        raise SetRefused(f"The name {_shown(name)} is not a usable file name: rename it")
    if len(part.encode("utf-8")) > 255:
        raise SetRefused(f"The name {_shown(name)} is too long for a file name: shorten it")


def _check_file_bytes(name: str, size: int, limits: UploadLimits) -> None:
    if size > limits.file_bytes:
        raise SetRefused(f"{_shown(name)} is {_size(size)}, over the limit of {_size(limits.file_bytes)} per image")


def _not_an_image(name: str) -> str | None:
    if name.startswith("."):
        return "hidden file"
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image file name"
    return None


def _hidden_folder(folders: Sequence[str]) -> str | None:
    if any(folder.startswith(".") or folder in _SKIPPED_FOLDERS for folder in folders):
        return "in a hidden or system folder"
    return None


def _common_folder(paths: Sequence[tuple[str, ...]]) -> int:
    """1 when every image lies in one folder, as when a zip wraps its set in one (zipping a folder does): that
    folder is dropped, as the indexer pointed at it would, and its sub-folders are the labels; else 0."""
    return int(len({parts[0] for parts in paths}) == 1 and all(len(parts) > 1 for parts in paths))


def _no_twice(entries: list[_Entry]) -> tuple[_Entry, ...]:
    seen: set[str] = set()
    for entry in entries:
        if entry.path in seen:
            raise SetRefused(f"This upload holds {_shown(entry.path)} twice: rename one of them")
        seen.add(entry.path)
    return tuple(entries)


def _new_set_id(dataset: str) -> str:
    """A slug of the dataset's name and a random suffix: readable in the uploads folder, and never taken."""
    slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-")[:40].strip("-") or "set"
    return f"{slug}-{secrets.token_hex(4)}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    return f"{count / 1024:,.0f} KB" if count < MiB else f"{count / MiB:,.1f} MB"


def _shown(name: str) -> str:
    """A name as a message may quote it: one line, printable, not too long."""
    printable = "".join(character if character.isprintable() else "?" for character in name)
    return f"'{printable[:80]}{'...' if len(printable) > 80 else ''}'"


def _declared_bytes(parcel: _Parcel) -> int:
    return sum(entry.declared_bytes for entry in parcel.entries)


@contextmanager
def _refusal_logged(what: str, owner: str | None, files: Sequence[IncomingFile]) -> Iterator[None]:
    """One log line for a refused upload; the server failing to store it (its disk full, say) is a refusal too."""
    try:
        try:
            yield
        except OSError as error:
            raise SetRefused(f"The server could not store this upload ({error.strerror or type(error).__name__}): "
                             "tell its administrator") from error
    except SetRefused as refusal:
        log.info("image set refused (%s): owner %s, %d files, %d bytes: %s", what, owner, len(files),
                 sum(file.size for file in files), refusal)
        raise
