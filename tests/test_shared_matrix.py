"""The datasets' arrays shared between dashboard processes through memory-mapped `.npy` files, one folder per
generation."""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from dashboard import data
from dashboard.data import DatasetStore, DatasetView
from dashboard.shared_matrix import MatrixKey, SharedContent, read_shared, write_shared
from db.engine import open_database
from db.mutations import bump_generation
from db.queries import dataset_by_name, dataset_images, load_embeddings
from db.schema import Image
from indexer.synthetic import write_synthetic_dataset


@pytest.fixture
def database(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    write_synthetic_dataset(open_database(url), "synth", 300, dim=32, clusters=6, spread=0.3)
    return url


def _generations(folder: Path) -> list[Path]:
    return sorted(path for path in (folder / "matrices").iterdir() if not path.name.startswith("."))  # not locks


def _contents(generation: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in generation.iterdir()}


def _assert_same_view(shared: DatasetView, loaded: DatasetView) -> None:
    for name in ("image_ids", "embeddings", "norms", "reduced", "sizes"):
        np.testing.assert_array_equal(getattr(shared, name), getattr(loaded, name))
    assert (shared.relpaths, shared.labels) == (loaded.relpaths, loaded.labels)
    assert (shared.name, shared.generation) == (loaded.name, loaded.generation)


def test_the_shared_matrix_gives_the_same_searches_as_the_matrix_from_the_database(db_url, tmp_path):
    database = open_database(db_url).url
    write_synthetic_dataset(open_database(database), "synth", 300, dim=32, clusters=6, spread=0.3)
    shared = DatasetStore(database, tmp_path / "cache").view("synth")
    loaded = DatasetStore(database).view("synth")
    _assert_same_view(shared, loaded)
    assert not shared.embeddings.flags.writeable and not shared.embeddings.flags.owndata  # mapped, read-only
    assert len(_generations(tmp_path / "cache")) == 1
    for query in (0, 17, 299):
        for result, expected in zip(shared.nearest(query, 10), loaded.nearest(query, 10)):
            np.testing.assert_array_equal(result, expected)
    vector = np.random.default_rng(0).standard_normal(32).astype(np.float32)
    np.testing.assert_array_equal(shared.nearest(vector, 5)[0], loaded.nearest(vector, 5)[0])


def test_a_view_holds_what_the_database_holds_in_relative_path_order(database, tmp_path):
    with open_database(database).session() as session:  # two images without a label, as files at the root
        session.execute(update(Image).where(Image.id.in_([3, 150])).values(label=None, width=7, height=900))
        bump_generation(session, dataset_by_name(session, "synth"))
    view = DatasetStore(database, tmp_path / "cache").view("synth")
    with open_database(database).session() as session:
        dataset = dataset_by_name(session, "synth")
        image_ids, embeddings = load_embeddings(session, dataset)
        images = dataset_images(session, dataset.id)
    np.testing.assert_array_equal(view.image_ids, image_ids)
    np.testing.assert_array_equal(view.embeddings, embeddings)
    assert view.relpaths == [image.relpath for image in images] == sorted(view.relpaths)
    assert view.labels == [image.label for image in images] and view.labels.count(None) == 2
    assert [tuple(size) for size in view.sizes] == [(image.width, image.height) for image in images]
    assert view.generation == dataset.generation


def test_the_derived_arrays_are_the_norms_and_the_principal_components(database):
    view = DatasetStore(database).view("synth")
    plain = DatasetView(view.name, view.generation, view.image_ids, view.relpaths, view.labels, view.sizes,
                        np.array(view.embeddings))
    np.testing.assert_allclose(view.norms, np.linalg.norm(view.embeddings, axis=1), rtol=1e-6)
    np.testing.assert_allclose(view.reduced, plain.reduced, atol=1e-5)
    assert view.reduced.shape == (300, 32)  # every component of 32 dimensions: distances kept exactly


def test_another_process_maps_the_files_instead_of_reading_the_database(database, tmp_path, monkeypatch):
    first = DatasetStore(database, tmp_path / "cache").view("synth")

    def no_database_read(*_args):
        raise AssertionError("read the embeddings from the database again")

    monkeypatch.setattr(data, "_read_dataset", no_database_read)
    store = pickle.loads(pickle.dumps(DatasetStore(database, tmp_path / "cache")))  # as a background job gets it
    assert store.cache_dir == tmp_path / "cache"
    second = store.view("synth")
    _assert_same_view(second, first)
    assert store.view("synth") is second  # and a repeated request does not reload it


def test_a_new_generation_builds_a_new_folder_and_drops_the_old_one(database, tmp_path):
    store = DatasetStore(database, tmp_path / "cache")
    first = store.view("synth")
    old = _generations(tmp_path / "cache")
    with open_database(database).session() as session:
        bump_generation(session, dataset_by_name(session, "synth"))
    second = store.view("synth")
    assert second.generation == first.generation + 1
    new = _generations(tmp_path / "cache")
    assert len(new) == 1 and new != old and new[0].name.endswith(f"-g{second.generation}")
    np.testing.assert_array_equal(first.embeddings, second.embeddings)  # the old mapping stays readable


def test_writing_a_generation_removes_the_datasets_file_of_the_one_file_format(tmp_path):
    key = MatrixKey("sqlite:///x.db", 1, "2024-01-01T00:00:00", 2)
    earlier = tmp_path / f"{key.database}-1-g1.matrix"
    other_dataset = tmp_path / f"{key.database}-11-g1.matrix"
    for path in (earlier, other_dataset):
        path.write_bytes(b"dinoscope shared matrix\n")
    write_shared(tmp_path, key, SharedContent({"image_ids": np.arange(3, dtype=np.int64)}, {}))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([key.folder_name, other_dataset.name])


DAMAGES = ["truncated array", "bytes appended to an array", "array of another shape", "empty array file",
           "missing array file", "not an array file", "flipped byte in the document", "truncated manifest",
           "missing manifest", "other dataset"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_generation_is_rebuilt_not_trusted(database, tmp_path, damage):
    expected = DatasetStore(database).view("synth")
    DatasetStore(database, tmp_path / "cache").view("synth")
    [path] = _generations(tmp_path / "cache")
    contents = _contents(path)
    embeddings, document, manifest = path / "embeddings.npy", path / "document.json", path / "manifest.json"
    if damage == "truncated array":
        embeddings.write_bytes(contents[embeddings.name][: len(contents[embeddings.name]) // 2])
        with pytest.raises(ValueError):  # numpy refuses to map it: the header promises more than the file holds
            np.load(embeddings, mmap_mode="r")
    elif damage == "bytes appended to an array":
        embeddings.write_bytes(contents[embeddings.name] + bytes(128))
    elif damage == "array of another shape":
        np.save(embeddings, np.load(embeddings)[:-1])
    elif damage == "empty array file":
        embeddings.write_bytes(b"")
    elif damage == "missing array file":
        embeddings.unlink()
    elif damage == "not an array file":
        embeddings.write_bytes(b"SQLite format 3\0" + contents[embeddings.name][16:])
    elif damage == "flipped byte in the document":  # a character of a path: still JSON, but not what was written
        middle = len(contents[document.name]) // 2
        document.write_bytes(contents[document.name][:middle] + bytes([contents[document.name][middle] ^ 0x01])
                             + contents[document.name][middle + 1:])
    elif damage == "truncated manifest":
        manifest.write_bytes(contents[manifest.name][: len(contents[manifest.name]) // 2])
    elif damage == "missing manifest":
        manifest.unlink()
    else:  # the same name, written for a dataset made earlier under the same id
        key = MatrixKey(database, 1, "2020-01-01T00:00:00", expected.generation)
        write_shared(tmp_path / "elsewhere", key, SharedContent({"image_ids": np.zeros(3, np.int64)}, {}))
        shutil.rmtree(path)
        shutil.copytree(tmp_path / "elsewhere" / key.folder_name, path)

    rebuilt = DatasetStore(database, tmp_path / "cache").view("synth")
    _assert_same_view(rebuilt, expected)
    assert _generations(tmp_path / "cache") == [path] and _contents(path) == contents  # built again, whole


def test_a_cache_folder_that_cannot_be_written_leaves_each_process_its_own_arrays(database, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    view = DatasetStore(database, blocked).view("synth")
    _assert_same_view(view, DatasetStore(database).view("synth"))


WORKERS = 3


def _open_counting_database_reads(url: str, cache_dir: str, reads: str, asking: str, start) -> None:
    """One worker opening the dataset: it notes when it asks for the shared generation's lock and when it reads the
    database; a reader holds the lock until every worker has asked (each waits for it, then maps the files)."""
    real_read, real_builder = data._read_dataset, data.one_builder

    def counted(*args):
        with open(reads, "a") as log:
            log.write("read\n")
        deadline = time.monotonic() + 120
        while Path(asking).read_text().count("asked\n") < WORKERS:
            assert time.monotonic() < deadline, "the other workers never asked for the lock"
            time.sleep(0.01)
        return real_read(*args)

    def noted(*args):
        with open(asking, "a") as log:
            log.write("asked\n")
        return real_builder(*args)

    data._read_dataset, data.one_builder = counted, noted
    start.wait()
    DatasetStore(url, Path(cache_dir)).view("synth")


def test_workers_opening_a_dataset_at_once_read_the_database_once(database, tmp_path):
    context = multiprocessing.get_context("spawn")
    reads, asking, start = tmp_path / "reads.log", tmp_path / "asking.log", context.Barrier(WORKERS)
    asking.touch()
    workers = [context.Process(target=_open_counting_database_reads,
                               args=(database, str(tmp_path / "cache"), str(reads), str(asking), start))
               for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    assert reads.read_text() == "read\n"  # one built the generation, the others waited and mapped it
    _assert_same_view(DatasetStore(database, tmp_path / "cache").view("synth"), DatasetStore(database).view("synth"))


def _write_repeatedly(folder: str, key: MatrixKey, times: int) -> None:
    rng = np.random.default_rng(0)  # every writer writes the same content, as processes building one generation do
    content = SharedContent({"image_ids": np.arange(50_000, dtype=np.int64),
                             "embeddings": rng.standard_normal((50_000, 16)).astype(np.float32)}, {"rows": 50_000})
    for _ in range(times):
        write_shared(Path(folder), key, content)


def test_processes_building_the_same_generation_at_once_never_leave_a_broken_one(tmp_path):
    key = MatrixKey("sqlite:///x.db", 1, "2024-01-01T00:00:00", 3)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_repeatedly, args=(str(tmp_path), key, 15)) for _ in range(3)]
    for writer in writers:
        writer.start()
    reads = []
    while any(writer.is_alive() for writer in writers):
        found = read_shared(tmp_path, key)  # at any moment: no generation yet, or a whole one
        if found is not None:
            assert found.document == {"rows": 50_000} and found.arrays["image_ids"][-1] == 49_999
            reads.append(found)
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert read_shared(tmp_path, key) is not None and reads
    assert [path.name for path in tmp_path.iterdir()] == [key.folder_name]  # no temporary folder left behind


def test_a_generation_gives_back_its_arrays_mapped_and_its_document_only_to_its_own_key(tmp_path):
    key = MatrixKey("sqlite:///x.db", 4, "2024-01-01T00:00:00", 2)
    arrays = {"zeta": np.arange(5, dtype=np.int64), "alpha": np.ones((3, 2), np.float32),
              "empty": np.empty((0, 7), np.float32)}
    write_shared(tmp_path, key, SharedContent(arrays, {"labels": ["a", None]}))
    found = read_shared(tmp_path, key)
    assert list(found.arrays) == ["zeta", "alpha", "empty"] and found.document == {"labels": ["a", None]}
    for name, array in arrays.items():
        assert found.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(found.arrays[name], array)
        mapped = found.arrays[name]
        assert isinstance(mapped.base, np.memmap) and not mapped.flags.writeable and not mapped.flags.owndata
    for other in (MatrixKey("sqlite:///y.db", 4, "2024-01-01T00:00:00", 2),  # another database,
                  MatrixKey("sqlite:///x.db", 4, "2024-01-01T00:00:00", 3),  # generation,
                  MatrixKey("sqlite:///x.db", 4, "2024-06-01T00:00:00", 2),  # dataset under the same id,
                  MatrixKey("sqlite:///x.db", 4, "2024-01-01T00:00:00", 2, content=2)):  # or layout
        assert read_shared(tmp_path, other) is None
    (tmp_path / key.folder_name).rename(tmp_path / MatrixKey("sqlite:///x.db", 4, "2024-01-01T00:00:00", 3).folder_name)
    assert read_shared(tmp_path, MatrixKey("sqlite:///x.db", 4, "2024-01-01T00:00:00", 3)) is None  # by its manifest
    assert "x.db" not in key.folder_name  # a server URL may hold a password
    with pytest.raises(ValueError, match="cannot share"):
        write_shared(tmp_path, key, SharedContent({"names": np.array(["a"])}, {}))
    with pytest.raises(ValueError, match="cannot share"):
        write_shared(tmp_path, key, SharedContent({"../outside": np.zeros(1, np.float32)}, {}))
