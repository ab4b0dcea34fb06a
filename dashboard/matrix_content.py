"""What a dataset's shared generation holds (dashboard.shared_matrix), built whole from the database or from the
previous generation.

A generation holds the images in relative-path order: `image_ids`, `sizes`, `label_codes` (into the document's
distinct `labels`), the paths (the document's `relpaths`, one string), `content_hashes` (each image's content hash
as 64 bytes, 8 int64), the `embeddings` as stored, their `norms`, and `reduced`: the normalised embeddings on their
first REDUCED_DIMENSIONS principal axes, with those axes (`pca_mean`, `pca_axes`) and how they came about (the
document's `pca`: rows fitted, rows added, changed or removed since, and the share of variance the axes kept), and
what bounds a query's scores from them (`offset`, `residuals`: dashboard.analysis.similarity.ReducedSearch).

Built from the previous generation (next_content), as while an index run adds a batch at a time: every image's
facts are read (ids, paths, labels, sizes, content hashes; no embedding), each image whose content hash is the
one the previous generation holds keeps its row there (an embedding derives from its image's content), and only
the embeddings of images added or changed are read. Removed images are dropped and moved ones take their new place:
the rows come out in the order a whole build gives them, and the embeddings file is written by copying runs of the
previous one (never held whole in memory). Built whole instead, with the reason logged, where the embeddings'
dimension changed, where more than half the rows are new, or where the database changed while it was read.

The principal axes are kept from one generation to the next, and the rows added or changed are placed on them, so
a batch costs no PCA; they are fitted again on the whole matrix (as a whole build fits them) when drift warrants:
when the rows added, changed or removed since the last fit exceed REFIT_FRACTION of the rows fitted, when the new
rows keep less than KEPT_DROP of the share of variance the fitted rows kept on the axes, or when the number of axes
a whole build would give differs (a dataset still smaller than REDUCED_DIMENSIONS images, say).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from dashboard.analysis.projection import REDUCED_DIMENSIONS, PcaBasis, principal_basis, row_norms
from dashboard.analysis.similarity import ReducedSearch
from dashboard.shared_matrix import Gathered, SharedContent
from db.queries import DatasetEmbeddings, dataset_generation, embeddings_of, image_facts
from db.schema import Dataset

log = logging.getLogger(__name__)
PATH_SEPARATOR = "\0"  # the one character no file path holds
CONTENT = 3  # the version of what a generation holds: change it with what it stores
REFIT_FRACTION = 0.1
KEPT_DROP = 0.8
MOST_NEW = 0.5  # above this share of new rows a generation is built whole


def full_content(read: DatasetEmbeddings) -> SharedContent:
    """A generation built whole from what db.queries.read_embeddings read."""
    fitted = principal_basis(read.embeddings, REDUCED_DIMENSIONS)
    return _content(read.image_ids, read.relpaths, read.labels, read.sizes, _digests(read.content_hashes),
                    read.embeddings, row_norms(read.embeddings), fitted.coordinates, fitted.placement,
                    {"fitted_rows": len(read.image_ids), "changed_since_fit": 0})


def next_content(session, dataset: Dataset, previous: SharedContent) -> SharedContent | None:
    """The dataset's generation built from the previous one (see the module's docstring); None where it must be
    built whole, the reason logged."""
    old = previous.arrays
    if old["embeddings"].shape[1:] != (dataset.embed_dim,):
        return _whole(dataset, "the embeddings' dimension changed")
    facts = image_facts(session, dataset)
    digests = _digests(facts.content_hashes)
    taken = _previous_rows(old["image_ids"], facts.image_ids)
    matched = np.flatnonzero(taken >= 0)
    unchanged = (old["content_hashes"][taken[matched]] == digests[matched]).all(axis=1)
    taken[matched[~unchanged]] = -1
    kept, fresh_rows = matched[unchanged], np.flatnonzero(taken < 0)
    if len(fresh_rows) > MOST_NEW * len(taken):
        return _whole(dataset, f"{len(fresh_rows)} of its {len(taken)} images are new or changed")
    fresh = embeddings_of(session, dataset, facts.image_ids[fresh_rows])
    # On PostgreSQL each statement may see a newer commit: both reads must be of the generation asked for.
    if fresh is None or dataset_generation(session, dataset.id) != dataset.generation:
        return _whole(dataset, "the database changed while it was read")
    embeddings = Gathered(old["embeddings"], taken, fresh)
    norms = np.empty(len(taken), np.float32)
    norms[kept], norms[fresh_rows] = old["norms"][taken[kept]], row_norms(fresh)
    pca = dict(previous.document["pca"])
    pca["changed_since_fit"] += len(fresh_rows) + len(old["image_ids"]) - len(matched)  # added or changed, removed
    basis = PcaBasis(old["pca_mean"], old["pca_axes"], pca["kept"])
    refit = _refit_reason(basis, pca, fresh, len(taken))
    if refit:
        log.info("dataset %r, generation %d: principal axes fitted again (%s)", dataset.name, dataset.generation,
                 refit)
        matrix = np.asarray(embeddings)
        fitted = principal_basis(matrix, REDUCED_DIMENSIONS)
        return _content(facts.image_ids, facts.relpaths, facts.labels, facts.sizes, digests, matrix, norms,
                        fitted.coordinates, fitted.placement, {"fitted_rows": len(taken), "changed_since_fit": 0})
    coordinates = np.empty((len(taken), basis.axes.shape[0]), np.float32)
    coordinates[kept], coordinates[fresh_rows] = old["reduced"][taken[kept]], basis.coordinates(fresh)
    return _content(facts.image_ids, facts.relpaths, facts.labels, facts.sizes, digests, embeddings, norms,
                    coordinates, basis, pca)


def _previous_rows(previous_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """For each image id, its row among `previous_ids`, or -1 for an image the previous generation lacks."""
    taken = np.full(len(image_ids), -1, np.int64)
    if len(previous_ids):
        order = np.argsort(previous_ids, kind="stable")
        at = np.searchsorted(previous_ids[order], image_ids).clip(max=len(order) - 1)
        found = previous_ids[order[at]] == image_ids
        taken[found] = order[at[found]]
    return taken


def _refit_reason(basis: PcaBasis, pca: dict, fresh: np.ndarray, rows: int) -> str | None:
    axes = min(REDUCED_DIMENSIONS, rows, basis.axes.shape[1])
    if basis.axes.shape[0] != axes:
        return f"{axes} axes for {rows} images instead of {basis.axes.shape[0]}"
    if pca["changed_since_fit"] > REFIT_FRACTION * pca["fitted_rows"]:
        return f"{pca['changed_since_fit']} rows added, changed or removed since the {pca['fitted_rows']} fitted"
    if len(fresh):
        kept = basis.kept_of(fresh)
        if kept < KEPT_DROP * basis.kept:
            return f"the new rows keep {kept:.0%} of their variance on the axes, the fitted ones {basis.kept:.0%}"
    return None


def _whole(dataset: Dataset, reason: str) -> None:
    """Log why the generation is built whole (next_content then gives None)."""
    log.info("dataset %r, generation %d: built whole (%s)", dataset.name, dataset.generation, reason)


def _digests(content_hashes: Sequence[str]) -> np.ndarray:
    """Content hashes (hex, at most 64 characters) as 8 int64 each, to compare and store as an array."""
    return np.array(content_hashes, dtype="S64").view("<i8").reshape(-1, 8)


def _content(image_ids, relpaths, labels, sizes, digests, embeddings, norms, coordinates, basis: PcaBasis,
             pca: dict) -> SharedContent:
    # Read back fast: paths as one string, labels as codes into the distinct labels, sizes as an array.
    distinct = list(dict.fromkeys(labels))
    codes = {label: code for code, label in enumerate(distinct)}
    search = ReducedSearch.of(coordinates, basis.axes, basis.mean, norms)
    arrays = {"image_ids": image_ids, "embeddings": embeddings, "norms": norms, "reduced": coordinates,
              "label_codes": np.array([codes[label] for label in labels], np.int32).reshape(-1),
              "sizes": np.asarray(sizes, np.int32).reshape(-1, 2), "content_hashes": digests,
              "pca_mean": basis.mean, "pca_axes": basis.axes, "offset": search.offset,
              "residuals": search.residuals}
    return SharedContent(arrays, {"relpaths": PATH_SEPARATOR.join(relpaths), "labels": distinct,
                                  "pca": {**pca, "kept": basis.kept}})
