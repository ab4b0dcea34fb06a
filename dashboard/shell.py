"""The frame every page shares: navigation, the dataset picker, the provenance line and the state panels."""

from __future__ import annotations

from collections.abc import Callable

import dash
import dash_bootstrap_components as dbc
import flask
from dash import Dash, Input, Output, State, dcc, html

from dashboard import inputs
from dashboard.data import DatasetStore, Provenance
from dashboard.site import Site, current_site, with_site
from dashboard.urlstate import IMAGE, dataset_url, image_page_url
from db.errors import DatabaseNotFound, DinoscopeDbError

BUSY_AFTER_MS = 500  # a callback that takes longer shows a spinner over what it will replace


def busy(component) -> dcc.Loading:
    """`component`, dimmed under a spinner while a callback that has taken over half a second replaces it."""
    return dcc.Loading(component, delay_show=BUSY_AFTER_MS, type="circle", parent_className="dinoscope-busy",
                       overlay_style={"visibility": "visible", "opacity": 0.5})


def _pages():
    """The page list (dashboard.pages.PAGES), imported when it is needed: the page modules import this one."""
    from dashboard.pages import PAGES

    return PAGES


def image_links(dataset: str, image_id: int, prefix: str, here: str | None = None) -> html.Div:
    """Buttons that open the same image on the per-image pages ("Open this image on ..."), `here` left out."""
    return html.Div([dbc.Button(page.image_link.text, href=image_page_url(page.path, dataset, image_id),
                                id=f"{prefix}-{page.image_link.suffix}-link", size="sm", color="primary",
                                outline=True, className="me-1 mb-1")
                     for page in _pages() if page.image_link and page.path != here], className="image-links")


def unknown_image_notice(page: str, image: str | None, shown: int) -> dbc.Alert | None:
    """A warning when the URL named an image (`image`, as written) that the page is not showing: the dataset has no
    such image, so the page shows its first one."""
    if image is None or IMAGE.coerce(image) == shown:
        return None
    return dbc.Alert(f"There is no image {image!r} in this dataset; showing its first image.", color="warning",
                     id=f"{page}-missing", dismissable=True)


def page_shell(store: DatasetStore, path: str, dataset: str | None,
               content: Callable[[Provenance], object]) -> html.Div:
    """The page at `path` for the dataset named in the URL (or the first one), or a panel that says what to do."""
    try:
        provenances = store.provenances()
    except DinoscopeDbError as error:
        return _frame(path, None, [], _panel("The database cannot be opened", str(error), "danger"))
    if not provenances:
        return _frame(path, None, [], _panel(
            "No datasets yet", "Add a set of images on the Image sets page, or index a folder on the server: "
            "dinoscope index FOLDER (then reload this page)." if _takes_uploads() else
            "Index a folder of images first: dinoscope index FOLDER (then reload this page).", "info"))
    names = [p.name for p in provenances]
    chosen = next((p for p in provenances if p.name == dataset), None) if dataset else provenances[0]
    if chosen is None:
        return _frame(path, None, names, _panel(f"No dataset named {dataset!r}",
                                                f"Pick one of: {', '.join(names)}.", "warning"))
    return _frame(path, chosen, names, html.Div([_provenance_line(chosen), _random_banner(chosen), content(chosen)]))


def site_shell(store: DatasetStore, path: str, dataset: str | None, body) -> html.Div:
    """A page about the whole site rather than one dataset: the navigation, the picker (on the dataset named in the
    URL, if there is one) and `body`, whether there are datasets (or a database) or not."""
    try:
        provenances = store.provenances()
    except DatabaseNotFound:
        provenances = []
    except DinoscopeDbError as error:
        return _frame(path, None, [], _panel("The database cannot be opened", str(error), "danger"))
    chosen = next((p for p in provenances if p.name == dataset), None)
    return _frame(path, chosen, [p.name for p in provenances], body)


def selection_note(page: str, path: str, dataset: str, wanted: str, among, kept: str, whole: tuple[str, str]):
    """What a page shows of a selection named in its URL (`wanted`; `among` its images, None when unknown): `kept`,
    what the page keeps of it ("Results only from", say), and `whole` (a link's text, what an unknown one falls back
    to) for the whole dataset."""
    if not wanted:
        return ""
    if among is None:
        return dbc.Alert(f"There is no selection {wanted[:40]!r} of this dataset (the link may be from another "
                         f"server): {whole[1]}.", color="warning", className="small")
    images = f"{len(among):,} image{'s' if len(among) != 1 else ''}"
    return dbc.Alert([f"{kept} selection {wanted} ({images}, picked on the clustering page). ",
                      html.A(whole[0], href=dataset_url(path, dataset))],
                     color="info", className="small", id=f"{page}-selection-alert")


def not_found(**_query) -> html.Div:
    """The page for an address no page has: the navigation and the dataset picker, and what to do."""
    try:
        names = [p.name for p in current_site().store.provenances()]
    except DinoscopeDbError:
        names = []
    return _frame("/404", None, names, _panel(
        "There is no page at this address", "Pick a page in the navigation above.", "warning"))


def _takes_uploads() -> bool:
    """Whether the app answering the request takes image sets (no, outside a request)."""
    return flask.has_app_context() and current_site().sets is not None


