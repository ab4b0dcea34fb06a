"""Reduced patch grids at index time: fit a dataset's PCA basis on its first embedded images, then store every
patch grid as its coordinates in that basis.

The basis is fitted once per dataset, on the patch tokens of the first FIT_IMAGES images its first run embeds (all
of them when the run has fewer), and reused by every later run, so all stored coordinates share one basis. It is
fitted and stored in the transaction that stores the first batch needing it, so embedding opens no session.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

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


class PatchReduction:
    """A run's patch grids on their way to the database: unchanged for a dataset of full grids, else stored as their
    coordinates in the dataset's basis.

    Without a stored basis, `held_back` keeps batches in memory until FIT_IMAGES images (or the last batch) have
    come; `stored` then fits the basis on them in the first of their store transactions and stores it there, unless
    another process stored one meanwhile: the stored one is the one every grid uses.
    """

    def __init__(self, session, dataset: Dataset) -> None:
        self.dims = dataset.patch_dims
        self.pca = None if self.dims is None else patch_pca(session, dataset)
        self._fit_on: list[np.ndarray] = []  # the grids of the first images, once enough have come

    def held_back(self, batches: Iterable[list[EmbeddedFile]]) -> Iterator[list[EmbeddedFile]]:
        """The batches in order, held back only while a basis still waits for the images to be fitted on."""
        if self.dims is None or self.pca is not None:
            yield from batches
            return
        waiting: list[list[EmbeddedFile]] | None = []
        grids: list[np.ndarray] = []
        for batch in batches:
            if waiting is None:  # released: the basis is fitted when the first released batch is stored
                yield batch
                continue
            waiting.append(batch)
            grids += [result.content.patch_grid for result in batch if result.content is not None]
            if len(grids) >= FIT_IMAGES:
                self._fit_on = grids
                yield from waiting
                waiting = None
        if waiting:  # the run ended before FIT_IMAGES images: the basis is fitted on what came (on nothing when
            self._fit_on = grids  # only failures came, and then there is no grid to reduce either)
            yield from waiting

    def stored(self, session, dataset: Dataset, batch: list[EmbeddedFile]) -> list[EmbeddedFile]:
        """The batch as it is stored: in the transaction of the first batch that needs it, the basis is fitted and
        stored first."""
        if self.dims is None:
            return batch
        if self.pca is None and self._fit_on:
            self.pca = store_patch_pca(session, dataset, fit_patch_pca(self._fit_on, self.dims))
            self._fit_on = []
        return batch if self.pca is None else _reduced(batch, self.pca)


def _reduced(batch: list[EmbeddedFile], pca: PatchPca) -> list[EmbeddedFile]:
    return [result if result.content is None else dataclasses.replace(
        result, content=dataclasses.replace(result.content, patch_grid=pca.reduce(result.content.patch_grid)))
        for result in batch]
