"""Serving for many users: gunicorn workers in a real process, and the warning for an open address."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import psutil
import pytest

from dashboard.serving import is_loopback, needs_login_warning, shared_secret
from dashboard.settings import Settings
from tests.browser import show_tsne
from tests.conftest import run_cli
from tests.servers import (
    PLAIN_SERVE_ENV,
    basic_auth,
    flush_test_redis,
    free_port,
    job_servers,
    start,
    start_worker,
    stop,
    wait_until_healthy,
)


def _get(url: str, user: str | None = None, password: str = ""):
    request = urllib.request.Request(url, headers=basic_auth(user, password) if user else {})
    return urllib.request.urlopen(request, timeout=30)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.0.3", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("dinoscope.example.org", False),
])
def test_only_loopback_addresses_count_as_private(host, loopback):
    assert is_loopback(host) is loopback


def test_the_warning_is_for_an_open_address_without_a_login(tmp_path):
    settings = Settings("sqlite:///x.db", tmp_path)
    assert needs_login_warning("0.0.0.0", settings)
    assert not needs_login_warning("127.0.0.1", settings)
    assert not needs_login_warning("0.0.0.0", Settings("sqlite:///x.db", tmp_path, users_file=tmp_path / "users"))


def test_workers_share_the_configured_secret_or_one_made_once(tmp_path):
    configured = Settings("sqlite:///x.db", tmp_path, "from-the-environment")
    assert shared_secret(configured) == (configured, False)
    made, generated = shared_secret(Settings("sqlite:///x.db", tmp_path))
    assert generated and len(made.secret_key) == 64


def test_gunicorn_workers_serve_pages_and_thumbnails_behind_a_login(sample_db, tmp_path):
    run_cli("users", "add", tmp_path / "users", "alice", "--password-stdin", input="correct horse\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    process = start(["serve", "--workers", "2", "--threads", "4", "--port", port, "--db", sample_db,
                     "--cache-dir", tmp_path / "cache", "--users", tmp_path / "users"], log,
                    env={"DINOSCOPE_SECRET_KEY": "", "DASH_DEBUG": "true"})
    try:
        wait_until_healthy(process, url, log)
        [job_server] = [server.pid for server in job_servers(process.pid)]  # started by the master, beside the workers
        workers = [child for child in psutil.Process(process.pid).children() if child.pid != job_server]
        assert len(workers) == 2

        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(f"{url}/gallery?dataset=samples")
        assert refused.value.code == 401
        with _get(f"{url}/gallery?dataset=samples", "alice", "correct horse") as page:
            assert page.status == 200 and page.headers["Server"].startswith("gunicorn")
            html = page.read().decode()
        config = json.loads(re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', html,
                                      re.DOTALL).group(1))
        assert config["ui"] is False and config["props_check"] is False  # not Dash's debug mode
        with _get(f"{url}/thumbnails/1/gallery.jpg", "alice", "correct horse") as thumbnail:
            assert thumbnail.headers["Content-Type"] == "image/jpeg" and thumbnail.read(2) == b"\xff\xd8"
    finally:
        status, survivors = stop(process)
    assert status == 0 and survivors == 0
    output = log.read_text()
    assert f"dinoscope dashboard on {url}/ (gunicorn, 2 workers of 4 threads" in output
    assert "DINOSCOPE_SECRET_KEY is not set: the workers share a key made for this run" in output
    assert "WITHOUT A LOGIN" not in output and "Traceback" not in output
    assert not any(worker.is_running() for worker in workers)


@pytest.mark.parametrize(("celery", "host"), [(False, "0.0.0.0"), (True, "127.0.0.1")], ids=["diskcache", "celery"])
def test_background_callbacks_finish_across_gunicorn_workers(dash_duo, sample_db, tmp_path, celery, host, request):
    """The browser's polls for a t-SNE land on either worker: both must read the job's handle (shared secret) and
    its result (shared cache folder), with jobs beside the server or in a `dinoscope worker`. Served on every
    address without a login, the server warns loudly; on the loopback address, it does not."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    redis_url = request.getfixturevalue("redis_url") if celery else None
    worker = start_worker(redis_url, sample_db, tmp_path / "cache", tmp_path / "worker.log") if celery else None
    process = start(["serve", "--host", host, "--workers", "2", "--port", port, "--db", sample_db, "--cache-dir",
                     tmp_path / "cache", *(["--celery", redis_url] if celery else [])], log,
                    env=PLAIN_SERVE_ENV)
    try:
        wait_until_healthy(process, url, log)
        show_tsne(dash_duo, url, "samples", perplexity=4)
        assert dash_duo.get_logs() == []
        assert len(job_servers(process.pid)) == (0 if celery else 1)  # one for the whole server, not one per worker
    finally:
        stop(process)
        if worker:
            stop(worker)
            flush_test_redis(redis_url)
    output = log.read_text()
    assert "Traceback" not in output
    assert ("WARNING: dinoscope serves 0.0.0.0 WITHOUT A LOGIN" in output and "dinoscope users add" in output) == (
        host == "0.0.0.0")
    if worker:
        assert "succeeded" in (tmp_path / "worker.log").read_text()  # the worker computed it, not the server
