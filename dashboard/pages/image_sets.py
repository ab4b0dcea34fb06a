"""Image sets: add a set of images from the browser (several files, or one .zip whose folders become labels), watch
its index run, add files to it and index it again, index again a dataset whose folder changed on the server, and
remove a set. Shown only on a server started with --allow-uploads.

The files go to the server in one multipart request (dashboard.set_upload), which answers with the ticket of the
index run; the run is a background job in the job server's indexing lane (or on a Celery worker). What the visitor
may do is decided in the request (dashboard.set_actions), never in the job.
"""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html

from dashboard import inputs
from dashboard.auth import current_user
from dashboard.explanations import IMAGE_SETS
from dashboard.image_sets import UploadLimits
from dashboard.page import Page
from dashboard.roles import VIEWER, Visitor, may_add_sets
from dashboard.set_actions import UPLOADS_OFF, SetRow, reindex, remove, run_ticket, set_rows
from dashboard.shell import site_shell
from dashboard.site import Site, current_site
from dashboard.urlstate import dataset_url
from db.errors import DinoscopeError

PAGE = Page("sets", "/image-sets", "Image sets", explanation=IMAGE_SETS, needs_uploads=True)
POLL_MS = 1000  # an index run takes minutes: a progress line a second is enough
NEW_SET = ""  # the upload's target when it starts a new dataset
HIDDEN, SHOWN = {"display": "none"}, {"display": "inline-block"}


def _visitor() -> Visitor:
    return current_user() or Visitor(None, VIEWER)


@PAGE.layout
def layout(dataset: str | None = None, **_query):
    site = current_site()
    visitor = _visitor()
    rows = set_rows(site, visitor)
    if site.sets is None:
        adding = dbc.Alert(UPLOADS_OFF, color="secondary", id="sets-off")
    elif not may_add_sets(visitor.role):
        adding = dbc.Alert("Your role lets you browse the datasets, not add image sets.", color="secondary",
                           id="sets-viewer")
    else:
        adding = _adding_card(rows, site.sets.limits)
    return site_shell(site.store, PAGE.path, dataset, html.Div([
        PAGE.explanation_panel(),
        dcc.Store(id="sets-ticket"),
        adding,
        dbc.Card(dbc.CardBody([
            html.H5("Index run", className="card-title"),
            html.Div(id="sets-progress"),
            dbc.Button("Cancel", id="sets-cancel", color="secondary", size="sm", style=HIDDEN, className="mt-1"),
            html.Div(id="sets-result", className="mt-2"),
        ]), className="mb-3"),
        dbc.Card(dbc.CardBody([
            html.H5("Datasets and image sets", className="card-title"),
            html.Div(_table(rows), id="sets-rows"),
            dbc.Row([
                dbc.Col(dcc.Dropdown(id="sets-chosen-dataset", options=_managed(rows), placeholder="a dataset"),
                        md=4),
                dbc.Col([
                    dbc.Button("Index again", id="sets-reindex", color="primary", size="sm", className="me-2"),
                    dbc.Button("Remove", id="sets-remove", color="danger", outline=True, size="sm", className="me-2"),
                    dbc.Button("Remove for good", id="sets-remove-confirm", color="danger", size="sm", style=HIDDEN),
                ], md="auto"),
            ], className="g-2 mt-2 align-items-center",
                style=None if site.sets is not None and may_add_sets(visitor.role) else HIDDEN),
            html.Div(id="sets-action", className="mt-2"),
        ]), className="mb-3"),
    ]))


def _adding_card(rows: list[SetRow], limits: UploadLimits) -> dbc.Card:
    return dbc.Card(dbc.CardBody([
        html.H5("Add images", className="card-title"),
        dbc.Row([
            dbc.Col(dbc.Label("Add to", html_for="sets-target"), md="auto"),
            dbc.Col(dcc.Dropdown(id="sets-target", options=_targets(rows), value=NEW_SET, clearable=False), md=3),
            dbc.Col(dcc.Input(id="sets-name", placeholder="name of the new dataset", maxLength=80,
                              className="form-control"), md=3),
        ], className="g-2 mb-2 align-items-center"),
        dcc.Upload(id="sets-files", multiple=True, className="sets-drop", children=html.Div(
            "Drop images or one .zip here, or click to choose them (a zip's folders become the images' labels)"),
            style={"border": "2px dashed #adb5bd", "borderRadius": "6px", "padding": "1.5rem", "textAlign": "center",
                   "cursor": "pointer"}),
        html.Div(id="sets-chosen", className="small mt-1"),
        dbc.Button("Upload and index", id="sets-send", color="primary", className="mt-2"),
        html.Div(id="sets-sending", className="small mt-1"),
        html.P(_limits_text(limits), className="small text-muted mt-2 mb-0", id="sets-limits"),
    ]), className="mb-3")


