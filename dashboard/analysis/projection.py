"""2-D projections of embeddings (PCA, t-SNE, UMAP) in cosine geometry."""

from __future__ import annotations

import functools
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

METHODS = ("pca", "tsne", "umap")
_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
REDUCED_DIMENSIONS = 50  # principal components kept for K-Means and before t-SNE and UMAP
TSNE_ITERATIONS = 750  # openTSNE's default: 250 with early exaggeration, then 500
TSNE_REPORT_EVERY = 50
# Below this UMAP's spectral initialisation fails; a projection of so few points is PCA's to give anyway.
MIN_NONLINEAR_IMAGES = 4
UMAP_EXACT_NEIGHBOURS = 4096  # below this UMAP searches neighbours exactly (here with scikit-learn), else NNDescent
# t-SNE and UMAP fit at most this many images, a seeded sample: every other image is placed where its nearest
# sampled image is (on the 50 components). t-SNE of 100,000 images took 3 minutes; a million would take hours.
NONLINEAR_SAMPLE = 50_000
PLACING_CHUNK = 20_000  # images placed at a time, between two progress reports
PCA_CHUNK = 65_536  # rows normalised at a time by pca_components (200 MB at 768 dimensions)


@dataclass
class Projection:
    """2-D coordinates (N, 2) float32, the method that made them, and notes on adjusted parameters."""

    coordinates: np.ndarray
    method: str
    notes: list[str] = field(default_factory=list)


def row_norms(matrix: np.ndarray) -> np.ndarray:
    """The L2 norm of every row (N,) float32."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {matrix.shape}")
    return np.sqrt(np.einsum("ij,ij->i", matrix, matrix))  # several times faster than np.linalg.norm here


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm as float32; zero rows stay zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = row_norms(matrix)[:, None]
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


@dataclass(frozen=True)
class PrincipalBasis:
    """The first principal components of the L2-normalised embeddings: each row's coordinates (N, n) float32, the
    explained variance ratio (n,), the axes (n, D) float32 and the mean (D,) float32 they are measured from."""

    coordinates: np.ndarray
    ratio: np.ndarray
    axes: np.ndarray
    mean: np.ndarray

    @property
    def placement(self) -> PcaBasis:
        """The axes, to place other rows on them."""
        return PcaBasis(self.mean, self.axes, float(self.ratio.sum()))


def pca_components(embeddings: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n principal components of the L2-normalised embeddings, as `project(..., "pca")` uses.

    Returns coordinates (N, n) float32 and the explained variance ratio (n,); n is clamped to min(N, D). Exact
    (no randomised solver), so the first components do not depend on n.
    """
    basis = principal_basis(embeddings, n)
    return basis.coordinates, basis.ratio


def principal_basis(embeddings: np.ndarray, n: int, *, chunk: int = PCA_CHUNK) -> PrincipalBasis:
    """pca_components with the axes and mean. With at least as many images as dimensions the rows are normalised
    `chunk` at a time and never all at once: memory beyond the result stays a chunk's (a million images of 768
    dimensions take 3 GB, and a normalised copy would take 3 GB more)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if len(embeddings) < max(2, np.shape(embeddings)[1]):
        return _pca(normalize_rows(embeddings), n)
    return _streamed_pca(embeddings, n, chunk)


@dataclass(frozen=True)
class PcaBasis:
    """The principal axes of L2-normalised embeddings, to place other rows on them: the fitted rows' mean (D,),
    the axes (n, D), and the share of the fitted rows' variance that the axes keep."""

    mean: np.ndarray
    axes: np.ndarray
    kept: float

    def coordinates(self, embeddings: np.ndarray) -> np.ndarray:
        """Rows' coordinates on the axes (N, n) float32, as principal_basis gives them for the rows it fitted."""
        return ((normalize_rows(embeddings) - self.mean) @ self.axes.T).astype(np.float32)

    def kept_of(self, embeddings: np.ndarray) -> float:
        """The share of these rows' squared distances from the fitted mean that the axes keep (1 for no spread)."""
        centred = normalize_rows(embeddings) - self.mean
        total = float(np.einsum("ij,ij->", centred, centred))
        on_axes = centred @ self.axes.T
        return float(np.einsum("ij,ij->", on_axes, on_axes)) / total if total > 0 else 1.0


