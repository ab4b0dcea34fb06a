"""Patch grids stored reduced by a PCA basis fitted on the dataset: what is stored, what reading gives back, and
how later runs, exports and the within-image analysis use it. Real files, the real (small) architecture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, func, select

from dashboard.analysis.patches import patch_similarity
from dashboard.data import DatasetStore
from dashboard.patches_view import LAYERS, PatchSettings, analyse, layer_values
from db.engine import Database, open_database
from db.mutations import store_patch_pca
from db.patch_pca import PatchPca
from db.queries import dataset_by_name, load_embeddings, patch_grid, patch_pca, stored_patch_grid
from db.schema import Image, PatchBasis, PatchGrid
from tests.conftest import IMAGE_SIZE, index_folder, run_cli, sqlite_only
from tests.images import noise

GRID = IMAGE_SIZE // 14
TOKENS = GRID * GRID  # patch tokens per image
DIM = 384  # ViT-S


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for seed in range(5):
        noise(root / ("odd" if seed % 2 else "even") / f"n{seed}.png", seed=seed)
    return root


def _grids(db, dataset: str) -> dict[str, np.ndarray]:
    """Every image's patch grid as the dashboard reads it, by relative path, in float32."""
    with open_database(str(db), readonly=True).session() as session:
        data = dataset_by_name(session, dataset)
        paths = dict(session.execute(select(Image.id, Image.relpath).where(Image.dataset_id == data.id)).all())
        return {path: patch_grid(session, image_id).astype(np.float32) for image_id, path in paths.items()}


def _projection(pca: PatchPca, grid: np.ndarray) -> np.ndarray:
    """The full grid's orthogonal projection onto the basis: what a reduced grid should read back as."""
    return ((grid - pca.mean) @ pca.axes.T) @ pca.axes + pca.mean


def _pca(db, dataset: str) -> PatchPca:
    with open_database(str(db), readonly=True).session() as session:
        return patch_pca(session, dataset_by_name(session, dataset))


@sqlite_only
def test_a_reduced_dataset_stores_float16_coordinates_and_a_float32_basis(photos, db_url):
    assert "5 added" in index_folder(photos, db_url, "--patch-dims", 8).output
    index_folder(photos, db_url, "--dataset", "full")
    with open_database(db_url, readonly=True).session() as session:
        dataset = dataset_by_name(session, "photos")
        assert (dataset.patch_dims, dataset.stored_patch_dims, dataset.embed_dim) == (8, 8, DIM)
        assert dataset_by_name(session, "full").patch_dims is None
        stored = session.scalars(select(PatchGrid).limit(1)).one()
        assert (stored.dtype, stored.shape) == ("<f2", f"{GRID},{GRID},8")
        basis = session.get(PatchBasis, dataset.id)
        assert (basis.dtype, basis.shape) == ("<f4", f"9,{DIM}")  # the mean, then 8 axes
        ids, _ = load_embeddings(session, dataset)
        assert stored_patch_grid(session, dataset, int(ids[0])).shape == (GRID, GRID, 8)
        grid = patch_grid(session, int(ids[0]))
        assert grid.shape == (GRID, GRID, DIM) and grid.dtype == np.float16
    pca = _pca(db_url, "photos")
    # Fewer images than the fitting threshold: the basis is fitted on all of them.
    assert (pca.fitted_images, pca.fitted_tokens, pca.dims) == (5, 5 * TOKENS, 8)
    assert 0 < pca.explained_variance < 1
    np.testing.assert_allclose(pca.axes @ pca.axes.T, np.eye(8), atol=1e-5)
    reduced, full = _grids(db_url, "photos"), _grids(db_url, "full")
    for path, grid in full.items():  # every image reads back as the projection of its own full grid
        np.testing.assert_allclose(reduced[path], _projection(pca, grid), atol=1e-2)
        assert np.linalg.norm(reduced[path] - grid) > 0.1 * np.linalg.norm(grid)  # 8 of 384 dims: not the same

    output = run_cli("datasets", "--db", db_url).output
    assert "patch grids reduced to 8 dims by PCA (basis fitted on 5 images, " in output
    assert output.count("patch grids reduced") == 1  # the full dataset says nothing of the kind


