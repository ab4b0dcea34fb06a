"""The login against guessing: an unknown user costs as much as a wrong password, failed logins are limited per
client address and per user name and logged, and guessers cannot starve the requests of logged-in users."""

from __future__ import annotations

import http.client
import logging
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest
from dash import Dash, html
from dash.testing.wait import until
from werkzeug.security import generate_password_hash

from dashboard.auth import protect, read_users
from dashboard.login_limits import LoginLimits
from dashboard.password_checks import PasswordChecks
from dashboard.settings import LoginSettings, Settings
from tests.conftest import run_cli
from tests.servers import basic_auth, free_port, start, stop, wait_until_healthy

CHEAP_HASH = "pbkdf2:sha256:1000"  # a thousandth of a second, for tests that fail many logins
PASSWORDS = {"alice": "correct horse", "bob": "battery staple"}
MANY = "100000/minute"  # a limit no test reaches
PAGE = "/_dash-layout"


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("tiny") / "tiny.db"
    run_cli("synthetic", "tiny", "--count", "20", "--db", db)
    return db


def _users_file(path: Path, method: str = CHEAP_HASH) -> Path:
    path.write_text("".join(f"{user}:{generate_password_hash(password, method=method)}\n"
                            for user, password in PASSWORDS.items()))
    return path


@pytest.fixture
def make_server(tiny_db, tmp_path):
    """The dashboard's Flask server behind a login limited as given, its users' hashes made with `method`."""
    from dashboard.app import create_app

    def make(method: str = CHEAP_HASH, **login):
        users = _users_file(tmp_path / "users", method)
        return create_app(Settings(f"sqlite:///{tiny_db}", tmp_path / "cache", "test-secret", users_file=users,
                                   login=LoginSettings(**login))).server
    return make


def _client(server, address: str):
    """A browser at `address`: its own cookies."""
    client = server.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def _log_in(client, user: str, password: str | None = None):
    return client.get(PAGE, headers=basic_auth(user, PASSWORDS.get(user, "") if password is None else password))


@pytest.mark.parametrize("method", ["scrypt", "pbkdf2:sha256:100000"])
def test_an_unknown_user_is_refused_as_slowly_as_a_wrong_password(make_server, method):
    """Answered at once, an unknown name told a guesser which names exist (4 ms against 479 ms)."""
    client = _client(make_server(method, failures_per_address=MANY, failures_per_user=MANY), "10.0.0.1")
    seconds: dict[str, list[float]] = {"alice": [], "mallory": []}
    for attempt in range(5):
        for user, taken in seconds.items():
            started = time.perf_counter()
            assert _log_in(client, user, f"guess {attempt}").status_code == 401
            taken.append(time.perf_counter() - started)
    ratio = statistics.median(seconds["mallory"]) / statistics.median(seconds["alice"])
    assert 0.5 < ratio < 2, seconds


def test_an_address_is_refused_after_its_failed_logins_and_learns_nothing_more(make_server):
    server = make_server(failures_per_address="3/minute", failures_per_user=MANY)
    guesser = _client(server, "10.0.1.66")
    for user, guess in (("alice", "123456"), ("bob", "password"), ("mallory", "qwerty")):
        assert _log_in(guesser, user, guess).status_code == 401
    refused = _log_in(guesser, "alice", "letmein")
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    assert b"Too many failed logins" in refused.data
    # Even the right password is refused without a check: a locked-out guesser must not learn that it guessed.
    assert _log_in(guesser, "bob").status_code == 429

    assert _log_in(_client(server, "10.0.1.7"), "bob").status_code == 200  # another client logs in
    assert _log_in(guesser, "bob").status_code == 429  # bob's password, now known to this process, tells nothing


