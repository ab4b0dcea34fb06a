"""Datasets added from the browser: who added them and where their files are (schema 3), shown by the dashboard's
provenances and `dinoscope datasets`; files of schema 2 upgraded in place by the first writer, read meanwhile.

Tests taking `db_url` run twice: on a SQLite file and on a PostgreSQL database of their own."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.orm import Session

from dashboard.data import DatasetStore
from db.engine import open_database, resolve_url
from db.errors import ConflictingWrite
from db.mutations import record_uploaded_set, remove_dataset
from db.queries import dataset_by_name, dataset_summaries, uploaded_set, uploaded_sets
from db.schema import SCHEMA_VERSION, Base, Dataset, SchemaInfo, UploadedSet
from indexer.synthetic import write_synthetic_dataset
from tests.conftest import run_cli


def _version_2_database(db_url: str) -> str:
    """A database as dinoscope wrote it at schema 2 (every table but uploaded_sets), holding one dataset."""
    url = resolve_url(db_url)
    engine = create_engine(url)
    with Session(engine) as session, session.begin():
        Base.metadata.create_all(session.connection(), tables=[table for table in Base.metadata.sorted_tables
                                                              if table.name != UploadedSet.__tablename__])
        session.add_all([SchemaInfo(version=2), _dataset("older")])
    engine.dispose()
    return url


def _dataset(name: str) -> Dataset:
    return Dataset(name=name, root="/photos", model_name="m", weights_kind="random", weights_identity="seed 0",
                   weights_source=None, image_size=56, patch_size=14, grid_height=4, grid_width=4, embed_dim=8,
                   precision="fp32", preprocessing={}, library_versions={})


def _state(url: str) -> tuple[list[int], bool, list[str]]:
    """(schema versions, whether uploaded_sets exists, dataset names), read without dinoscope's checks."""
    engine = create_engine(url)
    with engine.connect() as connection:
        found = (connection.scalars(select(SchemaInfo.version)).all(),
                 inspect(connection).has_table(UploadedSet.__tablename__),
                 connection.scalars(select(Dataset.name).order_by(Dataset.name)).all())
    engine.dispose()
    return found


def test_a_dataset_records_its_uploaded_set_and_owner(db_url):
    assert SCHEMA_VERSION == 3
    database = open_database(db_url)
    for name in ("cli", "mine", "local"):
        write_synthetic_dataset(database, name, 2, dim=8, clusters=1, grid=2)
    with database.session() as session:
        mine, local = dataset_by_name(session, "mine"), dataset_by_name(session, "local")
        record_uploaded_set(session, mine, "mine-1a2b", "stu")
        record_uploaded_set(session, local, "local-3c4d", None)
    with database.session() as session:
        cli, mine, local = (dataset_by_name(session, name) for name in ("cli", "mine", "local"))
        assert uploaded_set(session, cli) is None
        assert (uploaded_set(session, mine).set_id, uploaded_set(session, mine).owner) == ("mine-1a2b", "stu")
        found = uploaded_sets(session, [cli.id, mine.id, local.id])
        assert {dataset_id: (row.set_id, row.owner) for dataset_id, row in found.items()} == {
            mine.id: ("mine-1a2b", "stu"), local.id: ("local-3c4d", None)}
        assert uploaded_sets(session, []) == {}
        summaries = {summary.dataset.name: summary.uploaded_set for summary in dataset_summaries(session)}
        assert summaries["cli"] is None and summaries["mine"].owner == "stu" and summaries["local"].owner is None
    with pytest.raises(ConflictingWrite), database.session() as session:  # one set per dataset
        record_uploaded_set(session, dataset_by_name(session, "mine"), "mine-again", "stu")

    provenances = {p.name: (p.uploaded_set, p.owner) for p in DatasetStore(database.url).provenances()}
    assert provenances == {"cli": (None, None), "local": ("local-3c4d", None), "mine": ("mine-1a2b", "stu")}

    with database.session() as session:  # the set's record goes with its dataset
        remove_dataset(session, dataset_by_name(session, "mine"))
    with database.session() as session:
        assert session.scalars(select(UploadedSet.set_id)).all() == ["local-3c4d"]


def test_datasets_shows_who_added_a_dataset_from_the_browser(tmp_path):
    database = open_database(str(tmp_path / "index.db"))
    for name in ("cli", "mine", "local"):
        write_synthetic_dataset(database, name, 2, dim=8, clusters=1, grid=2)
    with database.session() as session:
        record_uploaded_set(session, dataset_by_name(session, "mine"), "mine-1a2b", "stu")
        record_uploaded_set(session, dataset_by_name(session, "local"), "local-3c4d", None)
    lines = run_cli("datasets", "--db", tmp_path / "index.db").output.splitlines()
    assert [line.split("  [")[0] for line in lines if not line.startswith(" ")] == [
        "cli: 2 images from synthetic:cli",
        "local: 2 images from synthetic:local, added from the browser by the local user",
        "mine: 2 images from synthetic:mine, added from the browser by stu",
    ]


def test_a_version_2_database_is_read_as_is_and_upgraded_in_place_by_the_first_writer(db_url):
    url = _version_2_database(db_url)
    reader = open_database(db_url, readonly=True)  # a dashboard started before the upgrade
    store = DatasetStore(url)
    assert [(p.name, p.owner, p.uploaded_set) for p in store.provenances()] == [("older", None, None)]
    with reader.session() as session:
        older = dataset_by_name(session, "older")
        assert uploaded_set(session, older) is None and dataset_summaries(session)[0].uploaded_set is None
    assert "older: 0 images from /photos  [RANDOM" in run_cli("datasets", "--db", db_url).output
    assert _state(url) == ([2], False, ["older"])  # readers change nothing

    writer = open_database(db_url)
    assert _state(url) == ([SCHEMA_VERSION], True, ["older"])
    with writer.session() as session:
        record_uploaded_set(session, dataset_by_name(session, "older"), "older-5e6f", "ada")
    write_synthetic_dataset(writer, "newer", 2, dim=8, clusters=1, grid=2)
    with reader.session() as session:  # the reader opened before the upgrade sees the new table's rows
        assert [(s.dataset.name, s.uploaded_set and s.uploaded_set.owner) for s in dataset_summaries(session)] == [
            ("newer", None), ("older", "ada")]
    assert [(p.name, p.owner) for p in store.provenances()] == [("newer", None), ("older", "ada")]
    with open_database(db_url, readonly=True).session() as session:
        assert uploaded_set(session, dataset_by_name(session, "older")).set_id == "older-5e6f"
    for database in (reader, writer, store.database):
        database.dispose()


def test_writers_opening_a_version_2_database_at_once_upgrade_it_once(db_url):
    url = _version_2_database(db_url)
    barrier = threading.Barrier(6)

    def open_when_all_are_ready(_):
        barrier.wait()
        open_database(db_url).dispose()

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(open_when_all_are_ready, range(6)))
    assert _state(url) == ([SCHEMA_VERSION], True, ["older"])
    with open_database(db_url, readonly=True).session() as session:
        assert session.scalar(select(func.count()).select_from(SchemaInfo)) == 1
