"""The dashboard's URLs: a page's main parameters (rewritten in the browser as controls change, read by the
layout), and the addresses of images and pages that link to each other."""

from __future__ import annotations

from urllib.parse import urlencode

from dash import ClientsideFunction, Dash, Input, Output, State, dcc


def thumbnail_url(image_id: int, kind: str = "gallery") -> str:
    """Where the app serves an image's thumbnail ("gallery") or 512-pixel preview ("preview")."""
    return f"/thumbnails/{int(image_id)}/{kind}.jpg"


def dataset_url(path: str, dataset: str | None) -> str:
    """A page opened on a dataset (or on the first one, for None); the name URL-encoded, whatever it holds (& or #)."""
    return f"{path}?{urlencode({'dataset': dataset})}" if dataset is not None else path


def image_page_url(path: str, dataset: str, image_id: int) -> str:
    """A page about one image (similarity, embeddings, within image), opened on that image."""
    return f"{path}?{urlencode({'dataset': dataset, 'image': int(image_id)})}"


def similarity_url(dataset: str, image_id: int) -> str:
    return image_page_url("/similarity", dataset, image_id)


def url_parameters(page: str, names: list[str]) -> dcc.Store:
    """The store that names a page's URL parameters; put it in the page's layout."""
    return dcc.Store(id=f"{page}-url-parameters", data=names)


def sync_url(app: Dash, page: str, sources: list[tuple[str, str]]) -> None:
    """Keep the address bar's query equal to the values of `sources` ((component id, property) per name)."""
    app.clientside_callback(
        ClientsideFunction(namespace="dinoscope", function_name="syncQuery"),
        Output(f"{page}-url-parameters", "data"),
        *[Input(component, prop) for component, prop in sources],
        State(f"{page}-url-parameters", "data"),
    )


def as_int(text: str | None, default: int, low: int | None = None, high: int | None = None) -> int:
    """An integer URL parameter (or a callback's value), or the default when it is missing or not a finite number;
    clamped to [low, high]."""
    try:
        value = int(text)
    except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
        return default
    return max(low if low is not None else value, min(high if high is not None else value, value))