def test_a_user_is_refused_after_failed_logins_from_any_address(make_server):
    server = make_server(failures_per_address=MANY, failures_per_user="3/minute")
    alices_browser = _client(server, "10.0.2.1")
    assert _log_in(alices_browser, "alice").status_code == 200
    for number in range(3):  # guessers at three addresses
        assert _log_in(_client(server, f"10.0.2.{100 + number}"), "alice", f"guess {number}").status_code == 401
    refused = _log_in(_client(server, "10.0.2.200"), "alice")
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    # The browser that logged in before keeps working (its session cookie says so); bob is not concerned.
    assert _log_in(alices_browser, "alice").status_code == 200
    assert _log_in(_client(server, "10.0.2.200"), "bob").status_code == 200
    # Unknown names are held back alike: a refusal does not tell which names exist.
    for number in range(3):
        assert _log_in(_client(server, f"10.0.2.{110 + number}"), "mallory", "guess").status_code == 401
    assert _log_in(_client(server, "10.0.2.201"), "mallory", "guess").status_code == 429


def test_failed_logins_are_logged_with_the_user_and_address_but_not_the_password(make_server, caplog):
    client = _client(make_server(failures_per_address=MANY, failures_per_user="2/minute"), "10.0.3.4")
    with caplog.at_level(logging.WARNING, logger="dashboard.auth"):
        assert _log_in(client, "alice", "Tr0ub4dor&3").status_code == 401
        assert _log_in(client, "alice", "hunter2").status_code == 401
        assert _log_in(client, "alice").status_code == 429
    messages = [record.getMessage() for record in caplog.records if record.name == "dashboard.auth"]
    assert messages == ["failed login as 'alice' from 10.0.3.4", "failed login as 'alice' from 10.0.3.4",
                        "too many failed logins: user 'alice' is refused for a while"]
    assert not any(word in caplog.text for word in ("Tr0ub4dor", "hunter2", "correct horse"))


def test_unreadable_login_limits_stop_serve_with_one_line(tmp_path):
    refused = run_cli("serve", "--users", _users_file(tmp_path / "users"), "--db", tmp_path / "none.db",
                      "--login-limits-user", "5 per fortnight", expect=1)
    assert "failed logins per user: '5 per fortnight' is not a list of limits such as '10/minute;100/hour'" \
        in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def test_a_wsgi_server_reads_the_login_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DINOSCOPE_LOGIN_LIMITS_USER", "3/minute")
    monkeypatch.setenv("DINOSCOPE_LOGIN_CHECKS", "4")
    monkeypatch.setenv("DINOSCOPE_TRUSTED_PROXIES", "1")
    settings = Settings.from_env("sqlite:///x.db", tmp_path)
    assert settings.login == LoginSettings(failures_per_user="3/minute", checks=4) and settings.trusted_proxies == 1


def test_behind_a_trusted_proxy_clients_are_told_apart_by_the_address_it_forwards(tiny_db, tmp_path):
    from dashboard.app import create_app

    def server(trusted_proxies: int):
        return create_app(Settings(f"sqlite:///{tiny_db}", tmp_path / "cache", "test-secret",
                                   users_file=_users_file(tmp_path / "users"), trusted_proxies=trusted_proxies,
                                   login=LoginSettings(failures_per_address="1/minute", failures_per_user=MANY))).server

    def through_proxy(client, user, password, forwarded_for):
        return client.get(PAGE, headers={**basic_auth(user, password), "X-Forwarded-For": forwarded_for})

    behind_nginx = server(1)
    assert through_proxy(_client(behind_nginx, "127.0.0.1"), "alice", "guess", "203.0.113.9").status_code == 401
    assert through_proxy(_client(behind_nginx, "127.0.0.1"), "alice", "guess", "203.0.113.9").status_code == 429
    assert through_proxy(_client(behind_nginx, "127.0.0.1"), "bob", PASSWORDS["bob"], "198.51.100.4").status_code \
        == 200
    # Without a trusted proxy the header is the client's own word, and claiming another address changes nothing.
    direct = server(0)
    assert through_proxy(_client(direct, "192.0.2.1"), "alice", "guess", "203.0.113.1").status_code == 401
    assert through_proxy(_client(direct, "192.0.2.1"), "alice", "guess", "203.0.113.2").status_code == 429


