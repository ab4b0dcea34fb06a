"""The dashboard while the indexer writes: every read is one consistent state, and changes show without a restart."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from dashboard.app import create_app
from dashboard.data import DatasetStore
from dashboard.settings import Settings
from dashboard.shell import change_notice
from db.engine import open_database
from indexer import run
from indexer.model import WeightsChoice
from indexer.run import IndexRequest, index_folder
from tests.browser import text_of, when_stable
from tests.conftest import FAST, IMAGE_SIZE, MODEL, run_cli
from tests.images import noise

BATCH = 3
IMAGES = 12


class _Pauses:
    """The points where the indexer, run in a thread of the test, waits until the test has read the database."""

    def __init__(self) -> None:
        self._reached: queue.Queue[str] = queue.Queue()
        self._go = threading.Semaphore(0)
        self._ended = False

    def pause(self, point: str) -> None:
        if not self._ended:
            self._reached.put(point)
            assert self._go.acquire(timeout=120), "the test never let the indexer go on"

    def next(self) -> str:
        return self._reached.get(timeout=120)

    def release(self) -> None:
        self._go.release()

    def end(self) -> None:
        """The indexer goes on without stopping (a failed test lets it finish)."""
        self._ended = True
        self._go.release()


def test_every_read_during_an_index_run_is_whole_batches(tmp_path, monkeypatch):
    """The indexer stops inside each batch's transaction (the batch written, not committed) and after each commit;
    a read at either point is one consistent state of whole batches: the last commit's, never half a batch."""
    folder = tmp_path / "growing"
    for i in range(IMAGES):
        noise(folder / f"img{i:03d}.png", seed=i)
    db_path = tmp_path / "live.db"
    client = create_app(Settings(f"sqlite:///{db_path}", tmp_path / "cache", "secret")).server.test_client()
    store = DatasetStore(f"sqlite:///{db_path}")

    pauses = _Pauses()
    bump_generation, count_into = run.bump_generation, run.Changes.count_into
    monkeypatch.setattr(run, "bump_generation",
                        lambda session, dataset: (bump_generation(session, dataset), pauses.pause("writing")))
    monkeypatch.setattr(run.Changes, "count_into",
                        lambda changes, summary: (count_into(changes, summary), pauses.pause("committed")))
    request = IndexRequest(folder, weights=WeightsChoice("random"), model=MODEL, image_size=IMAGE_SIZE, workers=0,
                           batch_size=BATCH)
    seen: dict[int, int] = {}  # generation -> images

    def read() -> int:
        view = store.view("growing")
        assert view.embeddings.shape == (len(view.image_ids), 384)
        assert len(view.relpaths) == len(view.image_ids) == len(set(view.relpaths))
        assert seen.setdefault(view.generation, len(view)) == len(view), "one generation, two states"
        for image_id in view.image_ids[-BATCH:]:
            assert client.get(f"/thumbnails/{image_id}/gallery.jpg").status_code == 200
            assert store.patch_grid(int(image_id)).shape[:2] == (4, 4)
        assert client.get("/health").status_code == 200
        return len(view)

    with ThreadPoolExecutor(1) as pool:
        indexing = pool.submit(index_folder, open_database(str(db_path)), request, show_progress=False)
        try:
            assert (pauses.next(), read()) == ("committed", 0)  # the changes that need no model: none
            pauses.release()
            for committed in range(0, IMAGES, BATCH):
                assert (pauses.next(), read()) == ("writing", committed)
                pauses.release()
                assert (pauses.next(), read()) == ("committed", committed + BATCH)
                pauses.release()
        finally:
            pauses.end()
        assert indexing.result(timeout=120).added == IMAGES
    assert sorted(seen.values()) == list(range(0, IMAGES + 1, BATCH))


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
