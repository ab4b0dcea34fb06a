"""What an app's pages work with, kept on the Flask app they are registered on: a page's layout (called in a
request) finds it with `current_site()`, and its callbacks receive it as their first argument."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import flask

from dashboard.data import DatasetStore
from dashboard.folder_cache import FolderCache
from dashboard.image_sets import ImageSets
from dashboard.query_image import QueryModels
from indexer.index_job import ServerModel

EXTENSION = "dinoscope"


@dataclass(frozen=True)
class Site:
    """One app's database, its results cache (projections, clusterings, PCAs shared by every worker process), its
    upload models, its image sets (None unless users may add them), the model it indexes them with, and the store
    of selections (dashboard.selections; never evicted, unlike the results). Background jobs receive it pickled:
    the store as its address, the caches as their folders, the models empty (or the job server's own)."""

    store: DatasetStore
    results: FolderCache
    models: QueryModels
    sets: ImageSets | None = None
    index_model: ServerModel = field(default_factory=ServerModel)
    selections: FolderCache | None = None


def install(server: flask.Flask, site: Site) -> None:
    server.extensions[EXTENSION] = site


def current_site() -> Site:
    """The site of the app answering the current request."""
    return flask.current_app.extensions[EXTENSION]


def with_site(function: Callable, site: Site) -> Callable:
    """`function` (a page's callback) with `site` as its first argument, under the function's own name and source:
    Dash names a background callback (a Celery task, a job) by a hash of its source, which inspect finds through
    `__wrapped__`, so the web processes and the workers agree on it."""
    return functools.update_wrapper(functools.partial(function, site), function)
