"""Every input answered cleanly: crafted callback values, thumbnail ids, file and dataset names that hold markup,
formulas or URL syntax, the anti-framing headers, and the WSGI entry point's warning about a missing secret."""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import runpy
import shutil
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
from dash import DiskcacheManager
from dash.testing.wait import until

from dashboard.app import create_app
from dashboard.clustering_view import ClusterParams, ProjectionParams, assignment_csv, clustering_key, query_of
from dashboard.data import DatasetStore, DatasetView
from dashboard.inputs import CategoryPoint, first_point
from dashboard.jobs import JobManagers
from dashboard.pages import PAGES
from dashboard.settings import Settings, UploadSettings
from dashboard.shell import image_links, page_shell
from dashboard.similarity_view import heatmap_figure, hovered_cell, similarity_heatmap
from tests.browser import text_of, when_stable
from tests.conftest import FAST, run_cli
from tests.images import noise

TRICKY = "cats & dogs #1"  # a dataset name that is URL syntax
MARKUP = '<a href="https:evil.example">x<b>.png'  # a file name that Plotly would draw as a link
FOLDER = "=1+1"  # a folder name (so every path and the label) that a spreadsheet would run as a formula
TRICKY_FILES = [MARKUP, "plain-1.png", "plain-2.png", "plain-3.png", "plain-4.png", "plain-5.png"]


@pytest.fixture(scope="module")
def tricky_db(sample_db, tmp_path_factory):
    """The sample set and the dataset TRICKY: six images in FOLDER, one of them named MARKUP."""
    root = tmp_path_factory.mktemp("tricky")
    db = root / "tricky.db"
    shutil.copyfile(sample_db, db)
    for seed, name in enumerate(TRICKY_FILES):
        noise(root / "photos" / FOLDER / name, seed=seed)
    run_cli("index", root / "photos", "--dataset", TRICKY, "--db", db, "--random-weights", *FAST)
    return db


@pytest.fixture
def tricky_store(tricky_db) -> DatasetStore:
    return DatasetStore(f"sqlite:///{tricky_db}")


class InlineJobs(DiskcacheManager):
    """Dash's diskcache manager running each background callback at once, in the request that starts it, so that
    the first poll finds its result."""

    def call_job_fn(self, key, job_fn, args, context):
        job_fn(key, self._make_progress_key(key), args, context)
        return 0

    def job_running(self, job):
        return False

    def terminate_job(self, job):
        pass


@pytest.fixture
def tricky_app(tricky_db, tmp_path):
    import diskcache

    jobs = InlineJobs(diskcache.Cache(str(tmp_path / "jobs")))
    # It takes image sets, so that their page's callbacks are crafted at too.
    return create_app(Settings(f"sqlite:///{tricky_db}", tmp_path / "cache", "test-secret",
                               uploads=UploadSettings(True, tmp_path / "uploads")),
                      JobManagers(jobs, jobs, jobs, jobs))


# Crafted callback values ----------------------------------------------------------------------------------------------


def _post(app, output: str, values: dict):
    """Post the callback of `output` (its full key in app.callback_map) with inputs and state from `values`
    ({"component.property": value}; wildcard inputs get no components), and poll once if it started a background
    job. Returns the last response."""
    spec = app.callback_map[output]

    def filled(items):
        return [[] if item["id"].startswith("{") else
                {**item, "value": values.get(f"{item['id']}.{item['property']}")} for item in items]

    first = spec["inputs"][0]
    outputs = [dict(zip(("id", "property"), part.rsplit(".", 1))) for part in output.strip(".").split("...")]
    body = {"output": output, "changedPropIds": [f"{first['id']}.{first['property']}"],
            "outputs": outputs if output.startswith("..") else outputs[0],
            "inputs": filled(spec["inputs"]), "state": filled(spec["state"])}
    client = app.server.test_client()
    data = json.dumps(body)  # Infinity and NaN written as JavaScript would never send them
    response = client.post("/_dash-update-component", data=data, content_type="application/json")
    started = response.get_json(silent=True) if response.status_code == 200 else None
    if isinstance(started, dict) and "cacheKey" in started:
        query = {"cacheKey": started["cacheKey"], "job": started["job"]}
        response = client.post("/_dash-update-component", query_string=query, data=data,
                               content_type="application/json")
    return response


