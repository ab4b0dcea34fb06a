"""Why two images are similar, and where a region of an image appears in others: the computations on stored patch
grids (dashboard.analysis.correspondence) and their figures, in each image's pixel coordinates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from dashboard.analysis.correspondence import Correspondences, Region, RegionMatch, mutual_matches, rank_by_region
from dashboard.analysis.patches import cell_box
from dashboard.data import DatasetStore, DatasetView
from dashboard.urlstate import Param

LINES = Param("lines", 20, 1, 200)  # correspondences drawn, strongest first
SHORTLIST = Param("shortlist", 100, 10, 500)  # images a region query reads the grids of, nearest first
REGION_RESULTS = 8
HEIGHT = 1000.0  # both pictures are drawn this tall, side by side
GAP = 40.0


@dataclass(frozen=True)
class Pair:
    """Two images of a dataset, their image similarity and their patch correspondences."""

    reference: int
    other: int
    cosine: float  # of their embeddings
    matches: Correspondences


def why_similar(store: DatasetStore, view: DatasetView, reference: int, other: int) -> Pair:
    position, other_position = view.position(reference), view.position(other)
    embeddings = view.embeddings[[position, other_position]]
    cosine = float(embeddings[0] @ embeddings[1] / max(float(view.norms[position] * view.norms[other_position]),
                                                       1e-12))
    return Pair(reference, other, cosine, mutual_matches(store.patch_grid(reference), store.patch_grid(other)))


def default_other(view: DatasetView, reference: int, other: int | None) -> int | None:
    """`other` when the dataset has it and it is not the reference, else the reference's nearest image."""
    if other is not None and other != reference and view.position(other) is not None:
        return int(other)
    if len(view) < 2:
        return None
    indices, _ = view.nearest(view.position(reference), 1)
    return int(view.image_ids[indices[0]])


@dataclass(frozen=True)
class _Placed:
    """A picture drawn at x offset `left`, HEIGHT tall."""

    left: float
    width: float
    rows: int
    cols: int

    def centre(self, row: int, col: int) -> tuple[float, float]:
        x0, y0, x1, y1 = cell_box(row, col, self.rows, self.cols, self.width, HEIGHT)
        return self.left + (x0 + x1) / 2, (y0 + y1) / 2


def correspondence_figure(pair: Pair, sizes: tuple[tuple[int, int], tuple[int, int]], previews: tuple[str, str],
                          lines: int) -> go.Figure:
    """The two previews side by side, each patch coloured by its contribution, and the `lines` strongest matches
    drawn between patch centres."""
    matches = pair.matches
    placed, left = [], 0.0
    for (width, height), contribution in zip(sizes, (matches.contribution_a, matches.contribution_b)):
        placed.append(_Placed(left, HEIGHT * width / max(height, 1), *contribution.shape))
        left += placed[-1].width + GAP
    figure = go.Figure()
    top = max(float(matches.contribution_a.max(initial=0)), float(matches.contribution_b.max(initial=0))) * 100
    for where, preview, contribution, name in zip(placed, previews, (matches.contribution_a, matches.contribution_b),
                                                  ("reference", "neighbour")):
        figure.add_layout_image(source=preview, xref="x", yref="y", x=where.left, y=0, sizex=where.width,
                                sizey=HEIGHT, sizing="stretch", layer="below")
        dx, dy = where.width / where.cols, HEIGHT / where.rows
        shares = np.where(contribution > 0, contribution * 100, np.nan).astype(np.float32)
        figure.add_trace(go.Heatmap(z=shares, x0=where.left + dx / 2, dx=dx, y0=dy / 2, dy=dy, opacity=0.55,
                                    coloraxis="coloraxis", name=name,
                                    hovertemplate="share of the match %{z:.2f} %<extra></extra>"))
    shown = min(lines, len(matches.scores))
    xs, ys, ends_x, ends_y, text = [], [], [], [], []
    for (row_a, col_a), (row_b, col_b), score in zip(matches.cells_a[:shown], matches.cells_b[:shown],
                                                      matches.scores[:shown]):
        (xa, ya), (xb, yb) = placed[0].centre(row_a, col_a), placed[1].centre(row_b, col_b)
        xs += [xa, xb, None]
        ys += [ya, yb, None]
        ends_x += [xa, xb]
        ends_y += [ya, yb]
        text += [f"cosine {score:.3f}"] * 2
    figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "yellow", "width": 1.5}, hoverinfo="skip",
                                name="matches"))
    figure.add_trace(go.Scatter(x=ends_x, y=ends_y, mode="markers", text=text, hoverinfo="text", name="ends",
                                marker={"size": 6, "color": "yellow", "line": {"color": "black", "width": 1}}))
    figure.update_xaxes(range=[0, left - GAP], visible=False, constrain="domain")
    figure.update_yaxes(range=[HEIGHT, 0], visible=False, scaleanchor="x", constrain="domain")
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, plot_bgcolor="white", showlegend=False,
                         dragmode=False, height=460,
                         coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": top or 1,
                                    "colorbar": {"title": {"text": "share %", "side": "right"}, "thickness": 12}})
    return figure


