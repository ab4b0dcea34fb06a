"""Clustering page logic (parameters, cached projections, clusters, downloads) and the page in a browser."""

from __future__ import annotations

import base64
import csv
import io

import diskcache
import numpy as np
import pytest
from sklearn import metrics

from dashboard import clustering_view
from dashboard.analysis.clustering import NOISE
from dashboard.clustering_view import (
    ClusterParams,
    ProjectionParams,
    assignment_csv,
    cached_projection,
    cluster_images,
    cluster_params,
    cluster_scatter,
    projection_params,
    query_of,
)
from dashboard.data import DatasetStore, DatasetView
from dashboard.job_board import JobBoard
from dashboard.pages.clustering import CHANGED
from tests.conftest import call_callback, index_folder
from tests.images import noise


def _blobs(per_blob: int = 10, generation: int = 1) -> DatasetView:
    """Three tight groups of embeddings pointing in different directions, labelled by folder."""
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16, dtype=np.float32) * 5
    embeddings = np.concatenate([c + 0.05 * rng.standard_normal((per_blob, 16)) for c in centres]).astype(np.float32)
    labels = [name for name in ("cats", "dogs", "cars") for _ in range(per_blob)]
    n = len(labels)
    return DatasetView("blobs", generation, np.arange(100, 100 + n), [f"{label}/{i}.png" for i, label in
                                                                     enumerate(labels)],
                       labels, [(64, 48)] * n, embeddings)


def test_parameters_from_the_url_are_validated_and_round_trip():
    assert projection_params({}) == ProjectionParams()
    odd = projection_params({"projection": "magic", "perplexity": "1e9", "n_neighbors": "x", "min_dist": "-3"})
    assert (odd.method, odd.perplexity, odd.n_neighbors, odd.min_dist) == ("pca", 100.0, 15, 0.0)
    chosen = (ProjectionParams("umap", 12.0, 7, 0.3, 42), ClusterParams("dbscan", 4, 0.7, 3, "projection"))
    query = {name: str(value) for name, value in query_of(*chosen).items()}
    assert (projection_params(query), cluster_params(query)) == chosen


def test_projection_cache_keys_hold_the_generation_and_only_the_parameters_that_matter():
    view = _blobs()
    assert ProjectionParams("pca", perplexity=5).cache_key(view) == ProjectionParams("pca").cache_key(view)
    assert ProjectionParams("tsne", perplexity=5).cache_key(view) != ProjectionParams("tsne").cache_key(view)
    assert ProjectionParams("umap", min_dist=0.5).cache_key(view) != ProjectionParams("umap").cache_key(view)
    assert ProjectionParams("umap", seed=3).cache_key(view) != ProjectionParams("umap").cache_key(view)
    assert ProjectionParams("tsne", seed=3).cache_key(view) == ProjectionParams("tsne").cache_key(view)
    assert ProjectionParams("pca").cache_key(_blobs(generation=2)) != ProjectionParams("pca").cache_key(view)


def test_a_projection_is_computed_once_and_then_served_from_the_shared_cache(tmp_path, monkeypatch):
    calls = []
    real_project = clustering_view.project
    monkeypatch.setattr(clustering_view, "project", lambda *a, **k: calls.append(1) or real_project(*a, **k))
    view = _blobs()
    with diskcache.Cache(str(tmp_path)) as cache:
        first = cached_projection(cache, view, ProjectionParams("tsne", perplexity=5))
    with diskcache.Cache(str(tmp_path)) as other_process_cache:
        second = cached_projection(other_process_cache, view, ProjectionParams("tsne", perplexity=5))
    assert len(calls) == 1
    np.testing.assert_array_equal(first.coordinates, second.coordinates)


@pytest.mark.parametrize("method", ["kmeans", "hierarchical"])
def test_clusters_in_cosine_geometry_recover_the_folders(method):
    view = _blobs()
    coordinates = np.zeros((len(view), 2), np.float32)
    result = cluster_images(view, coordinates, ClusterParams(method, k=3))
    assert result.metrics.adjusted_rand == pytest.approx(1.0)
    assert result.metrics.normalized_mutual_info == pytest.approx(1.0)
    assert sorted(size for _, size in result.sizes) == [10, 10, 10]
    for label, rows in result.representatives.items():
        assert len(rows) == 8 and all(result.labels[row] == label for row in rows)


