"""Gallery logic, the image route, and the gallery page in a real browser."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from dash.testing.wait import until
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from dashboard import data
from dashboard.browse import GALLERY_COLUMNS, NO_LABEL, gallery_page, image_detail, label_options
from dashboard.data import DatasetStore, DatasetView
from tests.browser import when_stable as _when_stable
from tests.conftest import call_callback, index_folder
from tests.images import noise


def _view(labels: list[str | None]) -> DatasetView:
    rng = np.random.default_rng(0)
    return DatasetView("d", 1, np.arange(10, 10 + len(labels)), [f"{i}.png" for i in range(len(labels))], labels,
                       [(64, 48)] * len(labels), rng.standard_normal((len(labels), 8)).astype(np.float32))


def test_gallery_pages_filter_by_label_and_clamp_the_page():
    view = _view(["a", "b", None, "a", "a"])
    assert gallery_page(view, None, 1, per_page=2).positions == [0, 1]
    last = gallery_page(view, None, 9, per_page=2)
    assert (last.positions, last.page, last.page_count, last.total) == ([4], 3, 3, 5)
    assert gallery_page(view, "a", 1, per_page=10).positions == [0, 3, 4]
    assert gallery_page(view, NO_LABEL, 1).positions == [2]
    assert label_options(view) == ["a", "b", NO_LABEL]
    assert label_options(_view([None, None])) == []


def test_image_detail_lists_true_nearest_neighbours():
    view = _view(["a"] * 6)
    detail = image_detail(view, 12, k=3)
    unit = view.embeddings / np.linalg.norm(view.embeddings, axis=1, keepdims=True)
    scores = unit @ unit[2]
    expected = [int(i) for i in np.argsort(-scores) if i != 2][:3]
    assert [n.image_id for n in detail.neighbours] == [10 + i for i in expected]
    assert [n.score for n in detail.neighbours] == pytest.approx([float(scores[i]) for i in expected], abs=1e-5)
    assert image_detail(view, 999) is None


def test_dataset_views_reload_only_when_the_generation_changes(sample_db):
    store = DatasetStore(f"sqlite:///{sample_db}")
    first = store.view("samples")
    assert store.view("samples") is first
    from db.engine import open_database
    from db.mutations import bump_generation
    from db.queries import dataset_by_name

    with open_database(str(sample_db)).session() as session:
        bump_generation(session, dataset_by_name(session, "samples"))
    second = store.view("samples")
    assert second is not first and second.generation == first.generation + 1
    np.testing.assert_array_equal(second.embeddings, first.embeddings)


def test_the_dataset_list_is_read_again_only_after_the_indexer_ran(tmp_path, monkeypatch):
    """Every page shows the datasets with their image counts, and counting reads every image's row: a process keeps
    the list until a dataset's generation or the newest index run changes."""
    photos = tmp_path / "photos"
    for seed in (1, 2):
        noise(photos / f"{seed}.png", seed=seed)
    db = tmp_path / "index.db"
    index_folder(photos, db)
    counted = []
    real = data.dataset_summaries
    monkeypatch.setattr(data, "dataset_summaries", lambda session: counted.append(1) or real(session))
    store = DatasetStore(f"sqlite:///{db}")
    first = store.provenances()
    assert store.provenances() is first and len(counted) == 1
    index_folder(photos, db)  # nothing to do, but a run: its time is shown
    assert store.provenances() is not first and len(counted) == 2
    noise(photos / "3.png", seed=3)
    index_folder(photos, db)
    assert store.provenances()[0].image_count == 3 and len(counted) == 3


def test_crafted_page_values_are_clamped_on_the_server(dashboard_app):
    values = {"gallery-label": None, "gallery-pages": 10**9, "gallery-per-page": "abc", "gallery-dataset": "samples",
              "gallery-filter": {"label": None, "per_page": 50}}
    answer = call_callback(dashboard_app, "gallery-grid.children", values, "gallery-pages.active_page")["response"]
    assert answer["gallery-pages"]["active_page"] == 1 and answer["gallery-filter"]["data"]["per_page"] == 50
    values.update({"gallery-per-page": "20", "gallery-pages": "x", "gallery-filter": {"label": None, "per_page": 20}})
    answer = call_callback(dashboard_app, "gallery-grid.children", values, "gallery-pages.active_page")["response"]
    assert answer["gallery-pages"]["active_page"] == 1 and answer["gallery-pages"]["max_value"] == 3


def test_a_slow_request_is_logged_for_the_operator_with_the_callback_it_ran(dashboard_app, monkeypatch, caplog):
    from dashboard import app as app_module

    values = {"gallery-label": None, "gallery-pages": 2, "gallery-per-page": "20", "gallery-dataset": "samples",
              "gallery-filter": {"label": None, "per_page": 20}}
    with caplog.at_level(logging.WARNING, logger="dashboard.app"):
        call_callback(dashboard_app, "gallery-grid.children", values, "gallery-pages.active_page")
        assert caplog.text == ""  # a quick one is not
        monkeypatch.setattr(app_module, "SLOW_REQUEST_S", 0.0)
        call_callback(dashboard_app, "gallery-grid.children", values, "gallery-pages.active_page")
    assert "slow request: POST /_dash-update-component ..gallery-grid.children...gallery-pages.max_value" \
        in caplog.text


