"""The board that the web processes and the job server share: which background jobs wait, in which order, which
run, and what the job server is doing. It lives in the cache folder (a diskcache, so every process on the machine
sees one board, and every change is one SQLite transaction).

A job's payload (its callback and arguments, an upload among them) travels in memory: in a file of the shared
memory folder /dev/shm, read and removed by the job server when the job starts (on a system without one, in the
board's folder).

A job is submitted to the lane of its kind (`projections`: t-SNE and UMAP, which can take minutes; `clusterings`:
DBSCAN and Ward of a sample, seconds; `uploads`: embedding a picture, under a second; `indexing`: an index run of an
image set, minutes and the model's memory), so a quick job never waits behind a slow one, and waits there in order until the job server has a free slot in that lane. Its states: queued -> starting -> running -> ended, or cancelled on the way. A page
that stops asking about a queued job (its browser left) has abandoned it: the job server drops it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import psutil

from dashboard.folder_cache import FolderCache

LANES = ("projections", "clusterings", "uploads", "indexing")
RECORD_TTL_S = 6 * 3600  # job records outlive any job a page could still be waiting for
ABANDONED_S = 30.0  # a queued job that no page has asked about for this long is dropped
SEEN_EVERY_S = 5.0  # how often a page's asking is written down (well within ABANDONED_S)
SHARED_MEMORY = Path("/dev/shm")
WAITING = ("queued", "starting", "cancelling")


@dataclass(frozen=True)
class ServerState:
    """What the job server said of itself last: its process, and its phase ("warming", "ready" or "busy", with
    what it is doing and since when)."""

    pid: int
    created: float  # the process's start time: a pid reused by another process is not the server
    phase: str
    detail: str
    since: float
    running: dict[str, int]  # jobs running per lane

    @property
    def alive(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            return abs(process.create_time() - self.created) < 1 and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


class JobBoard:
    """One process's handle on the board of a cache folder. Not for use across fork(): each process opens its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.cache = FolderCache(str(self.folder))

    # What the web processes do ------------------------------------------------------------------------------

    def submit(self, lane: str, payload: bytes, progress_key: str) -> str:
        """Queue a job at the end of `lane`; returns its token."""
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}; expected one of {', '.join(LANES)}")
        token = uuid4().hex
        now = time.time()
        stored = self._store_payload(token, payload)
        with self.cache.transact():
            self._set(("payload", token), stored)
            self._set(("job", token), {"state": "queued", "lane": lane, "submitted": now, "pid": None})
            self._set(("seen", token), now)
            self._set(("by-progress", progress_key), token)
            self.cache.set(("queue", lane), (*self._queue(lane), token))
        return token

    def cancel(self, token: str) -> int | None:
        """Withdraw a job. A queued one never starts; for a running one the pid is returned, for the caller to end."""
        with self.cache.transact():
            job = self.cache.get(("job", token))
            if job is None:
                return None
            if job["state"] == "queued":
                self.cache.set(("queue", job["lane"]), tuple(t for t in self._queue(job["lane"]) if t != token))
                self._drop_payload(token)
                self._set(("job", token), {**job, "state": "cancelled"})
            elif job["state"] == "starting":
                self._set(("job", token), {**job, "state": "cancelling"})  # the server ends it once forked
            elif job["state"] == "running":
                return job["pid"]
        return None

    def is_running(self, token: str) -> bool:
        """Whether the job still waits or runs. Asking also tells the board that a page still waits for it."""
        job = self.cache.get(("job", token))
        if job is None:
            return False
        if job["state"] in WAITING:
            now = time.time()
            if now - self.cache.get(("seen", token), 0.0) > SEEN_EVERY_S:  # a write only now and then: pages poll often
                self._set(("seen", token), now)
            return True
        if job["state"] != "running":
            return False
        try:
            return psutil.Process(job["pid"]).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def waiting_message(self, progress_key: str, now: float | None = None) -> str | None:
        """What a page should say of its job while the job has nothing to say itself: where it waits, or once that
        it runs (None after that, and once it has ended)."""
        token = self.cache.get(("by-progress", progress_key))
        job = token and self.cache.get(("job", token))
        if job and job["state"] == "running" and ("told", token) not in self.cache \
                and self.cache.add(("told", token), True, expire=RECORD_TTL_S):
            return "Running…"
        if not job or job["state"] not in WAITING:
            return None
        now = time.time() if now is None else now
        server = self.server()
        if server is None or not server.alive:
            return f"Waiting for the job server to start ({now - job['submitted']:.0f} s)…"
        if server.phase != "ready":
            return f"Waiting for the job server, which is {server.detail} ({now - server.since:.0f} s so far)…"
        queue = self._queue(job["lane"])
        if token not in queue:
            return "Starting…"
        ahead = queue.index(token)
        running = server.running.get(job["lane"], 0)
        return (f"Queued: {ahead} job{'s' if ahead != 1 else ''} ahead of yours, {running} running "
                f"(waiting {now - job['submitted']:.0f} s)…")

    def told(self, progress_key: str) -> None:
        """The job's page has heard from the job itself: no "Running…" needed."""
        token = self.cache.get(("by-progress", progress_key))
        if token and ("told", token) not in self.cache:
            self._set(("told", token), True)

    def job(self, token: str) -> dict | None:
        return self.cache.get(("job", token))

    def queued(self, lane: str) -> tuple[str, ...]:
        return self._queue(lane)

    # What the job server does -------------------------------------------------------------------------------

    def set_server(self, state: ServerState) -> None:
        self.cache.set("server", state)

    def server(self) -> ServerState | None:
        return self.cache.get("server")

    def claim_start(self, seconds: float = 60.0) -> bool:
        """True for the one caller (across processes) that should start a job server now."""
        return self.cache.add("server-starting", time.time(), expire=seconds)

    def take(self, lane: str, now: float | None = None) -> tuple[str, bytes] | None:
        """The next job of `lane` that a page still waits for, marked starting, with its payload; abandoned jobs
        on the way are dropped."""
        now = time.time() if now is None else now
        if not self._queue(lane):  # the common case, read without taking the write lock every process contends for
            return None
        with self.cache.transact():
            queue = list(self._queue(lane))
            taken = None
            while queue and taken is None:
                token = queue.pop(0)
                job, payload = self.cache.get(("job", token)), self._drop_payload(token)
                if job is None or payload is None or job["state"] != "queued":
                    continue
                if now - self.cache.get(("seen", token), job["submitted"]) > ABANDONED_S:
                    self._set(("job", token), {**job, "state": "abandoned"})
                    continue
                self._set(("job", token), {**job, "state": "starting"})
                taken = token, payload
            self.cache.set(("queue", lane), tuple(queue))
        return taken

    def started(self, token: str, pid: int) -> bool:
        """Record the process of a starting job; False if it was cancelled meanwhile (the server then ends it)."""
        with self.cache.transact():
            job = self.cache.get(("job", token))
            if job is None or job["state"] == "cancelling":
                self._set(("job", token), {**(job or {}), "state": "cancelled", "pid": pid})
                return False
            self._set(("job", token), {**job, "state": "running", "pid": pid, "started": time.time()})
        return True

    def ended(self, token: str) -> None:
        with self.cache.transact():
            job = self.cache.get(("job", token))
            if job is not None and job["state"] == "running":
                self._set(("job", token), {**job, "state": "ended"})

    def _store_payload(self, token: str, payload: bytes) -> bytes | str:
        """The payload as the board keeps it: the name of a shared-memory file holding it, or (without shared
        memory) the bytes themselves."""
        if not SHARED_MEMORY.is_dir():
            return payload
        path = SHARED_MEMORY / f"dinoscope-job-{token}"
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            file.write(payload)
        return str(path)

    def _drop_payload(self, token: str) -> bytes | None:
        """Remove a job's payload from the board (and shared memory), returning it."""
        stored = self.cache.pop(("payload", token), None)
        if not isinstance(stored, str):
            return stored
        try:
            with open(stored, "rb") as file:
                payload = file.read()
            os.unlink(stored)
        except OSError:
            return None
        return payload

    def _queue(self, lane: str) -> tuple[str, ...]:
        return self.cache.get(("queue", lane), ())

    def _set(self, key, value) -> None:
        self.cache.set(key, value, expire=RECORD_TTL_S)
