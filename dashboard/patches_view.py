"""The within-image page's logic: what one image's patch grid shows under the page's settings, and its figures.

Everything here works on the stored patch grid and the image's preview: no model runs at view time. Figures use
the image's own pixel coordinates (its displayed width and height), so overlays line up at any aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotly.express as px
import plotly.graph_objects as go

from dashboard.analysis.patches import (
    OUTSIDE,
    PooledGrid,
    cell_box,
    cluster_patches,
    cluster_shares,
    foreground_scores,
    patch_norms,
    patch_similarity,
    pca_rgb,
    pool_grid,
)
from dashboard.analysis.projection import normalize_rows
from dashboard.urlstate import Param, read_query
from dashboard.why_view import box_select

LAYERS = ("clusters", "pca", "foreground", "norms")
EXAMPLES_PER_CLUSTER = 6
PALETTE = px.colors.qualitative.Plotly


@dataclass(frozen=True)
class PatchSettings:
    layer: str = "clusters"
    k: int = 4
    window: int = 1
    step: int = 1
    opacity: float = 0.5
    foreground_only: bool = False


@dataclass(frozen=True)
class ImageFrame:
    """Where an image's patch grid lies: its displayed size and its grid shape."""

    width: int
    height: int
    grid_rows: int
    grid_cols: int

    def tile_box(self, pooled: PooledGrid, row: int, col: int) -> tuple[float, float, float, float]:
        """Pixel box of pooled cell (row, col), drawn as the step x step tile at the centre of its window."""
        return cell_box(pooled.origin + row * pooled.step, pooled.origin + col * pooled.step,
                        self.grid_rows, self.grid_cols, self.width, self.height, extent=pooled.step)

    def pooled_cell_at(self, pooled: PooledGrid, x: float, y: float) -> tuple[int, int] | None:
        """The pooled cell whose tile holds pixel (x, y), or None outside every tile."""
        rows, cols = pooled.tokens.shape[:2]
        row = int(np.floor((y / self.height * self.grid_rows - pooled.origin) / pooled.step))
        col = int(np.floor((x / self.width * self.grid_cols - pooled.origin) / pooled.step))
        return (row, col) if 0 <= row < rows and 0 <= col < cols else None


@dataclass(frozen=True)
class PatchView:
    pooled: PooledGrid
    labels: np.ndarray | None  # (rows, cols) clusters, OUTSIDE for background when clustering the foreground only
    foreground: np.ndarray | None  # (rows, cols) scores, > 0 is foreground
    shares: list[tuple[int, int, float]]


# The within-image page's URL parameters, in the order of PatchSettings' fields. The pooling step is at most the
# window, and by default the window.
SETTINGS = (Param("layer", "clusters", choices=LAYERS), Param("k", 4, 2, 10), Param("window", 1, 1, 4),
            Param("step", 1, 1, 4), Param("opacity", 0.5, 0.0, 1.0), Param("foreground_only", False))
_STEP = SETTINGS[3]


def settings_from(query: dict) -> PatchSettings:
    chosen = read_query(SETTINGS, query)
    chosen["step"] = _STEP.coerce(query.get("step"), high=chosen["window"], default=chosen["window"])
    return PatchSettings(**chosen)


def analyse(grid: np.ndarray, settings: PatchSettings) -> PatchView:
    """Pool the grid, then compute only what the chosen layer needs."""
    pooled = pool_grid(grid, settings.window, settings.step)
    needs_foreground = settings.layer == "foreground" or settings.foreground_only
    foreground = foreground_scores(pooled.tokens) if needs_foreground else None
    mask = foreground > 0 if settings.foreground_only else None
    labels = None
    if settings.layer == "clusters":
        labels = cluster_patches(pooled.tokens, settings.k, mask=mask)
    return PatchView(pooled, labels, foreground, cluster_shares(labels) if labels is not None else [])


