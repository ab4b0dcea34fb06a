"""Indexing one folder with several processes at once (`dinoscope index --shard I/N`), into PostgreSQL and SQLite.

Every test takes `db_url`, so it runs once on a SQLite file and once on a PostgreSQL database of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from db.engine import open_database
from db.schema import Dataset, Embedding, Image, IndexRun, PatchGrid, Thumbnail
from indexer import run as index_run
from indexer.plan import Shard
from indexer.scan import content_hash, scan_folder
from tests.conftest import FAST, reading, run_cli
from tests.images import noise
from tests.servers import CLI

SHARDS = 3
SUMMARY = re.compile(r"(\d+) added, (\d+) updated, (\d+) unchanged, (\d+) moved, (\d+) removed, (\d+) failed; "
                     r"(\d+) embedded")


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for i in range(18):
        noise(root / f"label{i % 3}" / f"{i:02d}.png", seed=i)
    shutil.copyfile(root / "label0" / "00.png", root / "dup.png")  # the same bytes under a second path
    return root


def _index_command(folder: Path, db: str, *extra: str) -> list[str]:
    return ["index", str(folder), "--db", db, "--random-weights", *FAST, "--batch-size", "2", *extra]


def _shard_totals(outputs: list[str]) -> dict[str, int]:
    """The summary lines of all shard runs, added up."""
    totals = dict.fromkeys(["added", "updated", "unchanged", "moved", "removed", "failed", "embedded"], 0)
    for output in outputs:
        match = SUMMARY.search(output)
        if match is None:  # a shard with nothing to do
            match = re.search(r"nothing to do: all (\d+) images", output)
            totals["unchanged"] += int(match[1])
            continue
        for key, value in zip(totals, match.groups()):
            totals[key] += int(value)
    return totals


def _stored(db: str) -> dict[str, tuple[int, str, str | None]]:
    """relpath -> (image id, content hash, label), after checking that every image has all its rows."""
    with reading(db) as session:
        assert session.scalar(select(func.count()).select_from(Dataset)) == 1
        images = session.execute(select(Image.relpath, Image.id, Image.content_hash, Image.label)).all()
        for table in (Embedding, PatchGrid):
            assert session.scalar(select(func.count()).select_from(table)) == len(images), table.__tablename__
        assert session.scalar(select(func.count()).select_from(Thumbnail)) == 2 * len(images)
    stored = {row.relpath: (row.id, row.content_hash, row.label) for row in images}
    assert len(stored) == len(images), "a relative path is stored twice"
    return stored


def _as_scanned(folder: Path) -> dict[str, tuple[str, str | None]]:
    return {f.relpath: (content_hash(f.path), f.label) for f in scan_folder(folder).found}


def test_shards_running_at_once_index_every_image_once(photos, db_url):
    at_once = 2  # processes writing the one dataset at once (each pays for importing torch and timm)
    processes = [
        subprocess.Popen([*CLI, *_index_command(photos, db_url, "--shard", f"{number}/{at_once}")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for number in range(1, at_once + 1)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * at_once, outputs
    for number, output in enumerate(outputs, start=1):
        assert f"photos in shard {number}/{at_once}" in output
    totals = _shard_totals(outputs)
    assert (totals["added"], totals["failed"]) == (19, 0)

    stored = _stored(db_url)
    assert {relpath: (digest, label) for relpath, (_, digest, label) in stored.items()} == _as_scanned(photos)
    result = run_cli(*_index_command(photos, db_url))
    assert "nothing to do: all 19 images of 'photos' are unchanged (nothing embedded)" in result.output
    with reading(db_url) as session:
        runs = session.execute(select(IndexRun.status, IndexRun.options)).all()
    assert sorted(options["shard"] for _, options in runs) == ["1/1", "1/2", "2/2"]
    assert {status for status, _ in runs} == {"completed"}


def test_shards_after_changes_leave_the_dataset_as_one_run_would(photos, db_url):
    run_cli(*_index_command(photos, db_url))
    before = _stored(db_url)
    moved = [f"{i:02d}.png" for i in range(0, 18, 3)]
    (photos / "moved").mkdir()
    for name in moved:  # a folder renamed: most files change shard with their path
        (photos / "label0" / name).rename(photos / "moved" / name)
    assert any(Shard(1, SHARDS).holds(f"label0/{name}") and Shard(3, SHARDS).holds(f"moved/{name}") for name in moved)
    assert any(Shard(3, SHARDS).holds(f"label0/{name}") and Shard(2, SHARDS).holds(f"moved/{name}") for name in moved)
    (photos / "label1" / "01.png").unlink()
    noise(photos / "label2" / "02.png", seed=100)  # changed in place
    noise(photos / "new.png", seed=101)
    shutil.copyfile(photos / "label1" / "04.png", photos / "copy-of-04.png")

    outputs = [run_cli(*_index_command(photos, db_url, "--shard", f"{number}/{SHARDS}")).output
               for number in range(1, SHARDS + 1)]
    assert _shard_totals(outputs) == {"added": 2, "updated": 1, "unchanged": 11, "moved": 6, "removed": 1,
                                      "failed": 0, "embedded": 2}
    after = _stored(db_url)
    assert {relpath: (digest, label) for relpath, (_, digest, label) in after.items()} == _as_scanned(photos)
    for name in moved:  # the rows moved with their files: same ids, nothing embedded again
        assert after[f"moved/{name}"][0] == before[f"label0/{name}"][0]
    result = run_cli(*_index_command(photos, db_url))
    assert "nothing to do: all 20 images of 'photos' are unchanged (nothing embedded)" in result.output


def test_a_shard_joins_the_dataset_another_shard_created_meanwhile(photos, db_url, monkeypatch):
    run_cli(*_index_command(photos, db_url, "--shard", "1/2"))
    looked = []

    def not_there_at_first(session, name):  # as if shard 1 created the dataset between our look and our insert
        looked.append(name)
        return None if len(looked) == 1 else open_dataset(session, name)

    open_dataset = index_run.find_dataset
    monkeypatch.setattr(index_run, "find_dataset", not_there_at_first)
    result = run_cli(*_index_command(photos, db_url, "--shard", "2/2"))
    assert "photos in shard 2/2" in result.output and len(looked) == 2
    looked.clear()
    refused = run_cli(*_index_command(photos, db_url, "--shard", "2/2", "--image-size", "28"), expect=1)
    assert "image size 28 instead of 56" in refused.output
    monkeypatch.undo()
    stored = _stored(db_url)
    assert {relpath: (digest, label) for relpath, (_, digest, label) in stored.items()} == _as_scanned(photos)
    assert "nothing to do: all 19 images" in run_cli(*_index_command(photos, db_url)).output


def test_a_move_whose_row_another_run_removed_meanwhile_is_reported_and_the_next_run_embeds_it(photos, db_url,
                                                                                              monkeypatch):
    run_cli(*_index_command(photos, db_url))
    database = open_database(db_url)
    with database.session() as session:
        planned_on = index_run.stored_images(session, session.scalar(select(Dataset.id)))
        session.execute(delete(Image).where(Image.relpath == "label0/00.png"))  # as a shard that saw it vanish
    database.dispose()
    (photos / "label0" / "00.png").rename(photos / "renamed.png")
    monkeypatch.setattr(index_run, "stored_images", lambda session, dataset_id: planned_on)
    result = run_cli(*_index_command(photos, db_url))
    assert "renamed.png: its bytes were stored under another path, which a concurrent run changed: index again" \
        in result.output
    monkeypatch.undo()
    assert "1 added" in run_cli(*_index_command(photos, db_url)).output
    stored = _stored(db_url)
    assert {relpath: (digest, label) for relpath, (_, digest, label) in stored.items()} == _as_scanned(photos)


def test_only_runs_of_dead_processes_on_this_host_are_marked_interrupted(photos, db_url):
    run_cli(*_index_command(photos, db_url))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid belongs to no process now
    here = socket.gethostname()
    runs = {"other host": (f"not-{here}", ended.pid), "dead here": (here, ended.pid),
            "alive here": (here, os.getpid())}
    database = open_database(db_url)
    with database.session() as session:
        dataset_id = session.scalar(select(Dataset.id))
        ids = {}
        for name, (host, pid) in runs.items():
            # shard 2/2, as a run records its shard: the run of shard 1/2 below may go on beside them
            run = IndexRun(dataset_id=dataset_id, host=host, pid=pid, options={"shard": "2/2"})
            session.add(run)
            session.flush()
            ids[name] = run.id
    run_cli(*_index_command(photos, db_url, "--shard", "1/2"))
    with database.session() as session:
        statuses = {name: session.get(IndexRun, run_id).status for name, run_id in ids.items()}
    database.dispose()
    assert statuses == {"other host": "running", "dead here": "interrupted", "alive here": "running"}


@pytest.mark.parametrize(("shard", "message"), [
    ("3/2", "there is no shard 3/2: shards are counted from 1, so N shards are 1/N to N/N"),
    ("0/4", "there is no shard 0/4"),
    ("half", "'half' is not I/N"),
])
def test_impossible_shards_are_refused_before_anything_happens(photos, tmp_path, shard, message):
    result = run_cli(*_index_command(photos, str(tmp_path / "index.db"), "--shard", shard), expect=2)
    assert "Invalid value for '--shard'" in result.output and message in result.output
    assert not (tmp_path / "index.db").exists()
