"""Selections on the clustering page (ids, refining, exports, the Python snippet, the similarity page) and the trust
in a projection (neighbourhood preservation, trustworthiness), as logic and in the browser."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from dash.testing.wait import until
from selenium.common.exceptions import ElementClickInterceptedException
from sklearn.manifold import trustworthiness

from dashboard import clustering_view
from dashboard.analysis.projection import normalize_rows
from dashboard.analysis.projection_quality import neighbourhood_preservation, projection_trustworthiness
from dashboard.clustering_view import (
    ClusterParams,
    ProjectionParams,
    cached_projection,
    cached_trust,
    cluster_images,
    cluster_scatter,
    projection_trust,
    trust_key,
    trust_scatter,
)
from dashboard.data import DatasetView
from dashboard.folder_cache import FolderCache
from dashboard.selections import invert, load_selection, refine, save_selection, selection_id, selection_page
from dashboard.similarity_view import similar_among
from db.export import selection_snippet
from tests.browser import on_graph, text_of, when_stable


def _random_view(n: int = 60, dim: int = 12, name: str = "random", seed: int = 0) -> DatasetView:
    rng = np.random.default_rng(seed)
    return DatasetView(name, 1, np.arange(1000, 1000 + n), [f"f/{i}.png" for i in range(n)],
                       ["a" if i % 2 else None for i in range(n)], [(8, 8)] * n,
                       rng.standard_normal((n, dim)).astype(np.float32))


# Trust in a projection ----------------------------------------------------------------------------------------------


def _brute_force_kept(embeddings: np.ndarray, coordinates: np.ndarray, k: int) -> np.ndarray:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine_distance = 1 - unit @ unit.T
    plane = np.linalg.norm(coordinates[:, None, :] - coordinates[None, :, :], axis=2)
    kept = []
    for i in range(len(embeddings)):
        def nearest(distances, i=i):
            order = [j for j in np.argsort(distances[i], kind="stable") if j != i]
            return set(order[:k])

        kept.append(len(nearest(cosine_distance) & nearest(plane)))
    return np.array(kept)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_neighbourhood_preservation_counts_the_neighbours_a_projection_keeps(k):
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((40, 8)).astype(np.float32)
    coordinates = rng.standard_normal((40, 2))
    kept = neighbourhood_preservation(embeddings, coordinates, k)
    np.testing.assert_array_equal(kept, _brute_force_kept(embeddings, coordinates, k))
    assert 0 < kept.mean() < k  # a random plane keeps some neighbours, not all: the count is not trivial
    # A projection that is the embedding itself (two dimensions on the unit circle) keeps every neighbourhood.
    angles = rng.uniform(0, 2 * np.pi, 40)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert neighbourhood_preservation(circle.astype(np.float32), circle, k).tolist() == [k] * 40
    with pytest.raises(ValueError, match="k must be between 1 and 39 for 40 images, not 40"):
        neighbourhood_preservation(embeddings, coordinates, 40)


def test_trustworthiness_is_scikit_learns_in_cosine_geometry():
    rng = np.random.default_rng(2)
    embeddings = rng.standard_normal((50, 8)).astype(np.float32) * rng.uniform(0.5, 3, (50, 1)).astype(np.float32)
    coordinates = rng.standard_normal((50, 2))
    found = projection_trustworthiness(embeddings, coordinates, 5)
    assert found == pytest.approx(trustworthiness(normalize_rows(embeddings), coordinates, n_neighbors=5))
    # The norms do not count: scaling each embedding leaves it as it is.
    assert projection_trustworthiness(embeddings * 7, coordinates, 5) == pytest.approx(found)
    with pytest.raises(ValueError, match="k must be between 1 and 24 for 50 images, not 25"):
        projection_trustworthiness(embeddings, coordinates, 25)


def test_a_large_dataset_is_measured_on_a_seeded_sample_and_cached_per_projection_and_k(monkeypatch):
    monkeypatch.setattr(clustering_view, "PRESERVATION_SAMPLE", 30)
    monkeypatch.setattr(clustering_view, "TRUST_SAMPLE", 20)
    view = _random_view(60)
    coordinates = np.random.default_rng(3).standard_normal((60, 2)).astype(np.float32)
    trust = projection_trust(view, coordinates, 4)
    assert len(trust.rows) == 30 and len(np.unique(trust.rows)) == 30 and trust.trust_images == 20
    rows = trust.rows
    np.testing.assert_array_equal(trust.kept, _brute_force_kept(view.embeddings[rows], coordinates[rows], 4))
    np.testing.assert_array_equal(projection_trust(view, coordinates, 4).rows, rows)  # seeded: the same sample
    assert 0 < trust.trustworthiness <= 1 and trust.trust_k == 4

    calls = []
    real = clustering_view.projection_trust
    monkeypatch.setattr(clustering_view, "projection_trust", lambda *a: calls.append(a[2]) or real(*a))
    cache: dict = {}
    first = cached_trust(cache, view, "projection/random/1/method=pca", coordinates, 4)
    assert cached_trust(cache, view, "projection/random/1/method=pca", coordinates, 4) is first
    cached_trust(cache, view, "projection/random/1/method=pca", coordinates, 6)
    cached_trust(cache, view, "projection/random/1/method=tsne/perplexity=30.0", coordinates, 4)
    assert calls == [4, 6, 4] and trust_key("projection/random/1/method=pca", 4) in cache


def test_k_is_clamped_to_what_a_small_dataset_allows():
    view = _random_view(6)
    trust = projection_trust(view, np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32), 50)
    assert (trust.k, trust.trust_k, len(trust.kept)) == (5, 2, 6)


def test_the_preservation_scatter_colours_the_measured_images_by_the_share_kept(monkeypatch):
    monkeypatch.setattr(clustering_view, "PRESERVATION_SAMPLE", 30)
    view = _random_view(60)
    projection = cached_projection({}, view, ProjectionParams("pca"))
    trust = projection_trust(view, projection.coordinates, 5)
    figure = trust_scatter(view, projection, trust, selected=view.image_ids[:10])
    grey, measured = figure.data
    assert len(grey.x) == 30 and len(measured.x) == 30
    np.testing.assert_allclose(measured.marker.color, trust.kept / 5)
    assert sorted(np.concatenate([grey.customdata, measured.customdata]).tolist()) == view.image_ids.tolist()
    chosen = {int(grey.customdata[i]) for i in grey.selectedpoints} | {
        int(measured.customdata[i]) for i in measured.selectedpoints}
    assert chosen == set(view.image_ids[:10].tolist())
    assert "a sample of 30 of 60 images" in figure.layout.title.text


# Selections --------------------------------------------------------------------------------------------------------


def test_a_selection_id_is_the_same_for_the_same_set_and_round_trips(tmp_path):
    view, other = _random_view(), _random_view(name="other")
    ids = view.image_ids[[5, 1, 9]]
    key = selection_id(view.name, ids)
    assert key == selection_id(view.name, [int(i) for i in ids[::-1]] + [int(ids[0])])  # order, repeats
    assert len(key) == 16 and key != selection_id(view.name, ids[:2]) and key != selection_id(other.name, ids)
    with FolderCache(str(tmp_path / "selections"), eviction_policy="none") as store:
        assert save_selection(store, view.name, ids) == key
        assert save_selection(store, view.name, ids[::-1]) == key and len(store) == 1
        assert save_selection(store, view.name, []) == ""
    with FolderCache(str(tmp_path / "selections"), eviction_policy="none") as another_process:
        np.testing.assert_array_equal(load_selection(another_process, view, key), view.image_ids[[1, 5, 9]])
        assert load_selection(another_process, other, key) is None  # a selection of another dataset
        assert load_selection(another_process, view, "0" * 16) is None
        assert load_selection(another_process, view, "../../etc") is None
    shrunk = DatasetView(view.name, 2, view.image_ids[2:], view.relpaths[2:], view.labels[2:], view.sizes[2:],
                         view.embeddings[2:])  # re-indexed without image 1001
    assert load_selection({f"selection/{key}": {"dataset": view.name, "ids": _stored(ids)}}, shrunk,
                          key).tolist() == view.image_ids[[5, 9]].tolist()


def _stored(ids) -> bytes:
    store: dict = {}
    save_selection(store, "random", ids)
    return next(iter(store.values()))["ids"]


def test_refining_is_set_algebra():
    view = _random_view(10)
    current = view.image_ids[[1, 2, 3]]
    picked = view.image_ids[[3, 4]]
    assert refine(current, picked, "replace").tolist() == sorted(picked.tolist())
    assert refine(current, picked, "add").tolist() == view.image_ids[[1, 2, 3, 4]].tolist()
    assert refine(current, picked, "remove").tolist() == view.image_ids[[1, 2]].tolist()
    assert invert(view, current).tolist() == view.image_ids[[0, 4, 5, 6, 7, 8, 9]].tolist()
    assert invert(view, invert(view, current)).tolist() == current.tolist()
    with pytest.raises(ValueError, match="not 'xor'"):
        refine(current, picked, "xor")


def test_the_selections_gallery_is_paged_and_clamped():
    view = _random_view(30)
    selected = view.image_ids[::2]  # 15 images
    first = selection_page(view, selected, 1, 6)
    assert (first.page, first.pages, first.image_ids) == (1, 3, view.image_ids[0:12:2].tolist())
    assert selection_page(view, selected, 99, 6).image_ids == view.image_ids[24::2].tolist()
    assert selection_page(view, selected, -5, 6).page == 1


def test_the_similarity_page_can_search_a_selection_only():
    view = _random_view(30)
    among = view.image_ids[10:20]
    results = similar_among(view, int(view.image_ids[12]), 4, among)
    assert len(results) == 4 and all(r.image_id in among and r.image_id != view.image_ids[12] for r in results)
    unit = normalize_rows(view.embeddings)
    scores = unit[10:20] @ unit[12]
    scores[2] = -np.inf
    assert [r.image_id for r in results] == view.image_ids[10 + np.argsort(-scores)[:4]].tolist()


def test_the_snippet_reads_the_same_images_from_the_database(samples, sample_db):
    rows = [3, 0, 17, 40]
    ids = [int(samples.image_ids[row]) for row in rows]
    namespace: dict = {}
    exec(selection_snippet(f"sqlite:///{sample_db}", ids), namespace)  # noqa: S102 - the code the page shows
    np.testing.assert_array_equal(namespace["embeddings"], samples.embeddings[rows])
    assert namespace["embeddings"].dtype == np.float32
    assert namespace["relpaths"] == [samples.relpaths[row] for row in rows]
    assert "secret" not in selection_snippet("postgresql+psycopg://me:secret@db/dinoscope", ids)


def test_the_snippet_of_a_large_selection_reads_the_ids_from_the_json_download(samples, sample_db, tmp_path):
    ids = [int(i) for i in samples.image_ids[::3]]
    (tmp_path / "selection.json").write_text(json.dumps({"image_ids": ids}))
    namespace: dict = {}
    exec(selection_snippet(f"sqlite:///{sample_db}", None, str(tmp_path / "selection.json")), namespace)  # noqa: S102
    np.testing.assert_array_equal(namespace["embeddings"], samples.embeddings[::3])


def test_the_exports_hold_exactly_the_selected_images(dashboard_app, samples, tmp_path):
    rows = [2, 7, 30]
    with FolderCache(str(tmp_path / "cache" / "selections"), eviction_policy="none") as store:  # the app's
        key = save_selection(store, "samples", samples.image_ids[rows])
    client = dashboard_app.server.test_client()
    query = {"dataset": "samples", "selection": key}
    answer = client.get("/download/selection.csv", query_string=query)
    assert answer.headers["Content-Disposition"] == f"attachment; filename=samples-selection-{key}.csv"
    table = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [int(row["image_id"]) for row in table] == samples.image_ids[rows].tolist()
    assert [row["relpath"] for row in table] == [samples.relpaths[row] for row in rows]
    document = client.get("/download/selection.json", query_string=query).get_json()
    assert document["image_ids"] == samples.image_ids[rows].tolist() and document["selection"] == key
    assert document["labels"] == [samples.labels[row] for row in rows]
    archive = np.load(io.BytesIO(client.get("/download/selection.npz", query_string=query).get_data()))
    assert archive["image_ids"].tolist() == samples.image_ids[rows].tolist()
    assert archive["relpaths"].tolist() == [samples.relpaths[row] for row in rows]
    np.testing.assert_array_equal(archive["embeddings"], samples.embeddings[rows])
    assert client.get("/download/selection.csv", query_string={"dataset": "samples",
                                                                "selection": "0" * 16}).status_code == 404
    assert client.get("/download/selection.xml", query_string=query).status_code == 404
    assert client.get("/download/selection.csv", query_string={"selection": key}).status_code == 400


def test_a_selection_greys_the_other_points_of_the_cluster_scatter():
    view = _random_view(30)
    projection = cached_projection({}, view, ProjectionParams("pca"))
    result = cluster_images(view, projection.coordinates, ClusterParams(k=3))
    plain = cluster_scatter(view, projection, result)
    assert all(trace.selectedpoints is None for trace in plain.data)
    chosen = view.image_ids[[0, 4, 29]]
    figure = cluster_scatter(view, projection, result, chosen)
    marked = {int(trace.customdata[i]) for trace in figure.data for i in trace.selectedpoints}
    assert marked == set(chosen.tolist())
    assert all(trace.unselected.marker.opacity < 0.5 for trace in figure.data)


# In the browser ----------------------------------------------------------------------------------------------------


def _selected_ids(dash_duo) -> list[int] | None:
    """The image ids plotly draws as selected (None when no trace greys anything)."""
    return on_graph(dash_duo, "#clustering-scatter", """(() => {
        if (gd._fullData.every(t => !Array.isArray(t.selectedpoints) && !ArrayBuffer.isView(t.selectedpoints)))
            return null;
        const ids = [];
        gd._fullData.forEach(t => Array.from(t.selectedpoints || []).forEach(i => ids.push(Number(t.customdata[i]))));
        return ids.sort((a, b) => a - b); })()""")


def _box_select(dash_duo, left: float, top: float, right: float, bottom: float) -> None:
    """Select the points in a box of the plot area (fractions of its width and height) as plotly's box select
    reports them: a plotly_selected event with each point's trace and index (dragging a box with Selenium's pointer
    actions selects nothing in headless Chrome's software WebGL)."""
    on_graph(dash_duo, "#clustering-scatter", f"""(() => {{
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, points = [];
        gd._fullData.forEach((t, curve) => Array.from(t.x).forEach((x, i) => {{
            const px = xa.l2p(x) / xa._length, py = ya.l2p(t.y[i]) / ya._length;
            if (px > {left} && px < {right} && py > {top} && py < {bottom})
                points.push({{curveNumber: curve, pointNumber: i, pointIndex: i, x: x, y: t.y[i]}});
        }}));
        gd.emit("plotly_selected", {{points: points}});
        return points.length; }})()""")


