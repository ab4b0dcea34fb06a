"""Embeddings: one image's global embedding in numbers and plots, the dataset's PCA, and downloads."""

from __future__ import annotations

from urllib.parse import urlencode

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dash_table, dcc, html

from dashboard import inputs
from dashboard.data import DatasetView
from dashboard.downloads import EMBEDDING_NPY_PATH, EMBEDDINGS_NPZ_PATH
from dashboard.embeddings_view import (
    COMPONENTS_DEFAULT,
    COMPONENTS_MIN,
    N_DEFAULT,
    N_MAX,
    DatasetPCA,
    cached_pca,
    component_limit,
    embedding_histogram_figure,
    embedding_line_figure,
    embedding_of,
    embedding_statistics,
    explained_variance_figure,
    extreme_features,
    extremes_figure,
    format_value,
    pca_table_page,
    raw_values_text,
)
from dashboard.explanations import EMBEDDINGS
from dashboard.image_picker import image_and_count, register_image_search
from dashboard.page import ImageLink, Page
from dashboard.shell import busy, image_links, page_shell, unknown_image_notice
from dashboard.similarity_view import reference_image
from dashboard.site import Site, current_site
from dashboard.urlstate import IMAGE, Param, thumbnail_url

TABLE_PAGE_SIZE = 25
N_MARKS = {1: "1", 10: "10", 20: "20", 30: "30", 40: "40", 50: "50"}
_GRAPH_CONFIG = {"displaylogo": False}
N = Param("n", N_DEFAULT, 1, N_MAX)
COMPONENTS = Param("components", COMPONENTS_DEFAULT, COMPONENTS_MIN)  # at most the dataset's component limit
_TABLE_PAGE = Param("page_current", 0, 0)
PAGE = Page("embeddings", "/embeddings", "Embeddings", image_link=ImageLink("Embedding", "embedding"),
            explanation=EMBEDDINGS, params=(IMAGE, N, COMPONENTS))


@PAGE.layout
def layout(dataset: str | None = None, image: str | None = None, **query):
    site = current_site()
    store = site.store

    def content(provenance):
        view = store.view(provenance.name)
        shown = reference_image(view, IMAGE.coerce(image))
        if shown is None:
            return dbc.Alert("This dataset has no images yet.", color="info", id="embeddings-empty")
        count = N.coerce(query.get("n"))
        limit = component_limit(view)
        chosen = COMPONENTS.coerce(query.get("components"), high=max(COMPONENTS_MIN, limit))
        line, histogram, card, raw = _image_parts(view, shown)
        pca = cached_pca(site.results, view).first(chosen)
        table = pca_table_page(view, pca, 0, TABLE_PAGE_SIZE)
        return html.Div([
            dcc.Store(id="embeddings-dataset", data=view.name),
            PAGE.url_parameters(),
            unknown_image_notice("embeddings", image, shown),
            PAGE.explanation_panel(),
            image_and_count(PAGE, view, shown, "Image", "Largest and smallest features shown", N, count, N_MARKS),
            dbc.Row([
                dbc.Col([html.Div(card, id="embeddings-card"), _downloads(view.name, shown)], md=3),
                dbc.Col([
                    dbc.Row([
                        dbc.Col(busy(dcc.Graph(id="embeddings-line", figure=line, config=_GRAPH_CONFIG)), lg=6),
                        dbc.Col(busy(dcc.Graph(id="embeddings-histogram", figure=histogram,
                                               config=_GRAPH_CONFIG)), lg=6),
                    ], className="g-2"),
                    dcc.Graph(id="embeddings-extremes", config=_GRAPH_CONFIG,
                              figure=extremes_figure(extreme_features(embedding_of(view, shown), count))),
                    html.Details([
                        html.Summary(f"All {view.embeddings.shape[1]} values", id="embeddings-raw-summary"),
                        html.Pre(raw, id="embeddings-raw", className="small border rounded p-2 bg-light",
                                 style={"maxHeight": "320px", "overflowY": "auto"}),
                    ], className="mt-2"),
                ], md=9),
            ], className="g-3"),
            html.H4("Dataset PCA", className="mt-4"),
            html.P(id="embeddings-pca-caption", children=_pca_caption(view, pca),
                   className="text-muted small"),
            dbc.Row([
                dbc.Col([dbc.Label("Principal components", html_for=PAGE.control_id("components")),
                         dcc.Slider(id=PAGE.control_id("components"), min=COMPONENTS.low,
                                    max=max(COMPONENTS_MIN, limit), step=1, value=chosen,
                                    marks=_component_marks(limit), disabled=limit < COMPONENTS_MIN)], md=6),
            ], className="mb-2"),
            dbc.Row([
                dbc.Col(busy(dcc.Graph(id="embeddings-variance", config=_GRAPH_CONFIG,
                                       figure=explained_variance_figure(pca.ratio, pca.cumulative))), lg=5),
                dbc.Col(busy(dash_table.DataTable(
                    id="embeddings-pca-table", columns=table.columns, data=table.rows, sort_action="custom",
                    sort_mode="single", sort_by=[], page_action="custom", page_current=0,
                    page_size=TABLE_PAGE_SIZE, page_count=table.page_count, style_table={"overflowX": "auto"},
                    style_cell={"fontFamily": "monospace", "fontSize": "0.8rem", "padding": "2px 6px"},
                    style_header={"fontWeight": "bold"},
                    style_cell_conditional=[{"if": {"column_id": c}, "textAlign": "left"}
                                            for c in ("path", "label")])), lg=7),
            ], className="g-3 mb-4"),
        ])

    return page_shell(store, PAGE.path, dataset, content)


