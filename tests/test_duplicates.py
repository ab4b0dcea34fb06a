"""The duplicates page: exact copies by content hash (in a dataset and across the datasets of one model), the
near-duplicate pass and its groups, the downloads, and the page in a browser."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from dash.testing.wait import until
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from selenium.webdriver.common.keys import Keys

from dashboard.analysis.duplicates import duplicate_groups, duplicate_pass
from dashboard.app import create_app
from dashboard.data import DatasetStore
from dashboard.duplicates_view import LOWEST, crowding_note, exact_groups, pass_key
from dashboard.settings import Settings
from db.engine import open_database
from db.mutations import add_images_in_bulk, create_dataset
from db.records import DatasetProvenance, FileFacts, ImageContent, JpegImage
from tests.browser import on_graph, text_of, when_stable
from tests.conftest import index_folder
from tests.images import noise


def _planted(count: int = 300, dim: int = 64, seed: int = 0, spread: float = 0.8):
    """Embeddings in clusters (`spread`: the noise around a centre), with planted copies: rows 0-2 the same vector (a
    byte copy's embedding), rows 3 and 4 a near-copy of row 5 (cosine about 0.99), and row 6 one of row 7."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((10, dim))
    embeddings = centres[rng.integers(10, size=count)] + spread * rng.standard_normal((count, dim))
    embeddings[1] = embeddings[2] = embeddings[0]
    for copy, original in ((3, 5), (4, 5), (6, 7)):
        embeddings[copy] = embeddings[original] + 0.1 * rng.standard_normal(dim)
    return embeddings.astype(np.float32)


def _unit(embeddings):
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


@pytest.mark.parametrize(("precision", "rows", "columns"), [("float32", 2_048, 16_384), ("bfloat16", 64, 128)])
def test_planted_copies_and_near_copies_are_grouped_and_distinct_images_are_not(precision, rows, columns):
    embeddings = _planted()
    unit = _unit(embeddings)
    found = duplicate_pass(embeddings, LOWEST, precision=precision, rows=rows, columns=columns)
    groups = duplicate_groups(found, 0.95)
    assert sorted(sorted(group.rows) for group in groups) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [len(group.rows) for group in groups] == [3, 3, 2]  # the largest first
    assert found.nearest_similarity[0] == pytest.approx(1.0, abs=1e-5)
    assert found.nearest_similarity[6] == pytest.approx(float(unit[6] @ unit[7]), abs=1e-5)
    # Every reported similarity is the float32 cosine of its pair.
    np.testing.assert_allclose(found.similarity, np.einsum("ij,ij->i", unit[found.first], unit[found.second]),
                               atol=1e-5)
    assert (found.first < found.second).all() and (found.similarity >= LOWEST - 1e-6).all()
    # A threshold above a pair's similarity splits its group: only the cached pairs are regrouped.
    exact_only = duplicate_groups(found, 1.0)
    assert [sorted(group.rows) for group in exact_only] == [[0, 1, 2]]


def _components(unit: np.ndarray, threshold: float) -> list[list[int]]:
    """The groups that comparing every pair makes: connected components of the pairs at `threshold` or above."""
    first, second = np.nonzero(np.triu(unit @ unit.T >= threshold - 1e-6, 1))
    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(len(unit),) * 2)
    labels = connected_components(graph, directed=False)[1]
    groups: dict[int, list[int]] = {}
    for row in sorted(set(first.tolist()) | set(second.tolist())):
        groups.setdefault(labels[row], []).append(row)
    return sorted(groups.values())


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_pass_finds_what_comparing_every_pair_finds(precision, monkeypatch):
    """Clusters whose pairs lie around the lowest threshold (about 8,000 pairs at 0.85 or above), copies and
    near-copies planted far apart in the row order; tiles of 64 x 200 rows, so pairs cross many tile borders, and a
    forest reduced whenever 500 pairs wait. At every threshold the groups are those of every pair."""
    monkeypatch.setattr("dashboard.analysis.duplicates.FOREST_BUFFER", 500)
    embeddings = _planted(count=1_200, dim=96, spread=0.55)
    rng = np.random.default_rng(1)
    for copy, original in ((1_150, 20), (1_199, 600), (640, 30)):
        embeddings[copy] = embeddings[original] + 0.2 * rng.standard_normal(96)
    unit = _unit(embeddings)
    found = duplicate_pass(embeddings, LOWEST, precision=precision, rows=64, columns=200, keep=1_000)
    assert found.screen == precision and found.crowded == 0 and len(found.first) < len(unit)
    for threshold in (LOWEST, 0.86, 0.88, 0.9, 0.95, 0.99, 1.0):
        assert sorted(sorted(group.rows) for group in duplicate_groups(found, threshold)) == \
            _components(unit, threshold)
    assert len(duplicate_groups(found, LOWEST)) > 3  # the clusters' own pairs make groups too
    for copy, original in ((1_150, 20), (1_199, 600), (640, 30)):
        assert any({copy, original} <= set(group.rows) for group in duplicate_groups(found, 0.95))
    similarities = unit @ unit.T
    np.fill_diagonal(similarities, -np.inf)
    exact, close = similarities.max(axis=1), similarities.max(axis=1) >= LOWEST
    np.testing.assert_allclose(found.nearest_similarity[close], exact[close], atol=1e-5)
    below = found.nearest_similarity[~close]
    assert (below < LOWEST).all() and np.abs(below - exact[~close]).max() <= 0.012


