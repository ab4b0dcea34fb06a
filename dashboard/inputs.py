"""The values a page's callbacks receive, checked before they are used.

A page sends back only values the server gave it, but anyone who can open the page can also write a request by
hand. A value no page would send (a dataset that does not exist, an image of another dataset, a malformed click) is
refused with a message that says what was wrong: Flask answers BadInput with 400 Bad Request, never with a server
error. Values with a sensible default (a page number, a slider) are clamped instead: see dashboard.urlstate.Param.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, FiniteFloat, StrictStr, ValidationError
from werkzeug.exceptions import BadRequest

from dashboard.data import DatasetStore, DatasetView
from db.errors import DatasetNotFound

INT64 = 2**63  # image ids are 64-bit signed integers
SHOWN_CHARS = 80  # of a refused value, in a message


class BadInput(BadRequest):
    """A callback value that cannot be used; its message says why (Flask answers it with 400 and the message;
    a background job shows the message in the page instead)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return self.description


def shown(value: Any) -> str:
    """A value as a message quotes it, cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def dataset_view(store: DatasetStore, name: Any) -> DatasetView:
    """The arrays of the dataset a page names."""
    if not isinstance(name, str) or not name:
        raise BadInput(f"A dataset is named by its name, not by {shown(name)}")
    try:
        return store.view(name)
    except DatasetNotFound as error:
        raise BadInput(f"There is {error}") from None


def _is_image_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64


def image_in(view: DatasetView, value: Any) -> int:
    """An image id of the dataset `view` (not of another dataset, not a string)."""
    if not _is_image_id(value) or view.position(value) is None:
        raise BadInput(f"There is no image {shown(value)} in dataset {view.name!r}")
    return value


def text(value: Any, what: str) -> str:
    """A string the page typed (None for an empty box)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadInput(f"{what} is text, not {shown(value)}")
    return value


def mapping(value: Any, what: str) -> dict:
    """A dict of named values (whose values the caller reads leniently, as URL parameters are)."""
    if not isinstance(value, dict):
        raise BadInput(f"{what} is malformed: a mapping of names to values is expected, not {shown(value)}")
    return value


Record = TypeVar("Record", bound=BaseModel)


def record(model: type[Record], value: Any, what: str) -> Record:
    """`value` (a dict the page holds, or an event) read as `model`."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise BadInput(f"{what} is malformed: {where + ': ' if where else ''}{problem['msg']}") from None


class CategoryPoint(BaseModel):
    """A point of a Plotly event on a graph with category axes (Plotly sends more keys: they are ignored)."""

    x: StrictStr
    y: StrictStr
    z: FiniteFloat | None = None
    bbox: dict[str, FiniteFloat] | None = None


class NumberPoint(BaseModel):
    """A point of a Plotly event on a graph with numeric axes."""

    x: FiniteFloat
    y: FiniteFloat


Point = TypeVar("Point", bound=BaseModel)


class PlotEvent(BaseModel, Generic[Point]):
    """A dcc.Graph's hoverData or clickData."""

    points: list[Point] = Field(min_length=1)


def first_point(event: Any, point: type[Point]) -> Point | None:
    """The first point of a dcc.Graph's hoverData or clickData; None when there is none (the pointer left)."""
    if event is None:
        return None
    return record(PlotEvent[point], event, "The graph's event").points[0]
