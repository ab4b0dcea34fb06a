"""Similarity logic (top-K, the reference picker, the heatmap) and the similarity page in a real browser."""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np
import pytest
from dash.testing.wait import until
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from dashboard.analysis.correspondence import Region
from dashboard.data import DatasetStore, DatasetView
from dashboard.inputs import CategoryPoint
from dashboard.similarity_view import (
    EMBEDDING_HEAD,
    heatmap_figure,
    hovered_cell,
    neighbourhood,
    reference_image,
    reference_options,
    short_names,
    similar_images,
    similarity_heatmap,
)
from dashboard.urlstate import why_url
from dashboard.why_view import REGION_RESULTS, region_query
from tests.browser import JOB_DEADLINE_S, drag_top_left_quarter, on_graph, text_of
from tests.test_gallery import _when_stable


def _view(n: int, dim: int = 16, seed: int = 0) -> DatasetView:
    rng = np.random.default_rng(seed)
    return DatasetView("d", 1, np.arange(100, 100 + n), [f"set{i % 3}/Image_{i:03d}.png" for i in range(n)],
                       [f"set{i % 3}" for i in range(n)], [(64, 48)] * n,
                       rng.standard_normal((n, dim)).astype(np.float32))


def _brute_force(view: DatasetView, position: int) -> tuple[list[int], np.ndarray]:
    unit = view.embeddings / np.linalg.norm(view.embeddings, axis=1, keepdims=True)
    scores = unit @ unit[position]
    return [int(i) for i in np.argsort(-scores, kind="stable") if i != position], scores


def test_similar_images_equal_a_brute_force_cosine_ranking():
    view = _view(30)
    ranking, scores = _brute_force(view, 4)
    results = similar_images(view, 104, 8)
    assert [r.image_id for r in results] == [100 + i for i in ranking[:8]]
    assert [r.score for r in results] == pytest.approx([float(scores[i]) for i in ranking[:8]], abs=1e-5)
    assert [r.relpath for r in results] == [view.relpaths[i] for i in ranking[:8]]
    assert [r.label for r in results] == [view.labels[i] for i in ranking[:8]]
    assert results[0].embedding_head == pytest.approx(view.embeddings[ranking[0], :EMBEDDING_HEAD].tolist())
    assert len(similar_images(view, 104, 50)) == 29  # everything but the reference
    assert similar_images(view, 999, 8) == []
    assert reference_image(view, 107) == 107
    assert reference_image(view, 999) == 100 and reference_image(view, None) == 100


def test_reference_options_match_path_substrings_in_any_case_up_to_the_limit():
    view = _view(30)
    found = reference_options(view, "IMAGE_01")
    assert [o["label"] for o in found] == [f"set{i % 3}/Image_{i:03d}.png" for i in range(10, 20)]
    assert [o["value"] for o in found] == list(range(110, 120))
    assert [o["value"] for o in reference_options(view, "set1/", limit=3)] == [101, 104, 107]
    assert len(reference_options(view, "")) == 30 and len(reference_options(view, None, limit=5)) == 5
    assert reference_options(view, "no such image") == []
    # The current reference is always an option, so the picker can show it whatever was searched.
    assert [o["value"] for o in reference_options(view, "set1/", limit=2, selected=129)] == [129, 101, 104]
    assert [o["value"] for o in reference_options(view, "set1/", limit=2, selected=101)] == [101, 104]


def test_reference_options_send_few_names_of_a_large_dataset():
    n = 100_000
    paths = [f"Folder{i % 300}/IMG_{i:06d}.JPG" for i in range(n)]
    view = DatasetView("big", 1, np.arange(1, n + 1), paths, [None] * n, [(1, 1)] * n, np.ones((n, 2), np.float32))
    for search in ("", "img_09999", "nothing matches this", "folder12/"):
        assert len(reference_options(view, search, selected=5)) <= 51
    assert [o["label"] for o in reference_options(view, "img_099999")] == ["Folder99/IMG_099999.JPG"]


