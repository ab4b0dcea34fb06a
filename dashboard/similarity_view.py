"""Similarity: one reference image, its most cosine-similar images, and the pairwise similarities around it."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from dashboard.analysis.similarity import cosine_matrix, heatmap_indices, top_k
from dashboard.data import DatasetView
from dashboard.inputs import CategoryPoint

K_DEFAULT = 8
K_MAX = 50
EMBEDDING_HEAD = 8  # embedding values shown per result
OPTION_LIMIT = 50  # reference picker options sent per search
HEATMAP_LIMIT = 100  # images in the heatmap at most


@dataclass(frozen=True)
class SimilarImage:
    image_id: int
    relpath: str
    label: str | None
    score: float  # cosine similarity to the reference
    embedding_head: list[float]  # the first EMBEDDING_HEAD embedding values


@dataclass(frozen=True)
class Heatmap:
    image_ids: list[int]  # rows and columns, in order
    relpaths: list[str]
    matrix: np.ndarray  # (n, n) float32 cosine similarities


@dataclass(frozen=True)
class HoveredCell:
    row_id: int
    row_relpath: str
    column_id: int
    column_relpath: str
    score: float | None


def reference_image(view: DatasetView, image_id: int | None) -> int | None:
    """The image the page shows: `image_id` when the dataset has it, else the first image (None when empty)."""
    if image_id is not None and view.position(image_id) is not None:
        return int(image_id)
    return int(view.image_ids[0]) if len(view) else None


def similar_images(view: DatasetView, image_id: int, k: int, head: int = EMBEDDING_HEAD) -> list[SimilarImage]:
    """The k images most cosine-similar to `image_id` (itself left out), best first; [] for an unknown id."""
    position = view.position(image_id)
    if position is None:
        return []
    return _results(view, *view.nearest(position, k), head)


def similar_among(view: DatasetView, image_id: int, k: int, among: np.ndarray,
                  head: int = EMBEDDING_HEAD) -> list[SimilarImage]:
    """The k images of `among` (image ids, a selection) most cosine-similar to `image_id` (itself left out), best
    first; [] for an unknown id."""
    position = view.position(image_id)
    if position is None:
        return []
    rows = np.flatnonzero(np.isin(view.image_ids, among))
    rows = rows[rows != position]
    indices, scores = top_k(view.embeddings[rows], view.embeddings[position], k, norms=view.norms[rows])
    return _results(view, rows[indices], scores, head)


def images_similar_to(view: DatasetView, embedding: np.ndarray, k: int,
                      head: int = EMBEDDING_HEAD) -> list[SimilarImage]:
    """The k images most cosine-similar to an embedding from outside the dataset (an upload), best first."""
    return _results(view, *view.nearest(np.asarray(embedding, dtype=np.float32), k), head)


def _results(view: DatasetView, indices: np.ndarray, scores: np.ndarray, head: int) -> list[SimilarImage]:
    return [SimilarImage(int(view.image_ids[i]), view.relpaths[i], view.labels[i], float(score),
                         [float(x) for x in view.embeddings[i, :head]])
            for i, score in zip(indices, scores)]


def describe(view: DatasetView, image_id: int, head: int = EMBEDDING_HEAD) -> SimilarImage | None:
    """The reference itself in the shape of a result (score 1)."""
    position = view.position(image_id)
    if position is None:
        return None
    return SimilarImage(int(image_id), view.relpaths[position], view.labels[position], 1.0,
                        [float(x) for x in view.embeddings[position, :head]])


def reference_options(view: DatasetView, search: str | None, limit: int = OPTION_LIMIT,
                      selected: int | None = None) -> list[dict]:
    """Picker options: the first `limit` images whose relative path contains `search` (any case), plus the
    `selected` image so the picker can always show it. One pass that stops at `limit` matches."""
    needle = (search or "").strip().lower()
    chosen: list[int] = []
    for position, relpath in enumerate(view.relpaths):
        if len(chosen) >= limit:
            break
        if needle in relpath.lower():
            chosen.append(position)
    selected_position = view.position(selected) if selected is not None else None
    if selected_position is not None and selected_position not in chosen:
        chosen.insert(0, selected_position)
    return [{"label": view.relpaths[i], "value": int(view.image_ids[i])} for i in chosen]


def similarity_heatmap(view: DatasetView, image_id: int, neighbours: Sequence[int] | None = None,
                       limit: int = HEATMAP_LIMIT) -> Heatmap:
    """Pairwise cosine similarities of every image when there are at most `limit`, else of the reference and
    its nearest neighbours (`neighbours`: image ids, nearest first; found here when not given)."""
    position = view.position(image_id)
    if position is None:
        raise KeyError(f"image {image_id} is not in dataset {view.name!r}")
    if len(view) <= limit:
        positions = heatmap_indices(len(view), position, [], limit)
    else:
        if neighbours is None:
            nearest, _ = view.nearest(position, limit - 1)
        else:
            nearest = [p for p in (view.position(i) for i in neighbours) if p is not None]
        positions = heatmap_indices(len(view), position, nearest, limit)
    return Heatmap([int(view.image_ids[i]) for i in positions], [view.relpaths[i] for i in positions],
                   cosine_matrix(view.embeddings[positions]))


def neighbourhood(view: DatasetView, image_id: int, k: int,
                  limit: int = HEATMAP_LIMIT) -> tuple[list[SimilarImage], Heatmap]:
    """The top-k results and the heatmap for one reference, ranking the dataset once."""
    wanted = k if len(view) <= limit else max(k, limit - 1)
    nearest = similar_images(view, image_id, wanted)
    return nearest[:k], similarity_heatmap(view, image_id, [r.image_id for r in nearest], limit)


def short_names(relpaths: Sequence[str]) -> list[str]:
    """Unique short names for paths: the file name, with as many parent folders as it takes to tell apart."""
    parts = [relpath.split("/") for relpath in relpaths]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        seen: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            seen.setdefault(name, []).append(i)
        clashes = [i for group in seen.values() if len(group) > 1 for i in group if depth[i] < len(parts[i])]
        if not clashes:
            return names
        for i in clashes:
            depth[i] += 1


def plotly_text(text: str) -> str:
    """A file name as Plotly shows it, character for character: Plotly reads tags (<a href>, <b>, <br>) and entities
    in every text it draws (ticks, hover labels, titles, legends), so <, > and & go as entities."""
    return html.escape(text, quote=False)  # Plotly decodes &lt; &gt; &amp; but not &quot;


def heatmap_figure(matrix: np.ndarray, relpaths: Sequence[str], native_hover: bool = True) -> go.Figure:
    """The cosine matrix with each image's short name on the axes and both full paths in the hover. The axes'
    categories are the paths as Plotly text (plotly_text), which hover events report.

    `native_hover=False` leaves the hover label to the page (hover events still fire)."""
    categories = [plotly_text(relpath) for relpath in relpaths]
    names = [plotly_text(name) for name in short_names(relpaths)]
    n = len(relpaths)
    axis = {"type": "category", "tickmode": "array", "tickvals": categories, "ticktext": names,
            "automargin": True, "tickfont": {"size": 10 if n <= 50 else 7}, "constrain": "domain"}
    figure = go.Figure(go.Heatmap(
        z=np.asarray(matrix, dtype=np.float32), x=categories, y=categories, zmin=-1, zmax=1,
        colorscale="RdBu_r", colorbar={"title": {"text": "cosine"}},
        hovertemplate="%{y}<br>%{x}<br>cosine %{z:.3f}<extra></extra>" if native_hover else None,
        hoverinfo=None if native_hover else "none",
    ))
    # Square cells: the y axis keeps the x axis's scale, the plot as tall as the labels need.
    figure.update_layout(height=min(900, max(600, 220 + 12 * n)), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis={**axis, "tickangle": -60}, yaxis={**axis, "autorange": "reversed", "scaleanchor": "x"},
                         plot_bgcolor="white")
    return figure


def hovered_cell(point: CategoryPoint | None, image_ids: Sequence[int], relpaths: Sequence[str]) -> HoveredCell | None:
    """The two images of the heatmap cell a hover event's point (inputs.first_point) is on; None when the pointer
    left the heatmap or is on an image it does not show."""
    if point is None:
        return None
    where = {plotly_text(relpath): (int(image_id), relpath) for image_id, relpath in zip(image_ids, relpaths)}
    row, column = where.get(point.y), where.get(point.x)
    if row is None or column is None:
        return None
    return HoveredCell(*row, *column, point.z)
