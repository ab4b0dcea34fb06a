"""What storing patch grids reduced by PCA (`dinoscope index --patch-dims D`) costs in fidelity.

    python benchmarks/patch_reduction.py --weights dinov2_vitb14_reg4.safetensors       # the sample set, ViT-B/14
    python benchmarks/patch_reduction.py --random-weights --model vit_small_patch14_reg4_dinov2.lvd142m  # quick
    python benchmarks/patch_reduction.py --db dinoscope.db --dataset photos             # a stored full-grid dataset

Without --db, the sample set (`dinoscope samples`) is indexed once with full grids into a temporary database; each
D then gets a basis fitted exactly as the indexer fits it (indexer.patch_reduction.fit_patch_pca on the first
FIT_IMAGES images), and every grid goes through what storing and reading does: float16 coordinates, reconstructed
to float16 tokens. So full and reduced grids come from one model pass. Per D the table gives:

- bytes per image of the stored grid, and its share of the full float16 grid (the basis, stored once per dataset,
  is listed below the table);
- ARI: adjusted Rand index between the within-image page's K-Means clusters (cluster_patches, same seed) of the
  full and of the reduced grid, mean and minimum over images, for each --k. The first row, "full, seed 1", is the
  clustering against itself with another K-Means seed: agreement the clustering itself does not exceed;
- similarity r: Pearson correlation, over the grid, of the page's patch-similarity map (patch_similarity) of a
  query patch in the full grid and in the reduced grid, mean and 5th percentile over every patch of every image;
- "held out": the same with the basis fitted on every other image and measured on the rest, for when the images
  that fitted the basis are not the ones looked at (the sample set is smaller than FIT_IMAGES, so "fitted" rows
  measure the images the basis was fitted on).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from dashboard.analysis.patches import cluster_patches
from dashboard.analysis.projection import normalize_rows
from db.engine import open_database, resolve_url
from db.queries import dataset_by_name, load_embeddings, patch_grid
from indexer.model import DEFAULT_MODEL, WeightsChoice
from indexer.patch_reduction import FIT_IMAGES, fit_patch_pca
from indexer.run import IndexRequest, index_folder
from indexer.samples import copy_samples


def full_grids(db: str, dataset: str, limit: int) -> tuple[list[np.ndarray], str]:
    """The dataset's first `limit` full patch grids (float16, relative-path order) and a line of provenance."""
    with open_database(db, readonly=True).session() as session:
        data = dataset_by_name(session, dataset)
        if data.patch_dims is not None:
            raise SystemExit(f"dataset {dataset!r} stores reduced grids already: benchmark a full-grid dataset")
        ids, _ = load_embeddings(session, data)
        grids = [patch_grid(session, int(i)) for i in ids[:limit]]
        about = (f"{data.name}: {len(grids)} of {len(ids)} images, {data.model_name} at {data.image_size} px "
                 f"({data.grid_height}x{data.grid_width} patches, {data.embed_dim} dims), weights {data.weights_kind}")
    return grids, about


def index_samples(folder: Path, db: str, model: str, weights: WeightsChoice, image_size: int, workers: int) -> float:
    copy_samples(folder)
    started = time.perf_counter()
    index_folder(open_database(db), IndexRequest(folder, "samples", model, weights, image_size, workers=workers),
                 show_progress=False)
    return time.perf_counter() - started


def similarity_maps(grid: np.ndarray) -> np.ndarray:
    """(patches, patches): row q is patch_similarity of the grid to its patch q, for every q at once."""
    flat = normalize_rows(np.asarray(grid, np.float32).reshape(-1, grid.shape[-1]))
    return flat @ flat.T


def map_correlations(full: np.ndarray, reduced: np.ndarray) -> np.ndarray:
    """Pearson r between the full and the reduced similarity map of each query patch."""
    a, b = similarity_maps(full), similarity_maps(reduced)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.where(denominator > 0, denominator, np.nan)


def fidelity(full: list[np.ndarray], reduced: list[np.ndarray], ks: list[int], seed: int = 0) -> dict:
    aris = {k: [adjusted_rand_score(cluster_patches(f, k).ravel(), cluster_patches(r, k, seed=seed).ravel())
                for f, r in zip(full, reduced)] for k in ks}
    correlations = np.concatenate([map_correlations(f, r) for f, r in zip(full, reduced)])
    return {"ari": aris, "r": correlations[np.isfinite(correlations)]}


