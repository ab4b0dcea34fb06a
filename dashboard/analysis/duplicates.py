"""Near-duplicates: every image's nearest neighbour by cosine similarity, the pairs above a threshold, and the groups
those pairs join (connected components).

Comparing every pair of 100,000 embeddings of 768 dimensions takes minutes on two cores. Above EXACT_LIMIT images the
pass compares each image only with the images of the cells nearest it: K-Means cells of the 50 principal components
(`DatasetView.reduced`), each image compared on its full normalised embedding with every image whose cell is one of
its PROBES nearest cells. Two near-copies lie close on the principal components too (a projection only shortens
distances), so they share a cell unless a cell boundary runs between them, which the second probe covers. Every
similarity it reports is exact; what it can miss is a pair split by the cells (`recall` measures it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dashboard.analysis.projection import normalize_rows

EXACT_LIMIT = 4_096  # up to this many images every pair is compared
PROBES = 2  # cells each image is compared with
KEEP = 16  # pairs above the lowest threshold kept per image (its most similar ones): a thousand copies of one
# picture make a connected group without a million pairs
BLOCK = 2_048  # rows of one matrix product
KMEANS_SAMPLE = 20_000  # images the cells are fitted on
ROUNDING = 1e-6  # float32 cosines of identical vectors may fall this short of 1: a threshold of 1 still holds them


@dataclass(frozen=True)
class DuplicatePass:
    """Every image's most similar other image, and the pairs at `lowest` or above (rows of the dataset, first < second,
    each pair once)."""

    nearest: np.ndarray  # (N,) int64: the row of each image's nearest neighbour (-1 for a dataset of one image)
    nearest_similarity: np.ndarray  # (N,) float32: its cosine similarity
    first: np.ndarray  # (P,) int64
    second: np.ndarray  # (P,) int64
    similarity: np.ndarray  # (P,) float32
    lowest: float
    cells: int  # 1: every pair was compared


@dataclass(frozen=True)
class DuplicateGroup:
    rows: list[int]  # dataset rows, the most similar image first
    highest: float  # the similarity of its closest pair


def duplicate_pass(embeddings: np.ndarray, reduced: np.ndarray, lowest: float, *, cells: int | None = None,
                   progress: Callable[[str], None] | None = None) -> DuplicatePass:
    """Nearest neighbours and pairs at `lowest` or above of the embeddings (N, D), as stored (normalised here).
    `reduced`: their principal components (N, <= 50), where the cells are made. `cells`: how many (default: one up
    to EXACT_LIMIT images, about sqrt(N) above)."""
    report = progress or (lambda stage: None)
    unit = normalize_rows(embeddings)
    count = len(unit)
    if cells is None:
        cells = 1 if count <= EXACT_LIMIT else round(math.sqrt(count))
    cells = max(1, min(cells, count))
    nearest = np.full(count, -1, np.int64)
    best = np.full(count, -np.inf, np.float32)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if cells == 1:
        home, probed = np.zeros(count, np.int64), np.zeros((count, 1), np.int64)
    else:
        report(f"making {cells} cells of the principal components")
        home, probed = _cells(reduced, cells)
    for cell in range(cells):
        if cell % 10 == 0:
            report(f"comparing images: cell {cell + 1} of {cells}" if cells > 1 else f"comparing {count:,} images")
        members = np.flatnonzero(home == cell)
        queries = np.flatnonzero((probed == cell).any(axis=1))
        if not len(members) or not len(queries):
            continue
        for start in range(0, len(queries), BLOCK):
            rows = queries[start:start + BLOCK]
            scores = unit[rows] @ unit[members].T
            scores[rows[:, None] == members[None, :]] = -np.inf  # an image is not its own neighbour
            column = scores.argmax(axis=1)
            top = scores[np.arange(len(rows)), column]
            better = top > best[rows]
            best[rows[better]], nearest[rows[better]] = top[better], members[column[better]]
            found.append(_pairs_above(scores, rows, members, lowest))
    first, second, similarity = _unique_pairs(found)
    best[nearest < 0] = np.nan
    return DuplicatePass(nearest, best, first, second, similarity, float(lowest), cells)


def _cells(reduced: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest cell (N,) and its PROBES nearest (N, PROBES), of K-Means cells fitted on a seeded sample."""
    from sklearn.cluster import KMeans

    points = np.asarray(reduced, np.float32)
    rng = np.random.default_rng(0)
    sample = points[rng.choice(len(points), min(len(points), KMEANS_SAMPLE), replace=False)]
    centres = KMeans(cells, n_init=1, max_iter=20, random_state=0).fit(sample).cluster_centers_.astype(np.float32)
    distances = (centres * centres).sum(axis=1)[None, :] - 2 * points @ centres.T
    probes = min(PROBES, cells)
    probed = np.argpartition(distances, probes - 1, axis=1)[:, :probes]
    home = probed[np.arange(len(points)), distances[np.arange(len(points))[:, None], probed].argmin(axis=1)]
    return home, probed


