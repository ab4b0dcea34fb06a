"""Within-image page: settings, overlay geometry, and the page in a real browser."""

from __future__ import annotations

import numpy as np
import pytest
from dash.testing.wait import until
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from dashboard.analysis.patches import OUTSIDE, pool_grid
from dashboard.patches_view import ImageFrame, PatchSettings, analyse, examples, overlay_figure, settings_from
from tests.browser import on_graph
from tests.browser import text_of as _text
from tests.browser import when_stable as _when_stable
from tests.test_patches import _grid_with_regions


def test_settings_from_the_url_are_clamped():
    assert settings_from({}) == PatchSettings()
    odd = settings_from({"layer": "x", "k": "99", "window": "3", "step": "7", "opacity": "nan",
                         "foreground_only": "true"})
    assert (odd.layer, odd.k, odd.window, odd.step, odd.opacity, odd.foreground_only) == (
        "clusters", 10, 3, 3, 0.5, True)


@pytest.mark.parametrize(("width", "height"), [(400, 400), (800, 200), (200, 800)])
def test_the_overlay_puts_every_tile_over_its_region_of_the_picture(width, height):
    frame = ImageFrame(width, height, 16, 16)
    for window, step in ((1, 1), (2, 2), (4, 2)):
        pooled = pool_grid(np.zeros((16, 16, 4)), window, step)
        values = np.zeros(pooled.tokens.shape[:2])
        trace = overlay_figure("/p.jpg", frame, pooled, values, "norms", 0.5).data[0]
        x0, y0, x1, y1 = frame.tile_box(pooled, 0, 0)
        assert (trace.x0, trace.dx) == pytest.approx(((x0 + x1) / 2, width / 16 * step))
        assert (trace.y0, trace.dy) == pytest.approx(((y0 + y1) / 2, height / 16 * step))
        assert x0 == pytest.approx(width / 16 * (window - step) / 2)
        last = pooled.tokens.shape[1] - 1
        assert frame.tile_box(pooled, last, last)[2] <= width + 1e-9
        # A pixel inside a tile maps back to that tile.
        assert frame.pooled_cell_at(pooled, (x0 + x1) / 2, (y0 + y1) / 2) == (0, 0)
    figure = overlay_figure("/p.jpg", frame, pool_grid(np.zeros((16, 16, 4))), np.zeros((16, 16)), "norms", 0.5)
    image = figure.layout.images[0]
    assert (image.x, image.y, image.sizex, image.sizey, image.sizing) == (0, 0, width, height, "stretch")
    assert tuple(figure.layout.yaxis.range) == (height, 0) and figure.layout.yaxis.scaleanchor == "x"


def test_analysis_computes_what_the_layer_needs_and_examples_stay_in_their_cluster():
    regions = np.zeros((8, 8), np.int64)
    regions[:, 4:] = 1
    grid = _grid_with_regions(regions, dim=16)
    clusters = analyse(grid, PatchSettings(k=2))
    assert clusters.foreground is None and clusters.labels.shape == (8, 8)
    assert sorted(count for _, count, _ in clusters.shares) == [32, 32]
    frame = ImageFrame(160, 80, 8, 8)
    for label, boxes in examples(clusters, frame).items():
        for x0, y0, x1, y1 in boxes:
            row, col = int(y0 / 10), int(x0 / 20)
            assert clusters.labels[row, col] == label and (x1 - x0, y1 - y0) == (20, 10)
    foreground = analyse(grid, PatchSettings(layer="clusters", k=2, foreground_only=True))
    assert (foreground.labels[foreground.foreground <= 0] == OUTSIDE).all()
    assert analyse(grid, PatchSettings(layer="norms")).labels is None


# --- in the browser -------------------------------------------------------------------------------------------

def _overlay(dash_duo, expression: str):
    return on_graph(dash_duo, "#patches-overlay", expression)


def _table_rows(dash_duo) -> int:
    return dash_duo.driver.execute_script(
        "return document.querySelectorAll('#patches-statistics-table tbody tr').length")


def _press(dash_duo, slider: str, key, times: int = 1) -> None:
    _when_stable(lambda: dash_duo.find_element(f"{slider} [role=slider]").send_keys(key * times))


