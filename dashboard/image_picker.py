"""The searchable image picker that the per-image pages share: only a page of matching names travels to the
browser, searched on the server, so it stays quick with 100,000 images."""

from __future__ import annotations

from dash import Dash, Input, Output, State, dcc

from dashboard import inputs
from dashboard.data import DatasetStore, DatasetView
from dashboard.similarity_view import reference_options


def image_picker(component_id: str, view: DatasetView, image_id: int, **dropdown) -> dcc.Dropdown:
    return dcc.Dropdown(id=component_id, value=image_id, clearable=False,
                        options=reference_options(view, "", selected=image_id), **dropdown)


def register_image_search(app: Dash, store: DatasetStore, component_id: str, dataset_store_id: str) -> None:
    """Answer the picker's searches; the chosen image is always among the options, so its name stays shown."""

    @app.callback(
        Output(component_id, "options"),
        Input(component_id, "search_value"), Input(component_id, "value"),
        State(dataset_store_id, "data"), prevent_initial_call=True,
    )
    def search_images(search, image_id, dataset):
        view = inputs.dataset_view(store, dataset)
        return reference_options(view, inputs.text(search, "The search"), selected=inputs.image_in(view, image_id))