def _frame(path: str, chosen: Provenance | None, names: list[str], body) -> html.Div:
    shown = chosen.name if chosen else None
    uploads = _takes_uploads()
    links = [dbc.NavItem(dbc.NavLink(page.title, href=dataset_url(page.path, shown), active=page.path == path,
                                     id=page.nav_id))
             for page in _pages() if uploads or not page.needs_uploads]
    picker = dcc.Dropdown(id="dataset-picker", options=names, value=chosen.name if chosen else None,
                          clearable=False, placeholder="dataset", style={"minWidth": "14rem"})
    navbar = dbc.Navbar(dbc.Container([dbc.NavbarBrand("dinoscope", href=dataset_url("/gallery", shown)),
                                       dbc.Nav(links, navbar=True, className="me-auto"), picker], fluid=True),
                        color="dark", dark=True, className="mb-3")
    stores = [dcc.Store(id="shell-dataset", data=shown),
              dcc.Store(id="shell-generation", data=chosen.generation if chosen else None)]
    return html.Div([*stores, navbar, dbc.Container([html.Div(id="shell-changes"), body], fluid=True)])


def register(app: Dash, site: Site) -> None:
    """The shell's callbacks: the dataset picker navigates, an open page learns when the indexer changed the
    datasets (new ones join the picker; a changed dataset offers a reload), and the random-weights banner folds;
    and the page for unknown addresses."""
    register_collapsible(app, "random-weights-banner")
    app.callback(Output("navigate", "href"), Input("dataset-picker", "value"), State("shell-dataset", "data"),
                 State("navigate", "pathname"), prevent_initial_call=True)(open_dataset)
    app.callback(Output("dataset-picker", "options"), Output("shell-changes", "children"),
                 Input("dataset-check", "n_intervals"), State("dataset-picker", "options"),
                 State("shell-dataset", "data"), State("shell-generation", "data"), State("navigate", "href"),
                 prevent_initial_call=True)(with_site(check_for_changes, site))
    dash.register_page("not_found_404", path="/404", name="Not found", title="dinoscope: no such page",
                       layout=not_found)


def open_dataset(name, shown, pathname):
    # The picker reports its value when it mounts too: only a different dataset is a request to navigate.
    return dataset_url(pathname or "/", name) if name and name != shown else dash.no_update


def check_for_changes(site: Site, _tick, options, shown, generation, href):
    shown = inputs.text(shown, "The page's dataset") or None  # None: a page without a dataset
    try:
        generations = site.store.generations()  # every open page asks every few seconds: one small query
        names = list(generations)
        if shown is None or generations.get(shown) == generation:
            notice = None
        else:  # changed or removed: the notice gives the new image count
            current = next((p for p in site.store.provenances() if p.name == shown), None)
            notice = change_notice(current, shown, generation, href)
    except DinoscopeDbError:
        return dash.no_update, dash.no_update
    return (names if names != options else dash.no_update), notice


def change_notice(current: Provenance | None, shown: str | None, generation: int | None,
                  href: str | None) -> dbc.Alert | None:
    """What to tell a page that shows generation `generation` of dataset `shown` when the dataset is now `current`."""
    if shown is None or (current is not None and current.generation == generation):
        return None
    if current is None:
        return dbc.Alert(f"The dataset {shown!r} has been removed.", color="warning", id="change-notice")
    message = f"The indexer has changed {shown!r} since this page opened: it now has {current.image_count} images."
    return dbc.Alert([message,
                      dbc.Button("Show the changes", href=href or "/", external_link=True, size="sm",
                                 color="primary", id="change-reload", className="ms-2")],
                     color="info", id="change-notice", className="d-flex align-items-center gap-2")


def _provenance_line(p: Provenance) -> html.P:
    if p.last_indexed:
        when = f"last indexed {p.last_indexed:%Y-%m-%d %H:%M} UTC"
    else:
        when = "synthetic data, written without a model" if p.synthetic else "indexing not finished"
    return html.P(f"{p.image_count} images · {p.model_name} · weights {p.weights_identity} · input {p.image_size} px "
                  f"({p.grid_shape[0]}x{p.grid_shape[1]} patches) · {p.precision} · {when}",
                  id="provenance", className="text-muted small")


def _random_banner(p: Provenance):
    if not p.random_weights:
        return None
    return dbc.Alert(collapsible(
        "random-weights-banner", html.Strong("Random weights", className="small"),
        html.Div("This dataset was indexed with random weights: its embeddings say nothing about the images. Use it "
                 "to try the dashboard; index with pretrained weights for real analysis.", className="small mt-1")),
        color="warning", id="random-weights-banner", className="py-1 px-3")


def collapsible(component_id: str, title, body) -> html.Div:
    """A title that always shows, with a Hide/Show button for `body`; each browser remembers the choice (see
    register_collapsible, which every page that uses one calls once per id)."""
    return html.Div([
        html.Div([title, dbc.Button("Hide", id=f"{component_id}-toggle", color="link", size="sm",
                                    className="py-0 ms-2 align-baseline")], className="d-flex align-items-baseline"),
        dbc.Collapse(body, id=f"{component_id}-body", is_open=True),
        dcc.Store(id=f"{component_id}-open", storage_type="local"),
    ])


def register_collapsible(app, component_id: str) -> None:
    """The two browser-side callbacks of a `collapsible`, on `app` (a Dash app or a dashboard.page.Page): a click
    flips the remembered choice, which opens or closes the body (open until a user closes it)."""
    app.clientside_callback(
        "function (clicks, open) { return clicks ? open === false : window.dash_clientside.no_update; }",
        Output(f"{component_id}-open", "data"), Input(f"{component_id}-toggle", "n_clicks"),
        State(f"{component_id}-open", "data"), prevent_initial_call=True)
    app.clientside_callback(
        "function (open) { return [open !== false, open === false ? 'Show' : 'Hide']; }",
        Output(f"{component_id}-body", "is_open"), Output(f"{component_id}-toggle", "children"),
        Input(f"{component_id}-open", "data"))


def _panel(title: str, text: str, color: str) -> dbc.Alert:
    return dbc.Alert([html.H4(title), html.P(text, className="mb-0")], color=color, id="state-panel")
