"""The index run's pipeline: the writer thread stores a batch while the model computes the next, and a batch that
cannot be stored stops the run at once with whole batches only left behind."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from db.engine import open_database
from db.errors import DatabaseUnreachable
from db.schema import Image, IndexRun
from indexer import embed, run
from indexer.model import WeightsChoice
from indexer.run import IndexRequest, index_folder
from indexer.writer import QUEUE_BATCHES
from tests.conftest import IMAGE_SIZE, MODEL, reading
from tests.images import noise

BATCH = 2


def _folder(root, images: int):
    for number in range(images):
        noise(root / f"{number:02d}.png", seed=number)
    return root


def _request(folder) -> IndexRequest:
    return IndexRequest(folder, weights=WeightsChoice("random"), model=MODEL, image_size=IMAGE_SIZE, workers=0,
                        batch_size=BATCH)


class _Forwards:
    """The run's forward passes, counted as they start; a test can wait for the n-th to start."""

    def __init__(self) -> None:
        self.started = 0
        self._changed = threading.Condition()

    def start(self) -> None:
        with self._changed:
            self.started += 1
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 60) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.started >= count, timeout)


@pytest.fixture
def forwards(monkeypatch) -> _Forwards:
    counted = _Forwards()
    embed_pixels = embed.embed_pixels

    def forward(*args, **kwargs):
        counted.start()
        return embed_pixels(*args, **kwargs)

    monkeypatch.setattr(embed, "embed_pixels", forward)
    return counted


def test_the_model_computes_the_next_batch_while_the_writer_stores_the_last(tmp_path, monkeypatch, forwards):
    """Each batch's transaction waits, before it commits, for the next batch's forward pass to start: a run that
    stored each batch before computing the next would never see it start."""
    batches = 3
    folder = _folder(tmp_path / "photos", BATCH * batches)
    overlapped: list[bool] = []
    bump_generation = run.bump_generation

    def store_waiting_for_the_next_forward(session, dataset):
        bump_generation(session, dataset)
        stored = len(overlapped) + 1  # batches, this one included
        overlapped.append(stored == batches or forwards.wait_for(stored + 1))  # the last has no next

    monkeypatch.setattr(run, "bump_generation", store_waiting_for_the_next_forward)
    summary = index_folder(open_database(str(tmp_path / "index.db")), _request(folder), show_progress=False)
    assert overlapped == [True] * batches
    assert forwards.started == batches and summary.added == summary.embedded == BATCH * batches
    with reading(str(tmp_path / "index.db")) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == BATCH * batches


def test_a_batch_that_cannot_be_stored_stops_the_run_and_leaves_whole_batches(tmp_path, monkeypatch, forwards):
    batches, failing = 12, 1  # the second batch's transaction fails
    folder = _folder(tmp_path / "photos", BATCH * batches)
    db = str(tmp_path / "index.db")
    transactions = []
    bump_generation = run.bump_generation

    def failing_store(session, dataset):
        bump_generation(session, dataset)
        transactions.append(threading.current_thread().name)
        if len(transactions) == failing + 1:
            raise DatabaseUnreachable(f"database {db}: disk I/O error")

    monkeypatch.setattr(run, "bump_generation", failing_store)
    with pytest.raises(DatabaseUnreachable, match="disk I/O error"):
        index_folder(open_database(db), _request(folder), show_progress=False)
    assert transactions == ["index-writer"] * (failing + 1)
    # The run stopped at once: at most the batches queued behind the failed one, the one waiting for room in the
    # queue, and the one computed before the run's thread was told, went through the model after it.
    assert forwards.started <= failing + 1 + QUEUE_BATCHES + 2 < batches
    with reading(db) as session:
        assert session.scalar(select(func.count()).select_from(Image)) == BATCH * failing
        assert session.execute(select(IndexRun.status, IndexRun.added)).all() == [("failed", BATCH * failing)]

    monkeypatch.setattr(run, "bump_generation", bump_generation)
    summary = index_folder(open_database(db), _request(folder), show_progress=False)
    assert (summary.added, summary.unchanged) == (BATCH * (batches - failing), BATCH * failing)
    with reading(db) as session:
        assert session.scalar(select(func.count(func.distinct(Image.relpath)))) == BATCH * batches
