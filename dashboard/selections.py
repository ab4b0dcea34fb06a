"""Selections: sets of a dataset's images, picked on the clustering page's scatter and kept under a short id that
a page's URL carries (`?selection=ID`), so a link shows the same images to whoever opens it.

The id is derived from the content (the dataset's name and the sorted image ids), so the same set always has the
same id and storing it twice stores it once. Selections live in their own store in the shared cache folder
(`selections`), never evicted: the results cache evicts least recently used entries at its size limit, and a
selection someone shared a link to must outlive a busy week of projections. A selection costs a few bytes per image
(compressed sorted ids), so even many thousand selections of 100,000 images fit in megabytes.

Other pages read one with `load_selection(site.selections, view, selection_id)` and name their URL parameter with
`SELECTION` (its control: a dcc.Store `<page>-selection`, property `data`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zlib
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass

import numpy as np

from dashboard.clustering_view import spreadsheet_cell
from dashboard.data import DatasetView
from dashboard.embeddings_view import npz_stream
from dashboard.urlstate import Param

SELECTION = Param("selection", "", prop="data")  # a page's URL parameter: the selection's id, "" for none
ID_LENGTH = 16  # hex digits of the content hash: 64 bits, no collision among any number of real selections
_ID = re.compile(f"[0-9a-f]{{{ID_LENGTH}}}")
HOW = ("replace", "add", "remove")  # what a new lasso or box does to the selection


def is_selection_id(value: object) -> bool:
    """Whether `value` has the form of a selection id (it may still be unknown)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def selection_id(dataset: str, image_ids) -> str:
    """The id of a set of images of a dataset: the same for the same set, in whatever order or repetition."""
    ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    digest = hashlib.sha256(dataset.encode() + b"\0" + ids.astype("<i8").tobytes())
    return digest.hexdigest()[:ID_LENGTH]


def save_selection(store: MutableMapping, dataset: str, image_ids) -> str:
    """Keep a set of images under its id and return the id ("" for an empty set, which is no selection)."""
    ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    if not len(ids):
        return ""
    key = selection_id(dataset, ids)
    if _key(key) not in store:
        gaps = np.diff(ids, prepend=0)  # sorted ids as gaps: small numbers, which compress well
        store[_key(key)] = {"dataset": dataset, "ids": zlib.compress(gaps.astype("<i8").tobytes())}
    return key


def load_selection(store: Mapping, view: DatasetView, key: str) -> np.ndarray | None:
    """The image ids of selection `key` that the dataset still holds, in the dataset's order; None when there is
    no such selection of this dataset (an unknown id, one of another dataset, not an id at all)."""
    if not is_selection_id(key):
        return None
    stored = store.get(_key(key))
    if not isinstance(stored, dict) or stored.get("dataset") != view.name:
        return None
    ids = np.cumsum(np.frombuffer(zlib.decompress(stored["ids"]), "<i8"))
    return view.image_ids[selected_rows(view, ids)]


def _key(selection: str) -> str:
    return f"selection/{selection}"


def selected_rows(view: DatasetView, image_ids) -> np.ndarray:
    """The dataset's rows (ascending) of the images among `image_ids` that it holds."""
    return np.flatnonzero(np.isin(view.image_ids, np.asarray(image_ids, dtype=np.int64)))


def refine(current: np.ndarray, picked: np.ndarray, how: str) -> np.ndarray:
    """The selection after a new pick: the pick itself (replace), the union (add), or the difference (remove)."""
    if how == "replace":
        return np.unique(picked)
    if how == "add":
        return np.union1d(current, picked)
    if how == "remove":
        return np.setdiff1d(current, picked)
    raise ValueError(f"a pick replaces, adds to or removes from the selection, not {how!r}")


def invert(view: DatasetView, current: np.ndarray) -> np.ndarray:
    """Every image of the dataset that is not selected."""
    return np.setdiff1d(view.image_ids, current)


@dataclass(frozen=True)
class SelectionPage:
    """One page of a selection's gallery: its image ids and paths, the page shown (clamped) and the page count."""

    image_ids: list[int]
    relpaths: list[str]
    page: int
    pages: int


def selection_page(view: DatasetView, image_ids: np.ndarray, page: int, per_page: int) -> SelectionPage:
    rows = selected_rows(view, image_ids)
    pages = max(1, -(-len(rows) // per_page))
    page = min(max(page, 1), pages)
    shown = rows[(page - 1) * per_page:page * per_page]
    return SelectionPage([int(i) for i in view.image_ids[shown]], [view.relpaths[row] for row in shown], page, pages)


# Exports ------------------------------------------------------------------------------------------------------------


def selection_csv(view: DatasetView, image_ids: np.ndarray) -> Iterator[str]:
    """The selected images as CSV: image_id, relpath, label, in the dataset's order. A path or label that a
    spreadsheet would read as a formula is quoted with '."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image_id", "relpath", "label"])
    for row in selected_rows(view, image_ids):
        writer.writerow([int(view.image_ids[row]), spreadsheet_cell(view.relpaths[row]),
                         spreadsheet_cell(view.labels[row] or "")])
    yield buffer.getvalue()


def selection_json(view: DatasetView, key: str, image_ids: np.ndarray) -> str:
    """The selected images as JSON: the dataset, the selection's id, and image ids, paths and labels in one order."""
    rows = selected_rows(view, image_ids)
    return json.dumps({"dataset": view.name, "selection": key, "image_ids": [int(i) for i in view.image_ids[rows]],
                       "relpaths": [view.relpaths[row] for row in rows],
                       "labels": [view.labels[row] for row in rows]})


def selection_npz(view: DatasetView, image_ids: np.ndarray, chunk: int = 4096) -> Iterator[bytes]:
    """The selected images as a .npz file (no pickled objects), written as it goes: image_ids, relpaths, labels
    ('' for none) and embeddings (float32, n x D, as stored), in the dataset's order."""
    rows = selected_rows(view, image_ids)
    paths = [view.relpaths[row] for row in rows]
    labels = [view.labels[row] or "" for row in rows]
    columns = {
        "image_ids": (np.dtype(np.int64), (len(rows),), lambda part: view.image_ids[rows[part]]),
        "relpaths": (np.dtype(f"<U{max(map(len, paths), default=1)}"), (len(rows),), lambda part: paths[part]),
        "labels": (np.dtype(f"<U{max(max(map(len, labels), default=1), 1)}"), (len(rows),),
                   lambda part: labels[part]),
        "embeddings": (np.dtype(np.float32), (len(rows), view.embeddings.shape[1]),
                       lambda part: view.embeddings[rows[part]]),
    }
    return npz_stream(columns, len(rows), chunk)
