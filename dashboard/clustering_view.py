"""The clustering page's logic: its parameters, cached projections, clusterings, summaries and downloads."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
from pydantic import BaseModel, StrictInt, StrictStr

from dashboard.analysis.clustering import (
    NOISE,
    ClusterMetrics,
    cluster,
    cluster_metrics,
    cluster_sizes,
    label_by_nearest_sample,
)
from dashboard.analysis.projection import Projection, normalize_rows, project
from dashboard.analysis.projection_quality import (
    largest_trust_k,
    neighbourhood_preservation,
    projection_trustworthiness,
)
from dashboard.data import DatasetView
from dashboard.folder_cache import computed
from dashboard.urlstate import Param, read_query

HOVER_COMPONENTS = 3  # principal components shown when hovering a point
SUMMARY_THUMBNAILS = 8  # representatives shown per cluster
K_MIN, K_MAX = 2, 20  # the page's slider
# DBSCAN and Ward (memory quadratic in N) see at most this many images, in either space; the others join their
# nearest one's cluster.
CLUSTER_SAMPLE = 5_000
# Above this many images DBSCAN and Ward run as a background job (seconds at CLUSTER_SAMPLE); K-Means, on 50
# principal components or 2-D points, stays in the request (under a second at 100,000 images).
CLUSTER_IN_REQUEST = 2_000
MOSTLY = 0.9  # DBSCAN's result is explained when this share of the images is noise, or in one cluster
CORE_SHARE = 0.9  # the eps DBSCAN's advice suggests makes this share of the images core points
# K-Means fits its centres on a seeded sample of this many images at most (under a second), then every image takes
# its nearest centre: a million images' K-Means took 6 s, the sample's 1.
KMEANS_SAMPLE = 100_000
SCATTER_POINTS = 200_000  # points drawn at most; larger datasets show a seeded sample
SMALL_MARKERS = 2_000  # from this many images on, markers are small and have no outline
DENSITY_BINS = 200  # cells per side of the density of all images drawn beneath a sampled scatter


@dataclass(frozen=True)
class ProjectionParams:
    method: str = "pca"
    perplexity: float = 30.0
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0

    def cache_key(self, view: DatasetView) -> str:
        """Key of a projection: the dataset's generation is in it, so a re-index makes a new one."""
        relevant = {"method": self.method}
        if self.method == "tsne":  # initialised by PCA, so its result does not depend on the seed
            relevant["perplexity"] = self.perplexity
        elif self.method == "umap":
            relevant |= {"n_neighbors": self.n_neighbors, "min_dist": self.min_dist, "seed": self.seed}
        return f"projection/{view.name}/{view.generation}/" + "/".join(f"{k}={v}" for k, v in sorted(relevant.items()))

    @property
    def runs_in_background(self) -> bool:
        return self.method != "pca"


@dataclass(frozen=True)
class ClusterParams:
    method: str = "kmeans"
    k: int = 5
    eps: float = 0.5
    min_samples: int = 5
    space: str = "embedding"  # "embedding": the normalised embeddings; "projection": the 2-D points


@dataclass(frozen=True)
class ClusteringResult:
    labels: np.ndarray
    metrics: ClusterMetrics
    sizes: list[tuple[int, int]]
    representatives: dict[int, list[int]]  # cluster -> dataset rows nearest its centre, best first
    notes: list[str] = field(default_factory=list)


# The clustering page's URL parameters, in the order of the parameters of ProjectionParams and ClusterParams.
PROJECTION = (Param("projection", "pca", choices=("pca", "tsne", "umap")), Param("perplexity", 30.0, 2.0, 100.0),
              Param("n_neighbors", 15, 2, 200, control="neighbors"), Param("min_dist", 0.1, 0.0, 1.0),
              Param("seed", 0, 0, 2**31 - 1))
# The page's switch reports true/false for space; query_of writes the names.
CLUSTERING = (Param("method", "kmeans", choices=("kmeans", "dbscan", "hierarchical")), Param("k", 5, K_MIN, K_MAX),
              Param("eps", 0.5, 0.01, 2.0), Param("min_samples", 5, 1, 100),
              Param("space", False, true_words=("projection", "true")))


