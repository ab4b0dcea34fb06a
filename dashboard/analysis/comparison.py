"""Comparing image representations: the CLS embedding against the mean of the patch tokens (and their
concatenation) within one dataset, and two datasets of the same images embedded by different models.

Plain numpy and scikit-learn: retrieval is cosine top-K, agreement is the overlap of two top-K lists, the share of
neighbours with the reference's folder label, and the adjusted Rand index of two K-Means clusterings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dashboard.analysis.projection import normalize_rows

QUERY_CHUNK = 256  # references whose similarities to every image are computed at once


def mean_patch_tokens(grids: np.ndarray) -> np.ndarray:
    """The mean patch token of each grid: (n, grid h, grid w, D) of any float dtype -> (n, D) float32, averaged in
    float32 (a float16 sum of hundreds of tokens loses digits)."""
    grids = np.asarray(grids)
    if grids.ndim != 4:
        raise ValueError(f"patch grids are (images, height, width, dims), not of shape {grids.shape}")
    return grids.astype(np.float32).mean(axis=(1, 2))


def concatenated(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Each part L2-normalised, then side by side: the cosine of two such vectors is the mean of the parts'
    cosines, so neither part outweighs the other by its scale or dimension."""
    return np.hstack([normalize_rows(first), normalize_rows(second)]).astype(np.float32)


def top_k_rows(matrix: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """(len(queries), k) rows of `matrix` most cosine-similar to each query vector, best first (ties: the lower
    row); `exclude[i]` (a row, or -1 for none) is left out of query i's list (the query itself)."""
    normalised = normalize_rows(np.asarray(matrix, np.float32))
    k = min(k, len(matrix) - (0 if exclude is None else 1))
    found = np.empty((len(queries), max(k, 0)), np.int64)
    if k <= 0:
        return found
    for start in range(0, len(queries), QUERY_CHUNK):
        scores = normalize_rows(np.asarray(queries[start:start + QUERY_CHUNK], np.float32)) @ normalised.T
        if exclude is not None:
            rows = np.arange(len(scores))
            skip = exclude[start:start + QUERY_CHUNK]
            scores[rows[skip >= 0], skip[skip >= 0]] = -np.inf
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
            np.tile(np.arange(scores.shape[1]), (len(scores), 1))
        for i, chosen in enumerate(candidates):
            order = np.lexsort((chosen, -scores[i, chosen]))
            found[start + i] = chosen[order][:k]
    return found


def overlap_at_k(first: Sequence[int], second: Sequence[int]) -> float:
    """The share of the first top-K list that the second holds too: |A ∩ B| / K (1 when they agree, 0 when they
    share nothing)."""
    if not len(first):
        return 0.0
    return len(set(map(int, first)) & set(map(int, second))) / len(first)


def jaccard(first: Sequence[int], second: Sequence[int]) -> float:
    """|A ∩ B| / |A ∪ B| of two top-K lists."""
    union = set(map(int, first)) | set(map(int, second))
    return len(set(map(int, first)) & set(map(int, second))) / len(union) if union else 0.0


def mean_overlap(first: np.ndarray, second: np.ndarray, references: np.ndarray, k: int) -> float:
    """Mean overlap@K, over `references` (rows), of the top-K lists that the two representations (row-aligned
    matrices of the same images) give each reference, itself left out."""
    a = top_k_rows(first, first[references], k, exclude=references)
    b = top_k_rows(second, second[references], k, exclude=references)
    return float(np.mean([overlap_at_k(x, y) for x, y in zip(a, b)])) if len(references) else 0.0


def label_precision(matrix: np.ndarray, labels: Sequence[str | None], references: np.ndarray, k: int) -> float | None:
    """Mean precision@K of same-label neighbours: for each labelled reference, the share of its top-K (itself left
    out) whose folder label is its own. None when no reference has a label."""
    labelled = np.array([r for r in references if labels[r] is not None], np.int64)
    if not len(labelled):
        return None
    found = top_k_rows(matrix, matrix[labelled], k, exclude=labelled)
    codes = {label: code for code, label in enumerate(dict.fromkeys(labels))}
    coded = np.array([codes[label] for label in labels])
    return float(np.mean(coded[found] == coded[labelled][:, None]))


@dataclass(frozen=True)
class Matching:
    """Images of two datasets paired by content: row `first[i]` of the first dataset holds the same file as row
    `second[i]` of the second."""

    first: np.ndarray  # int64 rows of the first dataset
    second: np.ndarray  # int64 rows of the second

    def __len__(self) -> int:
        return len(self.first)


def match_by_hash(first: Sequence[str], second: Sequence[str]) -> Matching:
    """Pair the images of two datasets whose content hashes are equal. A content held by several images of a
    dataset (copies of one file) pairs them in row order, the extra copies of the side with more left unpaired.
    The pairs come in the first dataset's row order."""
    waiting: dict[str, list[int]] = {}
    for row, content in enumerate(second):
        waiting.setdefault(content, []).append(row)
    taken: dict[str, int] = {}
    pairs = []
    for row, content in enumerate(first):
        rows = waiting.get(content, ())
        used = taken.get(content, 0)
        if used < len(rows):
            pairs.append((row, rows[used]))
            taken[content] = used + 1
    pairs_array = np.array(pairs, np.int64).reshape(-1, 2)
    return Matching(pairs_array[:, 0], pairs_array[:, 1])


def kmeans_labels(points: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """K-Means of the L2-normalised points (cosine geometry), k clamped to the number of points."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(points)))
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(normalize_rows(points))


def clustering_agreement(first: np.ndarray, second: np.ndarray, k: int, seed: int = 0) -> float:
    """Adjusted Rand index between K-Means with the same k on two representations of the same images (row-aligned):
    1 for the same partition, about 0 for unrelated ones."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(kmeans_labels(first, k, seed), kmeans_labels(second, k, seed)))
