"""Reduced patch grids: a dataset's PCA basis, and the two maps between full grids and their stored coordinates.

A reduced grid is stored as float16 coordinates (grid height, grid width, patch dims) in the basis; reading
reconstructs mean + coordinates @ axes, the best approximation of the full grid that the kept dimensions allow,
so everything downstream works on grids of the model's embed dim whichever way they were stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchPca:
    mean: np.ndarray  # (embed dim,) float32
    axes: np.ndarray  # (patch dims, embed dim) float32, orthonormal rows by decreasing variance
    fitted_images: int
    fitted_tokens: int
    explained_variance: float  # fraction of the fitted tokens' variance the axes keep

    @property
    def dims(self) -> int:
        return self.axes.shape[0]

    def reduce(self, grid: np.ndarray) -> np.ndarray:
        """Coordinates (..., patch dims) of full tokens (..., embed dim), as stored: float16."""
        coords = (np.asarray(grid, np.float32) - self.mean) @ self.axes.T
        return coords.astype(np.float16)

    def reconstruct(self, coords: np.ndarray) -> np.ndarray:
        """Full tokens (..., embed dim) from stored coordinates, float16 like a full stored grid."""
        return (np.asarray(coords, np.float32) @ self.axes + self.mean).astype(np.float16)
