"""The frame of every page: state panels for missing or empty databases, the dataset picker, navigation."""

from __future__ import annotations

import shutil

import pytest
from dash.testing.wait import until
from selenium.webdriver.common.by import By

from dashboard.app import create_app
from dashboard.data import DatasetStore
from dashboard.pages import PAGES
from dashboard.settings import Settings
from dashboard.shell import page_shell
from db.engine import open_database
from tests.browser import when_stable
from tests.conftest import FAST, run_cli
from tests.images import noise


def _panel_text(component) -> str:
    """All text inside a Dash component tree."""
    if isinstance(component, str):
        return component
    children = getattr(component, "children", None)
    if children is None:
        return ""
    if not isinstance(children, list):
        children = [children]
    return " ".join(_panel_text(child) for child in children)


def _page(store: DatasetStore, dataset: str | None = None) -> str:
    return _panel_text(page_shell(store, "/gallery", dataset, lambda provenance: f"content of {provenance.name}"))


def test_a_missing_database_is_named_on_the_page(tmp_path):
    text = _page(DatasetStore(f"sqlite:///{tmp_path / 'nowhere.db'}"))
    assert "The database cannot be opened" in text and str(tmp_path / "nowhere.db") in text


def test_an_empty_database_says_how_to_fill_it(tmp_path):
    open_database(str(tmp_path / "empty.db"))
    assert "No datasets yet" in _page(DatasetStore(f"sqlite:///{tmp_path / 'empty.db'}"))


def test_a_synthetic_dataset_says_what_it_is_rather_than_that_indexing_is_unfinished(tmp_path):
    from indexer.synthetic import write_synthetic_dataset

    db = tmp_path / "synthetic.db"
    write_synthetic_dataset(open_database(str(db)), "scale", 12, dim=8, clusters=2)
    text = _page(DatasetStore(f"sqlite:///{db}"), "scale")
    assert "synthetic data, written without a model" in text and "indexing not finished" not in text


def test_an_unknown_dataset_lists_the_known_ones(sample_db):
    store = DatasetStore(f"sqlite:///{sample_db}")
    assert "No dataset named 'dogs'" in _page(store, "dogs") and "samples" in _page(store, "dogs")
    assert "content of samples" in _page(store) and "content of samples" in _page(store, "samples")


@pytest.fixture
def two_datasets(sample_db, tmp_path):
    db = tmp_path / "two.db"
    shutil.copyfile(sample_db, db)
    for i in range(3):
        noise(tmp_path / "extra" / f"{i}.png", seed=i)
    run_cli("index", tmp_path / "extra", "--db", db, "--random-weights", *FAST)
    return create_app(Settings(f"sqlite:///{db}", tmp_path / "cache", "test-secret"))


def test_the_dataset_picker_and_the_navigation_keep_the_dataset(dash_duo, two_datasets):
    dash_duo.start_server(two_datasets)
    dash_duo.wait_for_contains_text("#provenance", "3 images")  # the first dataset by name: extra
    dash_duo.select_dcc_dropdown("#dataset-picker", value="samples")
    dash_duo.wait_for_contains_text("#provenance", "44 images")
    until(lambda: "dataset=samples" in dash_duo.driver.current_url, timeout=10)
    for title, path in ((page.title, page.path) for page in PAGES if not page.needs_uploads):
        when_stable(lambda path=path: dash_duo.find_element(f"#nav-{path.strip('/')}").click())
        until(lambda path=path: dash_duo.driver.current_url.split("?")[0].endswith(path), timeout=10)
        dash_duo.wait_for_contains_text("#provenance", "44 images")
        assert "dataset=samples" in dash_duo.driver.current_url, title
    assert dash_duo.get_logs() == []


def test_a_page_on_a_missing_database_explains_itself(dash_duo, tmp_path):
    app = create_app(Settings(f"sqlite:///{tmp_path / 'nowhere.db'}", tmp_path / "cache", "test-secret"))
    dash_duo.start_server(app)
    dash_duo.wait_for_contains_text("#state-panel", "The database cannot be opened")
    assert "dinoscope index" in dash_duo.find_element("#state-panel").text
    assert dash_duo.get_logs() == []


