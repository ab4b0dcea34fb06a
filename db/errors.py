"""Errors of the storage layer. Each message is one readable line that says what to do."""


class DinoscopeDbError(Exception):
    """Base class: anything the storage layer refuses or cannot do."""


class DatabaseNotFound(DinoscopeDbError):
    pass


class DatabaseUnreachable(DinoscopeDbError):
    pass


class SchemaMismatch(DinoscopeDbError):
    pass


class NotADinoscopeDatabase(DinoscopeDbError):
    pass


class DatasetNotFound(DinoscopeDbError):
    pass


class CorruptArray(DinoscopeDbError):
    pass


class DatasetExists(DinoscopeDbError):
    pass


class ConflictingWrite(DinoscopeDbError):
    """Another process wrote the same rows at the same moment (a unique key taken, a row removed meanwhile)."""
