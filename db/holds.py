"""Hold points: a test stops work at a named point, in whatever process does it (an index run, the job server's fork
of a background job, a Celery worker), until it lets the work go on. Off unless DINOSCOPE_HOLDS names a folder, as
only tests do: with a file named after the point in that folder, work reaching the point leaves `<point>.reached`
beside it and waits while the file exists. Tests use them to catch work in progress, rather than assuming it is slow
enough to be caught."""

from __future__ import annotations

import os
import time
from pathlib import Path

HOLDS_ENV = "DINOSCOPE_HOLDS"


def hold(point: str) -> None:
    folder = os.environ.get(HOLDS_ENV)
    if not folder:
        return
    held = Path(folder) / point
    if held.exists():
        (Path(folder) / f"{point}.reached").touch()
        while held.exists():
            time.sleep(0.05)