@pytest.mark.parametrize(("page", "words"), [("clustering", "DBSCAN finds dense regions"),
                                             ("similarity", "Cosine similarity")])
def test_each_page_explains_itself_when_asked(dash_duo, dashboard_app, page, words):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(f"{dash_duo.server_url}/{page}?dataset=samples")
    dash_duo.wait_for_element(f"#{page}-explanation .accordion-button").click()
    dash_duo.wait_for_contains_text(f"#{page}-explanation", words)
    assert dash_duo.get_logs() == []


def _shown(dash_duo, selector: str) -> bool:
    return bool(dash_duo.driver.execute_script(
        "const e = document.querySelector(arguments[0]); return !!e && e.offsetHeight > 0;", selector))


def test_the_random_weights_banner_folds_and_each_browser_remembers_it(dash_duo, dashboard_app):
    """At 1366 x 768 the banner pushed the results down: it folds to one line, on every page, until unfolded."""
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(f"{dash_duo.server_url}/gallery?dataset=samples")
    dash_duo.wait_for_contains_text("#random-weights-banner-body", "say nothing about the images")
    tall = dash_duo.find_element("#random-weights-banner").size["height"]
    when_stable(lambda: dash_duo.find_element("#random-weights-banner-toggle").click())
    until(lambda: not _shown(dash_duo, "#random-weights-banner-body"), timeout=10)
    assert dash_duo.find_element("#random-weights-banner-toggle").text == "Show"
    assert dash_duo.find_element("#random-weights-banner").size["height"] < tall - 15  # one line left
    assert "Random weights" in dash_duo.find_element("#random-weights-banner").text

    dash_duo.driver.get(f"{dash_duo.server_url}/similarity?dataset=samples")  # another page, loaded anew
    dash_duo.wait_for_element("#similarity-result-grid img")
    until(lambda: dash_duo.find_element("#random-weights-banner-toggle").text == "Show", timeout=10)
    assert not _shown(dash_duo, "#random-weights-banner-body")
    when_stable(lambda: dash_duo.find_element("#random-weights-banner-toggle").click())
    until(lambda: _shown(dash_duo, "#random-weights-banner-body"), timeout=10)
    assert dash_duo.find_element("#random-weights-banner-toggle").text == "Hide"
    assert dash_duo.get_logs() == []


def test_an_unknown_address_keeps_the_navigation(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(f"{dash_duo.server_url}/no/such/page")
    dash_duo.wait_for_contains_text("#state-panel", "There is no page at this address")
    when_stable(lambda: dash_duo.find_element("#nav-clustering").click())
    until(lambda: dash_duo.driver.current_url.split("?")[0].endswith("/clustering"), timeout=10)
    dash_duo.wait_for_contains_text("#provenance", "44 images")
    assert dash_duo.get_logs() == []


def test_a_slow_answer_shows_a_busy_state_over_what_it_will_replace(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(f"{dash_duo.server_url}/gallery?dataset=samples&per_page=20")
    dash_duo.wait_for_element("#gallery-grid img")
    spinner = ".dinoscope-busy .dash-spinner"
    assert not dash_duo.find_elements(spinner)
    # Every callback answer from now on takes two seconds to arrive, as on a busy server.
    dash_duo.driver.execute_script("""
        const fetch = window.fetch;
        window.fetch = (...args) => new Promise(done => setTimeout(() => done(fetch(...args)), 2000));""")
    when_stable(lambda: dash_duo.find_element("#gallery-pages").find_element(By.LINK_TEXT, "2").click())
    until(lambda: dash_duo.find_elements(spinner), timeout=5)  # shown once the answer is half a second late
    until(lambda: not dash_duo.find_elements(spinner), timeout=20)
    until(lambda: "page=2" in dash_duo.driver.current_url, timeout=10)
    assert dash_duo.get_logs() == []