def projection_params(query: dict) -> ProjectionParams:
    return ProjectionParams(*read_query(PROJECTION, query).values())


def cluster_params(query: dict) -> ClusterParams:
    *chosen, on_projection = read_query(CLUSTERING, query).values()
    return ClusterParams(*chosen, space="projection" if on_projection else "embedding")


def query_of(projection: ProjectionParams, clustering: ClusterParams) -> dict:
    """The URL parameters that reproduce a view (the inverse of projection_params and cluster_params)."""
    return {"projection": projection.method, "perplexity": projection.perplexity,
            "n_neighbors": projection.n_neighbors, "min_dist": projection.min_dist, "seed": projection.seed,
            "method": clustering.method, "k": clustering.k, "eps": clustering.eps,
            "min_samples": clustering.min_samples, "space": clustering.space}


def cached_projection(cache, view: DatasetView, params: ProjectionParams,
                      progress: Callable[[str], None] | None = None) -> Projection:
    """The projection from the shared cache, computed and stored there first if no one has asked for it yet."""
    key = params.cache_key(view)
    return computed(cache, key, lambda: project(
        view.embeddings, params.method, reduced=view.reduced, seed=params.seed, perplexity=params.perplexity,
        n_neighbors=params.n_neighbors, min_dist=params.min_dist, progress=progress))


def hover_components(view: DatasetView, row: int) -> np.ndarray:
    """An image's first principal components (of the normalised embeddings), shown on hover."""
    return view.reduced[row, :HOVER_COMPONENTS]


def clustering_key(view: DatasetView, params: ClusterParams, projection_key: str) -> str:
    """Key of a clustering in the shared results cache: the dataset's generation is in it, and the projection's
    key when the 2-D points are clustered."""
    detail = f"eps={params.eps}/min_samples={params.min_samples}" if params.method == "dbscan" else f"k={params.k}"
    space = projection_key if params.space == "projection" else "embedding"
    return f"clusters/{view.name}/{view.generation}/{params.method}/{detail}/{space}"


class ShownClustering(BaseModel):
    """A clustering the page shows, or asks a background job for: its key and its projection's key in the shared
    results cache, the dataset's generation they are of, and the URL parameters of the view (query_of)."""

    key: StrictStr
    projection: StrictStr
    generation: StrictInt
    query: dict[str, Any]

    def is_of(self, view: DatasetView) -> bool:
        """Whether the keys are the ones this view's dataset and the query give (not another dataset's results, or
        another kind of result in the cache)."""
        projection_key = projection_params(self.query).cache_key(view)
        return (self.projection == projection_key
                and self.key == clustering_key(view, cluster_params(self.query), projection_key))


def clusters_in_background(view: DatasetView, params: ClusterParams) -> bool:
    """Whether this clustering can take seconds, so a background job computes it."""
    return params.method != "kmeans" and len(view) > CLUSTER_IN_REQUEST


def cached_clustering(cache, view: DatasetView, projection_key: str, coordinates: np.ndarray, params: ClusterParams,
                      progress: Callable[[str], None] | None = None) -> ClusteringResult:
    """The clustering from the shared cache, computed and stored there first if no one has asked for it yet."""
    key = clustering_key(view, params, projection_key)
    return computed(cache, key, lambda: cluster_images(view, coordinates, params, progress))


