"""Clustering: a 2-D projection of the embeddings coloured by clusters, with metrics, summaries and a download.

PCA and K-Means are computed in the request. t-SNE and UMAP run in background jobs (the job server's projections
lane) and DBSCAN and Ward above CLUSTER_IN_REQUEST images in others (its clusterings lane), with progress and
cancel. Every projection and
clustering is kept in the shared results cache under (dataset, generation, parameters), so whoever asks second gets
it at once, and a re-index (a new generation) makes it stale.
"""

from __future__ import annotations

from urllib.parse import urlencode
from uuid import uuid4

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, dcc, html
from pydantic import BaseModel, FiniteFloat, StrictInt

from dashboard import inputs
from dashboard.clustering_view import (
    CLUSTERING,
    COLOURING,
    K_MAX,
    K_MIN,
    PROJECTION,
    TRUST_K,
    ShownClustering,
    cached_clustering,
    cached_projection,
    cached_trust,
    cluster_name,
    cluster_params,
    cluster_scatter,
    cluster_trace_rows,
    clustering_key,
    clusters_in_background,
    hover_components,
    projection_params,
    query_of,
    selected_points,
    trust_scatter,
    trust_trace_rows,
)
from dashboard.downloads import CLUSTERS_CSV_PATH, SELECTION_PATH, selection_file_name
from dashboard.explanations import CLUSTERING as CLUSTERING_TEXT
from dashboard.explanations import METRIC_EXPLANATIONS, METRIC_TITLES, TRUST_TITLE
from dashboard.page import Page
from dashboard.selections import (
    HOW,
    SELECTION,
    invert,
    is_selection_id,
    load_selection,
    refine,
    save_selection,
    selected_rows,
    selection_page,
)
from dashboard.shell import busy, image_links, page_shell
from dashboard.site import Site, current_site
from dashboard.urlstate import similarity_url, thumbnail_url, why_url
from db.export import selection_snippet
from db.holds import hold

CHANGED = "The indexer has changed this dataset since the page opened: show the changes (above) to work on them."
POLL_MS = 500  # how often a page asks about its background job: 30 pages waiting make 60 requests a second
VIEW = (COLOURING, TRUST_K)
PAGE = Page("clustering", "/clustering", "Clustering", explanation=CLUSTERING_TEXT,
            params=(*PROJECTION, *CLUSTERING, *VIEW, SELECTION))
SELECTION_PAGE_SIZE = 40  # thumbnails of the selection per page
SNIPPET_INLINE_IDS = 10_000  # a larger selection's snippet reads its ids from the JSON download instead
# The cosine similarity that DBSCAN's eps means between normalised embeddings (eps is their chord distance).
_EPS_AS_COSINE = """
function (eps, onProjection) {
    if (typeof eps !== "number" || !isFinite(eps)) { return ""; }
    if (onProjection) { return "eps is a distance between the 2-D points"; }
    return "neighbours within eps " + eps.toFixed(2) + " have cosine similarity ≥ " + (1 - eps * eps / 2).toFixed(3);
}
"""
# The image id of a hovered or clicked point, {"image_id", "bbox"}. dcc.Graph reads an event's customdata from
# the figure as sent, where binary arrays are still base64, so its events lack it; plotly's decoded copy has it.
_IMAGE_AT_POINT = """
function (event) {
    const point = event && event.points && event.points[0];
    const graph = document.querySelector("#clustering-scatter .js-plotly-plot");
    const trace = point && graph && graph._fullData[point.curveNumber];
    if (!trace || !trace.customdata) { return null; }
    return {image_id: Number(trace.customdata[point.pointNumber]), bbox: point.bbox || null};
}
"""

# The image ids of the points a lasso or box picked, {"image_ids": [...]}, read from plotly's decoded customdata
# (see _IMAGE_AT_POINT); a deselection (a double click) picks nothing new.
_IMAGES_PICKED = """
function (selected) {
    const graph = document.querySelector("#clustering-scatter .js-plotly-plot");
    if (!selected || !selected.points || !graph) { return window.dash_clientside.no_update; }
    const ids = [];
    selected.points.forEach(function (point) {
        const trace = graph._fullData[point.curveNumber];
        if (trace && trace.customdata) { ids.push(Number(trace.customdata[point.pointNumber])); }
    });
    return {image_ids: ids};
}
"""