def project(
    embeddings: np.ndarray,
    method: str,
    *,
    reduced: np.ndarray | None = None,
    seed: int | None = 0,
    perplexity: float = 30.0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    progress: Callable[[str], None] | None = None,
    sample: int = NONLINEAR_SAMPLE,
) -> Projection:
    """Project the L2-normalised embeddings (N, D) to 2-D with "pca", "tsne" or "umap".

    All three start from the first 50 principal components of the normalised embeddings (PCA keeps two of them):
    pass them as `reduced` when they are at hand (`pca_components(embeddings, REDUCED_DIMENSIONS)[0]`).
    Parameters invalid for small N are clamped and explained in `notes`; fewer than four images get PCA.
    A fixed `seed` makes the result reproducible (UMAP then runs single-threaded); None lets UMAP use all cores.
    t-SNE and UMAP of more than `sample` images fit a seeded sample of that many and place the others at their
    nearest sampled image, which a note says.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r}; expected one of {', '.join(METHODS)}")
    report = progress or (lambda message: None)
    if reduced is None:
        report(f"PCA to {REDUCED_DIMENSIONS} dimensions")
        reduced = pca_components(embeddings, REDUCED_DIMENSIONS)[0]
    vectors = np.asarray(reduced, dtype=np.float32)
    notes: list[str] = []
    if method != "pca" and len(vectors) < MIN_NONLINEAR_IMAGES:
        notes.append(f"{_NAMES[method]} needs at least {MIN_NONLINEAR_IMAGES} images; showing PCA")
        method = "pca"
    if method == "pca":
        report("PCA")
        coordinates = vectors[:, :2]
        coordinates = np.pad(coordinates, ((0, 0), (0, 2 - coordinates.shape[1])))
    else:
        rows = np.arange(len(vectors))
        if len(vectors) > sample:
            rows = np.sort(np.random.default_rng(0).choice(len(vectors), sample, replace=False))  # t-SNE: any seed
        if method == "tsne":
            fitted = _tsne(vectors[rows], seed, perplexity, notes, report)
        else:
            fitted = _umap(vectors[rows], seed, n_neighbors, min_dist, notes, report)
        coordinates = fitted if len(rows) == len(vectors) else place_by_nearest(vectors, rows, fitted, report)
        if len(rows) < len(vectors):
            notes.append(f"{_NAMES[method]} of a sample of {len(rows):,} images; each of the other "
                         f"{len(vectors) - len(rows):,} is placed where its nearest sampled image is")
    return Projection(np.ascontiguousarray(coordinates, dtype=np.float32), method, notes)


def place_by_nearest(vectors: np.ndarray, rows: np.ndarray, fitted: np.ndarray,
                     report: Callable[[str], None] = lambda message: None) -> np.ndarray:
    """2-D coordinates (N, 2) for all `vectors` from those `fitted` (len(rows), 2) for `vectors[rows]`: every
    other vector takes the coordinates of its nearest (euclidean) row of `rows`."""
    from sklearn.metrics import pairwise_distances_argmin

    coordinates = np.empty((len(vectors), fitted.shape[1]), np.float32)
    coordinates[rows] = fitted
    others = np.setdiff1d(np.arange(len(vectors)), rows)
    sampled = np.asarray(vectors[rows], dtype=np.float32)
    for start in range(0, len(others), PLACING_CHUNK):
        report(f"placing the other images: {start:,} of {len(others):,}")
        chunk = others[start:start + PLACING_CHUNK]
        coordinates[chunk] = fitted[pairwise_distances_argmin(np.asarray(vectors[chunk], np.float32), sampled)]
    return coordinates


def warm_up() -> None:
    """Load UMAP's compiled code (compiling it the first time on a machine, 20 s or more) and openTSNE in this
    process, so the background jobs forked from it start at once (the job server and Celery workers run it).

    Not warmed: the approximate neighbour search (pynndescent) that UMAP uses from UMAP_EXACT_NEIGHBOURS images
    on. Its main function cannot be cached on disk, so warming it would cost every start 15 s or more; the
    UMAP jobs that need it compile it then, in a projection that takes minutes anyway."""
    points = np.random.default_rng(0).standard_normal((2 * MIN_NONLINEAR_IMAGES + 8, 8))
    project(points, "umap", n_neighbors=4)
    project(points, "tsne", perplexity=2)


def _pca(vectors: np.ndarray, n: int) -> PrincipalBasis:
    """PCA of `vectors`, a matrix this function may overwrite."""
    n = min(n, *vectors.shape)
    if len(vectors) < 2:  # a single point has no variance to explain
        mean = vectors.mean(axis=0).astype(np.float32) if len(vectors) else np.zeros(vectors.shape[1], np.float32)
        return PrincipalBasis(np.zeros((len(vectors), n), np.float32), np.zeros(n),
                              np.eye(n, vectors.shape[1], dtype=np.float32), mean)
    # Exact solver for fewer images than dimensions (more use _streamed_pca); copy=False centres in place.
    pca = PCA(n_components=n, svd_solver="full", copy=False)
    with np.errstate(invalid="ignore", divide="ignore"):  # identical rows: zero total variance
        coordinates = pca.fit_transform(vectors)
        ratio = np.nan_to_num(pca.explained_variance_ratio_)
    return PrincipalBasis(coordinates.astype(np.float32), ratio, pca.components_.astype(np.float32),
                          pca.mean_.astype(np.float32))


def _streamed_pca(embeddings: np.ndarray, n: int, chunk: int) -> PrincipalBasis:
    """PCA of the normalised rows from their mean and covariance, summed a chunk at a time (float64), then the
    D x D eigendecomposition: what scikit-learn's "covariance_eigh" solver does, without a centred copy."""
    count, dim = embeddings.shape
    n = min(n, count, dim)
    total, products = np.zeros(dim), np.zeros((dim, dim))
    for start in range(0, count, chunk):
        rows = normalize_rows(embeddings[start:start + chunk])
        total += rows.sum(axis=0, dtype=np.float64)
        products += (rows.T @ rows).astype(np.float64)
    mean = total / count
    covariance = products / count - np.outer(mean, mean)
    variances, vectors = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1][:n]
    axes = vectors[:, order].T  # (n, D), as scikit-learn signs them: each axis's largest entry positive
    axes *= np.sign(axes[np.arange(n), np.argmax(np.abs(axes), axis=1)])[:, None]
    axes32, shift = axes.astype(np.float32), (axes @ mean).astype(np.float32)
    coordinates = np.empty((count, n), np.float32)
    for start in range(0, count, chunk):
        coordinates[start:start + chunk] = normalize_rows(embeddings[start:start + chunk]) @ axes32.T - shift
    kept = np.clip(variances[order], 0.0, None)
    whole = np.clip(variances, 0.0, None).sum()
    return PrincipalBasis(coordinates, kept / whole if whole > 0 else np.zeros(n), axes32, mean.astype(np.float32))


