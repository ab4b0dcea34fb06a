"""Patch-level analysis on synthetic grids whose regions are known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dashboard.analysis.patches import (
    OUTSIDE,
    cell_box,
    cluster_patches,
    cluster_shares,
    foreground_scores,
    patch_norms,
    patch_similarity,
    pca_rgb,
    pool_grid,
)


def _grid_with_regions(regions: np.ndarray, dim: int = 32, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """A (rows, cols, dim) grid whose tokens point one way per region id, plus a little noise."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((regions.max() + 1, dim)).astype(np.float32)
    return directions[regions] + noise * rng.standard_normal((*regions.shape, dim)).astype(np.float32)


def _halves(rows: int = 8, cols: int = 8) -> np.ndarray:
    regions = np.zeros((rows, cols), np.int64)
    regions[:, cols // 2:] = 1
    return regions


def test_clustering_patches_gives_the_regions_back():
    regions = np.zeros((12, 12), np.int64)
    regions[:, 6:] = 1
    regions[8:, :] = 2
    labels = cluster_patches(_grid_with_regions(regions), k=3)
    assert adjusted_rand_score(regions.ravel(), labels.ravel()) == pytest.approx(1.0)
    shares = cluster_shares(labels)
    assert sorted(count for _, count, _ in shares) == [48, 48, 48]
    assert sum(percent for _, _, percent in shares) == pytest.approx(100.0)


def test_pooling_averages_windows_and_keeps_regions():
    grid = np.arange(4 * 4 * 1, dtype=np.float32).reshape(4, 4, 1)
    pooled = pool_grid(grid, window=2, step=2)
    assert pooled.tokens.shape == (2, 2, 1)
    assert pooled.tokens[0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    assert pooled.tokens[1, 1, 0] == pytest.approx(np.mean([10, 11, 14, 15]))
    sliding = pool_grid(grid, window=3, step=1)
    assert sliding.tokens.shape == (2, 2, 1) and sliding.origin == 1.0
    assert sliding.tokens[1, 0, 0] == pytest.approx(grid[1:4, 0:3, 0].mean())
    assert pool_grid(grid, window=9, step=5).tokens.shape == (1, 1, 1)  # clamped to the grid

    regions = _halves(8, 8)
    coarse = pool_grid(_grid_with_regions(regions), window=2, step=2)
    labels = cluster_patches(coarse.tokens, k=2)
    assert adjusted_rand_score(regions[::2, ::2].ravel(), labels.ravel()) == pytest.approx(1.0)


@pytest.mark.parametrize(("window", "step"), [(1, 1), (1, 3), (2, 1), (3, 2), (4, 4), (5, 3), (7, 1), (9, 9)])
def test_pooling_matches_averaging_each_window_in_a_loop(window, step):
    grid = np.random.default_rng(window * 10 + step).standard_normal((11, 13, 6)).astype(np.float32)
    pooled = pool_grid(grid, window, step)
    clamped = min(step, window)
    expected = np.array([[grid[top:top + window, left:left + window].mean(axis=(0, 1))
                          for left in range(0, grid.shape[1] - window + 1, clamped)]
                         for top in range(0, grid.shape[0] - window + 1, clamped)])
    assert pooled.tokens.dtype == np.float32 and (pooled.window, pooled.step) == (window, clamped)
    np.testing.assert_allclose(pooled.tokens, expected, rtol=1e-5, atol=1e-6)


def test_clustering_can_leave_cells_out():
    regions = _halves()
    mask = np.zeros(regions.shape, bool)
    mask[2:6, :] = True
    labels = cluster_patches(_grid_with_regions(regions), k=2, mask=mask)
    assert (labels[~mask] == OUTSIDE).all() and set(np.unique(labels[mask])) == {0, 1}


@pytest.mark.parametrize("flip", [False, True])
def test_the_foreground_is_the_side_the_border_is_not_on(flip):
    regions = np.zeros((10, 10), np.int64)
    regions[3:7, 3:7] = 1  # an object in the middle
    grid = _grid_with_regions(regions, seed=3)
    scores = foreground_scores(-grid if flip else grid)
    assert (scores[regions == 1] > 0).all() and (scores[regions == 0] < 0).all()


def test_pca_colours_stay_in_range_and_separate_regions():
    regions = _halves()
    rgb = pca_rgb(_grid_with_regions(regions))
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert np.abs(rgb[:, :4].mean((0, 1)) - rgb[:, 4:].mean((0, 1))).max() > 0.5
    foreground_only = pca_rgb(_grid_with_regions(regions), mask=regions == 1)
    assert foreground_only.min() >= 0.0 and foreground_only.max() <= 1.0


def test_norms_and_similarity_of_patches():
    grid = _grid_with_regions(_halves())
    grid[0, 0] *= 10
    norms = patch_norms(grid)
    assert np.unravel_index(norms.argmax(), norms.shape) == (0, 0)
    similarity = patch_similarity(grid, grid[3, 6])
    assert similarity[3, 6] == pytest.approx(1.0, abs=1e-5)
    assert similarity[:, 4:].min() > similarity[:, :4].max()


@pytest.mark.parametrize(("width", "height"), [(512, 512), (512, 256), (256, 512)])
def test_cells_map_to_pixels_by_scaling_each_axis(width, height):
    rows = cols = 16
    assert cell_box(0, 0, rows, cols, width, height) == (0, 0, width / 16, height / 16)
    assert cell_box(15, 15, rows, cols, width, height) == (width * 15 / 16, height * 15 / 16, width, height)
    x0, y0, x1, y1 = cell_box(4, 8, rows, cols, width, height)
    assert (x0 / width, y0 / height, x1 / width, y1 / height) == (0.5, 0.25, 9 / 16, 5 / 16)
    pooled = pool_grid(np.zeros((16, 16, 2)), window=4, step=2)  # tiles of 2 patches from patch 1
    assert cell_box(pooled.origin, pooled.origin, rows, cols, width, height, extent=pooled.step)[:2] == (
        width / 16, height / 16)