class ImagePoint(BaseModel):
    """What _IMAGE_AT_POINT reports."""

    image_id: StrictInt
    bbox: dict[str, FiniteFloat] | None = None


class Picked(BaseModel):
    """What _IMAGES_PICKED reports."""

    image_ids: list[StrictInt]


@PAGE.layout
def layout(dataset: str | None = None, **query):
    projection, clustering = projection_params(query), cluster_params(query)
    view_params = PAGE.query(query)
    site = current_site()

    def content(provenance):
        wanted = SELECTION.coerce(query.get("selection"))
        found = load_selection(site.selections, site.store.view(provenance.name), wanted) if wanted else None
        unknown = (dbc.Alert(f"There is no selection {wanted[:40]!r} of this dataset (the link may be from another "
                             "server): nothing is selected.", color="warning", id="clustering-unknown-selection")
                   if wanted and found is None else "")
        return html.Div([
            dcc.Store(id="clustering-selection", data=wanted if found is not None else ""),
            dcc.Store(id="clustering-picked"),
            dcc.Store(id="clustering-session", data=uuid4().hex),
            dcc.Store(id="clustering-dataset", data=provenance.name),
            dcc.Store(id="clustering-projection-key"),
            dcc.Store(id="clustering-projection-request"),
            dcc.Store(id="clustering-shown"),  # {"key": clustering, "projection": its key, "query": the view}
            dcc.Store(id="clustering-cluster-request"),
            PAGE.url_parameters(),
            PAGE.explanation_panel(),
            unknown,
            dbc.Row([
                dbc.Col(_controls(projection, clustering, view_params), md=3),
                dbc.Col([
                    html.Div(id="clustering-status", className="small text-muted"),
                    dbc.Button("Cancel", id="clustering-cancel", size="sm", color="secondary",
                               className="mb-2", style={"display": "none"}),
                    busy(dcc.Graph(id="clustering-scatter", config={"displaylogo": False},
                                   clear_on_unhover=True)),
                    dcc.Tooltip(id="clustering-tooltip"),
                    dcc.Store(id="clustering-hovered"),
                    dcc.Store(id="clustering-figure-changed"),
                    dcc.Store(id="clustering-clicked"),
                    html.Div(id="clustering-trust", className="mt-1"),
                    html.Div(id="clustering-metrics"),
                    _metric_explanations(),
                ], md=6),
                dbc.Col(html.Div(id="clustering-selected", children=html.P(
                    "Click a point to see its image.", className="text-muted")), md=3),
            ]),
            _selection_section(),
            html.H4("Clusters", className="mt-3"),
            busy(html.Div(id="clustering-summary")),
        ])

    return page_shell(current_site().store, PAGE.path, dataset, content)


@PAGE.callback(
    Output("clustering-projection-key", "data"), Output("clustering-projection-request", "data"),
    Output("clustering-status", "children"),
    *PAGE.controls(PROJECTION, Input), State("clustering-dataset", "data"),
)
def choose_projection(site: Site, method, perplexity, n_neighbors, min_dist, seed, dataset):
    params = projection_params({"projection": method, "perplexity": perplexity, "n_neighbors": n_neighbors,
                                "min_dist": min_dist, "seed": seed})
    view = inputs.dataset_view(site.store, dataset)
    key = params.cache_key(view)
    if params.runs_in_background and key not in site.results:
        return dash.no_update, {"key": key, **query_of(params, cluster_params({}))}, "Starting…"
    cached_projection(site.results, view, params)
    # An empty request makes Dash stop a projection job still running. On page load none runs, and a job
    # started only to be replaced would hide the Cancel button of the next one when it ends.
    return key, None if dash.ctx.triggered_id else dash.no_update, ""


