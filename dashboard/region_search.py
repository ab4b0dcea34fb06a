"""Where else does a region of an image appear: the box drawn on a page's picture of a dataset image, the region
query (why_view.region_query) run as a background job with progress and Cancel, and its results, each with the
region's best place outlined. One section, shared by the pages that offer it (within image, similarity): a page puts
`region_section` in its layout and calls `register_region_search` once.

Its components' ids start with the page's name: `<page>-region` (the chosen region), `<page>-shortlist`,
`<page>-region-status`, `<page>-region-cancel`, `<page>-region-results`.
"""

from __future__ import annotations

from uuid import uuid4

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html
from pydantic import BaseModel, FiniteFloat, NonNegativeInt, StrictInt

from dashboard import inputs
from dashboard.analysis.correspondence import Region, region_of_box
from dashboard.data import DatasetStore, DatasetView
from dashboard.shell import busy
from dashboard.site import Site
from dashboard.urlstate import thumbnail_url, why_url
from dashboard.why_view import REGION_RESULTS, SHORTLIST, found_region_figure, region_query

POLL_MS = 500  # how often a page asks about its region query


class BoxSelection(BaseModel):
    """A box select's selectedData: the box's range in the figure's (pixel) coordinates."""

    range: dict[str, tuple[FiniteFloat, FiniteFloat]]


class ChosenRegion(BaseModel):
    """The region a box chose (`<page>-region`): its image and its cells, rows top..bottom - 1 and columns
    left..right - 1."""

    image: StrictInt
    top: NonNegativeInt
    left: NonNegativeInt
    bottom: NonNegativeInt
    right: NonNegativeInt


def region_section(page: str, picture: str) -> html.Div:
    """The section of `page` (its name) that runs the query for a box drawn on `picture` (words: where it is)."""
    return html.Div([
        html.H5("Where else does this region appear?"),
        html.P(f"Drag a box over {picture}. The images nearest it by embedding (the shortlist) are searched for the "
               "region's patch tokens, each at its best place.", className="small text-muted"),
        dcc.Store(id=f"{page}-region"),
        dcc.Store(id=f"{page}-region-session", data=uuid4().hex),
        dbc.Row([
            dbc.Col([dbc.Label(f"Shortlist (images searched, {SHORTLIST.low} to {SHORTLIST.high})",
                               html_for=f"{page}-shortlist", className="small"),
                     dbc.Input(id=f"{page}-shortlist", type="number", min=SHORTLIST.low, max=SHORTLIST.high,
                               step=10, value=SHORTLIST.default, debounce=True, size="sm")], md=3),
            dbc.Col([html.Span(id=f"{page}-region-status", className="small me-2"),
                     dbc.Button("Cancel", id=f"{page}-region-cancel", size="sm", color="secondary",
                                style={"display": "none"})], className="align-self-end"),
        ], className="mb-2"),
        busy(html.Div(id=f"{page}-region-results")),
    ], className="mt-4", id=f"{page}-region-section")


def register_region_search(page, picture_id: str, image_control_id: str, dataset_store_id: str) -> None:
    """The callbacks of `page`'s region_section (a dashboard.page.Page): a box drawn on the graph `picture_id`
    (a why_view.region_picture or any figure with why_view.box_select, of the image chosen by `image_control_id`)
    chooses the region, and the region or the shortlist changing runs the query in the clusterings lane."""
    prefix = page.name
    page.callback(
        Output(f"{prefix}-region", "data"), Input(picture_id, "selectedData"),
        State(image_control_id, "value"), State(dataset_store_id, "data"), prevent_initial_call=True,
    )(choose_region)
    page.callback(
        Output(f"{prefix}-region-results", "children"),
        Input(f"{prefix}-region", "data"), Input(f"{prefix}-shortlist", "value"),
        State(dataset_store_id, "data"), State(f"{prefix}-region-session", "data"),
        background=True, manager="clusterings", prevent_initial_call=True, interval=POLL_MS,
        progress=Output(f"{prefix}-region-status", "children"),
        running=[(Output(f"{prefix}-region-cancel", "style"), {"display": "inline-block"}, {"display": "none"})],
        cancel=Input(f"{prefix}-region-cancel", "n_clicks"),
    )(find_region)


