"""The dashboard's analysis layer: projections, clusters and similarity on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics
from sklearn.decomposition import PCA
from sklearn.metrics.pairwise import cosine_similarity

from dashboard.analysis.clustering import (
    NOISE,
    ClusterMetrics,
    cluster,
    cluster_metrics,
    cluster_sizes,
    label_by_nearest_sample,
)
from dashboard.analysis.projection import normalize_rows, pca_components, principal_basis, project, row_norms
from dashboard.analysis.similarity import ReducedSearch, bounded_top_k, cosine_matrix, heatmap_indices, top_k


def blobs(n_per_blob: int, n_blobs: int, dimensions: int, spread: float = 0.05, seed: int = 0):
    """Well-separated Gaussian blobs around random directions, and each point's blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, dimensions))
    truth = np.repeat(np.arange(n_blobs), n_per_blob)
    points = centres[truth] + spread * rng.normal(size=(len(truth), dimensions))
    return points.astype(np.float32), truth


def assert_separated(coordinates: np.ndarray, truth: np.ndarray) -> None:
    centroids = np.array([coordinates[truth == blob].mean(axis=0) for blob in np.unique(truth)])
    spread = np.mean([np.linalg.norm(coordinates[truth == b] - centroids[b], axis=1).mean() for b in np.unique(truth)])
    assert np.linalg.norm(centroids[0] - centroids[1]) > 5 * spread


def assert_equal_up_to_sign(actual: np.ndarray, expected: np.ndarray) -> None:
    signs = np.sign(np.sum(actual * expected, axis=0))
    np.testing.assert_allclose(actual * signs, expected, atol=1e-4)


# --- projection -----------------------------------------------------------------------------------------


def test_normalize_rows_gives_unit_rows_and_keeps_zero_rows():
    matrix = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    normalized = normalize_rows(matrix)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])


def test_pca_projection_matches_scikit_learn_on_normalised_embeddings():
    embeddings = np.random.default_rng(1).normal(size=(40, 12)) * np.arange(1, 13)
    result = project(embeddings, "pca")
    expected = PCA(n_components=2).fit_transform(normalize_rows(embeddings))
    assert result.method == "pca" and result.notes == []
    assert result.coordinates.dtype == np.float32 and result.coordinates.shape == (40, 2)
    assert_equal_up_to_sign(result.coordinates, expected)


def test_pca_components_match_scikit_learn_and_clamp_n():
    embeddings = np.random.default_rng(2).normal(size=(30, 8)) * np.arange(1, 9)
    coordinates, ratio = pca_components(embeddings, 3)
    pca = PCA(n_components=3).fit(normalize_rows(embeddings))
    assert coordinates.dtype == np.float32 and coordinates.shape == (30, 3)
    assert_equal_up_to_sign(coordinates, pca.transform(normalize_rows(embeddings)))
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-5)

    coordinates, ratio = pca_components(embeddings[:4], 10)
    assert coordinates.shape == (4, 4) and ratio.shape == (4,)
    assert ratio.sum() == pytest.approx(1.0, abs=1e-5)


def test_pca_components_read_in_chunks_match_scikit_learn_on_the_whole_matrix():
    embeddings = np.random.default_rng(4).normal(size=(1000, 24)).astype(np.float32) * np.arange(1, 25)
    basis = principal_basis(embeddings, 5, chunk=64)  # 16 chunks, the last one short
    coordinates, ratio = basis.coordinates, basis.ratio
    pca = PCA(n_components=5, svd_solver="full").fit(normalize_rows(embeddings))
    assert coordinates.dtype == np.float32 and coordinates.shape == (1000, 5)
    np.testing.assert_allclose(coordinates, pca.transform(normalize_rows(embeddings)), atol=1e-4)  # signs too
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(basis.axes, pca.components_, atol=1e-5)
    np.testing.assert_allclose(basis.mean, pca.mean_, atol=1e-6)