def _click(dash_duo, selector: str) -> None:
    """Click an element in the middle of the window, once no spinner of a part being redrawn lies over it."""
    def attempt():
        element = dash_duo.find_element(selector)
        dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})",
                                       element)
        try:
            element.click()
        except ElementClickInterceptedException:
            return False
        return True

    until(lambda: when_stable(attempt), timeout=20)


def _points_in_box(dash_duo, left, top, right, bottom) -> list[int]:
    return on_graph(dash_duo, "#clustering-scatter", f"""(() => {{
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, ids = [];
        gd._fullData.forEach(t => Array.from(t.x).forEach((x, i) => {{
            const px = xa.l2p(x) / xa._length, py = ya.l2p(t.y[i]) / ya._length;
            if (px > {left} && px < {right} && py > {top} && py < {bottom}) ids.push(Number(t.customdata[i]));
        }}));
        return ids.sort((a, b) => a - b); }})()""")


def test_select_refine_share_export_and_trust_in_the_browser(dash_duo, dashboard_app, samples):
    dash_duo.start_server(dashboard_app)
    dash_duo.driver.get(dash_duo.server_url + "/clustering?dataset=samples")
    until(lambda: on_graph(dash_duo, "#clustering-scatter", "gd.data.length") == 5, timeout=20)
    assert "Nothing selected" in text_of(dash_duo, "#clustering-selection-count")

    left_half = _points_in_box(dash_duo, 0.02, 0.02, 0.5, 0.98)
    assert 0 < len(left_half) < 44
    _box_select(dash_duo, 0.02, 0.02, 0.5, 0.98)
    until(lambda: _selected_ids(dash_duo) == left_half, timeout=20)
    until(lambda: f"{len(left_half)} images selected" in text_of(dash_duo, "#clustering-selection-count"),
          timeout=20)
    assert len(dash_duo.find_elements("#clustering-selection-gallery img")) == len(left_half)
    until(lambda: "selection=" in dash_duo.driver.current_url, timeout=10)

    _click(dash_duo, "#clustering-invert")  # the other half
    others = sorted(set(samples.image_ids.tolist()) - set(left_half))
    until(lambda: _selected_ids(dash_duo) == others, timeout=20)
    top_right = _points_in_box(dash_duo, 0.5, 0.02, 0.98, 0.5)
    _click(dash_duo, "label[for='_dbcprivate_radioitems_clustering-pick-how_input_remove']")
    _box_select(dash_duo, 0.5, 0.02, 0.98, 0.5)
    remaining = sorted(set(others) - set(top_right))
    until(lambda: _selected_ids(dash_duo) == remaining, timeout=20)
    key = selection_id("samples", remaining)
    until(lambda: parse_qs(urlsplit(dash_duo.driver.current_url).query).get("selection") == [key], timeout=10)

    _click(dash_duo, "#clustering-selection-csv")
    target = Path(dash_duo.download_path) / f"samples-selection-{key}.csv"
    until(lambda: target.exists() and target.stat().st_size > 0, timeout=20)
    assert sorted(int(row["image_id"]) for row in csv.DictReader(target.open())) == remaining
    assert f"image_ids = {remaining}" in dash_duo.driver.execute_script(
        "return document.querySelector('#clustering-snippet').textContent")
    assert dash_duo.find_element("#clustering-snippet-copy")

    url = dash_duo.driver.current_url
    dash_duo.driver.get(url)  # the link restores the selection
    until(lambda: _selected_ids(dash_duo) == remaining, timeout=20)
    assert f"{len(remaining)} images selected" in text_of(dash_duo, "#clustering-selection-count")
    similar = dash_duo.find_element("#clustering-selection-similar").get_attribute("href")
    assert parse_qs(urlsplit(similar).query)["selection"] == [key]

    _click(dash_duo, "label[for='_dbcprivate_radioitems_clustering-colour_input_preservation']")
    until(lambda: on_graph(dash_duo, "#clustering-scatter", "gd._fullData.length === 2 && "
                                                            "gd._fullData[1].marker.showscale") is True, timeout=20)
    assert "trustworthiness (k=10)" in text_of(dash_duo, "#clustering-trustworthiness")
    assert _selected_ids(dash_duo) == remaining  # the selection stays greyed in the new colours
    until(lambda: "colour=preservation" in dash_duo.driver.current_url, timeout=10)
    dash_duo.driver.get(dash_duo.server_url + f"/similarity?dataset=samples&selection={key}")
    until(lambda: "Results only from selection" in text_of(dash_duo, "#similarity-selection-note"), timeout=20)
    shown = [json.loads(e.get_attribute("id"))["index"] for e in dash_duo.find_elements(".similarity-result")]
    assert shown and set(shown) <= set(remaining)
    assert dash_duo.get_logs() == []


