"""The files under a running server changing: the cache folder deleted, the SQLite database replaced or deleted."""

from __future__ import annotations

import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dash.testing.wait import until

from dashboard.data import DatasetStore
from dashboard.folder_cache import FolderCache
from db.engine import open_database
from db.errors import DatabaseNotFound, DatabaseUnreachable
from indexer.synthetic import write_synthetic_dataset
from tests.browser import show_tsne
from tests.servers import PLAIN_SERVE_ENV, free_port, job_servers, start, stop, wait_until_healthy


def _synthetic_db(path: Path, name: str, count: int) -> Path:
    database = open_database(str(path))
    write_synthetic_dataset(database, name, count, dim=384, clusters=4, spread=0.3)
    database.checkpoint()  # the file alone holds it: it is copied and renamed
    database.dispose()
    return path


def test_a_deleted_cache_is_made_again_and_every_handle_on_it_finds_the_new_one(tmp_path):
    folder = tmp_path / "cache" / "results"
    web, job = FolderCache(str(folder)), FolderCache(str(folder))  # two processes' handles on one cache
    web["before"] = 1
    seen_in_thread = []
    thread = threading.Thread(target=lambda: seen_in_thread.append(job.get("before")))
    thread.start()
    thread.join()
    assert seen_in_thread == [1]

    shutil.rmtree(tmp_path / "cache")
    assert web.get("before") is None  # made anew, empty, rather than an error
    job["result"] = "t-SNE"
    assert web.get("result") == "t-SNE"  # not a cache of its own: the same new file
    thread = threading.Thread(target=lambda: seen_in_thread.append(job.get("result")))
    thread.start()
    thread.join()
    assert seen_in_thread == [1, "t-SNE"]  # a thread's connection to the deleted file is not kept either


def test_a_replaced_database_file_is_reopened_and_a_deleted_one_named(sample_db, tmp_path):
    served = tmp_path / "served.db"
    shutil.copy(sample_db, served)
    other = _synthetic_db(tmp_path / "other.db", "other", 40)
    store = DatasetStore(f"sqlite:///{served}")
    assert [(p.name, p.image_count) for p in store.provenances()] == [("samples", 44)]
    before = store.thumbnail(1, "gallery")

    other.replace(served)  # as `mv other.db served.db`
    assert [(p.name, p.image_count) for p in store.provenances()] == [("other", 40)]
    assert store.view("other").embeddings.shape == (40, 384)
    after = store.thumbnail(1, "gallery")
    assert after is not None and after != before

    served.unlink()
    with pytest.raises(DatabaseNotFound, match=f"database file {served} was deleted or moved"):
        store.provenances()


def test_a_writer_stops_when_its_database_file_is_replaced(tmp_path):
    path = _synthetic_db(tmp_path / "index.db", "first", 10)
    writer = open_database(str(path))
    with writer.session():
        pass
    _synthetic_db(tmp_path / "other.db", "second", 10).replace(path)
    with pytest.raises(DatabaseUnreachable, match="replaced by another file while this process was writing"), \
            writer.session():
        pass


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_server_survives_its_cache_folder_deleted_and_its_database_replaced(dash_duo, sample_db, tmp_path):
    """Two gunicorn workers and the job server: after the cache folder is deleted, a t-SNE still reaches the page
    (one job server, one board); after the database is replaced, every answer comes from the new file; after it is
    deleted, the pages say so."""
    served = tmp_path / "served.db"
    shutil.copy(sample_db, served)
    other = _synthetic_db(tmp_path / "other.db", "other", 40)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    log = tmp_path / "serve.log"
    process = start(["serve", "--workers", "2", "--port", port, "--db", served, "--cache-dir", cache], log,
                    env=PLAIN_SERVE_ENV)
    try:
        wait_until_healthy(process, url, log)
        show_tsne(dash_duo, url, "samples", perplexity=4)

        shutil.rmtree(cache)
        statuses = {_get(f"{url}/thumbnails/{image_id}/gallery.jpg")[0] for image_id in range(1, 23)}
        assert statuses == {200}
        show_tsne(dash_duo, url, "samples", perplexity=5)
        until(lambda: len(job_servers(process.pid)) == 1, timeout=10)  # one, whoever made the new board

        expected = DatasetStore(f"sqlite:///{other}").thumbnail(1, "gallery")[0]
        other.replace(served)
        answers = {_get(f"{url}/thumbnails/1/gallery.jpg") for _ in range(12)}  # both workers answer some
        assert answers == {(200, expected)}
        dash_duo.driver.get(f"{url}/gallery")
        dash_duo.wait_for_contains_text("#provenance", "40 images", timeout=30)

        served.unlink()
        assert _get(f"{url}/thumbnails/1/gallery.jpg")[0] in (404, 503)
        dash_duo.driver.get(f"{url}/gallery")
        dash_duo.wait_for_contains_text("body", "was deleted or moved while dinoscope was using it", timeout=30)
    finally:
        stop(process)
    text = log.read_text()
    assert "Traceback" not in text
    assert "was deleted or replaced" in text and "was replaced: reopening it" in text