def test_the_workers_share_their_count_of_failures_in_redis(redis_url):
    settings = LoginSettings(failures_per_address="2/minute", failures_per_user=MANY)
    first, second = LoginLimits(settings, redis_url), LoginLimits(settings, redis_url)  # two workers
    # Names of this run's own (other tests share the database; the counts expire with their window).
    address, other_address, alice = (f"{name}-{secrets.token_hex(4)}" for name in ("address", "other", "alice"))
    assert first.count_failure(address, alice) == []
    assert second.wait_s(address, alice) == 0
    assert second.count_failure(address, "bob") == [f"address {address}"]
    assert 0 < first.wait_s(address, "carol") <= 60
    assert first.wait_s(other_address, alice) == 0


def test_an_unreachable_redis_refuses_new_logins_with_503_not_an_error(caplog, tmp_path):
    app = Dash(__name__)
    app.layout = html.Div("protected")
    closed = f"redis://127.0.0.1:{free_port()}/0"
    protect(app, read_users(_users_file(tmp_path / "users")), "/health", LoginSettings(), closed)
    app.server.secret_key = "test-secret"
    with caplog.at_level(logging.ERROR, logger="dashboard.auth"):
        refused = _log_in(_client(app.server, "10.0.5.1"), "alice")
    assert refused.status_code == 503 and b"Logins cannot be checked at the moment" in refused.data
    assert "cannot count failed logins in Redis" in caplog.text


def test_password_checks_run_a_few_at_once_and_identical_credentials_share_one():
    checks = PasswordChecks(1)
    release = threading.Event()
    called: list[str] = []
    answers: dict[str, bool | None] = {}

    def check(name: str, passed: bool):
        def run():
            called.append(name)
            release.wait(10)
            return passed
        return run

    def attempt(name: str, credentials: str, passed: bool = False) -> threading.Thread:
        thread = threading.Thread(target=lambda: answers.update({name: checks.run(credentials, check(name, passed))}))
        thread.start()
        return thread

    threads = [attempt("alice", "alice's credentials", passed=True)]
    until(lambda: called == ["alice"], timeout=10, poll=0.01)
    threads.append(attempt("alice again", "alice's credentials"))  # waits for the first check's answer
    until(lambda: _blocked(threads[-1]), timeout=10, poll=0.01)
    threads.append(attempt("bob", "bob's credentials"))  # waits its turn: the one place in line
    until(lambda: _blocked(threads[-1]), timeout=10, poll=0.01)
    assert checks.run("mallory's credentials", check("mallory", False)) is None  # refused at once, not checked
    release.set()
    for thread in threads:
        thread.join(10)
    assert answers == {"alice": True, "alice again": True, "bob": False}
    assert sorted(called) == ["alice", "bob"]


def _blocked(thread: threading.Thread) -> bool:
    """Whether `thread` waits on a condition or an event now."""
    frame = sys._current_frames().get(thread.ident)
    return frame is not None and frame.f_code.co_name == "wait"


