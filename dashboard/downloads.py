"""Downloads: plain HTTP responses that Flask streams as they are written, behind the same login as every page
(never a JSON callback payload, whose size grows with the dataset), each with a file name that says what it holds.

    /download/embedding.npy?dataset=NAME&image=ID        one image's embedding (float32, D)
    /download/embeddings.npz?dataset=NAME                every embedding with ids, paths and labels
    /download/clusters.csv?dataset=NAME&<the clustering page's parameters>
                                                         every image's cluster and 2-D position
    /download/duplicates.csv?dataset=NAME&threshold=T    exact copies and near-duplicate groups, one row per image
    /download/duplicates.json?dataset=NAME&threshold=T   the same groups as one JSON document
    /download/selection.csv?dataset=NAME&selection=ID    a selection's ids, paths and labels
    /download/selection.json?dataset=NAME&selection=ID   the same as JSON
    /download/selection.npz?dataset=NAME&selection=ID    the same with the embeddings
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import flask

from dashboard.analysis.duplicates import duplicate_groups
from dashboard.clustering_view import (
    assignment_csv,
    cached_clustering,
    cached_projection,
    cluster_params,
    clustering_key,
    clusters_in_background,
    projection_params,
)
from dashboard.data import DatasetStore, DatasetView
from dashboard.duplicates_view import (
    THRESHOLD,
    cached_pass,
    exact_groups,
    groups_csv,
    groups_json,
    pass_key,
    runs_in_background,
)
from dashboard.embeddings_view import dataset_npz, embedding_npy
from dashboard.selections import load_selection, selection_csv, selection_json, selection_npz
from db.errors import DatasetNotFound, DinoscopeDbError

EMBEDDING_NPY_PATH = "/download/embedding.npy"
EMBEDDINGS_NPZ_PATH = "/download/embeddings.npz"
CLUSTERS_CSV_PATH = "/download/clusters.csv"
DUPLICATES_CSV_PATH = "/download/duplicates.csv"
DUPLICATES_JSON_PATH = "/download/duplicates.json"
SELECTION_PATH = "/download/selection."  # + csv, json or npz
SELECTION_FORMATS = {"csv": "text/csv", "json": "application/json", "npz": "application/zip"}


def add_download_routes(server: flask.Flask, store: DatasetStore, results, selections) -> None:
    """`results`: the shared results cache, where the clustering page keeps its projections and clusterings;
    `selections`: the store of selections (dashboard.selections)."""

    @server.route(EMBEDDING_NPY_PATH)
    def embedding():
        view = _view(store)
        image_id = _image_id(view)
        return _attachment([embedding_npy(view, image_id)], f"{_slug(view.name)}-image{image_id}-embedding.npy",
                           "application/octet-stream")

    @server.route(EMBEDDINGS_NPZ_PATH)
    def embeddings():
        view = _view(store)
        rows, dim = view.embeddings.shape
        return _attachment(dataset_npz(view), f"{_slug(view.name)}-embeddings-{rows}x{dim}.npz", "application/zip")

    @server.route(CLUSTERS_CSV_PATH)
    def clusters():
        view = _view(store)
        projection, clustering = projection_params(flask.request.args), cluster_params(flask.request.args)
        projection_key = projection.cache_key(view)
        found = results.get(projection_key)
        if found is None and projection.runs_in_background:
            flask.abort(409, f"This {projection.method} projection has not been computed: open it on the clustering "
                             "page first, then download.")
        found = found or cached_projection(results, view, projection)
        if clusters_in_background(view, clustering) and clustering_key(view, clustering, projection_key) not in results:
            flask.abort(409, "This clustering has not been computed: open it on the clustering page first, then "
                             "download.")
        result = cached_clustering(results, view, projection_key, found.coordinates, clustering)
        detail = (f"eps{clustering.eps:g}-min{clustering.min_samples}" if clustering.method == "dbscan"
                  else f"k{clustering.k}")
        space = "-2d" if clustering.space == "projection" else ""
        name = f"{_slug(view.name)}-{projection.method}-{clustering.method}-{detail}{space}-clusters.csv"
        return _attachment(assignment_csv(view, found.coordinates, result.labels), name, "text/csv")

    @server.route(f"{SELECTION_PATH}<kind>")
    def selection(kind: str):
        if kind not in SELECTION_FORMATS:
            flask.abort(404)
        view = _view(store)
        key = flask.request.args.get("selection", "")
        image_ids = load_selection(selections, view, key)
        if image_ids is None:
            flask.abort(404, f"There is no selection {key[:40]!r} of dataset {view.name!r}")
        parts = {"csv": lambda: selection_csv(view, image_ids), "json": lambda: [selection_json(view, key, image_ids)],
                 "npz": lambda: selection_npz(view, image_ids)}[kind]()
        return _attachment(parts, selection_file_name(view.name, key, kind), SELECTION_FORMATS[kind])

    @server.route(DUPLICATES_CSV_PATH)
    def duplicates_csv():
        view, threshold, exact, near, found = _duplicates(store, results)
        name = f"{_slug(view.name)}-duplicates-{threshold:g}.csv"
        return _attachment([groups_csv(view, exact, near, found)], name, "text/csv")

    @server.route(DUPLICATES_JSON_PATH)
    def duplicates_json():
        view, threshold, exact, near, found = _duplicates(store, results)
        name = f"{_slug(view.name)}-duplicates-{threshold:g}.json"
        return _attachment([groups_json(view, threshold, exact, near, found)], name, "application/json")


def selection_file_name(dataset: str, key: str, kind: str) -> str:
    """The name a selection's download is saved under."""
    return f"{_slug(dataset)}-selection-{key}.{kind}"


def _duplicates(store: DatasetStore, results):
    """The dataset, the threshold asked for, its exact groups, and its near-duplicate groups with the pass."""
    view = _view(store)
    threshold = THRESHOLD.coerce(flask.request.args.get("threshold"))
    if runs_in_background(view) and pass_key(view) not in results:
        flask.abort(409, "The near-duplicates of this dataset have not been found yet: open it on the duplicates "
                         "page first, then download.")
    found = cached_pass(results, view)
    return view, threshold, exact_groups(store, view.name), duplicate_groups(found, threshold), found


def _view(store: DatasetStore) -> DatasetView:
    name = flask.request.args.get("dataset")
    if not name:
        flask.abort(400, "Say which dataset: ?dataset=NAME")
    try:
        return store.view(name)
    except DatasetNotFound as error:
        flask.abort(404, str(error))
    except DinoscopeDbError as error:
        flask.abort(503, str(error))


def _image_id(view: DatasetView) -> int:
    try:
        image_id = int(flask.request.args.get("image", ""))
    except ValueError:
        flask.abort(400, "Say which image: ?image=ID, a number")
    if view.position(image_id) is None:
        flask.abort(404, f"There is no image {image_id} in dataset {view.name!r}")
    return image_id


def _slug(name: str) -> str:
    """A dataset's name as a file name: letters, digits, '.', '_' and '-' kept, anything else '_'."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "dataset"


def _attachment(parts: Iterable, filename: str, mimetype: str) -> flask.Response:
    response = flask.Response(flask.stream_with_context(iter(parts)), mimetype=mimetype)
    response.headers.set("Content-Disposition", "attachment", filename=filename)
    response.headers["Cache-Control"] = "private, no-store"
    return response