@PAGE.callback(
    Output("clustering-projection-key", "data", allow_duplicate=True),
    Input("clustering-projection-request", "data"),
    State("clustering-dataset", "data"), State("clustering-session", "data"),
    background=True, prevent_initial_call=True, interval=POLL_MS,
    progress=Output("clustering-status", "children"),
    running=[(Output("clustering-cancel", "style"), {"display": "inline-block"}, {"display": "none"})],
    cancel=Input("clustering-cancel", "n_clicks"),
)
def compute_projection(site: Site, set_progress, request, dataset, _session):
    # _session: a per-page-load id, so two users asking for the same view are two jobs (Dash 4.4.1).
    if not request:
        return dash.no_update
    try:
        params = projection_params(inputs.mapping(request, "The projection asked for"))
        view = inputs.dataset_view(site.store, dataset)
    except inputs.BadInput as error:
        dash.set_props("clustering-status", {"children": str(error)})
        return dash.no_update
    def report(stage: str) -> None:
        set_progress(f"Computing: {stage}…")
        hold("projection")

    cached_projection(site.results, view, params, progress=report)
    return params.cache_key(view)


@PAGE.callback(
    Output("clustering-status", "children", allow_duplicate=True), Input("clustering-cancel", "n_clicks"),
    prevent_initial_call=True,
)
def report_cancel(site: Site, _clicks):
    return "Cancelled: the plot still shows the previous result."


@PAGE.callback(
    Output("clustering-shown", "data"), Output("clustering-cluster-request", "data"),
    Output("clustering-status", "children", allow_duplicate=True),
    Input("clustering-projection-key", "data"), *PAGE.controls(CLUSTERING, Input),
    *PAGE.controls(PROJECTION, State), State("clustering-dataset", "data"),
    State("clustering-shown", "data"), prevent_initial_call=True,
)
def choose_clusters(site: Site, projection_key, method, k, eps, min_samples, space, projection_method, perplexity,
                    n_neighbors, min_dist, seed, dataset, shown_before):
    projection = site.results.get(inputs.text(projection_key, "The projection's key")) if projection_key else None
    if projection is None:
        return dash.no_update, dash.no_update, dash.no_update
    view = inputs.dataset_view(site.store, dataset)
    params = _cluster_params(method, k, eps, min_samples, space)
    chosen_projection = projection_params({"projection": projection_method, "perplexity": perplexity,
                                           "n_neighbors": n_neighbors, "min_dist": min_dist, "seed": seed})
    if chosen_projection.cache_key(view) != projection_key:  # of an earlier generation: the indexer ran since
        return dash.no_update, dash.no_update, CHANGED
    shown = ShownClustering(key=clustering_key(view, params, projection_key), projection=projection_key,
                            generation=view.generation, query=query_of(chosen_projection, params)).model_dump()
    if clusters_in_background(view, params) and shown["key"] not in site.results:
        return dash.no_update, shown, "Starting…"
    cached_clustering(site.results, view, projection_key, projection.coordinates, params)
    # An empty request stops a clustering job still running (its result would replace this one); on page load
    # none runs, and none is started.
    return shown, None if shown_before else dash.no_update, dash.no_update


@PAGE.callback(
    Output("clustering-shown", "data", allow_duplicate=True),
    Input("clustering-cluster-request", "data"),
    State("clustering-dataset", "data"), State("clustering-session", "data"),
    background=True, manager="clusterings", prevent_initial_call=True, interval=POLL_MS,
    progress=Output("clustering-status", "children"),
    running=[(Output("clustering-cancel", "style"), {"display": "inline-block"}, {"display": "none"})],
    cancel=Input("clustering-cancel", "n_clicks"),
)
def compute_clusters(site: Site, set_progress, request, dataset, _session):
    # _session: a per-page-load id, so two users asking for the same view are two jobs (Dash 4.4.1).
    if not request:
        return dash.no_update
    try:
        view = inputs.dataset_view(site.store, dataset)
        wanted = _clustering_of(view, request, "The clustering asked for")
    except inputs.BadInput as error:
        dash.set_props("clustering-status", {"children": str(error)})
        return dash.no_update
    projection = site.results.get(wanted.projection)
    if projection is None or view.generation != wanted.generation:
        return dash.no_update
    cached_clustering(site.results, view, wanted.projection, projection.coordinates, cluster_params(wanted.query),
                      progress=lambda stage: set_progress(f"Computing: {stage}…"))
    return request


