"""Gallery: every image of a dataset as thumbnails, ten to a row, by page and label; click one for its details."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, ctx, dcc, html

from dashboard import inputs
from dashboard.browse import GALLERY_COLUMNS, GALLERY_PAGE_SIZE, PAGE_SIZES, gallery_page, image_detail, label_options
from dashboard.data import DatasetView
from dashboard.page import Page
from dashboard.shell import busy, image_links, page_shell
from dashboard.site import Site, current_site
from dashboard.urlstate import Param, thumbnail_url, why_url

PAGE = Page("gallery", "/gallery", "Gallery", home=True, params=(
    Param("label", None, kind=str),
    Param("page", 1, control="pages", prop="active_page"),
    Param("per_page", GALLERY_PAGE_SIZE, choices=PAGE_SIZES),
))


@PAGE.layout
def layout(dataset: str | None = None, **query):
    chosen = PAGE.query(query)
    label, size = chosen["label"], chosen["per_page"]
    store = current_site().store

    def content(provenance):
        view = store.view(provenance.name)
        shown = gallery_page(view, label, chosen["page"], size)
        return html.Div([
            dcc.Store(id="gallery-dataset", data=view.name),
            PAGE.url_parameters(),
            dcc.Store(id="gallery-filter", data={"label": label, "per_page": size}),
            dbc.Row([
                dbc.Col(dcc.Dropdown(id=PAGE.control_id("label"), options=label_options(view), value=label,
                                     placeholder="all labels"), md=3),
                dbc.Col(dbc.Select(id=PAGE.control_id("per_page"), value=str(size),
                                   options=[{"label": f"{n} per page", "value": str(n)} for n in PAGE_SIZES]),
                        md=2),
                dbc.Col(dbc.Pagination(id=PAGE.control_id("page"), max_value=shown.page_count,
                                       active_page=shown.page, fully_expanded=False), md="auto"),
                dbc.Col(html.Span(id="gallery-count", children=_count_text(shown.total)),
                        className="text-muted align-self-center"),
            ], className="mb-2 g-2"),
            busy(html.Div(id="gallery-grid", children=_grid(view, shown.positions))),
            dbc.Modal(id="gallery-detail", size="lg", is_open=False),
        ])

    return page_shell(store, PAGE.path, dataset, content)


@PAGE.callback(
    Output("gallery-grid", "children"), Output(PAGE.control_id("page"), "max_value"),
    Output(PAGE.control_id("page"), "active_page"), Output("gallery-count", "children"),
    Output("gallery-filter", "data"), *PAGE.controls(PAGE.params),
    State("gallery-dataset", "data"), State("gallery-filter", "data"), prevent_initial_call=True,
)
def show_page(site: Site, label, page, per_page, dataset, shown_filter):
    view = inputs.dataset_view(site.store, dataset)
    chosen = PAGE.query({"label": label, "page": page, "per_page": per_page})
    wanted = {"label": label, "per_page": chosen["per_page"]}
    shown = gallery_page(view, label, chosen["page"] if wanted == shown_filter else 1, wanted["per_page"])
    return _grid(view, shown.positions), shown.page_count, shown.page, _count_text(shown.total), wanted


@PAGE.callback(
    Output("gallery-detail", "children"), Output("gallery-detail", "is_open"),
    Input({"type": "gallery-thumb", "index": ALL}, "n_clicks"),
    Input({"type": "detail-neighbour", "index": ALL}, "n_clicks"),
    State("gallery-dataset", "data"), prevent_initial_call=True,
)
def open_detail(site: Site, _grid_clicks, _neighbour_clicks, dataset):
    if not ctx.triggered or not ctx.triggered[0]["value"]:
        return dash.no_update, dash.no_update  # thumbnails re-rendered, nobody clicked
    view = inputs.dataset_view(site.store, dataset)
    detail = image_detail(view, inputs.image_in(view, ctx.triggered_id["index"]))
    return _detail_body(dataset, detail), True


def _count_text(total: int) -> str:
    return f"{total} image{'s' if total != 1 else ''}"


def _grid(view: DatasetView, positions: list[int]) -> html.Div:
    cells = [
        html.Div(html.Img(src=thumbnail_url(int(view.image_ids[i])), alt=view.relpaths[i], title=view.relpaths[i],
                          style={"width": "100%", "aspectRatio": "1", "objectFit": "cover"}),
                 id={"type": "gallery-thumb", "index": int(view.image_ids[i])}, n_clicks=0, role="button",
                 className="gallery-thumb")
        for i in positions
    ]
    return html.Div(cells, style={"display": "grid", "gridTemplateColumns": f"repeat({GALLERY_COLUMNS}, 1fr)",
                                  "gap": "6px"})


def _detail_body(dataset: str, detail) -> list:
    facts = [("Path", detail.relpath), ("Label", detail.label or "none"),
             ("Size", f"{detail.width} x {detail.height} px"), ("Image id", str(detail.image_id))]
    neighbours = html.Div([
        html.Div([
            html.Figure([
                html.Img(src=thumbnail_url(n.image_id), title=n.relpath, style={"width": "96px", "height": "96px",
                                                                                "objectFit": "cover"}),
                html.Figcaption(f"{n.score:.3f}", className="small text-center"),
            ], id={"type": "detail-neighbour", "index": n.image_id}, n_clicks=0, role="button", className="mb-0"),
            html.A("why?", href=why_url(dataset, detail.image_id, n.image_id), className="small detail-why",
                   title="The patches of the two images that match"),
        ], className="me-2 mb-2 text-center")
        for n in detail.neighbours
    ], className="d-flex flex-wrap", id="detail-neighbours")
    return [
        dbc.ModalHeader(dbc.ModalTitle(detail.relpath)),
        dbc.ModalBody([
            html.Img(src=thumbnail_url(detail.image_id, "preview"), id="detail-preview",
                     style={"maxWidth": "100%", "maxHeight": "60vh"}),
            html.Table([html.Tr([html.Th(name, className="pe-3"), html.Td(value)]) for name, value in facts],
                       className="table table-sm mt-2", id="detail-facts"),
            html.H6("Nearest neighbours (cosine similarity)"),
            neighbours,
        ]),
        dbc.ModalFooter(image_links(dataset, detail.image_id, "detail")),
    ]