def row(label: str, stored_bytes: int | None, full_bytes: int, kept: float | None, result: dict, ks) -> str:
    size = f"{stored_bytes / 1024:8.1f} KiB {100 * stored_bytes / full_bytes:5.1f}%" if stored_bytes else " " * 19
    variance = f"{100 * kept:6.1f}%" if kept is not None else " " * 7
    aris = "  ".join(f"{np.mean(result['ari'][k]):.3f} {np.min(result['ari'][k]):.3f}" for k in ks)
    r = result["r"]
    similarity = f"{r.mean():.3f} {np.percentile(r, 5):.3f}" if r.size else "    -     -"
    return f"{label:<18} {size}  {variance}  {aris}  {similarity}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="Benchmark this database's dataset instead of indexing the sample set.")
    parser.add_argument("--dataset", default="samples", help="The dataset in --db. [default: samples]")
    parser.add_argument("--weights", type=Path, help="Local weights file of --model (timm safetensors or .pth).")
    parser.add_argument("--random-weights", action="store_true", help="Random weights (the default without "
                        "--weights): runs anywhere, but random tokens say little about a trained model's.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"timm model name. [default: {DEFAULT_MODEL}]")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dims", default="16,32,64,128", help="Patch dims to try, comma-separated.")
    parser.add_argument("--k", default="4,8", help="K-Means cluster counts, comma-separated. [default: 4,8]")
    parser.add_argument("--images", type=int, default=500, help="Measure at most this many images of --db's "
                        "dataset. [default: 500]")
    parser.add_argument("--workers", type=int, default=1, help="Decode workers when indexing the sample set.")
    args = parser.parse_args()
    if args.weights and args.random_weights:
        parser.error("--weights and --random-weights exclude each other")
    dims = [int(d) for d in args.dims.split(",")]
    ks = [int(k) for k in args.k.split(",")]

    with tempfile.TemporaryDirectory(prefix="dinoscope-patch-reduction-") as scratch:
        if args.db:
            db, dataset = resolve_url(args.db), args.dataset
        else:
            db, dataset = resolve_url(str(Path(scratch) / "samples.db")), "samples"
            weights = WeightsChoice("file", args.weights) if args.weights else WeightsChoice("random")
            seconds = index_samples(Path(scratch) / "samples", db, args.model, weights, args.image_size,
                                    args.workers)
            print(f"indexed the sample set with full grids in {seconds:.1f} s")
        grids, about = full_grids(db, dataset, args.images)
    print(about)
    if "weights random" in about:
        print("RANDOM WEIGHTS: these numbers are not representative of a trained model; pass --weights FILE")
    gh, gw, embed_dim = grids[0].shape
    full_bytes = gh * gw * embed_dim * 2
    fit_count = min(FIT_IMAGES, len(grids))
    print(f"full float16 grid: {full_bytes / 1024:.1f} KiB per image ({full_bytes * 100_000 / 2**30:.1f} GiB per "
          f"100,000 images); basis fitted on the first {fit_count} images ({fit_count * gh * gw} patch tokens)")
    print()
    header_k = "  ".join(f"ARI k={k:<2} min  " for k in ks)
    print(f"{'D':<18} {'stored per image':>19}  {'var.':>7}  {header_k} sim. r  p5")
    print(row("full, seed 1", None, full_bytes, None, fidelity(grids, grids, ks, seed=1), ks))
    evens, odds = grids[::2][:FIT_IMAGES], grids[1::2]
    for d in dims:
        if d >= embed_dim or d > len(evens) * gh * gw:
            print(f"{d:<18} skipped: D must be below {embed_dim} and at most the held-out fit's "
                  f"{len(evens) * gh * gw} tokens")
            continue
        started = time.perf_counter()
        pca = fit_patch_pca(grids[:fit_count], d)
        fit_seconds = time.perf_counter() - started
        reduced = [pca.reconstruct(pca.reduce(grid)) for grid in grids]
        print(row(f"{d} fitted", gh * gw * d * 2, full_bytes, pca.explained_variance, fidelity(grids, reduced, ks),
                  ks) + f"   fit {fit_seconds:.2f} s, basis {(d + 1) * embed_dim * 4 / 1024:.0f} KiB")
        held = fit_patch_pca(evens, d)
        print(row(f"{d} held out", gh * gw * d * 2, full_bytes, None,
                  fidelity(odds, [held.reconstruct(held.reduce(grid)) for grid in odds], ks), ks))


if __name__ == "__main__":
    main()