def test_dbscan_noise_is_its_own_group():
    view = _blobs()
    embeddings = view.embeddings.copy()
    embeddings[0] = -embeddings[0]  # one image points away from every group
    view = DatasetView(view.name, 1, view.image_ids, view.relpaths, view.labels, view.sizes, embeddings)
    result = cluster_images(view, np.zeros((len(view), 2)), ClusterParams("dbscan", eps=0.3, min_samples=3))
    assert result.labels[0] == NOISE and result.metrics.n_noise == 1 and result.metrics.n_clusters == 3
    assert result.sizes[-1] == (NOISE, 1)


@pytest.mark.parametrize("method", ["hierarchical", "dbscan"])
def test_a_large_dataset_is_clustered_on_a_sample_that_the_others_join(method, monkeypatch):
    monkeypatch.setattr(clustering_view, "CLUSTER_SAMPLE", 20)
    view = _blobs(per_blob=20)
    result = cluster_images(view, np.zeros((len(view), 2)), ClusterParams(method, k=3, eps=0.3, min_samples=3))
    assert result.metrics.adjusted_rand == pytest.approx(1.0) and result.metrics.n_noise == 0
    assert "a sample of 20 images" in result.notes[0]


def test_kmeans_of_a_large_dataset_places_centres_on_a_sample_and_says_so(monkeypatch):
    view = _blobs(per_blob=30)
    whole = cluster_images(view, np.zeros((len(view), 2)), ClusterParams("kmeans", k=3))
    assert whole.notes == []
    monkeypatch.setattr(clustering_view, "KMEANS_SAMPLE", 12)
    sampled = cluster_images(view, np.zeros((len(view), 2)), ClusterParams("kmeans", k=3))
    assert sampled.metrics.adjusted_rand == pytest.approx(1.0)  # every image joined its folder's centre
    assert metrics.adjusted_rand_score(whole.labels, sampled.labels) == pytest.approx(1.0)
    assert sampled.notes == [("K-Means placed its centres on a sample of 12 images; every image then joined its "
                             "nearest centre")]


def test_clustering_the_projection_uses_the_two_dimensional_points():
    view = _blobs()
    coordinates = np.repeat(np.arange(len(view))[:, None], 2, axis=1).astype(np.float32)  # a line
    result = cluster_images(view, coordinates, ClusterParams("kmeans", k=2, space="projection"))
    assert set(result.labels[:5]) != set(result.labels[-5:])  # split along the line, not by folder
    assert result.metrics.adjusted_rand < 1.0


def test_the_download_lists_every_image_with_its_cluster_and_position():
    view = _blobs()
    relpaths = list(view.relpaths)
    relpaths[5] = "=HYPERLINK(1)"  # a spreadsheet would run it as a formula
    view = DatasetView(view.name, 1, view.image_ids, relpaths, view.labels, view.sizes, view.embeddings)
    coordinates = np.arange(len(view) * 2, dtype=np.float32).reshape(-1, 2)
    labels = np.arange(len(view)) % 3
    pieces = list(assignment_csv(view, coordinates, labels, chunk=7))
    assert len(pieces) == 6  # written a few rows at a time: 30 rows in 5 pieces, and the (empty) end
    rows = list(csv.DictReader(io.StringIO("".join(pieces))))
    assert len(rows) == len(view)
    assert rows[4] == {"image_id": "104", "relpath": "cats/4.png", "label": "cats", "cluster": "1", "x": "8",
                       "y": "9"}
    assert rows[5]["relpath"] == "'=HYPERLINK(1)"


def test_clustering_the_projection_of_a_large_dataset_is_bounded_by_a_sample(monkeypatch):
    """Ward and DBSCAN on all 2-D points took over a minute and 3 GB at 20,000 images: above CLUSTER_SAMPLE they
    cluster a sample, in either space, and the other images join their nearest sampled one."""
    n = clustering_view.CLUSTER_SAMPLE + 1_000
    rng = np.random.default_rng(0)
    folders = np.arange(n) % 3
    corners = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    coordinates = (corners[folders] + 0.3 * rng.standard_normal((n, 2))).astype(np.float32)
    embeddings = (np.eye(3, 8, dtype=np.float32)[folders] + 0.01 * rng.standard_normal((n, 8))).astype(np.float32)
    view = DatasetView("large", 1, np.arange(n), [f"{f}/{i}.png" for i, f in enumerate(folders)],
                       [str(f) for f in folders], [(64, 48)] * n, embeddings)
    clustered = []
    real = clustering_view.cluster
    monkeypatch.setattr(clustering_view, "cluster",
                        lambda points, *a, **k: clustered.append(len(points)) or real(points, *a, **k))
    for params in (ClusterParams("hierarchical", k=3, space="projection"),
                   ClusterParams("dbscan", eps=1.0, min_samples=5, space="projection")):
        clustered.clear()
        result = cluster_images(view, coordinates, params)
        assert clustered == [clustering_view.CLUSTER_SAMPLE]
        assert result.metrics.adjusted_rand == pytest.approx(1.0) and len(result.labels) == n
        assert f"a sample of {clustering_view.CLUSTER_SAMPLE:,} images" in result.notes[0]