# Both methods use euclidean distance: on unit vectors it orders neighbours as cosine does, and after the
# PCA step (which centres the data) cosine distance would no longer be the embeddings' cosine.
def _tsne(
    vectors: np.ndarray, seed: int | None, perplexity: float, notes: list[str], report: Callable[[str], None]
) -> np.ndarray:
    # openTSNE rather than scikit-learn's: its FFT-accelerated gradients make 100,000 images a matter of minutes,
    # and it reports its iterations. One thread: a background job should not crowd out the web workers.
    from openTSNE import TSNE

    n = len(vectors)
    if 3 * perplexity > n - 1:
        # Each image needs 3 x perplexity neighbours (bhtsne's rule, which openTSNE applies too).
        clamped = max(1.0, (n - 1) / 3)
        notes.append(f"perplexity {perplexity:g} lowered to {clamped:g}: it needs 3 x perplexity other images, "
                     f"and there are {n - 1}")
        perplexity = clamped
    report("t-SNE: nearest neighbours")
    tsne = TSNE(n_components=2, perplexity=perplexity, initialization="pca", random_state=seed, n_jobs=1,
                callbacks=_IterationReport(TSNE_ITERATIONS, report), callbacks_every_iters=TSNE_REPORT_EVERY)
    return np.asarray(tsne.fit(np.ascontiguousarray(vectors, dtype=np.float64)))


