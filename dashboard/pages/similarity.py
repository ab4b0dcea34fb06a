"""Similarity: a reference image, its top-K most similar images, and a heatmap of pairwise cosine similarities;
or the images most similar to a picture the user uploads (embedded in a background job, kept in memory only)."""

from __future__ import annotations

from dataclasses import replace
from uuid import uuid4

import dash
import dash_bootstrap_components as dbc
from dash import ALL, ClientsideFunction, Input, Output, State, ctx, dcc, html
from pydantic import BaseModel, StrictInt, StrictStr

from dashboard import inputs
from dashboard.data import DatasetView
from dashboard.explanations import SIMILARITY
from dashboard.image_picker import image_and_count, register_image_search
from dashboard.page import ImageLink, Page
from dashboard.query_image import (
    MAX_UPLOAD_BYTES,
    UPLOAD_TYPES,
    QueryRefused,
    RecordedModel,
    UploadEmbedding,
    embed_upload,
    recorded_model,
)
from dashboard.region_search import region_section, register_region_search
from dashboard.selections import SELECTION, is_selection_id, load_selection
from dashboard.shell import (
    busy,
    collapsible,
    image_links,
    page_shell,
    register_collapsible,
    selection_note,
    unknown_image_notice,
)
from dashboard.similarity_view import (
    EMBEDDING_HEAD,
    K_DEFAULT,
    K_MAX,
    Heatmap,
    SimilarImage,
    describe,
    heatmap_figure,
    hovered_cell,
    images_similar_to,
    neighbourhood,
    reference_image,
    similar_among,
)
from dashboard.site import Site, current_site
from dashboard.urlstate import IMAGE, Param, thumbnail_url, why_url
from dashboard.why_view import region_picture
from db.errors import DinoscopeDbError

K_MARKS = {1: "1", 10: "10", 20: "20", 30: "30", 40: "40", 50: "50"}
K = Param("k", K_DEFAULT, 1, K_MAX)
PAGE = Page("similarity", "/similarity", "Similarity", image_link=ImageLink("Similar images", "similar"),
            explanation=SIMILARITY, params=(replace(IMAGE, control="reference"), K, SELECTION))


@PAGE.layout
def layout(dataset: str | None = None, image: str | None = None, **query):
    site = current_site()
    store = site.store

    def content(provenance):
        view = store.view(provenance.name)
        reference = reference_image(view, IMAGE.coerce(image))
        if reference is None:
            return dbc.Alert("This dataset has no images yet.", color="info", id="similarity-empty")
        count = K.coerce(query.get("k"))
        results, heatmap = neighbourhood(view, reference, count)
        wanted = SELECTION.coerce(query.get("selection"))
        among = load_selection(site.selections, view, wanted) if wanted else None
        if among is not None:
            results = similar_among(view, reference, count, among)
        return html.Div([
            dcc.Store(id="similarity-dataset", data=view.name),
            dcc.Store(id="similarity-selection", data=wanted if among is not None else ""),
            dcc.Store(id="similarity-session", data=uuid4().hex),
            PAGE.url_parameters(),
            PAGE.explanation_panel(),
            unknown_image_notice("similarity", image, reference),
            _upload_section(),
            image_and_count(PAGE, view, reference, "Reference image", "Similar images shown", K, count, K_MARKS),
            html.Div(selection_note(PAGE.name, PAGE.path, view.name, wanted, among, "Results only from",
                                    ("Search the whole dataset", "the results are from the whole dataset")),
                     id="similarity-selection-note"),
            busy(html.Div(id="similarity-results",
                          children=_results(view, reference, results, provenance.grid_shape))),
            region_section(PAGE.name, "the reference picture"),
            html.H5("Pairwise cosine similarity", className="mt-4"),
            html.P(_heatmap_caption(view, heatmap), id="similarity-heatmap-caption", className="text-muted small"),
            busy(dcc.Graph(id="similarity-heatmap", figure=heatmap_figure(heatmap.matrix, heatmap.relpaths, False),
                           clear_on_unhover=True, config={"displaylogo": False}, style={"maxWidth": "1000px"})),
            dcc.Store(id="similarity-heatmap-images", data=_heatmap_images(heatmap)),
            dcc.Tooltip(id="similarity-tooltip", direction="bottom"),
        ])

    return page_shell(store, PAGE.path, dataset, content)


