"""Within image: one image's patch tokens clustered, coloured and compared, drawn over its preview.

Everything comes from the patch grid the indexer stored; nothing here runs the model.
"""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html
from pydantic import BaseModel, NonNegativeInt, StrictInt

from dashboard import inputs
from dashboard.analysis.patches import patch_similarity, pool_grid
from dashboard.data import DatasetView
from dashboard.explanations import PATCHES
from dashboard.image_picker import image_picker, register_image_search
from dashboard.page import ImageLink, Page
from dashboard.patches_view import (
    PALETTE,
    SETTINGS,
    ImageFrame,
    PatchSettings,
    analyse,
    best_match,
    examples,
    layer_values,
    overlay_figure,
    query_similarity,
    settings_from,
    similarity_figure,
)
from dashboard.region_search import region_section, register_region_search
from dashboard.shell import busy, image_links, page_shell, unknown_image_notice
from dashboard.similarity_view import reference_image
from dashboard.site import Site, current_site
from dashboard.urlstate import IMAGE, thumbnail_url

NEIGHBOURS = 3
PAGE = Page("patches", "/patches", "Within image", image_link=ImageLink("Within image", "patches"),
            explanation=PATCHES, params=(IMAGE, *SETTINGS))
_LAYER_OPTIONS = [{"label": "Clusters", "value": "clusters"}, {"label": "PCA colours", "value": "pca"},
                  {"label": "Foreground (PC 1)", "value": "foreground"}, {"label": "Patch norms", "value": "norms"}]


@PAGE.layout
def layout(dataset: str | None = None, image: str | None = None, **query):
    settings = settings_from(query)
    store = current_site().store

    def content(provenance):
        view = store.view(provenance.name)
        reference = reference_image(view, IMAGE.coerce(image))
        if reference is None:
            return dbc.Alert("This dataset has no images yet.", color="info")
        return html.Div([
            dcc.Store(id="patches-dataset", data=view.name),
            dcc.Store(id="patches-selected"),
            PAGE.url_parameters(),
            PAGE.explanation_panel(),
            unknown_image_notice("patches", image, reference),
            dbc.Row([
                dbc.Col([dbc.Label("Image", html_for=PAGE.control_id("image")),
                         image_picker(PAGE.control_id("image"), view, reference),
                         html.Div(id="patches-links", className="mt-1",
                                  children=image_links(view.name, reference, "patches", here=PAGE.path))], md=5),
                dbc.Col([dbc.Label("Show"),
                         dbc.RadioItems(id=PAGE.control_id("layer"), options=_LAYER_OPTIONS, value=settings.layer,
                                        inline=True)], md=7),
            ], className="mb-2"),
            dbc.Row([
                dbc.Col(_slider("k", "clusters k", 1, settings.k), md=3),
                dbc.Col(_slider("window", "pooling window (patches)", 1, settings.window), md=3),
                dbc.Col(_slider("step", "pooling step (patches)", 1, settings.step), md=3),
                dbc.Col(_slider("opacity", "overlay opacity", 0.05, settings.opacity,
                                marks={0: "0", 0.5: "0.5", 1: "1"}), md=3),
            ]),
            dbc.Switch(id=PAGE.control_id("foreground_only"), value=settings.foreground_only,
                       label="foreground only (cluster and colour the patches PC 1 calls foreground)"),
            dbc.Row([
                dbc.Col([busy(dcc.Graph(id="patches-overlay",
                                        config={"displaylogo": False, "displayModeBar": False})),
                         html.P("Click a patch to compare it with every other patch, here and in the nearest "
                                "images; drag a box to find where that region appears in other images.",
                                className="small text-muted")], md=7),
                dbc.Col([html.Div(id="patches-statistics"), html.Div(id="patches-examples")], md=5),
            ], className="mt-2"),
            busy(html.Div(id="patches-similarity", className="mt-3")),
            region_section(PAGE.name, "the picture above"),
        ])

    return page_shell(store, PAGE.path, dataset, content)