@PAGE.callback(
    Output("clustering-scatter", "figure"), Output("clustering-metrics", "children"),
    Output("clustering-summary", "children"), Output("clustering-status", "children", allow_duplicate=True),
    Output("clustering-download-link", "href"), Output("clustering-trust", "children"),
    Input("clustering-shown", "data"), *PAGE.controls(VIEW, Input), State("clustering-dataset", "data"),
    State("clustering-selection", "data"), prevent_initial_call=True,
)
def show_clusters(site: Site, shown, colouring, trust_k, dataset, selection):
    unchanged = (dash.no_update,) * 6
    if not shown:
        return unchanged
    view = inputs.dataset_view(site.store, dataset)
    shown = _clustering_of(view, shown, "The clustering shown")
    projection, result = site.results.get(shown.projection), site.results.get(shown.key)
    if projection is None or result is None:
        return unchanged
    if view.generation != shown.generation:
        return dash.no_update, dash.no_update, dash.no_update, CHANGED, dash.no_update, dash.no_update
    notes = html.Ul([html.Li(note) for note in projection.notes + result.notes],
                    className="small text-warning", id="clustering-notes") \
        if projection.notes or result.notes else ""
    selected = _selection_of(site, view, selection)
    if COLOURING.coerce(colouring) == "preservation":
        trust = cached_trust(site.results, view, shown.projection, projection.coordinates, TRUST_K.coerce(trust_k))
        figure, trust_note = trust_scatter(view, projection, trust, selected), _trust_badge(trust, len(view))
    else:
        figure, trust_note = cluster_scatter(view, projection, result, selected), ""
    return (figure, _metrics(result.metrics), _summary(view, result, dataset), notes,
            f"{CLUSTERS_CSV_PATH}?{urlencode({'dataset': dataset, **shown.query})}", trust_note)


PAGE.clientside_callback(_IMAGES_PICKED, Output("clustering-picked", "data"),
                         Input("clustering-scatter", "selectedData"), prevent_initial_call=True)


@PAGE.callback(
    Output("clustering-selection", "data", allow_duplicate=True),
    Input("clustering-picked", "data"), Input("clustering-invert", "n_clicks"), Input("clustering-clear", "n_clicks"),
    State("clustering-pick-how", "value"), State("clustering-selection", "data"), State("clustering-dataset", "data"),
    prevent_initial_call=True,
)
def refine_selection(site: Site, picked, _invert, _clear, how, selection, dataset):
    """A lasso or box replaces, adds to or removes from the selection; Invert and Clear change it as they say."""
    view = inputs.dataset_view(site.store, dataset)
    current = _selection_of(site, view, selection)
    current = np.empty(0, np.int64) if current is None else current
    trigger = dash.ctx.triggered_id
    if trigger == "clustering-clear":
        return ""
    if trigger == "clustering-invert":
        return save_selection(site.selections, view.name, invert(view, current))
    if not picked:
        return dash.no_update
    ids = np.array(inputs.record(Picked, picked, "The pick").image_ids, dtype=np.int64)
    if len(selected_rows(view, ids)) != len(np.unique(ids)):
        raise inputs.BadInput(f"The pick holds images that are not in dataset {view.name!r}")
    if how not in HOW:
        raise inputs.BadInput(f"A pick replaces, adds to or removes from the selection, not {inputs.shown(how)}")
    return save_selection(site.selections, view.name, refine(current, ids, how))


