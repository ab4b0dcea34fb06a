"""The dashboard while the indexer writes: every read is one consistent state, and changes show without a restart."""

from __future__ import annotations

import subprocess
import time

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from dashboard.app import create_app
from dashboard.data import DatasetStore
from dashboard.settings import Settings
from dashboard.shell import change_notice
from db.errors import DatasetNotFound, DinoscopeDbError
from tests.browser import text_of, when_stable
from tests.conftest import FAST, MODEL, run_cli
from tests.images import noise
from tests.servers import CLI

BATCH = 3
IMAGES = 45


def _index_process(folder, db_path) -> subprocess.Popen:
    """`dinoscope index` in its own process, at 112 px so that batches take long enough to be read between."""
    args = ["index", folder, "--db", db_path, "--random-weights", "--model", MODEL, "--image-size", 112,
            "--workers", 0, "--batch-size", BATCH, "--quiet"]
    return subprocess.Popen([*CLI, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_every_read_during_an_index_run_is_whole_batches(tmp_path):
    folder = tmp_path / "growing"
    for i in range(IMAGES):
        noise(folder / f"img{i:03d}.png", seed=i)
    db_path = tmp_path / "live.db"
    app = create_app(Settings(f"sqlite:///{db_path}", tmp_path / "cache", "secret"))
    client = app.server.test_client()
    store = DatasetStore(f"sqlite:///{db_path}")

    indexer = _index_process(folder, db_path)
    seen: dict[int, int] = {}  # generation -> images
    while indexer.poll() is None or not seen or max(seen.values()) < IMAGES:
        ended = indexer.poll() is not None  # before the read: an indexer that ended will write nothing more
        try:
            view = store.view("growing")
        except (DatasetNotFound, DinoscopeDbError):  # before the indexer has written its first transaction
            if ended:
                pytest.fail(f"the indexer ended before its first commit: {indexer.stdout.read()}")
            time.sleep(0.01)
            continue
        # One snapshot: as many embeddings as images, only whole batches, each image complete.
        assert view.embeddings.shape == (len(view.image_ids), 384)
        assert len(view.relpaths) == len(view.image_ids) == len(set(view.relpaths))
        assert len(view) % BATCH == 0, f"{len(view)} images: half a batch is visible"
        assert seen.setdefault(view.generation, len(view)) == len(view), "one generation, two states"
        for image_id in view.image_ids[-BATCH:]:
            assert client.get(f"/thumbnails/{image_id}/gallery.jpg").status_code == 200
            assert store.patch_grid(int(image_id)).shape[:2] == (8, 8)
        assert client.get("/health").status_code == 200
        if indexer.poll() is not None and len(view) < IMAGES:
            assert indexer.returncode == 0, indexer.stdout.read()
    assert indexer.wait() == 0, indexer.stdout.read()
    counts = [seen[g] for g in sorted(seen)]
    assert counts == sorted(counts) and counts[-1] == IMAGES
    assert len([c for c in counts if 0 < c < IMAGES]) >= 2, f"the reads saw no intermediate state: {counts}"


def test_a_changed_dataset_offers_a_reload_and_a_removed_one_says_so(sample_db):
    store = DatasetStore(f"sqlite:///{sample_db}")
    current = store.provenances()[0]
    assert change_notice(current, current.name, current.generation, "/gallery") is None
    assert change_notice(None, None, None, "/gallery") is None
    changed = change_notice(current, current.name, current.generation - 1, "/clustering?dataset=samples&k=4")
    assert f"now has {current.image_count} images" in str(changed.children)
    assert changed.children[1].href == "/clustering?dataset=samples&k=4"
    removed = change_notice(None, "gone", 3, "/gallery")
    assert "'gone' has been removed" in str(removed.children)


@pytest.fixture
def live_app(tmp_path):
    folder = tmp_path / "lab"
    for i in range(4):
        noise(folder / "cats" / f"c{i}.png", seed=i)
    db_path = tmp_path / "live.db"
    run_cli("index", folder, "--db", db_path, "--random-weights", *FAST)
    app = create_app(Settings(f"sqlite:///{db_path}", tmp_path / "cache", "secret", change_check_seconds=0.5))
    return app, folder, db_path


def test_an_open_page_sees_new_images_and_new_datasets_without_a_restart(dash_duo, live_app, tmp_path):
    app, folder, db_path = live_app
    dash_duo.start_server(app)
    dash_duo.wait_for_page(f"{dash_duo.server_url}/gallery?dataset=lab")
    dash_duo.wait_for_text_to_equal("#gallery-count", "4 images")

    for i in range(4, 7):
        noise(folder / "dogs" / f"d{i}.png", seed=i)
    run_cli("index", folder, "--db", db_path, "--quiet")
    dash_duo.wait_for_contains_text("#change-notice", "it now has 7 images", timeout=10)

    when_stable(lambda: dash_duo.find_element("#change-reload").click())
    dash_duo.wait_for_text_to_equal("#gallery-count", "7 images")
    assert "dataset=lab" in dash_duo.driver.current_url
    assert text_of(dash_duo, "#provenance").startswith("7 images")
    assert not dash_duo.find_elements("#change-notice")

    other = tmp_path / "birds"
    noise(other / "b.png", seed=99)
    run_cli("index", other, "--db", db_path, "--random-weights", *FAST)

    def birds_option():
        """The picker's 'birds' option once the page has learnt of the new dataset (the picker is opened to look)."""
        dash_duo.find_element("#dataset-picker").click()
        found = [o for o in dash_duo.find_elements(".dash-dropdown-option") if o.text == "birds"]
        if not found:
            dash_duo.find_element("body").send_keys(Keys.ESCAPE)
        return found[0] if found else None

    WebDriverWait(dash_duo.driver, 15, poll_frequency=0.5,
                  ignored_exceptions=(StaleElementReferenceException,)).until(lambda _: birds_option()).click()
    dash_duo.wait_for_text_to_equal("#gallery-count", "1 image")
    assert "dataset=birds" in dash_duo.driver.current_url
    assert dash_duo.get_logs() == []