def examples(view: PatchView, frame: ImageFrame, per_cluster: int = EXAMPLES_PER_CLUSTER) -> dict[int, list[tuple]]:
    """Per cluster, the pixel boxes of its most typical tiles (nearest the cluster's mean token)."""
    tokens = normalize_rows(view.pooled.tokens.reshape(-1, view.pooled.tokens.shape[-1]))
    labels = view.labels.reshape(-1)
    cols = view.pooled.tokens.shape[1]
    chosen = {}
    for label in np.unique(labels[labels != OUTSIDE]):
        members = np.flatnonzero(labels == label)
        distances = np.linalg.norm(tokens[members] - tokens[members].mean(axis=0), axis=1)
        typical = members[np.argsort(distances, kind="stable")[:per_cluster]]
        chosen[int(label)] = [frame.tile_box(view.pooled, int(i) // cols, int(i) % cols) for i in typical]
    return chosen


def layer_values(view: PatchView, settings: PatchSettings) -> np.ndarray:
    """What the overlay draws: cluster labels, RGB colours, foreground scores or token norms."""
    if settings.layer == "clusters":
        return view.labels
    if settings.layer == "pca":
        return pca_rgb(view.pooled.tokens, mask=view.foreground > 0 if settings.foreground_only else None)
    if settings.layer == "foreground":
        return view.foreground
    return patch_norms(view.pooled.tokens)


def overlay_figure(preview_url: str, frame: ImageFrame, pooled: PooledGrid, values: np.ndarray, layer: str,
                   opacity: float, marked: tuple[int, int] | None = None, boxes: bool = False) -> go.Figure:
    """The preview with one value per pooled tile drawn over it, in the image's pixel coordinates. `boxes`: a drag
    draws a box (why_view.box_select, a point at every tile's centre)."""
    x0, y0, x1, y1 = frame.tile_box(pooled, 0, 0)
    figure = go.Figure()
    figure.add_layout_image(source=preview_url, xref="x", yref="y", x=0, y=0, sizex=frame.width,
                            sizey=frame.height, sizing="stretch", layer="below")
    tile = {"x0": (x0 + x1) / 2, "dx": x1 - x0, "y0": (y0 + y1) / 2, "dy": y1 - y0}
    if layer == "pca":
        figure.add_trace(go.Image(z=np.round(values * 255).astype(np.uint8), opacity=opacity, hoverinfo="none",
                                  **tile))
    else:
        figure.add_trace(go.Heatmap(z=_heatmap_z(values, layer), opacity=opacity, hoverinfo="none",
                                    **_colouring(values, layer), **tile))
    if marked is not None:
        bx0, by0, bx1, by1 = frame.tile_box(pooled, *marked)
        figure.add_shape(type="rect", x0=bx0, y0=by0, x1=bx1, y1=by1, line={"color": "yellow", "width": 3})
    figure.update_xaxes(range=[0, frame.width], visible=False, constrain="domain")
    figure.update_yaxes(range=[frame.height, 0], visible=False, scaleanchor="x", constrain="domain")
    figure.update_layout(margin={"l": 0, "r": 0, "t": 0, "b": 0}, plot_bgcolor="white", dragmode=False,
                         height=max(240, min(560, round(520 * frame.height / frame.width))))
    if boxes:
        rows, cols = pooled.tokens.shape[:2]
        box_select(figure, np.array([[(a + c) / 2, (b + d) / 2] for a, b, c, d in
                                     (frame.tile_box(pooled, row, col) for row in range(rows) for col in range(cols))]))
    return figure


def similarity_figure(preview_url: str, frame: ImageFrame, pooled: PooledGrid, similarity: np.ndarray,
                      opacity: float, marked: tuple[int, int] | None = None) -> go.Figure:
    return overlay_figure(preview_url, frame, pooled, similarity, "similarity", opacity, marked)


def query_similarity(pooled: PooledGrid, cell: tuple[int, int]) -> np.ndarray:
    return patch_similarity(pooled.tokens, pooled.tokens[cell])


def best_match(similarity: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
    return int(row), int(col)


def _heatmap_z(values: np.ndarray, layer: str) -> np.ndarray:
    if layer == "clusters":
        return np.where(values == OUTSIDE, np.nan, values).astype(np.float32)  # background stays uncovered
    return values.astype(np.float32)


def _colouring(values: np.ndarray, layer: str) -> dict:
    if layer == "clusters":
        k = int(values.max()) + 1 if (values != OUTSIDE).any() else 1
        steps = []
        for index in range(k):
            colour = PALETTE[index % len(PALETTE)]
            steps += [(index / k, colour), ((index + 1) / k, colour)]
        return {"colorscale": steps, "zmin": -0.5, "zmax": k - 0.5, "showscale": False}
    if layer == "similarity":
        return {"colorscale": "RdBu_r", "zmin": -1.0, "zmax": 1.0, "colorbar": {"title": "cosine"}}
    if layer == "foreground":
        limit = float(np.abs(values).max()) or 1.0
        return {"colorscale": "PiYG", "zmin": -limit, "zmax": limit, "colorbar": {"title": "PC 1"}}
    return {"colorscale": "Viridis", "colorbar": {"title": "norm"}}
