"""Indexing real image files with the real timm architecture (random weights): what ends up in the database.

Tests taking `db_url` run twice: into a SQLite file and into a PostgreSQL database of their own."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dash.testing.wait import until
from sqlalchemy import func, select

from db.holds import HOLDS_ENV
from db.queries import dataset_by_name, load_embeddings, patch_grid, thumbnail
from db.schema import Embedding, Failure, Image, IndexRun, PatchGrid, Thumbnail
from tests.conftest import FAST, IMAGE_SIZE, MODEL, index_folder, reading, run_cli, sqlite_only
from tests.images import noise, solid, write_bad_files
from tests.servers import CLI

GRID = IMAGE_SIZE // 14
DIM = 384  # ViT-S


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    solid(root / "red" / "r1.png", (220, 20, 20))
    solid(root / "red" / "r2.jpg", (200, 30, 40), size=(30, 90))
    noise(root / "blue" / "b1.png", seed=1)
    noise(root / "blue" / "b2.webp", seed=2, size=(90, 30))
    noise(root / "loose.bmp", seed=3)
    return root


def _counts(db: str) -> dict[str, int]:
    with reading(db) as session:
        return {table.__tablename__: session.scalar(select(func.count()).select_from(table))
                for table in (Image, Embedding, PatchGrid, Thumbnail)}


def _embeddings_by_path(db: str, dataset: str) -> dict[str, np.ndarray]:
    with reading(db) as session:
        ids, matrix = load_embeddings(session, dataset_by_name(session, dataset))
        paths = dict(session.execute(select(Image.id, Image.relpath)).all())
    return {paths[int(i)]: row for i, row in zip(ids, matrix)}


def test_indexing_stores_embeddings_grids_thumbnails_and_provenance(photos, db_url):
    result = index_folder(photos, db_url)
    assert "photos: 5 added, 0 updated, 0 unchanged, 0 moved, 0 removed, 0 failed; 5 embedded" in result.output
    assert _counts(db_url) == {"images": 5, "embeddings": 5, "patch_grids": 5, "thumbnails": 10}
    with reading(db_url) as session:
        dataset = dataset_by_name(session, "photos")
        assert (dataset.model_name, dataset.image_size, dataset.embed_dim) == (MODEL, IMAGE_SIZE, DIM)
        assert (dataset.grid_height, dataset.grid_width, dataset.patch_size) == (GRID, GRID, 14)
        assert dataset.weights_kind == "random" and "random-init (seed 0" in dataset.weights_identity
        assert "squashed" in dataset.preprocessing["resize"] and dataset.library_versions["timm"]
        ids, matrix = load_embeddings(session, dataset)
        assert matrix.shape == (5, DIM) and matrix.dtype == np.float32 and np.isfinite(matrix).all()
        grid = patch_grid(session, int(ids[0]))
        assert grid.shape == (GRID, GRID, DIM) and grid.dtype == np.float16
        images = {image.relpath: image for image in session.scalars(select(Image))}
        assert images["red/r2.jpg"].label == "red" and images["loose.bmp"].label is None
        assert (images["red/r2.jpg"].width, images["red/r2.jpg"].height) == (30, 90)
        assert thumbnail(session, images["blue/b2.webp"].id, "preview").jpeg[:2] == b"\xff\xd8"  # a JPEG
        run = session.scalar(select(IndexRun))
        assert (run.status, run.added, run.failed) == ("completed", 5, 0)


@sqlite_only
def test_the_sample_set_indexes_completely(tmp_path, db_url):
    run_cli("samples", tmp_path / "samples")
    result = index_folder(tmp_path / "samples", db_url)
    count = len(list((tmp_path / "samples").rglob("*.*")))
    assert count >= 20 and f"{count} added" in result.output and "0 failed" in result.output
    with reading(db_url) as session:
        labels = set(session.scalars(select(Image.label)))
    assert labels == {"animals", "buildings", "fish", "kitchen", "tools", "windmills"}


def test_a_second_run_on_an_unchanged_folder_embeds_nothing(photos, db_url):
    index_folder(photos, db_url)
    before = _embeddings_by_path(db_url, "photos")
    result = index_folder(photos, db_url)
    assert "nothing to do: all 5 images of 'photos' are unchanged (nothing embedded)" in result.output
    after = _embeddings_by_path(db_url, "photos")
    assert all(np.array_equal(before[path], after[path]) for path in before)


def test_changed_added_removed_renamed_and_duplicated_files(photos, db_url):
    index_folder(photos, db_url)
    before = _embeddings_by_path(db_url, "photos")
    with reading(db_url) as session:
        moved_id = session.scalar(select(Image.id).where(Image.relpath == "blue/b1.png"))

    noise(photos / "red" / "r1.png", seed=99)  # changed in place
    noise(photos / "green" / "g1.png", seed=4)  # added
    (photos / "loose.bmp").unlink()  # removed
    (photos / "blue" / "b1.png").rename(photos / "teal-b1.png")  # renamed: same bytes, new path, no label
    shutil.copyfile(photos / "blue" / "b2.webp", photos / "copy-of-b2.webp")  # duplicated
    os.utime(photos / "red" / "r2.jpg", ns=(10**18, 10**18))  # touched only

    result = index_folder(photos, db_url)
    assert "2 added, 1 updated, 2 unchanged, 1 moved, 1 removed, 0 failed; 2 embedded" in result.output
    after = _embeddings_by_path(db_url, "photos")
    assert sorted(after) == ["blue/b2.webp", "copy-of-b2.webp", "green/g1.png", "red/r1.png", "red/r2.jpg",
                             "teal-b1.png"]
    assert not np.allclose(after["red/r1.png"], before["red/r1.png"])
    np.testing.assert_array_equal(after["teal-b1.png"], before["blue/b1.png"])
    np.testing.assert_array_equal(after["copy-of-b2.webp"], before["blue/b2.webp"])
    with reading(db_url) as session:
        moved = session.scalar(select(Image).where(Image.relpath == "teal-b1.png"))
        assert (moved.id, moved.label) == (moved_id, None)
    assert _counts(db_url) == {"images": 6, "embeddings": 6, "patch_grids": 6, "thumbnails": 12}


@pytest.mark.parametrize(("option", "message"), [
    (["--image-size", "28"], "image size 28 instead of 56"),
    (["--model", "vit_base_patch14_reg4_dinov2.lvd142m"], "model vit_base_patch14_reg4_dinov2.lvd142m instead of"),
])
@sqlite_only
def test_a_different_model_or_size_is_refused_with_how_to_rebuild(photos, db_url, option, message):
    index_folder(photos, db_url)
    args = ["index", photos, "--db", db_url, "--random-weights", "--workers", "0", "--quiet"]
    args += ["--model", MODEL] if option[0] != "--model" else []
    args += ["--image-size", str(IMAGE_SIZE)] if option[0] != "--image-size" else []
    result = run_cli(*args, *option, expect=1)
    assert message in result.output
    assert "--dataset NEW_NAME" in result.output and "dinoscope remove photos" in result.output
    assert _counts(db_url)["images"] == 5


@sqlite_only
def test_other_weights_are_refused(photos, db_url, weights_file):
    index_folder(photos, db_url)
    result = run_cli("index", photos, "--db", db_url, "--weights", weights_file, *FAST, expect=1)
    assert "a weights file instead of random weights" in result.output


@sqlite_only
def test_bad_files_are_reported_with_their_reason_and_the_run_goes_on(photos, db_url):
    reasons = write_bad_files(photos / "bad")
    result = index_folder(photos, db_url)
    assert "5 added" in result.output and "4 failed" in result.output
    for name, word in reasons.items():
        line = next(line for line in result.output.splitlines() if f"bad/{name}:" in line)
        assert word in line
    with reading(db_url) as session:
        recorded = dict(session.execute(select(Failure.relpath, Failure.reason)).all())
    assert set(recorded) == {f"bad/{name}" for name in reasons}
    assert _counts(db_url)["images"] == 5


@sqlite_only
def test_a_file_that_turns_bad_loses_its_stale_vectors(photos, db_url):
    index_folder(photos, db_url)
    (photos / "red" / "r1.png").write_bytes(b"")
    result = index_folder(photos, db_url)
    assert "red/r1.png: empty file" in result.output
    assert "red/r1.png" not in _embeddings_by_path(db_url, "photos")


@sqlite_only
def test_an_empty_folder_changes_nothing(tmp_path, db_url):
    (tmp_path / "empty").mkdir()
    result = run_cli("index", tmp_path / "empty", "--db", db_url, "--random-weights", *FAST, expect=1)
    assert f"no image files in {tmp_path / 'empty'}" in result.output


@sqlite_only
def test_a_folder_that_cannot_be_listed_is_a_failure_and_keeps_its_images(photos, db_url, unlistable, caplog):
    index_folder(photos, db_url)
    (photos / "red" / "r1.png").unlink()
    unlistable(photos / "blue")
    result = index_folder(photos, db_url)
    assert "photos: 0 added, 0 updated, 2 unchanged, 0 moved, 1 removed, 1 failed" in result.output
    reason = "cannot list folder: Permission denied; the 2 images stored under it are kept"
    assert f"  blue: {reason}" in result.output
    assert any(record.levelname == "WARNING" and f"{photos}/blue: cannot list folder: Permission denied" in
               record.getMessage() for record in caplog.records)
    with reading(db_url) as session:
        assert set(session.scalars(select(Image.relpath))) == {"red/r2.jpg", "blue/b1.png", "blue/b2.webp",
                                                               "loose.bmp"}
        run = session.scalars(select(IndexRun).order_by(IndexRun.id.desc()).limit(1)).one()
        assert (run.removed, run.failed) == (1, 1)
        assert session.execute(select(Failure.relpath, Failure.reason).where(Failure.run_id == run.id)).all() == [
            ("blue", reason)]


@sqlite_only
@pytest.mark.parametrize("now", ["empty", "other files"])
def test_a_folder_without_any_of_its_images_is_refused_and_keeps_them_all(photos, tmp_path, db_url, now):
    """As an unmounted network folder looks: empty, or showing what lies under its mount point."""
    index_folder(photos, db_url)
    shutil.move(photos, tmp_path / "elsewhere")
    photos.mkdir()
    if now == "other files":
        noise(photos / "under-the-mount-point.png", seed=9)
    result = index_folder(photos, db_url, expect=1)
    assert f"none of the 5 images that dataset 'photos' holds from {photos} is there now" in result.output
    assert "Nothing was changed" in result.output and "`dinoscope remove photos`" in result.output
    assert _counts(db_url) == {"images": 5, "embeddings": 5, "patch_grids": 5, "thumbnails": 10}


@sqlite_only
def test_a_folder_that_cannot_be_listed_itself_is_refused_and_keeps_its_images(photos, db_url, unlistable):
    index_folder(photos, db_url)
    unlistable(photos, errno.ESTALE)
    result = index_folder(photos, db_url, expect=1)
    assert f"Error: cannot list {photos}: Stale file handle; nothing was changed" in result.output
    assert _counts(db_url)["images"] == 5


def test_the_operator_log_tells_when_runs_start_and_end_at_the_level_asked(photos, tmp_path, monkeypatch):
    db = tmp_path / "index.db"
    output = index_folder(photos, db).output
    assert f"INFO indexer.run: run 1 of dataset 'photos' started on {photos}: 5 image files found, 5 to embed" in output
    assert ("INFO indexer.run: run 1 of dataset 'photos' completed in " in output
            and "s: 5 added, 0 updated, 0 unchanged, 0 moved, 0 removed, 0 failed" in output)

    monkeypatch.setenv("DINOSCOPE_LOG_LEVEL", "WARNING")
    (photos / "loose.bmp").unlink()
    assert "indexer.run" not in index_folder(photos, db).output
    monkeypatch.setenv("DINOSCOPE_LOG_LEVEL", "LOUD")
    output = index_folder(photos, db, expect=2).output
    assert "Invalid value for '--log-level': 'LOUD' is not one of 'debug', 'info', 'warning', 'error'" in output


@sqlite_only
def test_another_folder_under_the_same_dataset_name_is_refused(photos, tmp_path, db_url):
    index_folder(photos, db_url)
    solid(tmp_path / "other" / "a.png", (1, 2, 3))
    result = run_cli("index", tmp_path / "other", "--dataset", "photos", "--db", db_url, "--random-weights", *FAST,
                     expect=1)
    assert f"holds the images of {photos}" in result.output


@sqlite_only
def test_patch_grid_cells_lie_over_their_image_region(tmp_path, db_url):
    """A checkerboard in one displayed corner changes that corner's cells most, whatever the aspect or EXIF."""
    from PIL import Image as PILImage

    from tests.images import EXIF_ORIENTATION, with_corner_pattern

    root = tmp_path / "corners"
    root.mkdir()
    cases = {"wide": ((112, 56), "top-right", (0, GRID - 1)), "tall": ((56, 112), "bottom-left", (GRID - 1, 0))}
    for name, (size, corner, _) in cases.items():
        PILImage.new("RGB", size, (128, 128, 128)).save(root / f"{name}-plain.png")
        with_corner_pattern(size, corner).save(root / f"{name}-pattern.png")
    # Stored sideways, displayed upright by EXIF orientation 8 (turned 90 degrees anticlockwise):
    # the displayed top-left corner is stored at the top-right.
    exif = PILImage.Exif()
    exif[EXIF_ORIENTATION] = 8
    PILImage.new("RGB", (56, 56), (128, 128, 128)).save(root / "rotated-plain.png")
    with_corner_pattern((56, 56), "top-right").save(root / "rotated-pattern.png", exif=exif.tobytes())
    cases["rotated"] = (None, None, (0, 0))

    run_cli("index", root, "--db", db_url, "--random-weights", "--precision", "fp32", *FAST)
    with reading(db_url) as session:
        ids = dict(session.execute(select(Image.relpath, Image.id)).all())
        for name, (_, _, cell) in cases.items():
            plain = patch_grid(session, ids[f"{name}-plain.png"]).astype(np.float32)
            pattern = patch_grid(session, ids[f"{name}-pattern.png"]).astype(np.float32)
            change = np.linalg.norm(pattern - plain, axis=-1)
            assert np.unravel_index(change.argmax(), change.shape) == cell, (name, change.round(1))
            assert change[cell] > 2 * np.median(change), (name, change.round(1))


def test_a_killed_run_resumes_with_exactly_one_row_per_image(tmp_path, db_url):
    root = tmp_path / "many"
    for i in range(24):
        noise(root / f"{i:02d}.png", seed=i)
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "index-batch-committed").touch()  # the run stops after its first batch until it is killed
    args = ["index", root, "--db", db_url, "--random-weights", *FAST, "--batch-size", "2"]
    process = subprocess.Popen([*CLI, *map(str, args)], env={**os.environ, HOLDS_ENV: str(holds)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    until(lambda: (holds / "index-batch-committed.reached").exists() or process.poll() is not None, timeout=300)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = _counts(db_url)["images"]
    assert kept == 2

    result = index_folder(root, db_url, "--batch-size", "2")
    assert f"{24 - kept} added, 0 updated, {kept} unchanged" in result.output
    assert _counts(db_url) == {"images": 24, "embeddings": 24, "patch_grids": 24, "thumbnails": 48}
    with reading(db_url) as session:
        assert session.scalar(select(func.count(func.distinct(Image.relpath)))) == 24
        statuses = session.scalars(select(IndexRun.status).order_by(IndexRun.id)).all()
    assert statuses == ["interrupted", "completed"]