def test_pca_components_are_exact_so_the_first_ones_do_not_depend_on_how_many():
    embeddings = np.random.default_rng(3).normal(size=(500, 20)) * np.arange(1, 21)
    few, _ = pca_components(embeddings, 2)
    many, _ = pca_components(embeddings, 15)
    np.testing.assert_allclose(few, many[:, :2], atol=1e-5)
    assert_equal_up_to_sign(few, PCA(n_components=2, svd_solver="full").fit_transform(normalize_rows(embeddings)))


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_a_projection_from_given_principal_components_equals_one_that_computes_them(method):
    points, _ = blobs(20, 2, 64)
    stages: list[str] = []
    given = project(points, method, reduced=pca_components(points, 50)[0], perplexity=10, progress=stages.append)
    assert "PCA to 50 dimensions" not in stages
    np.testing.assert_array_equal(given.coordinates, project(points, method, perplexity=10).coordinates)


def test_unknown_projection_method_names_the_allowed_ones():
    with pytest.raises(ValueError, match="pca, tsne, umap"):
        project(np.ones((5, 3)), "mds")


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_tiny_collections_get_a_finite_projection(n, method):
    embeddings = np.random.default_rng(n).normal(size=(n, 6))
    result = project(embeddings, method)
    assert result.coordinates.shape == (n, 2) and np.isfinite(result.coordinates).all()
    assert result.method == "pca"
    assert bool(result.notes) == (method != "pca")


def test_identical_embeddings_project_to_zero():
    coordinates, ratio = pca_components(np.ones((5, 4)), 2)
    assert np.all(coordinates == 0) and np.all(ratio == 0)


def test_tsne_separates_blobs_deterministically():
    points, truth = blobs(20, 2, 16)
    first = project(points, "tsne", seed=3, perplexity=10)
    second = project(points, "tsne", seed=3, perplexity=10)
    assert first.method == "tsne" and first.notes == []
    assert first.coordinates.dtype == np.float32 and first.coordinates.shape == (40, 2)
    assert np.isfinite(first.coordinates).all()
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    assert_separated(first.coordinates, truth)


def test_tsne_reports_its_progress():
    points, _ = blobs(10, 2, 8)
    stages: list[str] = []
    project(points, "tsne", reduced=pca_components(points, 50)[0], perplexity=5, progress=stages.append)
    assert stages == ["t-SNE: nearest neighbours"] + [f"t-SNE: iteration {i} of 750" for i in range(50, 751, 50)]


def test_tsne_clamps_perplexity_below_the_number_of_images():
    points, _ = blobs(4, 2, 8)
    result = project(points, "tsne")
    assert result.method == "tsne" and result.coordinates.shape == (8, 2)
    assert np.isfinite(result.coordinates).all()
    assert any("perplexity 30" in note for note in result.notes)


def test_umap_reduces_with_pca_first_separates_blobs_and_is_deterministic():
    # The only test of a full-size UMAP: its first call compiles with numba.
    points, truth = blobs(30, 2, 64)
    stages: list[str] = []
    first = project(points, "umap", seed=7, progress=stages.append)
    second = project(points, "umap", seed=7)
    assert stages[:3] == ["PCA to 50 dimensions", "UMAP: nearest neighbours", "UMAP: epoch 0 of 500"]
    assert stages[-1] == "UMAP: epoch 500 of 500"  # its progress, epoch by epoch as they run
    assert first.method == "umap" and first.notes == []
    assert first.coordinates.dtype == np.float32 and first.coordinates.shape == (60, 2)
    assert np.isfinite(first.coordinates).all()
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    assert_separated(first.coordinates, truth)

    small = project(points[:8], "umap", n_neighbors=15)
    assert small.coordinates.shape == (8, 2) and np.isfinite(small.coordinates).all()
    assert small.notes == ["n_neighbors 15 lowered to 7: it must be below the 8 images"]


