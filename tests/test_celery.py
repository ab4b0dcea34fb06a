"""Background-callback managers, and Celery with Redis: the worker's entry points and their errors. The callbacks
themselves run under both managers in the clustering page's browser tests (tests/test_clustering_page.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from dash import CeleryManager

from dashboard import jobs
from dashboard.settings import Settings
from tests.conftest import run_cli

LIST_TASKS = ("from dashboard.celery_app import app; "
              "print(*[name for name in app.tasks if name.startswith('background_callback_')])")


def test_the_settings_choose_the_managers(tmp_path, redis_url):
    managers = jobs.background_managers(Settings("sqlite:///x.db", tmp_path))
    assert all(isinstance(manager, jobs.JobServerManager) for manager in vars(managers).values())
    assert [manager.lane for manager in vars(managers).values()] == ["projections", "clusterings", "uploads",
                                                                      "indexing"]
    celery = jobs.background_managers(Settings("sqlite:///x.db", tmp_path, celery_url=redis_url))
    assert isinstance(celery.projections, CeleryManager)
    assert celery.indexing is celery.uploads is celery.clusterings is celery.projections
    assert celery.projections.handle.conf.broker_url == redis_url
    assert celery.projections.handle.conf.worker_prefetch_multiplier == 1


def test_the_test_redis_answers(redis_url):
    jobs.check_redis(redis_url)


@pytest.mark.parametrize("command", [["serve"], ["worker"]])
def test_an_unreachable_redis_is_one_line_naming_it_without_its_password(tmp_path, command):
    refused = run_cli(*command, "--celery", "redis://:hunter2@127.0.0.1:1/5", "--db", tmp_path / "x.db", expect=1)
    assert "cannot reach Redis at redis://:**@127.0.0.1:1/5" in refused.output
    assert "hunter2" not in refused.output and len(refused.output.strip().splitlines()) == 1


def test_only_redis_can_carry_the_callbacks():
    with pytest.raises(jobs.BrokerError, match="amqp://guest:\\*\\*@host// is not a Redis URL"):
        jobs.check_redis("amqp://guest:secret@host//")


def test_the_worker_module_registers_the_tasks_the_web_app_queues(sample_db, tmp_path, redis_url):
    """`celery -A dashboard.celery_app worker`, configured from the environment, knows every background callback
    of the dashboard under the name a web process sends it by."""
    from dashboard.app import create_app

    settings = Settings(f"sqlite:///{sample_db}", tmp_path / "cache", celery_url=redis_url)
    managers = jobs.background_managers(settings)
    create_app(settings, managers)
    queued = {f"background_callback_{key}" for key in managers.projections.func_registry}

    environment = {**os.environ, "DINOSCOPE_DB": str(sample_db), "DINOSCOPE_CACHE_DIR": str(tmp_path / "cache"),
                   "DINOSCOPE_CELERY": redis_url}
    listed = subprocess.run(
        [sys.executable, "-c", LIST_TASKS], env=environment, capture_output=True, text=True, timeout=300,
        check=False)
    assert listed.returncode == 0, listed.stderr
    assert queued and set(listed.stdout.split()) == queued