def choose_region(site: Site, selection, image_id, dataset):
    if not selection or isinstance(selection, dict) and "range" not in selection:
        return dash.no_update  # a click, or a selection cleared
    box = inputs.record(BoxSelection, selection, "The box drawn").range
    if "x" not in box or "y" not in box:
        raise inputs.BadInput("The box drawn is malformed: it needs an x and a y range")
    view = inputs.dataset_view(site.store, dataset)
    image_id = inputs.image_in(view, image_id)
    width, height = view.sizes[view.position(image_id)]
    rows, cols = site.store.grid_shape(view.name)
    (x0, x1), (y0, y1) = box["x"], box["y"]
    region = region_of_box(x0 / width, x1 / width, y0 / height, y1 / height, rows, cols)
    return {"image": image_id, "top": region.top, "left": region.left, "bottom": region.bottom,
            "right": region.right}


def find_region(site: Site, set_progress, chosen, shortlist, dataset, _session):
    # _session: a per-page-load id, so two users asking for the same region are two jobs (Dash 4.4.1).
    if not chosen:
        return dash.no_update
    try:
        view = inputs.dataset_view(site.store, dataset)
        chosen = inputs.record(ChosenRegion, chosen, "The region")
        image_id = inputs.image_in(view, chosen.image)
        region = _region_in(site.store.grid_shape(view.name), chosen)
    except inputs.BadInput as error:
        return dbc.Alert(str(error), color="danger", className="region-error")
    count = min(SHORTLIST.coerce(shortlist), len(view) - 1)
    set_progress(f"Comparing the region with {count} images…")
    found = region_query(site.store, view, image_id, region, count,
                         progress=lambda done, total: set_progress(f"Compared {done} of {total} images…"))
    return _region_results(site.store, view, image_id, region, count, found[:REGION_RESULTS])


def _region_in(grid_shape: tuple[int, int], chosen: ChosenRegion) -> Region:
    rows, cols = grid_shape
    if not (chosen.top < chosen.bottom <= rows and chosen.left < chosen.right <= cols):
        raise inputs.BadInput(f"The region is malformed: rows {chosen.top}..{chosen.bottom} and columns "
                              f"{chosen.left}..{chosen.right} are not a block of the {rows} x {cols} grid")
    return Region(chosen.top, chosen.left, chosen.bottom, chosen.right)


def _region_results(store: DatasetStore, view: DatasetView, image_id: int, region: Region, count: int,
                    found) -> html.Div:
    rows, cols = region.shape
    grid_shape = store.grid_shape(view.name)
    cards = []
    for match in found:
        position = view.position(match.image_id)
        size = tuple(int(v) for v in view.sizes[position])
        figure = found_region_figure(thumbnail_url(match.image_id, "preview"), size, grid_shape, region.shape, match)
        relpath = view.relpaths[position]
        cards.append(dbc.Col(html.Div([
            html.Div(relpath, className="small fw-bold text-truncate", title=relpath),
            dcc.Graph(figure=figure, config={"staticPlot": True}, className="region-found"),
            html.Div([html.Span(f"mean cosine {match.score:.3f} ", className="small region-score"),
                      html.A("why similar?", href=why_url(view.name, image_id, match.image_id),
                             className="small region-why")]),
        ]), md=3))
    heading = (f"Where the region of {rows} x {cols} patches of {view.relpaths[view.position(image_id)]} appears: "
               f"the best {len(found)} of the {count} images nearest it, each with the region's best place outlined")
    return html.Div([html.H6(heading, className="region-heading"), dbc.Row(cards, className="g-2")])
