"""The job server: one process per cache folder that runs the background jobs of every web process of a dashboard
(t-SNE, UMAP, the clustering of a sample, the embedding of an upload) when background callbacks use the diskcache
manager.

It is started by exec (`python -m dashboard.job_server`), by `dinoscope serve` before any web worker, or by the
first web process that needs it. It takes a lock in the cache folder, so one runs per folder, and ends with the
process that started it. It warms up once (imports the analysis libraries, compiles UMAP with numba's cache on
disk, imports torch and timm, then keeps the upload models of the newest datasets in memory) and forks every job
from itself: a job starts in milliseconds and shares that memory copy-on-write.

The server itself stays single-threaded and runs no parallel numerical code (OpenMP, BLAS and torch each use one
thread here), since a fork taken while another thread holds a lock, or after an OpenMP thread pool has started,
can leave the child waiting forever. Each job then sets its own thread counts.

Jobs wait on the job board (dashboard.job_board) in lanes, each with `slots` running at once (the indexing lane
`index_slots`: an index run holds a model and many images).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dill
import psutil

from dashboard.folder_cache import file_identity
from dashboard.job_board import LANES, JobBoard, ServerState
from dashboard.query_image import QueryModels
from dashboard.settings import PRELOADS
from db.logs import LOG_FORMAT, LOG_LEVEL_ENV
from db.queries import dataset_generations

log = logging.getLogger(__name__)

TICK_S = 0.05  # how often the server looks for new jobs and ended ones
MODEL_CHECK_S = 30.0  # how often an idle server looks for datasets whose upload model it does not hold yet
MATRIX_CHECK_S = 5.0  # how often the server looks for datasets changed since their shared matrix was prepared
JOB_NICENESS = 10  # jobs yield the processors to the web workers: a page answers first, a projection waits
UPLOAD_MODELS = 2  # upload models kept in memory (ViT-B: about 350 MB each in float32)
# Set before numpy and torch load their libraries: one thread each in the server (jobs raise their own limits),
# and a CUDA check that asks the driver's management library, so the server never makes a CUDA context a fork
# would break.
SERVER_ENVIRONMENT = {**{name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                "NUMBA_NUM_THREADS")},
                      "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
# Objects a job refers to that are the job server's own, not copies: a job's callback finds the upload models
# that the server keeps, where a pickled copy would arrive empty.
SHARED_TYPES = {"query-models": QueryModels}


@dataclass(frozen=True)
class JobServerConfig:
    cache_dir: Path
    db_url: str
    slots: int = 1  # jobs running at once in each lane but indexing
    preload: tuple[str, ...] = PRELOADS
    index_slots: int = 1  # index runs at once

    def slots_of(self, lane: str) -> int:
        return self.index_slots if lane == "indexing" else self.slots

    @property
    def board_folder(self) -> Path:
        return self.cache_dir / "jobs"

    def job_threads(self, lane: str) -> int:
        """Threads each job of `lane` may use: the cores shared among the jobs of the quick lanes that can run at
        once; an index run (rare, and niced like every job) shares them only with the other index runs, so that it
        takes minutes rather than hours."""
        shared_by = self.index_slots if lane == "indexing" else sum(self.slots_of(other) for other in LANES
                                                                    if other != "indexing")
        return max(1, (os.cpu_count() or 1) // shared_by)


def dump_job(job_fn, args: tuple) -> bytes:
    """A job (a background callback's function and its arguments) as bytes for the board."""
    import io

    buffer = io.BytesIO()
    _JobPickler(buffer).dump((job_fn, args))
    return buffer.getvalue()


def load_job(payload: bytes, shared: dict[str, object]):
    import io

    return _JobUnpickler(io.BytesIO(payload), shared).load()


class _JobPickler(dill.Pickler):
    def persistent_id(self, obj):
        for name, kind in SHARED_TYPES.items():
            if type(obj) is kind:
                return name
        return None


class _JobUnpickler(dill.Unpickler):
    def __init__(self, file, shared: dict[str, object]) -> None:
        super().__init__(file)
        self.shared = shared

    def persistent_load(self, name):
        return self.shared[name]


def start_job_server(config: JobServerConfig, board: JobBoard | None = None) -> subprocess.Popen | None:
    """Start the job server of `config.cache_dir` unless one runs or another process is starting it; returns the
    process started. The database URL travels in the environment, never on a command line."""
    board = board or JobBoard(config.board_folder)
    server = board.server()
    if server is not None and server.alive:
        return None
    if not board.claim_start():
        return None
    command = [sys.executable, "-m", "dashboard.job_server", "--cache-dir", str(config.cache_dir),
               "--slots", str(config.slots), "--index-slots", str(config.index_slots),
               "--preload", ",".join(config.preload)]
    env = {**os.environ, **SERVER_ENVIRONMENT, "DINOSCOPE_DB": config.db_url,
           LOG_LEVEL_ENV: logging.getLevelName(logging.getLogger().getEffectiveLevel())}
    log.info("starting the job server for %s", config.cache_dir)
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)


