"""Within one image: its patch tokens pooled, clustered, mapped to colours and compared, from the stored grid.

A patch grid is (grid height, grid width, D). The image was squashed to a square before the model saw it, so
grid cell (r, c) covers the image region from (c / gw, r / gh) to ((c + 1) / gw, (r + 1) / gh) of its width and
height: mapping cells to pixels is a scaling per axis, whatever the aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from dashboard.analysis.projection import normalize_rows

OUTSIDE = -1  # label of a patch left out of the clustering (background when clustering the foreground only)


@dataclass(frozen=True)
class PooledGrid:
    """Tokens averaged over window x window patches every `step` patches; each pooled cell is drawn as the
    step x step tile at the centre of its window, so tiles abut without overlapping."""

    tokens: np.ndarray  # (rows, cols, D) float32
    window: int
    step: int

    @property
    def origin(self) -> float:
        """Where the first tile starts, in patches from the image's top-left corner (both axes)."""
        return (self.window - self.step) / 2


def pool_grid(grid: np.ndarray, window: int = 1, step: int = 1) -> PooledGrid:
    """Average pooling of a patch grid: coarser regions, no model run. `step` is clamped to [1, window]."""
    grid = np.asarray(grid, dtype=np.float32)
    window = int(min(max(window, 1), grid.shape[0], grid.shape[1]))
    step = int(min(max(step, 1), window))
    windows = sliding_window_view(grid, (window, window), axis=(0, 1))[::step, ::step]  # (rows, cols, D, w, w)
    return PooledGrid(windows.mean(axis=(-2, -1)), window, step)


def cluster_patches(tokens: np.ndarray, k: int, mask: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """K-Means labels (rows, cols) of L2-normalised tokens; cells outside `mask` are OUTSIDE."""
    rows, cols, dim = tokens.shape
    flat = normalize_rows(tokens.reshape(-1, dim))
    chosen = np.ones(rows * cols, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    labels = np.full(rows * cols, OUTSIDE, dtype=np.int64)
    k = min(max(k, 1), int(chosen.sum()))
    if k >= 2:
        labels[chosen] = KMeans(n_clusters=k, random_state=seed, n_init=1).fit_predict(flat[chosen])
    elif k == 1:
        labels[chosen] = 0
    return labels.reshape(rows, cols)


def cluster_shares(labels: np.ndarray) -> list[tuple[int, int, float]]:
    """(cluster, patches, percent of the clustered patches), by cluster."""
    values, counts = np.unique(labels[labels != OUTSIDE], return_counts=True)
    total = counts.sum()
    return [(int(v), int(c), 100.0 * c / total) for v, c in zip(values, counts)]


def foreground_scores(tokens: np.ndarray) -> np.ndarray:
    """First principal component of the normalised tokens, its sign turned so the border scores low.

    PCA's sign is arbitrary; objects are rarely on every edge of a photograph, so the side of the component that
    the border cells lean to is called background. Scores above 0 are the foreground.
    """
    rows, cols, dim = tokens.shape
    flat = normalize_rows(tokens.reshape(-1, dim))
    if rows * cols < 2:
        return np.zeros((rows, cols), np.float32)
    scores = PCA(n_components=1).fit_transform(flat)[:, 0].reshape(rows, cols)
    border = np.ones((rows, cols), bool)
    border[1:-1, 1:-1] = False
    if scores[border].mean() > scores.mean():
        scores = -scores
    return scores.astype(np.float32)


def pca_rgb(tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Three principal components of the tokens as colours in [0, 1], (rows, cols, 3).

    Fitted on the masked (foreground) cells when a mask is given, as in the DINOv2 paper's figures; each channel
    is min-max scaled over the fitted cells and clipped, so the background may saturate.
    """
    rows, cols, dim = tokens.shape
    flat = normalize_rows(tokens.reshape(-1, dim))
    fitted = flat if mask is None else flat[np.asarray(mask, bool).reshape(-1)]
    components = min(3, len(fitted), dim)
    if components < 1 or len(fitted) < 2:
        return np.full((rows, cols, 3), 0.5, np.float32)
    pca = PCA(n_components=components).fit(fitted)
    projected, reference = pca.transform(flat), pca.transform(fitted)
    low, high = reference.min(axis=0), reference.max(axis=0)
    scaled = (projected - low) / np.where(high > low, high - low, 1.0)
    rgb = np.zeros((rows * cols, 3), np.float32)
    rgb[:, :components] = np.clip(scaled, 0.0, 1.0)
    return rgb.reshape(rows, cols, 3)


def patch_norms(tokens: np.ndarray) -> np.ndarray:
    """L2 norm of every token (rows, cols): a few very high ones are the artifacts registers were made to absorb."""
    return np.linalg.norm(np.asarray(tokens, dtype=np.float32), axis=-1)


def patch_similarity(tokens: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of every token (rows, cols) to one query token (D,)."""
    rows, cols, dim = tokens.shape
    flat = normalize_rows(tokens.reshape(-1, dim))
    return (flat @ normalize_rows(np.asarray(query, np.float32)[None, :])[0]).reshape(rows, cols)


def cell_box(row: float, col: float, rows: float, cols: float, width: float, height: float,
             extent: float = 1.0) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) of grid cell (row, col) of a rows x cols grid over a width x height picture;
    `extent` cells wide (pooled tiles start at fractional cells)."""
    return (col * width / cols, row * height / rows, (col + extent) * width / cols, (row + extent) * height / rows)