register_image_search(PAGE, PAGE.control_id("image"), "embeddings-dataset")


@PAGE.callback(
    Output("embeddings-line", "figure"), Output("embeddings-histogram", "figure"),
    Output("embeddings-card", "children"), Output("embeddings-raw", "children"),
    Input(PAGE.control_id("image"), "value"), State("embeddings-dataset", "data"), prevent_initial_call=True,
)
def show_image(site: Site, image_id, dataset):
    view = inputs.dataset_view(site.store, dataset)
    return _image_parts(view, inputs.image_in(view, image_id))


@PAGE.callback(
    Output("embeddings-extremes", "figure"),
    *PAGE.controls((IMAGE, N)), State("embeddings-dataset", "data"),
    prevent_initial_call=True,
)
def show_extremes(site: Site, image_id, n, dataset):
    view = inputs.dataset_view(site.store, dataset)
    vector = embedding_of(view, inputs.image_in(view, image_id))
    return extremes_figure(extreme_features(vector, N.coerce(n)))


@PAGE.callback(
    Output("embeddings-variance", "figure"), Output("embeddings-pca-caption", "children"),
    Output("embeddings-pca-table", "page_current"),
    Input(PAGE.control_id("components"), "value"), State("embeddings-dataset", "data"), prevent_initial_call=True,
)
def show_pca(site: Site, components, dataset):
    if components is None:
        return dash.no_update, dash.no_update, dash.no_update
    view = inputs.dataset_view(site.store, dataset)
    pca = _pca(site, view, components)
    return explained_variance_figure(pca.ratio, pca.cumulative), _pca_caption(view, pca), 0


@PAGE.callback(
    Output("embeddings-pca-table", "columns"), Output("embeddings-pca-table", "data"),
    Output("embeddings-pca-table", "page_count"),
    Input("embeddings-pca-table", "page_current"), Input("embeddings-pca-table", "sort_by"),
    Input(PAGE.control_id("components"), "value"), State("embeddings-dataset", "data"), prevent_initial_call=True,
)
def show_table_page(site: Site, page, sort_by, components, dataset):
    view = inputs.dataset_view(site.store, dataset)
    table = pca_table_page(view, _pca(site, view, components), _TABLE_PAGE.coerce(page), TABLE_PAGE_SIZE, sort_by)
    return table.columns, table.rows, table.page_count


