"""Between two images' patch grids: which patches match (why two images are similar), and where a region of one
image appears in others. Plain numpy on stored grids (grid height, grid width, D); no model runs.

Patch correspondences are mutual nearest neighbours: patch i of A and patch j of B match when j is i's most
cosine-similar patch in B and i is j's in A. The patch match of the pair is the mean cosine of its mutual matches;
a matched patch's contribution is its match's cosine as a share of the sum over all matches (so each image's
contributions add up to 1), an unmatched patch's is 0. Mutual matching keeps only the correspondences both images
agree on, so a patch that is merely "least dissimilar" to everything (sky, background) does not match a crowd.

A region query compares a block of one image's tokens with a candidate grid at every placement of the same size
(translation only: the grid is at the model's input scale in both images) and scores the candidate by its best
placement: the mean over the region's cells of the cosine between each region token and the token under it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from dashboard.analysis.projection import normalize_rows


@dataclass(frozen=True)
class Correspondences:
    """Mutual nearest-neighbour patch matches of grid A with grid B, strongest first."""

    cells_a: np.ndarray  # (M, 2) int: (row, col) in A of each match
    cells_b: np.ndarray  # (M, 2) int: (row, col) in B
    scores: np.ndarray  # (M,) float32 cosine of each match, descending
    contribution_a: np.ndarray  # (rows A, cols A) float32 share of the patch match, 0 where unmatched
    contribution_b: np.ndarray  # (rows B, cols B)

    @property
    def patch_match(self) -> float:
        """The mean cosine of the mutual matches (0 without any)."""
        return float(self.scores.mean()) if len(self.scores) else 0.0


def _flat(grid: np.ndarray) -> np.ndarray:
    return normalize_rows(np.asarray(grid).reshape(-1, np.asarray(grid).shape[-1]))


def mutual_matches(grid_a: np.ndarray, grid_b: np.ndarray) -> Correspondences:
    """The mutual nearest neighbours between two patch grids of the same D (cosine between patch tokens)."""
    a, b = _flat(grid_a), _flat(grid_b)
    similarity = a @ b.T  # (cells A, cells B)
    best_in_b = similarity.argmax(axis=1)
    best_in_a = similarity.argmax(axis=0)
    matched_a = np.flatnonzero(best_in_a[best_in_b] == np.arange(len(a)))
    matched_b = best_in_b[matched_a]
    scores = similarity[matched_a, matched_b]
    order = np.argsort(-scores, kind="stable")
    matched_a, matched_b, scores = matched_a[order], matched_b[order], scores[order]
    total = float(scores.sum())
    shares = scores / total if total > 0 else np.zeros_like(scores)
    contribution_a = np.zeros(len(a), np.float32)
    contribution_b = np.zeros(len(b), np.float32)
    contribution_a[matched_a] = shares
    contribution_b[matched_b] = shares
    cols_a, cols_b = grid_a.shape[1], grid_b.shape[1]
    return Correspondences(np.stack(np.divmod(matched_a, cols_a), axis=1), np.stack(np.divmod(matched_b, cols_b),
                                                                                     axis=1),
                           scores.astype(np.float32), contribution_a.reshape(grid_a.shape[:2]),
                           contribution_b.reshape(grid_b.shape[:2]))


@dataclass(frozen=True)
class Region:
    """A block of patch cells of one image: rows top..bottom - 1, columns left..right - 1."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def tokens(self, grid: np.ndarray) -> np.ndarray:
        return np.asarray(grid)[self.top:self.bottom, self.left:self.right]


def region_of_box(x0: float, x1: float, y0: float, y1: float, rows: int, cols: int) -> Region:
    """The cells whose centres a box (in fractions of the image's width and height, either order) holds; the cell
    under the box's centre when it holds none."""
    x0, x1 = sorted((min(max(x0, 0.0), 1.0), min(max(x1, 0.0), 1.0)))
    y0, y1 = sorted((min(max(y0, 0.0), 1.0), min(max(y1, 0.0), 1.0)))
    left, right = int(np.ceil(x0 * cols - 0.5)), int(np.floor(x1 * cols - 0.5)) + 1
    top, bottom = int(np.ceil(y0 * rows - 0.5)), int(np.floor(y1 * rows - 0.5)) + 1
    if right <= left:
        left = min(int((x0 + x1) / 2 * cols), cols - 1)
        right = left + 1
    if bottom <= top:
        top = min(int((y0 + y1) / 2 * rows), rows - 1)
        bottom = top + 1
    return Region(top, left, bottom, right)


@dataclass(frozen=True)
class RegionMatch:
    """Where a region was found in an image: its best placement's top-left cell and mean cosine."""

    image_id: int
    score: float
    row: int
    col: int


def best_placement(region_tokens: np.ndarray, grid: np.ndarray) -> tuple[float, int, int]:
    """(mean cosine, top row, left column) of the region's block at its best place in `grid`."""
    block_rows, block_cols, dim = region_tokens.shape
    rows, cols = grid.shape[:2]
    if block_rows > rows or block_cols > cols:
        return -1.0, 0, 0
    flat = np.asarray(grid, dtype=np.float32).reshape(-1, dim)
    norms = np.linalg.norm(flat, axis=1)
    similarity = _flat(region_tokens) @ flat.T
    similarity = np.divide(similarity, norms, out=np.zeros_like(similarity), where=norms > 0)
    similarity = similarity.reshape(block_rows, block_cols, rows, cols)
    places = np.zeros((rows - block_rows + 1, cols - block_cols + 1), np.float32)
    for i in range(block_rows):
        for j in range(block_cols):
            places += similarity[i, j, i:i + places.shape[0], j:j + places.shape[1]]
    places /= block_rows * block_cols
    row, col = np.unravel_index(int(places.argmax()), places.shape)
    return float(places[row, col]), int(row), int(col)


def rank_by_region(region_tokens: np.ndarray, candidates: Iterable[tuple[int, np.ndarray]],
                   progress: Callable[[int], None] | None = None) -> list[RegionMatch]:
    """Every candidate (image id, grid) scored by the region's best placement in it, best first; `progress` is
    called with the number of candidates done so far (after each)."""
    found = []
    for done, (image_id, grid) in enumerate(candidates, start=1):
        found.append(RegionMatch(int(image_id), *best_placement(region_tokens, grid)))
        if progress is not None:
            progress(done)
    return sorted(found, key=lambda match: -match.score)
