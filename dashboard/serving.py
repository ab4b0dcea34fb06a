"""Serving the dashboard to many users: gunicorn with threaded workers, and the check for an open address.

Each gunicorn worker builds its own app after the fork (nothing is preloaded in the master): database engines,
diskcache connections and the background jobs' fork server then all belong to the process that uses them. The
workers share the cache folder and the Flask secret, which signs the background-callback handles that one worker
hands out and another may be asked about.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from secrets import token_hex

from gunicorn.app.base import BaseApplication

from dashboard.app import create_app
from dashboard.job_server import kill_tree, start_job_server
from dashboard.jobs import job_server_config
from dashboard.settings import Settings

NO_LOGIN_WARNING = """\
**********************************************************************************************************
WARNING: dinoscope serves {host} WITHOUT A LOGIN: anyone who can reach this address sees every dataset.
Add users with `dinoscope users add FILE USER` and serve with --users FILE (or DINOSCOPE_USERS_FILE), or
bind to 127.0.0.1.
**********************************************************************************************************"""


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a server bound to `host` (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to any address
        return False


def needs_login_warning(host: str, settings: Settings) -> bool:
    return settings.users_file is None and not is_loopback(host)


def shared_secret(settings: Settings) -> tuple[Settings, bool]:
    """The settings with a secret every worker shares: the configured one, else one generated now (returns whether
    it was generated; sessions and background-callback handles then end when the server restarts)."""
    if settings.secret_key:
        return settings, False
    return replace(settings, secret_key=token_hex(32)), True


@contextmanager
def job_server(settings: Settings) -> Iterator[None]:
    """The job server of the settings' cache folder, started now (so it warms up before the first user) and
    stopped, with its jobs, at the end. With Celery, the workers run the jobs: nothing to start."""
    process = None if settings.celery_url else start_job_server(job_server_config(settings))
    try:
        yield
    finally:
        if process is not None:
            process.terminate()  # it ends its running jobs
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                kill_tree(process.pid)
                process.wait()


class DashboardServer(BaseApplication):
    def __init__(self, settings: Settings, host: str, port: int, workers: int, threads: int) -> None:
        self.settings = settings
        address = f"[{host.strip('[]')}]" if ":" in host else host
        self.options = {"bind": f"{address}:{port}", "workers": workers, "worker_class": "gthread",
                        "threads": threads, "preload_app": False,
                        # Longer than a user's pause between clicks: with gunicorn's 2 s, a browser (or proxy)
                        # reusing a connection the server was closing at that moment got "connection reset".
                        "keepalive": 30,
                        "control_socket_disable": True}  # one path per user: a second server would take it over
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self):
        """Called in each worker after the fork."""
        return create_app(self.settings).server
