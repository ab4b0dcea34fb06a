"""Time to the dashboard's first view of each new generation while an index run adds images batch by batch.

    dinoscope synthetic bench --count 100000 --db /tmp/bench.db           # once: a synthetic dataset
    python benchmarks/incremental_generations.py --db /tmp/bench.db --dataset bench [--batch 64] [--batches 5]

It WRITES TO THE DATABASE: each batch adds --batch images (copies of random images of the dataset, their embeddings
moved a little, under new paths among the others) in one transaction with a new generation, as an index run's batch
does; the images it added are removed at the end (one more generation). Each generation is opened in a fresh process
(imports done first) with the previous generation in the cache folder, so it is built from it
(dashboard.matrix_content); then a batch whose built-in drift rule refits the principal axes; then the last
generation is built whole in an empty cache folder, as every generation was before.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dashboard import matrix_content
from dashboard.data import DatasetStore
from db.engine import open_database, resolve_url
from db.mutations import add_images_in_bulk, bump_generation, remove_images, stored_content
from db.queries import dataset_by_name, image_facts
from db.records import FileFacts

sys.path.insert(0, str(Path(__file__).parent))
from dashboard_queries import in_fresh_process, peak_rss  # a sibling script

MIB = 1024**2


def _open_in_fresh_process(url: str, cache_dir: str, dataset: str, refit: bool, queue) -> None:
    if refit:
        matrix_content.REFIT_FRACTION = 0.0  # any change then exceeds the drift rule's share
    store = DatasetStore(url, Path(cache_dir))
    started, cpu = time.perf_counter(), time.process_time()
    store.view(dataset)
    queue.put((time.perf_counter() - started, time.process_time() - cpu, peak_rss()))


def add_batch(url: str, name: str, size: int, number: int, rng: np.random.Generator) -> list[int]:
    """Add `size` images as one index run's batch does; their ids."""
    database = open_database(url)
    with database.session() as session:
        dataset = dataset_by_name(session, name)
        facts = image_facts(session, dataset)
        chosen = rng.choice(len(facts.image_ids), size, replace=False)
        images = []
        for k, row in enumerate(chosen.tolist()):
            content = stored_content(session, dataset, int(facts.image_ids[row]))
            moved = content.embedding + 0.05 * rng.standard_normal(content.embedding.shape, dtype=np.float32)
            folder = facts.relpaths[row].rpartition("/")[0]
            relpath = f"{folder}/incremental-{number:03d}-{k:04d}.jpg" if folder else f"incremental-{number}-{k}.jpg"
            images.append((FileFacts(relpath, facts.labels[row], f"{number:08x}{k:056x}", 1, 0),
                           dataclasses.replace(content, embedding=moved)))
        add_images_in_bulk(session, dataset, images)
        bump_generation(session, dataset)
    with database.session() as session:
        facts = image_facts(session, dataset_by_name(session, name))
    return [int(i) for i, path in zip(facts.image_ids, facts.relpaths) if "/incremental-" in f"/{path}"]


def remove_added(url: str, name: str, image_ids: list[int]) -> None:
    with open_database(url).session() as session:
        remove_images(session, image_ids)
        bump_generation(session, dataset_by_name(session, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="database of the dataset (written to: see above)")
    parser.add_argument("--dataset", default="bench")
    parser.add_argument("--batch", type=int, default=64, help="images per batch")
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    url, context, rng = resolve_url(args.db), multiprocessing.get_context("spawn"), np.random.default_rng(0)
    rows: list[tuple[str, str]] = []
    added: list[int] = []

    def opened(cache_dir: str, refit: bool) -> tuple[float, float, int]:
        return in_fresh_process(context, _open_in_fresh_process, url, cache_dir, args.dataset, refit)

    with tempfile.TemporaryDirectory() as folder:
        cache = str(Path(folder) / "cache")
        rows.append(("first generation, built whole", _row(opened(cache, False))))
        times, cpus, peaks = [], [], []
        try:
            for number in range(args.batches):
                added = add_batch(url, args.dataset, args.batch, number, rng)
                seconds, cpu, peak = opened(cache, False)
                times.append(seconds)
                cpus.append(cpu)
                peaks.append(peak)
            what = f"after a batch of {args.batch}, from the previous one (median of {args.batches}; slowest)"
            median = _row((statistics.median(times), statistics.median(cpus), max(peaks)))
            rows.append((what, f"{median}; {_s(max(times))}"))
            added = add_batch(url, args.dataset, args.batch, args.batches, rng)
            rows.append(("the same with the drift rule refitting the principal axes",
                         _row(opened(cache, True))))
            rows.append(("that generation built whole (no previous one)",
                         _row(opened(str(Path(folder) / "empty"), False))))
        finally:
            if added:
                remove_added(url, args.dataset, added)
    width = max(len(name) for name, _ in rows)
    print(f"| {'generation':<{width}} | time to the first view, CPU time, peak RSS |\n| {'-' * width} | --- |")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


def _row(measured: tuple[float, float, int]) -> str:
    seconds, cpu, peak = measured
    return f"{_s(seconds)}, CPU {_s(cpu)}, {peak / MIB:.0f} MiB"


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
