"""Which files a scan finds, and what an index run plans to do with them (no model involved)."""

from __future__ import annotations

import os
from pathlib import Path

from db.queries import StoredImage
from indexer.plan import plan_index
from indexer.scan import content_hash, scan_folder


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_finds_images_in_any_letter_case_and_labels_them_by_first_folder(tmp_path):
    for name in ["a.JPG", "b.jpeg", "c.Png", "d.webp", "e.BMP", "f.tif", "g.TIFF", "h.gif",
                 "cats/siamese/i.jpg", "dogs/j.png", "readme.txt", "k.jpg.bak"]:
        _touch(tmp_path / name)
    found = scan_folder(tmp_path)
    assert [f.relpath for f in found] == ["a.JPG", "b.jpeg", "c.Png", "cats/siamese/i.jpg", "d.webp", "dogs/j.png",
                                          "e.BMP", "f.tif", "g.TIFF", "h.gif"]
    labels = {f.relpath: f.label for f in found}
    assert labels["cats/siamese/i.jpg"] == "cats" and labels["dogs/j.png"] == "dogs" and labels["a.JPG"] is None


def test_scan_skips_hidden_files_and_folders(tmp_path):
    _touch(tmp_path / ".hidden.jpg")
    _touch(tmp_path / ".thumbnails" / "a.jpg")
    _touch(tmp_path / "visible" / "b.jpg")
    assert [f.relpath for f in scan_folder(tmp_path)] == ["visible/b.jpg"]


def test_scan_follows_folder_links_once_and_never_loops(tmp_path):
    _touch(tmp_path / "photos" / "a.jpg")
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "loop")
    os.symlink(tmp_path / "photos", tmp_path / "alias")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.jpg")
    found = [f.relpath for f in scan_folder(tmp_path)]
    assert found == ["alias/a.jpg"]  # the first path to a real folder in name order wins


def _stored(tmp_path: Path, relpath: str, image_id: int, data: bytes) -> StoredImage:
    path = _touch(tmp_path / relpath, data)
    return StoredImage(image_id, relpath, content_hash(path), path.stat().st_size, path.stat().st_mtime_ns)


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
    assert [(image_id, facts.relpath, facts.label) for image_id, facts in plan.moved] == [(4, "sub/new-name.png", "sub")]
    assert [(source, facts.relpath, replaced) for source, facts, replaced in plan.copies] == [(1, "copy-of-same.png", None)]
    jobs = {job.path.name: [(facts.relpath, replaced) for facts, replaced in job.targets] for job in plan.embed}
    assert jobs == {"changed.png": [("changed.png", 3)], "fresh-1.png": [("fresh-1.png", None), ("fresh-2.png", None)]}
    assert plan.removed == [5]
