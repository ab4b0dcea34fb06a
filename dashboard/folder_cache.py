"""A diskcache that follows its folder: deleted or replaced while the server runs, it is made again and reopened.

Every process of a server (web workers, the job server, its jobs) opens the caches of the shared cache folder. An
operator deleting that folder (to free space, say) would otherwise leave each process on its own footing: open
connections keep writing to the deleted files, new ones fail (500s) or make fresh files, and a result written by a
job lands where the page asking for it never looks. Here each connection is checked against the cache's file
before use (one `stat`): when the file is no longer the one it was opened on, the cache is made anew in its folder
and every process, on its next use, opens that same new file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

import diskcache

log = logging.getLogger(__name__)
T = TypeVar("T")


def computed(cache, key: str, compute: Callable[[], T]) -> T:
    """The value under `key` in a shared results cache (or any mapping), computed and stored first if it is not
    there: whoever asks second gets the first one's."""
    found = cache.get(key)
    if found is None:
        found = compute()
        cache[key] = found
    return found


def file_identity(path: str) -> tuple[int, int] | None:
    """The device and inode of the file at `path`, or None where there is none: equal identities, same file."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class FolderCache(diskcache.Cache):
    def __init__(self, directory, timeout: float = 60, disk=diskcache.Disk, **settings) -> None:
        self._identity: tuple[int, int] | None = None  # None while the cache is being made: nothing to check yet
        self._reopener: int | None = None  # the thread that is making the cache anew
        self._reopening = threading.Lock()
        self._options = (timeout, disk, settings)
        super().__init__(directory, timeout, disk, **settings)
        self._identity = file_identity(self._file)

    @property
    def _file(self) -> str:
        return os.path.join(self.directory, diskcache.core.DBNAME)

    @property
    def _con(self):
        if (self._identity is not None and self._reopener != threading.get_ident()
                and file_identity(self._file) != self._identity):
            self._reopen()
        return diskcache.Cache._con.fget(self)

    def _reopen(self) -> None:
        with self._reopening:  # other threads of this process wait here, then find the new file
            if file_identity(self._file) == self._identity:
                return
            log.warning("cache %s was deleted or replaced while in use: made anew", self.directory)
            self._reopener = threading.get_ident()
            try:
                timeout, disk, settings = self._options
                # Made afresh in place (folder, tables, settings): other threads' connections to the old file
                # go with the thread-local storage this replaces.
                super().__init__(self.directory, timeout, disk, **settings)
                self._identity = file_identity(self._file)
            finally:
                self._reopener = None