@PAGE.callback(
    Output("embeddings-download-npy", "href"), Input(PAGE.control_id("image"), "value"),
    State("embeddings-dataset", "data"), prevent_initial_call=True,
)
def link_download(site: Site, image_id, dataset):
    return _npy_url(dataset, inputs.image_in(inputs.dataset_view(site.store, dataset), image_id))


def _pca(site: Site, view: DatasetView, components) -> DatasetPCA:
    limit = max(COMPONENTS_MIN, component_limit(view))
    return cached_pca(site.results, view).first(COMPONENTS.coerce(components, high=limit))


def _image_parts(view: DatasetView, image_id: int):
    """The line plot, the histogram, the image card and the raw values of one image."""
    vector = embedding_of(view, image_id)
    return (embedding_line_figure(vector), embedding_histogram_figure(vector), _card(view, image_id, vector),
            raw_values_text(vector))


def _card(view: DatasetView, image_id: int, vector) -> dbc.Card:
    row = view.position(image_id)
    stats = embedding_statistics(vector)
    width, height = view.sizes[row]
    entries = [("dimension", "dimension", f"{stats.dimension}"), ("mean", "mean", format_value(stats.mean)),
               ("std", "standard deviation", format_value(stats.std)), ("norm", "L2 norm", format_value(stats.norm)),
               ("min", "min", f"{format_value(stats.min)} (#{stats.argmin})"),
               ("max", "max", f"{format_value(stats.max)} (#{stats.argmax})")]
    table = dbc.Table(html.Tbody([html.Tr([html.Th(name, className="fw-normal text-muted"),
                                           html.Td(value, id=f"embeddings-stat-{key}", className="text-end")])
                                  for key, name, value in entries]),
                      size="sm", className="mb-2 font-monospace small", id="embeddings-stats")
    return dbc.Card([
        dbc.CardImg(src=thumbnail_url(image_id, "preview"), top=True, id="embeddings-preview", alt=view.relpaths[row],
                    style={"maxHeight": "40vh", "objectFit": "contain"}),
        dbc.CardBody([
            html.H6(view.relpaths[row], className="card-title text-break", id="embeddings-path"),
            html.Div(f"label {view.labels[row] or 'none'} · {width} x {height} px", className="text-muted small mb-2"),
            table,
            image_links(view.name, image_id, "embeddings", here=PAGE.path),
        ]),
    ], color="primary", outline=True)


def _downloads(dataset: str, image_id: int) -> html.Div:
    return html.Div([
        dbc.Button("This embedding (.npy)", id="embeddings-download-npy", size="sm", color="secondary",
                   className="me-2 mt-2", external_link=True, href=_npy_url(dataset, image_id)),
        dbc.Button("All embeddings (.npz)", id="embeddings-download-npz", size="sm", color="secondary",
                   className="mt-2", external_link=True,
                   href=f"{EMBEDDINGS_NPZ_PATH}?{urlencode({'dataset': dataset})}"),
    ])


def _npy_url(dataset: str, image_id: int) -> str:
    return f"{EMBEDDING_NPY_PATH}?{urlencode({'dataset': dataset, 'image': int(image_id)})}"


def _component_marks(limit: int) -> dict:
    top = max(COMPONENTS_MIN, limit)
    return {value: str(value) for value in sorted({COMPONENTS_MIN, *range(10, top, 10), top})}


def _pca_caption(view: DatasetView, pca: DatasetPCA) -> str:
    if len(view) < COMPONENTS_MIN:
        return "PCA needs at least two images."
    total = float(pca.cumulative[-1]) if pca.components else 0.0
    return (f"PCA of the {len(view)} L2-normalised embeddings: the first {pca.components} components explain "
            f"{total:.1%} of their variance. Click a column header to sort the table.")
