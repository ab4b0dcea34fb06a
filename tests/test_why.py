"""Why two images are similar (patch correspondences) and where a region appears (region query): the logic on
synthetic grids with known answers, and both views in a real browser."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import numpy as np
import pytest
from dash.testing.wait import until
from selenium.common.exceptions import ElementClickInterceptedException
from selenium.webdriver.common.keys import Keys

from dashboard.analysis.correspondence import Region, mutual_matches, rank_by_region, region_of_box
from dashboard.data import DatasetStore
from dashboard.why_view import region_picture
from db.errors import DatasetNotFound
from tests.browser import JOB_DEADLINE_S, drag_top_left_quarter, on_graph, text_of, when_stable

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
    assert found.scores[overlap - 1] > 0.99 and found.scores[overlap:].max(initial=0) < 0.5


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
    assert found[0].score > 0.95 and found[1].score < 0.5
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


@pytest.mark.parametrize(("width", "height"), [(400, 300), (200, 800)])
def test_a_box_around_a_point_of_the_region_picture_chooses_that_points_patch(width, height):
    rows, cols = 3, 5
    figure = region_picture("/p.jpg", (width, height), (rows, cols), 240)
    image = figure.layout.images[0]
    assert (image.x, image.y, image.sizex, image.sizey) == (0, 0, width, height)
    assert figure.layout.dragmode == "select" and figure.layout.height == 240
    points = figure.data[0]
    assert len(points.x) == rows * cols
    cells = set()
    for x, y in zip(points.x, points.y):
        box = (x / width - 0.01, x / width + 0.01, y / height - 0.01, y / height + 0.01)
        region = region_of_box(*box, rows=rows, cols=cols)
        assert region.shape == (1, 1)
        cells.add((region.top, region.left))
    assert len(cells) == rows * cols  # one point on every patch


def test_the_grid_shape_is_read_without_a_grid(sample_db):
    store = DatasetStore(f"sqlite:///{sample_db}")
    view = store.view("samples")
    assert store.grid_shape("samples") == store.patch_grid(int(view.image_ids[0])).shape[:2]
    with pytest.raises(DatasetNotFound):
        store.grid_shape("no-such-dataset")


# --- in the browser -------------------------------------------------------------------------------------------


def _pair(dash_duo, expression: str):
    return on_graph(dash_duo, "#why-pair", expression)


def _lines_drawn(dash_duo):
    """How many correspondences the figure draws (the line trace's points come in threes: two ends and a gap)."""
    count = _pair(dash_duo, "gd.data.find(t => t.name === 'matches').x.length")
    return None if count is None else count // 3


def _click(dash_duo, selector: str) -> None:
    """Click the first element of `selector` once nothing lies over it (the spinner of a page still loading)."""
    def clicked():
        try:
            dash_duo.find_elements(selector)[0].click()
            return True
        except ElementClickInterceptedException:
            return False

    until(lambda: when_stable(clicked), timeout=10)


def test_why_similar_opens_from_the_similarity_page_and_the_slider_sets_the_lines(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/similarity?dataset=samples&image=3")
    dash_duo.wait_for_element("#similarity-result-grid .similarity-why")
    other = dash_duo.driver.execute_script(
        "return JSON.parse(document.querySelector('#similarity-result-grid .similarity-result').id).index")
    _click(dash_duo, "#similarity-result-grid .similarity-why")
    until(lambda: urlsplit(dash_duo.driver.current_url).path == "/why", timeout=10)
    until(lambda: (_lines_drawn(dash_duo) or 0) > 0, timeout=20)
    assert _pair(dash_duo, "gd.layout.images.map(i => i.source)") == [
        "/thumbnails/3/preview.jpg", f"/thumbnails/{other}/preview.jpg"]
    matches = int(re.search(r"(\d+) mutual patch match", text_of(dash_duo, "#why-summary")).group(1))
    assert _lines_drawn(dash_duo) == min(20, matches)  # the default, or every match there is
    # Each picture's contributions add up to the whole match (in percent).
    total = _pair(dash_duo, "gd._fullData[0].z.map(row => Array.from(row)).flat().filter(v => v === v)"
                            ".reduce((a, b) => a + b, 0)")
    assert total == pytest.approx(100, abs=0.1)
    when_stable(lambda: dash_duo.find_element("#why-lines [role=slider]").send_keys(Keys.HOME))
    until(lambda: _lines_drawn(dash_duo) == 1, timeout=20)
    assert "lines=1" in dash_duo.driver.current_url and f"other={other}" in dash_duo.driver.current_url
    dash_duo.wait_for_element("#why-explanation .accordion-button").click()
    dash_duo.wait_for_contains_text("#why-explanation", "mutual nearest neighbours")
    assert dash_duo.get_logs() == []


def test_why_similar_opens_from_a_neighbour_in_the_gallery(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.wait_for_element("#gallery-grid .gallery-thumb")
    image_id = dash_duo.driver.execute_script(
        "return JSON.parse(document.querySelector('#gallery-grid .gallery-thumb').id).index")
    when_stable(lambda: dash_duo.find_elements("#gallery-grid .gallery-thumb")[0].click())
    dash_duo.wait_for_element("#detail-neighbours .detail-why")
    neighbour = dash_duo.driver.execute_script(
        "return JSON.parse(document.querySelector('#detail-neighbours [role=button]').id).index")
    _click(dash_duo, "#detail-neighbours .detail-why")
    until(lambda: _pair(dash_duo, "gd.layout.images.map(i => i.source)") == [
        f"/thumbnails/{image_id}/preview.jpg", f"/thumbnails/{neighbour}/preview.jpg"], timeout=20)
    assert f"image={image_id}" in dash_duo.driver.current_url
    assert dash_duo.get_logs() == []


def test_a_box_drawn_on_the_within_image_page_finds_the_region_in_other_images(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/patches?dataset=samples&image=3")
    drag_top_left_quarter(dash_duo, "#patches-overlay")
    heading = "#patches-region-results .region-heading"
    dash_duo.wait_for_contains_text(heading, "region of 2 x 2 patches", timeout=JOB_DEADLINE_S)
    assert "of the 43 images" in text_of(dash_duo, heading)  # the shortlist: every other image
    shapes = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#patches-region-results .js-plotly-plot')]"
        ".map(gd => gd.layout.shapes.length)")
    assert shapes == [1] * 8  # each result with its region outlined
    scores = [float(s.text.split()[-1]) for s in dash_duo.find_elements("#patches-region-results .region-score")]
    assert scores == sorted(scores, reverse=True)
    # A shorter shortlist searches fewer images.
    box = dash_duo.find_element("#patches-shortlist")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("10", Keys.ENTER)
    dash_duo.wait_for_contains_text(heading, "of the 10 images", timeout=JOB_DEADLINE_S)
    assert dash_duo.get_logs() == []
