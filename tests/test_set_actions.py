"""What the image-sets page does, without a browser (dashboard.set_actions): who may add, change, index again and
remove which sets, each refusal with its message; the tickets that carry an index run to its job, used once; and
the removal of a set, of its dataset and its files, refused while a run indexes it."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboard.data import DatasetStore
from dashboard.folder_cache import FolderCache
from dashboard.image_sets import ImageSets, IncomingFile
from dashboard.query_image import QueryModels
from dashboard.roles import ADMIN, STUDENT, VIEWER, Visitor
from dashboard.set_actions import UPLOADS_OFF, ActionRefused, receive, reindex, remove, run_ticket, set_rows
from dashboard.site import Site
from db.engine import open_database
from db.errors import DinoscopeError
from db.queries import find_dataset, uploaded_set
from db.runs import RunInProgress, start_run
from indexer.index_job import ServerModel, run_index_job
from tests.conftest import IMAGE_SIZE, MODEL
from tests.images import encoded, noise

ALICE, BOB = Visitor("alice", STUDENT), Visitor("bob", STUDENT)
ROOT, CAROL = Visitor("root", ADMIN), Visitor("carol", VIEWER)
TEST_MODEL = ServerModel(MODEL, None, True, IMAGE_SIZE)


def photo(seed: int) -> IncomingFile:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return IncomingFile(f"photo{seed}.png", encoded(Image.fromarray(pixels), "PNG"))


@pytest.fixture
def site(tmp_path) -> Site:
    """A server that takes image sets, on a database that does not exist yet."""
    db_url = f"sqlite:///{tmp_path / 'sets.db'}"
    return Site(DatasetStore(db_url), FolderCache(str(tmp_path / "results")), QueryModels(),
                ImageSets(tmp_path / "uploads"), TEST_MODEL)


@pytest.fixture
def server_folder(site, tmp_path) -> Path:
    """A dataset indexed from a folder of the server, as `dinoscope index` does."""
    folder = tmp_path / "lab"
    for seed in range(3):
        noise(folder / f"{seed}.png", seed)
    assert run_index_job(site.store.db_url, folder, "lab", TEST_MODEL)["added"] == 3
    return folder


def indexed(site: Site, visitor: Visitor, name: str, *seeds: int) -> dict:
    _received, ticket = receive(site, visitor, [photo(seed) for seed in seeds], dataset=name)
    return run_ticket(site, ticket)


def rows_of(site: Site, visitor: Visitor) -> dict[str, tuple]:
    return {row.dataset: (row.owner, row.images, row.files, row.may_add, row.may_reindex, row.may_remove)
            for row in set_rows(site, visitor)}


def test_the_first_set_makes_the_database_and_is_recorded_with_its_owner(site):
    assert set_rows(site, ALICE) == []  # no database yet: no datasets, not an error
    received, ticket = receive(site, ALICE, [photo(1), photo(2), IncomingFile("notes.txt", b"hello")],
                               dataset="  alice's cats  ")
    assert received.manifest.dataset == "alice's cats" and received.manifest.owner == "alice"
    assert received.skipped == (("notes.txt", "not an image file name"),)
    steps = []
    summary = run_ticket(site, ticket, steps.append)
    assert summary["refused"] is None and summary["added"] == 2
    assert steps[-1] == {"done": 2, "total": 2, "dataset": "alice's cats",
                         "images_per_second": steps[-1]["images_per_second"], "seconds_left": 0}
    with open_database(site.store.db_url).session() as session:
        recorded = uploaded_set(session, find_dataset(session, "alice's cats"))
        assert (recorded.set_id, recorded.owner) == (received.manifest.set_id, "alice")


def test_a_ticket_runs_once_and_a_forged_one_runs_nothing(site):
    _received, ticket = receive(site, ALICE, [photo(1)], dataset="cats")
    assert run_ticket(site, ticket)["added"] == 1
    for token in (ticket, "made-up", None, ["a", "list"]):
        assert run_ticket(site, token) == {
            "dataset": None, "refused": "This index run was not asked for here, or has run already: ask again"}


def test_what_each_role_may_do_with_each_kind_of_dataset(site, server_folder):
    indexed(site, ALICE, "alice's", 1, 2)
    receive(site, BOB, [photo(3)], dataset="bob's, not indexed yet")
    everything = {"lab": (None, 3, None, False, True, False),
                  "alice's": ("alice", 2, 2, True, True, True),
                  "bob's, not indexed yet": ("bob", None, 1, True, True, True)}
    assert rows_of(site, ROOT) == everything
    assert rows_of(site, ALICE) == {**everything, "lab": (None, 3, None, False, False, False),
                                    "bob's, not indexed yet": ("bob", None, 1, False, False, False)}
    nothing = {name: (*facts[:3], False, False, False) for name, facts in everything.items()}
    assert rows_of(site, CAROL) == nothing
    # A server that does not take sets reads no uploads folder: the dataset is listed, its files are not.
    assert rows_of(replace(site, sets=None), ROOT) == {"lab": nothing["lab"],
                                                       "alice's": ("alice", 2, None, False, False, False)}


REFUSED_UPLOADS = [
    (CAROL, {"dataset": "mine"}, "Your role lets you browse, not add image sets: ask the server's administrator"),
    (ALICE, {"dataset": "   "}, "Name the new dataset first"),
    (ALICE, {"dataset": "x" * 81}, "A dataset's name is at most 80 printable characters"),
    (ALICE, {"dataset": "tab\there"}, "A dataset's name is at most 80 printable characters"),
    (ALICE, {"dataset": "lab"}, "A dataset named 'lab' exists already: choose another name, or add the files to it"),
    (ALICE, {"dataset": "bob's"},
     "A dataset named \"bob's\" exists already: choose another name, or add the files to it"),
    (ALICE, {"into": "bob's"}, "\"bob's\" is bob's image set: only they or an admin change it"),
    (ALICE, {"into": "lab"}, "There is no image set of a dataset named 'lab' to add files to"),
]


def test_an_upload_that_may_not_be_made_is_refused_with_its_reason(site, server_folder):
    receive(site, BOB, [photo(1)], dataset="bob's")
    before = sorted(path.name for path in site.sets.uploads_dir.iterdir())
    for visitor, kwargs, message in REFUSED_UPLOADS:
        with pytest.raises(DinoscopeError) as refused:  # ActionRefused (may not), SetRefused (cannot)
            receive(site, visitor, [photo(2)], **kwargs)
        assert str(refused.value) == message
    assert sorted(path.name for path in site.sets.uploads_dir.iterdir()) == before


def test_a_server_without_uploads_refuses_every_action(site, server_folder):
    closed = replace(site, sets=None)
    for action in (lambda: receive(closed, ROOT, [photo(1)], dataset="x"), lambda: reindex(closed, ROOT, "lab"),
                   lambda: remove(closed, ROOT, "lab")):
        with pytest.raises(ActionRefused, match=UPLOADS_OFF):
            action()


def test_files_added_to_a_set_are_all_its_next_run_embeds(site):
    indexed(site, ALICE, "cats", 1, 2)
    _received, ticket = receive(site, ALICE, [photo(3), photo(4)], into="cats")
    summary = run_ticket(site, ticket)
    assert (summary["added"], summary["unchanged"], summary["embedded"]) == (2, 2, 2)
    _received, ticket = receive(site, ROOT, [photo(5)], into="cats")  # an admin may add to anyone's set
    assert run_ticket(site, ticket)["added"] == 1
    assert rows_of(site, ALICE)["cats"][:3] == ("alice", 5, 5)


def test_indexing_again_a_set_or_a_server_folder(site, server_folder):
    indexed(site, ALICE, "cats", 1)
    assert run_ticket(site, reindex(site, ALICE, "cats"))["unchanged"] == 1
    with pytest.raises(ActionRefused, match="'cats' is alice's image set: only they or an admin change it"):
        reindex(site, BOB, "cats")
    with pytest.raises(ActionRefused, match="'lab' was indexed from a folder of the server: only an admin"):
        reindex(site, ALICE, "lab")
    noise(server_folder / "new.png", 9)
    summary = run_ticket(site, reindex(site, ROOT, "lab"))
    assert (summary["added"], summary["unchanged"]) == (1, 3)


def test_a_dataset_that_exists_is_indexed_with_its_own_model_whatever_the_server_s_is_now(site, server_folder):
    indexed(site, ALICE, "cats", 1)
    other = replace(site, index_model=replace(TEST_MODEL, image_size=2 * IMAGE_SIZE))
    _received, ticket = receive(other, ALICE, [photo(2)], into="cats")
    assert run_ticket(other, ticket)["added"] == 1
    noise(server_folder / "new.png", 9)
    assert run_ticket(other, reindex(other, ROOT, "lab"))["added"] == 1
    assert indexed(other, ALICE, "bigger", 3)["added"] == 1  # a new set: the server's model as it is now
    assert {p.name: p.image_size for p in site.store.provenances()} == {
        "cats": IMAGE_SIZE, "lab": IMAGE_SIZE, "bigger": 2 * IMAGE_SIZE}


def test_a_second_run_of_a_set_is_told_the_first_is_running(site):
    indexed(site, ALICE, "cats", 1)
    with open_database(site.store.db_url).session() as session:
        start_run(session, find_dataset(session, "cats").id, socket.gethostname(), os.getpid(), {})
    summary = run_ticket(site, reindex(site, ALICE, "cats"))
    assert summary["refused"].startswith("dataset 'cats' is being indexed")


def test_removing_a_set_removes_its_dataset_and_its_files(site, server_folder):
    indexed(site, ALICE, "cats", 1, 2)
    folder = site.sets.folder(site.sets.sets()[0].set_id)
    with pytest.raises(ActionRefused, match="Only alice or an admin may remove 'cats'"):
        remove(site, BOB, "cats")
    with pytest.raises(ActionRefused, match="'lab' is not an image set added from the browser: it is removed on the "
                                            "server, with dinoscope remove"):
        remove(site, ROOT, "lab")
    assert remove(site, ALICE, "cats") == "Removed 'cats' and its 2 files"
    assert not folder.exists() and set(rows_of(site, ROOT)) == {"lab"}


def test_a_set_is_not_removed_while_a_run_indexes_it(site):
    indexed(site, ALICE, "cats", 1)
    with open_database(site.store.db_url).session() as session:
        start_run(session, find_dataset(session, "cats").id, socket.gethostname(), os.getpid(), {})
    with pytest.raises(RunInProgress, match="'cats' is being indexed"):
        remove(site, ROOT, "cats")
    assert rows_of(site, ROOT)["cats"][1:3] == (1, 1)  # nothing lost
