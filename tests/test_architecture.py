"""The shape of the code: imports go one way (db at the bottom, the indexer and the dashboard above it, two doors
between them) and SQL is written only in db/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = ("db", "indexer", "dashboard")
# The modules of the indexer the dashboard may import: one embeds a picture as the indexer would, the other runs an
# index run as a background job.
DOORS = ("indexer.query", "indexer.index_job")
SQL_CALLS = ("select", "insert", "update", "delete", "text")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, at module level?) for every import statement of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(f"{node.module}.{alias.name}", id(node) in top_level) for alias in node.names]
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _violations(check) -> list[str]:
    return [f"{_module_name(path)} imports {name}" for package in PACKAGES for path in _modules(package)
            for name, top in _imports(path) if not check(_module_name(path), name, top)]


def test_the_database_layer_imports_neither_the_indexer_nor_the_dashboard():
    assert _violations(lambda module, name, _top: not _within(module, "db")
                       or not any(_within(name, p) for p in ("indexer", "dashboard"))) == []


def test_the_dashboard_reaches_the_indexer_only_through_its_doors():
    assert _violations(lambda module, name, _top: not _within(module, "dashboard") or not _within(name, "indexer")
                       or any(_within(name, door) for door in DOORS)) == []


def test_the_indexer_imports_the_dashboard_only_in_the_lazily_loaded_commands():
    """The root group loads a command's module by name when the command is run or listed; no other module of the
    indexer imports such a module, so nothing else of the indexer brings the dashboard in."""
    from indexer.cli import LAZY_COMMANDS

    lazy = {module for module in LAZY_COMMANDS.values() if _within(module, "indexer")}
    assert lazy, "the root group loads no command of the indexer lazily (demo)"
    assert _violations(lambda module, name, _top: not _within(module, "indexer") or module in lazy
                       or not (_within(name, "dashboard") or any(_within(name, m) for m in lazy))) == []


@pytest.mark.parametrize("door", DOORS)
def test_the_doors_import_nothing_of_the_dashboard(door):
    path = ROOT / (door.replace(".", "/") + ".py")
    assert path.exists(), f"{door} is missing"
    assert [name for name, _top in _imports(path) if _within(name, "dashboard")] == []


@pytest.mark.parametrize("package", ["indexer", "dashboard", "benchmarks"])
def test_sql_is_written_only_in_the_database_layer(package):
    """No SQLAlchemy statement is built outside db/: every query has a name there."""
    found = []
    for path in _modules(package):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        sqlalchemy_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                            and (node.module or "").startswith("sqlalchemy") for alias in node.names}
        found += [f"{_module_name(path)}:{node.lineno} {node.func.id}(" for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SQL_CALLS
                  and node.func.id in sqlalchemy_names]
        found += [f"{_module_name(path)} imports sqlalchemy" for name, _top in _imports(path)
                  if _within(name, "sqlalchemy") and package != "benchmarks"]
    assert found == []
