"""How a dashboard process is configured: from the command line, or from the environment under a WSGI server."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from db.engine import DB_ENV, resolve_url

CACHE_DIR_ENV = "DINOSCOPE_CACHE_DIR"
SECRET_ENV = "DINOSCOPE_SECRET_KEY"


@dataclass(frozen=True)
class Settings:
    db_url: str
    cache_dir: Path  # absolute, shared by every worker process: background results and cached projections
    secret_key: str | None = None

    @classmethod
    def from_env(cls, db: str | None = None, cache_dir: str | Path | None = None) -> Settings:
        cache = cache_dir or os.environ.get(CACHE_DIR_ENV) or Path(tempfile.gettempdir()) / "dinoscope-cache"
        return cls(resolve_url(db or os.environ.get(DB_ENV)), Path(cache).expanduser().resolve(),
                   os.environ.get(SECRET_ENV))