def cluster_images(view: DatasetView, coordinates: np.ndarray, params: ClusterParams,
                   progress: Callable[[str], None] | None = None) -> ClusteringResult:
    """Cluster in cosine geometry or on the 2-D projection, with quality metrics.

    In cosine geometry K-Means and Ward run on the normalised embeddings' first 50 principal components
    (`view.reduced`: the same clusters as on the full vectors for clustered data, and several times faster);
    DBSCAN runs on the normalised embeddings themselves, so that eps is an exact chord distance (sqrt(2 - 2 cos)).
    On the projection every method runs on the 2-D points. DBSCAN and Ward see at most CLUSTER_SAMPLE images: in a
    larger dataset a seeded sample of them, every other image joining the cluster of its nearest sampled image (on
    the principal components, or on the 2-D points).
    """
    report = progress or (lambda stage: None)
    options = {"k": params.k, "eps": params.eps, "min_samples": params.min_samples}
    on_projection = params.space == "projection"
    name = _METHOD_NAMES[params.method]
    notes = []
    if params.method == "kmeans" or len(view) <= CLUSTER_SAMPLE:
        if on_projection:
            points = coordinates
        else:
            points = normalize_rows(view.embeddings) if params.method == "dbscan" else view.reduced
        report(f"{name} of {len(view):,} images")
        labels = cluster(points, params.method, **options, fit_sample=KMEANS_SAMPLE)
        clustered, clustered_labels = points, labels
        if params.method == "kmeans" and len(view) > KMEANS_SAMPLE:
            notes.append(f"K-Means placed its centres on a sample of {KMEANS_SAMPLE:,} images; every image then "
                         "joined its nearest centre")
    else:
        sample = np.sort(np.random.default_rng(0).choice(len(view), CLUSTER_SAMPLE, replace=False))
        if on_projection:
            clustered = coordinates[sample]
        else:
            clustered = normalize_rows(view.embeddings[sample]) if params.method == "dbscan" else view.reduced[sample]
        report(f"{name} of a sample of {CLUSTER_SAMPLE:,} images")
        clustered_labels = cluster(clustered, params.method, **options)
        report(f"placing the other {len(view) - CLUSTER_SAMPLE:,} images")
        points = coordinates if on_projection else view.reduced
        labels = label_by_nearest_sample(points, sample, clustered_labels,
                                         params.eps if params.method == "dbscan" else None)
        notes.append(f"{name} clustered a sample of {CLUSTER_SAMPLE:,} images; each other image joined the cluster "
                     "of its nearest sampled image")
    if params.method == "dbscan":
        notes += dbscan_advice(clustered, clustered_labels, params, on_projection)
    report("measuring the clusters")
    true_labels = view.labels if any(view.labels) else None
    return ClusteringResult(labels, cluster_metrics(points, labels, true_labels), cluster_sizes(labels),
                            _representatives(points, labels), notes)


def eps_as_cosine(eps: float) -> float:
    """The cosine similarity that DBSCAN's eps means between unit vectors: chord distance eps = sqrt(2 - 2 cos)."""
    return 1.0 - eps**2 / 2.0


def dbscan_advice(points: np.ndarray, labels: np.ndarray, params: ClusterParams, on_projection: bool) -> list[str]:
    """What to say when DBSCAN found (nearly) only noise, or (nearly) one cluster: why, and an eps to try, the one
    that makes CORE_SHARE of the points core points (with min_samples - 1 others within eps)."""
    noise = float(np.mean(labels == NOISE)) if len(labels) else 0.0
    sizes = [size for label, size in cluster_sizes(labels) if label != NOISE]
    one_cluster = bool(sizes) and max(sizes) >= MOSTLY * len(labels)
    if noise < MOSTLY and not one_cluster or len(points) <= params.min_samples:
        return []
    from sklearn.neighbors import NearestNeighbors

    # A point's own distance (0) comes first, as DBSCAN counts the point itself among min_samples.
    distances, _ = NearestNeighbors(n_neighbors=params.min_samples).fit(points).kneighbors(points)
    suggested = math.ceil(float(np.quantile(distances[:, -1], CORE_SHARE)) * 100) / 100  # as shown, rounded up

    def shown(eps: float) -> str:
        return f"eps {eps:.2f}" if on_projection else f"eps {eps:.2f} (cosine {eps_as_cosine(eps):.2f})"

    if noise >= MOSTLY:
        found = (f"DBSCAN called {noise:.0%} of the images noise: with {shown(params.eps)} few images have "
                 f"{params.min_samples} neighbours that close.")
    else:
        found = (f"DBSCAN put {max(sizes) / len(labels):.0%} of the images in one cluster: {shown(params.eps)} "
                 "joins nearly everything.")
    others = params.min_samples - 1
    advice = (f"Try {shown(suggested)}: with it {CORE_SHARE:.0%} of the images have {others} other"
              f"{'s' if others != 1 else ''} that close.")
    return [f"{found} {advice}"]


