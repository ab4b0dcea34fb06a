"""Comparing representations: CLS against the mean of the patch tokens within a dataset, and two datasets of the
same folder indexed with two models (the arithmetic, the batched grid reader, and the page's view functions)."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
from dash.testing.wait import until
from selenium.common.exceptions import ElementClickInterceptedException
from selenium.webdriver.common.keys import Keys

from dashboard.analysis.comparison import (
    clustering_agreement,
    concatenated,
    jaccard,
    label_precision,
    match_by_hash,
    mean_overlap,
    mean_patch_tokens,
    overlap_at_k,
    top_k_rows,
)
from dashboard.compare_view import compared_rows, compute_mean_patches, cross_match, cross_retrieval, side_by_side
from dashboard.data import DatasetStore
from db.engine import open_database
from db.holds import HOLDS_ENV
from db.queries import content_hashes, dataset_by_name, datasets_sharing_images, patch_grid, patch_grid_batches
from indexer.synthetic import write_synthetic_dataset
from tests.browser import JOB_DEADLINE_S, text_of, when_stable
from tests.conftest import MODEL, index_folder, run_cli
from tests.test_statements import statements


def _clustered(n: int = 60, dim: int = 16, groups: int = 3, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim)) * 4
    labels = np.arange(n) % groups
    return (centres[labels] + rng.standard_normal((n, dim))).astype(np.float32), [f"g{g}" for g in labels]


def test_the_mean_patch_embedding_is_numpys_mean_of_the_grid():
    grids = np.random.default_rng(1).standard_normal((3, 4, 5, 8)).astype(np.float16)
    means = mean_patch_tokens(grids)
    assert means.dtype == np.float32 and means.shape == (3, 8)
    np.testing.assert_allclose(means, grids.astype(np.float64).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"not of shape \(4, 5, 8\)"):
        mean_patch_tokens(grids[0])


def test_representations_built_to_agree_overlap_fully_and_built_to_disagree_barely():
    cls, _ = _clustered()
    # The same geometry: a rotation and a scale keep every cosine, so every top-K list is the same.
    rotation = np.linalg.qr(np.random.default_rng(2).standard_normal((16, 16)))[0]
    agreeing = (cls @ rotation * 3).astype(np.float32)
    references = np.arange(len(cls))
    assert mean_overlap(cls, agreeing, references, 10) == pytest.approx(1.0)
    first = top_k_rows(cls, cls[:1], 10, exclude=np.array([0]))[0]
    second = top_k_rows(agreeing, agreeing[:1], 10, exclude=np.array([0]))[0]
    assert overlap_at_k(first, second) == 1.0 and 0 not in first
    # Unrelated vectors: about K / (N - 1) of the neighbours in common by chance, far below 1.
    unrelated = np.random.default_rng(3).standard_normal(cls.shape).astype(np.float32)
    assert mean_overlap(cls, unrelated, references, 10) < 0.35


def test_overlap_and_jaccard_of_two_top_k_lists():
    assert overlap_at_k([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert jaccard([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(2 / 6)
    assert overlap_at_k([], []) == 0.0 and jaccard([], []) == 0.0


def test_the_concatenation_weighs_both_parts_equally_whatever_their_scale():
    first, _ = _clustered(n=5, dim=4)
    second, _ = _clustered(n=5, dim=7, seed=1)
    both = concatenated(first * 1000, second)
    assert both.shape == (5, 11)
    np.testing.assert_allclose(np.linalg.norm(both[:, :4], axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(both[:, 4:], axis=1), 1, rtol=1e-6)
    cos = both @ both.T / 2
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, (unit(first) @ unit(first).T + unit(second) @ unit(second).T) / 2, atol=1e-5)


def test_label_precision_is_one_for_separated_groups_and_near_chance_for_noise():
    points, labels = _clustered(n=90)
    references = np.arange(90)
    assert label_precision(points, labels, references, 5) == 1.0
    noise = np.random.default_rng(4).standard_normal(points.shape)
    assert label_precision(noise, labels, references, 5) < 0.6
    assert label_precision(points, [None] * 90, references, 5) is None


def test_the_clusterings_agreement_is_one_for_the_same_points_and_low_for_noise():
    points, _ = _clustered(n=90)
    assert clustering_agreement(points, points * 2, 3) == pytest.approx(1.0)
    noise = np.random.default_rng(5).standard_normal(points.shape)
    assert clustering_agreement(points, noise, 3) < 0.3


def test_matching_by_hash_pairs_equal_contents_and_copies_in_order():
    first = ["a", "b", "c", "b", "x"]
    second = ["b", "c", "y", "a", "b", "b"]
    matching = match_by_hash(first, second)
    assert list(zip(matching.first.tolist(), matching.second.tolist())) == [(0, 3), (1, 0), (2, 1), (3, 4)]
    assert len(match_by_hash(["a"], ["b"])) == 0


def test_compared_rows_are_all_up_to_the_limit_then_a_seeded_sample():
    assert compared_rows(5, limit=10).tolist() == [0, 1, 2, 3, 4]
    sample = compared_rows(100, limit=10)
    assert len(sample) == 10 and np.all(np.diff(sample) > 0) and sample.tolist() == compared_rows(100, 10).tolist()


# The database and the view ---------------------------------------------------------------------------------------


def test_grids_are_read_in_batches_of_bounded_size_in_the_order_asked(tmp_path, monkeypatch):
    import db.queries

    database = open_database(f"sqlite:///{tmp_path / 's.db'}")
    write_synthetic_dataset(database, "one", 7, dim=8, clusters=2, grid=2)
    write_synthetic_dataset(database, "two", 3, dim=8, clusters=2, grid=2, seed=1)
    write_synthetic_dataset(database, "three", 3, dim=8, clusters=2, grid=2)  # the same seed: one's first 3 files
    monkeypatch.setattr(db.queries, "GRID_BATCH_BYTES", 3 * 2 * 2 * 8 * 2)  # three grids
    store = DatasetStore(f"sqlite:///{tmp_path / 's.db'}")
    ids = store.view("one").image_ids[::-1].tolist()
    foreign = int(store.view("two").image_ids[0])
    with database.session() as session:
        one = dataset_by_name(session, "one")
        with statements(database) as seen:
            batches = list(patch_grid_batches(session, one, [*ids[:4], foreign, *ids[4:]]))
            sharing = datasets_sharing_images(session, one.id)
            hashes = content_hashes(session, one.id)
        assert len(seen) == 3 + 1 + 1  # one statement a batch, one for the datasets, one for the hashes
        assert sharing == {"three": 3} and len(hashes) == 7 and sorted(hashes) == sorted(ids)
        # Three ids a statement; the other dataset's image, asked in the second, is left out.
        assert [len(found) for found, _ in batches] == [3, 2, 2]
        assert np.concatenate([found for found, _ in batches]).tolist() == ids
        for found, grids in batches:
            for image_id, grid in zip(found, grids):
                np.testing.assert_array_equal(grid, patch_grid(session, int(image_id)))


@pytest.fixture(scope="module")
def two_models_db(sample_db, tmp_path_factory):
    """The sample set (at 56 px), the same folder at 112 px ("samples112": 8 x 8 grids) and at 56 px with grids
    reduced to 8 dimensions ("reduced")."""
    db = tmp_path_factory.mktemp("two-models") / "two.db"
    shutil.copyfile(sample_db, db)
    folder = sample_db.parent / "samples"
    run_cli("index", folder, "--db", db, "--dataset", "samples112", "--random-weights", "--model", MODEL,
            "--image-size", "112", "--workers", "0", "--quiet")
    index_folder(folder, db, "--dataset", "reduced", "--patch-dims", "8")
    return db


@pytest.fixture
def two_models(two_models_db) -> DatasetStore:
    return DatasetStore(f"sqlite:///{two_models_db}")


def test_the_mean_patch_embeddings_of_a_dataset_are_the_means_of_its_grids(two_models):
    for name in ("samples", "reduced"):
        view = two_models.view(name)
        reported = []
        patches = compute_mean_patches(two_models, view, lambda done, total, seen=reported: seen.append((done, total)))
        assert patches.rows.tolist() == list(range(len(view))) and not patches.sampled
        assert reported[-1] == (len(view), len(view))
        for row in (0, 17, len(view) - 1):
            grid = two_models.patch_grid(int(view.image_ids[row])).astype(np.float32)  # reconstructed if reduced
            np.testing.assert_allclose(patches.means[row], grid.mean(axis=(0, 1)), atol=2e-3 if name == "samples"
                                       else 2e-2)
        assert patches.reduced_dims == (8 if name == "reduced" else None)


def test_side_by_side_ranks_the_compared_images_by_each_representation(two_models):
    view = two_models.view("samples")
    patches = compute_mean_patches(two_models, view)
    reference = int(view.image_ids[3])
    shown = side_by_side(two_models, view, patches, reference, 5, "patches")
    assert shown.cls.image_ids == [int(view.image_ids[r]) for r in view.nearest(3, 5)[0]]
    assert shown.cls.scores == pytest.approx(view.nearest(3, 5)[1].tolist(), abs=1e-5)
    means = patches.means / np.linalg.norm(patches.means, axis=1, keepdims=True)
    scores = means @ means[3]
    scores[3] = -np.inf
    assert shown.other.image_ids == [int(view.image_ids[r]) for r in np.argsort(-scores, kind="stable")[:5]]
    assert shown.overlap == overlap_at_k(shown.cls.image_ids, shown.other.image_ids)
    assert reference not in shown.cls.image_ids + shown.other.image_ids
    both = side_by_side(two_models, view, patches, reference, 5, "concat")
    assert both.cls == shown.cls and both.other.title.startswith("CLS + mean")


def test_a_reference_outside_the_sample_is_compared_with_its_own_grid(two_models):
    view = two_models.view("samples")
    full = compute_mean_patches(two_models, view)
    sample = replace(full, rows=full.rows[1:], means=full.means[1:])  # image 0 left out, as of a sample
    reference = int(view.image_ids[0])
    outside, inside = (side_by_side(two_models, view, patches, reference, 5, "patches") for patches in (sample, full))
    assert outside.other.image_ids == inside.other.image_ids and outside.among == len(view) - 1


def test_two_models_of_one_folder_are_matched_by_hash_image_for_image(two_models):
    first, second = two_models.view("samples"), two_models.view("samples112")
    match = cross_match(two_models, first, second, 4)
    assert len(match.matched) == len(first) == len(second) == 44
    for row_first, row_second in match.matched:
        assert first.relpaths[row_first] == second.relpaths[row_second]
    assert -0.5 <= match.agreement <= 1.0
    assert two_models.datasets_sharing_images("samples") == {"reduced": 44, "samples112": 44}
    reference = int(first.image_ids[5])
    shown = cross_retrieval(first, second, match, reference, 6)
    assert shown.matched_reference and len(shown.first.image_ids) == len(shown.second.image_ids) == 6
    assert shown.first.image_ids == [int(first.image_ids[r]) for r in first.nearest(5, 6)[0]]
    paths_first, paths_second = set(shown.first.relpaths), set(shown.second.relpaths)
    assert shown.overlap == len(paths_first & paths_second) / 6
    same = cross_match(two_models, first, two_models.view("reduced"), 4)
    assert same.agreement == pytest.approx(1.0)  # the same model and size: the same embeddings, the same clusters


# --- the page in a browser ------------------------------------------------------------------------------------


@pytest.fixture
def two_models_app(two_models_db, tmp_path):
    from dashboard.app import create_app
    from dashboard.settings import Settings

    return create_app(Settings(f"sqlite:///{two_models_db}", tmp_path / "cache", "test-secret"))


def _shown_ids(dash_duo, grid: str) -> list[int]:
    return dash_duo.driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' img')].map(i => Number(i.src.split('/').at(-2)))",
        grid)


def _scroll_to(dash_duo, selector: str):
    """The element, scrolled to the middle of the window (the page is longer than the test browser's window)."""
    element = dash_duo.wait_for_element(selector)
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    return element


def _click(dash_duo, selector: str) -> None:
    _until_clickable(lambda: _scroll_to(dash_duo, selector).click())


def _choose(dash_duo, dropdown: str, option: str) -> None:
    def choose():
        _scroll_to(dash_duo, dropdown)
        dash_duo.select_dcc_dropdown(dropdown, value=option)

    _until_clickable(choose)


def _until_clickable(action, tries: int = 20) -> None:
    """Do a click, again while the page is still moving under it (results above it re-rendering)."""
    for _ in range(tries - 1):
        try:
            return when_stable(action)
        except ElementClickInterceptedException:
            time.sleep(0.2)
    return when_stable(action)


def _press(dash_duo, slider: str, key, times: int = 1) -> None:
    when_stable(lambda: dash_duo.find_element(f"{slider} [role=slider]").send_keys(key * times))


def test_the_page_compares_cls_with_mean_patches_and_with_a_second_model(dash_duo, two_models_app, two_models):
    view = two_models.view("samples")
    reference = int(view.image_ids[3])
    dash_duo.start_server(two_models_app)
    dash_duo.driver.get(f"{dash_duo.server_url}/patches?dataset=samples&image={reference}")
    _click(dash_duo, "#patches-compare-link")  # the other per-image pages link here
    until(lambda: "/compare?" in dash_duo.driver.current_url, timeout=20)
    assert f"image={reference}" in dash_duo.driver.current_url
    # The background job averages the grids, then both top-10 lists and the summary appear.
    until(lambda: len(_shown_ids(dash_duo, "#compare-cls-grid")) == 10, timeout=JOB_DEADLINE_S)
    assert _shown_ids(dash_duo, "#compare-cls-grid") == [int(view.image_ids[r]) for r in view.nearest(3, 10)[0]]
    patches_side = _shown_ids(dash_duo, "#compare-other-rep-grid")
    common = len(set(patches_side) & set(_shown_ids(dash_duo, "#compare-cls-grid")))
    assert f"{common} of 10 in common" in text_of(dash_duo, "#compare-overlap")
    assert "Top K among 44 images" in text_of(dash_duo, "#compare-among")
    until(lambda: "precision@10" in text_of(dash_duo, "#compare-summary-table"), timeout=20)
    assert len(dash_duo.find_elements("#compare-summary-table tbody tr")) == 3

    _press(dash_duo, "#compare-k", Keys.ARROW_LEFT, 5)  # K = 5
    until(lambda: len(_shown_ids(dash_duo, "#compare-cls-grid")) == 5, timeout=20)
    until(lambda: "precision@5" in text_of(dash_duo, "#compare-summary-table"), timeout=20)
    assert "k=5" in dash_duo.driver.current_url

    dash_duo.find_element("label[for='_dbcprivate_radioitems_compare-against_input_concat']").click()
    until(lambda: "concatenated" in text_of(dash_duo, "#compare-results"), timeout=20)
    assert "against=concat" in dash_duo.driver.current_url

    dash_duo.select_dcc_dropdown("#compare-image", value="tools/hammer.jpg")
    until(lambda: reference not in _shown_ids(dash_duo, "#compare-cls-grid")
          and f"image={reference}" not in dash_duo.driver.current_url, timeout=20)

    assert "Pick a second dataset" in text_of(dash_duo, "#compare-cross")
    until(lambda: "precision@5" in text_of(dash_duo, "#compare-summary-table"), timeout=20)
    _choose(dash_duo, "#compare-other", "samples112 (44 shared images)")
    until(lambda: "44 matched images" in text_of(dash_duo, "#compare-cross-facts"), timeout=30)
    assert "adjusted Rand index" in text_of(dash_duo, "#compare-cross-facts")
    assert len(_shown_ids(dash_duo, "#compare-second-grid")) == 5
    assert "other=samples112" in dash_duo.driver.current_url
    ari = text_of(dash_duo, "#compare-ari")
    _press(dash_duo, "#compare-clusters", Keys.ARROW_RIGHT, 3)
    until(lambda: "clusters=8" in dash_duo.driver.current_url, timeout=20)
    until(lambda: "k = 8" in text_of(dash_duo, "#compare-cross-facts"), timeout=20)
    assert -1 <= float(text_of(dash_duo, "#compare-ari")) <= 1 and ari

    _click(dash_duo, "#compare-explanation .accordion-button")
    dash_duo.wait_for_contains_text("#compare-explanation", "mean of the patch tokens")
    assert dash_duo.get_logs() == []


def test_averaging_the_patch_tokens_can_be_cancelled(dash_duo, sample_db, tmp_path, monkeypatch):
    from dashboard.app import create_app
    from dashboard.settings import Settings

    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "mean-patches").touch()  # the job stops at its first progress report until the test ends it
    monkeypatch.setenv(HOLDS_ENV, str(holds))  # read by the job server the app starts
    dash_duo.start_server(create_app(Settings(f"sqlite:///{sample_db}", tmp_path / "cache", "test-secret")))
    dash_duo.driver.get(dash_duo.server_url + "/compare?dataset=samples")
    cancel = dash_duo.wait_for_element("#compare-cancel")
    until(lambda: (holds / "mean-patches.reached").exists(), timeout=JOB_DEADLINE_S)
    until(lambda: "Averaging the patch tokens of every image: 0 of 44" in text_of(dash_duo, "#compare-status"),
          timeout=20)
    assert "being computed" in text_of(dash_duo, "#compare-results")
    assert "no other dataset holds any of these images" in text_of(dash_duo, "#compare-other")
    until(cancel.is_displayed, timeout=20)
    cancel.click()
    until(lambda: "Cancelled" in text_of(dash_duo, "#compare-status"), timeout=20)
    until(lambda: not dash_duo.find_element("#compare-cancel").is_displayed(), timeout=20)
    assert "being computed" in text_of(dash_duo, "#compare-results")
    assert dash_duo.get_logs() == []
