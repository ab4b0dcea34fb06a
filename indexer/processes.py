"""The indexer's processes: its decode workers end with it, and SIGTERM stops a run as Ctrl-C does.

A decode worker outliving its indexer holds hundreds of megabytes and the database file open, and PyTorch's own
check does not save it: a worker that notices its indexer is gone still waits forever to hand over what it
decoded. So a worker is told to end with its parent, by the kernel where it can (Linux), else by a watchdog.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCH_INTERVAL_S = 0.5


def end_with(indexer_pid: int) -> None:
    """In a child process of the indexer: end this process as soon as the indexer ends, SIGKILL included."""
    if sys.platform.startswith("linux"):
        # The signal comes when the parent (the indexer, or the fork server that started this process and ends
        # with the indexer) ends. Checked once after: the indexer may have ended before it was asked for.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if _ended(indexer_pid):
            os._exit(1)
    else:
        threading.Thread(target=_exit_when_ended, args=(indexer_pid,), name="indexer watchdog", daemon=True).start()


def _exit_when_ended(pid: int) -> None:
    while not _ended(pid):
        time.sleep(_WATCH_INTERVAL_S)
    os._exit(1)


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet collected by its parent
    except psutil.NoSuchProcess:
        return True


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while this lasts, so a terminated run ends as a Ctrl-C'd one does: marked
    interrupted, its last transaction rolled back, its decode workers shut down."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