# --- clustering -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["kmeans", "dbscan", "hierarchical"])
def test_each_method_recovers_three_blobs(method):
    points, truth = blobs(20, 3, 8)
    labels = cluster(normalize_rows(points), method, k=3, eps=0.3, min_samples=3)
    assert labels.dtype == np.int64 and labels.shape == (60,)
    assert metrics.adjusted_rand_score(truth, labels) == 1.0


def test_k_means_on_the_principal_components_finds_the_clusters_of_the_full_vectors():
    points, truth = blobs(100, 12, 384, spread=0.3)
    full = cluster(normalize_rows(points), "kmeans", k=12)
    reduced = cluster(pca_components(points, 50)[0], "kmeans", k=12)
    assert metrics.adjusted_rand_score(full, reduced) == 1.0
    assert metrics.adjusted_rand_score(truth, reduced) == 1.0


def test_unsampled_points_join_the_cluster_of_their_nearest_sampled_point():
    points = np.array([[0, 0], [0, 1], [10, 0], [10, 1], [0, 0.4], [10, 0.6], [50, 50]], np.float32)
    sample = np.array([0, 1, 2, 3])
    assert label_by_nearest_sample(points, sample, np.array([0, 0, 1, 1])).tolist() == [0, 0, 1, 1, 0, 1, 1]
    # DBSCAN: only a clustered sampled point within eps counts; the far point is noise.
    with_noise = label_by_nearest_sample(points, sample, np.array([0, 0, 1, NOISE]), eps=2.0)
    assert with_noise.tolist() == [0, 0, 1, NOISE, 0, 1, NOISE]


def test_dbscan_marks_an_isolated_outlier_as_noise():
    points, _ = blobs(20, 2, 4)
    points = np.vstack([points, np.full((1, 4), 100.0, np.float32)])
    labels = cluster(points, "dbscan", eps=0.5, min_samples=3)
    assert labels[-1] == -1 and np.all(labels[:-1] >= 0)


def test_k_is_clamped_to_the_number_of_points():
    points = np.random.default_rng(0).normal(size=(3, 2))
    for method in ("kmeans", "hierarchical"):
        assert sorted(cluster(points, method, k=10)) == [0, 1, 2]
        assert list(cluster(points, method, k=0)) == [0, 0, 0]
        assert list(cluster(points[:1], method)) == [0]


def test_unknown_clustering_method_names_the_allowed_ones():
    with pytest.raises(ValueError, match="kmeans, dbscan, hierarchical"):
        cluster(np.ones((5, 2)), "spectral")


def test_metrics_equal_scikit_learn_and_leave_out_noise_and_unlabelled_images():
    points, truth = blobs(10, 3, 4, spread=0.8)
    labels = np.array(cluster(points, "kmeans", k=3))
    labels[[0, 15]] = -1
    true_labels: list[str | None] = [f"class {t}" for t in truth]
    true_labels[3], true_labels[25] = None, ""
    result = cluster_metrics(points, labels, true_labels)

    clustered = labels != -1
    known = np.array([t not in (None, "") for t in true_labels])
    assert result.silhouette == pytest.approx(metrics.silhouette_score(points[clustered], labels[clustered]))
    assert result.adjusted_rand == pytest.approx(metrics.adjusted_rand_score(truth[known], labels[known]))
    assert result.normalized_mutual_info == pytest.approx(
        metrics.normalized_mutual_info_score(truth[known], labels[known])
    )
    assert (result.n_clusters, result.n_noise) == (3, 2)


def test_metrics_are_none_where_undefined():
    points = np.random.default_rng(0).normal(size=(6, 2))
    assert cluster_metrics(points, np.zeros(6, int)) == ClusterMetrics(None, None, None, 1, 0)
    assert cluster_metrics(points, np.arange(6)).silhouette is None
    assert cluster_metrics(points, np.array([0, 0, 0, -1, -1, -1])).silhouette is None
    one_class = cluster_metrics(points, np.array([0, 0, 0, 1, 1, 1]), ["a", "a", None, "", "a", "a"])
    assert one_class.silhouette is not None
    assert one_class.adjusted_rand is None and one_class.normalized_mutual_info is None


