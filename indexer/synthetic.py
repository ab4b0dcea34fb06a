"""Synthetic datasets written straight into the database, without a model: clustered embeddings around random
centres, with labels by cluster, small patch grids and one shared thumbnail. For benchmarks and tests at scale."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from db.engine import Database
from db.mutations import FileFacts, ImageContent, JpegImage, add_image, bump_generation
from db.schema import Dataset

_BATCH = 1000


def write_synthetic_dataset(database: Database, name: str, count: int, *, dim: int = 768, clusters: int = 20,
                            spread: float = 0.5, grid: int = 1, seed: int = 0) -> None:
    """Add a dataset of `count` images whose embeddings form `clusters` groups, labelled group0, group1, ..."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 200)).save(buffer, format="JPEG")
    jpeg = JpegImage(buffer.getvalue(), 64, 48)
    with database.session() as session:
        dataset = Dataset(name=name, root=f"synthetic:{name}", model_name="synthetic", weights_kind="random",
                          weights_identity=f"synthetic (seed {seed})", weights_source=None, image_size=grid * 14,
                          patch_size=14, grid_height=grid, grid_width=grid, embed_dim=dim, precision="fp32",
                          preprocessing={"synthetic": True}, library_versions={})
        session.add(dataset)
        session.flush()
        dataset_id = dataset.id
    for start in range(0, count, _BATCH):
        with database.session() as session:
            dataset = session.get(Dataset, dataset_id)
            for i in range(start, min(start + _BATCH, count)):
                group = int(rng.integers(clusters))
                embedding = centres[group] + spread * rng.standard_normal(dim).astype(np.float32)
                grid_tokens = np.repeat(embedding[None, None, :], grid * grid, axis=1).reshape(grid, grid, dim)
                content = ImageContent(64, 48, embedding, grid_tokens, {"gallery": jpeg, "preview": jpeg})
                facts = FileFacts(f"group{group}/{i:07d}.jpg", f"group{group}", f"{seed:08x}{i:056x}", 1, 1)
                add_image(session, dataset, facts, content)
            bump_generation(session, dataset)
    database.checkpoint()
