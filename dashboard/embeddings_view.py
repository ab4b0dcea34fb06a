"""The embeddings inspector's logic: one image's embedding in numbers and figures, the dataset's PCA, and the
downloads. No Dash here; figures are built from NumPy arrays."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from dashboard.analysis.projection import pca_components
from dashboard.data import DatasetView

N_DEFAULT = 10  # top and bottom features shown
N_MAX = 50
COMPONENTS_DEFAULT = 5
COMPONENTS_MIN = 2
COMPONENTS_MAX = 50
HISTOGRAM_BINS = 40
RAW_VALUES_PER_LINE = 8
TABLE_DECIMALS = 4  # PCA coordinates in the table


@dataclass(frozen=True)
class EmbeddingStats:
    dimension: int
    mean: float
    std: float  # population standard deviation (ddof=0), as numpy.std
    norm: float  # L2 norm
    min: float
    max: float
    argmin: int  # the feature index of the minimum (the first one on ties)
    argmax: int


@dataclass(frozen=True)
class ExtremeFeatures:
    top_indices: np.ndarray  # the n largest values, largest first; ties: lower feature index first
    top_values: np.ndarray
    bottom_indices: np.ndarray  # the n smallest values, smallest first; ties: lower feature index first
    bottom_values: np.ndarray


@dataclass(frozen=True)
class DatasetPCA:
    """The first principal components of the L2-normalised embeddings of a dataset (rows in the view's order)."""

    coordinates: np.ndarray  # (N, n) float32
    ratio: np.ndarray  # (n,) explained variance ratio per component
    cumulative: np.ndarray  # (n,) running sum of `ratio`

    @property
    def components(self) -> int:
        return len(self.ratio)


def embedding_of(view: DatasetView, image_id: int) -> np.ndarray:
    """The stored float32 embedding of an image; KeyError for an id the dataset does not have."""
    position = view.position(image_id)
    if position is None:
        raise KeyError(f"image {image_id} is not in dataset {view.name!r}")
    return view.embeddings[position]


def embedding_statistics(vector: np.ndarray) -> EmbeddingStats:
    """Summary statistics of one embedding, computed in float64."""
    values = np.asarray(vector, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty vector, got shape {values.shape}")
    return EmbeddingStats(int(values.size), float(values.mean()), float(values.std()),
                          float(np.linalg.norm(values)), float(values.min()), float(values.max()),
                          int(values.argmin()), int(values.argmax()))


def extreme_features(vector: np.ndarray, n: int) -> ExtremeFeatures:
    """The n largest and the n smallest features (n clamped to 1..D). Equal values are ordered by feature index,
    so the result does not depend on the sort algorithm."""
    values = np.asarray(vector)
    n = max(1, min(int(n), values.size))
    index = np.arange(values.size)
    # lexsort sorts by its last key first: by value, then by index among equal values.
    top = np.lexsort((index, -values.astype(np.float64)))[:n]
    bottom = np.lexsort((index, values.astype(np.float64)))[:n]
    return ExtremeFeatures(top, values[top], bottom, values[bottom])


def component_limit(view: DatasetView) -> int:
    """The most principal components the page offers: at most one per image and per feature, and 50."""
    dimension = view.embeddings.shape[1] if view.embeddings.ndim == 2 else 0
    return min(len(view), dimension, COMPONENTS_MAX)


def dataset_pca(view: DatasetView, n: int) -> DatasetPCA:
    """PCA of the dataset's normalised embeddings with n components (clamped to what the data allows)."""
    coordinates, ratio = pca_components(view.embeddings, n)
    ratio = np.asarray(ratio, dtype=np.float64)
    # PCA runs in float32: the ratios of all components can sum to a hair above 1.
    return DatasetPCA(coordinates, ratio, np.minimum(np.cumsum(ratio), 1.0))


def pca_cache_key(view: DatasetView, n: int) -> str:
    """Key of a PCA in the shared results cache: the generation is in it, so a re-index makes a new one."""
    return f"embeddings-pca/{view.name}/{view.generation}/{int(n)}"


def cached_pca(cache, view: DatasetView, n: int) -> DatasetPCA:
    """The PCA from the shared cache (a dict works too), computed and stored there first if it is not yet."""
    key = pca_cache_key(view, n)
    found = cache.get(key)
    if found is None:
        found = dataset_pca(view, n)
        cache[key] = found
    return found


def pca_table(view: DatasetView, pca: DatasetPCA) -> tuple[list[dict], list[dict]]:
    """(columns, rows) for a DataTable: path, label and PC1..PCn per image; each row's "id" is its image id."""
    names = [f"PC{i + 1}" for i in range(pca.components)]
    columns = [{"name": "path", "id": "path"}, {"name": "label", "id": "label"}] + [
        {"name": name, "id": name, "type": "numeric"} for name in names]
    rounded = np.round(pca.coordinates.astype(np.float64), TABLE_DECIMALS).tolist()
    rows = [{"id": int(image_id), "path": relpath, "label": label or "", **dict(zip(names, values))}
            for image_id, relpath, label, values in zip(view.image_ids, view.relpaths, view.labels, rounded)]
    return columns, rows


def raw_values_text(vector: np.ndarray, per_line: int = RAW_VALUES_PER_LINE) -> str:
    """Every value, `per_line` to a line, each line starting with the index of its first feature."""
    values = np.asarray(vector)
    width = len(str(max(values.size - 1, 0)))
    lines = []
    for start in range(0, values.size, per_line):
        chunk = " ".join(f"{float(x):+.5f}" for x in values[start:start + per_line])
        lines.append(f"{start:>{width}}: {chunk}")
    return "\n".join(lines)


def embedding_npy(view: DatasetView, image_id: int) -> bytes:
    """The image's embedding as a .npy file: float32, shape (D,), exactly as stored."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(embedding_of(view, image_id), dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def dataset_npz(view: DatasetView) -> bytes:
    """Every embedding of the dataset as a .npz file (no pickled objects), rows in one order: relpaths, labels
    ('' for none), image_ids and embeddings (float32, N x D, as stored)."""
    buffer = io.BytesIO()
    np.savez(buffer,
             relpaths=np.array(view.relpaths, dtype=str).reshape(len(view)),
             labels=np.array([label or "" for label in view.labels], dtype=str).reshape(len(view)),
             image_ids=np.asarray(view.image_ids, dtype=np.int64),
             embeddings=np.ascontiguousarray(view.embeddings, dtype=np.float32))
    return buffer.getvalue()


# Figures --------------------------------------------------------------------------------------------------------

_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def _layout(figure: go.Figure, title: str, height: int = 300) -> go.Figure:
    figure.update_layout(title={"text": title, "font": {"size": 14}}, height=height, margin=_MARGIN,
                         plot_bgcolor="white", showlegend=False)
    figure.update_xaxes(gridcolor="#eee", automargin=True)
    figure.update_yaxes(gridcolor="#eee", zerolinecolor="#999", automargin=True)
    return figure


def _legend_inside(x: float, y: float, yanchor: str) -> dict:
    return {"x": x, "y": y, "xanchor": "right", "yanchor": yanchor, "bgcolor": "rgba(255,255,255,0.8)"}


def format_value(value: float) -> str:
    """A statistic as the page shows it: four significant digits, so small values of any scale stay readable."""
    return f"{value:.4g}"


def embedding_line_figure(vector: np.ndarray) -> go.Figure:
    """The embedding's value at each feature index."""
    values = np.asarray(vector, dtype=np.float32)
    figure = go.Figure(go.Scatter(x=np.arange(values.size, dtype=np.int32), y=values, mode="lines", line={"width": 1},
                                  hovertemplate="feature %{x}<br>value %{y:.4f}<extra></extra>"))
    figure.update_xaxes(title_text="feature index")
    figure.update_yaxes(title_text="value")
    return _layout(figure, "Value of every feature")


def histogram_counts(vector: np.ndarray, bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(counts, bin edges) of the embedding's values."""
    return np.histogram(np.asarray(vector, dtype=np.float64), bins=bins)


def embedding_histogram_figure(vector: np.ndarray, bins: int = HISTOGRAM_BINS) -> go.Figure:
    """How the embedding's values are distributed."""
    counts, edges = histogram_counts(vector, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    figure = go.Figure(go.Bar(x=centres, y=counts, width=np.diff(edges), marker={"line": {"width": 0}},
                              customdata=np.stack([edges[:-1], edges[1:]], axis=1).tolist(),
                              hovertemplate="%{customdata[0]:.4f} to %{customdata[1]:.4f}<br>%{y} features"
                                            "<extra></extra>"))
    figure.update_xaxes(title_text="value")
    figure.update_yaxes(title_text="features")
    figure.update_layout(bargap=0)
    return _layout(figure, "Distribution of the values")


def extremes_figure(extremes: ExtremeFeatures) -> go.Figure:
    """The largest features (left, largest first) and the smallest (right, smallest last), one bar each,
    labelled by feature index."""
    top_labels = [f"#{int(i)}" for i in extremes.top_indices]
    bottom_labels = [f"#{int(i)}" for i in extremes.bottom_indices[::-1]]
    figure = go.Figure([
        go.Bar(x=top_labels, y=np.asarray(extremes.top_values, dtype=np.float32), name="largest",
               marker_color="#1f77b4", hovertemplate="feature %{x}<br>value %{y:.4f}<extra>largest</extra>"),
        go.Bar(x=bottom_labels, y=np.asarray(extremes.bottom_values[::-1], dtype=np.float32), name="smallest",
               marker_color="#d62728", hovertemplate="feature %{x}<br>value %{y:.4f}<extra>smallest</extra>"),
    ])
    figure.update_xaxes(type="category", title_text="feature index", tickangle=-60 if len(top_labels) > 15 else 0)
    figure.update_yaxes(title_text="value")
    figure.update_layout(barmode="relative")
    _layout(figure, f"The {len(top_labels)} largest and {len(bottom_labels)} smallest features")
    # Inside the plot, top right: the smallest values are below zero there.
    figure.update_layout(showlegend=True, legend=_legend_inside(0.99, 0.98, "top"))
    return figure


def explained_variance_figure(ratio: np.ndarray, cumulative: np.ndarray) -> go.Figure:
    """Explained variance ratio per component (bars) and its running total (line)."""
    names = [f"PC{i + 1}" for i in range(len(ratio))]
    figure = go.Figure([
        go.Bar(x=names, y=[float(r) for r in ratio], name="per component",
               hovertemplate="%{x}: %{y:.1%}<extra></extra>"),
        go.Scatter(x=names, y=[float(c) for c in cumulative], name="cumulative", mode="lines+markers",
                   hovertemplate="PC1 to %{x}: %{y:.1%}<extra></extra>"),
    ])
    figure.update_xaxes(type="category", title_text="principal component")
    figure.update_yaxes(title_text="share of the variance", tickformat=".0%", range=[0, 1.05])
    _layout(figure, "Explained variance")
    # Inside the plot, middle right: between the small late bars and the high cumulative line.
    figure.update_layout(showlegend=True, legend=_legend_inside(0.99, 0.5, "middle"))
    return figure
