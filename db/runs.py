"""The index runs of a dataset: started, counted with the changes each transaction commits, and ended."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.schema import Failure, IndexRun, utcnow


def mark_abandoned_runs(session: Session, dataset_id: int, host: str, alive: Callable[[int], bool]) -> None:
    """Runs of `host` still marked running whose process is not `alive` were killed: say so. Runs of other hosts
    are left alone: they may be live shards of the same job, and their processes cannot be seen from here."""
    for run in session.scalars(select(IndexRun).where(IndexRun.dataset_id == dataset_id,
                                                      IndexRun.status == "running", IndexRun.host == host)):
        if not alive(run.pid):
            run.status = "interrupted"


def start_run(session: Session, dataset_id: int, host: str, pid: int, options: dict) -> int:
    """A new run of the dataset, marked running; its id."""
    run = IndexRun(dataset_id=dataset_id, host=host, pid=pid, options=options)
    session.add(run)
    session.flush()
    return run.id


def count_run_changes(session: Session, run_id: int, *, added: int, updated: int, moved: int, removed: int,
                      failures: Sequence[tuple[str, str]]) -> None:
    """Add what a transaction changes to its run's counters, and record its failures (relative path, reason), in
    that same transaction: the counters never count what was rolled back."""
    session.add_all(Failure(run_id=run_id, relpath=relpath, reason=reason) for relpath, reason in failures)
    session.execute(update(IndexRun).where(IndexRun.id == run_id).values(
        added=IndexRun.added + added, updated=IndexRun.updated + updated, moved=IndexRun.moved + moved,
        removed=IndexRun.removed + removed, failed=IndexRun.failed + len(failures)))


def end_run(session: Session, run_id: int, status: str, seconds: float, unchanged: int) -> None:
    """Mark the run ended ("completed", "interrupted" or "failed"); its counters of changes are written already."""
    session.execute(update(IndexRun).where(IndexRun.id == run_id).values(
        status=status, finished_at=utcnow(), seconds=seconds, unchanged=unchanged))
