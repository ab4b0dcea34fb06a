"""Compare embeddings: one reference image's top-K by its CLS embedding beside its top-K by the mean of its patch
tokens (or both concatenated), with a summary over many references; and the same reference in a second dataset of
the same files indexed with another model, with the agreement of the two datasets' clusterings.

The mean-patch embeddings need every image's patch grid: a background job of the projections lane reads them in
batches once per dataset generation (at most MEAN_PATCH_LIMIT images: a seeded sample of a larger dataset) and
keeps them in the shared results cache.
"""

from __future__ import annotations

from uuid import uuid4

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html

from dashboard import inputs
from dashboard.compare_view import (
    AGAINST,
    CLUSTERS,
    MEAN_PATCH_LIMIT,
    OTHER,
    REPRESENTATIONS,
    K,
    MeanPatches,
    Ranked,
    Summary,
    cached_cross_match,
    cached_mean_patches,
    cached_summary,
    cross_retrieval,
    mean_patches_key,
    side_by_side,
)
from dashboard.data import DatasetView
from dashboard.explanations import COMPARE
from dashboard.image_picker import image_picker, register_image_search
from dashboard.page import ImageLink, Page
from dashboard.shell import busy, image_links, page_shell, unknown_image_notice
from dashboard.similarity_view import reference_image
from dashboard.site import Site, current_site
from dashboard.urlstate import IMAGE, thumbnail_url
from db.holds import hold

POLL_MS = 500
CHANGED = "The indexer has changed this dataset since the page opened: show the changes (above) to compare anew."
PAGE = Page("compare", "/compare", "Compare", image_link=ImageLink("Compare embeddings", "compare"),
            explanation=COMPARE, params=(IMAGE, K, AGAINST, OTHER, CLUSTERS))
_MARKS = {1: "1", 10: "10", 20: "20", 30: "30", 40: "40", 50: "50"}


def _waiting() -> html.P:
    return html.P("The mean-patch embeddings are being computed (progress above).", className="text-muted")


@PAGE.layout
def layout(dataset: str | None = None, image: str | None = None, **query):
    site = current_site()
    chosen = PAGE.query(query)

    def content(provenance):
        view = site.store.view(provenance.name)
        reference = reference_image(view, IMAGE.coerce(image))
        if reference is None:
            return dbc.Alert("This dataset has no images yet.", color="info", id="compare-empty")
        key = mean_patches_key(view)
        ready = key in site.results
        sharing = site.store.datasets_sharing_images(view.name)
        other = chosen["other"] if chosen["other"] in sharing else None
        return html.Div([
            dcc.Store(id="compare-dataset", data=view.name),
            dcc.Store(id="compare-session", data=uuid4().hex),
            dcc.Store(id="compare-means-request", data=None if ready else key),
            dcc.Store(id="compare-means-key", data=key if ready else None),
            PAGE.url_parameters(),
            PAGE.explanation_panel(),
            unknown_image_notice("compare", image, reference),
            dbc.Row([
                dbc.Col([dbc.Label("Reference image", html_for=PAGE.control_id("image")),
                         image_picker(PAGE.control_id("image"), view, reference,
                                      placeholder="type part of a file path"),
                         html.Div(image_links(view.name, reference, "compare", here=PAGE.path), className="mt-1",
                                  id="compare-links")], md=5),
                dbc.Col([dbc.Label("Top K", html_for=PAGE.control_id("k")),
                         dcc.Slider(id=PAGE.control_id("k"), min=K.low, max=K.high, step=1, value=chosen["k"],
                                    marks=_MARKS)], md=4),
                dbc.Col([dbc.Label("CLS against"),
                         dbc.RadioItems(id=PAGE.control_id("against"), value=chosen["against"],
                                        options=[{"label": text, "value": value}
                                                 for value, text in REPRESENTATIONS.items()])], md=3),
            ], className="mb-2 g-3"),
            html.Div(id="compare-status", className="small text-muted"),
            dbc.Button("Cancel", id="compare-cancel", size="sm", color="secondary", className="mb-2",
                       style={"display": "none"}),
            busy(html.Div(None if ready else _waiting(), id="compare-results")),
            html.H5("Over the dataset", className="mt-4"),
            busy(html.Div(None if ready else _waiting(), id="compare-summary")),
            html.H5("Another model on the same images", className="mt-4"),
            dbc.Row([
                dbc.Col([dbc.Label("Second dataset", html_for=PAGE.control_id("other")),
                         dcc.Dropdown(id=PAGE.control_id("other"), value=other, placeholder=(
                             "pick a dataset that shares images with this one" if sharing
                             else "no other dataset holds any of these images"),
                             options=[{"label": f"{name} ({count:,} shared images)", "value": name}
                                      for name, count in sharing.items()])], md=6),
                dbc.Col([dbc.Label("K-Means clusters k (both datasets)", html_for=PAGE.control_id("clusters")),
                         dcc.Slider(id=PAGE.control_id("clusters"), min=CLUSTERS.low, max=CLUSTERS.high, step=1,
                                    value=chosen["clusters"], marks={2: "2", 10: "10", 20: "20", 30: "30"})], md=6),
            ], className="g-3"),
            busy(html.Div(id="compare-cross")),
        ])

    return page_shell(site.store, PAGE.path, dataset, content)


