"""What the compare page shows, computed from a dataset view and the store (dashboard.analysis.comparison does the
arithmetic): mean-patch embeddings of a dataset (a background job, cached per generation), a reference's top-K by
CLS against mean of patches or the concatenation, a summary over many references, and a second dataset of the same
files embedded by another model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dashboard.analysis.comparison import (
    clustering_agreement,
    concatenated,
    jaccard,
    label_precision,
    match_by_hash,
    mean_overlap,
    mean_patch_tokens,
    overlap_at_k,
    top_k_rows,
)
from dashboard.data import DatasetStore, DatasetView
from dashboard.folder_cache import computed
from dashboard.urlstate import Param

MEAN_PATCH_LIMIT = 10_000  # images whose grids are averaged at most: a larger dataset is compared on a sample
SUMMARY_REFERENCES = 200  # references the summary averages over at most (a seeded sample)
K_DEFAULT, K_MAX = 10, 50
CLUSTERS_DEFAULT, CLUSTERS_MAX = 5, 30
REPRESENTATIONS = {"patches": "mean of patch tokens", "concat": "CLS + mean of patches (concatenated)"}
K = Param("k", K_DEFAULT, 1, K_MAX)
AGAINST = Param("against", "patches", choices=tuple(REPRESENTATIONS))
OTHER = Param("other", "")
CLUSTERS = Param("clusters", CLUSTERS_DEFAULT, 2, CLUSTERS_MAX)


@dataclass(frozen=True)
class MeanPatches:
    """The mean patch token of the compared images of a dataset generation: all of them, or a seeded sample of
    MEAN_PATCH_LIMIT in a larger dataset (rows into the view, in view order)."""

    rows: np.ndarray  # int64 rows of the view
    means: np.ndarray  # float32 (len(rows), embed dim)
    total: int  # images in the dataset
    reduced_dims: int | None  # the stored patch dims of a --patch-dims dataset, else None

    @property
    def sampled(self) -> bool:
        return len(self.rows) < self.total


def mean_patches_key(view: DatasetView) -> str:
    return f"mean-patches/{view.name}/{view.generation}/limit={MEAN_PATCH_LIMIT}"


def compared_rows(n_images: int, limit: int = MEAN_PATCH_LIMIT) -> np.ndarray:
    """Rows whose grids are averaged: all of them up to `limit`, else a seeded sample of `limit`, in row order."""
    if n_images <= limit:
        return np.arange(n_images, dtype=np.int64)
    return np.sort(np.random.default_rng(0).choice(n_images, limit, replace=False)).astype(np.int64)


def compute_mean_patches(store: DatasetStore, view: DatasetView,
                         progress: Callable[[int, int], None] | None = None) -> MeanPatches:
    """Read the compared images' grids in batches and average each. A reduced grid's mean is mapped back through
    the dataset's basis, which is linear: it is exactly the mean of the tokens the within-image page reconstructs.
    Images the indexer removed meanwhile are left out (the page then offers the new generation)."""
    rows = compared_rows(len(view))
    basis = store.patch_basis(view.name)
    found_ids, means, done = [], [], 0
    for ids, grids in store.patch_grid_batches(view.name, view.image_ids[rows]):
        found_ids.append(ids)
        batch = mean_patch_tokens(grids)
        means.append(batch if basis is None else batch @ basis.axes + basis.mean)
        done += len(grids)
        if progress:
            progress(done, len(rows))
    ids = np.concatenate(found_ids) if found_ids else np.empty(0, np.int64)
    positions = {int(image_id): row for row, image_id in zip(rows, view.image_ids[rows])}
    kept = np.array([positions[int(i)] for i in ids], np.int64)
    matrix = np.concatenate(means).astype(np.float32) if means else np.empty((0, view.embeddings.shape[1]), np.float32)
    return MeanPatches(kept, matrix, len(view), None if basis is None else basis.dims)


def cached_mean_patches(cache, store: DatasetStore, view: DatasetView,
                        progress: Callable[[int, int], None] | None = None) -> MeanPatches:
    key = mean_patches_key(view)
    return computed(cache, key, lambda: compute_mean_patches(store, view, progress))


@dataclass(frozen=True)
class Ranked:
    """One side of a comparison: image ids best first, their cosine scores and relative paths."""

    title: str
    image_ids: list[int]
    scores: list[float]
    relpaths: list[str]


@dataclass(frozen=True)
class SideBySide:
    cls: Ranked
    other: Ranked
    overlap: float  # overlap@K
    jaccard: float
    among: int  # images searched


def representation(view: DatasetView, patches: MeanPatches, against: str) -> np.ndarray:
    """The compared images' vectors under the representation `against` (row-aligned with patches.rows)."""
    if against == "patches":
        return patches.means
    return concatenated(view.embeddings[patches.rows], patches.means)


