"""The issue's acceptance on a real server: two users adding sets at once, and a dashboard user browsing during both
runs, with no errors. `dinoscope serve --workers 2 --allow-uploads --index-slots 2` behind a login; alice (a zip of
labelled photographs) and bob (loose photographs) each post a set and drive its index run's background callback
over HTTP as dash-renderer does; carol, a viewer, opens every page and runs its callbacks meanwhile, and is refused
the upload route."""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import threading
import zipfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.classroom import PASSWORD, Student
from benchmarks.load_test import PAGES, THUMBNAIL, Results, visit
from dashboard.data import DatasetStore
from dashboard.set_upload import UPLOAD_HEADER, UPLOAD_PATH
from db.holds import HOLDS_ENV
from indexer.samples import PHOTOS
from tests.conftest import IMAGE_SIZE, MODEL, run_cli
from tests.servers import PLAIN_SERVE_ENV, free_port, start, stop, wait_until_healthy

HELD_AFTER_A_BATCH = "index-batch-committed"
RUN_PATIENCE_S = 120  # a run starts by importing torch and building the model: 15 s on two idle cores, more when busy
THINK_S = 1.0  # carol's pause between visits, as a user reads a page
VIEWER_REFUSAL = (403, "Your role lets you browse, not add image sets: ask the server's administrator")


def labelled_zip(per_label: int) -> tuple[bytes, int]:
    """A zip of `per_label` sample photographs in each label's folder, and how many it holds."""
    buffer, count = io.BytesIO(), 0
    with zipfile.ZipFile(buffer, "w") as archive:
        for label in sorted(path for path in PHOTOS.iterdir() if path.is_dir()):
            for photo in sorted(label.glob("*.jpg"))[:per_label]:
                archive.write(photo, f"{label.name}/{photo.name}")
                count += 1
    return buffer.getvalue(), count