def test_silhouette_samples_large_sets_reproducibly():
    points, truth = blobs(100, 3, 4)
    full = cluster_metrics(points, truth).silhouette
    sampled = cluster_metrics(points, truth, sample_size=50, seed=1).silhouette
    assert sampled == cluster_metrics(points, truth, sample_size=50, seed=1).silhouette
    assert sampled != full and sampled == pytest.approx(full, abs=0.05)


def test_cluster_sizes_sorted_by_label_with_noise_last():
    labels = np.array([2, -1, 0, 2, -1, 1, 2, 0])
    assert cluster_sizes(labels) == [(0, 2), (1, 1), (2, 3), (-1, 2)]


# --- similarity -----------------------------------------------------------------------------------------


def brute_force(embeddings: np.ndarray, query: np.ndarray, k: int, skip: int | None = None):
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    order = [int(i) for i in np.lexsort((np.arange(len(scores)), -scores)) if i != skip]
    return order[:k], scores[order[:k]]


def test_top_k_matches_brute_force_and_excludes_self():
    embeddings = np.random.default_rng(5).normal(size=(500, 16))
    for query in (0, 123, 499):
        indices, scores = top_k(embeddings, query, 10)
        expected, expected_scores = brute_force(embeddings, embeddings[query], 10, skip=query)
        assert indices.tolist() == expected and query not in indices
        assert scores.dtype == np.float32
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)

    with_self, self_scores = top_k(embeddings, 42, 3, exclude_self=False)
    assert with_self[0] == 42 and self_scores[0] == pytest.approx(1.0)


def test_top_k_on_a_vector_and_with_known_norms():
    embeddings = np.random.default_rng(6).normal(size=(200, 8))
    vector = np.random.default_rng(7).normal(size=8)
    expected, expected_scores = brute_force(embeddings, vector, 5)
    assert top_k(embeddings, vector, 5)[0].tolist() == expected
    indices, scores = top_k(embeddings, vector, 5, norms=row_norms(embeddings))
    assert indices.tolist() == expected
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert len(top_k(embeddings, 0, 1000)[0]) == 199


def test_a_zero_embedding_scores_zero_and_leaves_the_matrix_untouched():
    embeddings = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], np.float32)
    embeddings.flags.writeable = False  # as a memory-mapped shared matrix is
    indices, scores = top_k(embeddings, 0, 2, norms=row_norms(embeddings))
    assert indices.tolist() == [1, 2] and scores.tolist() == [0.0, -1.0]


def test_top_k_breaks_ties_by_index():
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [5.0, 0.0], [1.0, 1.0]])
    indices, scores = top_k(embeddings, 0, 2)
    assert indices.tolist() == [2, 4]
    np.testing.assert_allclose(scores, [1.0, 1.0])
    assert top_k(embeddings, 1, 1)[0].tolist() == [3]

    # Many rows share each direction, so the k-th score falls inside a large group of ties.
    many = np.random.default_rng(9).integers(1, 4, size=(1000, 2)).astype(float)
    expected, _ = brute_force(many, np.array([1.0, 0.0]), 10)
    assert top_k(many, np.array([1.0, 0.0]), 10)[0].tolist() == expected


def test_cosine_matrix_is_the_cosine_similarity():
    embeddings = np.random.default_rng(8).normal(size=(20, 5))
    matrix = cosine_matrix(embeddings)
    assert matrix.dtype == np.float32 and matrix.shape == (20, 20)
    np.testing.assert_allclose(matrix, cosine_similarity(embeddings), atol=1e-6)
    assert np.all(np.abs(matrix) <= 1.0)


