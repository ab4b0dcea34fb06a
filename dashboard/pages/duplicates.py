"""Duplicates: exact copies (the same bytes, also in the datasets of the same model and weights) and near-duplicates
(groups of images joined by pairs at the threshold or above), with the histogram of every image's nearest-neighbour
similarity to choose the threshold, and downloads of the groups as CSV and JSON.

The near-duplicate pass runs in the request up to IN_REQUEST images and in a background job of the projections
lane above (tens of seconds at 100,000 images), with progress and cancel; it is kept in the shared results cache per
dataset generation, so moving the threshold or a second user only regroups the cached pairs.
"""

from __future__ import annotations

from urllib.parse import urlencode
from uuid import uuid4

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html

from dashboard import inputs
from dashboard.analysis.duplicates import duplicate_groups, groups_holding
from dashboard.downloads import DUPLICATES_CSV_PATH, DUPLICATES_JSON_PATH
from dashboard.duplicates_view import (
    LOWEST,
    PARAMS,
    cached_pass,
    crowding_note,
    exact_groups,
    nearest_histogram,
    pass_key,
    runs_in_background,
)
from dashboard.explanations import DUPLICATES
from dashboard.page import Page
from dashboard.selections import SELECTION, is_selection_id, load_selection, selected_rows
from dashboard.shell import busy, page_shell, selection_note
from dashboard.site import Site, current_site
from dashboard.urlstate import similarity_url, thumbnail_url
from db.holds import hold

PAGE = Page("duplicates", "/duplicates", "Duplicates", explanation=DUPLICATES, params=(*PARAMS, SELECTION))
GROUPS_PER_PAGE = 10  # rows of thumbnails on a page of near-duplicate groups
THUMBNAILS_PER_GROUP = 12  # of a larger group the rest is counted, and listed in the downloads
EXACT_SHOWN = 10  # exact groups shown; all of them are in the downloads
POLL_MS = 500
CHANGED = "The indexer has changed this dataset since the page opened: show the changes (above) to work on them."


@PAGE.layout
def layout(dataset: str | None = None, **query):
    chosen = PAGE.query(query)
    site = current_site()
    store = site.store

    def content(provenance):
        exact = exact_groups(store, provenance.name)
        wanted = chosen["selection"]
        among = load_selection(site.selections, store.view(provenance.name), wanted) if wanted else None
        return html.Div([
            dcc.Store(id=PAGE.control_id("selection"), data=wanted if among is not None else ""),
            dcc.Store(id="duplicates-session", data=uuid4().hex),
            dcc.Store(id="duplicates-dataset", data=provenance.name),
            dcc.Store(id="duplicates-request"),
            dcc.Store(id="duplicates-ready"),
            PAGE.url_parameters(),
            PAGE.explanation_panel(),
            html.H4("Exact copies"),
            html.P(_exact_text(exact, provenance.name), className="small text-muted", id="duplicates-exact-count"),
            html.Div([_exact_row(group, number) for number, group in enumerate(exact[:EXACT_SHOWN], 1)],
                     id="duplicates-exact"),
            html.H4("Near-duplicates", className="mt-3"),
            html.Div(selection_note(PAGE.name, PAGE.path, provenance.name, wanted, among,
                                    "Only the groups that hold an image of",
                                    ("All the groups", "the groups are of the whole dataset")),
                     id="duplicates-selection-note"),
            dbc.Row([
                dbc.Col([
                    dbc.Label("threshold (cosine similarity)", html_for=PAGE.control_id("threshold"),
                              className="small"),
                    dcc.Slider(id=PAGE.control_id("threshold"), min=LOWEST, max=1.0, step=0.005,
                               value=chosen["threshold"], marks={v: f"{v:.2f}" for v in (LOWEST, 0.9, 0.95, 1.0)},
                               tooltip={"placement": "bottom"}, updatemode="mouseup"),
                ], md=5),
                dbc.Col([
                    dbc.Button("Download groups (CSV)", id="duplicates-csv-link", size="sm", color="secondary",
                               external_link=True, href=DUPLICATES_CSV_PATH, className="me-2"),
                    dbc.Button("Download groups (JSON)", id="duplicates-json-link", size="sm", color="secondary",
                               external_link=True, href=DUPLICATES_JSON_PATH),
                ], md="auto", className="align-self-center"),
            ], className="mb-2"),
            html.Div(id="duplicates-status", className="small text-muted"),
            dbc.Button("Cancel", id="duplicates-cancel", size="sm", color="secondary", className="mb-2",
                       style={"display": "none"}),
            busy(dcc.Graph(id="duplicates-histogram", config={"displaylogo": False})),
            html.Div(id="duplicates-count", className="small fw-bold"),
            dbc.Pagination(id=PAGE.control_id("page"), max_value=1, active_page=chosen["page"],
                           fully_expanded=False),
            busy(html.Div(id="duplicates-groups")),
        ])

    return page_shell(store, PAGE.path, dataset, content)


