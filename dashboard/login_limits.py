"""Limits on failed logins, per client address and per user name, over moving windows (the `limits` library, the
engine of Flask-Limiter).

Failures are counted in Redis when the server has one (the --celery URL), shared by every worker process; otherwise
in each process's memory, so that a server of N workers lets a guesser fail up to N times as often. Every user name
is counted alike, known or not, so a limit reached says nothing about which names exist.
"""

from __future__ import annotations

import time

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from dashboard.settings import LoginSettings
from db.errors import DinoscopeError


class LoginLimitsError(DinoscopeError):
    """A limit that cannot be read; the message says which one and what is expected."""


def check_limits(settings: LoginSettings) -> None:
    """Raise LoginLimitsError unless both limits of `settings` can be read."""
    _parse(settings.failures_per_address, "per client address")
    _parse(settings.failures_per_user, "per user")


class LoginLimits:
    def __init__(self, settings: LoginSettings, redis_url: str | None) -> None:
        storage = storage_from_string(redis_url or "memory://", key_prefix="dinoscope-login", wrap_exceptions=True)
        self._limiter = MovingWindowRateLimiter(storage)
        self._limits = {"address": _parse(settings.failures_per_address, "per client address"),
                        "user": _parse(settings.failures_per_user, "per user")}

    def wait_s(self, address: str, user: str) -> float:
        """Seconds until a login from `address` as `user` may be tried: 0 if now. Raises limits' StorageError when
        Redis cannot be reached (as does count_failure)."""
        resets = [self._limiter.get_window_stats(limit, kind, key).reset_time
                  for kind, key, limit in self._each(address, user) if not self._limiter.test(limit, kind, key)]
        return max(0.0, max(resets) - time.time()) if resets else 0.0

    def count_failure(self, address: str, user: str) -> list[str]:
        """Count a failed login; returns what it has now locked out, as "user 'alice'" or "address 10.0.0.7"."""
        locked = []
        for kind, key, limit in self._each(address, user):
            self._limiter.hit(limit, kind, key)
            if not self._limiter.test(limit, kind, key):
                locked.append(f"{kind} {key!r}" if kind == "user" else f"{kind} {key}")
        return list(dict.fromkeys(locked))

    def _each(self, address: str, user: str):
        for kind, key in (("address", address), ("user", user)):
            for limit in self._limits[kind]:
                yield kind, key, limit


def _parse(text: str, which: str) -> list[RateLimitItem]:
    try:
        limits = parse_many(text)
    except ValueError:
        limits = []
    if not limits or any(limit.amount < 1 for limit in limits):
        raise LoginLimitsError(f"failed logins {which}: {text!r} is not a list of limits such as "
                               "'10/minute;100/hour' (a number of at least 1 per second, minute, hour or day)")
    return limits