def test_dbscan_that_finds_only_noise_says_so_and_suggests_an_eps():
    view = _blobs()
    result = cluster_images(view, np.zeros((len(view), 2)), ClusterParams("dbscan", eps=0.01, min_samples=3))
    assert result.metrics.n_noise == len(view)
    advice = result.notes[-1]
    assert advice.startswith("DBSCAN called 100% of the images noise: with eps 0.01 (cosine 1.00)")
    suggested = float(advice.split("Try eps ")[1].split(" ")[0])
    again = cluster_images(view, np.zeros((len(view), 2)), ClusterParams("dbscan", eps=suggested, min_samples=3))
    assert again.metrics.n_clusters == 3 and again.metrics.n_noise == 0  # the suggestion finds the folders

    one = cluster_images(view, np.zeros((len(view), 2)), ClusterParams("dbscan", eps=1.9, min_samples=3))
    assert one.metrics.n_clusters == 1 and "100% of the images in one cluster" in one.notes[-1]
    fine = cluster_images(view, np.zeros((len(view), 2)), ClusterParams("dbscan", eps=suggested, min_samples=3))
    assert fine.notes == []
    assert clustering_view.eps_as_cosine(0.5) == pytest.approx(0.875)


def test_crafted_values_are_clamped_on_the_server(dashboard_app, sample_db):
    """A value the page's controls would never send is clamped (k to the slider's 2 to 20), never a 500."""
    controls = {"clustering-method": "kmeans", "clustering-k": 999, "clustering-eps": "Infinity",
                "clustering-min-samples": "abc", "clustering-space": False, "clustering-dataset": "samples"}
    view = DatasetStore(f"sqlite:///{sample_db}").view("samples")
    projection = call_callback(dashboard_app, "clustering-projection-key.data...", {
        "clustering-projection": "pca", "clustering-perplexity": -5, "clustering-neighbors": "x",
        "clustering-min-dist": 1e9, "clustering-seed": -1, "clustering-dataset": "samples"},
        "clustering-projection.value")
    key = projection["response"]["clustering-projection-key"]["data"]
    assert key == ProjectionParams("pca").cache_key(view)
    chosen = call_callback(dashboard_app, "clustering-shown.data...", {**controls, "clustering-projection-key": key},
                           "clustering-k.value")
    query = chosen["response"]["clustering-shown"]["data"]["query"]
    assert (query["k"], query["eps"], query["min_samples"]) == (20, 0.5, 5)


def test_a_view_of_a_generation_the_indexer_has_replaced_is_not_drawn(tmp_path):
    """The indexer ran between two steps of the page: the clustering it shows is of the older images (a race the
    classroom benchmark met as a 500), so the page says the dataset changed instead."""
    photos = tmp_path / "photos"
    for seed in range(4):
        noise(photos / f"{seed}.png", seed=seed)
    db = tmp_path / "index.db"
    index_folder(photos, db)
    app = create_app(Settings(f"sqlite:///{db}", tmp_path / "cache", "secret"))
    pca = {"clustering-projection": "pca", "clustering-perplexity": 30, "clustering-neighbors": 15,
           "clustering-min-dist": 0.1, "clustering-seed": 0, "clustering-dataset": "photos"}
    key = call_callback(app, "clustering-projection-key.data...", pca, "clustering-projection.value")["response"][
        "clustering-projection-key"]["data"]
    controls = {**pca, "clustering-method": "kmeans", "clustering-k": 2, "clustering-eps": 0.5,
                "clustering-min-samples": 5, "clustering-space": False, "clustering-projection-key": key}
    shown = call_callback(app, "clustering-shown.data...", controls, "clustering-k.value")["response"][
        "clustering-shown"]["data"]
    noise(photos / "new.png", seed=9)
    index_folder(photos, db)  # a new generation, with one more image
    drawn = call_callback(app, "clustering-scatter.figure", {"clustering-shown": shown,
                                                             "clustering-dataset": "photos"}, "clustering-shown.data")
    assert set(drawn["response"]) == {"clustering-status"}
    assert list(drawn["response"]["clustering-status"].values()) == [CHANGED]
    again = call_callback(app, "clustering-shown.data...", controls, "clustering-k.value")["response"]
    assert list(again["clustering-status"].values()) == [CHANGED] and "clustering-shown" not in again


