"""Storage for dinoscope: schema, engines, typed arrays and the access API. No torch, no Dash."""

from db.engine import Database, open_database, resolve_url
from db.errors import DinoscopeDbError, DinoscopeError

__all__ = ["Database", "DinoscopeDbError", "DinoscopeError", "open_database", "resolve_url"]