register_image_search(PAGE, PAGE.control_id("image"), "compare-dataset")


@PAGE.callback(
    Output("compare-means-key", "data"),
    Input("compare-means-request", "data"), State("compare-dataset", "data"), State("compare-session", "data"),
    background=True, manager="projections", interval=POLL_MS,
    progress=Output("compare-status", "children"),
    running=[(Output("compare-cancel", "style"), {"display": "inline-block"}, {"display": "none"})],
    cancel=Input("compare-cancel", "n_clicks"),
)
def compute_mean_patches(site: Site, set_progress, request, dataset, _session):
    # _session: a per-page-load id, so two users asking for the same dataset are two jobs (Dash 4.4.1).
    if not request:
        return dash.no_update
    try:
        view = inputs.dataset_view(site.store, dataset)
        request = inputs.text(request, "The mean-patch embeddings asked for")
    except inputs.BadInput as error:
        dash.set_props("compare-status", {"children": str(error)})
        return dash.no_update
    if request != mean_patches_key(view):
        dash.set_props("compare-status", {"children": CHANGED})
        return dash.no_update

    def report(done: int, total: int) -> None:
        set_progress(f"Averaging the patch tokens of every image: {done:,} of {total:,}…")
        hold("mean-patches")

    report(0, min(len(view), MEAN_PATCH_LIMIT))
    cached_mean_patches(site.results, site.store, view, report)
    return request


@PAGE.callback(
    Output("compare-status", "children", allow_duplicate=True), Input("compare-cancel", "n_clicks"),
    prevent_initial_call=True,
)
def report_cancel(_site: Site, _clicks):
    return "Cancelled: reload the page to average the patch tokens again."


@PAGE.callback(
    Output("compare-results", "children"), Output("compare-summary", "children"), Output("compare-links", "children"),
    Input("compare-means-key", "data"), *PAGE.controls((IMAGE, K, AGAINST)), State("compare-dataset", "data"),
)
def show_comparison(site: Site, key, image, k, against, dataset):
    view = inputs.dataset_view(site.store, dataset)
    reference = inputs.image_in(view, image)
    links = image_links(view.name, reference, "compare", here=PAGE.path)
    if not key:
        return _waiting(), _waiting(), links
    key = inputs.text(key, "The mean-patch embeddings' key")
    if key != mean_patches_key(view):
        if key.startswith(f"mean-patches/{view.name}/"):
            return html.P(CHANGED, className="text-warning"), dash.no_update, links
        raise inputs.BadInput(f"{key[:80]!r} is not a result of dataset {view.name!r}")
    patches: MeanPatches | None = site.results.get(key)
    if patches is None:  # the cache folder was emptied meanwhile
        return html.P("The mean-patch embeddings are gone from the cache: reload the page.",
                      className="text-warning"), dash.no_update, links
    k, against = K.coerce(k), AGAINST.coerce(against)
    shown = side_by_side(site.store, view, patches, reference, k, against)
    common = set(shown.cls.image_ids) & set(shown.other.image_ids)
    overlap = html.P([html.B(f"{len(common)} of {len(shown.cls.image_ids)} in common"),
                      (f": overlap@{k} {shown.overlap:.2f}, Jaccard {shown.jaccard:.2f}. Images in both lists are "
                      "outlined.")], id="compare-overlap")
    results = html.Div([
        _among(view, patches),
        overlap,
        dbc.Row([dbc.Col(_ranked(shown.cls, common, "compare-cls"), md=6),
                 dbc.Col(_ranked(shown.other, common, "compare-other-rep"), md=6)], className="g-3"),
    ])
    return results, _summary(cached_summary(site.results, view, patches, k)), links


