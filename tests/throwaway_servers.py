"""The PostgreSQL and Redis servers the tests use: those the environment names when they answer, otherwise
throw-away ones started here from the installed programs, on free loopback ports, stopped and removed afterwards."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from tests.servers import free_port, stop

POSTGRES_ENV = "DINOSCOPE_TEST_POSTGRES"
DEFAULT_TEST_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_ENV = "DINOSCOPE_TEST_REDIS"
# A Redis database of the tests' own (others may use the server): the tests flush this one and no other.
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/5"
# Where Debian's postgresql package puts the server's programs (off the PATH), one folder per major version.
DEBIAN_POSTGRES = Path("/usr/lib/postgresql")

log = logging.getLogger(__name__)


class NoServer(Exception):
    """The configured server does not answer, and none could be started here."""


def postgres_failure(url: str) -> str | None:
    """Why the PostgreSQL database at `url` cannot be used, or None when it answers."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    engine = create_engine(url)
    try:
        engine.connect().close()
    except OperationalError as error:
        return str(error.orig).strip().splitlines()[0]
    finally:
        engine.dispose()
    return None


def redis_failure(url: str) -> str | None:
    """Why the Redis database at `url` cannot be used, or None when it answers."""
    from dashboard.jobs import BrokerError, check_redis

    try:
        check_redis(url, timeout_s=1.0)
    except BrokerError as error:
        return str(error)
    return None


@contextmanager
def postgres_for_tests(url: str) -> Iterator[str]:
    """`url` when its server answers, else the maintenance database of a throw-away server (user `postgres`, trust
    authentication) for the block."""
    from sqlalchemy.engine import make_url

    from db.engine import display_url

    failure = postgres_failure(url)
    if failure is None:
        yield url
        return
    with throwaway_postgres() as port:
        log.warning("no PostgreSQL at %s (%s): the tests use their own on port %d", display_url(url), failure, port)
        yield make_url(url).set(host="127.0.0.1", port=port, username="postgres", password=None,
                                database="postgres").render_as_string(hide_password=False)


def database_after(url: str, offset: int) -> str:
    """The Redis URL of the database `offset` numbers after that of `url` (0 when it names none)."""
    parts = urlsplit(url)
    number = int(parts.path.strip("/") or 0) + offset
    return parts._replace(path=f"/{number}").geturl()


@contextmanager
def redis_for_tests(url: str) -> Iterator[str]:
    """`url` when its server answers, else the same database number on a throw-away server for the block."""
    failure = redis_failure(url)
    if failure is None:
        yield url
        return
    with throwaway_redis() as port:
        log.warning("%s: the tests use their own Redis on port %d", failure, port)
        yield f"redis://127.0.0.1:{port}{urlsplit(url).path}"


@contextmanager
def throwaway_postgres() -> Iterator[int]:
    """A new PostgreSQL cluster in a temporary folder, served on a free loopback port (returned) for the block.
    PostgreSQL refuses to run as root: as root, it runs as the `postgres` user, who owns the folder."""
    programs = postgres_programs()
    as_owner = _postgres_owner() if os.geteuid() == 0 else {}
    folder = Path(tempfile.mkdtemp(prefix="dinoscope-test-postgres-"))
    try:
        if as_owner:
            os.chown(folder, as_owner["user"], as_owner["group"])
        initdb = subprocess.run(
            [programs / "initdb", "-D", folder / "data", "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--no-locale", "--no-sync"], cwd=folder, capture_output=True, text=True, check=False, **as_owner)
        if initdb.returncode:
            raise NoServer(f"initdb could not make a PostgreSQL cluster in {folder}: {initdb.stderr.strip()}")
        port = free_port()
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        # Durability settings off: the cluster is thrown away. SIGINT is PostgreSQL's fast shutdown (SIGTERM's
        # waits for every client to disconnect).
        with _running([programs / "postgres", "-D", folder / "data", "-p", str(port), "-k", folder,
                       "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
                       "-c", "synchronous_commit=off"],
                      folder / "server.log", lambda: postgres_failure(url) is None, signal.SIGINT,
                      cwd=folder, **as_owner):
            yield port
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def throwaway_redis() -> Iterator[int]:
    """A Redis server that keeps nothing on disk, on a free loopback port (returned) for the block."""
    program = shutil.which("redis-server")
    if program is None:
        raise NoServer("redis-server is not installed (Debian: apt-get install redis-server)")
    folder = Path(tempfile.mkdtemp(prefix="dinoscope-test-redis-"))
    try:
        port = free_port()
        with _running([program, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                       "--dir", folder], folder / "server.log",
                      lambda: redis_failure(f"redis://127.0.0.1:{port}/0") is None, signal.SIGTERM, cwd=folder):
            yield port
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def postgres_programs() -> Path:
    """The folder of PostgreSQL's `initdb` and `postgres`: that of the `initdb` on the PATH, else Debian's newest."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted((path.parent for path in DEBIAN_POSTGRES.glob("*/bin/initdb")),
                         key=lambda folder: float(folder.parent.name), reverse=True)
    for folder in candidates:
        if (folder / "postgres").is_file():
            return folder
    raise NoServer("PostgreSQL's server programs (initdb, postgres) are not installed "
                   "(Debian: apt-get install postgresql)")


def _postgres_owner() -> dict:
    """subprocess arguments that run a program as the `postgres` user."""
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise NoServer("PostgreSQL does not run as root, and there is no `postgres` user to run it as "
                       "(Debian's postgresql package makes one)") from None
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


@contextmanager
def _running(command: list, log_path: Path, ready: Callable[[], bool], stop_signal: int, timeout_s: float = 60,
             **popen) -> Iterator[subprocess.Popen]:
    """`command` in its own process for the block, once `ready()`; stopped with `stop_signal` afterwards."""
    with log_path.open("w") as output:
        process = subprocess.Popen([str(part) for part in command], stdout=output, stderr=subprocess.STDOUT, **popen)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if process.poll() is not None:
                raise NoServer(f"{command[0]} stopped (exit {process.returncode}): {log_path.read_text().strip()}")
            if time.monotonic() > deadline:
                raise NoServer(f"{command[0]} did not answer in {timeout_s} s: {log_path.read_text().strip()}")
            time.sleep(0.1)
        yield process
    finally:
        stop(process, sig=stop_signal)