register_image_search(PAGE, PAGE.control_id("image"), "patches-dataset")
register_region_search(PAGE, "patches-overlay", PAGE.control_id("image"), "patches-dataset")


@PAGE.callback(Output("patches-links", "children"), Input(PAGE.control_id("image"), "value"),
               State("patches-dataset", "data"), prevent_initial_call=True)
def link_image(site: Site, image_id, dataset):
    return image_links(dataset, inputs.image_in(inputs.dataset_view(site.store, dataset), image_id), "patches",
                       here=PAGE.path)


@PAGE.callback(
    Output("patches-overlay", "figure"), Output("patches-statistics", "children"),
    Output("patches-examples", "children"), Output(PAGE.control_id("step"), "max"),
    *PAGE.controls(PAGE.params, Input), Input("patches-selected", "data"),
    State("patches-dataset", "data"),
)
def show_image(site: Site, image_id, layer, k, window, step, opacity, foreground_only, selected, dataset):
    settings = _settings(layer, k, window, step, opacity, foreground_only)
    view = inputs.dataset_view(site.store, dataset)
    image_id = inputs.image_in(view, image_id)
    grid = site.store.patch_grid(image_id)
    frame, result, preview = _frame(view, image_id, grid), analyse(grid, settings), \
        thumbnail_url(image_id, "preview")
    marked = _cell(selected, image_id)
    figure = overlay_figure(preview, frame, result.pooled, layer_values(result, settings), settings.layer,
                            settings.opacity, marked, boxes=True)
    statistics, crops = "", ""
    if settings.layer == "clusters":
        statistics, crops = _statistics(result.shares), _examples(examples(result, frame), preview, frame)
    return figure, statistics, crops, settings.window


@PAGE.callback(
    Output("patches-selected", "data"), Input("patches-overlay", "clickData"),
    *PAGE.controls(PAGE.params, State), State("patches-dataset", "data"),
    prevent_initial_call=True,
)
def select_patch(site: Site, click, image_id, layer, k, window, step, opacity, foreground_only, dataset):
    point = inputs.first_point(click, inputs.NumberPoint)
    if point is None:
        return dash.no_update
    settings = _settings(layer, k, window, step, opacity, foreground_only)
    view = inputs.dataset_view(site.store, dataset)
    image_id = inputs.image_in(view, image_id)
    grid = site.store.patch_grid(image_id)
    pooled = pool_grid(grid, settings.window, settings.step)
    cell = _frame(view, image_id, grid).pooled_cell_at(pooled, point.x, point.y)
    return {"image": image_id, "row": cell[0], "col": cell[1]} if cell else dash.no_update


@PAGE.callback(
    Output("patches-similarity", "children"), Input("patches-selected", "data"),
    *[Input(PAGE.control_id(name), "value") for name in ("image", "window", "step", "opacity")],
    State("patches-dataset", "data"), prevent_initial_call=True,
)
def compare_patch(site: Site, selected, image_id, window, step, opacity, dataset):
    cell = _cell(selected, image_id)
    if cell is None:
        return ""
    settings = _settings("clusters", 2, window, step, opacity, False)
    view = inputs.dataset_view(site.store, dataset)
    image_id = inputs.image_in(view, image_id)
    grid = site.store.patch_grid(image_id)
    pooled = pool_grid(grid, settings.window, settings.step)
    if cell[0] >= pooled.tokens.shape[0] or cell[1] >= pooled.tokens.shape[1]:
        return ""  # the pooling changed under the selection
    query = pooled.tokens[cell]
    panels = [_similarity_panel(_frame(view, image_id, grid), image_id, pooled,
                                query_similarity(pooled, cell), settings, cell, "This image",
                                "patches-similarity-self")]
    for rank, (neighbour, score) in enumerate(zip(*_neighbours(view, image_id))):
        other_grid = site.store.patch_grid(neighbour)
        other = pool_grid(other_grid, settings.window, settings.step)
        similarity = patch_similarity(other.tokens, query)
        panels.append(_similarity_panel(_frame(view, neighbour, other_grid), neighbour, other,
                                        similarity, settings,
                                        best_match(similarity), f"{view.relpaths[view.position(neighbour)]} "
                                        f"(image similarity {score:.3f})", f"patches-similarity-{rank}"))
    return [html.H5("Cosine similarity to the selected patch"),
            dbc.Row([dbc.Col(panel, md=3) for panel in panels])]