@PAGE.callback(
    Output("clustering-selection-count", "children"), Output("clustering-selection-gallery", "children"),
    Output("clustering-selection-pages", "max_value"), Output("clustering-selection-pages", "active_page"),
    Output("clustering-selection-exports", "style"), Output("clustering-selection-csv", "href"),
    Output("clustering-selection-json", "href"), Output("clustering-selection-npz", "href"),
    Output("clustering-selection-similar", "href"), Output("clustering-snippet", "children"),
    Input("clustering-selection", "data"), Input("clustering-selection-pages", "active_page"),
    State("clustering-dataset", "data"),
)
def show_selection(site: Site, selection, page, dataset):
    view = inputs.dataset_view(site.store, dataset)
    selected = _selection_of(site, view, selection)
    page = page if dash.ctx.triggered_id == "clustering-selection-pages" else 1
    if selected is None or not len(selected):
        hint = "Nothing selected: pick images with Lasso select or Box select in the plot's toolbar."
        return hint, [], 1, 1, {"display": "none"}, "", "", "", "", ""
    number = page if isinstance(page, int) and not isinstance(page, bool) else 1  # clamped by selection_page
    shown = selection_page(view, selected, number, SELECTION_PAGE_SIZE)
    gallery = [html.A(html.Img(src=thumbnail_url(image_id), title=relpath, alt=relpath,
                               style={"height": "72px", "margin": "0 4px 4px 0"}),
                      href=similarity_url(dataset, image_id), className="selection-thumbnail")
               for image_id, relpath in zip(shown.image_ids, shown.relpaths)]
    query = urlencode({"dataset": dataset, "selection": selection})
    similar = f"/similarity?{urlencode({'dataset': dataset, 'image': int(selected[0]), 'selection': selection})}"
    count = f"{len(selected):,} image{'s' if len(selected) != 1 else ''} selected (selection {selection})"
    snippet = (selection_snippet(site.store.db_url, selected.tolist()) if len(selected) <= SNIPPET_INLINE_IDS else
               selection_snippet(site.store.db_url, None, selection_file_name(dataset, selection, "json")))
    return (count, gallery, shown.pages, shown.page, {}, f"{SELECTION_PATH}csv?{query}",
            f"{SELECTION_PATH}json?{query}", f"{SELECTION_PATH}npz?{query}", similar, snippet)


@PAGE.callback(
    Output("clustering-scatter", "figure", allow_duplicate=True),
    Input("clustering-selection", "data"), State("clustering-shown", "data"), *PAGE.controls(VIEW, State),
    State("clustering-dataset", "data"), prevent_initial_call=True,
)
def mark_selection(site: Site, selection, shown, colouring, trust_k, dataset):
    """The scatter greys what is not selected, changed in place (the points themselves are not sent again)."""
    if not shown:
        return dash.no_update
    view = inputs.dataset_view(site.store, dataset)
    shown = _clustering_of(view, shown, "The clustering shown")
    projection, result = site.results.get(shown.projection), site.results.get(shown.key)
    if projection is None or result is None or view.generation != shown.generation:
        return dash.no_update
    if COLOURING.coerce(colouring) == "preservation":
        trust = cached_trust(site.results, view, shown.projection, projection.coordinates, TRUST_K.coerce(trust_k))
        trace_rows = trust_trace_rows(view, trust)
    else:
        trace_rows = cluster_trace_rows(view, result)
    patch = dash.Patch()
    for trace, chosen in enumerate(selected_points(view, trace_rows, _selection_of(site, view, selection))):
        patch["data"][trace]["selectedpoints"] = chosen
    return patch


def _selection_of(site: Site, view, selection) -> np.ndarray | None:
    """The image ids of the page's selection (None for none); a value that is no known selection is refused."""
    selection = inputs.text(selection, "The selection")
    if not selection:
        return None
    found = load_selection(site.selections, view, selection) if is_selection_id(selection) else None
    if found is None:
        raise inputs.BadInput(f"There is no selection {inputs.shown(selection)} of dataset {view.name!r}")
    return found


PAGE.clientside_callback(_IMAGE_AT_POINT, Output("clustering-hovered", "data"),
                         Input("clustering-scatter", "hoverData"))
