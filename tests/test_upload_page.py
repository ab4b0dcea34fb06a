"""Query by upload in a real browser: files sent to the similarity page's upload input, the neighbours it shows,
its messages, and a dataset whose weights are no longer on the server."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from dash.testing.wait import until
from PIL import Image

from dashboard.app import create_app
from dashboard.data import DatasetStore
from dashboard.job_board import JobBoard
from dashboard.jobs import JobManagers, JobServerManager, background_managers, job_server_config
from dashboard.query_image import QueryModels, embed_upload, recorded_model
from dashboard.settings import Settings
from dashboard.similarity_view import images_similar_to
from tests.browser import text_of, when_stable
from tests.conftest import FAST, run_cli
from tests.images import data_url, noise

# The first upload waits for the job server to start and warm up.
FIRST_JOB_S = 180


def _upload(dash_duo, path: Path) -> None:
    """Choose a file in the page's upload input, as the browser's file dialog would."""
    field = "#similarity-upload input[type=file]"
    dash_duo.wait_for_element(field)  # dcc.Upload is loaded lazily, after the page
    when_stable(lambda: dash_duo.find_element(field).send_keys(str(path)))


def _read(dash_duo, script: str):
    return dash_duo.driver.execute_script(script)


def _upload_paths(dash_duo) -> list[str]:
    return _read(dash_duo, "return [...document.querySelectorAll("
                           "'#similarity-upload-result-grid .similarity-path')].map(p => p.textContent)")


def _hidden(dash_duo, selector: str) -> bool:
    return _read(dash_duo, f"return document.querySelector('{selector}').hidden")


def _open(dash_duo, query: str) -> None:
    dash_duo.driver.get(f"{dash_duo.server_url}/similarity?{query}")
    dash_duo.wait_for_element("#similarity-result-grid img")


class RecordingManager(JobServerManager):
    """The usual manager, keeping every value the web server reads back from what the jobs stored in the cache
    folder: results, progress and set_props (the server runs in the test's process)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.stored = []

    def get_result(self, key, job):
        value = super().get_result(key, job)
        self.stored.append(value)
        return value

    def get_progress(self, key):
        value = super().get_progress(key)
        self.stored.append(value)
        return value

    def get_updated_props(self, key):
        value = super().get_updated_props(key)
        self.stored.append(value)
        return value


def _files_containing(folder: Path, needles: list[bytes]) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and any(n in path.read_bytes() for n in needles)]


def test_an_uploaded_sample_is_shown_with_its_neighbours_itself_first(dash_duo, sample_db, samples, tmp_path):
    settings = Settings(f"sqlite:///{sample_db}", tmp_path / "cache", "test-secret")
    managers = background_managers(settings)
    manager = RecordingManager(managers.uploads.handle, job_server_config(settings), "uploads")
    dash_duo.start_server(create_app(settings, JobManagers(managers.projections, managers.clusterings, manager,
                                                           managers.indexing)))
    _open(dash_duo, "dataset=samples&image=5&k=5")
    until(lambda: "at most 10 MB" in text_of(dash_duo, "#similarity-upload"), timeout=10)  # a lazily loaded component

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a picture\n")
    _upload(dash_duo, not_an_image)
    until(lambda: "not an image" in text_of(dash_duo, "#similarity-upload-error"), timeout=FIRST_JOB_S)
    assert text_of(dash_duo, "#similarity-upload-error").startswith("This file cannot be used: ")
    assert _hidden(dash_duo, "#similarity-upload-panel")

    relpath = "animals/chelsea.png"
    file = sample_db.parent / "samples" / relpath
    _upload(dash_duo, file)
    until(lambda: len(_upload_paths(dash_duo)) == 5, timeout=60)
    store = DatasetStore(f"sqlite:///{sample_db}")
    upload = embed_upload(QueryModels(), recorded_model(store, "samples"), data_url(file.read_bytes()))
    expected = images_similar_to(samples, upload.embedding, 5)
    assert _upload_paths(dash_duo) == [r.relpath for r in expected] and expected[0].relpath == relpath
    scores = _read(dash_duo, "return [...document.querySelectorAll("
                             "'#similarity-upload-result-grid .similarity-score')].map(s => s.textContent)")
    assert scores[0] == "1.000" and scores == [f"{r.score:.3f}" for r in expected]
    assert _read(dash_duo, "return document.querySelector('#similarity-upload-error')") is None
    assert not _hidden(dash_duo, "#similarity-upload-panel") and _hidden(dash_duo, "#similarity-upload-status")
    facts = text_of(dash_duo, "#similarity-upload-facts")
    assert "chelsea.png" in facts and "451 x 300 px PNG" in facts
    assert "embedded with vit_small_patch14_reg4_dinov2.lvd142m at 56 px" in facts
    assert _read(dash_duo, "return document.querySelector('#similarity-upload-preview').src").startswith(
        "data:image/png;base64,")
    until(lambda: _read(dash_duo, "return document.querySelector('#similarity-upload-preview').naturalWidth")
          == 451, timeout=5)

    # The job stored only ids, paths and scores for the server to read back (the upload reached it in memory),
    # and nothing of the upload is left in the cache folder.
    data = file.read_bytes()
    encoded = base64.b64encode(data)
    assert any(expected[0].relpath in repr(value) for value in manager.stored)
    assert not any(encoded[4000:4080].decode() in repr(value) for value in manager.stored)
    assert _files_containing(tmp_path / "cache", [data[1000:1064], encoded[4000:4080]]) == []

    second = expected[1]
    when_stable(lambda: dash_duo.find_elements("#similarity-upload-result-grid .similarity-result")[1].click())
    until(lambda: text_of(dash_duo, "#similarity-reference-path") == second.relpath, timeout=30)
    until(lambda: f"image={second.image_id}&" in dash_duo.driver.current_url, timeout=10)
    assert dash_duo.get_logs() == []


