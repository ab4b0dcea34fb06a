from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from dash.testing.application_runners import ThreadedRunner
from dash.testing.browser import Browser
from dash.testing.composite import DashComposite
from dash.testing.wait import until
from selenium.common.exceptions import WebDriverException
from sqlalchemy.orm import Session
from werkzeug.serving import WSGIRequestHandler

from db.engine import open_database
from indexer.cli import main
from tests.servers import CLI

if TYPE_CHECKING:
    from dashboard.data import DatasetView

# The small DINOv2 with registers at a tiny input keeps tests fast; the architecture is the real one.
MODEL = "vit_small_patch14_reg4_dinov2.lvd142m"
IMAGE_SIZE = 56  # 4 x 4 patches of 14 pixels
FAST = ["--model", MODEL, "--image-size", str(IMAGE_SIZE), "--workers", "0", "--quiet"]


def run_cli(*args: str, expect: int = 0, input: str | None = None):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    finally:  # the command sets up logging for its process: the tests' process keeps its own
        root.handlers[:], root.level = handlers, level
    assert result.exit_code == expect, f"exit {result.exit_code}: {result.output}"
    return result


def index_folder(folder: Path, db: str | Path, *extra, expect: int = 0):
    """`dinoscope index` of `folder` into `db` with the test model at random weights."""
    return run_cli("index", folder, "--db", db, "--random-weights", *FAST, *extra, expect=expect)


@contextmanager
def reading(db: str) -> Iterator[Session]:
    """One reader session on a database opened for it alone (a test polls often: no connections left behind)."""
    database = open_database(db, readonly=True)
    try:
        with database.session() as session:
            yield session
    finally:
        database.dispose()


def run_cli_process(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The real `dinoscope` command in its own process (for environment variables read at import, and kills)."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300, check=False, **kwargs,
    )


def hub_snapshot(hub_cache: Path, revision: str, weights_file: Path) -> Path:
    """The test model's weights as snapshot `revision` in a Hugging Face hub cache, made the main one (as
    `hf download timm/MODEL` leaves it); returns the model's folder in the cache."""
    repo = hub_cache / f"models--timm--{MODEL}"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "model.safetensors").symlink_to(weights_file)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return repo


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """A randomly initialised ViT-S/14 saved as timm safetensors at the pretrained 518-pixel geometry."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1234)
    model = timm.create_model(MODEL, pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "vit_small_reg4.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def unlistable(monkeypatch):
    """`unlistable(folder, errno.EACCES)` makes listing `folder` fail as an unreadable folder or a stale mount does
    (by os.scandir: tests may run as root, whom chmod does not stop)."""
    import errno

    failing: dict[Path, int] = {}
    scandir = os.scandir

    def listing(path="."):
        code = failing.get(Path(path).resolve())
        if code is not None:
            raise OSError(code, os.strerror(code), str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", listing)
    return lambda folder, code=errno.EACCES: failing.__setitem__(Path(folder).resolve(), code)


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "index.db"


@pytest.fixture(scope="session")
def postgres_server():
    """An AUTOCOMMIT engine on the maintenance database of the server $DINOSCOPE_TEST_POSTGRES names (default
    postgres@127.0.0.1:5432/test), or of a throw-away one started for the run when that does not answer (see
    tests/throwaway_servers.py). `DINOSCOPE_TEST_POSTGRES=off` skips the PostgreSQL tests."""
    from sqlalchemy import create_engine

    from db.engine import resolve_url
    from tests.throwaway_servers import DEFAULT_TEST_POSTGRES, POSTGRES_ENV, NoServer, postgres_for_tests

    url = os.environ.get(POSTGRES_ENV, DEFAULT_TEST_POSTGRES)
    if url == "off":
        pytest.skip(f"PostgreSQL tests are off ({POSTGRES_ENV}=off)")
    with _or_fail(NoServer, f"or point {POSTGRES_ENV} at a server, or set {POSTGRES_ENV}=off to skip these tests"), \
            postgres_for_tests(resolve_url(url)) as served:
        engine = create_engine(served, isolation_level="AUTOCOMMIT")
        yield engine
        engine.dispose()


@pytest.fixture(scope="session")
def redis_url(worker_number) -> Iterator[str]:
    """The tests' Redis database: $DINOSCOPE_TEST_REDIS (default redis://127.0.0.1:6379/5), or the same database on a
    throw-away server started for the run when that does not answer (see tests/throwaway_servers.py). Each process
    of a parallel run has the next database of its own (its Celery workers take only its tasks; it flushes only its
    own)."""
    from tests.throwaway_servers import DEFAULT_TEST_REDIS, REDIS_ENV, NoServer, database_after, redis_for_tests

    with _or_fail(NoServer, f"or point {REDIS_ENV} at a server"), \
            redis_for_tests(database_after(os.environ.get(REDIS_ENV, DEFAULT_TEST_REDIS), worker_number)) as url:
        yield url


@pytest.fixture(scope="session")
def worker_number(worker_id) -> int:
    """This process's number in a parallel run (pytest-xdist's gw0, gw1...), 0 in a run of one process."""
    return int(worker_id.removeprefix("gw")) if worker_id.startswith("gw") else 0


@contextmanager
def _or_fail(error: type[Exception], advice: str) -> Iterator[None]:
    """The tests that need a server fail with one line saying why there is none."""
    try:
        yield
    except error as reason:
        pytest.fail(f"{reason}; {advice}", pytrace=False)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a new, empty PostgreSQL database of this test's own, dropped afterwards."""
    import uuid

    name = f"dinoscope_t_{uuid.uuid4().hex[:12]}"
    with postgres_server.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield postgres_server.url.set(database=name).render_as_string(hide_password=False)
    with postgres_server.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """`--db` for a new database, once a SQLite file and once a PostgreSQL database."""
    return str(tmp_path / "index.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")