register_image_search(PAGE, PAGE.control_id("image"), "similarity-dataset")
register_region_search(PAGE, "similarity-preview", PAGE.control_id("image"), "similarity-dataset")
register_collapsible(PAGE, "similarity-upload-card")

# Checked in the browser before anything is sent: a file too large or of another type is refused with its
# reason, and only an accepted one travels to the server.
PAGE.clientside_callback(
    ClientsideFunction(namespace="dinoscope", function_name="acceptUpload"),
    Output("similarity-upload-accepted", "data"), Output("similarity-upload-rejected", "children"),
    Output("similarity-upload-rejected", "hidden"),
    Input("similarity-upload", "contents"), State("similarity-upload", "filename"),
    State("similarity-upload-limits", "data"), prevent_initial_call=True,
)

# The thumbnail is the browser's own copy of the file: the upload never comes back from the server.
PAGE.clientside_callback(
    "function (contents) { return [contents || '', true, null]; }",
    Output("similarity-upload-preview", "src"), Output("similarity-upload-panel", "hidden", allow_duplicate=True),
    Output("similarity-upload-message", "children", allow_duplicate=True),
    Input("similarity-upload-accepted", "data"), prevent_initial_call=True,
)


@PAGE.callback(
    Output("similarity-upload-facts", "children"), Output("similarity-upload-results", "children"),
    Output("similarity-upload-panel", "hidden"), Output("similarity-upload-message", "children"),
    Input("similarity-upload-accepted", "data"), State("similarity-upload", "filename"),
    State(PAGE.control_id("k"), "value"), State("similarity-dataset", "data"), State("similarity-session", "data"),
    background=True, manager="uploads", prevent_initial_call=True, interval=500,
    progress=Output("similarity-upload-progress", "children"),
    running=[(Output("similarity-upload-status", "hidden"), False, True),
             (Output("similarity-upload", "disabled"), True, False)],
)
def query_by_upload(site: Site, set_progress, contents, filename, k, dataset, _session):
    # _session: a per-page-load id, so two users uploading the same file are two jobs (Dash 4.4.1).
    # Only ids, scores and paths are returned: the result is stored by the callback manager, the upload is not.
    if not contents:
        return dash.no_update, dash.no_update, dash.no_update, dash.no_update
    try:
        filename = inputs.text(filename, "The file name")
        set_progress(f"Reading {filename or 'the upload'}…")
        view = inputs.dataset_view(site.store, dataset)
        recorded = recorded_model(site.store, dataset)
        upload = embed_upload(site.models, recorded, contents, set_progress)
    except (QueryRefused, DinoscopeDbError, inputs.BadInput) as error:
        return None, None, True, dbc.Alert(str(error), color="danger", id="similarity-upload-error")
    results = images_similar_to(view, upload.embedding, K.coerce(k))
    return (_upload_facts(filename, upload, recorded), _result_grid(results, "similarity-upload-result"), False,
            None)


@PAGE.callback(
    Output("similarity-results", "children"), Output("similarity-heatmap", "figure"),
    Output("similarity-heatmap-caption", "children"), Output("similarity-heatmap-images", "data"),
    *PAGE.controls(PAGE.params),
    State("similarity-dataset", "data"), prevent_initial_call=True,
)
def show_reference(site: Site, reference, k, selection, dataset):
    view = inputs.dataset_view(site.store, dataset)
    reference = inputs.image_in(view, reference)
    results, heatmap = neighbourhood(view, reference, K.coerce(k))
    selection = inputs.text(selection, "The selection")
    if selection:
        among = load_selection(site.selections, view, selection) if is_selection_id(selection) else None
        if among is None:
            raise inputs.BadInput(f"There is no selection {inputs.shown(selection)} of dataset {view.name!r}")
        results = similar_among(view, reference, K.coerce(k), among)
    return (_results(view, reference, results, site.store.grid_shape(view.name)),
            heatmap_figure(heatmap.matrix, heatmap.relpaths, False), _heatmap_caption(view, heatmap),
            _heatmap_images(heatmap))



@PAGE.callback(
    Output(PAGE.control_id("image"), "value"),
    Input({"type": "similarity-result", "index": ALL}, "n_clicks"),
    Input({"type": "similarity-upload-result", "index": ALL}, "n_clicks"), prevent_initial_call=True,
)
def pick_result(_site: Site, _clicks, _upload_clicks):
    if not ctx.triggered or not ctx.triggered[0]["value"]:
        return dash.no_update  # the cards re-rendered, nobody clicked
    return ctx.triggered_id["index"]


