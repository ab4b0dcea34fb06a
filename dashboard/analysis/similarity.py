"""Cosine similarity between embeddings: nearest neighbours and similarity matrices."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from dashboard.analysis.projection import normalize_rows, row_norms


def top_k(
    embeddings: np.ndarray,
    query: int | np.ndarray,
    k: int,
    *,
    exclude_self: bool = True,
    norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k embeddings most cosine-similar to a query: indices (int64) and scores (float32), best first.

    `query` is a row index or a vector (D,); `exclude_self` leaves an index query out of its own result.
    Ties are broken by the lower index. `norms` are the rows' L2 norms when known (a dataset view keeps them):
    the scores are then one product with the stored matrix divided by them, and the matrix is never copied.
    """
    matrix = np.asarray(embeddings, dtype=np.float32)
    norms = row_norms(matrix) if norms is None else np.asarray(norms, dtype=np.float32)
    n = len(matrix)
    if np.ndim(query) == 0:
        index = operator.index(query)
        if not 0 <= index < n:
            raise IndexError(f"query index {index} is outside 0..{n - 1}")
        vector = matrix[index]
    else:
        vector = np.asarray(query, dtype=np.float32)
    scores = matrix @ normalize_rows(vector[None, :])[0]
    np.divide(scores, norms, out=scores, where=norms > 0)  # a zero row scores 0 already
    if np.ndim(query) == 0 and exclude_self:
        scores[index] = -np.inf
        n -= 1
    k = min(k, n)
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    candidates = _largest(scores, k)
    order = np.lexsort((candidates, -scores[candidates]))
    chosen = candidates[order].astype(np.int64)
    return chosen, np.clip(scores[chosen], -1.0, 1.0)


def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities (N, N) float32."""
    matrix = normalize_rows(embeddings)
    similarity = matrix @ matrix.T
    return np.clip(similarity, -1.0, 1.0, out=similarity)


def heatmap_indices(n_images: int, reference: int, neighbours: Sequence[int], limit: int = 100) -> list[int]:
    """Images for a similarity heatmap: all of them up to `limit`, else the reference and its neighbours.

    `neighbours` is the reference's neighbours, nearest first (as `top_k` returns them).
    """
    if n_images <= limit:
        return list(range(n_images))
    rest = [int(i) for i in neighbours if i != reference]
    return [int(reference), *rest[: limit - 1]]


def _largest(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores in O(N), taking the lowest indices among ties at the k-th score."""
    if k == len(scores):
        return np.arange(len(scores))
    kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
    above = np.flatnonzero(scores > kth)
    tied = np.flatnonzero(scores == kth)[: k - len(above)]
    return np.concatenate([above, tied])