def test_enough_dimensions_give_the_full_grids_back(photos, db_path):
    """5 images of 16 tokens span 79 dimensions around their mean: a basis of 79 keeps all of it."""
    index_folder(photos, db_path, "--patch-dims", 5 * TOKENS - 1)
    index_folder(photos, db_path, "--dataset", "full")
    reduced, full = _grids(db_path, "photos"), _grids(db_path, "full")
    assert _pca(db_path, "photos").explained_variance == pytest.approx(1.0, abs=1e-4)
    for path, grid in full.items():
        np.testing.assert_allclose(reduced[path], grid, atol=4e-3)  # float16 coordinates, then float16 tokens
        assert np.linalg.norm(reduced[path] - grid) < 1e-3 * np.linalg.norm(grid)


def test_later_runs_keep_the_dimensions_and_reuse_the_basis(photos, db_path):
    index_folder(photos, db_path, "--patch-dims", 8)
    before = _pca(db_path, "photos")
    refused = index_folder(photos, db_path, "--patch-dims", 16, expect=1).output
    assert "stores patch grids reduced to 8 dims; this run asks for --patch-dims 16" in refused
    assert "--dataset NEW_NAME" in refused and "dinoscope remove photos" in refused

    noise(photos / "new" / "n9.png", seed=9)
    shutil.copyfile(photos / "even" / "n0.png", photos / "copy-of-n0.png")  # stored without the model
    assert "2 added" in index_folder(photos, db_path).output  # no --patch-dims: the dataset's 8
    index_folder(photos, db_path, "--dataset", "full")
    after = _pca(db_path, "photos")
    np.testing.assert_array_equal(after.axes, before.axes)
    np.testing.assert_array_equal(after.mean, before.mean)
    assert after.fitted_images == 5
    reduced, full = _grids(db_path, "photos"), _grids(db_path, "full")
    np.testing.assert_allclose(reduced["new/n9.png"], _projection(before, full["new/n9.png"]), atol=1e-2)
    np.testing.assert_array_equal(reduced["copy-of-n0.png"], reduced["even/n0.png"])
    with open_database(str(db_path), readonly=True).session() as session:
        dataset = dataset_by_name(session, "photos")
        assert dataset.patch_dims == 8
        assert session.scalar(select(func.count()).select_from(PatchBasis)) == 1


def test_a_full_dataset_refuses_reduction_later(photos, db_path):
    index_folder(photos, db_path)
    refused = index_folder(photos, db_path, "--patch-dims", 8, expect=1).output
    assert f"stores full {DIM}-dim patch grids; this run asks for --patch-dims 8" in refused


@pytest.mark.parametrize(("dims", "message"), [
    (DIM, f"--patch-dims {DIM} does not reduce"),
    (5 * TOKENS + 1, f"needs at least {5 * TOKENS + 1} patch tokens to fit its basis on, and this run's 5 images give"),
])
def test_dimensions_that_cannot_be_fitted_are_refused_before_anything_is_stored(photos, db_path, dims, message):
    assert message in index_folder(photos, db_path, "--patch-dims", dims, expect=1).output
    assert "no datasets yet" in run_cli("datasets", "--db", db_path).output


def test_the_basis_is_fitted_on_the_first_images_once_enough_have_come(photos, db_path, monkeypatch):
    monkeypatch.setattr("indexer.patch_reduction.FIT_IMAGES", 2)
    index_folder(photos, db_path, "--patch-dims", 8, "--batch-size", "1")
    index_folder(photos, db_path, "--dataset", "full")
    pca = _pca(db_path, "photos")
    assert (pca.fitted_images, pca.fitted_tokens) == (2, 2 * TOKENS)
    reduced, full = _grids(db_path, "photos"), _grids(db_path, "full")
    assert sorted(reduced) == sorted(full)
    for path, grid in full.items():
        np.testing.assert_allclose(reduced[path], _projection(pca, grid), atol=1e-2)


def test_the_basis_is_fitted_and_stored_in_a_batch_transaction_not_one_of_its_own(photos, db_path, monkeypatch):
    open_database(str(db_path)).dispose()  # made before: each run below only opens it
    opened = []
    session = Database.session
    monkeypatch.setattr(Database, "session", lambda database: opened.append(1) or session(database))
    index_folder(photos, db_path, "--dataset", "full")
    full = len(opened)
    opened.clear()
    index_folder(photos, db_path, "--patch-dims", 8)
    assert len(opened) == full and _pca(db_path, "photos").fitted_images == 5


