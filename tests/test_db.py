"""The storage layer: typed arrays, URLs, schema versions, read-only readers next to a writer.

Tests taking `db_url` run twice: on a SQLite file and on a PostgreSQL database of their own."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import InternalError

from db.arrays import decode_array, encode_array
from db.engine import display_url, open_database, resolve_url
from db.errors import CorruptArray, DatabaseNotFound, DatabaseUnreachable, NotADinoscopeDatabase, SchemaMismatch
from db.queries import dataset_by_name, embeddings_of, image_facts, read_embeddings
from db.schema import SCHEMA_VERSION, Dataset, SchemaInfo
from indexer.synthetic import write_synthetic_dataset


def _dataset(name: str) -> Dataset:
    return Dataset(name=name, root="/photos", model_name="m", weights_kind="random", weights_identity="seed 0",
                   weights_source=None, image_size=56, patch_size=14, grid_height=4, grid_width=4, embed_dim=8,
                   precision="fp32", preprocessing={}, library_versions={})


def _content():
    """One image's rows as the indexer hands them to the database: a vector, a 4 x 4 grid and a thumbnail."""
    from db.records import ImageContent, JpegImage

    return ImageContent(10, 10, np.zeros(8), np.zeros((4, 4, 8)), {"gallery": JpegImage(b"x", 1, 1)})


def test_arrays_round_trip_with_their_dtype_and_shape():
    grid = np.random.default_rng(0).standard_normal((4, 3, 8)).astype(np.float32)
    encoded = encode_array(grid, "<f2")
    assert (encoded.dtype, encoded.shape) == ("<f2", "4,3,8")
    decoded = decode_array(encoded.data, encoded.dtype, encoded.shape, expected_dtype="<f2",
                           expected_shape=(4, None, 8))
    np.testing.assert_array_equal(decoded, grid.astype(np.float16))


@pytest.mark.parametrize(
    ("data_slice", "expected_dtype", "expected_shape", "message"),
    [
        (slice(0, -2), None, None, "has 62 bytes, not 64"),
        (slice(None), "<f4", None, "dtype <f2, expected <f4"),
        (slice(None), None, (4, 9), "shape (4, 8), expected (4, 9)"),
    ],
)
def test_arrays_that_do_not_match_their_record_are_refused(data_slice, expected_dtype, expected_shape, message):
    encoded = encode_array(np.ones((4, 8)), "<f2")
    with pytest.raises(CorruptArray, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_array(encoded.data[data_slice], encoded.dtype, encoded.shape,
                     expected_dtype=expected_dtype, expected_shape=expected_shape)


def test_db_option_takes_urls_paths_and_the_environment(monkeypatch, tmp_path):
    assert resolve_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url("postgresql://u@h/db") == resolve_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url(str(tmp_path / "a.db")) == f"sqlite:///{tmp_path / 'a.db'}"
    monkeypatch.setenv("DINOSCOPE_DB", str(tmp_path / "env.db"))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.delenv("DINOSCOPE_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'data' / 'dinoscope' / 'dinoscope.db'}"


def test_a_reader_needs_an_existing_file_and_names_it(tmp_path):
    with pytest.raises(DatabaseNotFound, match=str(tmp_path / "missing.db")):
        open_database(str(tmp_path / "missing.db"), readonly=True)


def test_a_file_of_another_program_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(NotADinoscopeDatabase, match="not a dinoscope database.*invoices"):
        open_database(str(path))
    with sqlite3.connect(path) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["invoices"]


@pytest.mark.parametrize(("version", "message"), [(SCHEMA_VERSION + 1, "newer dinoscope"),
                                                  (1, "older dinoscope")])  # 2 is upgraded (test_uploaded_sets)
def test_another_schema_version_is_refused_with_what_to_do(db_url, version, message):
    with open_database(db_url).session() as session:
        session.execute(text("UPDATE dinoscope_schema SET version = :v"), {"v": version})
    for readonly in (False, True):
        with pytest.raises(SchemaMismatch, match=f"{message} \\(schema {version}; this one reads {SCHEMA_VERSION}\\)"):
            open_database(db_url, readonly=readonly)


def test_a_new_database_records_its_schema_version(db_url):
    with open_database(db_url).session() as session:
        assert session.scalars(select(SchemaInfo.version)).all() == [SCHEMA_VERSION]


def test_writers_opening_a_new_database_at_once_create_the_schema_once(db_url):
    barrier = threading.Barrier(6)

    def open_when_all_are_ready(_):
        barrier.wait()
        open_database(db_url).dispose()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(open_when_all_are_ready, range(6)))
    with open_database(db_url, readonly=True).session() as session:
        assert session.scalars(select(SchemaInfo.version)).all() == [SCHEMA_VERSION]


def test_readers_see_only_committed_writes_and_cannot_write(db_url):
    writer = open_database(db_url)
    reader = open_database(db_url, readonly=True)
    with writer.session() as session:
        session.add(_dataset("first"))
        session.flush()
        with reader.session() as reading:  # the writer's transaction is still open
            assert reading.scalar(select(func.count()).select_from(Dataset)) == 0
    with reader.session() as reading:
        assert reading.scalar(select(func.count()).select_from(Dataset)) == 1
    with pytest.raises((DatabaseUnreachable, InternalError), match="readonly|read-only|query_only"), \
            reader.session() as reading:
        reading.add(_dataset("second"))


def test_a_reader_session_is_one_snapshot(db_url):
    writer = open_database(db_url)
    reader = open_database(db_url, readonly=True)
    with writer.session() as session:
        session.add(_dataset("first"))
    with reader.session() as reading:
        assert reading.scalars(select(Dataset.name)).all() == ["first"]
        with writer.session() as session:  # commits while the reader is in the middle of its session
            session.add(_dataset("second"))
        assert reading.scalars(select(Dataset.name)).all() == ["first"]
    with reader.session() as reading:
        assert reading.scalars(select(Dataset.name).order_by(Dataset.name)).all() == ["first", "second"]


def test_removing_a_dataset_removes_its_rows_in_every_table(db_url):
    from db.mutations import add_image, remove_dataset
    from db.records import FileFacts
    from db.schema import Embedding, Image, PatchGrid, Thumbnail

    database = open_database(db_url)
    content = _content()
    with database.session() as session:
        kept, dropped = _dataset("kept"), _dataset("dropped")
        session.add_all([kept, dropped])
        session.flush()
        for dataset in (kept, dropped):
            add_image(session, dataset, FileFacts("a.png", None, "h", 1, 1), content)
    with database.session() as session:
        remove_dataset(session, session.scalar(select(Dataset).where(Dataset.name == "dropped")))
    with database.session() as session:
        for table in (Image, Embedding, PatchGrid, Thumbnail):
            assert session.scalar(select(func.count()).select_from(table)) == 1, table.__tablename__


def test_a_vanished_row_is_removed_only_while_it_holds_its_old_path(db_url):
    from db.mutations import add_image, move_image, remove_vanished_images
    from db.records import FileFacts
    from db.schema import Image

    database = open_database(db_url)
    content = _content()
    with database.session() as session:
        dataset = _dataset("photos")
        session.add(dataset)
        session.flush()
        image_id = add_image(session, dataset, FileFacts("a.png", None, "h", 1, 1), content).id
    with database.session() as session:  # one shard moves the row to where the bytes went ...
        assert move_image(session, image_id, "a.png", FileFacts("b.png", None, "h", 1, 2))
    with database.session() as session:  # ... so the shard that saw a.png vanish removes nothing
        assert remove_vanished_images(session, [(image_id, "a.png")]) == 0
        assert not move_image(session, image_id, "a.png", FileFacts("c.png", None, "h", 1, 2))
        assert session.scalars(select(Image.relpath)).all() == ["b.png"]
        assert remove_vanished_images(session, [(image_id, "b.png")]) == 1


def test_an_unreachable_server_is_named_without_its_password():
    with pytest.raises(DatabaseUnreachable) as caught:
        open_database("postgresql+psycopg://nobody:secret@127.0.0.1:1/none")
    message = str(caught.value)
    assert "postgresql+psycopg://nobody:***@127.0.0.1:1/none" in message and "Connection refused" in message
    assert "secret" not in message and "\n" not in message


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql+psycopg://u:secret@h:port/db", "cannot use database URL postgresql+psycopg://u:***@h:port/db"),
    ("nosuchdb://u:secret@h/db", "cannot use database URL nosuchdb://u:***@h/db"),
])
def test_a_malformed_url_is_named_without_its_password(url, message):
    with pytest.raises(DatabaseUnreachable) as caught:
        open_database(url)
    assert message in str(caught.value) and "secret" not in str(caught.value)