@PAGE.callback(
    Output("duplicates-ready", "data"), Output("duplicates-request", "data"), Output("duplicates-status", "children"),
    Input("duplicates-dataset", "data"),
)
def choose_pass(site: Site, dataset):
    view = inputs.dataset_view(site.store, dataset)
    key = pass_key(view)
    if runs_in_background(view) and key not in site.results:
        return dash.no_update, {"key": key}, "Starting…"
    cached_pass(site.results, view)
    return key, dash.no_update, ""


@PAGE.callback(
    Output("duplicates-ready", "data", allow_duplicate=True), Input("duplicates-request", "data"),
    State("duplicates-dataset", "data"), State("duplicates-session", "data"),
    background=True, manager="projections", prevent_initial_call=True, interval=POLL_MS,
    progress=Output("duplicates-status", "children"),
    running=[(Output("duplicates-cancel", "style"), {"display": "inline-block"}, {"display": "none"})],
    cancel=Input("duplicates-cancel", "n_clicks"),
)
def compute_pass(site: Site, set_progress, request, dataset, _session):
    # _session: a per-page-load id, so two users asking for the same pass are two jobs (Dash 4.4.1).
    if not request:
        return dash.no_update
    try:
        view = inputs.dataset_view(site.store, dataset)
    except inputs.BadInput as error:
        dash.set_props("duplicates-status", {"children": str(error)})
        return dash.no_update
    def report(stage: str) -> None:
        set_progress(f"Computing: {stage}…")
        hold("duplicates-pass")

    cached_pass(site.results, view, progress=report)
    return pass_key(view)


@PAGE.callback(
    Output("duplicates-status", "children", allow_duplicate=True), Input("duplicates-cancel", "n_clicks"),
    prevent_initial_call=True,
)
def report_cancel(site: Site, _clicks):
    return "Cancelled: open the page again to find the near-duplicates."