def test_pairs_just_above_the_lowest_threshold_are_all_found_through_the_bf16_screen():
    """The bf16 screen's worst case: vectors of +-1 in 1,017 dimensions, whose unit coordinates (+-1/sqrt(1017))
    all lose 0.34 % to bf16 rounding, so every screened cosine comes out 0.7 % low. Pairs that differ in 76 signs
    have cosine 0.8505; screened without the margin of its error bound they fall to 0.844 and would be lost."""
    rng = np.random.default_rng(2)
    originals = rng.choice([-1.0, 1.0], size=(100, 1_017))
    copies = originals.copy()
    for row in copies:
        row[rng.choice(1_017, 76, replace=False)] *= -1
    embeddings = np.concatenate([originals, copies]).astype(np.float32)
    found = duplicate_pass(embeddings, LOWEST, precision="bfloat16", rows=64, columns=128)
    pairs = set(zip(found.first.tolist(), found.second.tolist()))
    assert pairs == {(row, row + 100) for row in range(100)}
    np.testing.assert_allclose(found.similarity, (1_017 - 2 * 76) / 1_017, atol=1e-5)


def test_the_bf16_screen_uses_as_many_threads_as_numpys_blas_may_and_restores_torchs():
    """As in a background job: numpy's BLAS limited to the job's share of the cores (2), torch at the job server's
    one thread (OMP_NUM_THREADS=1, read when torch is imported inside the job)."""
    import torch
    from threadpoolctl import threadpool_limits

    before, seen = torch.get_num_threads(), set()
    embeddings = _planted(count=200)
    torch.set_num_threads(1)
    try:
        with threadpool_limits(2, user_api="blas"):
            duplicate_pass(embeddings, LOWEST, precision="bfloat16", rows=64, columns=128,
                           progress=lambda _stage: seen.add(torch.get_num_threads()))
        assert seen == {2} and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_crowded_block_keeps_each_images_most_similar_pairs_and_says_so():
    """40 near-copies of one picture among 60 other images, 4 pairs kept per image of a crowded tile."""
    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((100, 32)).astype(np.float32)
    embeddings[:40] = embeddings[0] + 0.01 * rng.standard_normal((40, 32))
    found = duplicate_pass(embeddings, LOWEST, rows=32, columns=64, keep=4)
    assert found.crowded == 40
    assert [sorted(group.rows) for group in duplicate_groups(found, LOWEST)] == [list(range(40))]
    unit = _unit(embeddings)
    np.testing.assert_allclose(found.similarity, np.einsum("ij,ij->i", unit[found.first], unit[found.second]),
                               atol=1e-5)
    assert crowding_note(found) == (
        "40 images had more than 4 near-duplicates at 0.85 or above within one block of the comparison: each kept "
        "its 4 most similar of the block, so a group at a low threshold may be split.")
    assert crowding_note(duplicate_pass(embeddings, LOWEST, rows=32, columns=64, keep=40)) == ""


