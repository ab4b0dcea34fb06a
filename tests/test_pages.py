"""Pages declared once: the page list drives the navigation and the per-image links, and every app serves its own
database, however many apps one process builds and in whatever order."""

from __future__ import annotations

import json
from functools import partial

import pytest

from dashboard.app import create_app
from dashboard.jobs import background_managers
from dashboard.pages import PAGES
from dashboard.settings import Settings, UploadSettings
from dashboard.shell import image_links
from dashboard.urlstate import IMAGE, Param
from db.engine import open_database
from indexer.synthetic import write_synthetic_dataset


def _database(folder, name: str, count: int) -> str:
    db = folder / f"{name}.db"
    write_synthetic_dataset(open_database(str(db)), name, count, dim=8, clusters=2)
    return f"sqlite:///{db}"


def _app(folder, name: str, count: int):
    return create_app(Settings(_database(folder, name, count), folder / f"{name}-cache", "test-secret"))


def _layout(app, path: str, search: str = "") -> dict:
    """The layout that Dash's router answers for `path` in `app`, as the browser receives it."""
    router = next(output for output in app.callback_map if output.lstrip(".").startswith("_pages_content.children"))
    spec = app.callback_map[router]
    values = {"_pages_location.pathname": path, "_pages_location.search": search}
    body = {"output": router, "outputs": [{"id": "_pages_content", "property": "children"},
                                          {"id": "_pages_store", "property": "data"}],
            "changedPropIds": ["_pages_location.pathname"],
            "inputs": [{**item, "value": values.get(f"{item['id']}.{item['property']}")} for item in spec["inputs"]],
            "state": []}
    response = app.server.test_client().post("/_dash-update-component", data=json.dumps(body),
                                             content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()["response"]


def _props(layout, component_id: str) -> dict:
    pending = [layout]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending += node
        elif isinstance(node, dict):
            props = node.get("props")
            if isinstance(props, dict) and props.get("id") == component_id:
                return props
            pending += list(node.values())
    raise AssertionError(f"no component {component_id!r}")


@pytest.mark.parametrize("order", ["alpha first", "beta first"])
def test_two_apps_in_one_process_each_serve_their_own_database(tmp_path, order):
    built = {}
    for name, count in ([("alpha", 5), ("beta", 7)] if order == "alpha first" else [("beta", 7), ("alpha", 5)]):
        built[name] = _app(tmp_path, name, count)
    for name, count in (("alpha", 5), ("beta", 7)):
        app = built[name]
        for path in ("/gallery", "/", "/clustering", "/similarity"):
            layout = _layout(app, path)["_pages_content"]["children"]
            assert _props(layout, "shell-dataset")["data"] == name, (name, path)
            assert _props(layout, "dataset-picker")["options"] == [name]
            assert _props(layout, "provenance")["children"].startswith(f"{count} images")
        gallery = _layout(app, "/gallery", "?per_page=50")["_pages_content"]["children"]
        assert _props(gallery, "gallery-count")["children"] == f"{count} images"
        assert _props(_layout(app, "/nowhere")["_pages_content"]["children"], "dataset-picker")["options"] == [name]


def test_the_page_list_drives_the_navigation_and_the_per_image_links(tmp_path):
    app = _app(tmp_path, "alpha", 3)
    layout = _layout(app, "/gallery")["_pages_content"]["children"]
    for page in PAGES:
        if page.needs_uploads:  # a server that takes no image sets does not offer their page
            with pytest.raises(AssertionError, match="no component"):
                _props(layout, page.nav_id)
            continue
        link = _props(layout, page.nav_id)
        assert link["children"] == page.title and link["href"] == f"{page.path}?dataset=alpha"
    taking = create_app(Settings(app.server.extensions["dinoscope"].store.db_url, tmp_path / "taking-cache",
                                 "test-secret", uploads=UploadSettings(True, tmp_path / "uploads")))
    link = _props(_layout(taking, "/gallery")["_pages_content"]["children"], "nav-image-sets")
    assert link["children"] == "Image sets" and link["href"] == "/image-sets?dataset=alpha"
    per_image = [page for page in PAGES if page.image_link]
    assert [page.path for page in per_image] == ["/similarity", "/embeddings", "/patches", "/compare"]
    buttons = image_links("alpha", 4, "x", here="/embeddings").children
    assert [(b.id, b.children) for b in buttons] == [("x-similar-link", "Similar images"),
                                                     ("x-patches-link", "Within image"),
                                                     ("x-compare-link", "Compare embeddings")]
    assert _layout(app, "/patches")["_pages_store"]["data"]["title"] == "dinoscope: within image"


def _site_of(job_fn):
    """The Site a background job's callback is bound to (Dash's job function holds the bound callback)."""
    bound = next(cell.cell_contents for cell in job_fn.__closure__ if isinstance(cell.cell_contents, partial))
    return bound.args[0]


def test_two_apps_in_one_process_each_run_their_own_background_jobs(tmp_path):
    managers = {}
    for name in ("alpha", "beta"):
        settings = Settings(_database(tmp_path, name, 4), tmp_path / f"{name}-cache", "test-secret")
        managers[name] = background_managers(settings)
        create_app(settings, managers[name])
    for name, built in managers.items():
        for manager in (built.projections, built.clusterings, built.uploads):
            assert manager.func_registry
            assert {_site_of(job).store.db_url for job in manager.func_registry.values()} == \
                {f"sqlite:///{tmp_path / name}.db"}


def test_every_url_parameter_is_read_one_way():
    k = Param("k", 5, 1, 50)
    values = [None, "7", 7.9, "2.5", "1e1", "abc", "Infinity", "nan", "0", "999", [], {}]
    assert [k.coerce(value) for value in values] == [5, 7, 7, 2, 10, 5, 5, 5, 1, 50, 5, 5]
    assert IMAGE.coerce(str(2**63 - 1)) == 2**63 - 1 and IMAGE.coerce("x") is None and IMAGE.coerce(None) is None
    per_page = Param("per_page", 20, choices=(10, 20, 50))
    assert [per_page.coerce(value) for value in ("50", 10, "30", "x")] == [50, 10, 20, 20]
    method = Param("method", "kmeans", choices=("kmeans", "dbscan"))
    assert [method.coerce(value) for value in ("dbscan", "magic", ["dbscan"], None)] == ["dbscan", "kmeans"] + \
        ["kmeans"] * 2
    space = Param("space", False, true_words=("projection", "true"))
    assert [space.coerce(value) for value in ("projection", True, "TRUE", "false", "1", None)] == \
        [True, True, True, False, False, False]
    eps = Param("eps", 0.5, 0.01, 2.0)
    assert [eps.coerce(value) for value in ("1e9", "-1", "nan", 1, "0.25")] == [2.0, 0.01, 0.5, 1.0, 0.25]
    step = Param("step", 1, 1, 4)
    assert (step.coerce(None, high=2, default=2), step.coerce("7", high=3), step.coerce("0", high=3)) == (2, 3, 1)


def test_bookmarked_addresses_keep_their_parameters_and_controls():
    """The names in the URL and the ids of the controls that write them, as the pages had them before the table."""
    assert {page.name: ["dataset", *(param.name for param in page.params)] for page in PAGES} == {
        "gallery": ["dataset", "label", "page", "per_page"],
        "clustering": ["dataset", "projection", "perplexity", "n_neighbors", "min_dist", "seed", "method", "k",
                       "eps", "min_samples", "space", "colour", "trust_k", "selection"],
        "similarity": ["dataset", "image", "k", "selection"],
        "embeddings": ["dataset", "image", "n", "components"],
        "patches": ["dataset", "image", "layer", "k", "window", "step", "opacity", "foreground_only"],
        "compare": ["dataset", "image", "k", "against", "other", "clusters"],
        "sets": ["dataset"],
        "duplicates": ["dataset", "threshold", "page", "selection"],
        "why": ["dataset", "image", "other", "lines"],
    }
    controls = {page.name: [(param.control_id(page.name), param.prop) for param in page.params] for page in PAGES}
    assert controls["gallery"] == [("gallery-label", "value"), ("gallery-pages", "active_page"),
                                   ("gallery-per-page", "value")]
    assert controls["similarity"] == [("similarity-reference", "value"), ("similarity-k", "value"),
                                      ("similarity-selection", "data")]
    assert [control for control, _ in controls["clustering"]] == [
        "clustering-projection", "clustering-perplexity", "clustering-neighbors", "clustering-min-dist",
        "clustering-seed", "clustering-method", "clustering-k", "clustering-eps", "clustering-min-samples",
        "clustering-space", "clustering-colour", "clustering-trust-k", "clustering-selection"]
    assert [control for control, _ in controls["patches"]] == [
        "patches-image", "patches-layer", "patches-k", "patches-window", "patches-step", "patches-opacity",
        "patches-foreground-only"]