def _message(response) -> str:
    """The text of an error page's paragraph: what Flask answers a BadInput with."""
    body = response.get_data(as_text=True)
    return html.unescape(body.split("<p>", 1)[1].split("</p>", 1)[0]) if "<p>" in body else ""


def _output(app, prefix: str) -> str:
    return next(o for o in app.callback_map if o.lstrip(".").startswith(prefix))


def _page_values(app, path: str, query: str) -> dict:
    """Every component property of a page as its layout sets it ({"component.property": value})."""
    router = _output(app, "_pages_content.children")
    response = _post(app, router, {"_pages_location.pathname": path, "_pages_location.search": query})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    values, pending = {}, [response.get_json()["response"]]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending += node
        elif isinstance(node, dict):
            props = node.get("props")
            if isinstance(props, dict) and isinstance(props.get("id"), str):
                values |= {f"{props['id']}.{name}": value for name, value in props.items()}
            pending += list(node.values())
    return values


def _baseline(app, view: DatasetView) -> dict:
    """Valid values for every callback: what the pages' layouts hold for the sample set."""
    image = int(view.image_ids[0])
    values = {"navigate.pathname": "/gallery"}
    for path in (page.path for page in PAGES):
        values |= _page_values(app, path, f"?dataset=samples&image={image}")
    return values


def test_no_crafted_callback_value_gets_a_server_error(tricky_app, tricky_store):
    """Every server-side callback of every page, each of its inputs in turn replaced by a value no page sends: the
    answer is the usual one, nothing (204) or a 400 with a message; never a 500."""
    samples, other = tricky_store.view("samples"), tricky_store.view(TRICKY)
    baseline = _baseline(tricky_app, samples)
    foreign_image = int(other.image_ids[0])  # an image of the other dataset
    hostile = [float("inf"), "abc", 0, 2**63, [], {"points": [None]}, {"image_id": "1"}, foreign_image, None,
               "?dataset=samples&dataset=x&image=Infinity&per_page=1e999&k=abc"]
    failures = []
    for output, spec in tricky_app.callback_map.items():
        # Clientside callbacks run in the browser; Dash's own page router is Dash's code.
        if "callback" not in spec or "_pages_content" in output:
            continue
        for item in spec["inputs"] + spec["state"]:
            name = f"{item['id']}.{item['property']}"
            if item["id"].startswith("{"):
                continue
            for value in hostile:
                response = _post(tricky_app, output, {**baseline, name: value})
                status = response.status_code
                if status not in (200, 204, 400) or status == 400 and not _message(response):
                    failures.append(f"{output} with {name}={value!r}: {status} {_message(response)[:80]}")
    assert failures == [], "\n".join(failures)


