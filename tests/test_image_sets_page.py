"""The image-sets page in a real browser: a zip of labelled photographs becomes a new dataset of an empty server
(its index run watched mid-way) and a later run is cancelled after its first batch, on both background-job
managers; on one of them, the new dataset on every page, a set of loose files, files added to a set and the set
indexed again, a set removed. And a server without uploads, which has no such page.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from urllib.parse import urlencode

from dash.testing.wait import until
from selenium.webdriver.common.keys import Keys

from dashboard.app import create_app
from dashboard.image_sets import MANIFEST
from dashboard.pages import PAGES, image_sets
from dashboard.settings import Settings, UploadSettings
from db.holds import HOLDS_ENV
from indexer.index_job import ServerModel
from tests.browser import JOB_DEADLINE_S, text_of, when_stable
from tests.conftest import IMAGE_SIZE, MODEL

PHOTOS = Path(__file__).resolve().parent.parent / "indexer" / "sample_photos"
ZIPPED_LABELS = ("buildings", "fish", "tools")
PER_LABEL = 7
ZIPPED_PHOTOS = PER_LABEL * len(ZIPPED_LABELS)
BATCH = 16  # images an index run embeds and commits at a time (indexer.run.IndexRequest): the zip makes two batches
CORRUPT = "fish/broken.jpg"
FIRST, LOOSE = "field trip", "loose finds"
SUMMARY = r"^'{name}' indexed in \d+ s: {counts}\.$"


def _photos(label: str, count: int) -> list[Path]:
    return sorted((PHOTOS / label).glob("*.jpg"))[:count]


def _labelled_zip(path: Path) -> Path:
    """The photographs of ZIPPED_LABELS under their labels, and a file named .jpg that is no image."""
    with zipfile.ZipFile(path, "w") as archive:
        for label in ZIPPED_LABELS:
            for photo in _photos(label, PER_LABEL):
                archive.write(photo, f"{label}/{photo.name}")
        archive.writestr(CORRUPT, b"not a picture, whatever its name says")
    return path


def _choose(dash_duo, *paths: Path) -> None:
    """Choose files in the drop zone, as its file dialog would."""
    field = "#sets-files input[type=file]"
    dash_duo.wait_for_element(field)
    when_stable(lambda: dash_duo.find_element(field).send_keys("\n".join(str(path) for path in paths)))
    count = len(paths)
    dash_duo.wait_for_contains_text("#sets-chosen", f"{count} {'file' if count == 1 else 'files'} chosen")


def _of(dash_duo, selector: str, expression: str):
    """A JavaScript expression on the element `e` that `selector` finds, read in one step (null when there is none)."""
    return dash_duo.driver.execute_script(
        f"const e = document.querySelector(arguments[0]); return e && ({expression});", selector)


def _exists(dash_duo, selector: str) -> bool:
    return _of(dash_duo, selector, "true") is not None  # find_elements would wait 2 s for an absent element


def _shown(dash_duo, selector: str) -> bool:
    return bool(_of(dash_duo, selector, "e.offsetParent !== null"))


def _enabled(dash_duo, selector: str) -> bool:
    return bool(_of(dash_duo, selector, "!e.disabled"))


def _name(dash_duo, name: str) -> None:
    when_stable(lambda: dash_duo.find_element("#sets-name").send_keys(Keys.CONTROL, "a", Keys.NULL, Keys.DELETE, name))
    until(lambda: _of(dash_duo, "#sets-name", "e.value") == name, timeout=10)


def _send(dash_duo) -> None:
    until(lambda: _enabled(dash_duo, "#sets-send"), timeout=JOB_DEADLINE_S)  # the last run has ended
    when_stable(lambda: dash_duo.find_element("#sets-send").click())


def _next_summary(dash_duo, before: str) -> str:
    """The summary of the next index run to end, once it replaces the summary `before` (or the refusal shown
    instead)."""
    until(lambda: text_of(dash_duo, "#sets-result") and text_of(dash_duo, "#sets-summary") != before,
          timeout=JOB_DEADLINE_S)
    return text_of(dash_duo, "#sets-summary") or text_of(dash_duo, "#sets-result")


def _table(dash_duo) -> dict[str, list[str]]:
    """The table of datasets and image sets: {dataset: [added by, images indexed, files, size]}."""
    rows = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('#sets-table tbody tr')]"
        ".map(row => [...row.cells].map(cell => cell.innerText));")
    return {row[0]: row[1:] for row in rows}


def _in_view(dash_duo, selector: str) -> None:
    when_stable(lambda: dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});",
                                                       dash_duo.wait_for_element(selector)))


def _pick(dash_duo, dropdown: str, option: str) -> None:
    """Choose an option of a dropdown, as a visitor does: by its text, in the open menu."""
    _in_view(dash_duo, dropdown)
    when_stable(lambda: dash_duo.select_dcc_dropdown(dropdown, value=option))
    until(lambda: text_of(dash_duo, dropdown) == option, timeout=10)


def _options(dash_duo, dropdown: str) -> list[str]:
    """The options a dropdown offers, seen by opening it."""
    _in_view(dash_duo, dropdown)
    when_stable(lambda: dash_duo.find_element(dropdown).click())
    shown = dash_duo.driver.execute_script(
        "return [...document.querySelectorAll('.dash-dropdown-option')].map(option => option.innerText);")
    dash_duo.find_element("body").send_keys(Keys.ESCAPE)
    return shown


def _set_folder(uploads: Path, dataset: str) -> Path:
    """The folder of the image set of `dataset` in the uploads folder."""
    return next(manifest.parent for manifest in uploads.glob(f"*/{MANIFEST}")
                if json.loads(manifest.read_text())["dataset"] == dataset)


def test_sets_are_added_indexed_opened_extended_and_removed(dash_duo, background_apps, tmp_path, monkeypatch):
    """The runs' jobs on both managers; what the pages do with their results once, on diskcache (the same
    callbacks, whichever manager ran the job)."""
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "index-batch-committed").touch()  # the first run stops after its first batch until the test lets it go
    monkeypatch.setenv(HOLDS_ENV, str(holds))  # read by the job server and the worker that the build starts
    db, uploads = tmp_path / "new" / "index.db", tmp_path / "uploads"
    assert not db.parent.exists()
    app = background_apps.build(db, uploads=UploadSettings(True, uploads),
                                index_model=ServerModel(MODEL, None, True, IMAGE_SIZE), change_check_seconds=1,
                                preload=("models",))
    dash_duo.start_server(app)
    url = dash_duo.server_url

    # A zip of labelled photographs, and one file named .jpg that is no image, as the first set of an empty server.
    dash_duo.driver.get(f"{url}/image-sets")
    dash_duo.wait_for_text_to_equal("#sets-rows", "No datasets yet.")
    _name(dash_duo, FIRST)
    _choose(dash_duo, _labelled_zip(tmp_path / "trip.zip"))
    _send(dash_duo)
    dash_duo.wait_for_text_to_equal("#sets-sending", f"Received {ZIPPED_PHOTOS + 1} images for {FIRST!r}: indexing",
                                    timeout=30)
    until(lambda: (holds / "index-batch-committed.reached").exists(), timeout=JOB_DEADLINE_S)
    # The run reports after planning (0 of N) and after each batch: the page shows the first batch, at most a poll
    # later.
    until(lambda: re.match(rf"^Indexing {FIRST!r}: {BATCH} of {ZIPPED_PHOTOS + 1} images · [\d.]+ images per second · "
                           r"about \d+ s left$", text_of(dash_duo, "#sets-progress-line")), timeout=20)
    assert _shown(dash_duo, "#sets-cancel")
    assert not text_of(dash_duo, "#sets-summary")
    (holds / "index-batch-committed").unlink()

    summary = _next_summary(dash_duo, "")
    assert re.match(SUMMARY.format(name=FIRST, counts=rf"{ZIPPED_PHOTOS} added, 1 failed, [\d.]+ images per second"),
                    summary), summary
    failures = text_of(dash_duo, "#sets-failures")
    assert "1 file was left out" in failures and CORRUPT in failures, failures
    assert _of(dash_duo, "#sets-open", "e.href") == f"{url}/gallery?{urlencode({'dataset': FIRST})}"
    until(lambda: FIRST in _table(dash_duo), timeout=10)
    assert _table(dash_duo)[FIRST][1:3] == [str(ZIPPED_PHOTOS), str(ZIPPED_PHOTOS + 1)]
    assert db.exists()
    assert dash_duo.get_logs() == []

    if background_apps.manager == "diskcache":
        _open_extend_and_remove(dash_duo, url, tmp_path, uploads, summary)
    _cancel_after_a_batch(dash_duo, background_apps, holds)


def _open_extend_and_remove(dash_duo, url: str, tmp_path: Path, uploads: Path, summary: str) -> None:
    """The first set's dataset on every page; a set of loose files; files added to the first set; the first
    set indexed again; the loose set removed."""
    # The new dataset in its gallery, labelled by the zip's folders; and on every other page that shows a dataset.
    when_stable(lambda: dash_duo.find_element("#sets-open").click())
    dash_duo.wait_for_text_to_equal("#gallery-count", f"{ZIPPED_PHOTOS} images", timeout=20)
    _pick(dash_duo, "#gallery-label", "fish")
    dash_duo.wait_for_text_to_equal("#gallery-count", f"{PER_LABEL} images")
    for page in PAGES:
        if page is image_sets.PAGE:
            continue
        dash_duo.driver.get(f"{url}{page.path}?{urlencode({'dataset': FIRST})}")
        until(lambda: text_of(dash_duo, "#provenance").startswith(f"{ZIPPED_PHOTOS} images · {MODEL}"), timeout=20)
        # Then every callback the page started has answered (the pages' errors would be in the console by then).
        until(lambda: text_of(dash_duo, "#dataset-picker") == FIRST and dash_duo.redux_state_rqs == [], timeout=30)
        assert dash_duo.get_logs() == [], page.path

    # Loose files as a new dataset: what is not an image is left out.
    dash_duo.driver.get(f"{url}/image-sets")
    _pick(dash_duo, "#sets-target", "a new dataset")
    _name(dash_duo, LOOSE)
    notes = tmp_path / "notes.txt"
    notes.write_text("what we found")
    _choose(dash_duo, *_photos("kitchen", 3), notes)
    _send(dash_duo)
    dash_duo.wait_for_text_to_equal(
        "#sets-sending", f"Received 3 images for {LOOSE!r}, left out 1 other file (notes.txt): indexing", timeout=30)
    summary = _next_summary(dash_duo, summary)
    assert re.match(SUMMARY.format(name=LOOSE, counts=r"3 added, [\d.]+ images per second"), summary), summary
    until(lambda: _table(dash_duo).get(LOOSE, [None])[1:3] == ["3", "3"], timeout=10)

    # Two more photographs for the first set: its run embeds those alone.
    _pick(dash_duo, "#sets-target", f"the set {FIRST}")
    until(lambda: not _shown(dash_duo, "#sets-name"), timeout=10)
    _choose(dash_duo, *_photos("windmills", 2))
    _send(dash_duo)
    dash_duo.wait_for_text_to_equal("#sets-sending", f"Received 2 images for {FIRST!r}: indexing", timeout=30)
    summary = _next_summary(dash_duo, summary)
    assert re.match(SUMMARY.format(name=FIRST, counts=r"2 added, 1 failed, [\d.]+ images per second"),
                    summary), summary
    until(lambda: _table(dash_duo)[FIRST][1:3] == [str(ZIPPED_PHOTOS + 2), str(ZIPPED_PHOTOS + 3)], timeout=10)

    # Indexed again, the set has nothing new.
    _pick(dash_duo, "#sets-chosen-dataset", FIRST)
    until(lambda: _enabled(dash_duo, "#sets-reindex"), timeout=JOB_DEADLINE_S)
    when_stable(lambda: dash_duo.find_element("#sets-reindex").click())
    dash_duo.wait_for_text_to_equal("#sets-action", f"Indexing {FIRST!r} again: see the index run above.")
    summary = _next_summary(dash_duo, summary)
    assert re.match(SUMMARY.format(name=FIRST, counts=rf"{ZIPPED_PHOTOS + 2} unchanged, nothing new, 1 failed"),
                    summary), summary

    # The loose set removed: its dataset, its files, its place in the table and in the picker.
    loose_folder = _set_folder(uploads, LOOSE)
    _pick(dash_duo, "#sets-chosen-dataset", LOOSE)
    when_stable(lambda: dash_duo.find_element("#sets-remove").click())
    dash_duo.wait_for_text_to_equal("#sets-remove-confirm", f"Remove {LOOSE!r} for good")
    when_stable(lambda: dash_duo.find_element("#sets-remove-confirm").click())
    dash_duo.wait_for_text_to_equal("#sets-removed", f"Removed {LOOSE!r} and its 3 files")
    until(lambda: LOOSE not in _table(dash_duo), timeout=10)
    assert FIRST in _table(dash_duo)
    assert not loose_folder.exists() and _set_folder(uploads, FIRST).exists()
    until(lambda: _options(dash_duo, "#dataset-picker") == [FIRST], timeout=10)
    dash_duo.driver.refresh()
    until(lambda: _options(dash_duo, "#dataset-picker") == [FIRST], timeout=10)
    assert dash_duo.get_logs() == []


def _cancel_after_a_batch(dash_duo, background_apps, holds: Path) -> None:
    """A run cancelled after its first batch: the page says so, and the job ends."""
    (holds / "index-batch-committed.reached").unlink()
    (holds / "index-batch-committed").touch()
    _pick(dash_duo, "#sets-target", f"the set {FIRST}")
    until(lambda: not _shown(dash_duo, "#sets-name"), timeout=10)
    _choose(dash_duo, *_photos("windmills", 4)[2:])
    _send(dash_duo)
    dash_duo.wait_for_text_to_equal("#sets-sending", f"Received 2 images for {FIRST!r}: indexing", timeout=30)
    until(lambda: (holds / "index-batch-committed.reached").exists(), timeout=JOB_DEADLINE_S)
    until(lambda: _shown(dash_duo, "#sets-cancel"), timeout=20)
    when_stable(lambda: dash_duo.find_element("#sets-cancel").click())
    until(lambda: text_of(dash_duo, "#sets-progress").startswith("Cancelled: what was indexed so far is kept"),
          timeout=20)
    until(lambda: background_apps.running_jobs() == 0, timeout=30)
    until(lambda: not _shown(dash_duo, "#sets-cancel"), timeout=20)
    (holds / "index-batch-committed").unlink()
    assert dash_duo.get_logs() == []


def test_a_server_without_uploads_has_no_image_sets_page(dash_duo, tmp_path):
    dash_duo.start_server(create_app(Settings(f"sqlite:///{tmp_path / 'index.db'}", tmp_path / "cache", "test-secret")))
    dash_duo.wait_for_element("#nav-gallery")
    assert not _exists(dash_duo, "#nav-image-sets")
    dash_duo.driver.get(f"{dash_duo.server_url}/image-sets")
    dash_duo.wait_for_contains_text("#sets-off", "This server does not take image sets from the browser")
    assert not _exists(dash_duo, "#nav-image-sets") and not _exists(dash_duo, "#sets-files")
    assert not dash_duo.find_element("#sets-reindex").is_displayed()  # nothing offered that would be refused
    assert dash_duo.get_logs() == []
