"""Index runs as background jobs of the dashboard (indexer.index_job): progress reported as the run goes, a summary as
plain data, one run at a time over the same files of a dataset, the job server's indexing lane, and the settings
that choose the model."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from dash.testing.wait import until

from db.engine import open_database
from db.holds import HOLDS_ENV
from db.queries import find_dataset
from db.runs import SILENT_RUN_S, RunInProgress, start_run
from db.schema import IndexRun, utcnow
from indexer import run as index_run
from indexer.index_job import ServerModel, run_index_job
from indexer.plan import Shard
from tests.conftest import FAST, IMAGE_SIZE, MODEL, index_folder, run_cli, sqlite_only
from tests.images import noise
from tests.servers import CLI

TEST_MODEL = ServerModel(MODEL, None, True, IMAGE_SIZE)


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for i in range(5):
        noise(root / "noise" / f"{i}.png", seed=i)
    (root / "broken.png").write_text("this is text, not a picture\n")
    return root


@sqlite_only
def test_progress_is_reported_batch_by_batch_up_to_the_total(photos, db_url):
    from indexer.model import WeightsChoice

    reported = []
    request = index_run.IndexRequest(photos, "photos", MODEL, WeightsChoice("random"), IMAGE_SIZE, batch_size=2,
                                     workers=0)
    index_run.index_folder(open_database(db_url), request, show_progress=False, progress=reported.append)
    assert [(step.done, step.total) for step in reported] == [(0, 6), (2, 6), (4, 6), (6, 6)]
    assert all(step.images_per_second > 0 for step in reported[1:])
    assert reported[-1].seconds_left == 0 and reported[0].seconds_left is None


@sqlite_only
def test_the_job_returns_its_summary_with_the_failures_as_plain_data(photos, db_url):
    reported = []
    summary = run_index_job(db_url, photos, "mine", TEST_MODEL, reported.append)
    assert reported[0] == {"done": 0, "total": 6, "images_per_second": 0.0, "seconds_left": None}
    assert reported[-1]["done"] == reported[-1]["total"] == 6
    assert summary["refused"] is None and summary["dataset"] == "mine"
    assert (summary["added"], summary["failed"], summary["embedded"]) == (5, 1, 5)
    assert [relpath for relpath, _reason in summary["failures"]] == ["broken.png"]
    assert "not an image" in summary["failures"][0][1]
    assert json.loads(json.dumps(summary)) == summary == pickle.loads(pickle.dumps(summary))

    again = run_index_job(db_url, photos, "mine", TEST_MODEL)
    assert (again["added"], again["unchanged"], again["embedded"]) == (0, 5, 0)


@sqlite_only
def test_a_refused_job_says_why(photos, db_url):
    run_index_job(db_url, photos, "mine", TEST_MODEL)
    other = run_index_job(db_url, photos, "mine", ServerModel(MODEL, None, True, 112))
    assert other["refused"].startswith("dataset 'mine' was built with") and "image size 112" in other["refused"]


def test_an_image_set_is_recorded_with_the_dataset_it_creates_and_joins_no_other(photos, tmp_path, db_url):
    from db.queries import uploaded_set

    first = run_index_job(db_url, photos, "mine", TEST_MODEL, uploaded_set=("mine-1a2b", "alice"))
    with open_database(db_url).session() as session:
        recorded = uploaded_set(session, find_dataset(session, "mine"))
        assert (recorded.set_id, recorded.owner) == ("mine-1a2b", "alice")
    assert first["added"] == 5
    again = run_index_job(db_url, photos, "mine", TEST_MODEL, uploaded_set=("mine-1a2b", "alice"))
    assert again["refused"] is None and again["unchanged"] == 5

    other_set = run_index_job(db_url, photos, "mine", TEST_MODEL, uploaded_set=("mine-9f9f", "bob"))
    assert other_set["refused"] == "a dataset named 'mine' exists already: name the image set otherwise"
    run_index_job(db_url, photos, "from the command line", TEST_MODEL)
    joining = run_index_job(db_url, photos, "from the command line", TEST_MODEL, uploaded_set=("x-1", "bob"))
    assert "exists already" in joining["refused"]


def test_a_second_run_of_a_dataset_is_refused_while_the_first_runs(photos, tmp_path, db_url):
    """Whoever starts it (a background job, `dinoscope index`), a run over the files another run of the dataset is
    indexing is refused, saying which run that is; once it has ended, the next run goes ahead."""
    holds = tmp_path / "holds"
    holds.mkdir()
    (holds / "index-batch-committed").touch()  # the first run stops after its first batch until released
    first = subprocess.Popen([*CLI, "index", str(photos), "--db", db_url, "--dataset", "mine", "--random-weights",
                              *FAST, "--batch-size", "2"], env={**os.environ, HOLDS_ENV: str(holds)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(lambda: (holds / "index-batch-committed.reached").exists() or first.poll() is not None, timeout=300)
        assert first.poll() is None, first.communicate()

        refused = run_index_job(db_url, photos, "mine", TEST_MODEL)["refused"]
        assert refused.startswith("dataset 'mine' is being indexed now: run 1, started ")
        assert f"on {socket.gethostname()} by process {first.pid}. Wait for it to end, then index again" in refused
        by_hand = index_folder(photos, db_url, "--dataset", "mine", expect=1)
        assert "dataset 'mine' is being indexed now: run 1" in by_hand.output
        assert index_folder(photos, db_url, "--dataset", "mine", "--shard", "1/2", expect=1).exit_code == 1
    finally:
        (holds / "index-batch-committed").unlink()
        _out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    summary = run_index_job(db_url, photos, "mine", TEST_MODEL)
    assert summary["refused"] is None and summary["unchanged"] == 5


def test_shards_of_one_split_run_together_and_nothing_else_does():
    assert index_run._overlapping(Shard(1, 1))({"shard": "2/3"})
    assert index_run._overlapping(Shard(2, 3))({"shard": "1/1"})
    assert not index_run._overlapping(Shard(2, 3))({"shard": "1/3"})
    assert index_run._overlapping(Shard(2, 3))({"shard": "2/3"})
    assert index_run._overlapping(Shard(1, 2))({"shard": "1/3"})  # different splits share files


@sqlite_only
def test_a_run_of_another_host_counts_until_it_has_been_silent_too_long(photos, db_url):
    """Its process cannot be seen from here: a commit to the dataset within SILENT_RUN_S says it lives."""
    index_folder(photos, db_url, "--dataset", "mine")
    database = open_database(db_url)
    with database.session() as session:
        dataset_id = find_dataset(session, "mine").id
        session.add(IndexRun(dataset_id=dataset_id, host="elsewhere", pid=1, options={"shard": "1/1"}))
    with pytest.raises(RunInProgress, match="started .* on elsewhere by process 1"), database.session() as session:
        start_run(session, dataset_id, "here", 2, {})
    long_ago = utcnow() - timedelta(seconds=SILENT_RUN_S + 60)
    with database.session() as session:
        find_dataset(session, "mine").updated_at = long_ago
        for run in session.query(IndexRun):
            run.started_at = long_ago
    with database.session() as session:
        assert start_run(session, dataset_id, "here", 2, {}) > 0
    database.dispose()


def test_settings_come_from_the_options_and_the_environment(tmp_path, monkeypatch):
    from dashboard import cli
    from dashboard.settings import Settings

    monkeypatch.setenv("DINOSCOPE_DB", str(tmp_path / "sets.db"))
    defaults = Settings.from_env()
    assert defaults.uploads.folder == tmp_path / "uploads" and not defaults.uploads.allowed
    assert defaults.index_model == ServerModel() and defaults.index_slots == 1
    assert Settings("postgresql+psycopg://u@h/d", tmp_path).uploads.folder.name == "uploads"

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Settings("postgresql+psycopg://u@h/d", tmp_path).uploads.folder == tmp_path / "data/dinoscope/uploads"
    for name, value in {"ALLOW_UPLOADS": "1", "UPLOADS_DIR": str(tmp_path / "up"), "MODEL": MODEL,
                        "RANDOM_WEIGHTS": "true", "IMAGE_SIZE": "56", "INDEX_SLOTS": "2"}.items():
        monkeypatch.setenv(f"DINOSCOPE_{name}", value)
    from_env = Settings.from_env()
    assert from_env.uploads.allowed and from_env.uploads.folder == tmp_path / "up"
    assert from_env.index_model == ServerModel(MODEL, None, True, 56) and from_env.index_slots == 2

    served = []
    monkeypatch.setattr(cli, "serve_dashboard", lambda settings, *_args: served.append(settings))
    run_cli("serve", "--uploads-dir", tmp_path / "given", "--model", "vit_large_patch14_reg4_dinov2.lvd142m",
            "--image-size", "112", "--index-slots", "1")
    assert served[0].uploads.allowed and served[0].uploads.folder == tmp_path / "given"
    assert served[0].index_model == ServerModel("vit_large_patch14_reg4_dinov2.lvd142m", None, True, 112)
    assert served[0].index_slots == 1
    refused = run_cli("serve", "--weights", tmp_path / "w.safetensors", expect=2)
    assert "--weights and --random-weights exclude each other" in refused.output


def test_the_worker_indexes_with_the_model_it_is_given(tmp_path, monkeypatch):
    """`dinoscope worker` runs the index jobs of `serve --celery`: it takes the same model options."""
    from dashboard import app, jobs

    built = []

    class Worker:
        def worker_main(self, _argv) -> None:
            pass

    monkeypatch.setattr(jobs, "check_redis", lambda _url: None)
    monkeypatch.setattr(app, "create_worker", lambda settings: built.append(settings) or Worker())
    monkeypatch.setenv("DINOSCOPE_IMAGE_SIZE", "56")
    run_cli("worker", "--celery", "redis://127.0.0.1:1/0", "--db", tmp_path / "w.db", "--model", MODEL,
            "--random-weights")
    assert built[0].index_model == ServerModel(MODEL, None, True, 56)


def _index_in_job(folder: str, db_url: str, photos: str) -> None:
    """A job that indexes as a page's callback will, writing what it reports and returns into `folder`."""
    progress = Path(folder, "progress")

    def report(step: dict) -> None:
        with progress.open("a") as file:
            file.write(json.dumps(step) + "\n")

    summary = run_index_job(db_url, photos, "from-a-job", TEST_MODEL, report)
    Path(folder, "summary").write_text(json.dumps(summary))


def test_the_job_server_runs_index_jobs_in_their_own_lane(photos, tmp_path):
    from dashboard.job_board import JobBoard
    from dashboard.job_server import JobServerConfig, dump_job, start_job_server

    db_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    open_database(db_url).dispose()
    config = JobServerConfig(tmp_path / "cache", db_url, 1, (), index_slots=1)
    board = JobBoard(config.board_folder)
    server = start_job_server(config, board)
    try:
        token = board.submit("indexing", dump_job(_index_in_job, (str(tmp_path), db_url, str(photos))), "p")
        until(lambda: (tmp_path / "summary").exists(), timeout=300)
        assert board.job(token)["lane"] == "indexing"
    finally:
        server.terminate()
        server.wait(30)
    summary = json.loads((tmp_path / "summary").read_text())
    assert summary["refused"] is None and (summary["added"], summary["failed"]) == (5, 1)
    steps = [json.loads(line) for line in (tmp_path / "progress").read_text().splitlines()]
    assert [step["done"] for step in steps] == [0, 6] and steps[-1]["total"] == 6
