"""Reduced patch grids at index time: fit a dataset's PCA basis on its first embedded images, then store every
patch grid as its coordinates in that basis.

The basis is fitted once per dataset, on the patch tokens of the first FIT_IMAGES images its first run embeds (all
of them when the run has fewer), and reused by every later run, so all stored coordinates share one basis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from db.engine import Database
from db.errors import DinoscopeError
from db.mutations import store_patch_pca
from db.patch_pca import PatchPca
from db.queries import patch_pca
from db.schema import Dataset
from indexer.embed import EmbeddedFile

FIT_IMAGES = 64  # 16,384 tokens at 224 px: far more than the dimensions a basis keeps


class TooFewPatchTokens(DinoscopeError):
    """A basis of D dimensions needs at least D patch tokens to be fitted on."""


def check_fittable(dims: int, images: int, tokens_per_image: int) -> None:
    """Refuse, before anything is embedded, a first run whose images cannot give a basis of `dims` dimensions."""
    tokens = images * tokens_per_image
    if tokens < dims:
        raise TooFewPatchTokens(
            f"--patch-dims {dims} needs at least {dims} patch tokens to fit its basis on, and this run's "
            f"{images} images give {tokens} ({tokens_per_image} each): index more images first, or choose "
            f"--patch-dims {tokens} or fewer"
        )


def fit_patch_pca(grids: Sequence[np.ndarray], dims: int) -> PatchPca:
    """The mean and `dims` principal axes of the patch tokens of `grids` (each (grid height, grid width, D))."""
    tokens = np.concatenate([np.asarray(grid, np.float32).reshape(-1, grid.shape[-1]) for grid in grids])
    check_fittable(dims, len(grids), len(tokens) // max(len(grids), 1))
    from sklearn.decomposition import PCA  # here: only runs that reduce grids pay for importing scikit-learn

    # covariance_eigh is exact and, with many more tokens than dimensions, the fastest of the solvers.
    pca = PCA(n_components=dims, svd_solver="covariance_eigh").fit(tokens)
    return PatchPca(pca.mean_.astype(np.float32), pca.components_.astype(np.float32), len(grids), len(tokens),
                    float(pca.explained_variance_ratio_.sum()))


def reduce_patch_grids(database: Database, dataset_id: int,
                       batches: Iterable[list[EmbeddedFile]]) -> Iterator[list[EmbeddedFile]]:
    """The batches with every patch grid replaced by its coordinates in the dataset's basis (unchanged for a
    dataset of full grids). Without a stored basis, batches wait in memory until FIT_IMAGES images (or the last
    batch) have come, the basis is fitted on them and stored, and then they go on reduced."""
    with database.session() as session:
        dataset = session.get(Dataset, dataset_id)
        dims, pca = dataset.patch_dims, patch_pca(session, dataset)
    if dims is None:
        yield from batches
        return
    waiting: list[list[EmbeddedFile]] = []
    embedded = 0
    for batch in batches:
        if pca is not None:
            yield _reduced(batch, pca)
            continue
        waiting.append(batch)
        embedded += sum(result.content is not None for result in batch)
        if embedded >= FIT_IMAGES:
            pca = _fit_and_store(database, dataset_id, waiting, dims)
            yield from (_reduced(pending, pca) for pending in waiting)
            waiting = []
    if waiting and embedded:  # the run ended before FIT_IMAGES images: the basis is fitted on what came
        pca = _fit_and_store(database, dataset_id, waiting, dims)
        waiting = [_reduced(pending, pca) for pending in waiting]
    yield from waiting  # when nothing was embedded (failures only) there is no grid to reduce


def _fit_and_store(database: Database, dataset_id: int, batches: list[list[EmbeddedFile]], dims: int) -> PatchPca:
    fitted = fit_patch_pca([result.content.patch_grid for batch in batches for result in batch
                            if result.content is not None], dims)
    with database.session() as session:
        return store_patch_pca(session, session.get(Dataset, dataset_id), fitted)


def _reduced(batch: list[EmbeddedFile], pca: PatchPca | None) -> list[EmbeddedFile]:
    return [result if result.content is None else dataclasses.replace(
        result, content=dataclasses.replace(result.content, patch_grid=pca.reduce(result.content.patch_grid)))
        for result in batch]
