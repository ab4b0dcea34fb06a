"""Which files a scan finds, and what an index run plans to do with them (no model involved)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from db.queries import StoredImage
from indexer.plan import Shard, plan_index
from indexer.scan import content_hash, scan_folder


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_finds_images_in_any_letter_case_and_labels_them_by_first_folder(tmp_path):
    for name in ["a.JPG", "b.jpeg", "c.Png", "d.webp", "e.BMP", "f.tif", "g.TIFF", "h.gif",
                 "cats/siamese/i.jpg", "dogs/j.png", "readme.txt", "k.jpg.bak"]:
        _touch(tmp_path / name)
    found = scan_folder(tmp_path).found
    assert [f.relpath for f in found] == ["a.JPG", "b.jpeg", "c.Png", "cats/siamese/i.jpg", "d.webp", "dogs/j.png",
                                          "e.BMP", "f.tif", "g.TIFF", "h.gif"]
    labels = {f.relpath: f.label for f in found}
    assert labels["cats/siamese/i.jpg"] == "cats" and labels["dogs/j.png"] == "dogs" and labels["a.JPG"] is None


def test_scan_skips_hidden_files_and_folders(tmp_path):
    _touch(tmp_path / ".hidden.jpg")
    _touch(tmp_path / ".thumbnails" / "a.jpg")
    _touch(tmp_path / "visible" / "b.jpg")
    assert [f.relpath for f in scan_folder(tmp_path).found] == ["visible/b.jpg"]


def test_scan_follows_folder_links_once_and_never_loops(tmp_path):
    _touch(tmp_path / "photos" / "a.jpg")
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "loop")
    os.symlink(tmp_path / "photos", tmp_path / "alias")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.jpg")
    scan = scan_folder(tmp_path)
    assert [f.relpath for f in scan.found] == ["alias/a.jpg"]  # the first path to a real folder in name order wins
    assert scan.unreadable == []  # a dangling link is a file that is gone, not one that cannot be read


def _stored(tmp_path: Path, relpath: str, image_id: int, data: bytes) -> StoredImage:
    path = _touch(tmp_path / relpath, data)
    return StoredImage(image_id, relpath, content_hash(path), path.stat().st_size, path.stat().st_mtime_ns)


@pytest.mark.parametrize(("code", "reason"), [(errno.EACCES, "Permission denied"),
                                              (errno.ESTALE, "Stale file handle"), (errno.EIO, "Input/output error")])
def test_a_folder_that_cannot_be_listed_is_reported_and_nothing_under_it_is_removed(tmp_path, unlistable, code,
                                                                                      reason):
    stored = {s.relpath: s for s in [
        _stored(tmp_path, "cats/a.png", 1, b"a"),
        _stored(tmp_path, "cats/deep/b.png", 2, b"b"),
        _stored(tmp_path, "catsup.png", 3, b"c"),  # beside the folder, not in it
        _stored(tmp_path, "dogs/d.png", 4, b"d"),
    ]}
    (tmp_path / "catsup.png").unlink()
    (tmp_path / "dogs" / "d.png").rename(tmp_path / "dogs" / "e.png")
    _touch(tmp_path / "dogs" / "a-copy.png", b"a")  # the bytes of cats/a.png: not taken to be moved
    unlistable(tmp_path / "cats", code)

    scan = scan_folder(tmp_path)
    assert [f.relpath for f in scan.found] == ["dogs/a-copy.png", "dogs/e.png"]
    assert scan.unreadable == [("cats", f"cannot list folder: {reason}")]
    plan = plan_index(scan, stored, content_hash)
    assert plan.unreadable == [("cats", f"cannot list folder: {reason}; the 2 images stored under it are kept")]
    assert [image.id for image in plan.removed] == [3]
    assert [(image.id, facts.relpath) for image, facts in plan.moved] == [(4, "dogs/e.png")]
    assert [job.path.name for job in plan.embed] == ["a-copy.png"] and not plan.copies


def test_a_folder_that_cannot_be_listed_deeper_down_keeps_only_what_is_under_it(tmp_path, unlistable):
    stored = {s.relpath: s for s in [_stored(tmp_path, "cats/a.png", 1, b"a"),
                                     _stored(tmp_path, "cats/deep/b.png", 2, b"b")]}
    (tmp_path / "cats" / "a.png").unlink()
    unlistable(tmp_path / "cats" / "deep", errno.ESTALE)
    plan = plan_index(scan_folder(tmp_path), stored, content_hash)
    assert plan.unreadable == [("cats/deep", ("cannot list folder: Stale file handle; the image stored under it is "
                                             "kept"))]
    assert [image.id for image in plan.removed] == [1]


def test_plan_does_only_the_new_work(tmp_path):
    stored = {s.relpath: s for s in [
        _stored(tmp_path, "same.png", 1, b"same"),
        _stored(tmp_path, "touched.png", 2, b"touched"),
        _stored(tmp_path, "changed.png", 3, b"old bytes"),
        _stored(tmp_path, "old-name.png", 4, b"moved"),
        _stored(tmp_path, "deleted.png", 5, b"deleted"),
    ]}
    os.utime(tmp_path / "touched.png", ns=(1, 1))
    _touch(tmp_path / "changed.png", b"new bytes")
    (tmp_path / "sub").mkdir()
    (tmp_path / "old-name.png").rename(tmp_path / "sub" / "new-name.png")
    (tmp_path / "deleted.png").unlink()
    _touch(tmp_path / "copy-of-same.png", b"same")
    _touch(tmp_path / "fresh-1.png", b"fresh")
    _touch(tmp_path / "fresh-2.png", b"fresh")

    hashed = []
    plan = plan_index(scan_folder(tmp_path), stored, lambda path: hashed.append(path.name) or content_hash(path))

    assert "same.png" not in hashed  # size and time stamp unchanged: trusted without reading
    assert plan.unchanged == 2
    assert [(image_id, facts.relpath) for image_id, facts in plan.touched] == [(2, "touched.png")]
    assert [(image.id, facts.relpath, facts.label) for image, facts in plan.moved] == [(4, "sub/new-name.png", "sub")]
    assert [(source, facts.relpath, replaced) for source, facts, replaced in plan.copies] == [(1, "copy-of-same.png", None)]
    jobs = {job.path.name: [(facts.relpath, replaced) for facts, replaced in job.targets] for job in plan.embed}
    assert jobs == {"changed.png": [("changed.png", 3)], "fresh-1.png": [("fresh-1.png", None), ("fresh-2.png", None)]}
    assert [image.id for image in plan.removed] == [5]


def test_shards_split_paths_once_evenly_and_alike_everywhere():
    paths = [f"label{i % 7}/image{i:04d}.jpg" for i in range(2000)]
    shards = [Shard(number, 4) for number in range(1, 5)]
    owners = [[shard.number for shard in shards if shard.holds(path)] for path in paths]
    assert all(len(owner) == 1 for owner in owners)
    sizes = [sum(owner == [number] for owner in owners) for number in range(1, 5)]
    assert min(sizes) > 400 and max(sizes) < 600, sizes
    # SHA-256 of the path, not Python's per-process hash(): the same on every machine and in every run
    pinned = {"cats/a.png": 1, "x/y/z.jpg": 1, "IMG_0001.JPG": 3, "été.png": 2}
    assert {path: next(s.number for s in shards if s.holds(path)) for path in pinned} == pinned


@pytest.mark.parametrize(("text", "shard"), [("1/1", Shard(1, 1)), ("2/4", Shard(2, 4)), (" 4/4 ", Shard(4, 4))])
def test_shard_numbers_count_from_one(text, shard):
    assert Shard.parse(text) == shard


@pytest.mark.parametrize(("text", "message"), [
    ("3/2", "there is no shard 3/2: shards are counted from 1"),
    ("0/2", "there is no shard 0/2: shards are counted from 1"),
    ("1/0", "there is no shard 1/0"),
    ("2", "'2' is not I/N"),
    ("a/b", "'a/b' is not I/N"),
])
def test_impossible_shards_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        Shard.parse(text)


def test_shard_plans_together_do_what_one_plan_does(tmp_path):
    """Moves across shards included: the vanished row goes to the shard of the new path, and only there."""
    names = "abcdefgh"
    stored = {s.relpath: s for s in [_stored(tmp_path, f"old/{n}.png", i, f"bytes {n}".encode())
                                     for i, n in enumerate(names, start=1)]}
    stored |= {s.relpath: s for s in [_stored(tmp_path, f"kept/{n}.png", 10 + i, f"kept {n}".encode())
                                      for i, n in enumerate(names, start=1)]}
    for n in names[:6]:  # moved, old/a -> new/a goes from shard 3 to shard 2 of 3, old/c -> new/c stays in 2
        (tmp_path / "new").mkdir(exist_ok=True)
        (tmp_path / "old" / f"{n}.png").rename(tmp_path / "new" / f"{n}.png")
    (tmp_path / "old" / "g.png").unlink()
    _touch(tmp_path / "kept" / "a.png", b"changed")
    os.utime(tmp_path / "kept" / "b.png", ns=(1, 1))
    _touch(tmp_path / "copies" / "c.png", b"kept c")
    _touch(tmp_path / "copies" / "h.png", b"bytes h")
    for n in names:
        _touch(tmp_path / "fresh" / f"{n}.png", f"fresh {n}".encode())
    scan = scan_folder(tmp_path)
    assert {Shard(3, 3).holds("old/a.png"), Shard(2, 3).holds("new/a.png")} == {True}

    whole = plan_index(scan, stored, content_hash)
    parts = [plan_index(scan, stored, content_hash, shard=Shard(number, 3)) for number in range(1, 4)]

    def written(plan):  # what each path will hold: a row moved there, or stored bytes
        return ([(image.id, facts.relpath) for image, facts in plan.moved],
                [(facts.relpath, facts.content_hash, replaced) for _, facts, replaced in plan.copies]
                + [(facts.relpath, facts.content_hash, replaced) for job in plan.embed for facts, replaced in job.targets])

    assert sorted(m for part in parts for m in written(part)[0]) == sorted(written(whole)[0])
    assert len(whole.moved) == 6
    assert sorted(w for part in parts for w in written(part)[1]) == sorted(written(whole)[1])
    assert sorted(image.id for part in parts for image in part.removed) == [image.id for image in whole.removed] == [7]
    assert sorted(t for part in parts for t in part.touched) == sorted(whole.touched)
    assert sum(part.unchanged for part in parts) == whole.unchanged == 8  # old/h, kept/b (touched) to kept/h