def side_by_side(store: DatasetStore, view: DatasetView, patches: MeanPatches, reference: int, k: int,
                 against: str) -> SideBySide:
    """The reference's top-K among the compared images by CLS and by `against`, itself left out. A reference
    outside a sample has its own grid read and averaged."""
    where = np.flatnonzero(view.image_ids[patches.rows] == reference)
    cls_matrix = view.embeddings[patches.rows]
    other_matrix = representation(view, patches, against)
    if len(where):
        exclude = where[:1]
        cls_query, other_query = cls_matrix[exclude], other_matrix[exclude]
    else:
        exclude = np.array([-1])
        cls_query = view.embeddings[[view.position(reference)]]
        own = mean_patch_tokens(store.patch_grid(reference)[None])
        other_query = own if against == "patches" else concatenated(cls_query, own)

    def ranked(title: str, matrix: np.ndarray, query: np.ndarray) -> Ranked:
        rows = top_k_rows(matrix, query, k, exclude=exclude)[0]
        scores = (matrix[rows] @ query[0]) / np.maximum(np.linalg.norm(matrix[rows], axis=1)
                                                         * np.linalg.norm(query[0]), 1e-12)
        dataset_rows = patches.rows[rows]
        return Ranked(title, [int(i) for i in view.image_ids[dataset_rows]], [float(s) for s in scores],
                      [view.relpaths[r] for r in dataset_rows])

    cls = ranked("CLS token", cls_matrix, cls_query)
    other = ranked(REPRESENTATIONS[against], other_matrix, other_query)
    return SideBySide(cls, other, overlap_at_k(cls.image_ids, other.image_ids), jaccard(cls.image_ids,
                                                                                         other.image_ids),
                      len(patches.rows))


@dataclass(frozen=True)
class Summary:
    """Agreement over a sample of references at one K: the mean overlap@K of CLS with each other representation,
    and each representation's precision@K of same-label neighbours (None without folder labels)."""

    k: int
    references: int
    overlap: dict[str, float]  # representation -> mean overlap@K with CLS
    precision: dict[str, float | None]  # "cls" and each representation -> mean precision@K


def summary_references(n_images: int, limit: int = SUMMARY_REFERENCES) -> np.ndarray:
    return compared_rows(n_images, limit)


def agreement_summary(view: DatasetView, patches: MeanPatches, k: int) -> Summary:
    references = summary_references(len(patches.rows))
    cls = view.embeddings[patches.rows]
    labels = [view.labels[r] for r in patches.rows]
    overlap, precision = {}, {"cls": label_precision(cls, labels, references, k)}
    for name in REPRESENTATIONS:
        matrix = representation(view, patches, name)
        overlap[name] = mean_overlap(cls, matrix, references, k)
        precision[name] = label_precision(matrix, labels, references, k)
    return Summary(k, len(references), overlap, precision)


def cached_summary(cache, view: DatasetView, patches: MeanPatches, k: int) -> Summary:
    key = f"{mean_patches_key(view)}/summary/k={k}"
    return computed(cache, key, lambda: agreement_summary(view, patches, k))


# Two datasets of the same files ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossMatch:
    """The images two datasets share (by content hash), and how K-Means with the same k agrees on them."""

    matched: np.ndarray  # (n, 2) int64 rows: first dataset, second dataset
    clusters: int
    agreement: float | None  # adjusted Rand index; None with fewer than 2 matched images


def cross_match(store: DatasetStore, first: DatasetView, second: DatasetView, clusters: int) -> CrossMatch:
    """Match by content hash, then cluster each side's embeddings of the matched images (their first 50 principal
    components, as the clustering page does) with K-Means and the same k."""
    hashes_first, hashes_second = store.content_hashes(first.name), store.content_hashes(second.name)
    matching = match_by_hash([hashes_first.get(int(i), "") for i in first.image_ids],
                             [hashes_second.get(int(i), "\0") for i in second.image_ids])
    agreement = None
    if len(matching) >= 2:
        agreement = clustering_agreement(first.reduced[matching.first], second.reduced[matching.second], clusters)
    return CrossMatch(np.stack([matching.first, matching.second], axis=1), clusters, agreement)


def cached_cross_match(cache, store: DatasetStore, first: DatasetView, second: DatasetView,
                       clusters: int) -> CrossMatch:
    key = (f"cross-match/{first.name}/{first.generation}/{second.name}/{second.generation}/k={clusters}")
    return computed(cache, key, lambda: cross_match(store, first, second, clusters))


@dataclass(frozen=True)
class CrossRetrieval:
    first: Ranked
    second: Ranked
    overlap: float  # overlap@K, the images taken as the same when their contents are
    matched_reference: bool  # whether the second dataset holds the reference's file


def cross_retrieval(first: DatasetView, second: DatasetView, match: CrossMatch, reference: int,
                    k: int) -> CrossRetrieval:
    """The reference's top-K among the matched images in each dataset (by its CLS embedding there)."""
    row = first.position(reference)
    where = np.flatnonzero(match.matched[:, 0] == row)
    if not len(where):
        empty = Ranked(second.name, [], [], [])
        return CrossRetrieval(empty, empty, 0.0, False)
    exclude = where[:1]

    def ranked(view: DatasetView, rows: np.ndarray) -> tuple[Ranked, np.ndarray]:
        matrix = view.embeddings[rows]
        found = top_k_rows(matrix, matrix[exclude], k, exclude=exclude)[0]
        query = matrix[exclude[0]]
        scores = (matrix[found] @ query) / np.maximum(np.linalg.norm(matrix[found], axis=1) * np.linalg.norm(query),
                                                      1e-12)
        chosen = rows[found]
        return Ranked(view.name, [int(i) for i in view.image_ids[chosen]], [float(s) for s in scores],
                      [view.relpaths[r] for r in chosen]), found

    first_ranked, first_found = ranked(first, match.matched[:, 0])
    second_ranked, second_found = ranked(second, match.matched[:, 1])
    return CrossRetrieval(first_ranked, second_ranked, overlap_at_k(first_found, second_found), True)
