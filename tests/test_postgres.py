"""The dashboard on a PostgreSQL database that the indexer wrote, as on a shared department server."""

from __future__ import annotations

from dashboard.app import create_app
from dashboard.data import DatasetStore
from dashboard.settings import Settings
from db.engine import resolve_url
from tests.conftest import FAST, run_cli
from tests.images import noise


def test_the_dashboard_reads_what_the_indexer_wrote_into_postgresql(tmp_path, postgres_url):
    for i, label in enumerate(["cats", "cats", "dogs"]):
        noise(tmp_path / "photos" / label / f"{i}.png", seed=i)
    run_cli("index", tmp_path / "photos", "--db", postgres_url, "--random-weights", *FAST)
    settings = Settings(resolve_url(postgres_url), tmp_path / "cache", "test-secret")

    view = DatasetStore(settings.db_url).view("photos")
    assert view.relpaths == ["cats/0.png", "cats/1.png", "dogs/2.png"] and view.embeddings.shape == (3, 384)
    assert view.labels == ["cats", "cats", "dogs"]

    client = create_app(settings).server.test_client()
    image_id = int(view.image_ids[2])
    response = client.get(f"/thumbnails/{image_id}/gallery.jpg")
    assert response.status_code == 200 and response.mimetype == "image/jpeg" and response.data[:2] == b"\xff\xd8"
    assert client.get(f"/thumbnails/{image_id + 100}/gallery.jpg").status_code == 404
    assert client.get("/gallery?dataset=photos").status_code == 200