# For a test whose SQL is that of another test run on both databases (the same statements, no other concurrency):
# a second run on PostgreSQL would test nothing new.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


os.environ.setdefault("DASH_TEST_CHROMEPATH", "/usr/bin/chromium")
# Job servers started by tests warm nothing up ahead: a test runs a job or two, and a warm-up would only compete with
# the other tests for the processors. The tests of the warm-up ask for it.
os.environ.setdefault("DINOSCOPE_PRELOAD", "")


def pytest_setup_options():
    """Chromium options for dash[testing]: no background traffic on a machine without a network."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    for flag in ("--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic", "--window-size=1400,1000"):
        options.add_argument(flag)
    return options


def _one_request_per_connection(connections: set[socket.socket]) -> type[WSGIRequestHandler]:
    """Every test's app serves the same origin (see `dash_duo`): the one Chromium must keep no connection to a
    test's app, which the next test's app would find answered by the old one. One request per connection, and the
    connections still open when the app stops (Chromium opens some ahead) are recorded here to be shut."""

    class OneRequestPerConnection(WSGIRequestHandler):
        protocol_version = "HTTP/1.0"

        def setup(self) -> None:
            super().setup()
            connections.add(self.connection)

        def finish(self) -> None:
            connections.discard(self.connection)
            super().finish()

    return OneRequestPerConnection


@pytest.fixture
def dash_thread_server() -> Iterator[ThreadedRunner]:
    """dash[testing]'s server of a test's app in a thread, whose connections left open are shut once it stops."""
    connections: set[socket.socket] = set()
    with ThreadedRunner() as runner:
        runner.request_handler = _one_request_per_connection(connections)
        yield runner
        # Before the runner stops the app: it stops every thread the app started by raising SystemExit in it, which
        # a thread waiting on an open connection would raise only once the connection closes, in a later test.
        _shut(connections)
        until(lambda: not connections, timeout=10)
    _shut(connections)  # any opened meanwhile


def _shut(connections: set[socket.socket]) -> None:
    for connection in list(connections):
        with suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)


class _OneChromium(DashComposite):
    """dash[testing]'s browser on the one Chromium of this test process (see `dash_duo`)."""

    def __init__(self, driver, server, download_path: str, port: int, **options) -> None:
        self._shared_driver = driver
        self._port = port
        super().__init__(server, browser="chrome", headless=True, download_path=download_path, **options)
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": download_path})

    def get_webdriver(self):
        return self._shared_driver

    def start_server(self, app, navigate=True, **options) -> None:
        super().start_server(app, navigate, port=self._port, request_handler=self.server.request_handler, **options)

    def __exit__(self, *_exception) -> None:
        """Leave the browser as the next test should find it: on a blank page (no polling of this test's servers),
        without the cookies and stored values of the origins this test opened, its console read."""
        driver = self.driver
        origins = {urlsplit(url)._replace(path="", query="", fragment="").geturl()
                   for url in (driver.current_url, self._url) if url.startswith("http")}
        driver.get("about:blank")
        for origin in origins:
            driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"})
        driver.delete_all_cookies()
        driver.get_log("browser")


