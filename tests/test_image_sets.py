"""Image sets added from the browser: each limit and each hostile zip refused with its message, nothing written
outside the uploads folder nor any partial set inside it, and good uploads stored with their manifest."""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from dash.testing.wait import until
from PIL import Image

from dashboard.image_sets import MANIFEST, ImageSets, IncomingFile, SetFile, SetNotFound, SetRefused, UploadLimits
from db.holds import HOLDS_ENV
from indexer.scan import scan_folder
from tests.images import encoded

KB = 1024
MB = 1024**2


def jpeg(seed: int) -> bytes:
    return encoded(Image.new("RGB", (16, 12), (seed * 40 % 256, 90, 200)), "JPEG")


def png(seed: int) -> bytes:
    return encoded(Image.new("RGB", (12, 16), (30, seed * 40 % 256, 60)), "PNG")


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels: signature, header chunk and end, no pixels at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


def zipped(*members: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def patched(data: bytes, **fields: int) -> bytes:
    """A zip with fields of its last member's local and central headers overwritten (flags, crc, file_size)."""
    data = bytearray(data)
    local, central = data.rindex(b"PK\x03\x04"), data.rindex(b"PK\x01\x02")
    offsets = {"flags": (6, 8, "<H"), "crc": (14, 16, "<I"), "file_size": (22, 24, "<I")}
    for field, value in fields.items():
        in_local, in_central, layout = offsets[field]
        struct.pack_into(layout, data, local + in_local, value)
        struct.pack_into(layout, data, central + in_central, value)
    return bytes(data)


def a_zip(data: bytes, name: str = "pets.zip") -> list[IncomingFile]:
    return [IncomingFile(name, data)]


def tree(root: Path) -> list[str]:
    """Every path under `root`, hidden ones too, but the uploads folder's lock file (which stays, empty)."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.name != ".lock")


@pytest.fixture
def uploads(tmp_path) -> Path:
    (tmp_path / "uploads").mkdir()
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "uploads"


def image_sets(uploads: Path, **limits) -> ImageSets:
    return ImageSets(uploads, UploadLimits(**limits))


def test_a_zip_of_labelled_folders_becomes_a_set_with_its_manifest(uploads):
    """The folder that wraps it all (as zipping a folder makes) is dropped: its sub-folders are the labels, as for
    the indexer pointed at that folder; what is not an image is skipped and listed."""
    data = zipped(("pets/", b""), ("pets/cats/", b""), ("pets/cats/tom.jpg", jpeg(1)), ("pets/cats/kit.png", png(2)),
                  ("pets/dogs/rex.JPG", jpeg(3)), ("pets/dogs/.DS_Store", b"\0\0"), ("pets/readme.txt", b"hello"),
                  ("__MACOSX/pets/cats/._tom.jpg", b"\0"), ("pets/.git/logo.png", png(4)))
    received = image_sets(uploads).create("alice", "My Pets!", a_zip(data))

    manifest = received.manifest
    assert manifest.set_id.startswith("my-pets-") and len(manifest.set_id) == len("my-pets-") + 8
    assert (manifest.owner, manifest.dataset) == ("alice", "My Pets!")
    assert [file.path for file in manifest.files] == ["cats/tom.jpg", "cats/kit.png", "dogs/rex.JPG"]
    assert manifest.files == received.added and manifest.bytes == len(jpeg(1)) + len(png(2)) + len(jpeg(3))
    assert sorted(received.skipped) == [("__MACOSX/pets/cats/._tom.jpg", "hidden file"),
                                        ("pets/.git/logo.png", "in a hidden or system folder"),
                                        ("pets/dogs/.DS_Store", "hidden file"),
                                        ("pets/readme.txt", "not an image file name")]
    folder = uploads / manifest.set_id
    assert (folder / "cats" / "tom.jpg").read_bytes() == jpeg(1)
    assert tree(uploads) == sorted(f"{manifest.set_id}{path}" for path in (
        "", f"/{MANIFEST}", "/cats", "/dogs", *(f"/{file.path}" for file in manifest.files)))
    assert ImageSets(uploads).manifest(manifest.set_id) == manifest
    # The indexer finds the same images under the same labels.
    scan = scan_folder(ImageSets(uploads).folder(manifest.set_id))
    assert [(found.relpath, found.label) for found in scan.found] == [
        ("cats/kit.png", "cats"), ("cats/tom.jpg", "cats"), ("dogs/rex.JPG", "dogs")]


def test_loose_files_land_directly_in_the_set_by_their_names_alone(uploads):
    files = [IncomingFile("C:\\fakepath\\one.jpg", jpeg(1)), IncomingFile("holiday/two.png", png(2)),
             IncomingFile(".hidden.jpg", jpeg(3)), IncomingFile("notes.txt", b"text")]
    received = image_sets(uploads).create(None, "", files)

    assert received.manifest.set_id.startswith("set-") and received.manifest.owner is None
    assert received.added == (SetFile("one.jpg", len(jpeg(1))), SetFile("two.png", len(png(2))))
    assert received.skipped == ((".hidden.jpg", "hidden file"), ("notes.txt", "not an image file name"))
    folder = uploads / received.manifest.set_id
    assert sorted(path.name for path in folder.iterdir()) == ["one.jpg", MANIFEST, "two.png"]
    assert [found.label for found in scan_folder(folder).found] == [None, None]


def refusal(uploads: Path, files: list[IncomingFile], match: str, **limits) -> None:
    """The upload is refused with `match`, in one line, and the folders are as they were."""
    before = tree(uploads.parent)
    with pytest.raises(SetRefused, match=match) as refused:
        image_sets(uploads, **limits).create("alice", "pets", files)
    assert "\n" not in str(refused.value)
    assert tree(uploads.parent) == before


@pytest.mark.parametrize(("files", "limits", "match"), [
    ([IncomingFile("a.jpg", jpeg(1) + bytes(3 * KB))], {"file_bytes": 2 * KB},
     r"^'a.jpg' is 4 KB, over the limit of 2 KB per image$"),
    ([IncomingFile(f"{i}.jpg", jpeg(i)) for i in range(4)], {"files_per_set": 3},
     r"^This set would hold 4 images, over the limit of 3 per set$"),
    ([IncomingFile(f"{i}.png", png(i) + bytes(60 * KB)) for i in range(2)], {"set_bytes": 100 * KB},
     r"^This set would hold 12\d KB of images, over the limit of 100 KB per set$"),
    ([IncomingFile("big.png", png(1) + bytes(200 * KB))], {"user_bytes": 150 * KB},
     r"^This upload \(20\d KB\) would take your image sets to 20\d KB, over the limit of 150 KB per user: "),
    ([IncomingFile("wide.png", encoded(Image.new("1", (10_000, 8_000)), "PNG"))], {},
     r"^'wide.png' has 10000 x 8000 pixels, over the limit of 50 megapixels per image \(a decompression bomb\?\)$"),
    ([IncomingFile("bomb.png", png_header(100_000, 100_000))], {},
     r"^'bomb.png' has far too many pixels, over the limit of 50 megapixels per image"),
    ([IncomingFile("small.png", png_header(3000, 2000))], {"image_pixels": 5_000_000},
     r"^'small.png' has 3000 x 2000 pixels, over the limit of 5 megapixels per image"),
    ([IncomingFile("a.jpg", jpeg(1)), IncomingFile("b/a.jpg", jpeg(2))], {},
     r"^This upload holds 'a.jpg' twice: rename one of them$"),
    ([IncomingFile("a.jpg", jpeg(1)), IncomingFile("more.zip", zipped(("b.jpg", jpeg(2))))], {},
     r"^Drop either image files or one .zip on its own"),
    ([IncomingFile("readme.txt", b"hi")], {},
     r"^This upload holds no images \(only 'readme.txt'...\): the images must end in .bmp, .gif, .jpeg, .jpg, .png, "),
    ([], {}, r"^This upload holds no files"),
    ([IncomingFile("bad\nname.jpg", jpeg(1))], {}, r"^The name 'bad\?name.jpg' is not a usable file name"),
    ([IncomingFile("folder/", jpeg(1))], {}, r"^The name 'folder/' is not a usable file name"),
], ids=["file bytes", "files per set", "set bytes", "user bytes", "pixels", "pixels beyond Pillow's", "pixels set",
        "twice", "zip and files", "no images", "no files", "control character", "no name"])
def test_each_limit_refuses_an_upload_of_loose_files_with_its_message(uploads, files, limits, match):
    refusal(uploads, files, match, **limits)


def symlink(name: str) -> zipfile.ZipInfo:
    member = zipfile.ZipInfo(name)
    member.external_attr = (stat.S_IFLNK | 0o777) << 16
    return member


ZEROS = bytes(2 * MB)  # deflates to about 2 KB


@pytest.mark.parametrize(("data", "limits", "match"), [
    (zipped(("../evil.jpg", jpeg(1))), {}, r"^This zip names a member '../evil.jpg' that points outside its folder"),
    (zipped(("cats/../../evil.jpg", jpeg(1))), {}, r"^This zip names a member 'cats/../../evil.jpg' that points "),
    (zipped(("/tmp/evil.jpg", jpeg(1))), {}, r"^This zip names a member by an absolute path \('/tmp/evil.jpg'\)"),
    (zipped(("C:/evil.jpg", jpeg(1))), {}, r"^This zip names a member by an absolute path \('C:/evil.jpg'\)"),
    (zipped(("..\\evil.jpg", jpeg(1))), {}, r"^This zip names a member '..\\evil.jpg' with a backslash"),
    (zipped(("cats/tom.jpg", jpeg(1)), (symlink("cats/link.jpg"), b"/etc/passwd")), {},
     r"^This zip holds a symbolic link \('cats/link.jpg'\): links are refused$"),
    (zipped(("cats/inner.zip", zipped(("x.jpg", jpeg(1))))), {},
     r"^This zip holds another zip \('cats/inner.zip'\): nested zips are refused"),
    (jpeg(1), {}, r"^'pets.zip' is named .zip but is not a zip archive that can be read$"),
    (zipped(("cats/tom.jpg", jpeg(1)))[:-30], {}, r"^'pets.zip' is named .zip but is not a zip archive"),
    (patched(zipped(("cats/tom.jpg", jpeg(1))), flags=0x1), {},
     r"^This zip holds an encrypted member \('cats/tom.jpg'\): upload a zip without a password$"),
    (zipped(*((f"cats/{i}.jpg", jpeg(i)) for i in range(5))), {"zip_members": 4},
     r"^This zip holds 5 members, over the limit of 4$"),
    (zipped(("cats/tom.jpg", jpeg(1)), ("cats/bomb.bmp", ZEROS)), {"zip_bytes": MB},
     r"^This zip unpacks to 2.0 MB, over the limit of 1.0 MB \(a zip bomb\?\)$"),
    (zipped(("cats/tom.jpg", jpeg(1)), ("cats/bomb.bmp", ZEROS)), {"file_bytes": MB},
     r"^'cats/bomb.bmp' is 2.0 MB, over the limit of 1.0 MB per image$"),
    (patched(zipped(("cats/tom.jpg", jpeg(1)), ("cats/bomb.bmp", ZEROS)), file_size=1000), {"zip_bytes": MB},
     r"^This zip is damaged or not what it declares: 'cats/bomb.bmp' cannot be read \(BadZipFile\)$"),
    (zipped(("cats/tom.jpg", jpeg(1)), ("cats/bomb.png", png_header(100_000, 100_000))), {},
     r"^'cats/bomb.png' has far too many pixels, over the limit of 50 megapixels per image"),
    (zipped(("tom.jpg", jpeg(1)), ("tom.jpg/kit.jpg", jpeg(2))), {},
     r"^'tom.jpg/kit.jpg' is both a file and a folder in this upload$"),
], ids=["parent", "parent inside", "absolute", "drive letter", "backslash", "symbolic link", "nested zip",
        "not a zip", "truncated zip", "encrypted", "members", "zip bomb declared", "file bytes",
        "zip bomb lying", "decompression bomb", "file and folder"])
def test_each_hostile_zip_is_refused_with_its_message_and_nothing_is_left(uploads, data, limits, match, request,
                                                                         monkeypatch):
    """Refused before any member is opened, but for what only extracting shows (lies, bombs, a name taken): those
    are refused after an honest member was written, which is removed."""
    if request.node.callspec.id not in ("zip bomb lying", "decompression bomb", "file and folder"):
        monkeypatch.setattr(zipfile.ZipFile, "open", lambda *args, **kwargs: pytest.fail("a member was extracted"))
    refusal(uploads, a_zip(data), match, **limits)


def test_a_zip_whose_declared_sizes_lie_yields_no_more_than_it_declares(uploads, monkeypatch):
    """The limits were checked on the declared sizes, so each member is held to its own while it is extracted."""
    lying = patched(zipped(("cats/bomb.bmp", ZEROS)), file_size=1000, crc=zlib.crc32(bytes(1000)))
    received = image_sets(uploads, zip_bytes=MB).create("alice", "pets", a_zip(lying))
    assert received.added == (SetFile("bomb.bmp", 1000),)  # zipfile stops at the declared size
    assert (uploads / received.manifest.set_id / "bomb.bmp").stat().st_size == 1000
    # A zip reader that went on past the declared size is stopped by the count of the bytes written.
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, member, *args, **kwargs: io.BytesIO(ZEROS))
    refusal(uploads, a_zip(lying), r"^'cats/bomb.bmp' unpacks to more than its zip declares or the limits allow: "
                                   r"refused \(a zip bomb\?\)$", zip_bytes=MB)


def test_adding_files_counts_the_limits_with_what_the_set_holds(uploads):
    sets = image_sets(uploads, files_per_set=3, set_bytes=4 * KB)
    first = sets.create("alice", "pets", [IncomingFile("a.jpg", jpeg(1)), IncomingFile("b.jpg", jpeg(2))])
    set_id = first.manifest.set_id
    before = tree(uploads.parent)
    with pytest.raises(SetRefused, match=r"^This set would hold 4 images, over the limit of 3 per set$"):
        sets.add(set_id, a_zip(zipped(("c.jpg", jpeg(3)), ("d.jpg", jpeg(4)))))
    with pytest.raises(SetRefused, match=r"^This set holds 'b.jpg' already: a name is never replaced, rename the "):
        sets.add(set_id, [IncomingFile("b.jpg", jpeg(5))])
    with pytest.raises(SetRefused, match=r"^This set would hold \d KB of images, over the limit of 4 KB per set$"):
        sets.add(set_id, [IncomingFile("big.jpg", jpeg(6) + bytes(3 * KB))])
    assert tree(uploads.parent) == before

    grown = sets.add(set_id, [IncomingFile("c.jpg", jpeg(3))])
    assert grown.added == (SetFile("c.jpg", len(jpeg(3))),)
    assert [file.path for file in grown.manifest.files] == ["a.jpg", "b.jpg", "c.jpg"]
    assert grown.manifest.created == first.manifest.created and grown.manifest.owner == "alice"
    assert sets.manifest(set_id) == grown.manifest
    assert (uploads / set_id / "c.jpg").read_bytes() == jpeg(3)
    assert [path.name for path in uploads.iterdir() if path.name.startswith(".partial")] == []


def test_a_user_s_sets_count_together_against_the_per_user_limit(uploads):
    sets = image_sets(uploads, user_bytes=50 * KB)
    big = png(1) + bytes(20 * KB)
    alice_one = sets.create("alice", "one", [IncomingFile("a.png", big)])
    alice_two = sets.create("alice", "two", [IncomingFile("b.png", big)])
    assert sets.user_bytes("alice") == 2 * len(big)
    before = tree(uploads.parent)
    with pytest.raises(SetRefused, match=r"^This upload \(2\d KB\) would take your image sets to 6\d KB, over the "
                                         r"limit of 50 KB per user: remove a set first$"):
        sets.create("alice", "three", [IncomingFile("c.png", big)])
    with pytest.raises(SetRefused, match="per user: remove a set first"):
        sets.add(alice_one.manifest.set_id, [IncomingFile("d.png", big)])
    assert tree(uploads.parent) == before
    sets.create("bob", "mine", [IncomingFile("c.png", big)])  # another user's allowance is his own
    sets.remove(alice_two.manifest.set_id)  # and a removed set frees its bytes
    sets.create("alice", "three", [IncomingFile("c.png", big)])
    assert sets.user_bytes("alice") == 2 * len(big) and sets.user_bytes("bob") == len(big)
    assert sorted(manifest.dataset for manifest in sets.sets()) == ["mine", "one", "three"]


def test_removing_a_set_deletes_its_folder_and_an_unknown_set_is_not_found(uploads):
    sets = image_sets(uploads)
    set_id = sets.create("alice", "pets", a_zip(zipped(("cats/tom.jpg", jpeg(1)), ("dogs/rex.jpg", jpeg(2))))
                         ).manifest.set_id
    sets.remove(set_id)
    assert tree(uploads) == [] and sets.sets() == []
    for unknown in (set_id, "../elsewhere", ".partial-x", "UPPER"):
        with pytest.raises(SetNotFound, match="^There is no image set "):
            sets.remove(unknown)
        with pytest.raises(SetNotFound):
            sets.add(unknown, [IncomingFile("a.jpg", jpeg(1))])
    assert tree(uploads.parent) == ["elsewhere", "uploads"]


def test_one_log_line_per_set_and_nothing_of_its_files(uploads, caplog):
    sets = image_sets(uploads, files_per_set=1)
    secret = b"SECRET-CONTENT"
    with caplog.at_level(logging.INFO, logger="dashboard.image_sets"):
        accepted = sets.create("alice", "pets", [IncomingFile("a.jpg", jpeg(1) + secret)])
        with pytest.raises(SetRefused):
            sets.add(accepted.manifest.set_id, [IncomingFile("b.jpg", jpeg(2) + secret)])
    lines = [record.getMessage() for record in caplog.records]
    set_id = accepted.manifest.set_id
    assert lines == [f"image set {set_id} accepted: owner alice, 1 files, {len(jpeg(1) + secret)} bytes",
                     (f"image set refused (addition to set {set_id}): owner alice, 1 files, "
                      f"{len(jpeg(2) + secret)} bytes: This set would hold 2 images, over the limit of 1 per set")]
    assert not any("SECRET" in line for line in lines)


def test_two_uploads_of_one_user_at_once_cannot_both_take_the_last_of_the_allowance(uploads, tmp_path, monkeypatch):
    """The first holds between counting the user's bytes and storing its set; the second, meanwhile, must wait."""
    holds = tmp_path / "holds"
    holds.mkdir()
    monkeypatch.setenv(HOLDS_ENV, str(holds))
    (holds / "image-set-commit").touch()
    sets = image_sets(uploads, user_bytes=50 * KB)
    big = png(1) + bytes(30 * KB)
    outcomes: dict[str, str] = {}

    def upload(name: str) -> None:
        try:
            sets.create("alice", name, [IncomingFile(f"{name}.png", big)])
            outcomes[name] = "accepted"
        except SetRefused as refused:
            outcomes[name] = str(refused)

    threads = [threading.Thread(target=upload, args=(name,)) for name in ("one", "two")]
    threads[0].start()
    until(lambda: (holds / "image-set-commit.reached").exists(), timeout=10)
    threads[1].start()
    time.sleep(0.5)  # time enough for the second to reach the same point, were it not kept out
    (holds / "image-set-commit").unlink()
    for thread in threads:
        thread.join()
    assert outcomes["one"] == "accepted" and "over the limit of 50 KB per user" in outcomes["two"]
    assert len(sets.sets()) == 1 and [path.name for path in uploads.iterdir() if path.name.startswith(".p")] == []


def test_a_server_that_cannot_store_an_upload_says_so_and_leaves_nothing(uploads, monkeypatch):
    def disk_full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "rename", disk_full)
    refusal(uploads, [IncomingFile("a.jpg", jpeg(1))],
            r"^The server could not store this upload \(No space left on device\): tell its administrator$")


def test_what_a_killed_upload_left_is_removed_after_a_day(uploads):
    old, recent = uploads / ".partial-old", uploads / ".partial-recent"
    for folder in (old, recent):
        (folder / "cats").mkdir(parents=True)
        (folder / "cats" / "tom.jpg").write_bytes(jpeg(1))
    os.utime(old, (time.time() - 25 * 3600,) * 2)
    set_id = image_sets(uploads).create("alice", "pets", [IncomingFile("a.jpg", jpeg(1))]).manifest.set_id
    assert sorted(path.name for path in uploads.iterdir() if path.name != ".lock") == [".partial-recent", set_id]
