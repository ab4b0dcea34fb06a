"""`create_app(settings)`: the Dash app, its background-callback manager, its Flask routes and its pages."""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

import dash
import flask
from celery import Celery
from dash import Dash, dcc, html
from werkzeug.middleware.proxy_fix import ProxyFix

from dashboard import shell
from dashboard.auth import protect, read_users
from dashboard.data import DatasetStore
from dashboard.downloads import add_download_routes
from dashboard.folder_cache import FolderCache
from dashboard.framing import add_framing_headers
from dashboard.image_sets import ImageSets
from dashboard.inputs import INT64
from dashboard.jobs import BrokerError, JobManagers, background_managers
from dashboard.page import register_pages
from dashboard.pages import PAGES
from dashboard.query_image import MAX_REQUEST_BYTES, QueryModels
from dashboard.set_upload import add_set_upload_route
from dashboard.settings import CELERY_ENV, Settings
from dashboard.site import Site, install
from db.engine import display_url
from db.errors import DinoscopeDbError

log = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"
THUMBNAIL_MAX_AGE_S = 300
RESULTS_CACHE_BYTES = 2 * 1024**3  # projections of old generations are evicted least recently used first
SLOW_REQUEST_S = 1.0  # requests that take longer are logged
HEALTH_PATH = "/health"  # public even with a login: load balancers ask it without credentials


def create_app(settings: Settings, managers: JobManagers | None = None) -> Dash:
    """`managers`: the background-callback managers, by default the ones the settings ask for."""
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    managers = managers or background_managers(settings)
    results = FolderCache(str(settings.cache_dir / "results"), size_limit=RESULTS_CACHE_BYTES)
    # Never evicted: a link to a selection must keep working (see dashboard.selections).
    selections = FolderCache(str(settings.cache_dir / "selections"), eviction_policy="none")
    app = Dash(
        __name__, use_pages=True, pages_folder="", assets_folder=str(ASSETS), title="dinoscope", update_title=None,
        background_callback_manager=managers.projections, suppress_callback_exceptions=True,
        health_endpoint=HEALTH_PATH.lstrip("/"),
    )
    if settings.users_file:
        protect(app, read_users(settings.users_file), HEALTH_PATH, settings.login, settings.celery_url)
    if settings.trusted_proxies:  # the client's address (for login limits and logs) as the proxies say
        app.server.wsgi_app = ProxyFix(app.server.wsgi_app, x_for=settings.trusted_proxies)
    # Without a configured secret every worker would sign with its own random key; a single process is fine.
    app.server.secret_key = settings.secret_key or secrets.token_hex(32)
    app.server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES  # refused with 413, whatever the browser sent
    store = DatasetStore(settings.db_url, settings.cache_dir)
    _add_image_routes(app.server, store)
    add_download_routes(app.server, store, results, selections)
    _log_slow_requests(app.server)
    _answer_database_errors(app.server)
    add_framing_headers(app.server, settings.frame_ancestors)
    sets = ImageSets(settings.uploads.folder, settings.uploads.limits) if settings.uploads.allowed else None
    site = Site(store, results, QueryModels(), sets, settings.index_model, selections)
    install(app.server, site)
    add_set_upload_route(app.server, site)
    register_pages(app, PAGES, site, managers)
    shell.register(app, site)
    app.layout = html.Div([dcc.Location(id="navigate", refresh="callback-nav"),
                           dcc.Interval(id="dataset-check", interval=settings.change_check_seconds * 1000),
                           dash.page_container])
    # Dash completes its set-up (scripts, the pages' router) on the first request, without a lock: in a threaded
    # worker, requests arriving meanwhile found no scripts registered (500s). One request now, before any user's.
    app.server.test_client().get(HEALTH_PATH)
    log.info("dashboard process %d ready: database %s, cache folder %s, %s", os.getpid(),
             display_url(settings.db_url), settings.cache_dir, "login required" if settings.users_file else "no login")
    return app


def create_worker(settings: Settings) -> Celery:
    """The Celery app of `dinoscope worker`: building the dashboard with a Celery manager registers its background
    callbacks as tasks, under the names the web processes queue them by, bound to this process's database."""
    if not settings.celery_url:
        raise BrokerError(f"a worker needs a Redis URL: pass --celery or set {CELERY_ENV}")
    from dashboard.analysis.projection import warm_up

    warm_up()  # UMAP's compiled code loaded once, before the pool forks its processes
    managers = background_managers(settings)
    create_app(settings, managers)
    return managers.projections.handle


def _log_slow_requests(server: flask.Flask) -> None:
    """A warning for an operator whenever a request takes longer than SLOW_REQUEST_S to answer (until its first
    byte), naming the callback it ran."""

    @server.before_request
    def start_clock():
        flask.g.started = time.perf_counter()

    @server.after_request
    def report_if_slow(response: flask.Response) -> flask.Response:
        seconds = time.perf_counter() - flask.g.get("started", time.perf_counter())
        if seconds > SLOW_REQUEST_S:
            body = flask.request.get_json(silent=True, cache=True) if flask.request.is_json else None
            output = body.get("output", "") if isinstance(body, dict) else ""
            log.warning("slow request: %s %s %s took %.1f s", flask.request.method, flask.request.path,
                        output[:120], seconds)
        return response


def _answer_database_errors(server: flask.Flask) -> None:
    """A database that cannot be read (deleted, replaced by something else, unreachable) answers every request with
    the storage layer's message and 503, not a bare 500: the pages themselves say it in their panel."""

    @server.errorhandler(DinoscopeDbError)
    def database_error(error: DinoscopeDbError):
        log.warning("%s %s: %s", flask.request.method, flask.request.path, error)
        return flask.Response(str(error), status=503, mimetype="text/plain")


def _add_image_routes(server: flask.Flask, store: DatasetStore) -> None:
    @server.route("/thumbnails/<path:_anything_else>")
    def no_thumbnail(_anything_else: str):
        flask.abort(404)  # a non-numeric or negative id, another shape of path: not the page Dash answers with

    @server.route("/thumbnails/<int:image_id>/<kind>.jpg")
    def thumbnail(image_id: int, kind: str):
        if kind not in ("gallery", "preview") or image_id >= INT64:
            flask.abort(404)
        found = store.thumbnail(image_id, kind)
        if found is None:
            flask.abort(404)
        jpeg, etag = found
        response = flask.make_response(jpeg)
        response.headers["Content-Type"] = "image/jpeg"
        # private: behind a login, a shared proxy must not hand the image to others
        response.headers["Cache-Control"] = f"private, max-age={THUMBNAIL_MAX_AGE_S}"
        response.set_etag(etag)
        return response.make_conditional(flask.request)
