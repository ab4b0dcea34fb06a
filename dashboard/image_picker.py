"""The searchable image picker that the per-image pages share: only a page of matching names travels to the
browser, searched on the server, so it stays quick with 100,000 images."""

from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc

from dashboard import inputs
from dashboard.data import DatasetView
from dashboard.similarity_view import reference_options
from dashboard.site import Site


def image_picker(component_id: str, view: DatasetView, image_id: int, **dropdown) -> dcc.Dropdown:
    return dcc.Dropdown(id=component_id, value=image_id, clearable=False,
                        options=reference_options(view, "", selected=image_id), **dropdown)


def image_and_count(page, view: DatasetView, image_id: int, image_label: str, count_label: str, count, value: int,
                    marks: dict) -> dbc.Row:
    """The row of a per-image page (a dashboard.page.Page) that picks its image and how many things to show of it:
    the picker, and a slider for the parameter `count` (a urlstate.Param) at `value`."""
    return dbc.Row([
        dbc.Col([dbc.Label(image_label, html_for=page.control_id("image")),
                 image_picker(page.control_id("image"), view, image_id, placeholder="type part of a file path")],
                md=6),
        dbc.Col([dbc.Label(count_label, html_for=page.control_id(count.name)),
                 dcc.Slider(id=page.control_id(count.name), min=count.low, max=count.high, step=1, value=value,
                            marks=marks)],
                md=6),
    ], className="mb-3 g-3")


def register_image_search(page, component_id: str, dataset_store_id: str) -> None:
    """Answer the searches of `page`'s picker (a dashboard.page.Page); the chosen image is always among the options,
    so its name stays shown."""
    page.callback(
        Output(component_id, "options"),
        Input(component_id, "search_value"), Input(component_id, "value"),
        State(dataset_store_id, "data"), prevent_initial_call=True,
    )(search_images)


def search_images(site: Site, search, image_id, dataset):
    view = inputs.dataset_view(site.store, dataset)
    return reference_options(view, inputs.text(search, "The search"), selected=inputs.image_in(view, image_id))