_METHOD_NAMES = {"kmeans": "K-Means", "dbscan": "DBSCAN", "hierarchical": "Ward clustering"}


def _representatives(points: np.ndarray, labels: np.ndarray) -> dict[int, list[int]]:
    chosen = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        centre = points[members].mean(axis=0)
        distances = np.linalg.norm(points[members] - centre, axis=1)
        chosen[int(label)] = [int(i) for i in members[np.argsort(distances, kind="stable")[:SUMMARY_THUMBNAILS]]]
    return chosen


def cluster_name(label: int) -> str:
    return "noise" if label == NOISE else f"cluster {label}"


def assignment_csv(view: DatasetView, coordinates: np.ndarray, labels: np.ndarray,
                   chunk: int = 5_000) -> Iterator[str]:
    """One row per image, as CSV text a chunk of rows at a time: id, path, folder label, cluster (-1 is DBSCAN
    noise), projected x and y. A path or label that a spreadsheet would read as a formula is quoted with '."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image_id", "relpath", "label", "cluster", "x", "y"])
    for start in range(0, len(view), chunk):
        for row in range(start, min(start + chunk, len(view))):
            writer.writerow([int(view.image_ids[row]), spreadsheet_cell(view.relpaths[row]),
                             spreadsheet_cell(view.labels[row] or ""), int(labels[row]), f"{coordinates[row, 0]:.6g}",
                             f"{coordinates[row, 1]:.6g}"])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


# What a spreadsheet reads as the start of a formula (OWASP's list: tab and carriage return too).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """`text` as a CSV cell: quoted with a leading ' where a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


_AXIS_NAMES = {"pca": "PC", "tsne": "t-SNE", "umap": "UMAP"}


def scatter_sample(view: DatasetView) -> np.ndarray:
    """Which images the scatter draws (N,) bool: all, or above SCATTER_POINTS a seeded sample."""
    shown = np.ones(len(view), bool)
    if len(view) > SCATTER_POINTS:
        shown[:] = False
        shown[np.random.default_rng(0).choice(len(view), SCATTER_POINTS, replace=False)] = True
    return shown


def cluster_trace_rows(view: DatasetView, result: ClusteringResult) -> list[np.ndarray]:
    """The dataset rows each trace of cluster_scatter draws: one trace per cluster, in the order of its sizes."""
    shown = scatter_sample(view)
    return [np.flatnonzero((result.labels == label) & shown) for label, _size in result.sizes]


def selected_points(view: DatasetView, trace_rows: list[np.ndarray], selected: np.ndarray | None) -> list:
    """Plotly's `selectedpoints` of each trace (positions within the trace) for the selected image ids; None on
    every trace when nothing is selected, so no point is greyed."""
    if selected is None or not len(selected):
        return [None] * len(trace_rows)
    chosen = np.isin(view.image_ids, selected)
    return [np.flatnonzero(chosen[rows]).astype(np.int32) for rows in trace_rows]


# A selection keeps its points as they are and greys the others.
UNSELECTED = {"marker": {"opacity": 0.12}}