def _dataset(database, name: str, model: str, hashes: list[str]) -> None:
    """A dataset of images with these content hashes, embedded by `model` (rows written as the indexer would)."""
    with database.session() as session:
        dataset = create_dataset(session, DatasetProvenance(
            name=name, root=f"/data/{name}", model_name=model, weights_kind="hub", weights_identity="rev1",
            weights_source=None, image_size=14, patch_size=14, grid_height=1, grid_width=1, embed_dim=4,
            patch_dims=None, precision="fp32", preprocessing={}, library_versions={}))
        rng = np.random.default_rng(len(name))
        add_images_in_bulk(session, dataset, [
            (FileFacts(f"img{i}.jpg", None, digest, 10, 0),
             ImageContent(8, 8, rng.standard_normal(4).astype(np.float32),
                          rng.standard_normal((1, 1, 4)).astype(np.float16), {"gallery": JpegImage(b"jpeg", 8, 8)}))
            for i, digest in enumerate(hashes)])


def test_exact_copies_are_found_across_datasets_of_one_model_and_not_of_another(tmp_path):
    db = tmp_path / "copies.db"
    database = open_database(str(db))
    _dataset(database, "first", "vit-s", ["a" * 64, "b" * 64, "c" * 64, "c" * 64])
    _dataset(database, "second", "vit-s", ["a" * 64, "d" * 64])
    _dataset(database, "other-model", "vit-b", ["b" * 64, "d" * 64])
    database.dispose()
    store = DatasetStore(f"sqlite:///{db}")
    groups = {group.content_hash[0]: [(image.dataset, image.relpath) for image in group.images]
              for group in exact_groups(store, "first")}
    # b is also in a dataset of another model, d is not in "first": neither is a copy of one of its images.
    assert groups == {"a": [("first", "img0.jpg"), ("second", "img0.jpg")],
                      "c": [("first", "img2.jpg"), ("first", "img3.jpg")]}
    assert exact_groups(store, "other-model") == []


@pytest.fixture(scope="module")
def copies_db(tmp_path_factory):
    """Distinct noise pictures, two of them copied byte for byte under other names (one into another folder)."""
    root = tmp_path_factory.mktemp("copies")
    photos = root / "photos"
    for seed in range(6):
        noise(photos / "originals" / f"picture-{seed}.png", seed=seed)
    shutil.copyfile(photos / "originals" / "picture-0.png", photos / "originals" / "copy-of-0.png")
    (photos / "=elsewhere").mkdir()
    shutil.copyfile(photos / "originals" / "picture-1.png", photos / "=elsewhere" / "renamed.png")
    db = root / "copies.db"
    index_folder(photos, db, "--dataset", "copies")
    return db


