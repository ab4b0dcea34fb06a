"""2-D projections of embeddings (PCA, t-SNE, UMAP) in cosine geometry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.decomposition import PCA

METHODS = ("pca", "tsne", "umap")
_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
PRE_REDUCTION_DIMENSIONS = 50
# Below this UMAP's spectral initialisation fails; a projection of so few points is PCA's to give anyway.
MIN_NONLINEAR_IMAGES = 4


@dataclass
class Projection:
    """2-D coordinates (N, 2) float32, the method that made them, and notes on adjusted parameters."""

    coordinates: np.ndarray
    method: str
    notes: list[str] = field(default_factory=list)


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm as float32; zero rows stay zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def pca_components(embeddings: np.ndarray, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first n principal components of the L2-normalised embeddings, as `project(..., "pca")` uses.

    Returns coordinates (N, n) float32 and the explained variance ratio (n,); n is clamped to min(N, D).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return _pca(normalize_rows(embeddings), n, seed)


def project(
    embeddings: np.ndarray,
    method: str,
    *,
    seed: int | None = 0,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> Projection:
    """Project the L2-normalised embeddings (N, D) to 2-D with "pca", "tsne" or "umap".

    Parameters invalid for small N are clamped and explained in `notes`; fewer than four images get PCA.
    A fixed `seed` makes the result reproducible (UMAP then runs single-threaded); None lets UMAP use all cores.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; expected one of {', '.join(METHODS)}")
    report = progress or (lambda message: None)
    vectors = normalize_rows(embeddings)
    notes: list[str] = []
    if method != "pca" and len(vectors) < MIN_NONLINEAR_IMAGES:
        notes.append(f"{_NAMES[method]} needs at least {MIN_NONLINEAR_IMAGES} images; showing PCA")
        method = "pca"
    if method == "pca":
        report("PCA")
        coordinates = _pca(vectors, 2, seed)[0]
        coordinates = np.pad(coordinates, ((0, 0), (0, 2 - coordinates.shape[1])))
    else:
        vectors = _pre_reduce(vectors, seed, report)
        if method == "tsne":
            coordinates = _tsne(vectors, seed, perplexity, notes, report)
        else:
            coordinates = _umap(vectors, seed, n_neighbors, min_dist, notes, report)
    return Projection(np.ascontiguousarray(coordinates, dtype=np.float32), method, notes)


def warm_up() -> None:
    """Compile UMAP's numba code in this process (about 10 s), so background jobs forked from it start at once
    (dashboard.analysis.warm runs it in the jobs' fork server)."""
    project(np.random.default_rng(0).standard_normal((2 * MIN_NONLINEAR_IMAGES + 8, 8)), "umap", n_neighbors=4)


def _pca(vectors: np.ndarray, n: int, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    n = min(n, *vectors.shape)
    if len(vectors) < 2:  # a single point has no variance to explain
        return np.zeros((len(vectors), n), np.float32), np.zeros(n)
    pca = PCA(n_components=n, random_state=seed)
    with np.errstate(invalid="ignore", divide="ignore"):  # identical rows: zero total variance
        coordinates = pca.fit_transform(vectors)
        ratio = np.nan_to_num(pca.explained_variance_ratio_)
    return coordinates.astype(np.float32), ratio


def _pre_reduce(vectors: np.ndarray, seed: int | None, report: Callable[[str], None]) -> np.ndarray:
    """PCA to 50 dimensions first: t-SNE and UMAP's neighbour search is the cost at 100k images."""
    n, d = vectors.shape
    if d <= PRE_REDUCTION_DIMENSIONS or n <= PRE_REDUCTION_DIMENSIONS:
        return vectors
    report(f"PCA to {PRE_REDUCTION_DIMENSIONS} dimensions")
    return _pca(vectors, PRE_REDUCTION_DIMENSIONS, seed)[0]


# Both methods use euclidean distance: on unit vectors it orders neighbours as cosine does, and after the
# PCA step (which centres the data) cosine distance would no longer be the embeddings' cosine.
def _tsne(
    vectors: np.ndarray, seed: int | None, perplexity: float, notes: list[str], report: Callable[[str], None]
) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(vectors)
    if perplexity >= n:
        # bhtsne's rule of thumb, 3 * perplexity <= N - 1, rather than the bare limit N - 1, whose
        # uniform affinities leave t-SNE nothing to arrange.
        clamped = max(1.0, (n - 1) / 3)
        notes.append(f"perplexity {perplexity:g} lowered to {clamped:g}: it must be below the {n} images")
        perplexity = clamped
    report("t-SNE")
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=-1)
    return tsne.fit_transform(vectors)


def _umap(
    vectors: np.ndarray,
    seed: int | None,
    n_neighbors: int,
    min_dist: float,
    notes: list[str],
    report: Callable[[str], None],
) -> np.ndarray:
    import numba

    # UMAP runs in forked background jobs, and numba's OpenMP layer aborts a forked child once its parent has
    # used it; the work-queue layer is fork-safe. Set before numba first starts its threads in this process.
    numba.config.THREADING_LAYER = "workqueue"
    import umap  # slow to import (numba): only when asked for

    n = len(vectors)
    if n_neighbors >= n:
        notes.append(f"n_neighbors {n_neighbors} lowered to {n - 1}: it must be below the {n} images")
        n_neighbors = n - 1
    report("UMAP")
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric="euclidean",
        random_state=seed,
        n_jobs=1 if seed is not None else -1,
    )
    return reducer.fit_transform(vectors)