def test_slow_clusterings_go_to_a_background_job_and_every_clustering_is_cached(monkeypatch):
    small, large = _blobs(), _blobs(per_blob=4)
    monkeypatch.setattr(clustering_view, "CLUSTER_IN_REQUEST", 20)
    assert not clustering_view.clusters_in_background(large, ClusterParams("dbscan"))  # 12 images
    assert clustering_view.clusters_in_background(small, ClusterParams("dbscan"))
    assert clustering_view.clusters_in_background(small, ClusterParams("hierarchical"))
    assert not clustering_view.clusters_in_background(small, ClusterParams("kmeans"))
    calls = []
    real = clustering_view.cluster_images
    monkeypatch.setattr(clustering_view, "cluster_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache: dict = {}
    coordinates = np.random.default_rng(0).standard_normal((len(small), 2)).astype(np.float32)
    first = clustering_view.cached_clustering(cache, small, "p1", coordinates, ClusterParams("kmeans", k=3))
    again = clustering_view.cached_clustering(cache, small, "p1", coordinates, ClusterParams("kmeans", k=3))
    assert again is first and calls == [1]
    clustering_view.cached_clustering(cache, small, "p2", coordinates, ClusterParams("kmeans", k=3))  # same space
    clustering_view.cached_clustering(cache, small, "p2", coordinates, ClusterParams("kmeans", k=3,
                                                                                     space="projection"))
    clustering_view.cached_clustering(cache, _blobs(generation=2), "p1", coordinates, ClusterParams("kmeans", k=3))
    assert calls == [1, 1, 1] and len(cache) == 3


def test_the_scatter_has_a_trace_per_cluster_whose_points_carry_image_ids():
    view = _blobs()
    projection = cached_projection({}, view, ProjectionParams("pca"))
    result = cluster_images(view, projection.coordinates, ClusterParams("kmeans", k=3))
    figure = cluster_scatter(view, projection, result)
    assert len(figure.data) == 3 and all(trace.type == "scattergl" for trace in figure.data)
    ids = sorted(int(i) for trace in figure.data for i in trace.customdata)
    assert ids == list(range(100, 130))
    assert figure.layout.xaxis.title.text == "PC 1"


def test_a_scatter_of_more_points_than_the_browser_draws_well_shows_a_sample(monkeypatch):
    monkeypatch.setattr(clustering_view, "SCATTER_POINTS", 12)
    view = _blobs()
    projection = cached_projection({}, view, ProjectionParams("pca"))
    figure = cluster_scatter(view, projection, cluster_images(view, projection.coordinates, ClusterParams(k=3)))
    *points, density = figure.data  # the density last: the selection's patches address the points by number
    assert sum(len(trace.x) for trace in points) == 12
    assert figure.layout.title.text == "a sample of 12 of 30 images, over the density of all of them"
    assert sorted(trace.name for trace in points) == ["cluster 0 (10)", "cluster 1 (10)", "cluster 2 (10)"]
    # every image counts in the density, none in an empty cell; it is never hovered, so hover finds an image id
    counts = 10 ** (np.nan_to_num(np.asarray(density.z), nan=0.0) - 1)
    assert density.type == "heatmap" and density.hoverinfo == "skip"
    assert np.rint(counts[~np.isnan(np.asarray(density.z))]).sum() == 30
    cell = (np.asarray(density.x[1]) - np.asarray(density.x[0])) / 2
    assert density.x[0] - cell == pytest.approx(projection.coordinates[:, 0].min(), abs=1e-5)


def test_the_scatter_reaches_the_browser_as_binary_typed_arrays(dashboard_app, sample_db, tmp_path):
    """What Dash sends for the scatter: x, y and the image ids as base64 typed arrays, not JSON lists."""
    view = DatasetStore(f"sqlite:///{sample_db}").view("samples")
    params, clustering = ProjectionParams("pca"), ClusterParams(k=3)
    with diskcache.Cache(str(tmp_path / "cache" / "results")) as results:  # the app's shared results cache
        projection = cached_projection(results, view, params)
        clustering_view.cached_clustering(results, view, params.cache_key(view), projection.coordinates, clustering)
    shown = {"key": clustering_view.clustering_key(view, clustering, params.cache_key(view)),
             "projection": params.cache_key(view), "generation": view.generation, "query": query_of(params, clustering)}
    answer = call_callback(dashboard_app, "clustering-scatter.figure", {"clustering-shown": shown,
                                                                         "clustering-dataset": "samples"},
                           "clustering-shown.data")
    traces = answer["response"]["clustering-scatter"]["figure"]["data"]

    def decoded(spec):
        assert set(spec) == {"dtype", "bdata"}, "sent as a JSON list"
        return np.frombuffer(base64.b64decode(spec["bdata"]), spec["dtype"])

    assert len(traces) == 3 and {trace["x"]["dtype"] for trace in traces} == {"f4"}
    ids = np.concatenate([decoded(trace["customdata"]) for trace in traces])
    assert sorted(ids.tolist()) == sorted(view.image_ids.tolist())
    for trace in traces:
        rows = [view.position(int(i)) for i in decoded(trace["customdata"])]
        np.testing.assert_array_equal(decoded(trace["x"]), projection.coordinates[rows, 0])
        np.testing.assert_array_equal(decoded(trace["y"]), projection.coordinates[rows, 1])


# --- in the browser -------------------------------------------------------------------------------------------

from pathlib import Path

from dash.testing.wait import until
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from dashboard.app import create_app
from dashboard.job_server import dump_job, start_job_server
from dashboard.jobs import background_managers
from dashboard.settings import Settings
from db.holds import HOLDS_ENV
from tests.browser import JOB_DEADLINE_S, on_graph
from tests.browser import text_of as _text
from tests.browser import when_stable as _when_stable
from tests.test_job_server import _held


def _figure(dash_duo, expression: str):
    return on_graph(dash_duo, "#clustering-scatter", expression)


def _trace_count(dash_duo) -> int | None:
    return _figure(dash_duo, "gd.data.length")


def _x_title(dash_duo) -> str | None:
    return _figure(dash_duo, "gd.layout.xaxis.title.text")


def _set_number(dash_duo, selector: str, value) -> None:
    field = dash_duo.find_element(selector)
    field.clear()
    field.send_keys(str(value), Keys.ENTER)


def _point_on_screen(dash_duo, trace: int = 0, point: int = 0) -> tuple[float, float]:
    """Offsets from the plot area's centre to a data point, for pointer actions."""
    return tuple(dash_duo.driver.execute_script(f"""
        const gd = document.querySelector('#clustering-scatter .js-plotly-plot');
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, t = gd._fullData[{trace}];
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [xa.l2p(t.x[{point}]) - box.width / 2, ya.l2p(t.y[{point}]) - box.height / 2];"""))


def test_every_control_changes_the_clusters_and_the_url_reproduces_the_view(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples")
    until(lambda: _trace_count(dash_duo) == 5, timeout=20)
    assert _x_title(dash_duo) == "PC 1"

    _when_stable(lambda: dash_duo.find_element("#clustering-k [role=slider]").send_keys(Keys.ARROW_LEFT * 2))
    until(lambda: _trace_count(dash_duo) == 3, timeout=20)
    assert "k=3" in dash_duo.driver.current_url

    dash_duo.find_element("label[for='_dbcprivate_radioitems_clustering-method_input_hierarchical']").click()
    until(lambda: "method=hierarchical" in dash_duo.driver.current_url, timeout=20)
    until(lambda: _trace_count(dash_duo) == 3, timeout=20)

    dash_duo.find_element("label[for='_dbcprivate_radioitems_clustering-method_input_dbscan']").click()
    until(lambda: dash_duo.find_element("#clustering-eps").is_displayed(), timeout=20)
    _set_number(dash_duo, "#clustering-min-samples", 2)
    _set_number(dash_duo, "#clustering-eps", 2)  # every image within reach: one cluster
    until(lambda: _trace_count(dash_duo) == 1, timeout=20)
    _set_number(dash_duo, "#clustering-eps", 0.01)  # nobody within reach: all noise
    until(lambda: "noise points: 44" in _text(dash_duo, "#clustering-metric-badges"), timeout=20)

    dash_duo.find_element("label[for='_dbcprivate_radioitems_clustering-method_input_kmeans']").click()
    until(lambda: _trace_count(dash_duo) == 3, timeout=20)
    silhouette = _text(dash_duo, "#clustering-metric-badges")
    dash_duo.find_element("#clustering-space").click()
    until(lambda: _text(dash_duo, "#clustering-metric-badges") != silhouette, timeout=20)
    assert "space=true" in dash_duo.driver.current_url

    dash_duo.find_element("label[for='_dbcprivate_radioitems_clustering-projection_input_tsne']").click()
    until(lambda: _x_title(dash_duo) == "t-SNE 1", timeout=JOB_DEADLINE_S)
    before = _figure(dash_duo, "Array.from(gd._fullData[0].x).slice(0, 3)")
    _set_number(dash_duo, "#clustering-perplexity", 5)
    until(lambda: _figure(dash_duo, "Array.from(gd._fullData[0].x).slice(0, 3)") != before, timeout=JOB_DEADLINE_S)

    url = dash_duo.driver.current_url
    assert all(part in url for part in ("projection=tsne", "perplexity=5", "method=kmeans", "k=3",
                                        "space=true"))
    switch_on = dash_duo.find_element("#clustering-space").is_selected()
    shown = _figure(dash_duo, "Array.from(gd._fullData[0].x)")
    dash_duo.driver.get(url)  # the link reproduces the view, from the cache
    until(lambda: _x_title(dash_duo) == "t-SNE 1" and _figure(dash_duo, "Array.from(gd._fullData[0].x)") == shown,
          timeout=20)
    assert dash_duo.find_element("#clustering-space").is_selected() == switch_on
    assert dash_duo.get_logs() == []


def test_umap_runs_in_the_background_and_shows_its_progress(dash_duo, background_apps, sample_db):
    dash_duo.start_server(background_apps.build(sample_db))
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples&projection=umap&n_neighbors=5")
    until(lambda: "Computing" in _text(dash_duo, "#clustering-status")
          or _x_title(dash_duo) == "UMAP 1", timeout=JOB_DEADLINE_S)
    until(lambda: _x_title(dash_duo) == "UMAP 1", timeout=JOB_DEADLINE_S)
    assert _trace_count(dash_duo) == 5
    for control, value in (("#clustering-min-dist", 0.5), ("#clustering-neighbors", 3), ("#clustering-seed", 7)):
        before = _figure(dash_duo, "Array.from(gd._fullData[0].x)")
        _set_number(dash_duo, control, value)
        until(lambda before=before: _figure(dash_duo, "Array.from(gd._fullData[0].x)") != before,
              timeout=JOB_DEADLINE_S)
    assert all(part in dash_duo.driver.current_url for part in ("min_dist=0.5", "n_neighbors=3", "seed=7"))
    assert dash_duo.get_logs() == []


def test_a_running_projection_can_be_cancelled(dash_duo, background_apps, sample_db, tmp_path, monkeypatch):
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "projection").touch()  # the t-SNE stops at its first progress report until the test ends it
    monkeypatch.setenv(HOLDS_ENV, str(holds))  # read by the job server and the worker that the build starts
    dash_duo.start_server(background_apps.build(sample_db))
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples")
    until(lambda: _x_title(dash_duo) == "PC 1", timeout=30)
    dash_duo.find_element("label[for='_dbcprivate_radioitems_clustering-projection_input_tsne']").click()
    cancel = dash_duo.wait_for_element("#clustering-cancel")
    until(cancel.is_displayed, timeout=20)
    until(lambda: "Computing: t-SNE" in _text(dash_duo, "#clustering-status"), timeout=JOB_DEADLINE_S)
    until(lambda: (holds / "projection.reached").exists(), timeout=JOB_DEADLINE_S)
    assert background_apps.running_jobs() == 1
    cancel.click()
    until(lambda: "Cancelled" in _text(dash_duo, "#clustering-status"), timeout=20)
    until(lambda: not dash_duo.find_element("#clustering-cancel").is_displayed(), timeout=20)
    assert _x_title(dash_duo) == "PC 1"
    until(lambda: background_apps.running_jobs() == 0, timeout=20)  # the job itself has ended
    assert dash_duo.get_logs() == []


def test_hovering_shows_the_thumbnail_and_clicking_selects_the_image(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples")
    until(lambda: _trace_count(dash_duo) == 5, timeout=20)
    image_id = _figure(dash_duo, "gd._fullData[0].customdata[0]")
    plot_area = dash_duo.find_element("#clustering-scatter .nsewdrag")
    x, y = _point_on_screen(dash_duo)
    ActionChains(dash_duo.driver).move_to_element(plot_area).move_by_offset(int(x), int(y)).perform()
    dash_duo.wait_for_element("#clustering-hover-card img")
    card = dash_duo.find_element("#clustering-hover-card")
    assert card.find_element("css selector", "img").get_attribute("src").endswith(f"/thumbnails/{image_id}/gallery.jpg")
    assert "PC1" in card.text and "label:" in card.text
    path = card.find_element("css selector", ".fw-bold").text

    ActionChains(dash_duo.driver).move_to_element(plot_area).move_by_offset(int(x), int(y)).click().perform()
    dash_duo.wait_for_text_to_equal("#clustering-selected-path", path)
    link = dash_duo.find_element("#clustering-similar-link").get_attribute("href")
    assert link.endswith(f"/similarity?dataset=samples&image={image_id}")
    # Why it is close to its nearest image: the why-similar page on the pair.
    view = dashboard_app.server.extensions["dinoscope"].store.view("samples")
    nearest = int(view.image_ids[view.nearest(view.position(image_id), 1)[0][0]])
    _when_stable(lambda: dash_duo.find_element("#clustering-why-link").click())
    until(lambda: f"/why?dataset=samples&image={image_id}&other={nearest}" in dash_duo.driver.current_url, timeout=10)
    until(lambda: "patch match" in _text(dash_duo, "#why-summary"), timeout=20)
    assert dash_duo.get_logs() == []


def test_a_sampled_scatter_draws_the_density_beneath_and_hover_still_finds_the_image(dash_duo, dashboard_app,
                                                                                      monkeypatch):
    monkeypatch.setattr(clustering_view, "SCATTER_POINTS", 20)  # the server runs in this process
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples")
    until(lambda: _trace_count(dash_duo) == 6, timeout=20)  # five clusters' points, then the density
    assert _figure(dash_duo, "gd._fullData[5].type") == "heatmap"
    assert _figure(dash_duo, "gd.querySelectorAll('.hm image').length") == 1  # drawn
    assert _figure(dash_duo, "gd._fullData.slice(0, 5).reduce((n, t) => n + t.x.length, 0)") == 20
    assert "a sample of 20 of 44 images, over the density of all of them" in _text(dash_duo, "#clustering-scatter")
    image_id = _figure(dash_duo, "gd._fullData[0].customdata[0]")
    x, y = _point_on_screen(dash_duo)
    plot_area = dash_duo.find_element("#clustering-scatter .nsewdrag")
    ActionChains(dash_duo.driver).move_to_element(plot_area).move_by_offset(int(x), int(y)).perform()
    dash_duo.wait_for_element("#clustering-hover-card img")
    source = dash_duo.find_element("#clustering-hover-card img").get_attribute("src")
    assert source.endswith(f"/thumbnails/{image_id}/gallery.jpg")
    assert dash_duo.get_logs() == []


def test_the_cluster_summary_and_the_csv_download(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples&k=4")
    until(lambda: _trace_count(dash_duo) == 4, timeout=20)
    summaries = dash_duo.find_elements(".cluster-summary")
    assert len(summaries) == 4
    sizes = [int(s.text.split(": ")[1].split(" ")[0]) for s in summaries]
    assert sum(sizes) == 44
    assert all(len(s.find_elements("css selector", "img")) == min(8, n) for s, n in zip(summaries, sizes))

    dash_duo.find_element("#clustering-download-link").click()
    target = Path(dash_duo.download_path) / "samples-pca-kmeans-k4-clusters.csv"
    until(lambda: target.exists() and target.stat().st_size > 0, timeout=20)
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 44 and sorted({int(r["cluster"]) for r in rows}) == [0, 1, 2, 3]
    assert sorted(sum(1 for r in rows if int(r["cluster"]) == c) for c in range(4)) == sorted(sizes)
    assert dash_duo.get_logs() == []


def _card_shown(dash_duo) -> bool:
    return bool(dash_duo.driver.execute_script(
        "const card = document.querySelector('#clustering-hover-card');"
        "return !!card && card.getBoundingClientRect().height > 0 && getComputedStyle(card.parentElement.parentElement)"
        ".visibility !== 'hidden';"))


def test_the_hover_card_closes_when_the_pointer_leaves_and_when_the_figure_changes(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples")
    until(lambda: _trace_count(dash_duo) == 5, timeout=20)
    plot_area = dash_duo.find_element("#clustering-scatter .nsewdrag")

    def hover_first_point():
        x, y = _point_on_screen(dash_duo)
        ActionChains(dash_duo.driver).move_to_element(plot_area).move_by_offset(int(x), int(y)).perform()
        until(lambda: _card_shown(dash_duo), timeout=10)

    hover_first_point()
    card = dash_duo.find_element("#clustering-hover-card")
    assert card.find_element("css selector", ".fw-bold").size["width"] <= card.size["width"]  # text stays inside
    ActionChains(dash_duo.driver).move_to_element(dash_duo.find_element("#clustering-metric-badges")).perform()
    until(lambda: not _card_shown(dash_duo), timeout=10)  # the pointer left the point

    hover_first_point()
    dash_duo.find_element("label[for='_dbcprivate_radioitems_clustering-method_input_hierarchical']").click()
    until(lambda: "method=hierarchical" in dash_duo.driver.current_url, timeout=10)
    until(lambda: not _card_shown(dash_duo), timeout=10)  # the figure changed under it
    assert dash_duo.get_logs() == []


def test_dbscan_explains_its_eps_and_its_numbers_and_what_to_try(dash_duo, dashboard_app, monkeypatch, tmp_path):
    """With more images than CLUSTER_IN_REQUEST, DBSCAN runs as a background job in the clusterings lane."""
    monkeypatch.setattr(clustering_view, "CLUSTER_IN_REQUEST", 10)
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples&method=dbscan&eps=0.01&min_samples=3")
    until(lambda: "noise points: 44" in _text(dash_duo, "#clustering-metric-badges"), timeout=JOB_DEADLINE_S)
    notes = _text(dash_duo, "#clustering-notes")
    assert "DBSCAN called 100% of the images noise" in notes and "Try eps" in notes
    assert _text(dash_duo, "#clustering-eps-cosine") == ("neighbours within eps 0.01 have cosine similarity "
                                                          "≥ 1.000")
    _set_number(dash_duo, "#clustering-eps", 0.5)
    until(lambda: "cosine similarity ≥ 0.875" in _text(dash_duo, "#clustering-eps-cosine"), timeout=10)
    dash_duo.find_element("#clustering-space").click()
    until(lambda: _text(dash_duo, "#clustering-eps-cosine") == "eps is a distance between the 2-D points", timeout=10)
    board = JobBoard(tmp_path / "cache" / "jobs")  # the dashboard_app fixture's cache folder
    lanes = {board.job(key[1])["lane"] for key in board.cache if isinstance(key, tuple) and key[0] == "job"}
    assert lanes == {"clusterings"}

    titles = [span.get_attribute("title") for span in dash_duo.find_elements("#clustering-metric-badges > span")]
    assert any("from -1 to 1" in title for title in titles) and any("folder labels" in title for title in titles)
    summary = dash_duo.find_element("#clustering-metric-explanations summary")
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", summary)
    summary.click()
    until(lambda: "Adjusted Rand index" in _text(dash_duo, "#clustering-metric-explanations"), timeout=5)
    assert "Normalised mutual information" in _text(dash_duo, "#clustering-metric-explanations")
    assert dash_duo.get_logs() == []


def test_a_number_box_commits_on_enter(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples&method=dbscan")
    until(lambda: dash_duo.find_element("#clustering-min-samples").is_displayed(), timeout=20)
    field = dash_duo.find_element("#clustering-min-samples")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("4", Keys.ENTER)  # no click elsewhere, the box keeps the focus
    until(lambda: "min_samples=4" in dash_duo.driver.current_url, timeout=10)
    assert dash_duo.driver.switch_to.active_element.get_attribute("id") == "clustering-min-samples"
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("1e999", Keys.ENTER)  # a number the browser cannot hold: never NaN or Infinity in the URL
    until(lambda: "min_samples=" not in dash_duo.driver.current_url, timeout=10)
    assert "NaN" not in dash_duo.driver.current_url and "Infinity" not in dash_duo.driver.current_url
    assert dash_duo.get_logs() == []


def test_a_projection_waiting_for_a_free_slot_shows_its_place(dash_duo, sample_db, tmp_path):
    """With every slot of the projections lane taken, a t-SNE waits in the queue, and the page says so."""
    settings = Settings(f"sqlite:///{sample_db}", tmp_path / "cache", "test-secret", job_slots=1)
    managers = background_managers(settings)
    dash_duo.start_server(create_app(settings, managers))
    board = managers.projections.board
    blocker = board.submit("projections", dump_job(_held, (str(tmp_path), "blocker")), "blocker-progress")
    start_job_server(managers.projections.config, board)
    until(lambda: (tmp_path / "blocker.started").exists(), timeout=JOB_DEADLINE_S)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples")
    until(lambda: _trace_count(dash_duo) == 5, timeout=20)
    dash_duo.find_element("label[for='_dbcprivate_radioitems_clustering-projection_input_tsne']").click()
    until(lambda: "Queued: 0 jobs ahead of yours, 1 running" in _text(dash_duo, "#clustering-status"), timeout=10)
    assert dash_duo.find_element("#clustering-cancel").is_displayed()
    (tmp_path / "blocker.release").touch()
    until(lambda: _x_title(dash_duo) == "t-SNE 1", timeout=JOB_DEADLINE_S)
    assert board.job(blocker)["state"] == "ended"
    assert dash_duo.get_logs() == []
