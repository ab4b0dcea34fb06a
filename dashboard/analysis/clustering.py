"""Clusters of embedding points (k-means, DBSCAN, Ward) and how good they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn import metrics
from sklearn.cluster import DBSCAN, AgglomerativeClustering, KMeans
from sklearn.metrics import pairwise_distances_argmin_min

METHODS = ("kmeans", "dbscan", "hierarchical")
NOISE = -1


@dataclass(frozen=True)
class ClusterMetrics:
    """Quality of one clustering; a score is None where it is undefined."""

    silhouette: float | None
    adjusted_rand: float | None
    normalized_mutual_info: float | None
    n_clusters: int
    n_noise: int


def cluster(
    points: np.ndarray, method: str, *, k: int = 5, eps: float = 0.5, min_samples: int = 5, seed: int = 0,
    fit_sample: int | None = None,
) -> np.ndarray:
    """Cluster labels (N,) int64 for points (N, D) with "kmeans", "dbscan" or "hierarchical" (Ward).

    For cosine geometry pass L2-normalised embeddings. DBSCAN then measures euclidean distance between unit
    vectors, so `eps` is a chord distance, sqrt(2 - 2 cos): eps 0.5 joins neighbours with cosine above 0.875.
    DBSCAN labels noise -1. k is clamped to [1, N]. Ward needs memory quadratic in N: sample large sets first.
    With more than `fit_sample` points K-Means fits its centres on a seeded sample of that many, and every point
    then takes its nearest centre.
    """
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {', '.join(METHODS)}")
    points = np.asarray(points, dtype=np.float32)
    n = len(points)
    if n == 0:
        return np.empty(0, np.int64)
    if method == "dbscan":
        return DBSCAN(eps=eps, min_samples=min_samples).fit_predict(points).astype(np.int64)
    k = min(max(k, 1), n)
    if k == 1:  # also N == 1, which both estimators reject
        return np.zeros(n, np.int64)
    if method == "kmeans":
        kmeans = KMeans(n_clusters=k, random_state=seed)
        if fit_sample is not None and n > fit_sample:
            rows = np.sort(np.random.default_rng(seed).choice(n, fit_sample, replace=False))
            labels = kmeans.fit(points[rows]).predict(points)
        else:
            labels = kmeans.fit_predict(points)
    else:
        labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(points)
    return labels.astype(np.int64)


def label_by_nearest_sample(points: np.ndarray, sample: np.ndarray, sample_labels: np.ndarray,
                            eps: float | None = None) -> np.ndarray:
    """Labels (N,) for all rows of `points` (N, D) from the labels of the rows `sample`: every other row takes the
    label of its nearest sampled row (euclidean). With `eps` (DBSCAN), only a clustered sampled row within eps
    counts, else the row is noise, as DBSCAN labels a point next to a cluster."""
    labels = np.full(len(points), NOISE, np.int64)
    labels[sample] = sample_labels
    others = np.setdiff1d(np.arange(len(points)), sample)
    candidates = np.asarray(sample) if eps is None else np.asarray(sample)[np.asarray(sample_labels) != NOISE]
    if len(others) == 0 or len(candidates) == 0:
        return labels
    nearest, distance = pairwise_distances_argmin_min(points[others], points[candidates])  # in bounded chunks
    found = labels[candidates[nearest]]
    labels[others] = found if eps is None else np.where(distance <= eps, found, NOISE)
    return labels


def cluster_metrics(
    points: np.ndarray,
    labels: np.ndarray,
    true_labels: Sequence[object] | None = None,
    *,
    sample_size: int = 2_000,
    seed: int = 0,
) -> ClusterMetrics:
    """Silhouette on the clustered (non-noise) points; adjusted Rand and NMI against the labelled images.

    Images whose true label is None or "" are left out of the two agreement scores; noise points take part
    there as one more group. Silhouette is quadratic in N: above `sample_size` points it uses a seeded sample.
    """
    points = np.asarray(points)
    labels = np.asarray(labels)
    if len(labels) != len(points):
        raise ValueError(f"{len(labels)} labels for {len(points)} points")
    clustered = labels != NOISE
    n_clusters = len(np.unique(labels[clustered]))
    adjusted_rand, normalized_mutual_info = _agreement(labels, true_labels)
    return ClusterMetrics(
        silhouette=_silhouette(points[clustered], labels[clustered], sample_size, seed),
        adjusted_rand=adjusted_rand,
        normalized_mutual_info=normalized_mutual_info,
        n_clusters=n_clusters,
        n_noise=int((~clustered).sum()),
    )


def cluster_sizes(labels: np.ndarray) -> list[tuple[int, int]]:
    """(label, size) pairs sorted by label, noise (-1) last."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    pairs = [(int(label), int(count)) for label, count in zip(values, counts)]
    return sorted(pairs, key=lambda pair: (pair[0] == NOISE, pair[0]))


def _silhouette(points: np.ndarray, labels: np.ndarray, sample_size: int, seed: int) -> float | None:
    if len(labels) > sample_size:
        chosen = np.random.default_rng(seed).choice(len(labels), sample_size, replace=False)
        points, labels = points[chosen], labels[chosen]
    n_clusters = len(np.unique(labels))
    if n_clusters < 2 or n_clusters == len(labels):
        return None
    return float(metrics.silhouette_score(points, labels))


def _agreement(labels: np.ndarray, true_labels: Sequence[object] | None) -> tuple[float | None, float | None]:
    if true_labels is None:
        return None, None
    if len(true_labels) != len(labels):
        raise ValueError(f"{len(true_labels)} true labels for {len(labels)} points")
    known = np.array([label is not None and label != "" for label in true_labels], dtype=bool)
    truth = np.array([str(label) for label, keep in zip(true_labels, known) if keep])
    if len(np.unique(truth)) < 2:
        return None, None
    predicted = labels[known]
    return (
        float(metrics.adjusted_rand_score(truth, predicted)),
        float(metrics.normalized_mutual_info_score(truth, predicted)),
    )