def test_guessers_do_not_slow_down_a_logged_in_user(tmp_path, tiny_db):
    """30 clients guessing at once made a logged-in user's requests take 5 s; the limits per address and user are
    raised out of reach here, as for guessers at many addresses."""
    users = _users_file(tmp_path / "users", "pbkdf2")  # a quarter of a second a check, as a slow server's scrypt
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    process = start(["serve", "--workers", "1", "--threads", "8", "--port", port, "--db", tiny_db, "--cache-dir",
                     tmp_path / "cache", "--users", users, "--login-limits-address", MANY, "--login-limits-user",
                     MANY], log)
    stop_guessing = threading.Event()
    statuses: list[int] = []

    def guess(number: int) -> None:  # as alice or as a name of its own, a new password each time
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        attempt = 0
        while not stop_guessing.is_set():
            attempt += 1
            connection.request("GET", PAGE, headers=basic_auth("alice" if number % 2 else f"user{number}",
                                                                f"guess {number}.{attempt}"))
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()

    try:
        wait_until_healthy(process, url, log)
        alice = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        cookie = _timed_get(alice, "alice")[1]  # logged in before the guessers come
        guessers = [threading.Thread(target=guess, args=(number,)) for number in range(30)]
        for thread in guessers:
            thread.start()
        # Under way: some guesses checked (and failed), others refused at once while the checks are taken.
        until(lambda: statuses.count(401) >= 4 and statuses.count(429) >= 30, timeout=60)
        seconds = [_timed_get(alice, "alice", cookie)[0] for _ in range(10)]
        stop_guessing.set()
        for thread in guessers:
            thread.join(30)
    finally:
        stop_guessing.set()
        stop(process)
    assert max(seconds) < 1, seconds
    assert "Traceback" not in log.read_text()


def _timed_get(connection: http.client.HTTPConnection, user: str, cookie: str = "") -> tuple[float, str]:
    started = time.perf_counter()
    connection.request("GET", PAGE, headers={**basic_auth(user, PASSWORDS[user]), "Cookie": cookie})
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    return time.perf_counter() - started, (response.getheader("Set-Cookie") or cookie).split(";")[0]



def test_a_browser_that_logged_in_is_recognised_by_every_worker_until_its_password_changes(
        make_server, monkeypatch, tiny_db, tmp_path):
    from dashboard.app import create_app

    first_worker = make_server()
    second_worker = create_app(Settings(f"sqlite:///{tiny_db}", tmp_path / "cache", "test-secret",
                                        users_file=tmp_path / "users")).server  # the same secret and users file
    browser = _client(first_worker, "10.0.4.1")
    assert _log_in(browser, "alice").status_code == 200
    cookie = browser.get_cookie("session")
    assert cookie is not None

    def no_check(*_args):
        raise AssertionError("a password hash was checked")

    monkeypatch.setattr("dashboard.auth.check_password_hash", no_check)
    same_browser = _client(second_worker, "10.0.4.1")
    same_browser.set_cookie("session", cookie.value)
    assert _log_in(same_browser, "alice").status_code == 200  # no check on the second worker
    monkeypatch.undo()
    assert _log_in(same_browser, "alice", "another guess").status_code == 401  # the cookie proves only its password

    monkeypatch.setitem(PASSWORDS, "alice", "a new password")
    restarted = make_server()  # the users file now holds alice's new password
    monkeypatch.undo()
    after = _client(restarted, "10.0.4.1")
    after.set_cookie("session", cookie.value)
    assert _log_in(after, "alice").status_code == 401  # the old password's proof ended with it


def test_a_login_beyond_the_checks_under_way_gets_a_page_that_tries_again(make_server, monkeypatch):
    server = make_server(checks=1)
    release = threading.Event()
    real_check = __import__("dashboard.auth", fromlist=["check_password_hash"]).check_password_hash

    def slow_check(password_hash, password):
        release.wait(10)
        return real_check(password_hash, password)

    monkeypatch.setattr("dashboard.auth.check_password_hash", slow_check)
    answers = []
    first = threading.Thread(target=lambda: answers.append(_log_in(_client(server, "10.0.5.1"), "alice").status_code))
    first.start()
    second = threading.Thread(target=lambda: answers.append(_log_in(_client(server, "10.0.5.2"), "bob").status_code))
    until(lambda: _blocked(first), timeout=10, poll=0.01)
    second.start()  # waits for the one check under way: the one place in line
    until(lambda: _blocked(second), timeout=10, poll=0.01)
    busy = _log_in(_client(server, "10.0.5.3"), "bob")
    release.set()
    first.join(10)
    second.join(10)
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    assert b'http-equiv="refresh" content="1"' in busy.data and b"tries again in a second" in busy.data
    assert sorted(answers) == [200, 200]