# That the figure changed, told the server without the figure: as an input the figure itself would travel with every
# hover (over 16 MiB of decoded points at 200,000, which the server refuses).
PAGE.clientside_callback("function (figure) { return Date.now(); }", Output("clustering-figure-changed", "data"),
                         Input("clustering-scatter", "figure"))
PAGE.clientside_callback(_IMAGE_AT_POINT, Output("clustering-clicked", "data"),
                         Input("clustering-scatter", "clickData"), prevent_initial_call=True)


PAGE.clientside_callback(_EPS_AS_COSINE, Output("clustering-eps-cosine", "children"),
                         Input(PAGE.control_id("eps"), "value"), Input(PAGE.control_id("space"), "value"))


@PAGE.callback(
    Output("clustering-tooltip", "show"), Output("clustering-tooltip", "bbox"),
    Output("clustering-tooltip", "children"),
    Input("clustering-hovered", "data"), Input("clustering-figure-changed", "data"),
    State("clustering-dataset", "data"),
)
def hover_point(site: Site, point, _figure_changed, dataset):
    # The card closes when the pointer leaves the point and whenever the figure changes under it.
    if not point or dash.ctx.triggered_id == "clustering-figure-changed":
        return False, dash.no_update, dash.no_update
    point = inputs.record(ImagePoint, point, "The point")
    view = inputs.dataset_view(site.store, dataset)
    row = view.position(inputs.image_in(view, point.image_id))
    pcs = ", ".join(f"PC{i + 1} {value:+.3f}" for i, value in enumerate(hover_components(view, row)))
    return True, point.bbox, html.Div([
        html.Img(src=thumbnail_url(point.image_id), style={"width": "160px"}),
        html.Div(view.relpaths[row], className="fw-bold small"),
        html.Div(f"label: {view.labels[row] or 'none'}", className="small"),
        html.Div(pcs, className="small text-muted"),
    ], id="clustering-hover-card", style={"width": "170px", "overflowWrap": "anywhere", "whiteSpace": "normal"})


@PAGE.callback(
    Output("clustering-selected", "children"), Input("clustering-clicked", "data"),
    State("clustering-dataset", "data"), prevent_initial_call=True,
)
def select_point(site: Site, point, dataset):
    if not point:
        return dash.no_update
    view = inputs.dataset_view(site.store, dataset)
    image_id = inputs.image_in(view, inputs.record(ImagePoint, point, "The point").image_id)
    row = view.position(image_id)
    width, height = view.sizes[row]
    nearest = view.nearest(row, 1)[0]
    why = (dbc.Button("Why similar to its nearest?", href=why_url(dataset, image_id, int(view.image_ids[nearest[0]])),
                      id="clustering-why-link", size="sm", color="primary", outline=True, className="me-1 mb-1")
           if len(nearest) else None)
    return dbc.Card([
        dbc.CardImg(src=thumbnail_url(image_id, "preview"), top=True),
        dbc.CardBody([
            html.H6(view.relpaths[row], id="clustering-selected-path"),
            html.P(f"label {view.labels[row] or 'none'} · {width} x {height} px", className="small"),
            image_links(dataset, image_id, "clustering"),
            why,
        ]),
    ])


@PAGE.callback(
    Output("clustering-perplexity-group", "style"), Output("clustering-umap-group", "style"),
    Output("clustering-k-group", "style"), Output("clustering-dbscan-group", "style"),
    Output("clustering-trust-k-group", "style"),
    Input(PAGE.control_id("projection"), "value"), Input(PAGE.control_id("method"), "value"),
    Input(PAGE.control_id("colour"), "value"),
)
def show_relevant_controls(site: Site, projection, method, colouring):
    def shown(visible):
        return {} if visible else {"display": "none"}

    return shown(projection == "tsne"), shown(projection == "umap"), shown(method != "dbscan"), \
        shown(method == "dbscan"), shown(colouring == "preservation")