def test_byte_copies_under_other_names_are_exact_groups_and_in_both_downloads(copies_db, tmp_path):
    app = create_app(Settings(f"sqlite:///{copies_db}", tmp_path / "cache", "test-secret"))
    store = DatasetStore(f"sqlite:///{copies_db}")
    groups = sorted(sorted(image.relpath for image in group.images) for group in exact_groups(store, "copies"))
    assert groups == [["=elsewhere/renamed.png", "originals/picture-1.png"],
                      ["originals/copy-of-0.png", "originals/picture-0.png"]]
    client = app.server.test_client()
    response = client.get("/download/duplicates.csv", query_string={"dataset": "copies", "threshold": "0.999"})
    assert response.status_code == 200 and "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    exact = sorted(row["relpath"] for row in rows if row["kind"] == "exact")
    # The byte copies hold the same embedding: at 0.999 they are also the near-duplicate groups.
    near = sorted(row["relpath"] for row in rows if row["kind"] == "near")
    assert exact == near == ["'=elsewhere/renamed.png", "originals/copy-of-0.png", "originals/picture-0.png",
                             "originals/picture-1.png"]
    document = client.get("/download/duplicates.json", query_string={"dataset": "copies", "threshold": "0.999"})
    found = json.loads(document.get_data(as_text=True))
    assert found["threshold"] == 0.999 and len(found["exact"]) == 2 and len(found["near"]) == 2
    assert sorted(image["relpath"] for group in found["exact"] for image in group["images"]) == \
        ["=elsewhere/renamed.png", "originals/copy-of-0.png", "originals/picture-0.png", "originals/picture-1.png"]