def test_the_within_image_analysis_runs_on_a_reduced_grid(photos, db_path):
    index_folder(photos, db_path, "--patch-dims", 8)
    store = DatasetStore(f"sqlite:///{db_path}")
    view = store.view("photos")
    grid = store.patch_grid(int(view.image_ids[0]))
    assert grid.shape == (GRID, GRID, DIM)
    for layer in LAYERS:
        settings = PatchSettings(layer=layer, k=3)
        result = analyse(grid, settings)
        values = layer_values(result, settings)
        assert np.asarray(values).shape[:2] == (GRID, GRID) and np.isfinite(np.asarray(values, float)).all()
    labels = analyse(grid, PatchSettings(k=3)).labels
    assert set(np.unique(labels)) == {0, 1, 2}
    similarity = patch_similarity(grid.astype(np.float32), grid[1, 2].astype(np.float32))
    assert similarity[1, 2] == pytest.approx(1.0, abs=1e-3) and (similarity <= 1 + 1e-3).all()


def test_export_writes_the_coordinates_with_their_basis(photos, db_path, tmp_path):
    index_folder(photos, db_path, "--patch-dims", 8)
    target = tmp_path / "photos.npz"
    run_cli("export", "photos", "--db", db_path, "-o", target, "--patch-grids")
    archive = np.load(target)
    assert "patch_grids" not in archive
    assert archive["patch_coords"].shape == (5, GRID, GRID, 8) and archive["patch_coords"].dtype == np.float16
    assert archive["patch_mean"].shape == (DIM,) and archive["patch_axes"].shape == (8, DIM)
    assert json.loads(str(archive["provenance"]))["patch_dims"] == 8
    rebuilt = archive["patch_mean"] + archive["patch_coords"].astype(np.float32) @ archive["patch_axes"]
    with open_database(str(db_path), readonly=True).session() as session:
        for row, image_id in enumerate(archive["image_ids"]):
            np.testing.assert_allclose(rebuilt[row], patch_grid(session, int(image_id)), atol=4e-3)
    run_cli("remove", "photos", "--yes", "--db", db_path)
    with open_database(str(db_path), readonly=True).session() as session:
        assert session.scalar(select(func.count()).select_from(PatchBasis)) == 0


def test_the_first_stored_basis_wins_when_two_runs_fit_one(photos, db_path):
    index_folder(photos, db_path, "--patch-dims", 8)
    stored = _pca(db_path, "photos")
    other = PatchPca(stored.mean, -stored.axes, 1, TOKENS, stored.explained_variance)
    with open_database(str(db_path)).session() as session:
        kept = store_patch_pca(session, dataset_by_name(session, "photos"), other)
    np.testing.assert_array_equal(kept.axes, stored.axes)
    np.testing.assert_array_equal(_pca(db_path, "photos").axes, stored.axes)


def test_a_basis_stored_by_another_process_meanwhile_is_the_one_used(photos, postgres_url, monkeypatch):
    """PostgreSQL lets two runs look, find no basis, and insert: the second insert fails and reads the first."""
    index_folder(photos, postgres_url, "--patch-dims", 8)
    stored = _pca(postgres_url, "photos")
    database = open_database(postgres_url)
    with database.session() as session:
        session.execute(delete(PatchBasis))
    looks = []

    def late_look(session, dataset):  # the first look sees no basis; another process stores one right after it
        if looks:
            return patch_pca(session, dataset)
        looks.append(dataset.id)
        with database.session() as other:
            row = PatchBasis(dataset_id=dataset.id, fitted_images=stored.fitted_images,
                             fitted_tokens=stored.fitted_tokens, explained_variance=stored.explained_variance)
            row.set_array(np.vstack([stored.mean[None, :], stored.axes]), "<f4")
            other.add(row)
        return None

    monkeypatch.setattr("db.mutations.patch_pca", late_look)
    mine = PatchPca(stored.mean, -stored.axes, 1, TOKENS, stored.explained_variance)
    with database.session() as session:
        kept = store_patch_pca(session, dataset_by_name(session, "photos"), mine)
    assert looks and kept.fitted_images == 5
    np.testing.assert_array_equal(kept.axes, stored.axes)
    np.testing.assert_array_equal(_pca(postgres_url, "photos").axes, stored.axes)
