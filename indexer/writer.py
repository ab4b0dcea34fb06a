"""An index run's database writer: a thread of its own that stores each batch, in one transaction, while the run's
thread has the model compute the next ones.

The queue between them is bounded (QUEUE_BATCHES), so the model runs at most that many batches ahead of what is
stored and memory stays flat however long the run. A batch that fails to store stops the writing: nothing of the
batches queued behind it is written, and the run's thread is given the error at its next hand-over (or when it
closes the writer). When the run's thread stops first (Ctrl-C, a failed decode worker), the writer finishes the
transaction it is in and drops the rest, so the database holds whole batches only either way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

QUEUE_BATCHES = 2

Batch = TypeVar("Batch")
_END = object()


class BatchWriter(Generic[Batch]):
    """`with BatchWriter(store) as writer: writer.put(batch)...`: `store(batch)` runs in the writer's thread, batch
    after batch in order. Leaving the block waits for every batch put to be stored, and raises the error of the
    batch that could not be."""

    def __init__(self, store: Callable[[Batch], None], queue_batches: int = QUEUE_BATCHES) -> None:
        self._store = store
        self._queue: queue.Queue = queue.Queue(maxsize=queue_batches)
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="index-writer", daemon=True)

    def __enter__(self) -> BatchWriter[Batch]:
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self._queue.put(_END)
            self._thread.join()
            self._raise_failure()
            return
        self._stopping.set()
        try:
            self._queue.put_nowait(_END)
        except queue.Full:
            pass  # the writer is busy, and sees `_stopping` when it takes the next batch
        self._thread.join()

    def put(self, batch: Batch) -> None:
        """Hand a batch over, waiting while the queue is full; raises the error of a batch that failed to store."""
        self._raise_failure()
        self._queue.put(batch)

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _write(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _END or self._stopping.is_set():
                return
            if self._error is not None:
                continue  # dropped: the run stops at its next hand-over, and nothing may follow a failed batch
            try:
                self._store(batch)
            except BaseException as error:  # noqa: BLE001  (handed to the run's thread, which raises it)
                self._error = error
