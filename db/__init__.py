"""Storage for dinoscope: schema, engines, typed arrays and the access API. No torch, no Dash.

The engine's names are loaded on first use, so that importing db.records (what the indexer's decode workers
need) imports no SQLAlchemy.
"""

from db.errors import DinoscopeDbError, DinoscopeError

__all__ = ["Database", "DinoscopeDbError", "DinoscopeError", "open_database", "resolve_url"]


def __getattr__(name: str):
    if name in ("Database", "open_database", "resolve_url"):
        from db import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'db' has no attribute {name!r}")
