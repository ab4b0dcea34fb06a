"""Embeddings inspector logic (statistics, extremes, PCA, downloads, figures) and the page in a real browser."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dash.testing.wait import until
from selenium.webdriver.common.keys import Keys
from sklearn.decomposition import PCA

from dashboard.analysis.projection import normalize_rows
from dashboard.data import DatasetView
from dashboard.embeddings_view import (
    cached_pca,
    component_limit,
    dataset_npz,
    dataset_pca,
    embedding_histogram_figure,
    embedding_line_figure,
    embedding_npy,
    embedding_statistics,
    explained_variance_figure,
    extreme_features,
    extremes_figure,
    format_value,
    histogram_counts,
    pca_cache_key,
    pca_table_page,
    raw_values_text,
)
from dashboard.pages.embeddings import TABLE_PAGE_SIZE
from db.engine import open_database
from db.queries import dataset_by_name, load_embeddings
from tests.browser import text_of as _text
from tests.browser import when_stable as _when_stable


def _view(n: int, dim: int = 16, seed: int = 0, generation: int = 1) -> DatasetView:
    rng = np.random.default_rng(seed)
    return DatasetView("d", generation, np.arange(100, 100 + n), [f"set{i % 3}/Image_{i:03d}.png" for i in range(n)],
                       [f"set{i % 3}" if i % 4 else None for i in range(n)], [(64, 48)] * n,
                       rng.standard_normal((n, dim)).astype(np.float32))


@pytest.fixture
def stored(sample_db) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, embeddings) of the sample set straight from the database."""
    database = open_database(str(sample_db), readonly=True)
    with database.session() as session:
        return load_embeddings(session, dataset_by_name(session, "samples"))


def test_statistics_equal_numpy():
    vector = np.random.default_rng(3).standard_normal(384).astype(np.float32) * 2 + 0.5
    stats = embedding_statistics(vector)
    as64 = vector.astype(np.float64)
    assert stats.dimension == 384
    assert stats.mean == pytest.approx(np.mean(as64), abs=1e-12)
    assert stats.std == pytest.approx(np.std(as64), abs=1e-12)
    assert stats.norm == pytest.approx(np.linalg.norm(as64), rel=1e-12)
    assert (stats.min, stats.max) == (float(vector.min()), float(vector.max()))
    assert (stats.argmin, stats.argmax) == (int(vector.argmin()), int(vector.argmax()))
    assert format_value(0.000123456) == "0.0001235" and format_value(51.23456) == "51.23"
    assert embedding_statistics(np.array([2.0, 2.0, -1.0, -1.0])).argmin == 2  # the first of equal minima
    with pytest.raises(ValueError):
        embedding_statistics(np.zeros(0))


def test_top_and_bottom_features_are_right_and_ties_go_by_feature_index():
    vector = np.array([1, 3, 3, -2, 0, 3, -2, 5], dtype=np.float32)
    found = extreme_features(vector, 3)
    assert found.top_indices.tolist() == [7, 1, 2] and found.top_values.tolist() == [5, 3, 3]
    assert found.bottom_indices.tolist() == [3, 6, 4] and found.bottom_values.tolist() == [-2, -2, 0]
    assert extreme_features(vector, 4).top_indices.tolist() == [7, 1, 2, 5]
    assert extreme_features(np.zeros(6, np.float32), 3).bottom_indices.tolist() == [0, 1, 2]
    assert len(extreme_features(vector, 100).top_indices) == 8 and len(extreme_features(vector, 0).top_indices) == 1

    rng = np.random.default_rng(1)
    vector = rng.standard_normal(384).astype(np.float32)
    found = extreme_features(vector, 10)
    assert found.top_indices.tolist() == np.argsort(-vector)[:10].tolist()
    assert found.bottom_indices.tolist() == np.argsort(vector)[:10].tolist()
    np.testing.assert_array_equal(found.top_values, vector[found.top_indices])
    assert found.top_values.dtype == np.float32