PAGE.clientside_callback(
    dash.ClientsideFunction("imageSets", "send"), Output("sets-sending", "children"), Input("sets-send", "n_clicks"),
    State("sets-name", "value"), State("sets-target", "value"), prevent_initial_call=True)
PAGE.clientside_callback(
    "function (target) { return target ? {display: 'none'} : {}; }", Output("sets-name", "style"),
    Input("sets-target", "value"))


@PAGE.callback(
    Output("sets-result", "children"), Input("sets-ticket", "data"),
    background=True, manager="indexing", prevent_initial_call=True, interval=POLL_MS,
    progress=Output("sets-progress", "children"),
    running=[(Output("sets-cancel", "style"), SHOWN, HIDDEN), (Output("sets-send", "disabled"), True, False),
             (Output("sets-reindex", "disabled"), True, False)],
    cancel=Input("sets-cancel", "n_clicks"),
)
def index_set(site: Site, set_progress, ticket):
    if not ticket:
        return dash.no_update
    set_progress("Starting: reading the files and loading the model…")
    summary = run_ticket(site, ticket, lambda step: set_progress(_progress_view(step)))  # any value: a ticket or not
    return _summary_view(summary)


@PAGE.callback(Output("sets-progress", "children", allow_duplicate=True), Input("sets-cancel", "n_clicks"),
               prevent_initial_call=True)
def report_cancel(site: Site, _clicks):
    return "Cancelled: what was indexed so far is kept; index the set again to finish it."


@PAGE.callback(
    Output("sets-rows", "children"), Output("sets-chosen-dataset", "options"),
    Input("sets-result", "children"), Input("sets-action", "children"), prevent_initial_call=True,
)
def refresh_rows(site: Site, _result, _action):
    rows = set_rows(site, _visitor())
    return _table(rows), _managed(rows)


@PAGE.callback(Output("sets-target", "options"), Input("sets-result", "children"), Input("sets-action", "children"),
               prevent_initial_call=True)
def refresh_targets(site: Site, _result, _action):
    return _targets(set_rows(site, _visitor()))


@PAGE.callback(
    Output("sets-ticket", "data"), Output("sets-action", "children"),
    Input("sets-reindex", "n_clicks"), State("sets-chosen-dataset", "value"), prevent_initial_call=True,
)
def index_again(site: Site, _clicks, dataset):
    dataset = inputs.text(dataset, "The dataset")
    if not dataset:
        return dash.no_update, _refusal("Pick a dataset to index again")
    try:
        ticket = reindex(site, _visitor(), dataset)
    except DinoscopeError as refused:
        return dash.no_update, _refusal(str(refused))
    return ticket, html.Span(f"Indexing {dataset!r} again: see the index run above.", className="text-muted")


@PAGE.callback(
    Output("sets-remove-confirm", "style"), Output("sets-remove-confirm", "children"),
    Input("sets-remove", "n_clicks"), Input("sets-chosen-dataset", "value"), prevent_initial_call=True,
)
def ask_to_remove(site: Site, _clicks, dataset):
    dataset = inputs.text(dataset, "The dataset")
    if dash.ctx.triggered_id != "sets-remove" or not dataset:
        return HIDDEN, dash.no_update
    return SHOWN, f"Remove {dataset!r} for good"


@PAGE.callback(
    Output("sets-action", "children", allow_duplicate=True),
    Output("sets-remove-confirm", "style", allow_duplicate=True),
    Input("sets-remove-confirm", "n_clicks"), State("sets-chosen-dataset", "value"), prevent_initial_call=True,
)
def remove_set(site: Site, _clicks, dataset):
    dataset = inputs.text(dataset, "The dataset")
    try:
        done = remove(site, _visitor(), dataset)
    except DinoscopeError as refused:
        return _refusal(str(refused)), HIDDEN
    return html.Span(done, className="text-success", id="sets-removed"), HIDDEN


