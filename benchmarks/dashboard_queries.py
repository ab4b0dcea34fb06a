"""Server-side time of the dashboard's heaviest answers: a similarity query, K-Means and a PCA projection.

    python benchmarks/dashboard_queries.py --db dinoscope.db --dataset samples   # an indexed dataset
    python benchmarks/dashboard_queries.py --synthetic 10000                     # a synthetic dataset

--synthetic N first writes N images with clustered 768-dimensional embeddings into a fresh SQLite database in a
temporary folder. Times are the median of --repeats runs of the logic the page callbacks call (no browser).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dashboard.analysis.projection import project
from dashboard.clustering_view import ClusterParams, cluster_images
from dashboard.data import DatasetStore, DatasetView
from dashboard.similarity_view import similar_images
from db.engine import open_database, resolve_url
from indexer.synthetic import write_synthetic_dataset


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
    with tempfile.TemporaryDirectory() as folder:
        if args.synthetic:
            args.db, args.dataset = str(Path(folder) / "synthetic.db"), "synthetic"
            write_synthetic_dataset(open_database(args.db), args.dataset, args.synthetic)
        started = time.perf_counter()
        view = DatasetStore(resolve_url(args.db)).view(args.dataset)
        opened_ms = (time.perf_counter() - started) * 1000
        print(f"{view.name}: {len(view)} images x {view.embeddings.shape[1]} dimensions")
        print(f"  opening the dataset      {opened_ms:9.1f} ms (first time in this process)")
        report(view, args.repeats)


def report(view: DatasetView, repeats: int) -> None:
    reference = int(view.image_ids[0])
    print(f"  top-8 similarity query   {median_ms(lambda: similar_images(view, reference, 8), repeats):9.1f} ms")
    coordinates = np.zeros((len(view), 2), np.float32)
    for k in (5, 20):
        timing = median_ms(lambda: cluster_images(view, coordinates, ClusterParams("kmeans", k=k)), repeats)
        print(f"  K-Means k={k:<2} + metrics   {timing:9.1f} ms")
    print(f"  PCA projection           {median_ms(lambda: project(view.embeddings, 'pca'), repeats):9.1f} ms")


if __name__ == "__main__":
    main()