def _settings(layer, k, window, step, opacity, foreground_only) -> PatchSettings:
    return settings_from({"layer": layer, "k": k, "window": window, "step": step, "opacity": opacity,
                          "foreground_only": foreground_only})


def _frame(view: DatasetView, image_id: int, grid) -> ImageFrame:
    width, height = view.sizes[view.position(image_id)]
    return ImageFrame(width, height, grid.shape[0], grid.shape[1])


class SelectedPatch(BaseModel):
    """The patch a click selected (patches-selected): its image and its pooled cell."""

    image: StrictInt
    row: NonNegativeInt
    col: NonNegativeInt


def _cell(selected: dict | None, image_id: int) -> tuple[int, int] | None:
    """The selected cell, when the selection is of this image."""
    if not selected:
        return None
    chosen = inputs.record(SelectedPatch, selected, "The selected patch")
    return (chosen.row, chosen.col) if chosen.image == image_id else None


def _neighbours(view: DatasetView, image_id: int):
    indices, scores = view.nearest(view.position(image_id), NEIGHBOURS)
    return [int(view.image_ids[i]) for i in indices], [float(s) for s in scores]


def _similarity_panel(frame, image_id, pooled, similarity, settings, marked, title, component_id):
    figure = similarity_figure(thumbnail_url(image_id, "preview"), frame, pooled, similarity,
                               max(settings.opacity, 0.6), marked)
    figure.update_traces(colorbar={"thickness": 10, "len": 0.9, "title": {"text": "cosine", "side": "right"}})
    figure.update_layout(height=220)
    return html.Div([html.Div(title, className="small fw-bold text-truncate"),
                     dcc.Graph(id=component_id, figure=figure, config={"staticPlot": True})])


def _slider(name: str, label: str, step, value, marks=None) -> html.Div:
    """The slider of the setting `name`, between its bounds."""
    param = PAGE.param(name)
    return html.Div([dbc.Label(label, className="small"),
                     dcc.Slider(id=PAGE.control_id(name), min=param.low, max=param.high, step=step, value=value,
                                marks=marks or {n: str(n) for n in range(param.low, param.high + 1)})])


def _statistics(shares) -> dbc.Table:
    header = html.Thead(html.Tr([html.Th("cluster"), html.Th("patches"), html.Th("share")]))
    rows = [html.Tr([html.Td(html.Span(f"■ {label}", style={"color": PALETTE[label % len(PALETTE)]})),
                     html.Td(count), html.Td(f"{percent:.1f} %")]) for label, count, percent in shares]
    return dbc.Table([header, html.Tbody(rows)], size="sm", id="patches-statistics-table")


def _examples(boxes: dict[int, list[tuple]], preview: str, frame: ImageFrame) -> html.Div:
    """Each example patch is the preview itself, scaled and shifted inside a small box: a crop at its true place."""
    rows = []
    for label, tiles in boxes.items():
        crops = []
        for x0, y0, x1, y1 in tiles:
            scale = 56 / max(x1 - x0, y1 - y0)
            crops.append(html.Div(className="patch-example", style={
                "width": f"{(x1 - x0) * scale:.1f}px", "height": f"{(y1 - y0) * scale:.1f}px",
                "backgroundImage": f"url({preview})",
                "backgroundSize": f"{frame.width * scale:.1f}px {frame.height * scale:.1f}px",
                "backgroundPosition": f"{-x0 * scale:.1f}px {-y0 * scale:.1f}px",
                "border": f"3px solid {PALETTE[label % len(PALETTE)]}", "marginRight": "4px",
            }))
        rows.append(html.Div([html.Span(f"cluster {label}", className="small me-2"), *crops],
                             className="d-flex align-items-center mb-1"))
    return html.Div([html.H6("Example patches"), *rows], id="patches-example-rows")