def test_thumbnails_are_served_by_id_with_cache_headers(dashboard_app):
    client = dashboard_app.server.test_client()
    first = client.get("/thumbnails/1/gallery.jpg")
    assert first.status_code == 200 and first.content_type == "image/jpeg" and first.data[:2] == b"\xff\xd8"
    assert "max-age" in first.headers["Cache-Control"] and first.headers["ETag"]
    again = client.get("/thumbnails/1/gallery.jpg", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    preview = client.get("/thumbnails/1/preview.jpg")
    assert preview.status_code == 200 and len(preview.data) > len(first.data)
    assert client.get("/thumbnails/99999/gallery.jpg").status_code == 404
    assert client.get("/thumbnails/1/original.jpg").status_code == 404
    for probe in ("/thumbnails/..%2F..%2Fetc%2Fpasswd/gallery.jpg", "/thumbnails/1/..%2F..%2Fsamples.db"):
        response = client.get(probe)
        assert response.content_type != "image/jpeg" and b"root:" not in response.data and b"SQLite" not in response.data


def _grid_titles(dash_duo) -> list[str]:
    """The paths of the thumbnails on show, read in one step (the grid may re-render between two reads)."""
    return dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#gallery-grid img')].map(image => image.title)")


def test_gallery_shows_pages_filters_labels_and_opens_details(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.wait_for_element("#gallery-grid img")
    thumbs = dash_duo.find_elements("#gallery-grid img")
    assert len(thumbs) == 44  # the whole sample set fits on one page
    dash_duo.wait_for_text_to_equal("#gallery-count", "44 images")
    assert "random weights" in dash_duo.find_element("#random-weights-banner").text
    assert "44 images · vit_small_patch14_reg4_dinov2.lvd142m" in dash_duo.find_element("#provenance").text

    dash_duo.select_dcc_dropdown("#gallery-label", value="kitchen")
    dash_duo.wait_for_text_to_equal("#gallery-count", "7 images")
    assert sorted(_grid_titles(dash_duo)) == [f"kitchen/{name}" for name in (
        "coffee.png", "cup.jpg", "cup_and_saucer.jpg", "cutlery.jpg", "pan.jpg", "plate.jpg", "spoons.jpg")]
    assert "label=kitchen" in dash_duo.driver.current_url

    dash_duo.find_elements("#gallery-grid .gallery-thumb")[0].click()
    dash_duo.wait_for_contains_text("#detail-facts", "kitchen/coffee.png")
    assert len(dash_duo.find_elements("#detail-neighbours img")) == 8
    first_neighbour = dash_duo.find_elements("#detail-neighbours figure")[0]
    neighbour_path = first_neighbour.find_element(By.TAG_NAME, "img").get_attribute("title")
    first_neighbour.click()
    dash_duo.wait_for_contains_text("#detail-facts", neighbour_path)
    preview = dash_duo.find_element("#detail-preview")
    assert dash_duo.driver.execute_script("return arguments[0].naturalWidth", preview) == 512
    assert dash_duo.get_logs() == []


def test_gallery_pages_hold_ten_columns_and_keep_their_place_in_the_url(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.wait_for_element("#gallery-grid img")
    columns = dash_duo.driver.execute_script(
        "return getComputedStyle(document.querySelector('#gallery-grid > div')).gridTemplateColumns.split(' ').length")
    assert columns == GALLERY_COLUMNS
    _when_stable(lambda: Select(dash_duo.find_element("#gallery-per-page")).select_by_value("20"))
    until(lambda: len(_grid_titles(dash_duo)) == 20, timeout=5)
    first_page = _grid_titles(dash_duo)
    _when_stable(lambda: dash_duo.find_element("#gallery-pages").find_element(By.LINK_TEXT, "3").click())
    until(lambda: len(_grid_titles(dash_duo)) == 4, timeout=5)
    last_page = _grid_titles(dash_duo)
    assert not set(first_page) & set(last_page)
    assert "page=3" in dash_duo.driver.current_url and "per_page=20" in dash_duo.driver.current_url

    dash_duo.driver.get(dash_duo.driver.current_url)  # the link reproduces the view
    until(lambda: _grid_titles(dash_duo) == last_page, timeout=10)
    assert dash_duo.get_logs() == []


def test_the_wsgi_entry_point_serves_the_database_named_in_the_environment(sample_db, tmp_path):
    import subprocess
    import sys

    probe = ("from dashboard.wsgi import server; client = server.test_client(); "
             "print(client.get('/health').status_code, client.get('/thumbnails/1/gallery.jpg').content_type)")
    env = {"DINOSCOPE_DB": str(sample_db), "DINOSCOPE_CACHE_DIR": str(tmp_path / "cache"),
           "DINOSCOPE_SECRET_KEY": "s", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.stdout.split() == ["200", "image/jpeg"], result.stderr
