"""Server-side time of the dashboard's heaviest answers: a similarity query, K-Means and a PCA projection.

    python benchmarks/dashboard_queries.py --db dinoscope.db --dataset samples   # an indexed dataset
    python benchmarks/dashboard_queries.py --synthetic 10000                     # clustered random embeddings

Times are the median of --repeats runs of the same logic the page callbacks call (no browser, no network).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dashboard.analysis.projection import project
from dashboard.clustering_view import ClusterParams, cluster_images
from dashboard.data import DatasetStore, DatasetView
from dashboard.similarity_view import similar_images
from db.engine import resolve_url


def synthetic_view(n: int, dim: int = 768, clusters: int = 20, seed: int = 0) -> DatasetView:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    membership = rng.integers(0, clusters, n)
    embeddings = centres[membership] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    labels = [f"group{m}" for m in membership]
    return DatasetView("synthetic", 1, np.arange(1, n + 1), [f"{label}/{i}.jpg" for i, label in enumerate(labels)],
                       labels, [(640, 480)] * n, embeddings)


def median_ms(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database to read the dataset from")
    parser.add_argument("--dataset", default="samples")
    parser.add_argument("--synthetic", type=int, help="use N synthetic images instead of a database")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    view = synthetic_view(args.synthetic) if args.synthetic else DatasetStore(resolve_url(args.db)).view(args.dataset)
    reference = int(view.image_ids[0])
    print(f"{view.name}: {len(view)} images x {view.embeddings.shape[1]} dimensions")
    print(f"  top-8 similarity query   {median_ms(lambda: similar_images(view, reference, 8), args.repeats):9.1f} ms")
    coordinates = np.zeros((len(view), 2), np.float32)
    for k in (5, 20):
        timing = median_ms(lambda: cluster_images(view, coordinates, ClusterParams("kmeans", k=k)), args.repeats)
        print(f"  K-Means k={k:<2} + metrics   {timing:9.1f} ms")
    print(f"  PCA projection           {median_ms(lambda: project(view.embeddings, 'pca'), args.repeats):9.1f} ms")


if __name__ == "__main__":
    main()