@pytest.mark.parametrize(("output", "values", "message"), [
    ("gallery-grid.children", {"gallery-dataset.data": "nope"}, "There is no dataset named 'nope'"),
    ("gallery-grid.children", {"gallery-dataset.data": ["samples"]}, "A dataset is named by its name, not by"),
    ("similarity-results.children", {"similarity-dataset.data": "samples", "similarity-reference.value": "FOREIGN"},
     "There is no image FOREIGN in dataset 'samples'"),
    ("embeddings-line.figure", {"embeddings-dataset.data": "samples", "embeddings-image.value": 2**63},
     f"There is no image {2**63} in dataset 'samples'"),
    ("patches-overlay.figure", {"patches-dataset.data": "samples", "patches-image.value": "FOREIGN"},
     "There is no image FOREIGN in dataset 'samples'"),
    ("similarity-tooltip.show", {"similarity-heatmap.hoverData": {"points": [{"x": 1}]},
                                 "similarity-heatmap-images.data": {"ids": [], "relpaths": []}},
     "The graph's event is malformed: points.0.x: Input should be a valid string"),
    ("patches-selected.data", {"patches-overlay.clickData": {"points": [{"x": float("inf"), "y": 1}]},
                               "patches-image.value": 1, "patches-dataset.data": "samples"},
     "The graph's event is malformed: points.0.x: Input should be a finite number"),
    ("clustering-selected.children", {"clustering-clicked.data": {"image_id": "1"},
                                      "clustering-dataset.data": "samples"},
     "The point is malformed: image_id: Input should be a valid integer"),
    ("dataset-picker.options", {"shell-dataset.data": ["samples"]}, "The page's dataset is text, not ['samples']"),
])
def test_a_crafted_value_is_refused_with_a_message_that_says_what_was_wrong(tricky_app, tricky_store, output,
                                                                            values, message):
    foreign = int(tricky_store.view(TRICKY).image_ids[0])
    values = {name: foreign if value == "FOREIGN" else value for name, value in values.items()}
    message = message.replace("FOREIGN", str(foreign))
    response = _post(tricky_app, _output(tricky_app, output), values)
    assert (response.status_code, _message(response)[:len(message)]) == (400, message)


def test_a_clustering_is_drawn_only_from_the_results_of_its_own_dataset(tricky_app, tricky_store):
    """The page names the cached results to draw: a key of another dataset, or of another kind of result, is
    refused rather than read."""
    samples, other = tricky_store.view("samples"), tricky_store.view(TRICKY)
    projection = ProjectionParams("pca")
    crafted = {"key": clustering_key(other, ClusterParams(), projection.cache_key(other)),
               "projection": projection.cache_key(samples), "generation": samples.generation,
               "query": query_of(projection, ClusterParams())}
    response = _post(tricky_app, _output(tricky_app, "clustering-scatter.figure"),
                     {"clustering-dataset.data": "samples", "clustering-shown.data": crafted})
    assert (response.status_code, _message(response)) == (
        400, "The clustering shown is not a clustering of dataset 'samples'")


@pytest.mark.parametrize("per_page", ["abc", 0, float("inf"), 2**63])
def test_a_crafted_page_size_or_page_number_is_clamped(tricky_app, per_page):
    values = {"gallery-dataset.data": "samples", "gallery-per-page.value": per_page, "gallery-pages.active_page":
              float("inf"), "gallery-filter.data": {"label": None, "per_page": 50}}
    answer = _post(tricky_app, _output(tricky_app, "gallery-grid.children"), values).get_json()["response"]
    assert answer["gallery-filter"]["data"]["per_page"] == 50 and answer["gallery-pages"]["active_page"] == 1


def test_a_background_callback_reports_a_crafted_value_in_the_page(tricky_app):
    """A background job cannot answer 400: the page shows its message where the job reports."""
    upload = _post(tricky_app, _output(tricky_app, "similarity-upload-facts.children"), {
        "similarity-upload-accepted.data": "data:image/png;base64,iVBORw0KGgo=", "similarity-dataset.data": "nope",
    }).get_json()["response"]
    assert "There is no dataset named 'nope'" in json.dumps(upload["similarity-upload-message"])
    projection = _post(tricky_app, _output(tricky_app, "clustering-projection-key.data@"), {
        "clustering-projection-request.data": ["umap"], "clustering-dataset.data": "samples"})
    assert projection.status_code in (200, 204)
    assert "The projection asked for is malformed" in json.dumps(projection.get_json() or {})
    clusters = _post(tricky_app, _output(tricky_app, "clustering-shown.data@"), {
        "clustering-cluster-request.data": {"key": 1}, "clustering-dataset.data": "samples"})
    assert "The clustering asked for is malformed" in json.dumps(clusters.get_json() or {})


# Thumbnails -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"{2**63}/gallery.jpg", f"{2**63 - 1}/gallery.jpg", "abc/gallery.jpg",
                                  "-1/gallery.jpg", "1.5/gallery.jpg", "1/gallery.png", "1/x/gallery.jpg", "1"])
