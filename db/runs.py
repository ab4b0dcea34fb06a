"""The index runs of a dataset: started (one at a time over the same files), counted with the changes each
transaction commits, and ended."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.errors import DinoscopeDbError
from db.mutations import remove_dataset
from db.schema import Dataset, Failure, IndexRun, utcnow

# A run of another host, whose process cannot be seen from here, counts as running while it, or any run of its
# dataset, committed within this long (every batch commits, and bumps the dataset's updated_at): after that it is
# taken for a run that died with its machine.
SILENT_RUN_S = 15 * 60
# The first key of the PostgreSQL advisory locks that start runs (the second is the dataset's name, hashed); the
# two-key locks never meet the one-key lock that creating the schema takes.
_RUN_LOCK_SPACE = 0x72756E73


class RunInProgress(DinoscopeDbError):
    """Another run indexes the same files of the dataset now; nothing was changed."""


def mark_abandoned_runs(session: Session, dataset_id: int, host: str, alive: Callable[[int], bool]) -> None:
    """Runs of `host` still marked running whose process is not `alive` were killed: say so. Runs of other hosts
    are left alone: they may be live shards of the same job, and their processes cannot be seen from here."""
    for run in session.scalars(select(IndexRun).where(IndexRun.dataset_id == dataset_id,
                                                      IndexRun.status == "running", IndexRun.host == host)):
        if not alive(run.pid):
            run.status = "interrupted"


def check_no_run_in_progress(session: Session, dataset_id: int, host: str, alive: Callable[[int], bool],
                             overlaps: Callable[[dict], bool]) -> None:
    """Raise RunInProgress if a run of the dataset that `overlaps` (given its options) is running: its process
    alive on `host`, or on another host with a commit to the dataset within SILENT_RUN_S."""
    mark_abandoned_runs(session, dataset_id, host, alive)
    updated_at = session.scalar(select(Dataset.updated_at).where(Dataset.id == dataset_id))
    silent_since = utcnow() - timedelta(seconds=SILENT_RUN_S)
    for run in session.scalars(select(IndexRun).where(IndexRun.dataset_id == dataset_id,
                                                      IndexRun.status == "running").order_by(IndexRun.id)):
        if run.host != host and max(_aware(run.started_at), _aware(updated_at)) < silent_since:
            continue
        if overlaps(run.options or {}):
            raise RunInProgress(_in_progress_message(session, dataset_id, run))


def process_alive(pid: int) -> bool:
    """Whether a process of this host runs under `pid`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def remove_dataset_unless_indexed(session: Session, dataset: Dataset, host: str) -> None:
    """Remove a dataset and everything stored for it; refused with RunInProgress while a run indexes it, and, as
    start_run does, in one step with that check."""
    _lock_runs(session, dataset.id)
    check_no_run_in_progress(session, dataset.id, host, process_alive, lambda _options: True)
    remove_dataset(session, dataset)


def _lock_runs(session: Session, dataset_id: int) -> None:
    """On PostgreSQL, the transaction's advisory lock on the dataset's name (SQLite: its writer's lock does it)."""
    if session.get_bind().dialect.name == "postgresql":
        name = session.scalar(select(Dataset.name).where(Dataset.id == dataset_id))
        key = zlib.crc32(name.encode()) - 2**31  # a signed 32-bit key
        session.execute(select(func.pg_advisory_xact_lock(_RUN_LOCK_SPACE, key)))


def start_run(session: Session, dataset_id: int, host: str, pid: int, options: dict, *,
              alive: Callable[[int], bool] = lambda _pid: True,
              overlaps: Callable[[dict], bool] = lambda _options: True) -> int:
    """A new run of the dataset, marked running; its id. Refused with RunInProgress while a run that `overlaps` it
    is running (see check_no_run_in_progress). The check and the start are one step across processes and machines:
    a SQLite writer's transaction holds the database's write lock from its BEGIN IMMEDIATE, and on PostgreSQL the
    transaction takes an advisory lock on the dataset's name, held until it commits."""
    _lock_runs(session, dataset_id)
    check_no_run_in_progress(session, dataset_id, host, alive, overlaps)
    run = IndexRun(dataset_id=dataset_id, host=host, pid=pid, options=options)
    session.add(run)
    session.flush()
    return run.id


def _in_progress_message(session: Session, dataset_id: int, run: IndexRun) -> str:
    name = session.scalar(select(Dataset.name).where(Dataset.id == dataset_id))
    shard = run.options.get("shard") if run.options else None
    part = f" (shard {shard})" if shard and shard != "1/1" else ""
    started = _aware(run.started_at).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"dataset {name!r} is being indexed now{part}: run {run.id}, started {started} on {run.host} by process "
            f"{run.pid}. Wait for it to end, then index again (a run over the same files at once would only "
            f"repeat its work)")


def _aware(moment):
    """SQLite gives back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


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