def test_every_control_changes_the_overlay(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/patches?dataset=samples&image=3")
    until(lambda: _table_rows(dash_duo) == 4, timeout=20)
    until(lambda: _overlay(dash_duo, "gd.layout.images[0].source") == "/thumbnails/3/preview.jpg", timeout=20)
    assert "4x4" in _text(dash_duo, "#provenance")

    _press(dash_duo, "#patches-k", Keys.ARROW_RIGHT, 2)
    until(lambda: _table_rows(dash_duo) == 6, timeout=20)
    assert "k=6" in dash_duo.driver.current_url
    total = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#patches-statistics-table tbody tr td:nth-child(2)')]"
        ".reduce((sum, cell) => sum + Number(cell.innerText), 0)")
    assert total == 16  # a 4 x 4 grid at 56 pixels

    _press(dash_duo, "#patches-opacity", Keys.ARROW_LEFT, 4)
    until(lambda: _overlay(dash_duo, "gd.data[0].opacity") == pytest.approx(0.3), timeout=20)

    _press(dash_duo, "#patches-window", Keys.ARROW_RIGHT)
    until(lambda: _overlay(dash_duo, "gd._fullData[0].z.length") == 3, timeout=20)  # windows of 2, step 1
    _press(dash_duo, "#patches-step", Keys.ARROW_RIGHT)
    until(lambda: _overlay(dash_duo, "gd._fullData[0].z.length") == 2, timeout=20)  # windows of 2, step 2
    assert "window=2" in dash_duo.driver.current_url and "step=2" in dash_duo.driver.current_url
    _press(dash_duo, "#patches-window", Keys.ARROW_LEFT)
    until(lambda: _overlay(dash_duo, "gd._fullData[0].z.length") == 4, timeout=20)

    for layer, check in (("pca", "gd.data[0].type === 'image'"),
                         ("foreground", "gd.data[0].colorbar.title.text === 'PC 1'"),
                         ("norms", "gd.data[0].colorbar.title.text === 'norm'")):
        dash_duo.find_element(f"label[for='_dbcprivate_radioitems_patches-layer_input_{layer}']").click()
        until(lambda check=check: _overlay(dash_duo, check) is True, timeout=20)
    dash_duo.find_element("label[for='_dbcprivate_radioitems_patches-layer_input_clusters']").click()
    until(lambda: _table_rows(dash_duo) == 6, timeout=20)

    dash_duo.find_element("#patches-foreground-only").click()
    until(lambda: _overlay(dash_duo, "Array.from(gd._fullData[0].z.flat()).some(v => v === null || isNaN(v))")
          is True, timeout=20)
    assert "foreground_only=true" in dash_duo.driver.current_url

    dash_duo.select_dcc_dropdown("#patches-image", value="windmills/rhodes.jpg")
    until(lambda: "/thumbnails/" in (_overlay(dash_duo, "gd.layout.images[0].source") or "")
          and not _overlay(dash_duo, "gd.layout.images[0].source").endswith("/3/preview.jpg"), timeout=20)
    assert dash_duo.get_logs() == []


def test_clicking_a_patch_compares_it_here_and_in_the_nearest_images(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/patches?dataset=samples&image=3")
    until(lambda: _table_rows(dash_duo) == 4, timeout=20)
    area = dash_duo.wait_for_element("#patches-overlay .nsewdrag", timeout=20)  # drawn after the table, at times
    width, height = area.size["width"], area.size["height"]
    # The top-left patch of the 4 x 4 grid: an eighth of the way in from the corner.
    ActionChains(dash_duo.driver).move_to_element(area).move_by_offset(
        int(-width / 2 + width / 8), int(-height / 2 + height / 8)).click().perform()
    until(lambda: len(dash_duo.find_elements("#patches-similarity .js-plotly-plot")) == 4, timeout=20)
    assert _overlay(dash_duo, "gd.layout.shapes.length") == 1  # the selected patch is outlined
    self_map = dash_duo.driver.execute_script(
        "return Array.from(document.querySelector('#patches-similarity-self .js-plotly-plot')._fullData[0].z[0])")
    assert self_map[0] == pytest.approx(1.0, abs=1e-3)  # the patch is most similar to itself
    assert "image similarity" in _text(dash_duo, "#patches-similarity")
    assert dash_duo.get_logs() == []


def test_the_explanation_opens(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/patches?dataset=samples")
    dash_duo.wait_for_element("#patches-explanation .accordion-button").click()
    dash_duo.wait_for_contains_text("#patches-explanation", "Registers")
    assert dash_duo.get_logs() == []


def test_the_image_stays_the_same_from_page_to_page(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.wait_for_element("#gallery-grid .gallery-thumb")
    path = dash_duo.driver.execute_script("return document.querySelector('#gallery-grid img').title")
    image_id = dash_duo.driver.execute_script(
        "return JSON.parse(document.querySelector('#gallery-grid .gallery-thumb').id).index")
    _when_stable(lambda: dash_duo.find_elements("#gallery-grid .gallery-thumb")[0].click())
    dash_duo.wait_for_element("#detail-patches-link").click()
    until(lambda: _overlay(dash_duo, "gd.layout.images[0].source") == f"/thumbnails/{image_id}/preview.jpg",
          timeout=20)
    assert f"image={image_id}" in dash_duo.driver.current_url
    dash_duo.wait_for_element("#patches-embedding-link").click()
    dash_duo.wait_for_contains_text("#embeddings-path", path)
    dash_duo.wait_for_element("#embeddings-patches-link")
    assert dash_duo.get_logs() == []


def test_an_unknown_image_is_named_and_the_first_one_shown(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/patches?dataset=samples&image=99999")
    dash_duo.wait_for_contains_text("#patches-missing", "There is no image '99999' in this dataset")
    first = int(samples.image_ids[0])
    until(lambda: _overlay(dash_duo, "gd.layout.images[0].source") == f"/thumbnails/{first}/preview.jpg", timeout=20)
    assert dash_duo.get_logs() == []


def test_the_patch_similarity_maps_have_a_colour_scale(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/patches?dataset=samples&image=3")
    until(lambda: _table_rows(dash_duo) == 4, timeout=20)
    plot_area = dash_duo.find_element("#patches-overlay .nsewdrag")
    ActionChains(dash_duo.driver).move_to_element(plot_area).click().perform()
    scale = ("try { const gd = document.querySelector('#patches-similarity-self .js-plotly-plot');"
             " return gd._fullData[0].showscale && gd._fullData[0].colorbar.title.text; } catch (e) { return null; }")
    until(lambda: dash_duo.driver.execute_script(scale) == "cosine", timeout=20)
    assert dash_duo.driver.find_elements("css selector", "#patches-similarity-self .colorbar")
    assert dash_duo.get_logs() == []
