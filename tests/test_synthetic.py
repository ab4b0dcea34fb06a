"""Synthetic datasets: real rows in the database that every reader takes like indexed ones."""

from __future__ import annotations

import numpy as np

from dashboard.data import DatasetStore
from db.engine import open_database
from db.queries import patch_grid
from indexer.synthetic import write_synthetic_dataset
from tests.conftest import sqlite_only


@sqlite_only
def test_a_synthetic_dataset_has_clustered_embeddings_labelled_by_cluster(db_url):
    database = open_database(db_url)
    write_synthetic_dataset(database, "synth", 250, dim=32, clusters=5, spread=0.1, grid=2)
    view = DatasetStore(database.url).view("synth")
    assert len(view) == 250 and view.embeddings.shape == (250, 32) and len(set(view.labels)) == 5
    unit = view.embeddings / np.linalg.norm(view.embeddings, axis=1, keepdims=True)
    labels = np.array(view.labels)
    cosine = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    assert cosine[same].min() > cosine[~same].max()  # every image is nearer its own cluster than any other
    with database.session() as session:
        assert patch_grid(session, int(view.image_ids[0])).shape == (2, 2, 32)


def test_synthetic_pictures_show_each_group_in_its_colour_where_the_patch_grid_has_the_object(tmp_path):
    import io

    from PIL import Image as PilImage

    from db.queries import thumbnail
    from indexer.synthetic import PLACES

    database = open_database(str(tmp_path / "synthetic.db"))
    written = []
    write_synthetic_dataset(database, "synth", 120, dim=16, clusters=3, spread=0.05, grid=8, progress=written.append)
    assert written[-1] == 120
    view = DatasetStore(database.url).view("synth")
    with database.session() as session:
        for row in range(0, 120, 7):
            image_id = int(view.image_ids[row])
            gallery, preview = (PilImage.open(io.BytesIO(thumbnail(session, image_id, kind).jpeg))
                                for kind in ("gallery", "preview"))
            width, height = view.sizes[row]
            assert max(gallery.size) == 192 and max(preview.size) == 512
            assert abs(gallery.width / gallery.height - width / height) < 0.02  # the picture's own shape
            grid = patch_grid(session, image_id).astype(np.float32)
            cosine = grid @ view.embeddings[row] / np.linalg.norm(grid, axis=-1) / view.norms[row]
            on_object = cosine > 0.9  # cells that hold the image's own embedding
            place = next(p for p in PLACES if p.size == (width, height) and (p.mask(8) == on_object).all())
            # The picture shows the object exactly there: its colour at the cells' centres, the background elsewhere.
            pixels = np.asarray(preview, np.float32)
            centres = (np.arange(8) + 0.5) / 8
            at_centres = pixels[(centres * preview.height).astype(int)][:, (centres * preview.width).astype(int)]
            colourful = at_centres.max(axis=-1) - at_centres.min(axis=-1) > 60
            assert (colourful == place.mask(8)).all()
    colours = {}
    with database.session() as session:
        for row in range(120):
            jpeg = thumbnail(session, int(view.image_ids[row]), "gallery").jpeg
            hsv = np.asarray(PilImage.open(io.BytesIO(jpeg)).convert("HSV"))
            hue = np.median(hsv[..., 0][hsv[..., 1] > 100])  # of the saturated pixels: the object
            colours.setdefault(view.labels[row], set()).add(int(hue) // 8)
    assert len(colours) == 3 and all(len(hues) == 1 for hues in colours.values())  # one colour per group
    assert len(set.union(*colours.values())) == 3  # and a different one for each