class _IterationReport:
    """An openTSNE callback that reports how far the optimisation has come (its two phases in one count)."""

    def __init__(self, total: int, report: Callable[[str], None]) -> None:
        self.done, self.total, self.report = 0, total, report

    def __call__(self, _iteration: int, _error: float, _embedding: np.ndarray) -> bool:
        self.done += TSNE_REPORT_EVERY
        self.report(f"t-SNE: iteration {self.done} of {self.total}")
        return False  # go on


def _umap(
    vectors: np.ndarray,
    seed: int | None,
    n_neighbors: int,
    min_dist: float,
    notes: list[str],
    report: Callable[[str], None],
) -> np.ndarray:
    umap_class = _umap_class()
    n = len(vectors)
    if n_neighbors >= n:
        notes.append(f"n_neighbors {n_neighbors} lowered to {n - 1}: it must be below the {n} images")
        n_neighbors = n - 1
    report("UMAP: nearest neighbours")
    reducer = umap_class(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric="euclidean",
        random_state=seed,
        n_jobs=1 if seed is not None else -1,
        precomputed_knn=_exact_neighbours(vectors, n_neighbors) if n < UMAP_EXACT_NEIGHBOURS else (None, None, None),
        tqdm_kwds={"disable": False, "file": _EpochReport(report), "bar_format": "{n}/{total}",
                   "mininterval": 0.5},
    )
    with warnings.catch_warnings():
        # precomputed neighbours come without a search index, which only transform() (never used here) needs
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        return reducer.fit_transform(vectors)


def _exact_neighbours(vectors: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's n_neighbors nearest (itself first), as UMAP takes them. Below UMAP's own threshold for
    approximate search it would compute all distances through a Python callback per pair (minutes for 3,000
    points); scikit-learn's exact search takes a fraction of a second there."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(vectors).kneighbors(vectors)
    return indices.astype(np.int32), distances.astype(np.float32)


class _EpochReport:
    """A file for UMAP's progress bar (tqdm writes "done/total" here): reports how many epochs have run."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report

    def write(self, text: str) -> None:
        found = re.search(r"(\d+)/(\d+)", text)
        if found:
            self.report(f"UMAP: epoch {found[1]} of {found[2]}")

    def flush(self) -> None:
        pass


@functools.cache
def _umap_class():
    """UMAP's estimator, imported (slow: numba) only when asked for, with its compiled code cached on disk.

    UMAP runs in forked background jobs, and numba's OpenMP layer aborts a forked child once its parent has used
    it; the work-queue layer is fork-safe. Set before numba first starts its threads in this process. Most of
    UMAP's numba functions are not marked for caching, so every new process compiled them again (15 s or more);
    here each is cached in numba's cache folder, so only the first process on a machine compiles them.
    """
    import numba

    numba.config.THREADING_LAYER = "workqueue"
    if not numba.config.CACHE_DIR:
        numba.config.CACHE_DIR = str(numba_cache_dir())
    import umap
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ("umap", "pynndescent"):
            for value in list(vars(module).values()):
                if isinstance(value, CPUDispatcher):
                    value.enable_caching()
    return umap.UMAP


def numba_cache_dir() -> Path:
    """Where numba keeps compiled code unless NUMBA_CACHE_DIR says otherwise: one folder per user, kept across
    restarts and shared by every dinoscope process."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dinoscope" / "numba"
