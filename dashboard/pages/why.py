"""Why similar: a reference image and another image side by side, with the patch correspondences that make them
alike (mutual nearest neighbours between their stored patch grids) and each patch's share of the match."""

from __future__ import annotations

from dataclasses import replace

import dash_bootstrap_components as dbc
from dash import Output, State, dcc, html

from dashboard import inputs
from dashboard.explanations import WHY
from dashboard.image_picker import image_picker, register_image_search
from dashboard.page import Page
from dashboard.shell import busy, image_links, page_shell, unknown_image_notice
from dashboard.similarity_view import reference_image
from dashboard.site import Site, current_site
from dashboard.urlstate import IMAGE, Param, thumbnail_url
from dashboard.why_view import LINES, correspondence_figure, default_other, why_similar

OTHER = Param("other", None, kind=int)
PAGE = Page("why", "/why", "Why similar", explanation=WHY,
            params=(replace(IMAGE, control="reference"), OTHER, LINES))


@PAGE.layout
def layout(dataset: str | None = None, image: str | None = None, **query):
    store = current_site().store
    chosen = PAGE.query(query)

    def content(provenance):
        view = store.view(provenance.name)
        reference = reference_image(view, IMAGE.coerce(image))
        other = None if reference is None else default_other(view, reference, chosen["other"])
        if other is None:
            return dbc.Alert("Why similar needs a dataset of two images or more.", color="info", id="why-empty")
        return html.Div([
            dcc.Store(id="why-dataset", data=view.name),
            PAGE.url_parameters(),
            PAGE.explanation_panel(),
            unknown_image_notice("why", image, reference),
            dbc.Row([
                dbc.Col([dbc.Label("Reference image", html_for=PAGE.control_id("image")),
                         image_picker(PAGE.control_id("image"), view, reference)], md=4),
                dbc.Col([dbc.Label("Compared with", html_for=PAGE.control_id("other")),
                         image_picker(PAGE.control_id("other"), view, other)], md=4),
                dbc.Col([dbc.Label("Correspondences drawn (strongest first)", html_for=PAGE.control_id("lines")),
                         dcc.Slider(id=PAGE.control_id("lines"), min=LINES.low, max=LINES.high, step=1,
                                    value=chosen["lines"], marks={1: "1", 50: "50", 100: "100", 200: "200"})], md=4),
            ], className="mb-2 g-3"),
            html.P(id="why-summary", className="small"),
            busy(dcc.Graph(id="why-pair", config={"displaylogo": False, "displayModeBar": False})),
            html.P("Left the reference, right the other image. Lines join patches that are each other's most similar "
                   "patch in the other image (mutual nearest neighbours, cosine between patch tokens); the colours "
                   "are each matched patch's share of the patch match, unmatched patches are left clear.",
                   className="small text-muted"),
            html.Div(id="why-links"),
        ])

    return page_shell(store, PAGE.path, dataset, content)


register_image_search(PAGE, PAGE.control_id("image"), "why-dataset")
register_image_search(PAGE, PAGE.control_id("other"), "why-dataset")


@PAGE.callback(
    Output("why-pair", "figure"), Output("why-summary", "children"), Output("why-links", "children"),
    *PAGE.controls(PAGE.params), State("why-dataset", "data"),
)
def show_pair(site: Site, reference, other, lines, dataset):
    view = inputs.dataset_view(site.store, dataset)
    reference, other = inputs.image_in(view, reference), inputs.image_in(view, other)
    pair = why_similar(site.store, view, reference, other)
    sizes = tuple(tuple(int(v) for v in view.sizes[view.position(i)]) for i in (reference, other))
    figure = correspondence_figure(pair, sizes, (thumbnail_url(reference, "preview"), thumbnail_url(other, "preview")),
                                   LINES.coerce(lines))
    count = len(pair.matches.scores)
    summary = (f"{view.relpaths[view.position(reference)]} and {view.relpaths[view.position(other)]}: image "
               f"similarity (cosine of the embeddings) {pair.cosine:.3f}; {count} mutual patch "
               f"match{'es' if count != 1 else ''}, patch match (their mean cosine) {pair.matches.patch_match:.3f}; "
               f"{min(LINES.coerce(lines), count)} drawn.")
    links = [html.Span("The other image: ", className="small me-1"), image_links(view.name, other, "why-other")]
    return figure, summary, links
