"""Background callbacks: run by the job server of the cache folder (diskcache), or by Celery workers (Redis).

With the diskcache manager, a web process never forks: it puts the job on the job board in the cache folder and
the one job server of that folder (dashboard.job_server) runs it, at most `slots` at a time in each lane (one per
kind of job; the indexing lane has slots of its own), the others waiting in order. While a job waits, its page is told where it stands (the job server warming up, or
its place in the queue) in the callback's progress output.

With Celery, the web processes only queue the callbacks' JSON arguments in Redis; `dinoscope worker` builds the
same Dash app (so the same callbacks are registered as tasks under the same names) and runs them in its pool.
Progress, results and cancel (a revoke that terminates the task's process) go through Redis too.
"""

from __future__ import annotations

from dataclasses import dataclass

import diskcache
from celery import Celery
from dash import CeleryManager, DiskcacheManager
from kombu.utils.url import maybe_sanitize_url

from dashboard.folder_cache import FolderCache
from dashboard.job_board import LANES, JobBoard
from dashboard.job_server import JobServerConfig, dump_job, kill_tree, start_job_server
from db.errors import DinoscopeError

REDIS_SCHEMES = ("redis://", "rediss://")


class BrokerError(DinoscopeError):
    """Redis cannot be used for background callbacks; the message names the URL (without its password)."""


class JobServerManager(DiskcacheManager):
    """Dash's diskcache manager, with jobs run by the job server of the cache folder in one of its lanes.

    A job is known to Dash by its token on the board. Background callbacks that use it have one progress output:
    the messages about waiting go there.
    """

    def __init__(self, cache: diskcache.Cache, config: JobServerConfig, lane: str) -> None:
        super().__init__(cache)
        self.config = config
        self.lane = lane
        self.board = JobBoard(config.board_folder)
        self.func_registry = {}  # Dash gave it the callbacks of the process's earlier apps: not this app's

    def register(self, key, fn, progress):
        """Dash registers every background callback of every app in the process with every manager, under a key of
        the callback's outputs and source, the same in each app. A manager keeps the first callback of a key, its
        own app's (bound to that app's database), so that two apps in one process each run their own jobs."""
        if key not in self.func_registry:
            super().register(key, fn, progress)

    def call_job_fn(self, key, job_fn, args, context):
        start_job_server(self.config, self.board)
        payload = dump_job(job_fn, (key, self._make_progress_key(key), args, context))
        return self.board.submit(self.lane, payload, self._make_progress_key(key))

    def terminate_job(self, job):
        if job is None:
            return
        pid = self.board.cancel(str(job))
        if pid is not None:
            kill_tree(pid)

    def job_running(self, job):
        return bool(job) and self.board.is_running(str(job))

    def get_progress(self, key):
        progress = super().get_progress(key)
        if progress is not None:
            self.board.told(self._make_progress_key(key))
            return progress
        waiting = self.board.waiting_message(self._make_progress_key(key))
        if waiting is None:
            return None
        server = self.board.server()
        if server is None or not server.alive:
            start_job_server(self.config, self.board)  # it ended (or was killed): queued jobs need one
        return [waiting]


@dataclass(frozen=True)
class JobManagers:
    """The managers of an app's background callbacks, one per lane of the job server: t-SNE and UMAP (minutes at
    100,000 images), DBSCAN and Ward of a sample (seconds), uploads (under a second) and index runs of image sets
    (minutes, and a model each), so that a quick job never waits behind a slow one. With Celery, one manager serves
    them all."""

    projections: object
    clusterings: object
    uploads: object
    indexing: object


def background_managers(settings) -> JobManagers:
    """Celery when the settings name a Redis URL, else the job server of the cache folder that every worker
    process shares."""
    if settings.celery_url:
        manager = CeleryManager(celery_app(settings.celery_url))
        return JobManagers(*(manager for _lane in LANES))
    config = job_server_config(settings)
    cache = FolderCache(str(settings.cache_dir / "background"))
    return JobManagers(*(JobServerManager(cache, config, lane) for lane in LANES))


def job_server_config(settings) -> JobServerConfig:
    return JobServerConfig(settings.cache_dir, settings.db_url, settings.job_slots, settings.preload,
                           settings.index_slots)


def celery_app(url: str) -> Celery:
    """Redis as the broker and as the result store that Dash reads progress and results from."""
    app = Celery("dinoscope", broker=url, backend=url)
    app.conf.update(
        worker_prefetch_multiplier=1,  # a worker busy with a long projection leaves queued jobs to idle ones
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def check_redis(url: str, timeout_s: float = 3.0) -> None:
    """Raise BrokerError unless `url` is a Redis server that answers."""
    import redis

    shown = maybe_sanitize_url(url)
    if not url.startswith(REDIS_SCHEMES):
        raise BrokerError(f"{shown} is not a Redis URL: use one like redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping()
    except (redis.RedisError, ValueError) as error:
        raise BrokerError(f"cannot reach Redis at {shown}: {error}") from None