def cluster_scatter(view: DatasetView, projection: Projection, result: ClusteringResult,
                    selected: np.ndarray | None = None) -> go.Figure:
    """A WebGL scatter, one trace per cluster (noise grey), each point carrying its image id for hover and click;
    the images of `selected` (ids) as they are, the others greyed.

    Coordinates and ids go as NumPy arrays, which Dash sends as binary typed arrays (base64), not JSON lists.
    Above SCATTER_POINTS images a seeded sample is drawn, with the same share of every cluster."""
    figure = go.Figure()
    palette = px.colors.qualitative.Plotly + px.colors.qualitative.D3 + px.colors.qualitative.Alphabet
    many = len(view) >= SMALL_MARKERS
    trace_rows = cluster_trace_rows(view, result)
    for (label, size), rows, chosen in zip(result.sizes, trace_rows, selected_points(view, trace_rows, selected)):
        noise = label == NOISE
        figure.add_trace(go.Scattergl(
            x=projection.coordinates[rows, 0], y=projection.coordinates[rows, 1], mode="markers",
            name=f"{cluster_name(label)} ({size})", customdata=view.image_ids[rows].astype(np.int32),
            marker={"size": 4 if many else 10, "color": "#9e9e9e" if noise else palette[label % len(palette)],
                    "symbol": "x" if noise else "circle",
                    "line": {"width": 0 if many else 0.5, "color": "white"}},
            hoverinfo="none", selectedpoints=chosen, unselected=UNSELECTED,
        ))
    title = None
    if len(view) > SCATTER_POINTS:
        title = f"a sample of {SCATTER_POINTS:,} of {len(view):,} images, over the density of all of them"
        figure.add_trace(density_trace(projection.coordinates))
    return _scatter_layout(figure, view, projection, title, "clusters")


def density_trace(coordinates: np.ndarray) -> go.Heatmap:
    """How many images lie in each of DENSITY_BINS x DENSITY_BINS cells of the plot (log-scaled greys, empty
    cells clear), for a scatter that draws only a sample. Added as the last trace, so the selection's patches
    keep their trace numbers; WebGL points are drawn above it whatever the order. Never hovered or clicked:
    those go to the points, which carry the image ids."""
    counts, x_edges, y_edges = np.histogram2d(coordinates[:, 0], coordinates[:, 1], bins=DENSITY_BINS)
    shown = np.where(counts > 0, np.log10(np.maximum(counts, 1)) + 1, np.nan).T.astype(np.float32)  # rows are y
    return go.Heatmap(z=shown, x=((x_edges[:-1] + x_edges[1:]) / 2).astype(np.float32),
                      y=((y_edges[:-1] + y_edges[1:]) / 2).astype(np.float32), colorscale="Greys", showscale=False,
                      hoverinfo="skip", name="density of all images", zsmooth=False, opacity=0.6)


def _scatter_layout(figure: go.Figure, view: DatasetView, projection: Projection, title: str | None,
                    legend: str) -> go.Figure:
    axis = _AXIS_NAMES[projection.method]
    figure.update_layout(
        title_text=title, xaxis_title=f"{axis} 1", yaxis_title=f"{axis} 2", legend_title_text=legend,
        template="plotly_white", margin={"l": 40, "r": 10, "t": 36, "b": 40}, height=560, clickmode="event",
        uirevision=f"{view.name}/{projection.method}",  # keeps the user's zoom while clusters are recoloured
    )
    return figure


# Trusting the projection ------------------------------------------------------------------------------------------

# Neighbourhood preservation is measured on at most this many images (a seeded sample, neighbours among the
# sample in both spaces: about 1.5 s at 768 dimensions), trustworthiness on at most TRUST_SAMPLE of them (its cost
# grows with the square of the images and their sorting: about 0.6 s for 2,000, 3 s for 5,000).
PRESERVATION_SAMPLE = 5_000
TRUST_SAMPLE = 2_000
TRUST_K = Param("trust_k", 10, 1, 50, control="trust-k")  # neighbours compared, the page's control
COLOURING = Param("colour", "clusters", choices=("clusters", "preservation"))


@dataclass(frozen=True)
class ProjectionTrust:
    """How far a projection keeps the embedding's neighbourhoods: for each measured image (dataset rows, all or a
    seeded sample) how many of its k nearest neighbours stay among its k nearest on the plot, and the
    trustworthiness of the plot on `trust_images` of them (None where too few images)."""

    k: int
    rows: np.ndarray
    kept: np.ndarray
    trustworthiness: float | None
    trust_k: int
    trust_images: int


def trust_key(projection_key: str, k: int) -> str:
    """Key of a projection's trust in the shared results cache: the projection's key holds dataset and generation."""
    return f"trust/{projection_key}/k={k}"