def test_heatmap_indices_shows_everything_or_the_reference_and_its_neighbours():
    assert heatmap_indices(4, 2, [1, 0, 3], limit=5) == [0, 1, 2, 3]
    assert heatmap_indices(1000, 7, [7, 3, 9, 1, 5], limit=4) == [7, 3, 9, 1]


def _umap_shape_in_child(vectors, queue):
    queue.put(project(vectors, "umap", n_neighbors=5, min_dist=0.3).coordinates.shape)


def test_umap_still_runs_in_a_forked_child_after_running_in_the_parent():
    """Background jobs are forked from the server; numba's threads must survive that (Dash's DiskcacheManager)."""
    import multiprocessing

    vectors = np.random.default_rng(0).standard_normal((40, 12)).astype(np.float32)
    project(vectors, "umap", n_neighbors=5)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_umap_shape_in_child, args=(vectors, queue))
    child.start()
    child.join(120)
    assert child.exitcode == 0 and queue.get(timeout=5) == (40, 2)


def _search_of(embeddings: np.ndarray, dimensions: int) -> ReducedSearch:
    basis = principal_basis(embeddings, dimensions)
    return ReducedSearch.of(basis.coordinates, basis.axes, basis.mean, row_norms(embeddings))


def test_reduced_bounds_are_never_below_the_true_cosine():
    embeddings, _ = blobs(200, 4, 32, spread=0.4, seed=5)
    embeddings[7] = 0  # a zero row scores 0
    search = _search_of(embeddings, 6)
    for query in (0, 7, 311, 799):
        unit = normalize_rows(embeddings[query][None, :])[0]
        true = normalize_rows(embeddings) @ unit
        assert np.all(search.bounds(unit) >= true)


@pytest.mark.parametrize("dimensions", [3, 10])
def test_bounded_top_k_gives_the_full_scan_answer(dimensions):
    """With a first round of 16 candidates on 4,000 rows the bounds prune (clustered data) or rounds grow (few
    dimensions): either way the answer is the full scan's, for row queries and vectors, with or without self."""
    embeddings, _ = blobs(500, 8, 48, spread=0.6, seed=6)
    norms, search = row_norms(embeddings), _search_of(embeddings, dimensions)
    queries = [0, 1234, 3999, embeddings[17] + 0.3, np.random.default_rng(7).normal(size=48)]
    for query in queries:
        for exclude_self in (True, False):
            expected = top_k(embeddings, query, 10, exclude_self=exclude_self)
            found = bounded_top_k(embeddings, norms, search, query, 10, exclude_self=exclude_self, first=16)
            np.testing.assert_array_equal(found[0], expected[0])
            np.testing.assert_allclose(found[1], expected[1], atol=1e-5)


def test_tsne_above_the_sample_fits_a_sample_and_places_every_other_image_at_its_nearest():
    embeddings, _ = blobs(30, 3, 16, spread=0.2, seed=8)
    stages = []
    result = project(embeddings, "tsne", perplexity=5, sample=40, progress=stages.append)
    assert result.coordinates.shape == (90, 2)
    assert result.notes == [("t-SNE of a sample of 40 images; each of the other 50 is placed where its nearest "
                            "sampled image is")]
    assert "placing the other images: 0 of 50" in stages
    sampled = np.sort(np.random.default_rng(0).choice(90, 40, replace=False))
    reduced = pca_components(embeddings, 50)[0]
    for row in np.setdiff1d(np.arange(90), sampled):
        nearest = sampled[np.argmin(np.linalg.norm(reduced[sampled] - reduced[row], axis=1))]
        np.testing.assert_array_equal(result.coordinates[row], result.coordinates[nearest])
    assert len(np.unique(result.coordinates[sampled], axis=0)) == 40  # the sample itself was fitted
    assert project(embeddings, "tsne", perplexity=5, sample=90).notes == []