def _pairs_above(scores: np.ndarray, rows: np.ndarray, members: np.ndarray, lowest: float):
    """The (first, second, similarity) of a block's scores at `lowest` or above, at most KEEP per row."""
    hits = scores >= lowest - ROUNDING
    crowded = np.flatnonzero(hits.sum(axis=1) > KEEP)
    if len(crowded):
        kept = np.argpartition(-scores[crowded], KEEP - 1, axis=1)[:, :KEEP]
        hits[crowded] = False
        hits[crowded[:, None], kept] = True
    i, j = np.nonzero(hits)
    a, b = rows[i], members[j]
    return np.minimum(a, b), np.maximum(a, b), scores[i, j]


def _unique_pairs(found) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    first, second, similarity = (np.concatenate(parts) for parts in zip(*found))
    pairs, where = np.unique(np.stack([first, second], axis=1), axis=0, return_index=True)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), similarity[where].astype(np.float32)


def duplicate_groups(found: DuplicatePass, threshold: float) -> list[DuplicateGroup]:
    """The connected components of the pairs at `threshold` or above: images joined by a chain of such pairs,
    the largest groups first (then the closest). Only the cached pairs are read: nothing is compared again."""
    chosen = found.similarity >= threshold - ROUNDING
    first, second, similarity = found.first[chosen], found.second[chosen], found.similarity[chosen]
    if not len(first):
        return []
    count = len(found.nearest)
    graph = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    component = labels[first]
    highest = np.full(count, -np.inf, np.float32)
    np.maximum.at(highest, component, similarity)
    involved = np.unique(np.concatenate([first, second]))
    groups: dict[int, list[int]] = {}
    for row in involved[np.argsort(-found.nearest_similarity[involved], kind="stable")]:
        groups.setdefault(int(labels[row]), []).append(int(row))
    shown = [DuplicateGroup(rows, float(highest[label])) for label, rows in groups.items()]
    return sorted(shown, key=lambda group: (-len(group.rows), -group.highest, group.rows[0]))


def groups_holding(groups: list[DuplicateGroup], rows: np.ndarray) -> list[DuplicateGroup]:
    """The groups with at least one of these dataset rows, in their order."""
    wanted = set(np.asarray(rows).tolist())
    return [group for group in groups if not wanted.isdisjoint(group.rows)]


@dataclass(frozen=True)
class Recall:
    """How much of the exact answer a pass found, on a seeded sample of images compared with every other image."""

    sampled: int
    nearest: float  # the share of the sample whose nearest neighbour's similarity the pass found
    pairs: int  # the sample's pairs at the pass's lowest threshold or above
    pairs_found: int  # of which the pass found


def recall(embeddings: np.ndarray, found: DuplicatePass, sample: int = 1_000, seed: int = 0) -> Recall:
    """What the pass found of the exact nearest neighbours and pairs of a seeded sample of images."""
    unit = normalize_rows(embeddings)
    rows = np.random.default_rng(seed).choice(len(unit), min(sample, len(unit)), replace=False)
    scores = unit[rows] @ unit.T
    scores[np.arange(len(rows)), rows] = -np.inf
    nearest = float(np.mean(found.nearest_similarity[rows] >= scores.max(axis=1) - 1e-5))
    i, j = np.nonzero(scores >= found.lowest)
    a, b = np.minimum(rows[i], j), np.maximum(rows[i], j)
    known = set(zip(found.first.tolist(), found.second.tolist()))
    exact = set(zip(a.tolist(), b.tolist()))
    return Recall(len(rows), nearest, len(exact), len(exact & known))
