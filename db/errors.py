"""dinoscope's errors: the root every layer's refusals derive from, and those of the storage layer. Each message is
one readable line that says what to do."""


class DinoscopeError(Exception):
    """Base class of every error dinoscope refuses or fails with on purpose: the command line shows its message as one
    line (and exits with status 1) instead of a traceback."""


class DinoscopeDbError(DinoscopeError):
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
