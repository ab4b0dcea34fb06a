"""The dashboard's URLs: a page's main parameters (rewritten in the browser as controls change, read by the
layout), and the addresses of images and pages that link to each other."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
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


def why_url(dataset: str, image_id: int, other: int) -> str:
    """The why-similar page on a reference image and another image."""
    return f"/why?{urlencode({'dataset': dataset, 'image': int(image_id), 'other': int(other)})}"


@dataclass(frozen=True)
class Param:
    """A URL parameter of a page, and the control that shows it: read from the URL by `coerce` (a missing or
    malformed value gives the default, a number out of bounds the nearest bound, a value outside `choices` the
    default), written back to the URL as the control changes. Its kind is the default's type unless given."""

    name: str
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    kind: type | None = None
    true_words: tuple[str, ...] = ("true", "1")  # of a bool: the values (lower case) that mean True
    control: str | None = None  # the control's id after the page's prefix, when it is not the name
    prop: str = "value"  # the control's property that holds the value

    def control_id(self, page: str) -> str:
        return f"{page}-{self.control or self.name.replace('_', '-')}"

    def coerce(self, value: Any, high: float | None = None, default: Any = None) -> Any:
        """`value` (a URL's text or a control's value) as this parameter holds it; `high` and `default` replace
        the table's where they depend on other values."""
        default = self.default if default is None else default
        kind = self.kind or type(self.default)
        if kind is bool:
            return str(value).lower() in self.true_words
        if kind is str:
            chosen = value if isinstance(value, str) else default
        else:
            chosen = _number(value, kind)
            if chosen is None:
                return default
            high = self.high if high is None else high
            chosen = min(max(chosen, -math.inf if self.low is None else self.low), math.inf if high is None else high)
        return chosen if self.choices is None or chosen in self.choices else default


def _number(value: Any, kind: type) -> float | int | None:
    """An int read exactly (image ids need all 64 bits) or through a float ("1e3", "2.5"); None when it is
    missing or not a finite number."""
    if kind is int:
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: Infinity
            pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return kind(number) if math.isfinite(number) else None


IMAGE = Param("image", None, kind=int)  # the image of a page about one image: its id


def read_query(params: tuple[Param, ...], query: dict) -> dict[str, Any]:
    """Every parameter of `params` from a URL's query (or a page's control values, by parameter name)."""
    return {param.name: param.coerce(query.get(param.name)) for param in params}


def url_parameters(page: str, params: tuple[Param, ...]) -> dcc.Store:
    """The store that names a page's URL parameters (the dataset first); put it in the page's layout."""
    return dcc.Store(id=f"{page}-url-parameters", data=["dataset", *(param.name for param in params)])


def sync_url(app: Dash, page: str, params: tuple[Param, ...]) -> None:
    """Keep the address bar's query equal to the page's dataset and the values of its controls."""
    app.clientside_callback(
        ClientsideFunction(namespace="dinoscope", function_name="syncQuery"),
        Output(f"{page}-url-parameters", "data"),
        Input(f"{page}-dataset", "data"), *[Input(param.control_id(page), param.prop) for param in params],
        State(f"{page}-url-parameters", "data"),
    )
