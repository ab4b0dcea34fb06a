"""Background callbacks: run by jobs forked from a clean process (diskcache), or by a Celery worker (Redis).

Dash's DiskcacheManager forks each job from the server process. A fork copies every lock as it is at that moment,
and if another request thread is inside SQLite (or an OpenMP runtime) then, the job waits forever on a lock that
no thread will release. Here jobs are forked by multiprocess's fork server instead: a separate, single-threaded
process started by exec, which has already imported (and compiled) what the jobs need.

With Celery, the web processes only queue the callbacks' JSON arguments in Redis; `dinoscope worker` builds the
same Dash app (so the same callbacks are registered as tasks under the same names) and runs them in its pool.
Progress, results and cancel (a revoke that terminates the task's process) go through Redis too.
"""

from __future__ import annotations

import diskcache
import multiprocess
import psutil
from celery import Celery
from dash import CeleryManager, DiskcacheManager
from kombu.utils.url import maybe_sanitize_url

# Imported by the fork server before it forks any job: the analysis code, with UMAP's numba code compiled once, and
# torch with timm for embedding uploads (importing them takes seconds; no torch thread runs before the fork).
PRELOAD = ["dashboard.analysis.warm", "indexer.model"]
REDIS_SCHEMES = ("redis://", "rediss://")


class BrokerError(RuntimeError):
    """Redis cannot be used for background callbacks; the message names the URL (without its password)."""


class ForkServerDiskcacheManager(DiskcacheManager):
    def call_job_fn(self, key, job_fn, args, context):
        context_ = multiprocess.get_context("forkserver")
        context_.set_forkserver_preload(PRELOAD)
        process = context_.Process(target=job_fn, args=(key, self._make_progress_key(key), args, context))
        process.start()
        return process.pid

    # Dash looks a job's process up after checking that it exists; a job that ends in between (it has just written
    # its result) raised NoSuchProcess, which the browser saw as a failed callback (500).
    def terminate_job(self, job):
        try:
            super().terminate_job(job)
        except psutil.NoSuchProcess:
            pass

    def job_running(self, job):
        try:
            return super().job_running(job)
        except psutil.NoSuchProcess:
            return False


def background_manager(settings):
    """Celery when the settings name a Redis URL, else jobs forked beside this process, with state kept in the
    cache folder that every worker process shares."""
    if settings.celery_url:
        return CeleryManager(celery_app(settings.celery_url))
    return ForkServerDiskcacheManager(diskcache.Cache(str(settings.cache_dir / "background")))


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
