"""Server-side time of every interaction on the within-image and why-similar pages, from the stored patch grids.

    dinoscope samples s448 && dinoscope index s448 --dataset samples --image-size 448 --db s448.db --random-weights
    python benchmarks/patch_interactions.py --db s448.db --dataset samples

Each line is the median over the dataset's images of the work one callback does: reading the grid from the
database and computing the layer (or the patch comparison with the nearest images), figure included; why similar
compares each image with its nearest; the region query searches for a 4 x 4 block of patches at the grid's centre
in the whole dataset (the shortlist is every other image). First, the correspondences alone on synthetic float16
grids of 32 x 32 x 768 (`--synthetic-rounds`). The region query at its longest shortlist (500 grids of 32 x 32 x
768 read from the database):

    dinoscope synthetic grids --count 501 --grid 32 --db grids.db
    python benchmarks/patch_interactions.py --db grids.db --dataset grids --images 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dashboard.analysis.correspondence import Region, mutual_matches
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
from dashboard.why_view import SHORTLIST, correspondence_figure, region_query, why_similar
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


def why(store: DatasetStore, view, image_id: int) -> None:
    other = int(view.image_ids[top_k(view.embeddings, view.position(image_id), 1)[0][0]])
    pair = why_similar(store, view, image_id, other)
    sizes = tuple(tuple(int(v) for v in view.sizes[view.position(i)]) for i in (image_id, other))
    correspondence_figure(pair, sizes, ("/a.jpg", "/b.jpg"), 20)


def find_region(store: DatasetStore, view, image_id: int) -> None:
    rows, cols = store.patch_grid(image_id).shape[:2]
    region = Region(rows // 2 - 2, cols // 2 - 2, rows // 2 + 2, cols // 2 + 2)
    region_query(store, view, image_id, region, min(SHORTLIST.high, len(view) - 1))


def synthetic_correspondences(rounds: int) -> None:
    rng = np.random.default_rng(0)
    times = []
    for _ in range(rounds):
        a, b = (rng.standard_normal((32, 32, 768)).astype(np.float16) for _ in range(2))
        started = time.perf_counter()
        mutual_matches(a, b)
        times.append((time.perf_counter() - started) * 1000)
    print(f"synthetic 32 x 32 x 768 float16 grids: mutual matches median {statistics.median(times):.1f} ms, "
          f"max {max(times):.1f} ms over {rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--dataset", default="samples")
    parser.add_argument("--synthetic-rounds", type=int, default=20)
    parser.add_argument("--images", type=int, default=None, help="time on the first N images only")
    args = parser.parse_args()
    synthetic_correspondences(args.synthetic_rounds)
    store = DatasetStore(resolve_url(args.db))
    view = store.view(args.dataset)
    grid = store.patch_grid(int(view.image_ids[0]))
    print(f"{view.name}: {len(view)} images, patch grids {grid.shape[0]} x {grid.shape[1]} x {grid.shape[2]}")
    actions = [(name, lambda image_id, s=settings: show(store, view, image_id, s)) for name, settings in INTERACTIONS]
    actions.append(("click a patch (this image + 3 nearest)", lambda image_id: compare(store, view, image_id)))
    actions.append(("why similar (with its nearest, 20 lines)", lambda image_id: why(store, view, image_id)))
    actions.append(("region query, 4 x 4 patches, whole dataset", lambda image_id: find_region(store, view,
                                                                                                image_id)))
    for name, action in actions:
        times = []
        for image_id in view.image_ids[:args.images]:
            started = time.perf_counter()
            action(int(image_id))
            times.append((time.perf_counter() - started) * 1000)
        print(f"  {name:<40} median {statistics.median(times):6.1f} ms   max {max(times):6.1f} ms")


if __name__ == "__main__":
    main()