def test_heatmap_covers_every_image_of_a_small_dataset():
    view = _view(22)
    heatmap = similarity_heatmap(view, 105)
    assert heatmap.image_ids == list(range(100, 122)) and heatmap.relpaths == view.relpaths
    unit = view.embeddings / np.linalg.norm(view.embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(heatmap.matrix, unit @ unit.T, atol=1e-5)
    with pytest.raises(KeyError):
        similarity_heatmap(view, 999)


def test_heatmap_of_a_large_dataset_is_the_reference_and_its_nearest_neighbours():
    view = _view(150)
    ranking, _ = _brute_force(view, 7)
    heatmap = similarity_heatmap(view, 107)
    assert heatmap.image_ids == [107] + [100 + i for i in ranking[:99]]
    assert heatmap.matrix.shape == (100, 100)
    positions = [7, *ranking[:99]]
    unit = view.embeddings / np.linalg.norm(view.embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(heatmap.matrix, unit[positions] @ unit[positions].T, atol=1e-5)
    assert similarity_heatmap(view, 107, limit=10).image_ids == [107] + [100 + i for i in ranking[:9]]
    # The page ranks once: its results and its heatmap come from the same ranking.
    results, shared = neighbourhood(view, 107, 5)
    assert [r.image_id for r in results] == [100 + i for i in ranking[:5]]
    assert shared.image_ids == heatmap.image_ids


def test_short_names_are_unique_and_as_short_as_possible():
    assert short_names(["cats/1.png", "dogs/1.png", "cats/2.png"]) == ["cats/1.png", "dogs/1.png", "2.png"]
    assert short_names(["a/b/x.png", "c/b/x.png", "d/x.png", "x.png"]) == ["a/b/x.png", "c/b/x.png", "d/x.png",
                                                                              "x.png"]
    assert short_names([]) == []


def test_heatmap_figure_labels_tell_the_images_apart():
    view = _view(40)
    view.relpaths[5] = "other/Image_000.png"  # two files with the same name in different folders
    heatmap = similarity_heatmap(view, 100)
    figure = heatmap_figure(heatmap.matrix, heatmap.relpaths)
    ticks = list(figure.layout.xaxis.ticktext)
    assert len(set(ticks)) == 40 and ticks[1] == "Image_001.png"
    assert ticks[0] == "set0/Image_000.png" and ticks[5] == "other/Image_000.png"
    assert list(figure.layout.xaxis.tickvals) == heatmap.relpaths == list(figure.data[0].x)
    assert list(figure.layout.yaxis.ticktext) == ticks
    assert "%{x}" in figure.data[0].hovertemplate and "%{y}" in figure.data[0].hovertemplate
    assert np.asarray(figure.data[0].z).shape == (40, 40)
    assert heatmap_figure(heatmap.matrix, heatmap.relpaths, native_hover=False).data[0].hoverinfo == "none"


def test_a_hovered_cell_names_its_row_and_column_images():
    ids, paths = [7, 8, 9], ["a/x.png", "b/y.png", "c/z.png"]
    cell = hovered_cell(CategoryPoint(x="c/z.png", y="a/x.png", z=0.25), ids, paths)
    assert (cell.row_id, cell.row_relpath, cell.column_id, cell.column_relpath, cell.score) == (
        7, "a/x.png", 9, "c/z.png", 0.25)
    assert hovered_cell(None, ids, paths) is None
    assert hovered_cell(CategoryPoint(x="gone.png", y="a/x.png"), ids, paths) is None


# In the browser -------------------------------------------------------------------------------------------------


def _result_paths(dash_duo) -> list[str]:
    """The paths of the result cards on show, read in one step (the cards may re-render between two reads)."""
    return dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#similarity-result-grid .similarity-path')].map(p => p.textContent)")


def _reference_path(dash_duo) -> str | None:
    return dash_duo.driver.execute_script(
        "const title = document.querySelector('#similarity-reference-path'); return title && title.textContent")


def _picker_text(dash_duo) -> str:
    return dash_duo.driver.execute_script(
        "return document.querySelector('#similarity-reference .dash-dropdown-value').textContent")


def _expect_reference(dash_duo, view: DatasetView, image_id: int, k: int = 8) -> None:
    """Wait until the page shows `image_id` as the reference with its top-k results, in the URL too."""
    relpath = view.relpaths[view.position(image_id)]
    expected = [r.relpath for r in similar_images(view, image_id, k)]
    until(lambda: _reference_path(dash_duo) == relpath and _result_paths(dash_duo) == expected, timeout=10)
    until(lambda: f"image={image_id}&" in dash_duo.driver.current_url, timeout=5)
    until(lambda: _picker_text(dash_duo) == relpath, timeout=5)


def _open(dash_duo, query: str) -> None:
    dash_duo.driver.get(f"{dash_duo.server_url}/similarity?{query}")
    dash_duo.wait_for_element("#similarity-result-grid img")


def test_page_opens_the_reference_named_in_the_url(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&image=5")
    _expect_reference(dash_duo, samples, 5)
    assert samples.relpaths[samples.position(5)] == "animals/horses.jpg"
    scores = [float(s.text) for s in dash_duo.find_elements("#similarity-result-grid .similarity-score")]
    assert scores == sorted(scores, reverse=True) and len(scores) == 8
    expected = similar_images(samples, 5, 8)
    assert scores == pytest.approx([round(r.score, 3) for r in expected], abs=1e-3)
    embedding = dash_duo.find_elements("#similarity-result-grid .similarity-embedding")[0].text
    assert embedding.startswith("[" + ", ".join(f"{x:.3f}" for x in expected[0].embedding_head))
    until(lambda: on_graph(dash_duo, "#similarity-preview", "gd.layout.images[0].source")
          == "/thumbnails/5/preview.jpg", timeout=5)
    loaded = dash_duo.driver.execute_async_script(
        "const done = arguments[arguments.length - 1], image = new Image();"
        "image.onload = () => done(image.naturalWidth); image.onerror = () => done(0);"
        "image.src = '/thumbnails/5/preview.jpg';")
    assert loaded == 512
    assert "active" in dash_duo.find_element("#nav-similarity").get_attribute("class")

    _open(dash_duo, "dataset=samples")  # no image given: the dataset's first one
    _expect_reference(dash_duo, samples, int(samples.image_ids[0]))
    _open(dash_duo, "dataset=samples&image=99999&k=3")
    _expect_reference(dash_duo, samples, int(samples.image_ids[0]), k=3)
    assert "99999" in dash_duo.find_element("#similarity-missing").text
    assert dash_duo.get_logs() == []


def test_picker_and_k_change_the_results(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&image=5")
    _expect_reference(dash_duo, samples, 5)

    _when_stable(lambda: dash_duo.find_element("#similarity-reference").click())
    _when_stable(lambda: dash_duo.wait_for_element(".dash-dropdown-search").send_keys("GOLDfi"))
    until(lambda: [o.text for o in dash_duo.find_elements(".dash-dropdown-option")]
          == ["fish/goldfish.jpg"], timeout=5)
    _when_stable(lambda: dash_duo.find_elements(".dash-dropdown-option")[0].click())
    _expect_reference(dash_duo, samples, 21)
    assert samples.relpaths[samples.position(21)] == "fish/goldfish.jpg"

    def set_k(value: int) -> None:
        box = dash_duo.find_element("#similarity-k input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)  # the slider's number box commits when it loses focus

    _when_stable(lambda: set_k(3))
    until(lambda: len(_result_paths(dash_duo)) == 3, timeout=10)
    assert "k=3" in dash_duo.driver.current_url
    _when_stable(lambda: set_k(20))
    until(lambda: _result_paths(dash_duo) == [r.relpath for r in similar_images(samples, 21, 20)], timeout=10)
    assert "k=20" in dash_duo.driver.current_url and "image=21" in dash_duo.driver.current_url
    assert dash_duo.find_element("#similarity-result-count").text.startswith("20 most similar")
    assert dash_duo.get_logs() == []


def test_clicking_a_result_makes_it_the_reference(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&image=12&k=5")
    _expect_reference(dash_duo, samples, 12, k=5)
    third = similar_images(samples, 12, 5)[2]
    _when_stable(lambda: dash_duo.find_elements("#similarity-result-grid .similarity-result")[2].click())
    _expect_reference(dash_duo, samples, third.image_id, k=5)
    assert "k=5" in dash_duo.driver.current_url
    dash_duo.driver.get(dash_duo.driver.current_url)  # the link reproduces the view
    dash_duo.wait_for_element("#similarity-result-grid img")
    _expect_reference(dash_duo, samples, third.image_id, k=5)
    assert dash_duo.get_logs() == []


def test_heatmap_shows_every_sample_and_hovering_a_cell_shows_both_images(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&image=5")
    area = dash_duo.wait_for_element("#similarity-heatmap .nsewdrag")
    shape = dash_duo.driver.execute_script(
        "const z = document.querySelector('#similarity-heatmap .js-plotly-plot').calcdata[0][0].z;"
        "return [z.length, ...new Set(Array.from(z, row => row.length))]")
    assert shape == [44, 44]
    ticks = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#similarity-heatmap .xtick text')].map(t => t.textContent)")
    assert ticks == short_names(samples.relpaths)

    row, column = 2, 19
    width, height = area.size["width"], area.size["height"]
    ActionChains(dash_duo.driver).move_to_element(area).move_by_offset(
        int((column + 0.5) * width / 44 - width / 2), int((row + 0.5) * height / 44 - height / 2)).perform()
    until(lambda: dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#similarity-tooltip img')].map(i => i.alt)")
        == [samples.relpaths[row], samples.relpaths[column]], timeout=10)
    assert dash_duo.find_element("#similarity-tooltip").is_displayed()
    images = dash_duo.find_elements("#similarity-tooltip img")
    until(lambda: all(dash_duo.driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images),
          timeout=5)
    assert [i.get_attribute("src").split("/thumbnails/")[1] for i in images] == [
        f"{samples.image_ids[row]}/gallery.jpg", f"{samples.image_ids[column]}/gallery.jpg"]
    assert "cosine" in dash_duo.find_element("#similarity-tooltip").text
    assert dash_duo.get_logs() == []


def test_find_similar_images_in_the_gallery_opens_this_page(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    dash_duo.wait_for_element("#gallery-grid img")
    _when_stable(lambda: dash_duo.find_elements("#gallery-grid .gallery-thumb")[7].click())
    dash_duo.wait_for_contains_text("#detail-facts", samples.relpaths[7])
    _when_stable(lambda: dash_duo.find_element("#detail-similar-link").click())
    until(lambda: "/similarity?" in dash_duo.driver.current_url, timeout=10)
    _expect_reference(dash_duo, samples, int(samples.image_ids[7]))
    assert dash_duo.get_logs() == []


def test_a_box_drawn_on_the_reference_finds_the_region_in_other_images(dash_duo, dashboard_app, sample_db, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&image=3")
    # An upload has no stored patch grid: the page says a region needs a dataset image.
    assert "needs a dataset image" in text_of(dash_duo, "#similarity-upload-region")
    drag_top_left_quarter(dash_duo, "#similarity-preview")
    heading = "#similarity-region-results .region-heading"
    relpath = samples.relpaths[samples.position(3)]
    dash_duo.wait_for_contains_text(heading, f"region of 2 x 2 patches of {relpath}", timeout=JOB_DEADLINE_S)
    assert "of the 43 images" in text_of(dash_duo, heading)  # the shortlist: every other image
    store = DatasetStore(f"sqlite:///{sample_db}")
    expected = region_query(store, samples, 3, Region(0, 0, 2, 2), 43)[:REGION_RESULTS]
    shown = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#similarity-region-results .js-plotly-plot')].map(gd => "
        "[gd.layout.images[0].source, gd.layout.shapes.length])")
    assert shown == [[f"/thumbnails/{m.image_id}/preview.jpg", 1] for m in expected]  # each with its place outlined
    scores = [float(s.text.split()[-1]) for s in dash_duo.find_elements("#similarity-region-results .region-score")]
    assert scores == pytest.approx([round(m.score, 3) for m in expected], abs=1e-3)
    links = [a.get_attribute("href") for a in dash_duo.find_elements("#similarity-region-results .region-why")]
    assert [urlsplit(link)._replace(scheme="", netloc="").geturl() for link in links] == [
        why_url("samples", 3, m.image_id) for m in expected]
    box = dash_duo.find_element("#similarity-shortlist")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("10", Keys.ENTER)
    dash_duo.wait_for_contains_text(heading, "of the 10 images", timeout=JOB_DEADLINE_S)
    assert dash_duo.get_logs() == []
