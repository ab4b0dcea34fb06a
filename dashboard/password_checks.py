"""Password hash checks, a few at once in a process, so that guessers cannot take the threads that serve users.

A check takes a core for a tenth to a quarter of a second on purpose. A gunicorn gthread worker serves every request
from a small pool of threads: had each login attempt its own check, 30 guessers would hold them all, and the
requests of logged-in users (recognised without a check) would wait in line behind theirs. So at most `limit` checks
run at once, at most `limit` more requests wait up to WAIT_S for their turn, and any other login is refused at once
(the caller answers 429). Requests with the same credentials as a check under way, as a browser sends when it opens a
page, wait for that check's answer instead of making their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

WAIT_S = 1.0


@dataclass
class _Check:
    done: threading.Event = field(default_factory=threading.Event)
    passed: bool = False


class PasswordChecks:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._turns = threading.Condition()
        self._running: dict[Hashable, _Check] = {}
        self._waiting = 0

    def run(self, credentials: Hashable, check: Callable[[], bool]) -> bool | None:
        """The answer of `check()` for `credentials` (a key that tells them apart, not the password itself), or None
        when too many other checks are running and waiting."""
        with self._turns:
            if not self._wait(lambda: credentials in self._running or len(self._running) < self._limit):
                return None
            running = self._running.get(credentials)
            mine = running is None
            if mine:
                running = self._running[credentials] = _Check()
                self._turns.notify_all()  # a request waiting with the same credentials can wait for this one
        if not mine:
            running.done.wait()
            return running.passed
        try:
            running.passed = check()
        finally:
            with self._turns:
                del self._running[credentials]
                self._turns.notify_all()
            running.done.set()
        return running.passed

    def _wait(self, ready: Callable[[], bool]) -> bool:
        """Whether `ready()` is true now or comes true within WAIT_S; at most `limit` requests wait at once. Called
        holding the lock."""
        if ready():
            return True
        if self._waiting >= self._limit:
            return False
        self._waiting += 1
        try:
            return self._turns.wait_for(ready, WAIT_S)
        finally:
            self._waiting -= 1
