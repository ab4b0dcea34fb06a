"""The tests' own PostgreSQL and Redis servers, started when the configured ones do not answer."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import create_engine

from tests import throwaway_servers
from tests.throwaway_servers import NoServer, postgres_failure, postgres_for_tests, redis_failure, redis_for_tests


def test_a_redis_that_answers_is_used_as_configured(redis_url):
    with redis_for_tests(redis_url) as used:
        assert used == redis_url


def test_without_a_redis_at_the_configured_url_a_throwaway_one_serves_that_database_until_the_end():
    closed = "redis://127.0.0.1:1/7"  # nothing listens on port 1
    with redis_for_tests(closed) as used:
        assert used != closed and used.endswith("/7") and redis_failure(used) is None
        with redis.Redis.from_url(used) as client:
            client.set("written", "here")
            assert client.client_info()["db"] == 7
    assert "cannot reach Redis" in redis_failure(used)


def test_without_a_postgresql_at_the_configured_url_a_throwaway_one_serves_until_the_end(caplog):
    closed = "postgresql+psycopg://someone:secret@127.0.0.1:1/test"
    with caplog.at_level(logging.WARNING, logger="tests.throwaway_servers"), postgres_for_tests(closed) as used:
        assert used != closed and postgres_failure(used) is None
        engine = create_engine(used, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql('CREATE DATABASE "made_here"')  # as the tests' fixtures do
            folder = Path(connection.exec_driver_sql("SHOW data_directory").scalar())
            server = psutil.Process(connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()).parent()
        engine.dispose()
        # PostgreSQL refuses to run as root: then it runs as the `postgres` user.
        assert server.username() == ("postgres" if os.geteuid() == 0 else psutil.Process().username())
        assert folder.is_dir()
    assert postgres_failure(used) is not None and not server.is_running()
    assert not folder.exists()
    assert "no PostgreSQL at postgresql+psycopg://someone:***@127.0.0.1:1/test" in caplog.text
    assert "secret" not in caplog.text


def test_missing_server_programs_are_named_with_their_package(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(throwaway_servers, "DEBIAN_POSTGRES", tmp_path)
    with pytest.raises(NoServer, match=r"redis-server is not installed \(Debian: apt-get install redis-server\)"), \
            redis_for_tests("redis://127.0.0.1:1/5"):
        pass
    with pytest.raises(NoServer, match=r"initdb, postgres\) are not installed \(Debian: apt-get install postgresql\)"), \
            postgres_for_tests("postgresql+psycopg://postgres@127.0.0.1:1/test"):
        pass
