"""What the duplicates page and its downloads show: exact copies (the same bytes, in this dataset and in the datasets
of the same model and weights) and near-duplicates (a chain of pairs at the threshold or above), with the histogram
of every image's nearest-neighbour similarity.

The near-duplicate pass (dashboard.analysis.duplicates) compares every pair of images once per dataset generation and
keeps a forest of the pairs at LOWEST or above in the shared results cache; the threshold only regroups them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import plotly.graph_objects as go

from dashboard.analysis.duplicates import DuplicateGroup, DuplicatePass, duplicate_pass
from dashboard.data import DatasetStore, DatasetView
from dashboard.folder_cache import computed
from dashboard.urlstate import Param
from db.queries import ByteCopy

LOWEST = 0.85  # the lowest threshold the page offers: the pass keeps the pairs from here up
DEFAULT_THRESHOLD = 0.95
IN_REQUEST = 2_000  # up to this many images the pass runs in the request (a tenth of a second); above, in a job
HISTOGRAM_BINS = 100
THRESHOLD = Param("threshold", DEFAULT_THRESHOLD, LOWEST, 1.0)
PARAMS = (THRESHOLD, Param("page", 1, 1, None, control="pages", prop="active_page"))


@dataclass(frozen=True)
class ExactGroup:
    content_hash: str
    images: list[ByteCopy]  # by dataset name and path


def pass_key(view: DatasetView) -> str:
    """The pass's key in the shared results cache: a re-index (a new generation) makes a new one."""
    return f"duplicates/{view.name}/{view.generation}/exact/lowest={LOWEST}"


def runs_in_background(view: DatasetView) -> bool:
    return len(view) > IN_REQUEST


def cached_pass(cache, view: DatasetView, progress: Callable[[str], None] | None = None) -> DuplicatePass:
    """The pass from the shared cache, computed and stored there first if no one has asked for it yet."""
    key = pass_key(view)
    return computed(cache, key, lambda: duplicate_pass(view.embeddings, LOWEST, norms=view.norms, progress=progress))


def crowding_note(found: DuplicatePass) -> str:
    """What the pass left out, if anything: said beside the groups."""
    if not found.crowded:
        return ""
    images = f"{found.crowded} image{'s' if found.crowded != 1 else ''}"
    return (f"{images} had more than {found.keep} near-duplicates at {found.lowest:.2f} or above within one block of "
            f"the comparison: each kept its {found.keep} most similar of the block, so a group at a low threshold may "
            "be split.")


def same_model(store: DatasetStore, name: str) -> list[str]:
    """The other datasets embedded by the same model with the same weights as dataset `name`."""
    provenances = store.provenances()
    own = next(p for p in provenances if p.name == name)
    return [p.name for p in provenances
            if p.name != name and (p.model_name, p.weights_identity) == (own.model_name, own.weights_identity)]


def exact_groups(store: DatasetStore, name: str) -> list[ExactGroup]:
    """The images holding the same bytes as an image of dataset `name`, in it or in a dataset of the same model, by
    content hash; groups with the most images first."""
    copies = store.byte_copies(name, same_model(store, name))
    groups = [ExactGroup(content_hash, list(images))
              for content_hash, images in groupby(copies, key=lambda copy: copy.content_hash)]
    return sorted(groups, key=lambda group: -len(group.images))


def nearest_histogram(found: DuplicatePass, threshold: float) -> go.Figure:
    """Bars of every image's nearest-neighbour cosine similarity (binned here: the figure's size does not grow with
    the dataset), the threshold drawn as a line."""
    values = found.nearest_similarity[np.isfinite(found.nearest_similarity)]
    low = min(float(values.min()), LOWEST) if len(values) else LOWEST
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, 1.0))
    figure = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                              marker_color="#5c7cfa", hovertemplate="similarity %{x:.3f}: %{y} images<extra></extra>"))
    figure.add_vline(x=threshold, line_color="#e8590c", line_width=2,
                     annotation_text=f"threshold {threshold:.3f}", annotation_position="top left")
    figure.update_layout(template="plotly_white", height=260, margin={"l": 40, "r": 10, "t": 30, "b": 40},
                         xaxis_title="cosine similarity to the nearest other image", yaxis_title="images",
                         bargap=0)
    return figure


# What a spreadsheet reads as the start of a formula (OWASP's list: tab and carriage return too).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def groups_csv(view: DatasetView, exact: list[ExactGroup], near: list[DuplicateGroup], found: DuplicatePass) -> str:
    """One row per image of a group: exact groups first, then near-duplicate groups (numbered from 1 in each kind).
    `similarity`: of a near-duplicate, the cosine similarity to its nearest other image. A text cell that a
    spreadsheet would read as a formula is quoted with '."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["kind", "group", "dataset", "image_id", "relpath", "content_hash", "similarity"])
    for number, group in enumerate(exact, 1):
        for image in group.images:
            writer.writerow(["exact", number, _cell(image.dataset), image.image_id, _cell(image.relpath),
                             group.content_hash, ""])
    for number, group in enumerate(near, 1):
        for row in group.rows:
            writer.writerow(["near", number, _cell(view.name), int(view.image_ids[row]), _cell(view.relpaths[row]), "",
                             f"{found.nearest_similarity[row]:.6f}"])
    return buffer.getvalue()


def groups_json(view: DatasetView, threshold: float, exact: list[ExactGroup], near: list[DuplicateGroup],
                found: DuplicatePass) -> str:
    document = {
        "dataset": view.name, "generation": view.generation, "threshold": threshold,
        "exact": [{"content_hash": group.content_hash,
                   "images": [{"dataset": image.dataset, "image_id": image.image_id, "relpath": image.relpath}
                              for image in group.images]} for group in exact],
        "near": [{"highest_similarity": round(group.highest, 6),
                  "images": [{"image_id": int(view.image_ids[row]), "relpath": view.relpaths[row],
                              "similarity": round(float(found.nearest_similarity[row]), 6)} for row in group.rows]}
                 for group in near],
    }
    return json.dumps(document, indent=1)
