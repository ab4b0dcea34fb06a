"""Synthetic datasets: real rows in the database that every reader takes like indexed ones."""

from __future__ import annotations

import numpy as np

from dashboard.data import DatasetStore
from db.engine import open_database
from db.queries import patch_grid
from indexer.synthetic import write_synthetic_dataset


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
