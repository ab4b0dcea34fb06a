"""How many SQL statements the pages' reads and an export cost: a constant, never one per dataset, image or grid.
Counted on the engine, as the database sees them, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from sqlalchemy import event

from dashboard.data import DatasetStore
from db.engine import Database, open_database
from db.export import export_npz
from db.mutations import record_uploaded_set
from db.queries import dataset_by_name, dataset_summaries
from db.runs import end_run, start_run
from indexer.synthetic import write_synthetic_dataset


@contextmanager
def statements(database: Database) -> Iterator[list[str]]:
    """The statements run on `database`'s engine meanwhile (transactions' BEGINs not counted)."""
    seen: list[str] = []

    def note(_connection, _cursor, statement, _parameters, _context, _executemany):
        if not statement.lstrip().upper().startswith("BEGIN"):
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(database.engine, "before_cursor_execute", note)


def _add_datasets(database: Database, numbers: range, images: int = 3) -> None:
    """Synthetic datasets `set<number>`, each with two finished runs, the newer one of 10 + number seconds."""
    for number in numbers:
        write_synthetic_dataset(database, f"set{number}", images, dim=8, clusters=2, grid=2, seed=number)
        with database.session() as session:
            dataset_id = dataset_by_name(session, f"set{number}").id
            for seconds in (1.0, 10.0 + number):
                end_run(session, start_run(session, dataset_id, "here", 1, {}), "completed", seconds, 0)


def _provenance_statements(url: str, owners: dict[str, str | None]) -> int:
    store = DatasetStore(url)
    store.database  # noqa: B018  (opened, its schema checked, before counting)
    with statements(store.database) as seen:
        found = store.provenances()
    assert all(provenance.last_indexed is not None for provenance in found)
    assert {provenance.name: provenance.owner for provenance in found} == owners
    store.database.dispose()
    return len(seen)


def test_the_datasets_list_costs_the_same_statements_for_one_dataset_or_five(db_url):
    database = open_database(db_url)
    _add_datasets(database, range(1))
    with_one = _provenance_statements(database.url, {"set0": None})
    _add_datasets(database, range(1, 5))
    with database.session() as session:  # two of them added from the browser
        for number, owner in ((1, "stu"), (3, "ada")):
            record_uploaded_set(session, dataset_by_name(session, f"set{number}"), f"set{number}-a1b2", owner)
    owners = {"set0": None, "set1": "stu", "set2": None, "set3": "ada", "set4": None}
    assert _provenance_statements(database.url, owners) == with_one <= 6
    with database.session() as session:  # and each dataset's summary has its own newest run and uploaded set
        summaries = dataset_summaries(session)
    assert [(s.dataset.name, s.image_count, s.last_run.seconds, s.uploaded_set and s.uploaded_set.set_id)
            for s in summaries] == [(f"set{number}", 3, 10.0 + number, f"set{number}-a1b2" if number in (1, 3) else None)
                                    for number in range(5)]
    database.dispose()


def test_a_thumbnail_and_its_etag_are_one_statement(db_url):
    database = open_database(db_url)
    _add_datasets(database, range(1))
    store = DatasetStore(database.url)
    image_id = int(store.view("set0").image_ids[0])
    with statements(store.database) as seen:
        jpeg, etag = store.thumbnail(image_id, "gallery")
        assert store.thumbnail(10**9, "gallery") is None
    assert len(seen) == 2 and jpeg[:2] == b"\xff\xd8" and etag.endswith("-gallery")
    store.database.dispose()
    database.dispose()


def test_an_export_with_patch_grids_costs_the_same_statements_for_few_images_or_many(db_url, tmp_path):
    database = open_database(db_url)
    write_synthetic_dataset(database, "few", 4, dim=8, clusters=2, grid=3)
    write_synthetic_dataset(database, "many", 60, dim=8, clusters=2, grid=3, seed=1)
    counts = {}
    for name in ("few", "many"):
        with database.session() as session, statements(database) as seen:
            written = export_npz(session, dataset_by_name(session, name), tmp_path / f"{name}.npz", patch_grids=True)
        counts[name] = len(seen)
        archive = np.load(tmp_path / f"{name}.npz")
        assert written == len(archive["image_ids"]) == len(archive["patch_grids"])
    assert counts["few"] == counts["many"] <= 4
    database.dispose()


def test_many_patch_grids_are_one_statement_however_many_images(db_url):
    database = open_database(db_url)
    write_synthetic_dataset(database, "grids", 40, dim=8, clusters=2, grid=3)
    write_synthetic_dataset(database, "other", 2, dim=8, clusters=2, grid=3, seed=1)
    store = DatasetStore(database.url)
    ids = [int(i) for i in store.view("grids").image_ids]
    foreign = int(store.view("other").image_ids[0])
    counts = {}
    for wanted in (ids[:3], ids):
        with statements(store.database) as seen:
            grids = dict(store.patch_grids("grids", [*wanted, foreign]))
        counts[len(wanted)] = len(seen)
        assert sorted(grids) == sorted(wanted)  # the other dataset's image is left out
        assert all(np.array_equal(grids[i], store.patch_grid(i)) for i in wanted[:3])
    assert counts[3] == counts[40] <= 2
    store.database.dispose()
    database.dispose()
