"""The job server and its board: one server per cache folder, jobs in order in two lanes with a bounded number
running, their place told to the page, cancels, abandoned jobs, and a server that ends with its parent.

Jobs here wait for a file the test writes before they end, so nothing depends on how fast the machine is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import diskcache
import psutil
import pytest
from dash.testing.wait import until

from dashboard import data
from dashboard.data import DatasetStore
from dashboard.job_board import ABANDONED_S, JobBoard, ServerState
from dashboard.job_server import JobServerConfig, dump_job, start_job_server
from dashboard.jobs import JobServerManager
from dashboard.query_image import QueryModels, recorded_model
from dashboard.settings import Settings
from tests.conftest import index_folder
from tests.images import noise
from tests.servers import job_server_jobs


def _held(folder: str, name: str) -> None:
    """A job that says it started, then runs until the test releases it."""
    Path(folder, f"{name}.started").write_text(str(os.getpid()))
    while not Path(folder, f"{name}.release").exists():
        time.sleep(0.02)
    Path(folder, f"{name}.done").touch()


def _holds_model(folder: str, models: QueryModels, recorded) -> None:
    """A job that says whether the upload model it was handed is built already."""
    Path(folder, "holds").write_text(str(models.holds(recorded)))


class Jobs:
    """A job server on a cache folder, and jobs submitted to it as the web processes submit them."""

    def __init__(self, folder: Path, db_url: str = "sqlite:///unused.db", slots: int = 1,
                 preload: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.config = JobServerConfig(folder / "cache", db_url, slots, preload)
        self.board = JobBoard(self.config.board_folder)
        self.server = start_job_server(self.config, self.board)

    def submit(self, name: str, lane: str = "projections") -> str:
        return self.board.submit(lane, dump_job(_held, (str(self.folder), name)), f"{name}-progress")

    def started(self, name: str) -> bool:
        return (self.folder / f"{name}.started").exists()

    def release(self, name: str) -> None:
        (self.folder / f"{name}.release").touch()

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(30)


@pytest.fixture
def jobs(tmp_path):
    started = Jobs(tmp_path)
    yield started
    started.stop()


def test_jobs_run_in_order_with_a_bounded_number_at_once_per_lane(jobs):
    tokens = {name: jobs.submit(name) for name in ("a", "b", "c")}
    quick = jobs.submit("quick", "uploads")
    until(lambda: jobs.started("a") and jobs.started("quick"), timeout=60)  # each lane runs one at a time
    until(lambda: jobs.board.job(tokens["a"])["state"] == "running", timeout=10)  # recorded just after the fork
    assert not jobs.started("b") and jobs.board.is_running(tokens["b"])
    assert jobs.board.waiting_message("b-progress").startswith("Queued: 0 jobs ahead of yours, 1 running")
    assert jobs.board.waiting_message("c-progress").startswith("Queued: 1 job ahead of yours, 1 running")
    assert jobs.board.waiting_message("a-progress") == "Running…"  # once: then the job reports its own progress
    assert jobs.board.waiting_message("a-progress") is None
    assert job_server_jobs(jobs.config.cache_dir) == 2

    jobs.release("quick")
    until(lambda: not jobs.board.is_running(quick), timeout=30)
    jobs.release("a")
    until(lambda: jobs.started("b"), timeout=30)
    assert not jobs.started("c") and not jobs.board.is_running(tokens["a"])
    jobs.release("b")
    jobs.release("c")
    until(lambda: (jobs.folder / "c.done").exists(), timeout=30)
    # the server records a job's end when it reaps its process, a moment after the job's last word
    until(lambda: [jobs.board.job(tokens[name])["state"] for name in "abc"] == ["ended"] * 3, timeout=10)


def test_a_queued_job_can_be_cancelled_and_a_running_one_ended(jobs, tmp_path):
    manager = JobServerManager(diskcache.Cache(str(tmp_path / "background")), jobs.config, "projections")
    first, second = jobs.submit("first"), jobs.submit("second")
    until(lambda: jobs.started("first"), timeout=60)
    manager.terminate_job(second)  # queued: it never starts
    assert not manager.job_running(second) and jobs.board.job(second)["state"] == "cancelled"
    pid = int((tmp_path / "first.started").read_text())
    manager.terminate_job(first)  # running: its process is ended
    until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=60)
    until(lambda: not manager.job_running(first), timeout=60)
    third = jobs.submit("third")
    until(lambda: jobs.started("third"), timeout=60)
    assert not jobs.started("second")
    jobs.release("third")
    until(lambda: not manager.job_running(third), timeout=60)


def test_a_page_is_told_what_its_job_waits_for(tmp_path):
    """Before the first job runs, the page hears of the job server warming up, with the time it has taken."""
    board = JobBoard(tmp_path / "jobs")
    token = board.submit("projections", b"payload", "key-progress")
    assert board.waiting_message("key-progress").startswith("Waiting for the job server to start")
    now = time.time()
    me = psutil.Process()
    board.set_server(ServerState(me.pid, me.create_time(), "warming", "loading UMAP's compiled code", now - 12, {}))
    assert board.waiting_message("key-progress", now) == ("Waiting for the job server, which is loading UMAP's "
                                                          "compiled code (12 s so far)…")
    board.set_server(ServerState(me.pid, me.create_time(), "ready", "", now, {"projections": 1}))
    assert board.waiting_message("key-progress", now).startswith("Queued: 0 jobs ahead of yours, 1 running")
    assert board.waiting_message("another-progress") is None
    board.set_server(ServerState(me.pid, me.create_time() - 100, "ready", "", now, {}))  # a pid reused since
    assert not board.server().alive
    assert board.cancel(token) is None and not board.is_running(token)


def test_a_job_no_page_asks_about_is_dropped_and_its_payload_with_it(tmp_path):
    board = JobBoard(tmp_path / "jobs")
    abandoned = board.submit("uploads", b"upload bytes", "a-progress")
    waited_for = board.submit("uploads", b"other bytes", "b-progress")
    later = time.time() + ABANDONED_S + 1
    board.cache.set(("seen", waited_for), later)  # its page asked just now
    assert board.take("uploads", now=later) == (waited_for, b"other bytes")
    assert board.job(abandoned)["state"] == "abandoned" and board.take("uploads", now=later) is None
    assert not list(Path("/dev/shm").glob(f"dinoscope-job-{abandoned}*"))
    assert not any(b"upload bytes" in path.read_bytes() for path in (tmp_path / "jobs").rglob("*") if path.is_file())


def test_one_server_per_cache_folder_and_it_ends_with_its_parent(tmp_path):
    config = JobServerConfig(tmp_path / "cache", "sqlite:///unused.db", 1, ())
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from dashboard.job_server import JobServerConfig, start_job_server\n"
        f"server = start_job_server(JobServerConfig(Path({str(config.cache_dir)!r}), 'sqlite:///unused.db', 1, ()))\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    board = JobBoard(config.board_folder)
    until(lambda: board.server() is not None and board.server().alive and board.server().phase == "ready", timeout=60)
    assert board.server().pid == server_pid
    assert start_job_server(config, board) is None  # one runs already
    second = subprocess.Popen([sys.executable, "-m", "dashboard.job_server", "--cache-dir", str(config.cache_dir),
                               "--preload", ""])
    assert second.wait(60) == 0 and board.server().pid == server_pid  # it found the lock taken and left
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    until(lambda: not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE,
          timeout=10)


def test_the_server_keeps_the_upload_model_of_the_newest_dataset(sample_db, tmp_path):
    settings = Settings(f"sqlite:///{sample_db}", tmp_path / "cache")
    jobs = Jobs(tmp_path, settings.db_url, preload=("models",))
    try:
        recorded = recorded_model_of(settings)

        def built() -> bool:
            (tmp_path / "holds").unlink(missing_ok=True)
            jobs.board.submit("uploads", dump_job(_holds_model, (str(tmp_path), QueryModels(), recorded)), "p")
            until(lambda: (tmp_path / "holds").exists(), timeout=60)
            return (tmp_path / "holds").read_text() == "True"

        until(built, timeout=120)
    finally:
        jobs.stop()


def recorded_model_of(settings: Settings):
    from dashboard.data import DatasetStore

    return recorded_model(DatasetStore(settings.db_url), "samples")


def test_the_server_prepares_the_shared_matrix_of_each_changed_dataset(tmp_path, monkeypatch):
    """After a start and after every re-index, the first page to open a dataset maps its file: it builds nothing."""
    photos = tmp_path / "photos"
    for seed in (1, 2):
        noise(photos / f"{seed}.png", seed=seed)
    db = tmp_path / "index.db"
    index_folder(photos, db)
    jobs = Jobs(tmp_path, f"sqlite:///{db}")
    matrices = jobs.config.cache_dir / "matrices"
    try:
        until(lambda: len(list(matrices.glob("*-g1"))) == 1, timeout=60)
        monkeypatch.setattr(data, "_build_shared", lambda *args: pytest.fail("a page built the shared matrix"))
        assert len(DatasetStore(f"sqlite:///{db}", jobs.config.cache_dir).view("photos")) == 2
        noise(photos / "3.png", seed=3)
        index_folder(photos, db)
        until(lambda: len(list(matrices.glob("*-g2"))) == 1, timeout=60)
        assert len(DatasetStore(f"sqlite:///{db}", jobs.config.cache_dir).view("photos")) == 3
    finally:
        jobs.stop()


def test_the_warm_up_is_chosen_in_the_environment(monkeypatch, caplog):
    from dashboard.settings import PRELOADS, preloads_from_env

    monkeypatch.delenv("DINOSCOPE_PRELOAD", raising=False)
    assert preloads_from_env() == PRELOADS
    monkeypatch.setenv("DINOSCOPE_PRELOAD", "")
    assert preloads_from_env() == ()
    monkeypatch.setenv("DINOSCOPE_PRELOAD", "models, umap")
    assert preloads_from_env() == ("models",)
    assert "DINOSCOPE_PRELOAD names umap, which the job server does not know" in caplog.text