def test_a_missing_postgresql_database_is_named(postgres_url):
    missing = postgres_url.rsplit("/", 1)[0] + "/dinoscope_no_such_database"
    with pytest.raises(DatabaseUnreachable) as caught:
        open_database(missing)
    assert f"cannot open database {display_url(missing)}: " in str(caught.value)
    assert 'database "dinoscope_no_such_database" does not exist' in str(caught.value)


def test_after_a_checkpoint_the_database_file_alone_holds_every_commit(tmp_path):
    import shutil

    database = open_database(str(tmp_path / "index.db"))
    with database.session() as session:
        session.add(_dataset("kept"))
    database.checkpoint()
    shutil.copyfile(tmp_path / "index.db", tmp_path / "copy.db")  # the -wal file stays behind
    with open_database(str(tmp_path / "copy.db"), readonly=True).session() as session:
        assert session.scalars(select(Dataset.name)).all() == ["kept"]


def test_image_facts_and_chosen_embeddings_match_the_whole_read(db_url):
    database = open_database(db_url)
    write_synthetic_dataset(database, "first", 40, dim=16, clusters=3)
    write_synthetic_dataset(database, "second", 5, dim=16, clusters=2, seed=1)
    with database.session() as session:
        first, second = dataset_by_name(session, "first"), dataset_by_name(session, "second")
        whole = read_embeddings(session, first)
        facts = image_facts(session, first)
        np.testing.assert_array_equal(facts.image_ids, whole.image_ids)  # in relative-path order
        assert (facts.relpaths, facts.labels, facts.content_hashes) == (whole.relpaths, whole.labels,
                                                                        whole.content_hashes)
        np.testing.assert_array_equal(facts.sizes, whole.sizes)
        assert facts.relpaths == sorted(facts.relpaths) and len(set(facts.content_hashes)) == 40
        chosen = whole.image_ids[[7, 2, 30]]
        np.testing.assert_array_equal(embeddings_of(session, first, chosen), whole.embeddings[[7, 2, 30]])
        assert embeddings_of(session, first, []).shape == (0, 16)
        other = read_embeddings(session, second).image_ids[0]
        assert embeddings_of(session, first, [int(chosen[0]), int(other)]) is None  # not an image of `first`
        assert len(image_facts(session, second).image_ids) == 5
