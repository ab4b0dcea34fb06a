"""A page of the dashboard, declared once in its module: its path, its titles, whether it is about one image (and
how other pages link to it), its explanation, its URL parameters, its layout and its callbacks.

The module records its layout and callbacks on its Page at import, as a Flask blueprint records its routes, and
`register_pages` replays them on every app: each app gets its own callbacks, bound to its own Site, so two apps in
one process each serve their own database. Dash's page registry is global; registering a page again replaces it
with the same layout, which finds its site in the app that answers the request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dash
from dash import Dash, Input

from dashboard.explanations import explanation
from dashboard.site import Site, with_site
from dashboard.urlstate import Param, read_query, sync_url, url_parameters


@dataclass(frozen=True)
class ImageLink:
    """How the other pages open a page about one image: "Open this image on ..." buttons with this text, whose id
    ends in `suffix`."""

    text: str
    suffix: str


class Page:
    def __init__(self, name: str, path: str, title: str, *, image_link: ImageLink | None = None,
                 explanation: str | None = None, params: tuple[Param, ...] = (), home: bool = False,
                 needs_uploads: bool = False) -> None:
        """`name` prefixes the page's component ids; `title` names it in the navigation; `params` are its URL
        parameters after the dataset, each shown by the control `params[i].control_id(name)`; `home`: it is also
        the page at "/"; `needs_uploads`: the navigation shows it only on a server that takes image sets."""
        self.name = name
        self.path = path
        self.title = title
        self.image_link = image_link
        self.explanation = explanation
        self.params = params
        self.home = home
        self.needs_uploads = needs_uploads
        self._layout: Callable | None = None
        self._callbacks: list[tuple[Callable, tuple, dict, str | None]] = []
        self._clientside: list[tuple[Any, tuple, dict]] = []

    @property
    def nav_id(self) -> str:
        return f"nav-{self.path.strip('/')}"

    def layout(self, function: Callable) -> Callable:
        """Decorate the page's layout: called with the URL's query parameters as keywords (all of them optional:
        Dash calls it once without any)."""
        self._layout = function
        return function

    def callback(self, *dependencies, manager: str | None = None, **options) -> Callable:
        """Decorate a callback of the page: `app.callback`'s arguments, and a function whose first argument is the
        Site. `manager`: the lane (a field of dashboard.jobs.JobManagers) of a background callback that does not
        use the app's default one."""
        def record(function: Callable) -> Callable:
            self._callbacks.append((function, dependencies, options, manager))
            return function

        return record

    def clientside_callback(self, code, *dependencies, **options) -> None:
        """A callback that runs in the browser: `app.clientside_callback`'s arguments."""
        self._clientside.append((code, dependencies, options))

    def query(self, query: dict) -> dict[str, Any]:
        """The page's parameters from a URL's query, coerced (see urlstate.Param)."""
        return read_query(self.params, query)

    def param(self, name: str) -> Param:
        return next(param for param in self.params if param.name == name)

    def control_id(self, name: str) -> str:
        """The id of the control of the parameter `name`."""
        return self.param(name).control_id(self.name)

    def controls(self, params: tuple[Param, ...], kind: type = Input) -> list:
        """Callback dependencies (Input or State) on the controls of `params`."""
        return [kind(param.control_id(self.name), param.prop) for param in params]

    def url_parameters(self):
        """The store the browser's URL sync reads the parameters' names from; put it in the layout."""
        return url_parameters(self.name, self.params)

    def explanation_panel(self):
        return explanation(self.name, self.explanation)

    def register(self, app: Dash, site: Site, managers, order: int) -> None:
        dash.register_page(self.name, path=self.path, name=self.title, title=f"dinoscope: {self.title.lower()}",
                           layout=self._layout, order=order)
        if self.home:
            dash.register_page("home", path="/", name="Home", title="dinoscope", layout=self._layout, order=0)
        if self.params:
            sync_url(app, self.name, self.params)
        for code, dependencies, options in self._clientside:
            app.clientside_callback(code, *dependencies, **options)
        for function, dependencies, options, lane in self._callbacks:
            if lane:
                options = {**options, "manager": getattr(managers, lane)}
            app.callback(*dependencies, **options)(with_site(function, site))


def register_pages(app: Dash, pages: tuple[Page, ...], site: Site, managers) -> None:
    """Every page of `pages` on `app`, in navigation order."""
    for order, page in enumerate(pages, start=1):
        page.register(app, site, managers, order)
