"""The route the image-sets page sends files to (dashboard.set_upload), through Flask's test client: the page's
header, the set's size limit, the roles, the names already taken, and a good upload spooled to disk and answered
with what was added and what was left out."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboard.app import create_app
from dashboard.auth import add_user
from dashboard.image_sets import UploadLimits
from dashboard.set_actions import UPLOADS_OFF
from dashboard.set_upload import UPLOAD_HEADER, UPLOAD_PATH
from dashboard.settings import Settings, UploadSettings
from indexer.index_job import ServerModel
from tests.conftest import IMAGE_SIZE, MODEL
from tests.images import encoded
from tests.servers import basic_auth

MB = 1024**2
FROM_THE_PAGE = {UPLOAD_HEADER: "1"}
PASSWORDS = {"alice": "alice's password", "bob": "bob's password", "carol": "carol's password"}
SPOOLED_BYTES = 500 * 1024  # werkzeug keeps a part in memory up to this size, and spools a larger one to disk


@pytest.fixture
def users(tmp_path) -> Path:
    path = tmp_path / "users"
    for user, role in (("alice", "student"), ("bob", "student"), ("carol", "viewer")):
        add_user(path, user, PASSWORDS[user], role)
    return path


def client(tmp_path: Path, users: Path, db: Path | None = None, allowed: bool = True,
           limits: UploadLimits | None = None):
    settings = Settings(f"sqlite:///{db or tmp_path / 'index.db'}", tmp_path / "cache", "test-secret",
                        users_file=users, uploads=UploadSettings(allowed, tmp_path / "uploads",
                                                                 limits or UploadLimits()),
                        index_model=ServerModel(MODEL, None, True, IMAGE_SIZE))
    return create_app(settings).server.test_client()


def post(client, user: str, files: list[tuple[str, bytes]], headers: dict[str, str] = FROM_THE_PAGE, **form: str):
    return client.post(UPLOAD_PATH, headers={**basic_auth(user, PASSWORDS[user]), **headers},
                       data={**form, "files": [(io.BytesIO(data), name) for name, data in files]})


def jpeg(seed: int) -> bytes:
    return encoded(Image.new("RGB", (32, 24), (seed * 40 % 256, 90, 200)), "JPEG")


def noise_png(side: int) -> bytes:
    """A PNG of random pixels: it does not compress, so it is about 3 x side² bytes."""
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "PNG")


def stored_sets(tmp_path: Path) -> list[Path]:
    uploads = tmp_path / "uploads"
    return sorted(path for path in uploads.iterdir() if path.is_dir()) if uploads.exists() else []


def test_only_requests_with_the_page_s_header_are_taken(tmp_path, users):
    answer = post(client(tmp_path, users), "alice", [("cat.jpg", jpeg(1))], headers={}, dataset="pets")
    assert answer.status_code == 400
    assert answer.get_json() == {"ticket": None,
                                 "message": f"{UPLOAD_PATH} takes uploads from the image-sets page only"}
    assert stored_sets(tmp_path) == []


def test_a_body_over_the_set_limit_is_refused_with_413_and_the_limit(tmp_path, users):
    served = client(tmp_path, users, limits=UploadLimits(set_bytes=1 * MB))
    answer = post(served, "alice", [("huge.png", b"\x89PNG" + bytes(3 * MB))], dataset="pets")
    assert answer.status_code == 413
    assert answer.get_json() == {"ticket": None, "message": "This upload is larger than a set may be (1 MB), or holds "
                                                            "more than 1,000 files: send fewer"}
    # A viewer is refused before the body is read: told 403, not the size
    assert post(served, "carol", [("huge.png", b"\x89PNG" + bytes(3 * MB))], dataset="pets").status_code == 403
    assert stored_sets(tmp_path) == []


def test_a_viewer_and_a_server_without_uploads_are_refused_with_403(tmp_path, users):
    answer = post(client(tmp_path, users), "carol", [("cat.jpg", jpeg(1))], dataset="pets")
    assert answer.status_code == 403
    assert answer.get_json()["message"] == ("Your role lets you browse, not add image sets: ask the server's "
                                            "administrator")
    answer = post(client(tmp_path, users, allowed=False), "alice", [("cat.jpg", jpeg(1))], dataset="pets")
    assert answer.status_code == 403
    assert answer.get_json() == {"ticket": None, "message": UPLOADS_OFF}
    assert stored_sets(tmp_path) == []


def test_a_name_an_indexed_dataset_or_another_set_holds_is_refused(tmp_path, users, sample_db):
    db = tmp_path / "index.db"
    shutil.copyfile(sample_db, db)
    served = client(tmp_path, users, db)
    answer = post(served, "alice", [("cat.jpg", jpeg(1))], dataset="samples")
    assert answer.status_code == 400
    assert answer.get_json()["message"] == ("A dataset named 'samples' exists already: choose another name, or add the "
                                            "files to it")
    answer = post(served, "alice", [("cat.jpg", jpeg(1))], dataset="pets")
    assert answer.status_code == 200 and answer.get_json()["message"] == "Received 1 image for 'pets': indexing"
    answer = post(served, "bob", [("dog.jpg", jpeg(2))], dataset="pets")  # not yet indexed: its set holds the name
    assert answer.status_code == 400 and "A dataset named 'pets' exists already" in answer.get_json()["message"]
    answer = post(served, "bob", [("dog.jpg", jpeg(2))], into="pets")
    assert answer.status_code == 403
    assert answer.get_json()["message"] == "'pets' is alice's image set: only they or an admin change it"
    assert len(stored_sets(tmp_path)) == 1


def test_a_large_file_arrives_spooled_and_the_answer_lists_what_was_added_and_skipped(tmp_path, users):
    large = noise_png(500)
    assert len(large) > SPOOLED_BYTES
    answer = post(client(tmp_path, users), "bob", [("noise.png", large), ("cat.jpg", jpeg(1)),
                                                   ("notes.txt", b"not an image")], dataset="bob's things")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    reply = answer.get_json()
    assert reply["dataset"] == "bob's things" and reply["added"] == 2 and isinstance(reply["ticket"], str)
    [(name, reason)] = reply["skipped"]
    assert name == "notes.txt" and reason
    assert reply["message"] == "Received 2 images for \"bob's things\", left out 1 other file (notes.txt): indexing"
    [folder] = stored_sets(tmp_path)
    assert folder.name == reply["set"]
    assert (folder / "noise.png").read_bytes() == large and (folder / "cat.jpg").read_bytes() == jpeg(1)
    assert not (folder / "notes.txt").exists()
