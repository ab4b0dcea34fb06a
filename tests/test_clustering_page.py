"""Clustering page logic (parameters, cached projections, clusters, downloads) and the page in a browser."""

from __future__ import annotations

import csv
import io

import diskcache
import numpy as np
import pytest

from dashboard import clustering_view
from dashboard.analysis.clustering import NOISE
from dashboard.clustering_view import (
    ClusterParams,
    ProjectionParams,
    assignment_csv,
    cached_projection,
    cluster_images,
    cluster_params,
    cluster_scatter,
    projection_params,
    query_of,
)
from dashboard.data import DatasetView


def _blobs(per_blob: int = 10, generation: int = 1) -> DatasetView:
    """Three tight groups of embeddings pointing in different directions, labelled by folder."""
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16, dtype=np.float32) * 5
    embeddings = np.concatenate([c + 0.05 * rng.standard_normal((per_blob, 16)) for c in centres]).astype(np.float32)
    labels = [name for name in ("cats", "dogs", "cars") for _ in range(per_blob)]
    n = len(labels)
    return DatasetView("blobs", generation, np.arange(100, 100 + n), [f"{label}/{i}.png" for i, label in
                                                                     enumerate(labels)],
                       labels, [(64, 48)] * n, embeddings)


def test_parameters_from_the_url_are_validated_and_round_trip():
    assert projection_params({}) == ProjectionParams()
    odd = projection_params({"projection": "magic", "perplexity": "1e9", "n_neighbors": "x", "min_dist": "-3"})
    assert (odd.method, odd.perplexity, odd.n_neighbors, odd.min_dist) == ("pca", 100.0, 15, 0.0)
    chosen = (ProjectionParams("umap", 12.0, 7, 0.3, 42), ClusterParams("dbscan", 4, 0.7, 3, "projection"))
    query = {name: str(value) for name, value in query_of(*chosen).items()}
    assert (projection_params(query), cluster_params(query)) == chosen


def test_projection_cache_keys_hold_the_generation_and_only_the_parameters_that_matter():
    view = _blobs()
    assert ProjectionParams("pca", perplexity=5).cache_key(view) == ProjectionParams("pca").cache_key(view)
    assert ProjectionParams("tsne", perplexity=5).cache_key(view) != ProjectionParams("tsne").cache_key(view)
    assert ProjectionParams("umap", min_dist=0.5).cache_key(view) != ProjectionParams("umap").cache_key(view)
    assert ProjectionParams("pca").cache_key(_blobs(generation=2)) != ProjectionParams("pca").cache_key(view)


def test_a_projection_is_computed_once_and_then_served_from_the_shared_cache(tmp_path, monkeypatch):
    calls = []
    real_project = clustering_view.project
    monkeypatch.setattr(clustering_view, "project", lambda *a, **k: calls.append(1) or real_project(*a, **k))
    view = _blobs()
    with diskcache.Cache(str(tmp_path)) as cache:
        first = cached_projection(cache, view, ProjectionParams("tsne", perplexity=5))
    with diskcache.Cache(str(tmp_path)) as other_process_cache:
        second = cached_projection(other_process_cache, view, ProjectionParams("tsne", perplexity=5))
    assert len(calls) == 1
    np.testing.assert_array_equal(first.coordinates, second.coordinates)


@pytest.mark.parametrize("method", ["kmeans", "hierarchical"])
def test_clusters_in_cosine_geometry_recover_the_folders(method):
    view = _blobs()
    coordinates = np.zeros((len(view), 2), np.float32)
    result = cluster_images(view, coordinates, ClusterParams(method, k=3))
    assert result.metrics.adjusted_rand == pytest.approx(1.0)
    assert result.metrics.normalized_mutual_info == pytest.approx(1.0)
    assert sorted(size for _, size in result.sizes) == [10, 10, 10]
    for label, rows in result.representatives.items():
        assert len(rows) == 8 and all(result.labels[row] == label for row in rows)


def test_dbscan_noise_is_its_own_group():
    view = _blobs()
    embeddings = view.embeddings.copy()
    embeddings[0] = -embeddings[0]  # one image points away from every group
    view = DatasetView(view.name, 1, view.image_ids, view.relpaths, view.labels, view.sizes, embeddings)
    result = cluster_images(view, np.zeros((len(view), 2)), ClusterParams("dbscan", eps=0.3, min_samples=3))
    assert result.labels[0] == NOISE and result.metrics.n_noise == 1 and result.metrics.n_clusters == 3
    assert result.sizes[-1] == (NOISE, 1)


def test_clustering_the_projection_uses_the_two_dimensional_points():
    view = _blobs()
    coordinates = np.repeat(np.arange(len(view))[:, None], 2, axis=1).astype(np.float32)  # a line
    result = cluster_images(view, coordinates, ClusterParams("kmeans", k=2, space="projection"))
    assert set(result.labels[:5]) != set(result.labels[-5:])  # split along the line, not by folder
    assert result.metrics.adjusted_rand < 1.0


def test_the_download_lists_every_image_with_its_cluster_and_position():
    view = _blobs()
    coordinates = np.arange(len(view) * 2, dtype=np.float32).reshape(-1, 2)
    labels = np.arange(len(view)) % 3
    rows = list(csv.DictReader(io.StringIO(assignment_csv(view, coordinates, labels))))
    assert len(rows) == len(view)
    assert rows[4] == {"image_id": "104", "relpath": "cats/4.png", "label": "cats", "cluster": "1", "x": "8",
                       "y": "9"}


def test_the_scatter_has_a_trace_per_cluster_whose_points_carry_image_ids():
    view = _blobs()
    projection = cached_projection({}, view, ProjectionParams("pca"))
    result = cluster_images(view, projection.coordinates, ClusterParams("kmeans", k=3))
    figure = cluster_scatter(view, projection, result)
    assert len(figure.data) == 3 and all(trace.type == "scattergl" for trace in figure.data)
    ids = sorted(i for trace in figure.data for i in trace.customdata)
    assert ids == list(range(100, 130)) and all(isinstance(i, int) for i in figure.data[0].customdata)
    assert figure.layout.xaxis.title.text == "PC 1"