def _progress_view(step: dict) -> html.Div:
    done, total = step["done"], step["total"]
    if total == 0:
        return html.Div(f"Indexing {step['dataset']!r}: nothing new to embed", id="sets-progress-line")
    facts = [f"{done} of {total} images"]
    if step["images_per_second"]:
        facts.append(f"{step['images_per_second']:.1f} images per second")
    if step["seconds_left"] is not None and done < total:
        facts.append(f"about {_duration(step['seconds_left'])} left")
    return html.Div([html.Div(f"Indexing {step['dataset']!r}: " + " · ".join(facts), id="sets-progress-line"),
                     dbc.Progress(value=100 * done / total, style={"height": "6px"}, className="mt-1")])


def _summary_view(summary: dict):
    if summary["refused"]:
        return dbc.Alert(summary["refused"], color="warning", id="sets-refused")
    name = summary["dataset"]
    changes = [f"{summary[key]} {key}" for key in ("added", "updated", "moved", "removed") if summary[key]]
    # A file that cannot be read fails again on every run: no change, and no reason to hide that nothing changed.
    counts = ", ".join((changes or [f"{summary['unchanged']} unchanged, nothing new"])
                       + ([f"{summary['failed']} failed"] if summary["failed"] else []))
    speed = f", {summary['images_per_second']:.1f} images per second" if summary["embedded"] else ""
    failures = summary["failures"]
    return html.Div([
        html.P(f"{name!r} indexed in {_duration(summary['seconds'])}: {counts}{speed}.", id="sets-summary"),
        *[html.P(note, className="small text-warning") for note in summary["notes"]],
        html.Div([
            html.H6(f"{len(failures)} {'file was' if len(failures) == 1 else 'files were'} left out"),
            html.Table([html.Tr([html.Td(path, className="pe-3"), html.Td(reason)]) for path, reason in failures],
                       className="table table-sm small"),
        ], id="sets-failures") if failures else None,
        dbc.Button(f"Open {name!r} in the gallery", href=dataset_url("/gallery", name), id="sets-open",
                   color="success", size="sm"),
    ])


def _table(rows: list[SetRow]):
    if not rows:
        return html.P("No datasets yet.", className="text-muted")
    header = html.Tr([html.Th(title) for title in ("Dataset", "Added by", "Images indexed", "Files", "Size")])
    lines = [html.Tr([
        html.Td(html.A(row.dataset, href=dataset_url("/gallery", row.dataset)) if row.images is not None
                else row.dataset),
        html.Td((row.owner or "the local user") if row.uploaded else "a folder of the server"),
        html.Td("not indexed" if row.images is None else str(row.images)),
        html.Td("" if row.files is None else str(row.files)),
        html.Td("" if row.bytes is None else _size(row.bytes)),
    ]) for row in rows]
    return html.Table([html.Thead(header), html.Tbody(lines)], className="table table-sm", id="sets-table")


def _targets(rows: list[SetRow]) -> list[dict]:
    """Where an upload may go: a new dataset, or a set the visitor may add files to."""
    return [{"label": "a new dataset", "value": NEW_SET}] + [
        {"label": f"the set {row.dataset}", "value": row.dataset} for row in rows if row.may_add]


def _managed(rows: list[SetRow]) -> list[str]:
    """The datasets the visitor may index again or remove."""
    return [row.dataset for row in rows if row.may_reindex or row.may_remove]


def _refusal(message: str) -> html.Span:
    return html.Span(message, className="text-danger", id="sets-refusal")


def _limits_text(limits: UploadLimits) -> str:
    return (f"Up to {limits.files_per_set:,} images a set, each at most {_size(limits.file_bytes)} and "
            f"{limits.image_pixels / 1e6:,.0f} megapixels; {_size(limits.set_bytes)} a set and "
            f"{_size(limits.user_bytes)} for all your sets.")


def _size(count: int) -> str:
    return f"{count / 1024**3:,.1f} GB" if count >= 1024**3 else f"{count / 1024**2:,.0f} MB"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"