@pytest.mark.parametrize("n", [2, 5, 21])
def test_explained_variance_matches_sklearn_on_the_normalised_embeddings(samples, n):
    pca = dataset_pca(samples).first(n)
    reference = PCA(n_components=n).fit(normalize_rows(samples.embeddings))
    np.testing.assert_allclose(pca.ratio, reference.explained_variance_ratio_, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(pca.cumulative, np.cumsum(reference.explained_variance_ratio_), rtol=1e-4)
    assert np.all(np.diff(pca.cumulative) >= 0) and pca.cumulative[-1] <= 1 + 1e-9
    assert pca.coordinates.shape == (44, n) and pca.components == n
    # The same coordinates up to each component's sign.
    expected = reference.transform(normalize_rows(samples.embeddings))
    signs = np.sign(np.sum(pca.coordinates * expected, axis=0))
    np.testing.assert_allclose(pca.coordinates * signs, expected, atol=1e-4)


def test_all_components_explain_everything_and_limits_follow_the_data():
    view = _view(6, dim=16)
    pca = dataset_pca(view)
    assert pca.components == 6
    assert pca.cumulative[-1] == pytest.approx(1.0) and pca.cumulative[-1] <= 1 + 1e-9
    assert component_limit(view) == 6 and component_limit(_view(80, dim=64)) == 50
    assert component_limit(_view(30, dim=8)) == 8


def test_the_pca_is_computed_once_per_dataset_generation_for_every_number_of_components(monkeypatch):
    from dashboard import embeddings_view

    calls = []
    real = embeddings_view.dataset_pca
    monkeypatch.setattr(embeddings_view, "dataset_pca", lambda view: calls.append(view.generation) or real(view))
    cache: dict = {}
    view = _view(12)
    first = cached_pca(cache, view)
    assert cached_pca(cache, view) is first and calls == [1]
    np.testing.assert_array_equal(first.first(3).coordinates, first.coordinates[:, :3])
    assert first.first(3).ratio.tolist() == first.ratio[:3].tolist()
    cached_pca(cache, _view(12, generation=2))
    assert calls == [1, 2] and len(cache) == 2
    assert pca_cache_key(view) != pca_cache_key(_view(12, generation=2))


def test_the_npy_and_npz_downloads_hold_exactly_the_stored_values(samples, stored):
    image_ids, embeddings = stored
    np.testing.assert_array_equal(samples.image_ids, image_ids)
    for row in (0, 4, 21):
        loaded = np.load(io.BytesIO(embedding_npy(samples, int(image_ids[row]))))
        assert loaded.dtype == np.float32 and loaded.shape == (384,)
        np.testing.assert_array_equal(loaded, embeddings[row])
    with pytest.raises(KeyError):
        embedding_npy(samples, 99999)

    with np.load(io.BytesIO(b"".join(dataset_npz(samples)))) as archive:  # allow_pickle is False by default
        assert sorted(archive.files) == ["embeddings", "image_ids", "labels", "relpaths"]
        assert archive["embeddings"].dtype == np.float32
        np.testing.assert_array_equal(archive["embeddings"], embeddings)
        np.testing.assert_array_equal(archive["image_ids"], image_ids)
        assert archive["relpaths"].tolist() == samples.relpaths
        assert archive["labels"].tolist() == [label or "" for label in samples.labels]
        assert archive["relpaths"][23] == "kitchen/coffee.png" and archive["labels"][23] == "kitchen"

    unlabelled = _view(5)
    with np.load(io.BytesIO(b"".join(dataset_npz(unlabelled)))) as archive:
        assert archive["labels"].tolist() == ["", "set1", "set2", "set0", ""]


def test_the_npz_is_streamed_in_pieces_of_bounded_size():
    """The whole .npz travelled as one JSON callback response (108 MB at 20,000 images): now it is written a few
    rows at a time, whatever the dataset's size."""
    view = _view(3000, dim=64)
    pieces = list(dataset_npz(view, chunk=100))
    assert max(len(piece) for piece in pieces) <= 100 * 64 * 4 + 1024
    with np.load(io.BytesIO(b"".join(pieces))) as archive:
        np.testing.assert_array_equal(archive["embeddings"], view.embeddings)
        assert archive["relpaths"].tolist() == view.relpaths


def test_the_table_is_sent_a_page_at_a_time_sorted_on_the_server():
    """Every row of the PCA table went to the browser (15.5 MB at 20,000 images): now one page does."""
    view = _view(3000)
    pca = dataset_pca(view).first(3)
    page = pca_table_page(view, pca, 0, 25)
    assert [c["id"] for c in page.columns] == ["path", "label", "PC1", "PC2", "PC3"]
    assert all(c.get("type") == "numeric" for c in page.columns[2:])
    assert len(page.rows) == 25 and page.page_count == 120
    assert [row["path"] for row in page.rows] == view.relpaths[:25] and page.rows[0]["label"] == ""
    assert page.rows[3]["id"] == 103 and page.rows[3]["PC2"] == pytest.approx(float(pca.coordinates[3, 1]), abs=1e-4)
    last = pca_table_page(view, pca, 500, 25)  # a page past the end is the last one
    assert [row["id"] for row in last.rows] == view.image_ids[-25:].tolist()

    ascending = pca_table_page(view, pca, 1, 25, [{"column_id": "PC2", "direction": "asc"}])
    order = np.argsort(pca.coordinates[:, 1], kind="stable")
    assert [row["id"] for row in ascending.rows] == view.image_ids[order[25:50]].tolist()
    descending = pca_table_page(view, pca, 0, 25, [{"column_id": "PC2", "direction": "desc"}])
    assert descending.rows[0]["id"] == int(view.image_ids[np.argmax(pca.coordinates[:, 1])])
    by_label = pca_table_page(view, pca, 0, 3000, [{"column_id": "label", "direction": "asc"}])
    labels = [row["label"] for row in by_label.rows]
    assert labels == sorted(labels) and labels[0] == ""
    by_path = pca_table_page(view, pca, 0, 3000, [{"column_id": "path", "direction": "desc"}])
    assert [row["path"] for row in by_path.rows] == view.relpaths[::-1]


def test_figures_show_the_embedding():
    vector = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    line = embedding_line_figure(vector)
    np.testing.assert_array_equal(np.asarray(line.data[0].y), vector)
    assert list(line.data[0].x) == list(range(64))

    counts, edges = histogram_counts(vector)
    assert counts.sum() == 64 and edges[0] == vector.min() and edges[-1] == pytest.approx(vector.max())
    histogram = embedding_histogram_figure(vector)
    assert list(histogram.data[0].y) == counts.tolist()

    extremes = extreme_features(vector, 5)
    bars = extremes_figure(extremes)
    assert [len(trace.x) for trace in bars.data] == [5, 5] and bars.layout.xaxis.type == "category"
    assert list(bars.data[0].x) == [f"#{i}" for i in extremes.top_indices]
    assert list(bars.data[1].x) == [f"#{i}" for i in extremes.bottom_indices[::-1]]

    variance = explained_variance_figure(np.array([0.5, 0.3, 0.1]), np.array([0.5, 0.8, 0.9]))
    assert list(variance.data[0].x) == ["PC1", "PC2", "PC3"] and list(variance.data[1].y) == [0.5, 0.8, 0.9]


def test_raw_values_list_every_value():
    vector = np.arange(20, dtype=np.float32) / 4
    text = raw_values_text(vector, per_line=8)
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].startswith(" 0: +0.00000 +0.25000") and lines[2].startswith("16: +4.00000")
    assert sum(len(line.split(": ")[1].split()) for line in lines) == 20


