"""How faithful a 2-D projection is: per image, how many of its nearest neighbours in the embedding stay its nearest
neighbours on the plot (neighbourhood preservation), and for the whole picture scikit-learn's trustworthiness."""

from __future__ import annotations

import numpy as np
from sklearn.manifold import trustworthiness
from sklearn.neighbors import NearestNeighbors

from dashboard.analysis.projection import normalize_rows


def nearest_neighbours(points: np.ndarray, k: int) -> np.ndarray:
    """Each point's k nearest other points (N, k) in Euclidean distance, nearest first; a point is never its own
    neighbour, even where another point lies at the same place."""
    return NearestNeighbors(n_neighbors=k).fit(points).kneighbors(return_distance=False)


def neighbourhood_preservation(embeddings: np.ndarray, coordinates: np.ndarray, k: int) -> np.ndarray:
    """For each image, how many of its k nearest neighbours by cosine distance between the embeddings are also
    among its k nearest on the 2-D points (N,) int: k where the projection kept its neighbourhood, 0 where none."""
    if not 1 <= k < len(embeddings):
        raise ValueError(f"k must be between 1 and {len(embeddings) - 1} for {len(embeddings)} images, not {k}")
    # Euclidean distance between unit vectors ranks neighbours as cosine distance does.
    high = nearest_neighbours(normalize_rows(embeddings), k)
    low = nearest_neighbours(np.asarray(coordinates, dtype=np.float64), k)
    return (high[:, :, None] == low[:, None, :]).any(axis=2).sum(axis=1)


def largest_trust_k(n_images: int) -> int:
    """The largest k that trustworthiness accepts for n images (it asks for k < n / 2); 0 when none."""
    return max((n_images - 1) // 2, 0)


def projection_trustworthiness(embeddings: np.ndarray, coordinates: np.ndarray, k: int) -> float:
    """scikit-learn's trustworthiness of the 2-D points for the embeddings in cosine geometry (1: no image has
    neighbours on the plot that are not near it in the embedding; lower: the plot brings strangers together)."""
    if not 1 <= k <= largest_trust_k(len(embeddings)):
        raise ValueError(f"k must be between 1 and {largest_trust_k(len(embeddings))} for {len(embeddings)} "
                         f"images, not {k}")
    return float(trustworthiness(normalize_rows(embeddings), coordinates, n_neighbors=k))
