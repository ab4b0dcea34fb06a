"""Near-duplicates: every image's similarity to its nearest other image, and the groups of images joined by a chain of
pairs whose cosine similarity is at a threshold or above (connected components).

The pass is exact: it compares every pair of images (the upper triangle of the similarity matrix, in tiles of at most
`rows` x `columns`), so no pair at `lowest` or above is missed, however the images lie. Its speed comes from a screen:
above BF16_FROM images, on a CPU that multiplies bfloat16 natively (AMX or AVX-512 BF16), the tiles are multiplied in
bf16, several times faster than float32, and every pair the screen puts at `lowest` minus its error bound or above
is compared again in float32 on the stored embeddings; the pass reports only those float32 similarities. The bound
for unit vectors x, y of D dimensions: rounding them to bf16 (8 significant bits) scales each coordinate by (1 + d),
|d| <= 2^-8, which moves x.y by at most (2^-7 + 2^-16) sum |x_i y_i| <= 2^-7 + 2^-16 (Cauchy-Schwarz); float32
accumulation (torch's CPU kernels accumulate bf16 products in float32) adds at most D 2^-24, the float32 comparison
as much again, and rounding the product to bf16 at most 2^-8: 0.0118 in all for D = 768. Elsewhere the screen is
the float32 product itself (2 D 2^-24 from the comparison). So a pair at `lowest` or above always passes the screen.

An image's nearest similarity at `lowest` or above is exact (its pair passed the screen); below, where no threshold
can be set, it is the screen's, within its error bound (and kept below `lowest`).

The pairs at `lowest` or above are kept as a maximum spanning forest, at most N - 1 pairs however many there are: at
every threshold t >= lowest, the forest's pairs at t or above join exactly the groups that all pairs at t or above
join, with the same closest pair (a pair left out closes a cycle of forest pairs at least as similar as itself). It
is built as the tiles go: the forest of (the forest so far + new pairs) is a forest of all of them.

The cost is the same for every dataset of N images, N^2 / 2 similarities, except in a tile where the screen finds more
than `keep` pairs per row on average (thousands of copies of one picture): it is recomputed in float32 and each image
keeps only its `keep` most similar of that tile. `crowded` counts the images that lost pairs so: their groups at a
low threshold may be split.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from dashboard.analysis.projection import row_norms

ROWS = 2_048  # rows of one tile of the similarity matrix
COLUMNS = 16_384  # its columns at most (a bf16 tile: 64 MiB)
KEEP = 16  # pairs per row of a crowded tile (and on average, what makes a tile crowded)
BF16_FROM = 16_384  # images from which a bf16 screen pays for importing torch
FOREST_BUFFER = 1_000_000  # pairs gathered before they are reduced to the forest
VERIFY_CHUNK = 16_384  # pairs compared in float32 at a time
ROUNDING = 1e-6  # float32 cosines of identical vectors may fall this short of 1: a threshold of 1 still holds them
MASKED = -2.0  # below every cosine: the lower triangle of a tile on the diagonal


@dataclass(frozen=True)
class DuplicatePass:
    """Every image's nearest-neighbour similarity, and a maximum spanning forest of the pairs at `lowest` or above
    (rows of the dataset, first < second)."""

    nearest_similarity: np.ndarray  # (N,) float32 (nan for a dataset of one image)
    first: np.ndarray  # (P,) int64, P < N
    second: np.ndarray  # (P,) int64
    similarity: np.ndarray  # (P,) float32: each pair's float32 cosine similarity
    lowest: float
    screen: str  # "bfloat16" or "float32"
    keep: int
    crowded: int  # images that kept only their `keep` most similar pairs of a crowded tile


@dataclass(frozen=True)
class DuplicateGroup:
    rows: list[int]  # dataset rows, the most similar image first
    highest: float  # the similarity of its closest pair


def duplicate_pass(embeddings: np.ndarray, lowest: float, *, norms: np.ndarray | None = None,
                   precision: str = "auto", rows: int = ROWS, columns: int = COLUMNS, keep: int = KEEP,
                   progress: Callable[[str], None] | None = None) -> DuplicatePass:
    """Nearest-neighbour similarities and the forest of the pairs at `lowest` or above of the embeddings (N, D) as
    stored (`norms`: their L2 norms, computed if not given). `precision`: the screen's, "bfloat16", "float32" or
    "auto" (bf16 above BF16_FROM images where the CPU has it natively)."""
    if not 0.1 <= lowest <= 1.0:
        raise ValueError(f"lowest must lie between 0.1 and 1, not {lowest}")
    report = progress or (lambda stage: None)
    count = len(embeddings)
    norms = row_norms(embeddings) if norms is None else np.asarray(norms, np.float32)
    if precision == "auto":
        precision = "bfloat16" if count > BF16_FROM and _native_bf16() else "float32"
    with _torch_threads_as_blas() if precision == "bfloat16" else nullcontext():
        comparison = _Comparison(embeddings, norms, _Screen(embeddings, norms, precision), lowest, keep, rows)
        for top in range(0, count, rows):
            report(f"comparing pairs: {1 - ((count - top) / count) ** 2:.0%} done")
            for left in range(top, count, columns):
                comparison.tile(slice(top, min(top + rows, count)), slice(left, min(left + columns, count)))
    first, second, similarity = comparison.forest.pairs()
    below = np.nextafter(np.float32(lowest - ROUNDING), np.float32(-np.inf))
    nearest = np.where(comparison.exact >= lowest - ROUNDING, comparison.exact, np.minimum(comparison.screened, below))
    nearest[~np.isfinite(nearest)] = np.nan
    return DuplicatePass(nearest.astype(np.float32), first, second, similarity, float(lowest), precision, keep,
                         int(comparison.crowded.sum()))


class _Comparison:
    """What the tiles found so far: every image's nearest similarity on the screen and compared in float32, the
    images of crowded tiles, and the forest of the pairs at `lowest` or above."""

    def __init__(self, embeddings: np.ndarray, norms: np.ndarray, screen: _Screen, lowest: float, keep: int,
                 rows: int):
        self.embeddings, self.norms, self.screen, self.lowest, self.keep = embeddings, norms, screen, lowest, keep
        self.floor = lowest - ROUNDING - screen.error  # a pair at `lowest` or above screens at this or above
        self.screened = np.full(len(norms), -np.inf, np.float32)
        self.exact = np.full(len(norms), -np.inf, np.float32)
        self.crowded = np.zeros(len(norms), bool)
        self.forest = _Forest(len(norms))
        self.triangle = np.tril(np.ones((rows, rows), bool))

    def tile(self, rows: slice, columns: slice) -> None:
        screen, size = self.screen, rows.stop - rows.start
        tile = screen.tile(rows, columns)
        diagonal = self.triangle[:size, :size] if columns.start == rows.start else None
        if diagonal is not None:  # an image is not its own neighbour, and each pair counts once
            tile[:, :size][diagonal] = screen.masked
        row_best, column_best = screen.maxima(tile, 1), screen.maxima(tile, 0)
        np.maximum(self.screened[rows], row_best, out=self.screened[rows])
        np.maximum(self.screened[columns], column_best, out=self.screened[columns])
        hit_rows = np.flatnonzero(row_best >= self.floor)
        passed = tile[hit_rows] >= screen.key(self.floor)
        if np.count_nonzero(passed) > self.keep * size:
            exact_tile = screen.exact_tile(tile, self.embeddings, self.norms, rows, columns)
            if diagonal is not None:
                exact_tile[:, :size][diagonal] = MASKED
            first, second, similarity = _crowded_pairs(exact_tile, rows.start, columns.start, self.lowest,
                                                       self.keep, self.crowded)
            np.maximum(self.exact[rows], exact_tile.max(axis=1), out=self.exact[rows])
            np.maximum(self.exact[columns], exact_tile.max(axis=0), out=self.exact[columns])
        else:
            i, j = np.nonzero(passed)
            first, second = rows.start + hit_rows[i], columns.start + j
            similarity = _cosines(self.embeddings, self.norms, first, second)
            np.maximum.at(self.exact, first, similarity)
            np.maximum.at(self.exact, second, similarity)
        chosen = similarity >= self.lowest - ROUNDING
        self.forest.add(first[chosen], second[chosen], similarity[chosen])


def _native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively; elsewhere torch emulates it, slower than float32 (the indexer
    asks the same of its precision "auto")."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextmanager
def _torch_threads_as_blas():
    """torch's threads while the pass runs: as many as numpy's BLAS may use (a background job sets that limit, where
    a torch imported inside the job would keep the job server's one thread), restored after."""
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    torch.set_num_threads(max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"),
                              default=before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Screen:
    """The unit embeddings in the screen's precision, and its tiles of similarities: float32, or bf16 read as int16
    keys (bf16's bits: for values above zero their order is the values' order, and numpy reduces int16 fast)."""

    def __init__(self, embeddings: np.ndarray, norms: np.ndarray, precision: str):
        self.bf16 = precision == "bfloat16"
        dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
        if precision == "float32":
            self.error = 2 * dim * 2.0**-24
            self.matrix = np.empty(embeddings.shape, np.float32)
        elif self.bf16:
            import torch

            self.error = 2.0**-7 + 2.0**-16 + 2.0**-8 + dim * 2.0**-23  # D 2^-24 twice: screen and comparison
            self.matrix, self.int16 = torch.empty(embeddings.shape, dtype=torch.bfloat16), torch.int16
        else:
            raise ValueError(f"precision must be auto, bfloat16 or float32, not {precision!r}")
        for start in range(0, len(embeddings), VERIFY_CHUNK):
            part = slice(start, start + VERIFY_CHUNK)
            unit = _unit(np.asarray(embeddings[part], np.float32), norms[part])
            self.matrix[part] = torch.from_numpy(unit) if self.bf16 else unit
        self.masked = self.key(MASKED)
        self.buffer = None

    def key(self, value: float):
        """What the tile holds for `value`; for bf16 rounded down (a screen's threshold lets more pairs pass)."""
        if not self.bf16:
            return np.float32(value)
        return np.int16(np.array(value, np.float32).view(np.int32) >> 16)

    def tile(self, rows: slice, columns: slice) -> np.ndarray:
        """The similarities of these rows and columns, written over the previous tile (a fresh product of this size
        costs its page faults: about half the bf16 multiplication's time)."""
        a, b = self.matrix[rows], self.matrix[columns]
        size = len(a) * len(b)
        if self.buffer is None or len(self.buffer) < size:
            self.buffer = self.matrix.new_empty(size) if self.bf16 else np.empty(size, np.float32)
        product = self.buffer[:size].reshape(len(a), len(b))
        if self.bf16:
            import torch

            return torch.mm(a, b.T, out=product).view(self.int16).numpy()
        return np.matmul(a, b.T, out=product)

    def maxima(self, tile: np.ndarray, axis: int) -> np.ndarray:
        """The tile's largest similarity along `axis`, as float32."""
        best = tile.max(axis=axis)
        if not self.bf16:
            return best
        values = _keys(best)
        negative = np.flatnonzero(best < 0)  # nothing above zero: there the int16 order is not the values' order
        if len(negative):
            values[negative] = _keys(tile[negative] if axis == 1 else tile[:, negative]).max(axis=axis)
        return values

    def exact_tile(self, tile: np.ndarray, embeddings: np.ndarray, norms: np.ndarray, rows: slice,
                   columns: slice) -> np.ndarray:
        """The tile's float32 similarities (the float32 screen's own tile), unmasked."""
        if not self.bf16:
            return tile
        return (_unit(np.asarray(embeddings[rows], np.float32), norms[rows])
                @ _unit(np.asarray(embeddings[columns], np.float32), norms[columns]).T)


def _keys(keys: np.ndarray) -> np.ndarray:
    """bf16 bits (int16) as float32."""
    return (keys.astype(np.int32) << 16).view(np.float32)


def _unit(matrix: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; zero rows stay zero."""
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return matrix * scale[:, None]


def _cosines(embeddings: np.ndarray, norms: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The float32 cosine similarity of each pair of rows."""
    found = np.empty(len(first), np.float32)
    for start in range(0, len(first), VERIFY_CHUNK):
        a, b = first[start:start + VERIFY_CHUNK], second[start:start + VERIFY_CHUNK]
        x = _unit(np.asarray(embeddings[a], np.float32), norms[a])
        y = _unit(np.asarray(embeddings[b], np.float32), norms[b])
        found[start:start + len(a)] = np.einsum("ij,ij->i", x, y)
    return found


def _crowded_pairs(exact_tile: np.ndarray, top: int, left: int, lowest: float, keep: int, crowded: np.ndarray):
    """A crowded tile's pairs at `lowest` or above, but of an image with more than `keep` of them only its `keep`
    most similar (a pair stays if one of its images keeps it); those images are marked in `crowded`."""
    hits = exact_tile >= lowest - ROUNDING
    kept = np.zeros_like(hits)
    for similarities, found, marks, offset in ((exact_tile, hits, kept, top), (exact_tile.T, hits.T, kept.T, left)):
        full = found.sum(axis=1) > keep
        marks[~full] |= found[~full]
        lines = np.flatnonzero(full)
        best = np.argpartition(-similarities[lines], keep - 1, axis=1)[:, :keep]
        marks[lines[:, None], best] = True
        crowded[offset + lines] = True
    i, j = np.nonzero(kept)
    return top + i, left + j, exact_tile[i, j]


class _Forest:
    """A maximum spanning forest of the pairs added so far, reduced whenever FOREST_BUFFER pairs wait."""

    def __init__(self, count: int):
        self.count = count
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.waiting = 0

    def add(self, first: np.ndarray, second: np.ndarray, similarity: np.ndarray) -> None:
        if len(first):
            self.parts.append((first, second, similarity))
            self.waiting += len(first)
        if self.waiting > FOREST_BUFFER:
            self.parts, self.waiting = [self.pairs()], 0

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        first, second, similarity = (np.concatenate(part) for part in zip(*self.parts))
        # Each pair comes from one tile only, so none is summed twice; 2 - similarity is above zero (an edge).
        graph = coo_matrix((2.0 - similarity.astype(np.float64), (first, second)), shape=(self.count,) * 2)
        tree = minimum_spanning_tree(graph.tocsr()).tocoo()
        first, second = np.minimum(tree.row, tree.col).astype(np.int64), np.maximum(tree.row, tree.col).astype(np.int64)
        order = np.lexsort((second, first))
        return first[order], second[order], (2.0 - tree.data[order]).astype(np.float32)


def duplicate_groups(found: DuplicatePass, threshold: float) -> list[DuplicateGroup]:
    """The connected components of the pairs at `threshold` or above: images joined by a chain of such pairs,
    the largest groups first (then the closest). Only the cached forest is read: nothing is compared again."""
    chosen = found.similarity >= threshold - ROUNDING
    first, second, similarity = found.first[chosen], found.second[chosen], found.similarity[chosen]
    if not len(first):
        return []
    count = len(found.nearest_similarity)
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