# In the browser -------------------------------------------------------------------------------------------------


def _figure(dash_duo, graph: str, expression: str):
    """Evaluate a JavaScript expression on a graph's div `gd` (decoded values are in gd._fullData)."""
    return dash_duo.driver.execute_script(
        f"try {{ const gd = document.querySelector('#{graph} .js-plotly-plot'); return {expression}; }} "
        "catch (notDrawnYet) { return null; }")


def _line(dash_duo) -> list[float] | None:
    return _figure(dash_duo, "embeddings-line", "Array.from(gd._fullData[0].y)")


def _bar_labels(dash_duo) -> list[str] | None:
    return _figure(dash_duo, "embeddings-extremes", "gd._fullData.flatMap(t => Array.from(t.x))")


def _column(dash_duo, column: str) -> list[str]:
    return dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#embeddings-pca-table td[data-dash-column=\"' + arguments[0] + '\"]')]"
        ".map(cell => cell.innerText)", column)


def _header_ids(dash_duo) -> list[str]:
    return dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#embeddings-pca-table th.dash-header')]"
        ".map(cell => cell.getAttribute('data-dash-column'))")


def _expected_labels(view: DatasetView, image_id: int, n: int) -> list[str]:
    found = extreme_features(view.embeddings[view.position(image_id)], n)
    return [f"#{i}" for i in found.top_indices] + [f"#{i}" for i in found.bottom_indices[::-1]]


