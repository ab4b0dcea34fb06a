"""A dataset's shared generation built from the previous one (dashboard.matrix_content) while an index run adds,
changes, moves and removes images batch by batch: the same rows, in the same order, as a whole build."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from dashboard import data, matrix_content
from dashboard.analysis.projection import REDUCED_DIMENSIONS, principal_basis
from dashboard.analysis.similarity import bounded_top_k, top_k
from dashboard.data import DatasetStore
from dashboard.shared_matrix import MatrixKey, read_shared
from db.engine import open_database
from db.mutations import add_images_in_bulk, bump_generation, move_image, remove_images, replace_image_content
from db.mutations import stored_content as content_of
from db.queries import dataset_by_name, image_facts
from db.records import FileFacts
from indexer.synthetic import write_synthetic_dataset

IMAGES = 300


@pytest.fixture
def database(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'incremental.db'}"
    write_synthetic_dataset(open_database(url), "synth", IMAGES, dim=64, clusters=3, spread=0.3)
    return url


def _store(url: str, tmp_path: Path) -> DatasetStore:
    return DatasetStore(url, tmp_path / "cache")


def _add(url: str, count: int, *, scale: float = 0.05, towards: np.ndarray | None = None, seed: int = 1) -> None:
    """Add `count` images in one transaction and generation, as an index run's batch does: copies of images of the
    dataset with their embeddings moved (by `scale`, or replaced by `towards`), under paths among the others'."""
    rng = np.random.default_rng(seed)
    with open_database(url).session() as session:
        dataset = dataset_by_name(session, "synth")
        facts = image_facts(session, dataset)
        images = []
        for k, row in enumerate(rng.choice(len(facts.image_ids), count, replace=False).tolist()):
            content = content_of(session, dataset, int(facts.image_ids[row]))
            vector = (content.embedding + scale * rng.standard_normal(content.embedding.shape, dtype=np.float32)
                      if towards is None else towards[k])
            relpath = facts.relpaths[row].replace(".jpg", f"-copy{seed}.jpg")  # right after the image it copies
            images.append((FileFacts(relpath, facts.labels[row], f"{seed:032x}{k:032x}", 1, 0),
                           dataclasses.replace(content, embedding=vector.astype(np.float32))))
        add_images_in_bulk(session, dataset, images)
        bump_generation(session, dataset)


def _built_whole(monkeypatch) -> list[str]:
    """Names of the datasets read whole from the database from now on."""
    read, real = [], data._read_dataset

    def counted(session, dataset):
        read.append(dataset.name)
        return real(session, dataset)

    monkeypatch.setattr(data, "_read_dataset", counted)
    return read


def _assert_same_rows(incremental, whole) -> None:
    """Everything but the principal components, which a generation built from the previous one keeps."""
    for name in ("image_ids", "embeddings", "norms", "sizes"):
        np.testing.assert_array_equal(getattr(incremental, name), getattr(whole, name))
    assert (incremental.relpaths, incremental.labels) == (whole.relpaths, whole.labels)
    assert incremental.generation == whole.generation


def _shared(url: str, tmp_path: Path, generation: int):
    with open_database(url).session() as session:
        dataset = dataset_by_name(session, "synth")
        key = MatrixKey(url, dataset.id, dataset.created_at.isoformat(), generation, matrix_content.CONTENT)
    return read_shared(tmp_path / "cache" / "matrices", key)


def _rows_of(view, image_ids: np.ndarray) -> np.ndarray:
    order = np.argsort(view.image_ids)
    return order[np.searchsorted(view.image_ids, image_ids, sorter=order)]


def test_a_generation_that_only_added_images_is_built_from_the_previous_one(db_url, tmp_path, monkeypatch):
    write_synthetic_dataset(open_database(db_url), "synth", IMAGES, dim=64, clusters=3, spread=0.3)
    first = _store(db_url, tmp_path).view("synth")
    _add(db_url, 12)
    read = _built_whole(monkeypatch)
    second = _store(db_url, tmp_path).view("synth")
    assert read == [] and len(second) == IMAGES + 12  # not read whole from the database
    monkeypatch.undo()
    _assert_same_rows(second, DatasetStore(db_url).view("synth"))
    assert not second.embeddings.flags.writeable and not second.embeddings.flags.owndata  # mapped
    # The images there before keep their coordinates on the kept axes; the new ones are placed on those axes.
    old_rows = _rows_of(second, first.image_ids)
    np.testing.assert_array_equal(second.reduced[old_rows], first.reduced)
    new_rows = np.setdiff1d(np.arange(len(second)), old_rows)
    shared = _shared(db_url, tmp_path, second.generation)
    mean, axes = shared.arrays["pca_mean"], shared.arrays["pca_axes"]
    np.testing.assert_allclose((first.embeddings / first.norms[:, None] - mean) @ axes.T, first.reduced, atol=1e-5)
    centred = second.embeddings[new_rows] / second.norms[new_rows, None] - mean
    np.testing.assert_allclose(second.reduced[new_rows], centred @ axes.T, atol=1e-5)
    assert shared.document["pca"]["changed_since_fit"] == 12
    # The bounds that let a query skip rows hold on the kept axes too: the bounded search is exact, new rows included.
    for query in (*new_rows[:4], *old_rows[:4]):
        exact = top_k(second.embeddings, int(query), 10, norms=second.norms)
        bounded = bounded_top_k(second.embeddings, second.norms, second.search, int(query), 10, first=10)
        np.testing.assert_array_equal(bounded[0], exact[0])
        np.testing.assert_allclose(bounded[1], exact[1], atol=1e-6)