@PAGE.callback(
    Output("duplicates-histogram", "figure"), Output("duplicates-groups", "children"),
    Output("duplicates-count", "children"), Output(PAGE.control_id("page"), "max_value"),
    Output(PAGE.control_id("page"), "active_page"), Output("duplicates-status", "children", allow_duplicate=True),
    Output("duplicates-csv-link", "href"), Output("duplicates-json-link", "href"),
    Input("duplicates-ready", "data"), *PAGE.controls(PARAMS), State(PAGE.control_id("selection"), "data"),
    State("duplicates-dataset", "data"), prevent_initial_call=True,
)
def show_groups(site: Site, ready, threshold, page, selection, dataset):
    if not ready:
        return (dash.no_update,) * 8
    view = inputs.dataset_view(site.store, dataset)
    key = pass_key(view)
    if inputs.text(ready, "The pass's key") != key:
        if ready.startswith(f"duplicates/{view.name}/"):  # of an earlier generation: the indexer ran since
            return (*(dash.no_update,) * 5, CHANGED, dash.no_update, dash.no_update)
        raise inputs.BadInput(f"The pass's key is not one of dataset {view.name!r}")
    found = site.results.get(key)
    if found is None:  # evicted from the cache meanwhile
        return (*(dash.no_update,) * 5, "Open the page again to find the near-duplicates.", dash.no_update,
                dash.no_update)
    chosen = PAGE.query({"threshold": threshold, "page": page})
    groups = duplicate_groups(found, chosen["threshold"])
    selection = inputs.text(selection, "The selection")
    if selection:  # only the groups that hold an image of the selection
        among = load_selection(site.selections, view, selection) if is_selection_id(selection) else None
        if among is None:
            raise inputs.BadInput(f"There is no selection {inputs.shown(selection)} of dataset {view.name!r}")
        groups = groups_holding(groups, selected_rows(view, among))
    pages = max(1, -(-len(groups) // GROUPS_PER_PAGE))
    # A new threshold starts at the first page; opening the page keeps the URL's.
    current = 1 if dash.ctx.triggered_id == PAGE.control_id("threshold") else min(chosen["page"], pages)
    shown = groups[(current - 1) * GROUPS_PER_PAGE:current * GROUPS_PER_PAGE]
    images, note = sum(len(group.rows) for group in groups), crowding_note(found)
    count = (f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-duplicates ({images} images) at "
             f"{chosen['threshold']:.3f} or above"
             + (f", holding images of selection {selection}" if selection else "")
             + (f". {note}" if note else ""))
    query = urlencode({"dataset": view.name, "threshold": chosen["threshold"]})
    rows = [_near_row(view, group, (current - 1) * GROUPS_PER_PAGE + number, found)
            for number, group in enumerate(shown, 1)]
    return (nearest_histogram(found, chosen["threshold"]), rows, count, pages, current, "",
            f"{DUPLICATES_CSV_PATH}?{query}", f"{DUPLICATES_JSON_PATH}?{query}")



def _exact_text(exact, dataset: str) -> str:
    if not exact:
        return "No two images hold the same bytes."
    images = sum(len(group.images) for group in exact)
    shown = f" (the first {EXACT_SHOWN} shown; the downloads list all)" if len(exact) > EXACT_SHOWN else ""
    return (f"{len(exact)} content{'s' if len(exact) != 1 else ''} held by more than one image ({images} images), in "
            f"{dataset} and the datasets of the same model and weights{shown}.")


def _thumbnail(image_id: int, title: str, href: str, caption: str) -> html.A:
    return html.A(html.Figure([
        html.Img(src=thumbnail_url(image_id), title=title, style={"height": "88px", "width": "88px",
                                                                  "objectFit": "cover"}),
        html.Figcaption(caption, className="small text-center text-truncate", style={"maxWidth": "88px"}),
    ], className="me-2 mb-0"), href=href, className="duplicates-thumb")


def _exact_row(group, number: int) -> html.Div:
    thumbnails = [_thumbnail(image.image_id, f"{image.dataset}: {image.relpath}",
                             similarity_url(image.dataset, image.image_id), image.dataset)
                  for image in group.images[:THUMBNAILS_PER_GROUP]]
    return _row(f"copy {number}: {len(group.images)} images, content {group.content_hash[:12]}…", thumbnails,
                len(group.images), "duplicates-exact-group")


def _near_row(view, group, number: int, found) -> html.Div:
    thumbnails = []
    for row in group.rows[:THUMBNAILS_PER_GROUP]:
        image_id = int(view.image_ids[row])
        thumbnails.append(_thumbnail(image_id, view.relpaths[row], similarity_url(view.name, image_id),
                                     f"{found.nearest_similarity[row]:.3f}"))
    return _row(f"group {number}: {len(group.rows)} images, closest pair {group.highest:.3f}", thumbnails,
                len(group.rows), "duplicates-near-group")


def _row(title: str, thumbnails: list, size: int, class_name: str) -> html.Div:
    more = [html.Span(f"+ {size - THUMBNAILS_PER_GROUP} more", className="small text-muted align-self-center")] \
        if size > THUMBNAILS_PER_GROUP else []
    return html.Div([html.Div(title, className="fw-bold small"),
                     html.Div(thumbnails + more, className="d-flex flex-wrap")], className=f"mb-2 {class_name}")