def test_a_dataset_whose_weights_file_is_gone_says_so(dash_duo, tmp_path, weights_file):
    photos = tmp_path / "photos"
    noise(photos / "a.png", seed=1)
    noise(photos / "b.png", seed=2)
    weights = tmp_path / "dino.safetensors"
    shutil.copyfile(weights_file, weights)
    db = tmp_path / "index.db"
    run_cli("index", photos, "--db", db, "--weights", weights, *FAST)
    weights.rename(tmp_path / "moved.safetensors")

    dash_duo.start_server(create_app(Settings(f"sqlite:///{db}", tmp_path / "cache", "test-secret")))
    _open(dash_duo, "dataset=photos")
    _upload(dash_duo, photos / "a.png")
    until(lambda: "cannot be rebuilt on this server" in text_of(dash_duo, "#similarity-upload-error"),
          timeout=FIRST_JOB_S)
    message = text_of(dash_duo, "#similarity-upload-error")
    assert f"weights file {weights.resolve()} does not exist" in message
    assert _hidden(dash_duo, "#similarity-upload-panel") and _upload_paths(dash_duo) == []
    assert dash_duo.get_logs() == []


def test_a_file_too_large_or_of_another_type_is_refused_in_the_page_before_it_is_sent(dash_duo, dashboard_app,
                                                                                      tmp_path):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples")
    large = tmp_path / "holiday.jpg"
    large.write_bytes(bytes(11 * 1024**2))
    _upload(dash_duo, large)
    until(lambda: not _hidden(dash_duo, "#similarity-upload-rejected"), timeout=20)
    assert text_of(dash_duo, "#similarity-upload-rejected").startswith(
        "holiday.jpg is 11.0 MB; uploads are limited to 10 MB: save a smaller copy")

    animation = tmp_path / "animation.gif"
    Image.new("RGB", (20, 20), (9, 9, 9)).save(animation)
    _upload(dash_duo, animation)
    until(lambda: text_of(dash_duo, "#similarity-upload-rejected")
          == "animation.gif is of type image/gif: upload a JPG or PNG.", timeout=10)
    assert _hidden(dash_duo, "#similarity-upload-panel") and _hidden(dash_duo, "#similarity-upload-status")
    board = JobBoard(tmp_path / "cache" / "jobs")  # the dashboard_app fixture's cache folder
    assert not any(isinstance(key, tuple) and key[0] == "job" for key in board.cache)  # nothing was sent

    _upload(dash_duo, noise(tmp_path / "fine.png", seed=3))  # an accepted one clears the message
    until(lambda: _hidden(dash_duo, "#similarity-upload-rejected"), timeout=10)
    assert dash_duo.get_logs() == []


def test_the_upload_card_folds_and_each_browser_remembers_it(dash_duo, dashboard_app):
    dash_duo.start_server(dashboard_app)
    _open(dash_duo, "dataset=samples")
    body = "#similarity-upload-card-body"
    until(lambda: "at most 10 MB" in text_of(dash_duo, body), timeout=10)
    results_top = dash_duo.find_element("#similarity-result-grid").location["y"]
    when_stable(lambda: dash_duo.find_element("#similarity-upload-card-toggle").click())
    until(lambda: dash_duo.find_element("#similarity-result-grid").location["y"] < results_top - 80, timeout=10)
    dash_duo.driver.refresh()
    dash_duo.wait_for_element("#similarity-result-grid img")
    until(lambda: dash_duo.find_element("#similarity-upload-card-toggle").text == "Show", timeout=10)
    assert not dash_duo.find_element(body).is_displayed()
    when_stable(lambda: dash_duo.find_element("#similarity-upload-card-toggle").click())
    until(lambda: dash_duo.find_element(body).is_displayed(), timeout=10)
    assert dash_duo.get_logs() == []