def test_changed_moved_and_removed_images_are_patched_in_their_new_order(database, tmp_path, monkeypatch):
    store = _store(database, tmp_path)
    first = store.view("synth")
    changed, moved, removed = (int(first.image_ids[row]) for row in (10, 20, 30))
    vector = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    with open_database(database).session() as session:
        dataset = dataset_by_name(session, "synth")
        content = dataclasses.replace(content_of(session, dataset, changed), embedding=vector)
        replace_image_content(session, changed, FileFacts(first.relpaths[10], "relabelled", "f" * 64, 1, 0), content)
        assert move_image(session, moved, first.relpaths[20], FileFacts("aaa/first.jpg", "aaa", "", 1, 0))
        remove_images(session, [removed])
        bump_generation(session, dataset)
    read = _built_whole(monkeypatch)
    second = store.view("synth")
    assert read == []
    monkeypatch.undo()
    whole = DatasetStore(database).view("synth")
    _assert_same_rows(second, whole)
    assert removed not in second.image_ids and second.image_ids[0] == moved and second.labels[0] == "aaa"
    np.testing.assert_array_equal(second.embeddings[second.position(changed)], vector)
    assert second.labels[second.position(changed)] == "relabelled"
    kept = np.setdiff1d(first.image_ids, [changed, removed])
    np.testing.assert_array_equal(second.reduced[_rows_of(second, kept)], first.reduced[_rows_of(first, kept)])
    assert _shared(database, tmp_path, second.generation).document["pca"]["changed_since_fit"] == 2  # 1 changed, 1 gone


def test_a_generation_of_mostly_new_images_is_built_whole(database, tmp_path, monkeypatch):
    store = _store(database, tmp_path)
    first = store.view("synth")
    _add(database, 60)
    with open_database(database).session() as session:  # 60 new images and 50 of the 300 there before
        remove_images(session, first.image_ids[:250].tolist())
        bump_generation(session, dataset_by_name(session, "synth"))
    read = _built_whole(monkeypatch)
    view = store.view("synth")
    assert read == ["synth"] and len(view) == 110


def test_readers_of_the_previous_generation_keep_reading_it_while_the_next_is_built(database, tmp_path,
                                                                                     monkeypatch):
    first = _store(database, tmp_path).view("synth")
    saved = {name: np.array(getattr(first, name)) for name in ("image_ids", "embeddings", "norms", "reduced")}
    previous = _shared(database, tmp_path, first.generation)
    files = {path.name: path.read_bytes() for path in (tmp_path / "cache" / "matrices").glob("*-g*/*")}
    _add(database, 8)
    real_read, checked = matrix_content.embeddings_of, []

    def while_building(*args):  # the new generation's rows are being gathered now
        again = _shared(database, tmp_path, first.generation)
        assert again is not None  # the previous generation is still whole and valid
        for name in ("embeddings", "reduced"):
            np.testing.assert_array_equal(again.arrays[name], previous.arrays[name])
        checked.append(True)
        return real_read(*args)

    monkeypatch.setattr(matrix_content, "embeddings_of", while_building)
    second = _store(database, tmp_path).view("synth")
    assert checked and len(second) == IMAGES + 8
    for name, array in saved.items():  # its folder is gone now, and the mapped files still read as written
        np.testing.assert_array_equal(getattr(first, name), array)
    assert files == {name: bytes(content) for name, content in files.items()}
    assert _shared(database, tmp_path, first.generation) is None


def test_the_principal_axes_are_fitted_again_when_enough_rows_changed(database, tmp_path, monkeypatch):
    store = _store(database, tmp_path)
    first = store.view("synth")
    _add(database, 20, seed=1)  # 20 of 300: below REFIT_FRACTION, the axes are kept
    second = store.view("synth")
    assert _shared(database, tmp_path, second.generation).document["pca"]["changed_since_fit"] == 20
    np.testing.assert_array_equal(second.reduced[_rows_of(second, first.image_ids)], first.reduced)
    _add(database, 20, seed=2)  # 40 since the fit: above, the axes are fitted again on every row
    read = _built_whole(monkeypatch)
    third = store.view("synth")
    assert read == []
    monkeypatch.undo()
    assert _shared(database, tmp_path, third.generation).document["pca"] == {
        "fitted_rows": IMAGES + 40, "changed_since_fit": 0, "kept": pytest.approx(_whole_kept(database))}
    np.testing.assert_allclose(third.reduced, DatasetStore(database).view("synth").reduced, atol=1e-4)


def _whole_kept(url: str) -> float:
    return principal_basis(DatasetStore(url).view("synth").embeddings, REDUCED_DIMENSIONS).placement.kept


def test_the_principal_axes_are_fitted_again_when_new_rows_lie_off_them(database, tmp_path):
    store = _store(database, tmp_path)
    first = store.view("synth")
    shared = _shared(database, tmp_path, first.generation)
    axes = shared.arrays["pca_axes"]
    # Directions the 50 kept axes (of 64) do not span: what the fitted rows' variance left out.
    off = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    off -= (off @ axes.T) @ axes
    off = off / np.linalg.norm(off, axis=1, keepdims=True) + shared.arrays["pca_mean"]
    _add(database, 5, towards=off)  # 5 of 300: far below REFIT_FRACTION
    second = store.view("synth")
    document = _shared(database, tmp_path, second.generation).document["pca"]
    assert document["changed_since_fit"] == 0 and document["fitted_rows"] == IMAGES + 5
