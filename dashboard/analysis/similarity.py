"""Cosine similarity between embeddings: nearest neighbours and similarity matrices."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ReducedSearch:
    """What bounds every image's cosine to a query from the 50 principal components alone, so that an exact top-K
    reads only the full embeddings of images whose bound could reach the K-th best score.

    With unit vectors x and q, P the projection onto the principal axes and R the rest, x.q = Px.Pq + Rx.Rq and
    Rx.Rq <= |Rx| |Rq| (Cauchy-Schwarz). Px is given by the axes' coordinates, `reduced + offset` (the reduced
    coordinates are measured from the mean; offset = axes @ mean), and |Rx|^2 = |x|^2 - |Px|^2."""

    reduced: np.ndarray  # (N, n) coordinates of the normalised rows on the axes, from the mean
    axes: np.ndarray  # (n, D) orthonormal rows
    offset: np.ndarray  # (n,): the mean on the axes
    residuals: np.ndarray  # (N,): each normalised row's length off the axes' span

    @classmethod
    def of(cls, reduced: np.ndarray, axes: np.ndarray, mean: np.ndarray, norms: np.ndarray) -> ReducedSearch:
        offset = (axes @ mean).astype(np.float32)
        return cls(reduced, axes, offset, residual_lengths(reduced, offset, norms))

    def bounds(self, unit_query: np.ndarray) -> np.ndarray:
        """The largest cosine each row can have with the unit vector `unit_query` (D,), float32 (N,)."""
        on_axes = self.axes @ unit_query
        off_axes = np.sqrt(max(0.0, 1.0 - float(on_axes @ on_axes)))
        bounds = self.reduced @ on_axes
        bounds += float(self.offset @ on_axes) + BOUND_MARGIN
        bounds += off_axes * self.residuals
        return bounds


# Float32 rounding in the coordinates and lengths, far above its size: a bound never falls below a true score.
BOUND_MARGIN = 1e-3
FIRST_CANDIDATES = 1_024  # rows of highest bound scored first by the bounded search
BOUNDED_SHARE = 0.125  # past this share of the rows to score, reading them one by one costs more than a scan


def residual_lengths(reduced: np.ndarray, offset: np.ndarray, norms: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """Each normalised row's length off the principal axes, sqrt(|x|^2 - |Px|^2), float32 (N,); 0 for a zero row."""
    lengths = np.empty(len(reduced), np.float32)
    for start in range(0, len(reduced), chunk):
        on_axes = reduced[start:start + chunk] + offset
        squared = (np.asarray(norms[start:start + chunk]) > 0) - np.einsum("ij,ij->i", on_axes, on_axes)
        lengths[start:start + chunk] = np.sqrt(np.clip(squared, 0.0, None))
    return lengths


def bounded_top_k(embeddings: np.ndarray, norms: np.ndarray, search: ReducedSearch, query: int | np.ndarray,
                  k: int, *, exclude_self: bool = True, first: int = FIRST_CANDIDATES,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """top_k's answer, reading full embeddings only where the principal components cannot rule an image out.

    The `first` rows of highest bound are scored exactly: their K-th best score is a floor for the answer's, so
    every row whose bound reaches it is scored too, and no other row can be in the top K. Where more than
    BOUNDED_SHARE of the rows reach it the whole matrix is scanned instead (as top_k does)."""
    n = len(embeddings)
    if np.ndim(query) == 0:
        index = operator.index(query)
        if not 0 <= index < n:
            raise IndexError(f"query index {index} is outside 0..{n - 1}")
        vector = np.asarray(embeddings[index], dtype=np.float32)
    else:
        vector = np.asarray(query, dtype=np.float32)
    unit = normalize_rows(vector[None, :])[0]
    bounds = search.bounds(unit)
    if np.ndim(query) == 0 and exclude_self:
        bounds[index] = -np.inf
    count = max(first, 4 * k)
    if count >= n * BOUNDED_SHARE:
        return top_k(embeddings, query, k, exclude_self=exclude_self, norms=norms)
    leading = np.sort(np.argpartition(-bounds, count)[:count])
    floor = np.sort(_scores(embeddings, norms, leading, unit))[-k]
    candidates = np.union1d(leading, np.flatnonzero(bounds >= floor))
    if len(candidates) > n * BOUNDED_SHARE:
        return top_k(embeddings, query, k, exclude_self=exclude_self, norms=norms)
    scores = _scores(embeddings, norms, candidates, unit)
    if np.ndim(query) == 0 and exclude_self:
        scores[candidates == index] = -np.inf
    best = _largest(scores, k)
    order = np.lexsort((candidates[best], -scores[best]))
    chosen = best[order]
    return candidates[chosen].astype(np.int64), np.clip(scores[chosen], -1.0, 1.0)


def _scores(embeddings: np.ndarray, norms: np.ndarray, rows: np.ndarray, unit: np.ndarray) -> np.ndarray:
    scores = np.asarray(embeddings[rows], dtype=np.float32) @ unit
    return np.divide(scores, norms[rows], out=scores, where=norms[rows] > 0)


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