def test_a_thumbnail_id_that_is_no_image_is_not_found(dashboard_app, path):
    response = dashboard_app.server.test_client().get(f"/thumbnails/{path}")
    assert response.status_code == 404 and response.content_type != "image/jpeg"


# Names that are markup, formulas or URL syntax ------------------------------------------------------------------------


def test_plotly_draws_file_names_as_text_not_markup():
    names = [MARKUP, "a&amp;b.png", "plain.png"]
    view = DatasetView("d", 1, np.arange(3), names, [None] * 3, [(8, 8)] * 3,
                       np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    heatmap = similarity_heatmap(view, 0)
    figure = heatmap_figure(heatmap.matrix, heatmap.relpaths)
    escaped = ['&lt;a href="https:evil.example"&gt;x&lt;b&gt;.png', "a&amp;amp;b.png", "plain.png"]
    assert list(figure.layout.xaxis.ticktext) == list(figure.layout.yaxis.ticktext) == escaped
    assert list(figure.data[0].x) == list(figure.data[0].y) == list(figure.layout.xaxis.tickvals) == escaped
    # A hover event reports the category: it names the file as stored.
    event = {"points": [{"x": escaped[0], "y": escaped[1], "z": 0.5}]}
    cell = hovered_cell(first_point(event, CategoryPoint), heatmap.image_ids, heatmap.relpaths)
    assert (cell.column_relpath, cell.row_relpath) == (MARKUP, "a&amp;b.png")


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_a_csv_cell_a_spreadsheet_would_read_as_a_formula_is_quoted(start):
    names = [f"{start}cmd|'/c calc'!A1.png", "plain.png"]
    view = DatasetView("d", 1, np.arange(2), names, [f"{start}SUM(1)", None], [(8, 8)] * 2,
                       np.eye(2, 4, dtype=np.float32))
    rows = list(csv.DictReader(io.StringIO("".join(assignment_csv(view, np.zeros((2, 2)), np.array([0, 1]))))))
    assert [(row["relpath"], row["label"]) for row in rows] == [(f"'{names[0]}", f"'{start}SUM(1)"),
                                                               ("plain.png", "")]


def test_the_clusters_download_quotes_a_folder_name_that_is_a_formula(tricky_app):
    response = tricky_app.server.test_client().get("/download/clusters.csv", query_string={"dataset": TRICKY})
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == len(TRICKY_FILES)
    assert all(row["relpath"].startswith(f"'{FOLDER}/") and row["label"] == f"'{FOLDER}" for row in rows)


def _dataset_of(href: str) -> str:
    return parse_qs(urlsplit(href).query)["dataset"][0]


def test_links_carry_a_dataset_name_that_is_url_syntax(tricky_store, tricky_app):
    page = page_shell(tricky_store, "/gallery", TRICKY, lambda provenance: "content")
    hrefs = []
    pending = [page]
    while pending:
        component = pending.pop()
        hrefs += [component.href] if getattr(component, "href", None) else []
        children = getattr(component, "children", None)
        pending += children if isinstance(children, list) else [children] if children is not None else []
    # the pages and the brand; not the image-sets page, which a server without uploads leaves out
    assert len(hrefs) == len([page for page in PAGES if not page.needs_uploads]) + 1
    assert all(_dataset_of(href) == TRICKY and "#" not in href for href in hrefs)
    assert all(_dataset_of(button.href) == TRICKY for button in image_links(TRICKY, 3, "x").children)
    navigate = _post(tricky_app, _output(tricky_app, "navigate.href"), {
        "dataset-picker.value": TRICKY, "shell-dataset.data": "samples", "navigate.pathname": "/clustering"})
    href = navigate.get_json()["response"]["navigate"]["href"]
    assert href.startswith("/clustering?") and _dataset_of(href) == TRICKY


# In the browser -------------------------------------------------------------------------------------------------------


def test_a_dataset_named_with_an_ampersand_and_a_hash_is_reached_from_the_picker_and_the_navigation(dash_duo,
                                                                                                    tricky_app):
    dash_duo.start_server(tricky_app)
    dash_duo.wait_for_page(f"{dash_duo.server_url}/gallery?dataset=samples")
    dash_duo.wait_for_contains_text("#provenance", "44 images")
    dash_duo.select_dcc_dropdown("#dataset-picker", value=TRICKY)
    dash_duo.wait_for_contains_text("#provenance", "6 images")
    for path in (page.path for page in PAGES if not page.needs_uploads):
        when_stable(lambda path=path: dash_duo.find_element(f"#nav-{path.strip('/')}").click())
        until(lambda path=path: urlsplit(dash_duo.driver.current_url).path == path, timeout=10)
        until(lambda: "6 images" in text_of(dash_duo, "#provenance"), timeout=10)
        assert _dataset_of(dash_duo.driver.current_url) == TRICKY


def test_a_file_name_that_is_markup_shows_as_text_in_the_heatmap(dash_duo, tricky_app, tricky_store):
    view = tricky_store.view(TRICKY)
    image = int(view.image_ids[view.relpaths.index(f"{FOLDER}/{MARKUP}")])
    dash_duo.start_server(tricky_app)
    dash_duo.wait_for_page(f"{dash_duo.server_url}/similarity?{urlencode({'dataset': TRICKY, 'image': image})}")

    def ticks():
        return dash_duo.driver.execute_script(
            "return [...document.querySelectorAll('#similarity-heatmap .xtick text')].map(t => t.textContent)")

    until(lambda: MARKUP in ticks(), timeout=10)
    links = dash_duo.driver.execute_script(
        "return document.querySelectorAll('#similarity-heatmap .xtick a, #similarity-heatmap .ytick a').length")
    assert links == 0


# Anti-framing headers -------------------------------------------------------------------------------------------------


def test_every_response_forbids_framing_by_other_sites(dashboard_app):
    client = dashboard_app.server.test_client()
    responses = [client.get("/gallery"), client.get("/thumbnails/1/gallery.jpg"), client.get("/thumbnails/x"),
                 client.get("/health"), client.get("/assets/dinoscope.js"), client.get("/download/embeddings.npz")]
    for response in responses:
        assert response.headers["Content-Security-Policy"] == "frame-ancestors 'self'", response.status
        assert response.headers["X-Frame-Options"] == "SAMEORIGIN"


@pytest.mark.parametrize(("setting", "policy", "frame_options"), [
    ("none", "frame-ancestors 'none'", "DENY"),
    ("'self' https://intranet.example.edu", "frame-ancestors 'self' https://intranet.example.edu", None),
])
def test_an_intranet_that_embeds_the_dashboard_can_be_allowed(sample_db, tmp_path, monkeypatch, setting, policy,
                                                              frame_options):
    monkeypatch.setenv("DINOSCOPE_FRAME_ANCESTORS", setting)
    app = create_app(Settings.from_env(str(sample_db), tmp_path / "cache"))
    response = app.server.test_client().get("/gallery")
    assert response.headers["Content-Security-Policy"] == policy
    assert response.headers.get("X-Frame-Options") == frame_options


def test_serve_refuses_a_frame_ancestors_list_that_is_not_one(sample_db):
    result = run_cli("serve", "--db", sample_db, "--frame-ancestors", "'self'; script-src *", expect=1)
    assert "frame-ancestors: \"'self';\" is not a source" in result.output


# The WSGI entry point -------------------------------------------------------------------------------------------------


def test_the_wsgi_entry_point_warns_without_a_shared_secret(sample_db, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DINOSCOPE_DB", str(sample_db))
    monkeypatch.setenv("DINOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DINOSCOPE_SECRET_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="dashboard.wsgi"):
        runpy.run_module("dashboard.wsgi", run_name="dashboard.wsgi")
    assert "DINOSCOPE_SECRET_KEY is not set" in caplog.text
    caplog.clear()
    monkeypatch.setenv("DINOSCOPE_SECRET_KEY", "shared")
    with caplog.at_level(logging.WARNING, logger="dashboard.wsgi"):
        runpy.run_module("dashboard.wsgi", run_name="dashboard.wsgi")
    assert caplog.text == ""