@pytest.fixture(scope="session")
def _chromium(request, tmp_path_factory):
    """One headless Chromium for the browser tests of this process: a new one for every test cost about a second of
    both processors each time."""
    browser = Browser("chrome", headless=True, options=request.config.hook.pytest_setup_options(),
                      download_path=str(tmp_path_factory.mktemp("downloads")))
    yield browser
    browser.driver.quit()


BROWSER_PORT_ENV = "DINOSCOPE_TEST_PORT"  # the first process's port for browser tests' apps (default 8050)


@pytest.fixture
def dash_duo(request, dash_thread_server, tmp_path, _chromium, worker_number) -> Iterator[DashComposite]:
    """dash[testing]'s `dash_duo` (an app in a thread, and a browser) on this process's one Chromium, which each
    test finds clean: a blank page, no cookies or stored values, its own download folder. A test that broke the
    browser leaves the next one a new Chromium. Every test's app listens on the same port (one per test process):
    the browser's cache then keeps Dash's and Plotly's scripts compiled from one test to the next, which halves
    what the browser spends on each page opened."""
    if not _answers(_chromium.driver):
        with suppress(WebDriverException):
            _chromium.driver.quit()
        _chromium._driver = _chromium.get_webdriver()
    downloads = tmp_path / "download"
    downloads.mkdir()
    port = int(os.environ.get(BROWSER_PORT_ENV, "8050")) + worker_number
    with _OneChromium(_chromium.driver, dash_thread_server, str(downloads), port) as composite:
        yield composite


def _answers(driver) -> bool:
    try:
        return driver.current_url is not None
    except WebDriverException:
        return False


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory) -> Path:
    """The sample photographs indexed with the real (small) architecture and random weights."""
    root = tmp_path_factory.mktemp("sample-set")
    run_cli("samples", root / "samples")
    db = root / "samples.db"
    run_cli("index", root / "samples", "--db", db, "--random-weights", *FAST)
    return db


@pytest.fixture
def samples(sample_db) -> DatasetView:
    """The indexed sample set as the dashboard reads it."""
    from dashboard.data import DatasetStore

    return DatasetStore(f"sqlite:///{sample_db}").view("samples")


@pytest.fixture
def dashboard_app(sample_db, tmp_path):
    from dashboard.app import create_app
    from dashboard.settings import Settings

    return create_app(Settings(f"sqlite:///{sample_db}", tmp_path / "cache", "test-secret"))


def call_callback(app, output_prefix: str, values: dict, changed: str) -> dict:
    """Post the callback whose output starts with `output_prefix` as the browser does, with inputs and state taken
    from `values` ({component id: value}); returns the response's JSON."""
    output = next(o for o in app.callback_map if o.lstrip(".").startswith(output_prefix))
    spec = app.callback_map[output]

    def filled(items):
        return [{**item, "value": values.get(item["id"])} for item in items]

    response = app.server.test_client().post("/_dash-update-component", json={
        "output": output, "changedPropIds": [changed],
        "outputs": [dict(zip(("id", "property"), part.rsplit(".", 1))) for part in output.strip(".").split("...")],
        "inputs": filled(spec["inputs"]), "state": filled(spec["state"]),
    })
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response.get_json()


@pytest.fixture(params=["diskcache", "celery"])
def background_apps(request, tmp_path):
    """Builds dashboards whose background callbacks run under each manager in turn (see tests.servers)."""
    from tests.servers import BackgroundApps

    apps = BackgroundApps(request.param, tmp_path,
                          request.getfixturevalue("redis_url") if request.param == "celery" else None)
    yield apps
    apps.close()


@pytest.fixture(autouse=True)
def _no_redis_connections_survive_a_test():
    """Close the Redis connections a test left in this process (Dash's Celery manager, Celery control): kombu closes
    them again in every process forked later, such as a DataLoader's decode workers, and that blocks forever."""
    yield
    if "kombu.pools" in sys.modules:
        import multiprocessing.util

        import kombu.pools
        from kombu.resource import Resource

        for pool in list(multiprocessing.util._afterfork_registry.values()):
            if isinstance(pool, Resource):
                pool.force_close_all()
        # Celery apps take their broker pool from kombu's shared groups, keyed by URL: drop the closed ones so the
        # next test's app opens fresh connections instead of failing with "Acquire on closed pool".
        kombu.pools.reset()


def pytest_sessionfinish(session, exitstatus):
    """End background jobs and the fork server that starts them, so nothing keeps the test run from exiting (in each
    process of a parallel run; the process that leads them ends them itself)."""
    import psutil

    if session.config.pluginmanager.has_plugin("dsession"):
        return

    for child in psutil.Process().children(recursive=True):
        child.kill()
