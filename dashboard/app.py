"""`create_app(settings)`: the Dash app, its background-callback manager, its Flask routes and its pages."""

from __future__ import annotations

import secrets
from pathlib import Path

import dash
import diskcache
import flask
from dash import Dash, Input, Output, State, dcc, html

from dashboard.data import DatasetStore
from dashboard.jobs import ForkServerDiskcacheManager
from dashboard.pages import clustering, embeddings, gallery, patches, similarity
from dashboard.settings import Settings

ASSETS = Path(__file__).parent / "assets"
THUMBNAIL_MAX_AGE_S = 300
RESULTS_CACHE_BYTES = 2 * 1024**3  # projections of old generations are evicted least recently used first


def create_app(settings: Settings) -> Dash:
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    manager = ForkServerDiskcacheManager(diskcache.Cache(str(settings.cache_dir / "background")))
    results = diskcache.Cache(str(settings.cache_dir / "results"), size_limit=RESULTS_CACHE_BYTES)
    app = Dash(
        __name__, use_pages=True, pages_folder="", assets_folder=str(ASSETS), title="dinoscope", update_title=None,
        background_callback_manager=manager, suppress_callback_exceptions=True, health_endpoint="health",
    )
    # Without a configured secret every worker would sign with its own random key; a single process is fine.
    app.server.secret_key = settings.secret_key or secrets.token_hex(32)
    store = DatasetStore(settings.db_url)
    _add_image_routes(app.server, store)
    gallery.register(app, store)
    similarity.register(app, store)
    embeddings.register(app, store, results)
    clustering.register(app, store, results)
    patches.register(app, store)
    app.layout = html.Div([dcc.Location(id="navigate", refresh="callback-nav"), dash.page_container])

    @app.callback(Output("navigate", "href"), Input("dataset-picker", "value"), State("shell-dataset", "data"),
                  State("navigate", "pathname"), prevent_initial_call=True)
    def open_dataset(name, shown, pathname):
        # The picker reports its value when it mounts too: only a different dataset is a request to navigate.
        return f"{pathname or '/'}?dataset={name}" if name and name != shown else dash.no_update

    return app


def _add_image_routes(server: flask.Flask, store: DatasetStore) -> None:
    @server.route("/thumbnails/<int:image_id>/<kind>.jpg")
    def thumbnail(image_id: int, kind: str):
        if kind not in ("gallery", "preview"):
            flask.abort(404)
        found = store.thumbnail(image_id, kind)
        if found is None:
            flask.abort(404)
        jpeg, etag = found
        response = flask.make_response(jpeg)
        response.headers["Content-Type"] = "image/jpeg"
        response.headers["Cache-Control"] = f"public, max-age={THUMBNAIL_MAX_AGE_S}"
        response.set_etag(etag)
        return response.make_conditional(flask.request)