def projection_trust(view: DatasetView, coordinates: np.ndarray, k: int) -> ProjectionTrust:
    """Neighbourhood preservation of every image (of a seeded sample of PRESERVATION_SAMPLE above it) and the
    trustworthiness (on a seeded sample of TRUST_SAMPLE of those), with k clamped to what the images allow."""
    n = len(view)
    rng = np.random.default_rng(0)
    rows = np.arange(n) if n <= PRESERVATION_SAMPLE else np.sort(rng.choice(n, PRESERVATION_SAMPLE, replace=False))
    k_kept = min(k, len(rows) - 1)
    if k_kept < 1:
        return ProjectionTrust(k, rows[:0], np.zeros(0, np.int64), None, 0, 0)
    kept = neighbourhood_preservation(view.embeddings[rows], coordinates[rows], k_kept)
    trust_rows = rows if len(rows) <= TRUST_SAMPLE else np.sort(rng.choice(rows, TRUST_SAMPLE, replace=False))
    trust_k = min(k, largest_trust_k(len(trust_rows)))
    trust = (projection_trustworthiness(view.embeddings[trust_rows], coordinates[trust_rows], trust_k)
             if trust_k >= 1 else None)
    return ProjectionTrust(k_kept, rows, kept, trust, trust_k, len(trust_rows))


def cached_trust(cache, view: DatasetView, projection_key: str, coordinates: np.ndarray, k: int) -> ProjectionTrust:
    """The projection's trust from the shared cache, computed and stored there first if no one has asked yet."""
    key = trust_key(projection_key, k)
    return computed(cache, key, lambda: projection_trust(view, coordinates, k))


def trust_trace_rows(view: DatasetView, trust: ProjectionTrust) -> list[np.ndarray]:
    """The dataset rows each trace of trust_scatter draws: the images not measured (drawn as far as the scatter
    draws), then the measured ones."""
    others = scatter_sample(view)
    others[trust.rows] = False
    return [np.flatnonzero(others), trust.rows]


def trust_scatter(view: DatasetView, projection: Projection, trust: ProjectionTrust,
                  selected: np.ndarray | None = None) -> go.Figure:
    """The scatter coloured by neighbourhood preservation (the share of each image's k nearest neighbours in the
    embedding that are among its k nearest on the plot); images outside the measured sample small and grey."""
    many = len(view) >= SMALL_MARKERS
    trace_rows = trust_trace_rows(view, trust)
    chosen = selected_points(view, trace_rows, selected)
    others, measured = trace_rows
    share = trust.kept / max(trust.k, 1)
    figure = go.Figure([
        go.Scattergl(x=projection.coordinates[others, 0], y=projection.coordinates[others, 1], mode="markers",
                     name="not measured", customdata=view.image_ids[others].astype(np.int32),
                     marker={"size": 2 if many else 6, "color": "#d0d0d0"}, hoverinfo="none",
                     selectedpoints=chosen[0], unselected=UNSELECTED),
        go.Scattergl(x=projection.coordinates[measured, 0], y=projection.coordinates[measured, 1], mode="markers",
                     name=f"neighbours kept (of {trust.k})", customdata=view.image_ids[measured].astype(np.int32),
                     marker={"size": 4 if many else 10, "color": share.astype(np.float32), "cmin": 0, "cmax": 1,
                             "colorscale": "RdYlBu", "showscale": True,
                             "colorbar": {"title": {"text": f"share of {trust.k}<br>neighbours kept"},
                                          "tickformat": ".0%"}},
                     hoverinfo="none", selectedpoints=chosen[1], unselected=UNSELECTED),
    ])
    title = (f"neighbourhood preservation of a sample of {len(measured):,} of {len(view):,} images"
             if len(measured) < len(view) else "neighbourhood preservation")
    if len(view) > SCATTER_POINTS:
        figure.add_trace(density_trace(projection.coordinates))
    figure.update_layout(showlegend=False)
    return _scatter_layout(figure, view, projection, title, "")
