"""Why two images are similar (patch correspondences) and where a region appears (region query): the logic on
synthetic grids with known answers, and both views in a real browser."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.analysis.correspondence import Region, mutual_matches, rank_by_region, region_of_box

SHIFT = (2, 3)  # rows, columns


def _shifted_pair(rows: int = 10, cols: int = 10, dim: int = 64, seed: int = 0):
    """A random grid and a copy moved up by SHIFT[0] rows and left by SHIFT[1] columns, the uncovered cells new."""
    rng = np.random.default_rng(seed)
    grid = rng.standard_normal((rows, cols, dim)).astype(np.float16)
    shifted = rng.standard_normal((rows, cols, dim)).astype(np.float16)
    shifted[:rows - SHIFT[0], :cols - SHIFT[1]] = grid[SHIFT[0]:, SHIFT[1]:] + rng.normal(
        0, 0.05, (rows - SHIFT[0], cols - SHIFT[1], dim)).astype(np.float16)
    return grid, shifted


def test_correspondences_recover_a_known_shift_strongest_first():
    grid, shifted = _shifted_pair()
    found = mutual_matches(grid, shifted)
    overlap = (10 - SHIFT[0]) * (10 - SHIFT[1])
    assert len(found.scores) >= overlap
    assert (np.diff(found.scores) <= 0).all()
    moves = found.cells_a[:overlap] - found.cells_b[:overlap]
    assert (moves == SHIFT).all()  # every one of the strongest matches is the shift
    assert found.scores[overlap - 1] > 0.99 > 0.5 > found.scores[overlap:].max(initial=0)


def test_each_images_contributions_are_shares_of_the_match_and_follow_the_overlap():
    grid, shifted = _shifted_pair(seed=1)
    found = mutual_matches(grid, shifted)
    assert found.contribution_a.sum() == pytest.approx(1.0) == found.contribution_b.sum()
    assert found.patch_match == pytest.approx(float(found.scores.mean()))
    # In A the overlap is the cells from row 2, column 3 on; in B those up to row 8, column 7.
    inside_a = found.contribution_a[SHIFT[0]:, SHIFT[1]:]
    inside_b = found.contribution_b[:10 - SHIFT[0], :10 - SHIFT[1]]
    outside_a = np.ones((10, 10), bool)
    outside_a[SHIFT[0]:, SHIFT[1]:] = False
    assert inside_a.min() > found.contribution_a[outside_a].max()
    assert inside_b.min() > 0


def test_a_grid_matches_itself_cell_for_cell():
    grid, _ = _shifted_pair(rows=4, cols=6)
    found = mutual_matches(grid, grid)
    assert len(found.scores) == 24 and (found.cells_a == found.cells_b).all()
    assert found.contribution_a == pytest.approx(np.full((4, 6), 1 / 24))


def test_the_region_query_finds_a_pasted_block_first_at_its_place():
    rng = np.random.default_rng(3)
    grids = {image_id: rng.standard_normal((8, 8, 32)).astype(np.float16) for image_id in range(60)}
    region = Region(2, 1, 5, 4)  # 3 x 3 cells of image 0
    block = region.tokens(grids[0])
    grids[37][4:7, 5:8] = block + rng.normal(0, 0.1, block.shape).astype(np.float16)
    done = []
    found = rank_by_region(block, ((i, g) for i, g in grids.items() if i != 0), progress=done.append)
    assert (found[0].image_id, found[0].row, found[0].col) == (37, 4, 5)
    assert found[0].score > 0.95 > 0.5 > found[1].score
    assert done == list(range(1, 60)) and len(found) == 59


@pytest.mark.parametrize(("box", "region"), [
    ((0.0, 1.0, 0.0, 1.0), Region(0, 0, 4, 4)),
    ((0.3, 0.6, 0.2, 0.4), Region(1, 1, 2, 2)),  # holds only the centre (0.375, 0.375)
    ((0.6, 0.3, 0.4, 0.1), Region(0, 1, 2, 2)),  # drawn from the other corner
    ((0.51, 0.55, 0.9, 0.95), Region(3, 2, 4, 3)),  # holds no centre: the cell under its middle
    ((-5.0, 9.0, 0.7, 2.0), Region(3, 0, 4, 4)),  # outside the picture: clamped to it
])
def test_a_box_covers_the_cells_whose_centres_it_holds(box, region):
    assert region_of_box(*box, rows=4, cols=4) == region