@PAGE.callback(
    Output("compare-cross", "children"),
    *PAGE.controls((OTHER, IMAGE, K, CLUSTERS)), State("compare-dataset", "data"),
)
def show_other_dataset(site: Site, other, image, k, clusters, dataset):
    view = inputs.dataset_view(site.store, dataset)
    reference = inputs.image_in(view, image)
    if not other:
        return html.P("Pick a second dataset of the same images, indexed with another model, size or weights.",
                      className="text-muted")
    second = inputs.dataset_view(site.store, other)
    if second.name == view.name:
        raise inputs.BadInput(f"The second dataset must be another one than {view.name!r}")
    k, clusters = K.coerce(k), CLUSTERS.coerce(clusters)
    match = cached_cross_match(site.results, site.store, view, second, clusters)
    matched = len(match.matched)
    facts = [html.B(f"{matched:,} matched images"),
             (f" (of {len(view):,} here and {len(second):,} in {second.name}), paired by content hash: the same file "
             "bytes, wherever each dataset keeps them.")]
    if match.agreement is not None:
        facts += [" K-Means with k = ", html.B(str(clusters)), (" on each dataset's embeddings of the matched images "
                  "agrees with adjusted Rand index "), html.B(f"{match.agreement:.3f}", id="compare-ari"),
                  " (1: the same clusters; about 0: no more alike than chance)."]
    shown = cross_retrieval(view, second, match, reference, k)
    if not shown.matched_reference:
        return html.Div([html.P(facts, id="compare-cross-facts"),
                         html.P(f"{second.name} does not hold the reference image: pick one it holds.",
                                className="text-warning", id="compare-cross-missing")])
    common = set(shown.first.relpaths) & set(shown.second.relpaths)
    return html.Div([
        html.P(facts, id="compare-cross-facts"),
        html.P([html.B(f"{round(shown.overlap * len(shown.first.image_ids))} of {len(shown.first.image_ids)} in "
                       "common"), f": overlap@{k} {shown.overlap:.2f}, among the matched images."],
               id="compare-cross-overlap"),
        dbc.Row([dbc.Col(_ranked(shown.first, common, "compare-first", by_path=True), md=6),
                 dbc.Col(_ranked(shown.second, common, "compare-second", by_path=True), md=6)], className="g-3"),
    ])


def _among(view: DatasetView, patches: MeanPatches) -> html.P:
    notes = [f"Top K among {len(patches.rows):,} images"]
    if patches.sampled:
        notes.append(f": a seeded sample of {len(patches.rows):,} of the {patches.total:,} (the patch grids of at "
                     f"most {MEAN_PATCH_LIMIT:,} images are averaged)")
    notes.append(".")
    if patches.reduced_dims:
        notes.append(f" This dataset stores its patch grids reduced to {patches.reduced_dims} dimensions "
                     "(--patch-dims): the mean is that of the reconstructed tokens, an approximation of the full "
                     "tokens' mean that still ranks the images of this dataset against each other.")
    return html.P(notes, className="small text-muted", id="compare-among")


def _ranked(ranked: Ranked, common: set, prefix: str, by_path: bool = False) -> html.Div:
    """One top-K list as thumbnails with scores, the images of both lists outlined."""
    cards = []
    for image_id, score, relpath in zip(ranked.image_ids, ranked.scores, ranked.relpaths):
        shared = (relpath if by_path else image_id) in common
        cards.append(html.Div([
            html.Img(src=thumbnail_url(image_id), alt=relpath, title=relpath,
                     style={"width": "100%", "aspectRatio": "1", "objectFit": "cover"}),
            html.Div(f"{score:.3f}", className="fw-bold small compare-score"),
            html.Div(relpath, className="small text-break text-muted"),
        ], className="compare-result" + (" compare-shared" if shared else ""),
            style={"border": "3px solid " + ("#0d6efd" if shared else "transparent"), "borderRadius": "4px",
                   "padding": "2px"}))
    return html.Div([
        html.H6(ranked.title, className="compare-title"),
        html.Div(cards, id=f"{prefix}-grid", style={"display": "grid", "gap": "6px",
                                                    "gridTemplateColumns": "repeat(auto-fill, minmax(96px, 1fr))"}),
    ])


def _summary(summary: Summary) -> html.Div:
    names = {"cls": "CLS token", **REPRESENTATIONS}
    has_labels = summary.precision["cls"] is not None
    header = [html.Th("representation"), html.Th(f"overlap@{summary.k} with CLS"),
              html.Th(f"precision@{summary.k} of same-label neighbours")]
    rows = [html.Tr([html.Td(text), html.Td("1.00 (itself)" if name == "cls" else f"{summary.overlap[name]:.2f}"),
                     html.Td("no folder labels" if summary.precision[name] is None
                             else f"{summary.precision[name]:.2f}")])
            for name, text in names.items()]
    explained = (f"Averaged over {summary.references:,} reference images (a seeded sample when there are more) at "
                 f"K = {summary.k}. Overlap@K: the share of CLS's top K that the other representation also ranks in "
                 "its top K. Precision@K: the share of each reference's top K in the reference's own folder.")
    if not has_labels:
        explained += " This dataset's images have no folder labels, so precision cannot be measured."
    return html.Div([
        dbc.Table([html.Thead(html.Tr(header)), html.Tbody(rows)], bordered=True, size="sm", id="compare-summary-table",
                  style={"maxWidth": "760px"}),
        html.P(explained, className="small text-muted"),
    ])