@PAGE.callback(
    Output("similarity-tooltip", "show"), Output("similarity-tooltip", "bbox"),
    Output("similarity-tooltip", "children"),
    Input("similarity-heatmap", "hoverData"), State("similarity-heatmap-images", "data"),
    prevent_initial_call=True,
)
def show_cell(_site: Site, hover_data, images):
    point = inputs.first_point(hover_data, inputs.CategoryPoint)
    shown = inputs.record(HeatmapImages, images, "The heatmap's images")
    cell = hovered_cell(point, shown.ids, shown.relpaths)
    if cell is None:
        return False, dash.no_update, dash.no_update
    return True, point.bbox, _cell_tooltip(cell)


def _results(view: DatasetView, reference: int, results: list[SimilarImage], grid_shape: tuple[int, int]) -> dbc.Row:
    shown = describe(view, reference)
    width, height = (int(v) for v in view.sizes[view.position(reference)])
    picture = region_picture(thumbnail_url(reference, "preview"), (width, height), grid_shape,
                             max(160, min(420, round(300 * height / max(width, 1)))))
    preview = dbc.Card([
        dcc.Graph(id="similarity-preview", figure=picture, config={"displaylogo": False, "displayModeBar": False}),
        dbc.CardBody([html.H6(shown.relpath, className="card-title text-break", id="similarity-reference-path"),
                      html.Div("Drag a box on the picture to find where that region appears in other images "
                               "(below).", className="small text-muted"),
                      html.Div(shown.label or "no label", className="text-muted small"),
                      _embedding_text(shown.embedding_head),
                      image_links(view.name, reference, "similarity", here=PAGE.path)]),
    ], id="similarity-reference-card", color="primary", outline=True)
    return dbc.Row([dbc.Col(preview, md=3),
                    dbc.Col(_result_grid(results, "similarity-result", why=(view.name, reference)), md=9)],
                   className="g-3")


def _result_grid(results: list[SimilarImage], kind: str, why: tuple[str, int] | None = None) -> html.Div:
    """Result cards, best first; a click on one (`{"type": kind, "index": image id}`) makes it the reference. With
    `why` (the dataset and the reference), each card has a link to why it is similar to the reference."""
    cards = [
        html.Div([html.Div(dbc.Card([
            dbc.CardImg(src=thumbnail_url(r.image_id), top=True, alt=r.relpath, title=r.relpath,
                        style={"aspectRatio": "1", "objectFit": "cover"}),
            dbc.CardBody([
                html.Div(f"{r.score:.3f}", className="fw-bold similarity-score"),
                html.Div(r.relpath, className="small text-break similarity-path"),
                html.Div(r.label or "no label", className="small text-muted"),
                _embedding_text(r.embedding_head),
            ], className="p-2"),
        ], className="h-100"), id={"type": kind, "index": r.image_id}, n_clicks=0, role="button",
            title=f"Make {r.relpath} the reference", className="similarity-result h-100"),
            _why_link(why, r.image_id)], className="d-flex flex-column")
        for r in results
    ]
    grid = html.Div(cards, id=f"{kind}-grid",
                    style={"display": "grid", "gridTemplateColumns": "repeat(auto-fill, minmax(150px, 1fr))",
                           "gap": "8px"})
    heading = html.H6(f"{len(results)} most similar (cosine similarity, best first)", id=f"{kind}-count")
    return html.Div([heading, grid])


def _why_link(why: tuple[str, int] | None, image_id: int) -> html.A | None:
    if why is None:
        return None
    return html.A("Why similar?", href=why_url(*why, image_id), className="small similarity-why",
                  title="The patches of the two images that match")


def _embedding_text(head: list[float]) -> html.Code:
    values = ", ".join(f"{x:.3f}" for x in head)
    return html.Code(f"[{values}, …]", className="small d-block text-break similarity-embedding",
                     title=f"the first {len(head)} embedding values")