def _clustering_of(view, value, what: str) -> ShownClustering:
    """`value` read as a clustering of this dataset: of its current generation (or of an earlier one, which the
    callers report as a change), never of another dataset or another kind of result in the cache."""
    shown = inputs.record(ShownClustering, value, what)
    if shown.generation == view.generation and not shown.is_of(view):
        raise inputs.BadInput(f"{what} is not a clustering of dataset {view.name!r}")
    return shown


def _cluster_params(method, k, eps, min_samples, space_switch):
    return cluster_params({"method": method, "k": k, "eps": eps, "min_samples": min_samples,
                           "space": "projection" if space_switch else "embedding"})


def _number_input(name: str, label: str, value, step) -> dbc.Row:
    """The number box of the parameter `name`, between its bounds."""
    param, component_id = PAGE.param(name), PAGE.control_id(name)
    return dbc.Row([
        dbc.Label(label, html_for=component_id, width=7, className="small"),
        dbc.Col(dbc.Input(id=component_id, type="number", value=value, step=step, min=param.low, max=param.high,
                          debounce=True, size="sm"), width=5),
    ], className="mb-1")


def _controls(projection, clustering, view_params: dict) -> dbc.Card:
    return dbc.Card(dbc.CardBody([
        html.H6("Projection"),
        dbc.RadioItems(id=PAGE.control_id("projection"), value=projection.method, inline=True,
                       options=[{"label": "PCA", "value": "pca"}, {"label": "t-SNE", "value": "tsne"},
                                {"label": "UMAP", "value": "umap"}]),
        html.Div(_number_input("perplexity", "perplexity", projection.perplexity, 1), id="clustering-perplexity-group"),
        html.Div([_number_input("n_neighbors", "n_neighbors", projection.n_neighbors, 1),
                  _number_input("min_dist", "min_dist", projection.min_dist, "any"),
                  _number_input("seed", "random seed", projection.seed, 1)],
                 id="clustering-umap-group"),
        html.Hr(),
        html.H6("Clustering"),
        dbc.RadioItems(id=PAGE.control_id("method"), value=clustering.method,
                       options=[{"label": "K-Means", "value": "kmeans"}, {"label": "DBSCAN", "value": "dbscan"},
                                {"label": "Hierarchical (Ward)", "value": "hierarchical"}]),
        html.Div([dbc.Label("clusters k", className="small"),
                  dcc.Slider(id=PAGE.control_id("k"), min=K_MIN, max=K_MAX, step=1, value=clustering.k,
                             marks={n: str(n) for n in (K_MIN, 5, 10, 15, K_MAX)})], id="clustering-k-group"),
        html.Div([_number_input("eps", "eps (chord distance)", clustering.eps, "any"),
                  html.Div(id="clustering-eps-cosine", className="small text-muted mb-1"),
                  _number_input("min_samples", "min_samples", clustering.min_samples, 1)],
                 id="clustering-dbscan-group"),
        dbc.Switch(id=PAGE.control_id("space"), label="cluster the 2-D projection instead",
                   value=clustering.space == "projection", className="mt-2"),
        html.Hr(),
        html.H6("Colour points by"),
        dbc.RadioItems(id=PAGE.control_id("colour"), value=view_params["colour"],
                       options=[{"label": "clusters", "value": "clusters"},
                                {"label": "neighbourhood preservation", "value": "preservation"}]),
        html.Div(_number_input("trust_k", "neighbours k", view_params["trust_k"], 1), id="clustering-trust-k-group"),
        html.Hr(),
        dbc.Button("Download clusters (CSV)", id="clustering-download-link", size="sm", color="secondary",
                   external_link=True, href=CLUSTERS_CSV_PATH),
    ]))


