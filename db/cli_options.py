"""The `--db` option of every command, here beside the URL it names so that the indexer's and the dashboard's
command lines share one definition without importing each other."""

from __future__ import annotations

import click

from db.engine import DB_ENV


def db_option(function):
    return click.option(
        "--db", envvar=DB_ENV, metavar="URL",
        show_default="$XDG_DATA_HOME/dinoscope/dinoscope.db, normally ~/.local/share/dinoscope/dinoscope.db",
        help=f"The database: a SQLite file path or a SQLAlchemy URL. Environment: {DB_ENV}.")(function)