def loose_photos(label: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The sample photographs of a label as the `files` parts of a multipart upload."""
    return [("files", (photo.name, photo.read_bytes(), "image/jpeg"))
            for photo in sorted((PHOTOS / label).glob("*.jpg"))]


def post_set(student: Student, dataset: str, files: list) -> requests.Response:
    return student.http.post(f"{student.base_url}{UPLOAD_PATH}", files=files, data={"dataset": dataset},
                             headers={UPLOAD_HEADER: "1"}, timeout=60)


class Adder:
    """A student who posts a set to the upload route, then runs its index run as the page does: the background
    callback `index_set`, started with the answer's ticket and polled until its result."""

    def __init__(self, student: Student, dataset: str, files: list) -> None:
        self.student, self.dataset, self.files = student, dataset, files
        self.progress_shown = threading.Event()  # a progress line of the run itself, not a wait for the job
        self.answer: dict = {}
        self.progress: list[str] = []
        self.result: dict | None = None

    def run(self) -> None:
        reply = post_set(self.student, self.dataset, self.files)
        self.answer = {"status": reply.status_code, **reply.json()}
        if reply.status_code == 200:
            self.result = self.student.background(
                f"{self.dataset}: index run", "sets-result.children", {"sets-ticket": {"data": self.answer["ticket"]}},
                "sets-ticket.data", RUN_PATIENCE_S, defaultdict(list), self._heard)

    def _heard(self, _seconds: float, progress: dict) -> None:
        text = json.dumps(progress)
        self.progress.append(text)
        if json.dumps(f"Indexing {self.dataset!r}: ")[1:-1] in text:
            self.progress_shown.set()


class Viewer:
    """A viewer browsing until told to stop: every page in turn with its callbacks, then the image-sets page, and a
    try at the upload route; a pause to read after each visit."""

    def __init__(self, student: Student, dataset: str, images: list[int]) -> None:
        self.student, self.dataset, self.images = student, dataset, images
        self.done = threading.Event()
        self.visits = 0
        self.sets_pages: list[set[str]] = []  # the ids of each image-sets page she was shown
        self.refusals: list[tuple[int, str]] = []

    def run(self) -> None:
        rng = random.Random(14)
        while not self.done.is_set():
            visit(self.student, PAGES[self.visits % len(PAGES)], self.dataset, rng.choice(self.images), rng)
            self.sets_pages.append(set(self.student.open_page("image-sets", "") or ()))
            reply = post_set(self.student, "carol's fish", loose_photos("fish")[:1])
            self.refusals.append((reply.status_code, reply.json()["message"]))
            self.visits += 1
            self.done.wait(THINK_S)


def test_two_users_add_sets_at_once_while_a_viewer_browses_with_no_errors(sample_db, tmp_path):
    db = tmp_path / "index.db"
    shutil.copyfile(sample_db, db)  # the server writes the new datasets into it
    users = tmp_path / "users"
    for user, role in (("alice", "student"), ("bob", "student"), ("carol", "viewer")):
        run_cli("users", "add", users, user, "--password-stdin", "--role", role, input=f"{PASSWORD}\n")
    # Each run waits after its first batch while the hold's file exists: the test lifts it once both runs have shown
    # their progress (neither could end before), so the two ran at once, each in its slot.
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / HELD_AFTER_A_BATCH).touch()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    server = start(["serve", "--workers", "2", "--port", port, "--db", db, "--cache-dir", tmp_path / "cache",
                    "--users", users, "--allow-uploads", "--uploads-dir", tmp_path / "uploads", "--index-slots", "2",
                    "--model", MODEL, "--random-weights", "--image-size", IMAGE_SIZE], log,
                   env={**PLAIN_SERVE_ENV, HOLDS_ENV: str(holds)})
    results = Results()
    archive, zipped = labelled_zip(per_label=2)
    windmills = loose_photos("windmills")
    try:
        wait_until_healthy(server, url, log)
        carol_login = requests.Session()
        carol_login.auth = ("carol", PASSWORD)
        html = carol_login.get(f"{url}/", timeout=60).text
        end_id = json.loads(re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', html,
                                      re.DOTALL).group(1))["end_id"]
        dependencies = carol_login.get(f"{url}/_dash-dependencies", timeout=60).json()
        students = {name: Student(url, dependencies, results, name, end_id) for name in ("alice", "bob", "carol")}
        for student in students.values():
            student.log_in()
        probe = Student(url, dependencies, Results(), "carol", end_id)  # not one of carol's visits
        gallery = probe.open_page("gallery", "dataset=samples&per_page=200")
        images = [int(image) for image in THUMBNAIL.findall(json.dumps(gallery))]
        assert images, "the gallery of the samples shows no thumbnails"

        alice = Adder(students["alice"], "alice's labelled photos", [("files", ("photos.zip", archive,
                                                                                "application/zip"))])
        bob = Adder(students["bob"], "bob's windmills", windmills)
        carol = Viewer(students["carol"], "samples", images)
        with ThreadPoolExecutor(3) as pool:  # a user's exception is raised here, by their future's result()
            browsing, runs = pool.submit(carol.run), [pool.submit(alice.run), pool.submit(bob.run)]
            try:
                both_shown = alice.progress_shown.wait(RUN_PATIENCE_S) and bob.progress_shown.wait(RUN_PATIENCE_S)
                neither_ended = alice.result is None and bob.result is None
                (holds / HELD_AFTER_A_BATCH).unlink()
                for run in runs:
                    run.result(RUN_PATIENCE_S + 30)
            finally:  # let every thread end, whatever failed
                carol.done.set()
                (holds / HELD_AFTER_A_BATCH).unlink(missing_ok=True)
            browsing.result(60)
    finally:
        status, survivors = stop(server)
    output = log.read_text()

    assert both_shown and neither_ended, f"the runs did not run at once: alice {alice.progress}, bob {bob.progress}"
    for adder, count in ((alice, zipped), (bob, len(windmills))):
        assert adder.answer.get("status") == 200 and adder.answer["added"] == count, adder.answer
        assert adder.result is not None, f"{adder.dataset}'s run gave no result in {RUN_PATIENCE_S} s"
        summary = json.dumps(adder.result["sets-result"]["children"])
        assert "sets-summary" in summary and f"{count} added" in summary and "sets-refused" not in summary, summary
    assert results.errors == []
    assert carol.visits >= 1
    assert sum(len(results.latencies[f"{page}: open"]) for page in PAGES) == carol.visits  # each visit answered
    assert all(ids >= {"sets-viewer", "sets-table"} and "sets-files" not in ids for ids in carol.sets_pages)
    assert len(carol.sets_pages) == carol.visits
    assert set(carol.refusals) == {VIEWER_REFUSAL} and len(carol.refusals) == carol.visits
    assert "Traceback" not in output and "ERROR" not in output, output
    assert status == 0 and survivors == 0

    store = DatasetStore(f"sqlite:///{db}")
    datasets = {provenance.name: provenance for provenance in store.provenances()}
    assert set(datasets) == {"samples", alice.dataset, bob.dataset}
    assert (datasets[alice.dataset].owner, datasets[alice.dataset].image_count) == ("alice", zipped)
    assert (datasets[bob.dataset].owner, datasets[bob.dataset].image_count) == ("bob", len(windmills))
    assert set(store.view(alice.dataset).labels) == {path.name for path in PHOTOS.iterdir() if path.is_dir()}