class JobServer:
    def __init__(self, config: JobServerConfig) -> None:
        self.config = config
        self.board = JobBoard(config.board_folder)
        self.models = QueryModels(capacity=UPLOAD_MODELS)
        self.running: dict[int, tuple[str, str, float]] = {}  # pid -> (token, lane, start time)
        self.parent = os.getppid()
        self.created = psutil.Process().create_time()
        self.stopping = False
        self.lock_fd: int | None = None
        self.model_check_at = 0.0
        self.unbuildable: set[tuple] = set()
        self.matrix_check_at = 0.0
        self.prepared: dict[str, int] = {}  # dataset -> the generation whose shared matrix has been prepared
        self.preparing: tuple[int, dict[str, int]] | None = None  # the process preparing, and for what

    def serve(self) -> None:
        """Run until the process that started the server ends, or SIGTERM."""
        if not self._lock():
            log.info("another job server serves %s", self.config.cache_dir)
            return
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.board.cache.delete("server-starting")
        self._warm_up()
        while not self.stopping and os.getppid() == self.parent and self._keep_lock():
            self._reap()
            started = self._start_jobs()
            self._prepare_matrices()
            if not started and not self.running:
                self._prepare_uploads()
            time.sleep(TICK_S)
        self._end_jobs()

    def _lock(self) -> bool:
        self.config.board_folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.lock_fd = fd
        return True

    def _keep_lock(self) -> bool:
        """Whether this is still the cache folder's job server. An operator may delete the folder while it serves:
        the lock file is then made and locked anew, and the server says again that it is ready, on the new board
        (web processes that found no server meanwhile may have started another: the first to lock stays)."""
        locked = os.fstat(self.lock_fd)
        if file_identity(str(self.lock_path)) == (locked.st_dev, locked.st_ino):
            return True
        os.close(self.lock_fd)
        if not self._lock():
            log.warning("the cache folder %s was replaced and another job server serves it now: stopping",
                        self.config.cache_dir)
            return False
        log.warning("the cache folder %s was deleted or replaced: job server lock and board made anew",
                    self.config.cache_dir)
        self._say("ready")
        return True

    @property
    def lock_path(self) -> Path:
        return self.config.board_folder / "server.lock"

    def _stop(self, _signal, _frame) -> None:
        self.stopping = True

    def _say(self, phase: str, detail: str = "") -> None:
        running = {lane: sum(1 for _, job_lane, _ in self.running.values() if job_lane == lane) for lane in LANES}
        self.board.set_server(ServerState(os.getpid(), self.created, phase, detail, time.time(), running))

    def _warm_up(self) -> None:
        """What every job needs, before the first one: the dashboard's code (a job's callback comes with
        references to it), and for projections UMAP's compiled code. Uploads are prepared later, while idle."""
        started = time.monotonic()
        self._say("warming", "importing the dashboard")
        import dashboard.app  # noqa: F401

        if "projections" in self.config.preload:
            self._say("warming", "loading UMAP's compiled code")
            from dashboard.analysis.projection import warm_up

            warm_up()
        self._say("ready")
        log.info("job server ready in %.1f s (pid %d, %d slot(s) per lane, %d for index runs)",
                 time.monotonic() - started, os.getpid(), self.config.slots, self.config.index_slots)

    def _start_jobs(self) -> int:
        started = 0
        for lane in LANES:
            while sum(1 for _, job_lane, _ in self.running.values() if job_lane == lane) < self.config.slots_of(lane):
                taken = self.board.take(lane)
                if taken is None:
                    break
                self._fork(lane, *taken)
                started += 1
        if started:
            self._say("ready")
        return started

    def _fork(self, lane: str, token: str, payload: bytes) -> None:
        pid = os.fork()
        if pid == 0:  # the job
            code = 1
            try:
                self._run_job(lane, payload)
                code = 0
            except BaseException:  # a job must never return into the server's loop
                log.exception("background job %s failed before its callback could report", token)
            finally:
                os._exit(code)
        self.running[pid] = (token, lane, time.monotonic())
        if not self.board.started(token, pid):  # cancelled while it was being forked
            kill_tree(pid)
        log.info("job %s started in the %s lane (pid %d)", token[:8], lane, pid)

    def _run_job(self, lane: str, payload: bytes) -> None:
        self._become_child()
        os.nice(JOB_NICENESS)
        threads = self.config.job_threads(lane)
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        job_fn, args = load_job(payload, {"query-models": self.models})
        job_fn(*args)

    def _become_child(self) -> None:
        """In a forked child: let go of what is the server's."""
        os.close(self.lock_fd)  # the lock is the server's alone: a child outliving it must not keep it
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)

    def _prepare_matrices(self) -> None:
        """Every few seconds, look for datasets whose generation changed since their shared matrix was prepared,
        and prepare those in a child process, so the first page to open a dataset after a start or
        a re-index maps the file instead of building it."""
        if self.preparing is not None or time.monotonic() < self.matrix_check_at:
            return
        self.matrix_check_at = time.monotonic() + MATRIX_CHECK_S
        try:
            generations = dataset_generations_of(self.config.db_url)
        except Exception as error:  # noqa: BLE001  a database that cannot be read now may be readable later
            log.debug("cannot read the datasets' generations: %s", error)
            return
        changed = {name: generation for name, generation in generations.items()
                   if self.prepared.get(name) != generation}
        if not changed:
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._become_child()  # not niced: pages that open the dataset meanwhile wait for its file
                from dashboard.data import DatasetStore

                store = DatasetStore(self.config.db_url, self.config.cache_dir)
                for name in changed:
                    store.view(name)
                code = 0
            except BaseException:  # a child must never return into the server's loop
                log.exception("preparing the shared matrices of %s failed", ", ".join(changed))
            finally:
                os._exit(code)
        self.preparing = pid, changed

    def _reap(self) -> None:
        while self.running or self.preparing:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.preparing and pid == self.preparing[0]:
                self.prepared.update(self.preparing[1])  # done, or failed: tried again at the next change
                self.preparing = None
                continue
            found = self.running.pop(pid, None)
            if found is not None:
                token, _lane, started = found
                self.board.ended(token)
                log.info("job %s ended after %.1f s (%s)", token[:8], time.monotonic() - started,
                         "ok" if os.waitstatus_to_exitcode(status) == 0 else f"status {status}")
                self._say("ready")

    def _prepare_uploads(self) -> None:
        """One step at a time, while no job runs: import torch, then build the upload models of the newest datasets
        (and look again every MODEL_CHECK_S), so an upload job embeds at once. A job that arrives meanwhile waits
        for the step to end, and its page says so."""
        if "models" not in self.config.preload:
            return
        if "torch" not in sys.modules:
            self._say("busy", "importing torch")
            import torch

            torch.set_num_threads(1)
            self._say("ready")
            return
        if time.monotonic() < self.model_check_at:
            return
        self.model_check_at = time.monotonic() + MODEL_CHECK_S
        import torch

        if torch.cuda.is_available():  # a CUDA context must not be made before a fork: jobs build their own
            return
        from dashboard.query_image import QueryRefused, newest_recorded_models

        try:
            wanted = newest_recorded_models(self.config.db_url, UPLOAD_MODELS)
        except Exception as error:  # noqa: BLE001  a database that cannot be read now may be readable later
            log.warning("cannot read the datasets' models: %s", error)
            return
        for recorded in reversed(wanted):  # oldest first: the newest ends up kept longest
            if recorded.key in self.unbuildable or self.models.holds(recorded):
                continue
            self._say("busy", f"loading {recorded.name} for uploads")
            started = time.monotonic()
            try:
                self.models.get(recorded)
                log.info("upload model %s at %d px ready in %.1f s", recorded.name, recorded.image_size,
                         time.monotonic() - started)
            except QueryRefused as error:
                self.unbuildable.add(recorded.key)
                log.warning("upload model not kept: %s", error)
            self._say("ready")

    def _end_jobs(self) -> None:
        for pid in [*self.running, *([self.preparing[0]] if self.preparing else [])]:
            kill_tree(pid)
        self._reap()
        log.info("job server stopped")


def dataset_generations_of(db_url: str) -> dict[str, int]:
    """Every dataset's generation, read on a connection opened for that alone (none is kept across a fork)."""
    from db.engine import open_database

    database = open_database(db_url, readonly=True)
    try:
        with database.session() as session:
            return dataset_generations(session)
    finally:
        database.dispose()


def kill_tree(pid: int) -> None:
    """End a job's process and every process it started."""
    try:
        process = psutil.Process(pid)
        for child in process.children(recursive=True):
            child.kill()
        process.kill()
    except psutil.Error:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The dashboard's job server (started by dinoscope serve).")
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--index-slots", type=int, default=1)
    parser.add_argument("--preload", default=",".join(PRELOADS))
    options = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO"), format=LOG_FORMAT)
    from db.engine import DB_ENV, resolve_url

    preload = tuple(name for name in options.preload.split(",") if name)
    config = JobServerConfig(options.cache_dir.resolve(), resolve_url(os.environ.get(DB_ENV)), options.slots,
                             preload, options.index_slots)
    JobServer(config).serve()


if __name__ == "__main__":
    main()
