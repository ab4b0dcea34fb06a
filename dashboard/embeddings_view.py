"""The embeddings inspector's logic: one image's embedding in numbers and figures, the dataset's PCA, and the
downloads. No Dash here; figures are built from NumPy arrays."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from dashboard.data import DatasetView
from dashboard.folder_cache import computed

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

    def first(self, n: int) -> DatasetPCA:
        """The first n components (the others do not change them: the PCA is exact)."""
        return DatasetPCA(self.coordinates[:, :n], self.ratio[:n], self.cumulative[:n])


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


def dataset_pca(view: DatasetView) -> DatasetPCA:
    """PCA of the dataset's normalised embeddings with all the components the page offers, from the principal
    components every view holds (`view.reduced`); only the explained variance is computed here, in one bounded
    pass over the embeddings."""
    coordinates = view.reduced[:, :component_limit(view)]
    ratio = explained_variance_ratio(view, coordinates)
    # In float32 the ratios of all components can sum to a hair above 1.
    return DatasetPCA(coordinates, ratio, np.minimum(np.cumsum(ratio), 1.0))


def explained_variance_ratio(view: DatasetView, coordinates: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Each principal component's share of the normalised embeddings' total variance.

    The total variance of unit vectors x_i (zero rows stay zero) is (sum |x_i|^2 - N |mean x|^2) / (N - 1), so it
    needs only their mean, summed a chunk of rows at a time."""
    n = len(view)
    if n < 2 or coordinates.shape[1] == 0:
        return np.zeros(coordinates.shape[1])
    total = np.zeros(view.embeddings.shape[1], np.float64)
    for start in range(0, n, chunk):
        norms = view.norms[start:start + chunk, None]
        rows = view.embeddings[start:start + chunk]
        total += np.divide(rows, norms, out=np.zeros_like(rows, dtype=np.float32), where=norms > 0).sum(axis=0)
    mean = total / n
    variance = (np.count_nonzero(view.norms) - n * mean @ mean) / (n - 1)
    if variance <= 0:  # identical images: nothing to explain
        return np.zeros(coordinates.shape[1])
    return np.var(coordinates, axis=0, ddof=1, dtype=np.float64) / variance


def pca_cache_key(view: DatasetView) -> str:
    """Key of a PCA in the shared results cache: the generation is in it, so a re-index makes a new one."""
    return f"embeddings-pca/{view.name}/{view.generation}"


def cached_pca(cache, view: DatasetView) -> DatasetPCA:
    """The PCA from the shared cache (a dict works too), computed and stored there first if it is not yet."""
    key = pca_cache_key(view)
    return computed(cache, key, lambda: dataset_pca(view))


@dataclass(frozen=True)
class TablePage:
    columns: list[dict]
    rows: list[dict]  # one page of rows; each row's "id" is its image id
    page_count: int


def pca_table_page(view: DatasetView, pca: DatasetPCA, page: int, page_size: int,
                   sort_by: list[dict] | None = None) -> TablePage:
    """One page of the PCA table (path, label, PC1..PCn per image), sorted on the server by one column: only a
    page of rows ever travels to the browser, whatever the dataset's size."""
    names = [f"PC{i + 1}" for i in range(pca.components)]
    columns = [{"name": "path", "id": "path"}, {"name": "label", "id": "label"}] + [
        {"name": name, "id": name, "type": "numeric"} for name in names]
    page_count = max(1, -(-len(view) // page_size))
    page = min(max(0, page), page_count - 1)
    sort = sort_by[0] if isinstance(sort_by, list) and sort_by and isinstance(sort_by[0], dict) else None
    order = _table_order(view, pca, names, sort)
    rows = order[page * page_size:(page + 1) * page_size]
    rounded = np.round(pca.coordinates[rows].astype(np.float64), TABLE_DECIMALS).tolist()
    return TablePage(columns, [{"id": int(view.image_ids[row]), "path": view.relpaths[row],
                                "label": view.labels[row] or "", **dict(zip(names, values))}
                               for row, values in zip(rows, rounded)], page_count)


def _table_order(view: DatasetView, pca: DatasetPCA, names: list[str], sort: dict | None) -> np.ndarray:
    """Rows in the order of one column (ties keep the view's path order); the view's own order without one."""
    column = sort.get("column_id") if sort else None
    if column == "label":
        _, keys = np.unique(np.array([label or "" for label in view.labels], dtype=object), return_inverse=True)
    elif column in names:
        keys = pca.coordinates[:, names.index(column)]
    else:  # no sort, or by path: the view is in path order already
        keys = np.arange(len(view))
    if sort and sort.get("direction") == "desc":
        return np.argsort(-np.asarray(keys, dtype=np.float64), kind="stable")
    return np.argsort(keys, kind="stable")


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


def dataset_npz(view: DatasetView, chunk: int = 4096) -> Iterator[bytes]:
    """Every embedding of the dataset as a .npz file (no pickled objects), written as it goes: rows in one order,
    relpaths, labels ('' for none), image_ids and embeddings (float32, N x D, as stored). At most `chunk` rows are
    held at a time, so a download of any size takes little memory."""
    n = len(view)
    path_width = max((len(path) for path in view.relpaths), default=1)
    label_width = max((len(label or "") for label in view.labels), default=1)
    columns = {
        "relpaths": (np.dtype(f"<U{path_width}"), (n,), lambda rows: view.relpaths[rows]),
        "labels": (np.dtype(f"<U{max(label_width, 1)}"), (n,), lambda rows: [label or "" for label in view.labels[rows]]),
        "image_ids": (np.dtype(np.int64), (n,), lambda rows: view.image_ids[rows]),
        "embeddings": (np.dtype(np.float32), view.embeddings.shape, lambda rows: view.embeddings[rows]),
    }
    return npz_stream(columns, n, chunk)


def npz_stream(columns: dict, n: int, chunk: int) -> Iterator[bytes]:
    """An uncompressed .npz of arrays with N rows each ({name: (dtype, shape, rows(slice) -> values)}), yielded
    in pieces as it is written; numpy.load reads it as np.savez's."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, (dtype, shape, values) in columns.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                               "fortran_order": False, "shape": shape})
                for start in range(0, n, chunk):
                    member.write(np.asarray(values(slice(start, start + chunk)), dtype=dtype).tobytes())
                    yield sink.take()
            yield sink.take()
    yield sink.take()


class _Sink(io.RawIOBase):
    """Where a zip file is written as it is streamed: it keeps what was written until taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


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
