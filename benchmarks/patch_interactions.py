"""Server-side time of every interaction on the within-image page, from the stored patch grid.

    dinoscope samples s448 && dinoscope index s448 --dataset samples --image-size 448 --db s448.db
    python benchmarks/patch_interactions.py --db s448.db --dataset samples

Each line is the median over the dataset's images of the work one callback does: reading the grid from the
database and computing the layer (or the patch comparison with the nearest images), figure included.
"""

from __future__ import annotations

import argparse
import statistics
import time

from dashboard.analysis.patches import patch_similarity, pool_grid
from dashboard.analysis.similarity import top_k
from dashboard.data import DatasetStore
from dashboard.patches_view import (
    ImageFrame,
    PatchSettings,
    analyse,
    examples,
    layer_values,
    overlay_figure,
    query_similarity,
)
from db.engine import resolve_url

INTERACTIONS = [
    ("clusters k=4", PatchSettings(k=4)),
    ("clusters k=10", PatchSettings(k=10)),
    ("clusters, window 2 step 1", PatchSettings(k=4, window=2, step=1)),
    ("clusters, foreground only", PatchSettings(k=4, foreground_only=True)),
    ("PCA colours", PatchSettings(layer="pca")),
    ("foreground", PatchSettings(layer="foreground")),
    ("patch norms", PatchSettings(layer="norms")),
]


def show(store: DatasetStore, view, image_id: int, settings: PatchSettings) -> None:
    grid = store.patch_grid(image_id)
    width, height = view.sizes[view.position(image_id)]
    frame = ImageFrame(width, height, grid.shape[0], grid.shape[1])
    result = analyse(grid, settings)
    overlay_figure("/p.jpg", frame, result.pooled, layer_values(result, settings), settings.layer, 0.5)
    if settings.layer == "clusters":
        examples(result, frame)


def compare(store: DatasetStore, view, image_id: int) -> None:
    pooled = pool_grid(store.patch_grid(image_id))
    cell = (pooled.tokens.shape[0] // 2, pooled.tokens.shape[1] // 2)
    query_similarity(pooled, cell)
    for index in top_k(view.embeddings, view.position(image_id), 3)[0]:
        other = pool_grid(store.patch_grid(int(view.image_ids[index])))
        patch_similarity(other.tokens, pooled.tokens[cell])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--dataset", default="samples")
    args = parser.parse_args()
    store = DatasetStore(resolve_url(args.db))
    view = store.view(args.dataset)
    grid = store.patch_grid(int(view.image_ids[0]))
    print(f"{view.name}: {len(view)} images, patch grids {grid.shape[0]} x {grid.shape[1]} x {grid.shape[2]}")
    actions = [(name, lambda image_id, s=settings: show(store, view, image_id, s)) for name, settings in INTERACTIONS]
    actions.append(("click a patch (this image + 3 nearest)", lambda image_id: compare(store, view, image_id)))
    for name, action in actions:
        times = []
        for image_id in view.image_ids:
            started = time.perf_counter()
            action(int(image_id))
            times.append((time.perf_counter() - started) * 1000)
        print(f"  {name:<40} median {statistics.median(times):6.1f} ms   max {max(times):6.1f} ms")


if __name__ == "__main__":
    main()