def _selection_section() -> html.Div:
    how = dbc.RadioItems(id="clustering-pick-how", value="replace", inline=True, className="small",
                         options=[{"label": "a new pick replaces the selection", "value": "replace"},
                                  {"label": "adds to it", "value": "add"},
                                  {"label": "removes from it", "value": "remove"}])
    exports = html.Div([
        dbc.ButtonGroup([
            dbc.Button("CSV", id="clustering-selection-csv", size="sm", color="secondary", external_link=True),
            dbc.Button("JSON", id="clustering-selection-json", size="sm", color="secondary", external_link=True),
            dbc.Button(".npz with embeddings", id="clustering-selection-npz", size="sm", color="secondary",
                       external_link=True),
        ], className="me-2"),
        dbc.Button("Open on the similarity page", id="clustering-selection-similar", size="sm", color="link",
                   external_link=True),
        html.Details([
            html.Summary(["Python: read this selection from the database ",
                          dcc.Clipboard(target_id="clustering-snippet", title="copy the code",
                                        style={"display": "inline-block"}, id="clustering-snippet-copy")],
                         className="small"),
            html.Pre(id="clustering-snippet", className="small bg-light p-2",
                     style={"maxHeight": "300px", "overflow": "auto"}),
        ], id="clustering-snippet-panel", className="mt-2"),
    ], id="clustering-selection-exports", style={"display": "none"})
    return html.Div([
        html.H4("Selection", className="mt-3"),
        html.Div([how, dbc.Button("Invert", id="clustering-invert", size="sm", color="secondary", className="me-2"),
                  dbc.Button("Clear", id="clustering-clear", size="sm", color="secondary")],
                 className="d-flex flex-wrap align-items-center gap-2"),
        html.Div(id="clustering-selection-count", className="small my-2"),
        exports,
        busy(html.Div(id="clustering-selection-gallery", className="mt-2")),
        dbc.Pagination(id="clustering-selection-pages", max_value=1, active_page=1, fully_expanded=False, size="sm"),
    ], id="clustering-selection-section")


def _trust_badge(trust, images: int) -> html.Span:
    if trust.trustworthiness is None:
        text = "trustworthiness: too few images"
    else:
        sample = f" on a sample of {trust.trust_images:,}" if trust.trust_images < images else ""
        text = f"trustworthiness (k={trust.trust_k}){sample}: {trust.trustworthiness:.3f}"
    kept = f"mean share of neighbours kept: {float(np.mean(trust.kept)) / max(trust.k, 1):.0%}" if len(
        trust.kept) else ""
    return html.Span([dbc.Badge(text, color="info", className="me-2", id="clustering-trustworthiness"),
                      html.Span(kept, className="small text-muted")], title=TRUST_TITLE)


def _metric_explanations() -> html.Details:
    return html.Details([
        html.Summary("What do these numbers mean?", className="small"),
        dcc.Markdown(METRIC_EXPLANATIONS, className="small text-muted"),
    ], id="clustering-metric-explanations", className="mt-1")


def _metrics(metrics) -> html.Div:
    def score(value):
        return "n/a" if value is None else f"{value:.3f}"

    items = [("clusters", str(metrics.n_clusters)), ("silhouette", score(metrics.silhouette)),
             ("adjusted Rand vs folders", score(metrics.adjusted_rand)),
             ("NMI vs folders", score(metrics.normalized_mutual_info))]
    if metrics.n_noise:
        items.insert(1, ("noise points", str(metrics.n_noise)))
    return html.Div([html.Span(dbc.Badge(f"{name}: {value}", color="light", text_color="dark", className="me-2"),
                               title=METRIC_TITLES.get(name, ""))
                     for name, value in items], id="clustering-metric-badges", className="mt-2")


def _summary(view, result, dataset: str) -> html.Div:
    rows = []
    for label, size in result.sizes:
        thumbnails = [
            html.A(html.Img(src=thumbnail_url(view.image_ids[row]), title=view.relpaths[row],
                            style={"height": "72px", "marginRight": "4px"}),
                   href=similarity_url(dataset, view.image_ids[row]))
            for row in result.representatives[label]
        ]
        rows.append(html.Div([html.Div(f"{cluster_name(label)}: {size} image{'s' if size != 1 else ''}",
                                       className="fw-bold small"), html.Div(thumbnails)],
                             className="mb-2 cluster-summary"))
    return html.Div(rows)
