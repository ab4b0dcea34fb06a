"""Real server processes for tests: `dinoscope serve` and `dinoscope worker`, started, awaited and stopped."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from indexer.index_job import ServerModel

# A served dashboard as its command line says, whatever the environment running the tests holds.
PLAIN_SERVE_ENV = {"DINOSCOPE_SECRET_KEY": "", "DINOSCOPE_USERS_FILE": "", "DINOSCOPE_CELERY": ""}
CLI = [sys.executable, "-c", "from indexer.cli import main; main()"]


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The header that logs `user` in with HTTP Basic authentication."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def start(args: list, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The `dinoscope` command in its own process, its output (stdout and stderr) going to `log`."""
    with log.open("w") as output:
        return subprocess.Popen([*CLI, *map(str, args)], stdout=output, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def free_port() -> int:
    """A loopback port no one listens on now, chosen by the kernel (a fixed range collides with the ports the
    kernel hands to outgoing connections, which are in use for as long as those connections live)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server stopped: {log.read_text()}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url}/health in {timeout_s} s: {log.read_text()}")


def start_worker(redis_url: str, db: Path, cache_dir: Path, log: Path, timeout_s: float = 180,
                 index_model: ServerModel | None = None) -> subprocess.Popen:
    """A real `dinoscope worker` on the tests' Redis database, returned once it answers a ping; it indexes image
    sets with `index_model`, as `serve` does with the same options."""
    from dashboard.jobs import celery_app

    process = start(["worker", "--celery", redis_url, "--db", db, "--cache-dir", cache_dir, "--concurrency", "2",
                     *model_options(index_model or ServerModel())], log)
    deadline = time.monotonic() + timeout_s
    with celery_app(redis_url) as control_app:  # closed after: see BackgroundApps.close
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the worker stopped: {log.read_text()}"
            if control_app.control.ping(destination=[f"dinoscope-{process.pid}@{socket.gethostname()}"],
                                        timeout=1.0):
                return process
    stop(process)
    raise AssertionError(f"the worker did not answer in {timeout_s} s: {log.read_text()}")


def model_options(model: ServerModel) -> list[str]:
    """The command-line options of `serve` and `worker` that name `model`."""
    return [*(["--model", model.name] if model.name else []), *(["--weights", model.weights] if model.weights else []),
            *(["--random-weights"] if model.random_weights else []),
            *(["--image-size", str(model.image_size)] if model.image_size else [])]


def stop(process: subprocess.Popen, timeout_s: float = 60, sig: int = signal.SIGTERM) -> tuple[int, int]:
    """Ask the process to finish (`sig`); returns its exit status and how many of its child processes outlived it
    by ten seconds (killed then)."""
    children = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
    process.send_signal(sig)
    try:
        status = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        status = process.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    return status, len(alive)


def job_servers(pid: int) -> list[psutil.Process]:
    """The job servers under a `dinoscope serve` (not their jobs, forked from them with the same command line)."""
    def is_job_server(process: psutil.Process) -> bool:
        return process.status() != psutil.STATUS_ZOMBIE and "dashboard.job_server" in " ".join(process.cmdline())

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if is_job_server(child) and not is_job_server(child.parent()):
                found.append(child)
        except psutil.Error:
            continue  # a job that has just ended
    return found


def end_job_servers(pid: int) -> None:
    """Stop the job servers under process `pid` and the jobs they run (SIGTERM: each ends its jobs, then itself)."""
    servers = job_servers(pid)
    for server in servers:
        server.terminate()
    _, alive = psutil.wait_procs(servers, timeout=10)
    for server in alive:
        server.kill()


def job_server_jobs(cache_dir: Path) -> int:
    """How many jobs the job server of a cache folder runs now (as its board records them, with live processes)."""
    from dashboard.job_board import JobBoard

    board = JobBoard(cache_dir / "jobs")
    tokens = [key[1] for key in board.cache if isinstance(key, tuple) and key[0] == "job"]
    return sum(1 for token in tokens if (board.job(token) or {}).get("state") == "running" and board.is_running(token))


def flush_test_redis(redis_url: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()


class BackgroundApps:
    """Dashboards whose background callbacks run as jobs forked beside the server ("diskcache"), or in a real
    `dinoscope worker` on the tests' Redis database `redis_url` ("celery")."""

    def __init__(self, manager: str, folder: Path, redis_url: str | None = None) -> None:
        self.manager = manager
        self.folder = folder
        self.redis_url = redis_url
        self.workers: list[subprocess.Popen] = []
        self.managers: list = []

    def build(self, db: Path, **settings):
        """A dashboard on the SQLite file `db`, with any other `settings` (dashboard.settings.Settings' fields, such
        as uploads and index_model: the Celery worker indexes with the same model)."""
        from dashboard.app import create_app
        from dashboard.jobs import background_managers
        from dashboard.settings import Settings

        celery_url = self.redis_url if self.manager == "celery" else None
        self.settings = Settings(f"sqlite:///{db}", self.folder / "cache", "test-secret", celery_url=celery_url,
                                 **settings)
        if celery_url:
            flush_test_redis(celery_url)
            self.workers.append(start_worker(celery_url, db, self.settings.cache_dir, self.folder / "worker.log",
                                             index_model=self.settings.index_model))
        self.managers.append(background_managers(self.settings))
        return create_app(self.settings, self.managers[-1])

    def running_jobs(self) -> int:
        if self.manager == "celery":
            from dashboard.jobs import celery_app

            with celery_app(self.redis_url) as control_app:
                active = control_app.control.inspect(timeout=1.0).active() or {}
            return sum(len(tasks) for tasks in active.values())
        return job_server_jobs(self.settings.cache_dir)

    def close(self) -> None:
        # Close this process's Redis connections: kombu closes them again in every process forked later (a
        # DataLoader's decode workers in another test, say), and that close blocks on the Redis server forever.
        for managers in self.managers:
            if self.manager == "celery":
                managers.projections.handle.close()
        for worker in self.workers:
            stop(worker)
        if self.workers:
            flush_test_redis(self.redis_url)
