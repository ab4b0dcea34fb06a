"""The indexer stopped part-way: killed, terminated, or unable to commit. No process of it is left behind, the
database holds whole images only, and a run's counters say what it committed.

Tests taking `db_url` run twice: into a SQLite file and into a PostgreSQL database of their own."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import psutil
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from db.errors import DinoscopeDbError
from db.schema import Failure, Image, IndexRun
from tests.conftest import FAST, index_folder, reading
from tests.images import noise
from tests.servers import start

IMAGES = 64  # tiny ones, two per batch: the run is still going when it is stopped


@pytest.fixture
def many(tmp_path) -> Path:
    root = tmp_path / "many"
    for number in range(IMAGES):
        noise(root / f"{number:03d}.png", seed=number)
    return root


def _stored_images(db: str | Path) -> int:
    try:
        with reading(str(db)) as session:
            return session.scalar(select(func.count()).select_from(Image))
    except DinoscopeDbError:
        return 0  # the database or its schema is not there yet


def _index_until_mid_run(root: Path, db: Path, log: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """A real `dinoscope index` with two decode workers, and its child processes, once it has stored a few
    images."""
    process = start(["index", root, "--db", db, "--random-weights", *FAST, "--workers", "2", "--batch-size", "2"],
                    log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended before it could be stopped: {log.read_text()}"
        children = psutil.Process(process.pid).children(recursive=True)
        if len(children) >= 2 and _stored_images(db) >= 4:
            return process, children
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"the run stored no images in 180 s: {log.read_text()}")


def _still_running(processes: list[psutil.Process], within_s: float = 10) -> list[psutil.Process]:
    """The processes still running `within_s` seconds from now (a zombie has ended: only its exit status is left
    for its parent to collect)."""
    deadline = time.monotonic() + within_s
    while True:
        running = []
        for process in processes:
            with suppress(psutil.NoSuchProcess):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.1)


def _kill_left_behind(processes: list[psutil.Process]) -> None:
    for process in processes:
        with suppress(psutil.Error):
            process.kill()


def test_a_killed_indexer_leaves_no_process_behind(many, tmp_path):
    process, children = _index_until_mid_run(many, tmp_path / "index.db", tmp_path / "index.log")
    try:
        process.kill()
        process.wait()
        assert _still_running(children) == [], "processes of the indexer outlived it"
    finally:
        _kill_left_behind(children)


# A process that starts a child tied to it with end_with, as on `platform`, and prints the child's id.
_PARENT = """
import multiprocessing, os, sys, time
from indexer import processes

def child(parent, platform):
    sys.platform = platform
    processes.end_with(parent)
    time.sleep(600)

if __name__ == "__main__":
    worker = multiprocessing.get_context("fork").Process(target=child, args=(os.getpid(), sys.argv[1]))
    worker.start()
    print(worker.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("platform", ["linux", "darwin"])  # the kernel's parent-death signal, or the watchdog
def test_a_child_tied_to_its_parent_ends_when_the_parent_is_killed(platform):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, platform], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        assert _still_running([child], within_s=1) == [child]  # it lives while its parent does
        parent.kill()
        parent.wait()
        assert _still_running([child]) == []
    finally:
        _kill_left_behind([child])


def test_sigterm_stops_a_run_as_ctrl_c_does_and_the_next_run_finishes_it(many, tmp_path):
    db, log = tmp_path / "index.db", tmp_path / "index.log"
    process, children = _index_until_mid_run(many, db, log)
    try:
        process.terminate()
        process.wait(timeout=60)
        assert _still_running(children) == [], "processes of the indexer outlived it"
    finally:
        _kill_left_behind(children)
    output = log.read_text()
    assert process.returncode == 1 and output.rstrip().endswith("Aborted!"), output  # click's answer to Ctrl-C
    assert "WARNING indexer.run: run 1 of dataset 'many' interrupted after" in output
    with reading(str(db)) as session:
        run = session.scalars(select(IndexRun)).one()
        kept = session.scalar(select(func.count()).select_from(Image))
    assert run.status == "interrupted" and run.finished_at is not None
    assert run.added == kept and 4 <= kept < IMAGES

    result = index_folder(many, db)
    assert f"{IMAGES - kept} added, 0 updated, {kept} unchanged" in result.output
    with reading(str(db)) as session:
        assert session.scalar(select(func.count(Image.id))) == IMAGES
        assert session.scalar(select(func.count(func.distinct(Image.relpath)))) == IMAGES
        runs = session.execute(select(IndexRun.status, IndexRun.added).order_by(IndexRun.id)).all()
    assert runs == [("interrupted", kept), ("completed", IMAGES - kept)]


@pytest.fixture
def failing_commit() -> Callable[[Callable[[Session], bool]], None]:
    """`failing_commit(when)`: the first commit of a transaction that `when(session)` holds for fails, as on a
    full disk, and is rolled back."""
    armed: list[Callable[[Session], bool]] = []

    def before_commit(session: Session) -> None:
        if armed and armed[0](session):
            armed.clear()
            raise OperationalError("COMMIT", None, sqlite3.OperationalError("database or disk is full"))

    event.listen(Session, "before_commit", before_commit)
    yield armed.append
    event.remove(Session, "before_commit", before_commit)


def _images_in(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Image))


def _runs(db: str) -> list[tuple]:
    """Each run's status, its counters, and what the database holds of it: its failures."""
    with reading(db) as session:
        failures = dict(session.execute(select(Failure.run_id, func.count()).group_by(Failure.run_id)).all())
        return [(run.status, run.added, run.removed, run.failed, failures.get(run.id, 0))
                for run in session.scalars(select(IndexRun).order_by(IndexRun.id))]


def test_counters_equal_what_was_committed_when_a_commit_fails(tmp_path, db_url, failing_commit):
    root = tmp_path / "photos"
    for number in range(12):
        noise(root / f"{number:02d}.png", seed=number)
    (root / "00-empty.png").write_bytes(b"")  # fails in the first batch
    (root / "05-text.png").write_bytes(b"not an image")  # fails in the batch whose commit fails
    # Two files a batch, in path order: [00-empty, 00], [01, 02], [03, 04], [05-text, 05] ...
    failing_commit(lambda session: _images_in(session) >= 6)
    result = index_folder(root, db_url, "--batch-size", "2", expect=1)
    assert "Error: database" in result.output and "database or disk is full" in result.output
    assert "ERROR indexer.run: run 1 of dataset 'photos' failed after" in result.output
    assert "database or disk is full; committed: 5 added, 0 updated" in result.output
    assert _counts_of_images(db_url) == 5
    assert _runs(db_url) == [("failed", 5, 0, 1, 1)]

    (root / "00.png").unlink()
    (root / "01.png").unlink()
    failing_commit(lambda session: _images_in(session) < 5)  # the transaction that removes them
    index_folder(root, db_url, "--batch-size", "2", expect=1)
    assert _counts_of_images(db_url) == 5
    assert _runs(db_url)[1] == ("failed", 0, 0, 0, 0)

    result = index_folder(root, db_url, "--batch-size", "2")
    assert "7 added, 0 updated, 3 unchanged, 0 moved, 2 removed, 2 failed" in result.output
    assert _counts_of_images(db_url) == 10
    assert _runs(db_url)[2] == ("completed", 7, 2, 2, 2)


def _counts_of_images(db: str) -> int:
    with reading(db) as session:
        return _images_in(session)