def _expect_image(dash_duo, view: DatasetView, image_id: int, n: int = 10) -> None:
    """Wait until the page shows `image_id`: its path, statistics, figures, and in the URL."""
    row = view.position(image_id)
    vector = view.embeddings[row]
    stats = embedding_statistics(vector)
    until(lambda: _text(dash_duo, "#embeddings-path") == view.relpaths[row]
          and _text(dash_duo, "#embeddings-stat-mean") == format_value(stats.mean)
          and _text(dash_duo, "#embeddings-stat-norm") == format_value(stats.norm), timeout=10)
    until(lambda: _line(dash_duo) == pytest.approx(vector.tolist(), abs=1e-6), timeout=10)
    until(lambda: _bar_labels(dash_duo) == _expected_labels(view, image_id, n), timeout=10)
    counts = histogram_counts(vector)[0].tolist()
    until(lambda: _figure(dash_duo, "embeddings-histogram", "Array.from(gd._fullData[0].y)") == counts, timeout=10)
    until(lambda: f"image={image_id}&" in dash_duo.driver.current_url, timeout=5)
    assert _text(dash_duo, "#embeddings-stat-dimension") == "384"
    assert _text(dash_duo, "#embeddings-stat-std") == format_value(stats.std)
    assert _text(dash_duo, "#embeddings-stat-min") == f"{format_value(stats.min)} (#{stats.argmin})"
    assert _text(dash_duo, "#embeddings-stat-max") == f"{format_value(stats.max)} (#{stats.argmax})"


def _open(dash_duo, query: str) -> None:
    dash_duo.driver.get(f"{dash_duo.server_url}/embeddings?{query}")
    dash_duo.wait_for_element("#embeddings-stats")