def region_query(store: DatasetStore, view: DatasetView, image_id: int, region: Region, shortlist: int,
                 progress: Callable[[int, int], None] | None = None) -> list[RegionMatch]:
    """The images where `region` of image `image_id` appears: the `shortlist` images nearest to it by embedding,
    re-ranked by the region's best placement in their patch grids (the image itself left out), best first.
    `progress` is called with (grids compared, shortlist)."""
    tokens = region.tokens(store.patch_grid(image_id))
    indices, _ = view.nearest(view.position(image_id), shortlist)
    candidates = [int(view.image_ids[i]) for i in indices]
    report = None if progress is None else (lambda done: progress(done, len(candidates)))
    return rank_by_region(tokens, store.patch_grids(view.name, candidates), report)


def box_select(figure: go.Figure, centres: np.ndarray) -> None:
    """Let a drag on `figure` draw a box (Plotly's box select; its selectedData holds the box's range): an invisible
    point at each of `centres` (n, 2 pixel coordinates) gives the selection something to select, as Plotly reports
    no selection on a picture or a heatmap alone."""
    figure.add_trace(go.Scatter(x=centres[:, 0], y=centres[:, 1], mode="markers", hoverinfo="none",
                                marker={"opacity": 0, "size": 4}, unselected={"marker": {"opacity": 0}},
                                selected={"marker": {"opacity": 0}}, showlegend=False))
    figure.update_layout(dragmode="select")


def region_picture(preview: str, size: tuple[int, int], grid_shape: tuple[int, int], height: int) -> go.Figure:
    """An image's preview, `height` pixels tall, on which a drag draws the box of a region query (box_select, a
    point at every patch cell's centre)."""
    width, image_height = size
    rows, cols = grid_shape
    figure = go.Figure()
    figure.add_layout_image(source=preview, xref="x", yref="y", x=0, y=0, sizex=width, sizey=image_height,
                            sizing="stretch", layer="below")
    centres = np.array([[(x0 + x1) / 2, (y0 + y1) / 2] for x0, y0, x1, y1 in
                        (cell_box(row, col, rows, cols, width, image_height) for row in range(rows)
                         for col in range(cols))])
    box_select(figure, centres)
    figure.update_xaxes(range=[0, width], visible=False, constrain="domain")
    figure.update_yaxes(range=[image_height, 0], visible=False, scaleanchor="x", constrain="domain")
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, plot_bgcolor="white", height=height)
    return figure


def found_region_figure(preview: str, size: tuple[int, int], grid_shape: tuple[int, int], region_shape,
                        match: RegionMatch) -> go.Figure:
    """A result's preview with the block where the region was found outlined."""
    width, height = size
    rows, cols = grid_shape
    x0, y0, _, _ = cell_box(match.row, match.col, rows, cols, width, height)
    _, _, x1, y1 = cell_box(match.row + region_shape[0] - 1, match.col + region_shape[1] - 1, rows, cols, width,
                            height)
    figure = go.Figure()
    figure.add_layout_image(source=preview, xref="x", yref="y", x=0, y=0, sizex=width, sizey=height,
                            sizing="stretch", layer="below")
    figure.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": "yellow", "width": 3})
    figure.update_xaxes(range=[0, width], visible=False, constrain="domain")
    figure.update_yaxes(range=[height, 0], visible=False, scaleanchor="x", constrain="domain")
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, plot_bgcolor="white", height=180)
    return figure