def _upload_section() -> dbc.Card:
    """Query by upload: the drop zone, the job's progress, and (once embedded) the upload beside its neighbours.
    The drop zone takes any file, so the browser can say why one is refused (dcc.Upload drops those silently)."""
    limit = f"{MAX_UPLOAD_BYTES / 1024**2:.0f} MB"
    drop_zone = dcc.Upload(
        html.Div(["Drop a JPG or PNG here, or ", html.A("choose one", href="#"), f" (at most {limit})."]),
        id="similarity-upload", multiple=False, className="similarity-upload",
        style={"border": "2px dashed #adb5bd", "borderRadius": "6px", "padding": "12px", "textAlign": "center"},
    )
    body = html.Div([
        html.P("Your picture is embedded exactly as this dataset's images were (same model, weights, size and "
               "preprocessing) and compared with all of them. It is kept in memory only: nothing is stored.",
               className="small text-muted mb-2"),
        html.P("A region query needs a dataset image, whose patch grid is stored: an upload has none. Click a result "
               "to make it the reference and drag a box on it.", className="small text-muted mb-2",
               id="similarity-upload-region"),
        drop_zone,
        dcc.Store(id="similarity-upload-limits", data={"bytes": MAX_UPLOAD_BYTES, "types": list(UPLOAD_TYPES)}),
        dcc.Store(id="similarity-upload-accepted"),
        html.Div(id="similarity-upload-rejected", className="alert alert-danger small mt-2 mb-0", hidden=True),
        html.Div([dbc.Spinner(size="sm", spinner_class_name="me-2"), html.Span(id="similarity-upload-progress")],
                 id="similarity-upload-status", hidden=True, className="small mt-2"),
        html.Div(id="similarity-upload-message", className="mt-2"),
        html.Div(dbc.Row([
            dbc.Col(dbc.Card([
                dbc.CardImg(id="similarity-upload-preview", top=True, alt="the uploaded picture",
                            style={"maxHeight": "40vh", "objectFit": "contain"}),
                dbc.CardBody(id="similarity-upload-facts"),
            ], color="info", outline=True), md=3),
            dbc.Col(html.Div(id="similarity-upload-results"), md=9),
        ], className="g-3 mt-1"), id="similarity-upload-panel", hidden=True),
    ])
    title = html.H6("Query by upload", className="card-title mb-0")
    return dbc.Card(dbc.CardBody(collapsible("similarity-upload-card", title, body)), className="mb-3")


def _upload_facts(filename: str | None, upload: UploadEmbedding, recorded: RecordedModel) -> list:
    return [
        html.H6(filename or "upload", className="card-title text-break", id="similarity-upload-name"),
        html.Div(f"{upload.width} x {upload.height} px {upload.format}", className="small"),
        html.Div(f"embedded with {recorded.name} at {recorded.image_size} px ({recorded.precision})",
                 className="small text-muted"),
        _embedding_text([float(x) for x in upload.embedding[:EMBEDDING_HEAD]]),
    ]


def _heatmap_caption(view: DatasetView, heatmap: Heatmap) -> str:
    if len(heatmap.image_ids) == len(view):
        return f"All {len(view)} images of the dataset. Hover a cell to see its two images."
    return (f"The reference and its {len(heatmap.image_ids) - 1} nearest neighbours (of {len(view)} images), "
            "nearest first. Hover a cell to see its two images.")


class HeatmapImages(BaseModel):
    """The images of the heatmap's rows and columns, in order, as the page holds them for its hover cards."""

    ids: list[StrictInt]
    relpaths: list[StrictStr]


def _heatmap_images(heatmap: Heatmap) -> dict:
    return HeatmapImages(ids=heatmap.image_ids, relpaths=heatmap.relpaths).model_dump()


def _cell_tooltip(cell) -> html.Div:
    def one(image_id: int, relpath: str) -> html.Figure:
        return html.Figure([
            html.Img(src=thumbnail_url(image_id), alt=relpath, style={"width": "128px", "height": "128px",
                                                                      "objectFit": "cover"}),
            html.Figcaption(relpath, className="small", style={"width": "128px", "whiteSpace": "normal",
                                                               "overflowWrap": "anywhere"}),
        ], className="m-1")

    score = "" if cell.score is None else f"cosine {cell.score:.3f}"
    return html.Div([
        html.Div([one(cell.row_id, cell.row_relpath), one(cell.column_id, cell.column_relpath)], className="d-flex"),
        html.Div(score, className="small text-center fw-bold"),
    ], id="similarity-tooltip-body")