def test_a_download_of_a_large_dataset_whose_pass_has_not_run_says_to_open_the_page(copies_db, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setattr("dashboard.duplicates_view.IN_REQUEST", 2)
    app = create_app(Settings(f"sqlite:///{copies_db}", tmp_path / "cache", "test-secret"))
    response = app.server.test_client().get("/download/duplicates.json", query_string={"dataset": "copies"})
    assert response.status_code == 409 and b"open it on the duplicates page first" in response.data


def test_the_pass_is_cached_per_generation_and_a_threshold_only_regroups(samples, tmp_path, monkeypatch):
    import diskcache

    from dashboard import duplicates_view

    calls = []
    real = duplicates_view.duplicate_pass
    monkeypatch.setattr(duplicates_view, "duplicate_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    with diskcache.Cache(str(tmp_path / "results")) as results:
        first = duplicates_view.cached_pass(results, samples)
        again = duplicates_view.cached_pass(results, samples)
        assert calls == [1] and pass_key(samples) in results
        np.testing.assert_array_equal(first.nearest_similarity, again.nearest_similarity)
    assert pass_key(samples) == f"duplicates/samples/{samples.generation}/exact/lowest={LOWEST}"


# In the browser -------------------------------------------------------------------------------------------------------


def _bars(dash_duo):
    return on_graph(dash_duo, "#duplicates-histogram", "gd._fullData[0].y.reduce((a, b) => a + b, 0)")


def _threshold_line(dash_duo):
    return on_graph(dash_duo, "#duplicates-histogram", "gd.layout.shapes[0].x0")


def test_the_page_shows_the_histogram_moves_the_threshold_and_downloads_the_groups(dash_duo, copies_db, tmp_path):
    app = create_app(Settings(f"sqlite:///{copies_db}", tmp_path / "cache", "test-secret"))
    dash_duo.start_server(app)
    dash_duo.wait_for_page(f"{dash_duo.server_url}/duplicates?dataset=copies&threshold=1")
    until(lambda: _bars(dash_duo) == 8, timeout=20)  # every image's nearest neighbour
    assert _threshold_line(dash_duo) == 1
    assert "2 contents held by more than one image (4 images)" in text_of(dash_duo, "#duplicates-exact-count")
    assert len(dash_duo.find_elements(".duplicates-exact-group")) == 2
    until(lambda: text_of(dash_duo, "#duplicates-count").startswith("2 groups of near-duplicates (4 images)"),
          timeout=10)
    # The lowest threshold: the groups are those of the cached pairs at 0.85 or above.
    when_stable(lambda: dash_duo.find_element("#duplicates-threshold [role=slider]").send_keys(Keys.HOME))
    until(lambda: (_threshold_line(dash_duo) or 1) < 0.9, timeout=10)
    assert "threshold=0.85" in dash_duo.driver.current_url
    until(lambda: "at 0.850 or above" in text_of(dash_duo, "#duplicates-count"), timeout=10)
    groups = dash_duo.find_elements(".duplicates-near-group")
    assert groups and all(link.get_attribute("href").split("?")[0].endswith("/similarity")
                          for link in dash_duo.find_elements(".duplicates-near-group a"))
    shown = text_of(dash_duo, "#duplicates-count")
    # Both downloads carry the threshold shown.
    for kind in ("csv", "json"):
        href = dash_duo.find_element(f"#duplicates-{kind}-link").get_attribute("href")
        assert "threshold=0.85" in href
        when_stable(lambda kind=kind: dash_duo.find_element(f"#duplicates-{kind}-link").click())
    downloads = tmp_path / "download"
    until(lambda: {p.suffix for p in downloads.glob("copies-duplicates-0.85.*")} == {".csv", ".json"}, timeout=10)
    rows = list(csv.DictReader(io.StringIO((downloads / "copies-duplicates-0.85.csv").read_text())))
    document = json.loads((downloads / "copies-duplicates-0.85.json").read_text())
    near_images = sum(len(group["images"]) for group in document["near"])
    assert len([row for row in rows if row["kind"] == "near"]) == near_images
    assert shown.startswith(f"{len(document['near'])} group") and f"({near_images} images)" in shown
    assert len(document["exact"]) == 2


def test_a_selection_keeps_the_groups_that_hold_its_images(dash_duo, copies_db, tmp_path):
    from dashboard.selections import save_selection

    app = create_app(Settings(f"sqlite:///{copies_db}", tmp_path / "cache", "test-secret"))
    site = app.server.extensions["dinoscope"]
    view = site.store.view("copies")
    groups = duplicate_groups(duplicate_pass(view.embeddings, LOWEST), 1.0)
    assert len(groups) == 2
    chosen = int(view.image_ids[groups[1].rows[-1]])  # one image of the second group
    selection = save_selection(site.selections, "copies", [chosen])
    dash_duo.start_server(app)
    dash_duo.wait_for_page(f"{dash_duo.server_url}/duplicates?dataset=copies&threshold=1&selection={selection}")
    until(lambda: text_of(dash_duo, "#duplicates-count") == (
        f"1 group of near-duplicates (2 images) at 1.000 or above, holding images of selection {selection}"),
          timeout=20)
    assert f"selection {selection} (1 image, picked" in text_of(dash_duo, "#duplicates-selection-alert")
    shown = {link.get_attribute("href") for link in dash_duo.find_elements(".duplicates-near-group a")}
    assert any(f"image={chosen}" in href for href in shown)
    assert dash_duo.get_logs() == []


def test_a_running_pass_can_be_cancelled(dash_duo, background_apps, tmp_path, monkeypatch):
    """A pass too large for the request runs as a job with progress; Cancel stops it and says so."""
    from dashboard.duplicates_view import IN_REQUEST
    from db.holds import HOLDS_ENV
    from indexer.synthetic import write_synthetic_dataset

    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "duplicates-pass").touch()  # the pass stops at its first progress report until the test ends
    monkeypatch.setenv(HOLDS_ENV, str(holds))  # read by the job server and the worker that the build starts
    db = tmp_path / "large.db"
    write_synthetic_dataset(open_database(str(db)), "large", IN_REQUEST + 100, dim=32)
    dash_duo.start_server(background_apps.build(db))
    dash_duo.wait_for_page(f"{dash_duo.server_url}/duplicates?dataset=large")
    until(lambda: text_of(dash_duo, "#duplicates-status").startswith("Computing"), timeout=120)
    until(lambda: (holds / "duplicates-pass.reached").exists(), timeout=60)
    when_stable(lambda: dash_duo.find_element("#duplicates-cancel").click())
    until(lambda: text_of(dash_duo, "#duplicates-status").startswith("Cancelled"), timeout=10)
    until(lambda: background_apps.running_jobs() == 0, timeout=30)