def _set_slider(dash_duo, selector: str, value: int) -> None:
    def enter():
        box = dash_duo.find_element(f"{selector} input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value), Keys.TAB)  # the slider's number box commits when it loses focus

    _when_stable(enter)


def test_page_opens_the_image_named_in_the_url_and_explains_itself(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&image=5")
    _expect_image(dash_duo, samples, 5)
    assert "active" in dash_duo.find_element("#nav-embeddings").get_attribute("class")
    assert dash_duo.find_element("#embeddings-preview").get_attribute("src").endswith("/thumbnails/5/preview.jpg")
    raw = dash_duo.driver.execute_script("return document.querySelector('#embeddings-raw').textContent")
    values = [float(v) for line in raw.splitlines() for v in line.split(": ")[1].split()]
    assert values == pytest.approx(samples.embeddings[samples.position(5)].tolist(), abs=1e-5)
    assert "All 384 values" in _text(dash_duo, "#embeddings-raw-summary")
    assert len(_column(dash_duo, "path")) == TABLE_PAGE_SIZE and _header_ids(dash_duo)[-1] == "PC5"

    # The explanation starts collapsed and opens when its header is clicked.
    assert not dash_duo.find_element("#embeddings-explanation .accordion-collapse").is_displayed()
    _click(dash_duo, "#embeddings-explanation .accordion-button")
    until(lambda: "CLS" in _text(dash_duo, "#embeddings-explanation .accordion-body"), timeout=5)
    text = _text(dash_duo, "#embeddings-explanation .accordion-body")
    assert "4 more tokens" in text and "largest variance" in text and "linear" in text

    _open(dash_duo, "dataset=samples&image=99999&n=3")  # unknown image: the first one, with a warning
    _expect_image(dash_duo, samples, int(samples.image_ids[0]), n=3)
    assert "99999" in dash_duo.find_element("#embeddings-missing").text
    assert dash_duo.get_logs() == []


def test_picking_an_image_and_changing_n_update_the_statistics_and_figures(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&image=5")
    _expect_image(dash_duo, samples, 5)

    _when_stable(lambda: dash_duo.find_element("#embeddings-image").click())
    _when_stable(lambda: dash_duo.wait_for_element(".dash-dropdown-search").send_keys("GOLDfi"))
    until(lambda: [o.text for o in dash_duo.find_elements(".dash-dropdown-option")]
          == ["fish/goldfish.jpg"], timeout=5)
    _when_stable(lambda: dash_duo.find_elements(".dash-dropdown-option")[0].click())
    _expect_image(dash_duo, samples, 21)
    assert dash_duo.find_element("#embeddings-preview").get_attribute("src").endswith("/thumbnails/21/preview.jpg")

    _set_slider(dash_duo, "#embeddings-n", 3)
    until(lambda: _bar_labels(dash_duo) == _expected_labels(samples, 21, 3), timeout=10)
    assert "n=3" in dash_duo.driver.current_url
    _set_slider(dash_duo, "#embeddings-n", 25)
    until(lambda: _bar_labels(dash_duo) == _expected_labels(samples, 21, 25), timeout=10)
    assert len(_bar_labels(dash_duo)) == 50
    assert "n=25" in dash_duo.driver.current_url and "image=21" in dash_duo.driver.current_url
    assert dash_duo.get_logs() == []


def test_components_change_the_pca_and_the_table_sorts_by_a_clicked_column(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&components=3")
    variance = "Array.from(gd._fullData[0].y)"
    until(lambda: _figure(dash_duo, "embeddings-variance", "Array.from(gd._fullData[0].x)") == ["PC1", "PC2", "PC3"],
          timeout=10)
    expected = dataset_pca(samples).first(3)
    assert _figure(dash_duo, "embeddings-variance", variance) == pytest.approx(expected.ratio.tolist(), rel=1e-4)
    assert _header_ids(dash_duo) == ["path", "label", "PC1", "PC2", "PC3"]

    _set_slider(dash_duo, "#embeddings-components", 8)
    until(lambda: len(_figure(dash_duo, "embeddings-variance", variance) or []) == 8, timeout=10)
    assert _figure(dash_duo, "embeddings-variance", variance) == pytest.approx(
        dataset_pca(samples).first(8).ratio.tolist(), rel=1e-4)
    until(lambda: _header_ids(dash_duo) == ["path", "label", *[f"PC{i}" for i in range(1, 9)]], timeout=10)
    assert "components=8" in dash_duo.driver.current_url
    caption = _text(dash_duo, "#embeddings-pca-caption")
    assert "first 8 components" in caption and f"{dataset_pca(samples).first(8).cumulative[-1]:.1%}" in caption

    paths = _column(dash_duo, "path")
    assert paths == samples.relpaths[:TABLE_PAGE_SIZE]  # the dataset's order until a column is sorted
    _when_stable(lambda: dash_duo.find_element(
        "#embeddings-pca-table th[data-dash-column='PC1'] .column-header--sort").click())
    coordinates = dataset_pca(samples).coordinates[:, 0]
    by_pc1 = [samples.relpaths[i] for i in np.argsort(coordinates, kind="stable")][:TABLE_PAGE_SIZE]
    until(lambda: _column(dash_duo, "path") == by_pc1, timeout=10)  # the first click sorts in ascending order
    shown = [float(v) for v in _column(dash_duo, "PC1")]
    assert shown == sorted(shown) and shown[0] < shown[-1]
    assert _column(dash_duo, "path") != paths
    assert dash_duo.get_logs() == []


def _click(dash_duo, selector: str) -> None:
    """Click an element once the images above it have loaded (they move it), scrolled to the middle of the view
    at once (Bootstrap makes scrolling smooth, which Selenium's own scrolling does not wait for)."""
    until(lambda: dash_duo.driver.execute_script(
        "return [...document.images].every(image => image.complete)"), timeout=10)

    def click():
        element = dash_duo.find_element(selector)
        dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element)
        element.click()

    _when_stable(click)


def test_both_downloads_hold_the_stored_embeddings(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples&image=12")
    _expect_image(dash_duo, samples, 12)

    _click(dash_duo, "#embeddings-download-npy")
    target = Path(dash_duo.download_path) / "samples-image12-embedding.npy"
    until(lambda: target.exists() and target.stat().st_size > 0, timeout=20)
    until(lambda: target.stat().st_size == len(embedding_npy(samples, 12)), timeout=10)
    loaded = np.load(target)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, samples.embeddings[samples.position(12)])

    _click(dash_duo, "#embeddings-download-npz")
    archive_path = Path(dash_duo.download_path) / "samples-embeddings-44x384.npz"
    size = len(b"".join(dataset_npz(samples)))
    until(lambda: archive_path.exists() and archive_path.stat().st_size == size, timeout=20)
    with np.load(archive_path) as archive:
        np.testing.assert_array_equal(archive["embeddings"], samples.embeddings)
        np.testing.assert_array_equal(archive["image_ids"], samples.image_ids)
        assert archive["relpaths"].tolist() == samples.relpaths
    assert dash_duo.get_logs() == []