def _refine(app, values: dict, changed: str = "clustering-picked.data"):
    output = next(o for o in app.callback_map if o.startswith("clustering-selection.data@"))
    spec = app.callback_map[output]
    body = {"output": output, "outputs": {"id": "clustering-selection", "property": "data"},
            "changedPropIds": [changed],
            "inputs": [{**item, "value": values.get(item["id"])} for item in spec["inputs"]],
            "state": [{**item, "value": values.get(item["id"])} for item in spec["state"]]}
    return app.server.test_client().post("/_dash-update-component", json=body)


def test_a_pick_of_images_of_another_dataset_or_an_unknown_selection_is_refused(dashboard_app, samples):
    ids = samples.image_ids[:3].tolist()
    values = {"clustering-picked": {"image_ids": ids}, "clustering-pick-how": "add", "clustering-selection": "",
              "clustering-dataset": "samples"}
    made = _refine(dashboard_app, values).get_json()["response"]["clustering-selection"]["data"]
    assert made == selection_id("samples", ids)
    added = _refine(dashboard_app, {**values, "clustering-selection": made,
                                    "clustering-picked": {"image_ids": samples.image_ids[3:5].tolist()}})
    assert added.get_json()["response"]["clustering-selection"]["data"] == selection_id("samples",
                                                                                       samples.image_ids[:5])
    for crafted, message in (
            ({"clustering-picked": {"image_ids": [*ids, 10**9]}},
             "The pick holds images that are not in dataset 'samples'"),
            ({"clustering-picked": {"image_ids": ["1"]}}, "The pick is malformed: image_ids.0"),
            ({"clustering-pick-how": "xor"}, "A pick replaces, adds to or removes from the selection, not 'xor'"),
            ({"clustering-selection": "0" * 16}, f"There is no selection '{'0' * 16}' of dataset 'samples'")):
        response = _refine(dashboard_app, {**values, **crafted})
        assert response.status_code == 400 and message in html.unescape(response.get_data(as_text=True))
