"""Server-side time and memory of the dashboard's heaviest answers, as one table.

    dinoscope synthetic bench --count 100000 --db /tmp/bench.db           # once: a synthetic dataset
    python benchmarks/dashboard_queries.py --db /tmp/bench.db --dataset bench [--tsne] [--umap]
    python benchmarks/dashboard_queries.py --synthetic 10000               # writes a fresh one first
    python benchmarks/dashboard_queries.py --db /tmp/bench.db --dataset bench --selection   # selections, trust
    python benchmarks/dashboard_queries.py --db /tmp/bench.db --dataset bench --duplicates-only   # that pass alone
    dinoscope synthetic million --count 1000000 --db /tmp/million.db   # 7 min, 17 GB (JPEGs 11 KB per image)
    python benchmarks/dashboard_queries.py --db /tmp/million.db --dataset million --no-duplicates --tsne --umap

Opening is timed in fresh processes (imports done first): once with no shared matrix in the cache folder (the
first process of a generation builds it from the database), once with it there (later processes map its files),
and again in the same process. The answers are timed with the files mapped, each the median of --repeats runs of
what the page callbacks do; the gallery page and the scatter go through Dash's callback route (Flask test client),
JSON encoding included. t-SNE and UMAP (background jobs in the dashboard) run once each when asked for, the
near-duplicate pass always, in a process of its own (its peak memory), checked against every pair of a sample and
on planted near-copies. Memory:
--workers processes open the dataset and answer the same requests, then psutil reads each one's resident set (RSS),
its unique memory (USS) and its proportional share (PSS) while all of them are alive.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import diskcache
import numpy as np
import psutil
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from threadpoolctl import threadpool_limits

from dashboard.analysis.duplicates import duplicate_groups, duplicate_pass
from dashboard.analysis.projection import REDUCED_DIMENSIONS, pca_components, project
from dashboard.analysis.similarity import top_k
from dashboard.app import create_app
from dashboard.clustering_view import (
    ClusterParams,
    ProjectionParams,
    cached_clustering,
    cached_projection,
    cluster_images,
    clustering_key,
    projection_trust,
    query_of,
)
from dashboard.data import DatasetStore, DatasetView
from dashboard.duplicates_view import LOWEST
from dashboard.folder_cache import FolderCache
from dashboard.selections import load_selection, save_selection
from dashboard.settings import Settings
from dashboard.similarity_view import HEATMAP_LIMIT, heatmap_figure, neighbourhood
from db.engine import open_database, resolve_url
from indexer.synthetic import write_synthetic_dataset

MIB = 1024**2


def median_s(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _open_in_fresh_process(url: str, cache_dir: str, dataset: str, queue) -> None:
    store = DatasetStore(url, Path(cache_dir))
    started = time.perf_counter()
    store.view(dataset)
    first = time.perf_counter() - started
    queue.put((first, median_s(lambda: store.view(dataset), 5), peak_rss()))


def _work_like_a_dashboard_worker(url: str, cache_dir: str, dataset: str, queue, finished) -> None:
    view = DatasetStore(url, Path(cache_dir)).view(dataset)
    view.nearest(0, 8)
    cluster_images(view, view.reduced[:, :2], ClusterParams("kmeans", k=20))
    neighbourhood(view, int(view.image_ids[0]), 8)
    queue.put((psutil.Process().pid, peak_rss()))
    finished.wait()


def peak_rss() -> int:
    """This process's highest resident set in bytes (Linux's VmHWM: unlike ru_maxrss, it starts afresh at exec, so
    a spawned process does not inherit its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def in_fresh_process(context, target, *args):
    """What `target(*args, queue)` puts on its queue, run in a fresh process of the multiprocessing `context`."""
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    found = queue.get()
    process.join()
    return found


class Dash:
    """The app's callbacks called through Flask's test client, as the browser calls them."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        self.app = create_app(Settings(url, cache_dir, "benchmark"))
        self.cache_dir = cache_dir
        self.client = self.app.server.test_client()

    def call(self, output_prefix: str, values: dict, changed: str) -> bytes:
        output = next(o for o in self.app.callback_map if o.startswith(output_prefix))
        spec = self.app.callback_map[output]

        def filled(items):
            return [{**item, "value": values.get(item["id"])} for item in items]

        outputs = [dict(zip(("id", "property"), part.rsplit(".", 1))) for part in output.strip(".").split("...")]
        response = self.client.post("/_dash-update-component", json={
            "output": output, "changedPropIds": [changed],
            "outputs": outputs if output.startswith("..") else outputs[0],  # a single output is no list
            "inputs": filled(spec["inputs"]), "state": filled(spec["state"]),
        })
        if response.status_code != 200:
            raise RuntimeError(f"{output_prefix}: HTTP {response.status_code}")
        return response.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database to read the dataset from")
    parser.add_argument("--dataset", default="samples")
    parser.add_argument("--synthetic", type=int, help="write N synthetic images into a fresh database first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="processes for the memory measurement")
    parser.add_argument("--tsne", action="store_true", help="time a t-SNE (slow at 100,000 images)")
    parser.add_argument("--umap", action="store_true", help="time a UMAP")
    parser.add_argument("--duplicates-only", action="store_true",
                        help="open the dataset and time only the near-duplicate pass (and check it)")
    parser.add_argument("--duplicates-screen", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="the pass's screen precision (auto: bf16 where the CPU has it natively)")
    parser.add_argument("--duplicates-threads", type=int,
                        help="threads for the pass, as the job server gives a job: cores / quick-lane slots "
                             "(default: all)")
    parser.add_argument("--no-duplicates", action="store_true",
                        help="skip the near-duplicate pass and its recall (a job of about an hour at 1,000,000)")
    parser.add_argument("--selection", action="store_true",
                        help="time a selection of 5,000 images (stored, loaded, shown, exported) and the trust in "
                             "the PCA projection (neighbourhood preservation and trustworthiness on their samples)")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        if args.synthetic:
            args.db, args.dataset = str(Path(folder) / "synthetic.db"), "synthetic"
            started = time.perf_counter()
            write_synthetic_dataset(open_database(args.db), args.dataset, args.synthetic)
            rows.append(("writing the synthetic dataset (dinoscope synthetic)", _s(time.perf_counter() - started)))
        url, cache_dir = resolve_url(args.db), Path(folder) / "cache"
        context = multiprocessing.get_context("spawn")
        built, _, builder_peak = in_fresh_process(context, _open_in_fresh_process, url, str(cache_dir),
                                                   args.dataset)
        mapped, again, _ = in_fresh_process(context, _open_in_fresh_process, url, str(cache_dir), args.dataset)
        rows += [("open, fresh process, no shared matrix yet (builds it)", _s(built)),
                 ("peak RSS of the process that builds it", f"{builder_peak / MIB:.0f} MiB"),
                 ("open, fresh process, shared matrix present (maps it)", _s(mapped)),
                 ("open again in the same process", _s(again))]
        view = DatasetStore(url, cache_dir).view(args.dataset)
        if not args.duplicates_only:
            dash = Dash(url, cache_dir)
            rows += answers(view, dash, args)
            if args.selection:
                rows += selection_answers(view, dash, args.repeats)
        if not args.no_duplicates:
            rows += in_fresh_process(context, _duplicates_in_fresh_process, url, str(cache_dir), args.dataset,
                                      args.duplicates_screen, args.duplicates_threads)
        if not args.duplicates_only:
            rows += memory(context, url, cache_dir, args.dataset, args.workers)
        shared = sum(path.stat().st_size for path in (cache_dir / "matrices").glob("*-g*/*.npy"))
        rows.append(("shared matrix files (mapped by every worker)", f"{shared / MIB:.0f} MiB"))
    print(f"{view.name}: {len(view):,} images x {view.embeddings.shape[1]} dimensions; "
          f"median of {args.repeats} where repeated\n")
    width = max(len(name) for name, _ in rows)
    print(f"| {'answer':<{width}} | server side |\n| {'-' * width} | ----------- |")
    for name, value in rows:
        print(f"| {name:<{width}} | {value:>11} |")


def answers(view: DatasetView, dash: Dash, args) -> list[tuple[str, str]]:
    repeats = args.repeats
    reference = int(view.image_ids[len(view) // 2])
    rows = [("top-8 similarity", _s(median_s(lambda: view.nearest(len(view) // 2, 8), repeats))),
            ("top-8 similarity by a scan of every embedding (below 50,000 images, or past the bounds)",
             _s(median_s(lambda: top_k(view.embeddings, len(view) // 2, 8, norms=view.norms), repeats)))]
    coordinates = view.reduced[:, :2]
    for k in (5, 20):
        params = ClusterParams("kmeans", k=k)
        timing = median_s(lambda params=params: cluster_images(view, coordinates, params), repeats)
        rows.append((f"K-Means k={k} + metrics and summaries", _s(timing)))
    rows.append(("PCA projection (from the shared principal components)",
                 _s(median_s(lambda: project(view.embeddings, "pca", reduced=view.reduced), repeats))))
    rows.append((f"PCA to {REDUCED_DIMENSIONS} components (once per generation, in the build)",
                 _s(median_s(lambda: pca_components(view.embeddings, REDUCED_DIMENSIONS), 1))))
    page = {"gallery-label": None, "gallery-pages": 7, "gallery-per-page": "200", "gallery-dataset": view.name,
            "gallery-filter": {"label": None, "per_page": 200}}
    rows.append(("gallery page of 200 (callback route)",
                 _s(median_s(lambda: dash.call("..gallery-grid.children", page, "gallery-pages.active_page"),
                             repeats))))

    def heatmap():
        _, shown = neighbourhood(view, reference, 8)
        return heatmap_figure(shown.matrix, shown.relpaths).to_json()

    rows.append((f"top-8 and the heatmap of {HEATMAP_LIMIT} images, figure JSON", _s(median_s(heatmap, repeats))))
    projection, clustering = ProjectionParams("pca"), ClusterParams("kmeans", k=20)
    key = projection.cache_key(view)
    with diskcache.Cache(str(dash.cache_dir / "results")) as results:  # the app's, shared by its processes
        coordinates = cached_projection(results, view, projection).coordinates
        cached_clustering(results, view, key, coordinates, clustering)  # timed above as K-Means k=20
    shown = {"key": clustering_key(view, clustering, key), "projection": key, "generation": view.generation,
             "query": query_of(projection, clustering)}
    scatter = {"clustering-shown": shown, "clustering-dataset": view.name}
    body = dash.call("..clustering-scatter.figure", scatter, "clustering-shown.data")
    rows.append((f"scatter, K-Means k=20 (callback route, {len(body) / MIB:.1f} MiB JSON)",
                 _s(median_s(lambda: dash.call("..clustering-scatter.figure", scatter, "clustering-shown.data"),
                             repeats))))
    for method, wanted in (("tsne", args.tsne), ("umap", args.umap)):
        if wanted:
            started = time.perf_counter()
            done = project(view.embeddings, method, reduced=view.reduced, progress=lambda stage: print(f"  {stage}…"))
            notes = "".join(f"; {note}" for note in done.notes)
            rows.append((f"{method} (a background job, once{notes})", _s(time.perf_counter() - started)))
    return rows


PLANTED = 500  # near-copies planted to measure what the duplicates pass finds of them
CHECKED = 1_000  # images whose every pair the benchmark compares itself, to check the pass


def _duplicates_in_fresh_process(url: str, cache_dir: str, dataset: str, screen: str, threads: int | None,
                                 queue) -> None:
    """The near-duplicate pass as the background job runs it (its own process: the peak memory is the pass's and
    the opening's; `threads`: the job's limit), checked against every pair of a sample, then run again with PLANTED
    near-copies."""
    if threads:
        threadpool_limits(threads)
    view = DatasetStore(url, Path(cache_dir)).view(dataset)
    started = time.perf_counter()
    found = duplicate_pass(view.embeddings, LOWEST, norms=view.norms, precision=screen)
    elapsed, peak = time.perf_counter() - started, peak_rss()
    cores = f"{threads} thread{'s' if threads != 1 else ''}" if threads else "all threads"
    rows = [(f"duplicates pass, exact, {found.screen} screen, {cores} (a job, once)", _s(elapsed)),
            ("  its peak RSS (with the opened dataset)", f"{peak / MIB:.0f} MiB"),
            ("regroup at threshold 0.95 (cached forest)", _s(median_s(lambda: duplicate_groups(found, 0.95), 3)))]
    unit = np.asarray(view.embeddings, np.float32) / view.norms[:, None]
    sample = np.random.default_rng(0).choice(len(view), CHECKED, replace=False)
    scores = unit[sample] @ unit.T
    scores[np.arange(CHECKED), sample] = -np.inf
    labels = _labels(found, LOWEST)
    i, j = np.nonzero(scores >= LOWEST)
    joined = int(np.sum(labels[sample[i]] == labels[j]))
    best = scores.max(axis=1)
    close = best >= LOWEST
    error = np.abs(found.nearest_similarity[sample] - best)
    rows.append((f"  checked on {CHECKED:,} images against all: pairs >= {LOWEST} in one group",
                 f"{joined} of {len(i)}"))
    rows.append((f"  nearest similarity, largest error: >= {LOWEST} ({close.sum()}) / below",
                 f"{error[close].max(initial=0):.1e} / {error[~close].max(initial=0):.1e}"))
    rng, planted_count = np.random.default_rng(1), min(PLANTED, len(view) // 2)
    originals = rng.choice(len(view), planted_count, replace=False)
    copies = rng.choice(np.setdiff1d(np.arange(len(view)), originals), planted_count, replace=False)
    embeddings = np.array(view.embeddings)
    scale = np.linalg.norm(embeddings[originals], axis=1, keepdims=True) / np.sqrt(embeddings.shape[1])
    embeddings[copies] = embeddings[originals] + 0.25 * scale * rng.standard_normal((planted_count,
                                                                                     embeddings.shape[1]))
    planted = duplicate_pass(embeddings, LOWEST, precision=screen)
    cosines = np.einsum("ij,ij->i", embeddings[originals], embeddings[copies]) / (
        np.linalg.norm(embeddings[originals], axis=1) * np.linalg.norm(embeddings[copies], axis=1))
    # A planted pair is found when it is in one group at its own similarity: no chain of less similar pairs helps.
    hits = 0
    for a, b, cosine in zip(originals, copies, cosines - 1e-6):
        labels = _labels(planted, cosine)
        hits += int(labels[a] == labels[b])
    rows.append((f"  found of {planted_count} planted near-copies (cosine {cosines.min():.3f} to {cosines.max():.3f})",
                 f"{hits}"))
    queue.put(rows)


def _labels(found, threshold: float) -> np.ndarray:
    """Every image's group (connected component) of the pass's forest at `threshold`."""
    chosen = found.similarity >= threshold
    count = len(found.nearest_similarity)
    graph = coo_matrix((np.ones(chosen.sum()), (found.first[chosen], found.second[chosen])), shape=(count, count))
    return connected_components(graph, directed=False)[1]


SELECTED = 5_000


def selection_answers(view: DatasetView, dash: Dash, repeats: int) -> list[tuple[str, str]]:
    """A selection of SELECTED images: stored, loaded, made through the page's callback, shown (gallery page,
    exports' links, Python snippet), greyed on the scatter, exported; the trust in the PCA projection."""
    chosen = view.image_ids[np.sort(np.random.default_rng(0).choice(len(view), SELECTED, replace=False))]
    rows = []
    with FolderCache(str(dash.cache_dir / "selections"), eviction_policy="none") as store:  # the app's
        started = time.perf_counter()
        key = save_selection(store, view.name, chosen)
        rows.append((f"store a selection of {SELECTED:,} (first time)", _s(time.perf_counter() - started)))
        rows.append((f"store the same {SELECTED:,} again (found by its id)",
                     _s(median_s(lambda: save_selection(store, view.name, chosen), repeats))))
        rows.append((f"load a selection of {SELECTED:,}", _s(median_s(lambda: load_selection(store, view, key),
                                                                       repeats))))
    picked = {"clustering-picked": {"image_ids": chosen.tolist()}, "clustering-pick-how": "add",
              "clustering-selection": key, "clustering-dataset": view.name}
    rows.append((f"add a lasso of {SELECTED:,} to it (callback route)",
                 _s(median_s(lambda: dash.call("clustering-selection.data", picked, "clustering-picked.data"),
                             repeats))))
    shown = {"clustering-selection": key, "clustering-selection-pages": 3, "clustering-dataset": view.name}
    body = dash.call("..clustering-selection-count.children", shown, "clustering-selection-pages.active_page")
    rows.append((f"show it: gallery page, links, snippet (callback route, {len(body) / MIB:.2f} MiB)",
                 _s(median_s(lambda: dash.call("..clustering-selection-count.children", shown,
                                               "clustering-selection.data"), repeats))))
    projection, clustering = ProjectionParams("pca"), ClusterParams("kmeans", k=20)
    projection_key = projection.cache_key(view)
    scatter = {"clustering-selection": key, "clustering-dataset": view.name, "clustering-colour": "clusters",
               "clustering-trust-k": 10,
               "clustering-shown": {"key": clustering_key(view, clustering, projection_key),
                                    "projection": projection_key, "generation": view.generation,
                                    "query": query_of(projection, clustering)}}
    body = dash.call("clustering-scatter.figure@", scatter, "clustering-selection.data")
    rows.append((f"grey the others on the scatter (callback route, a patch of {len(body) / MIB:.2f} MiB)",
                 _s(median_s(lambda: dash.call("clustering-scatter.figure@", scatter, "clustering-selection.data"),
                             repeats))))
    client = dash.app.server.test_client()
    for kind in ("csv", "json", "npz"):
        size = len(client.get(f"/download/selection.{kind}", query_string={"dataset": view.name,
                                                                            "selection": key}).data)
        timing = median_s(lambda kind=kind: client.get(f"/download/selection.{kind}", query_string={
            "dataset": view.name, "selection": key}).data, repeats)
        rows.append((f"export it as .{kind} ({size / MIB:.1f} MiB)", _s(timing)))
    with diskcache.Cache(str(dash.cache_dir / "results")) as results:
        coordinates = cached_projection(results, view, projection).coordinates
    started = time.perf_counter()
    trust = projection_trust(view, coordinates, 10)
    what = (f"trust, k=10: preservation of {len(trust.rows):,}, trustworthiness of {trust.trust_images:,} "
            f"(once, then cached; T = {trust.trustworthiness:.3f})")
    rows.append((what, _s(time.perf_counter() - started)))
    preservation = {**scatter, "clustering-colour": "preservation"}
    dash.call("..clustering-scatter.figure", preservation, "clustering-colour.value")  # computes and caches it
    rows.append(("scatter coloured by preservation, cached (callback route)",
                 _s(median_s(lambda: dash.call("..clustering-scatter.figure", preservation,
                                               "clustering-colour.value"), repeats))))
    return rows


def memory(context, url: str, cache_dir: Path, dataset: str, workers: int) -> list[tuple[str, str]]:
    queue, finished = context.Queue(), context.Event()
    processes = [context.Process(target=_work_like_a_dashboard_worker,
                                 args=(url, str(cache_dir), dataset, queue, finished)) for _ in range(workers)]
    for process in processes:
        process.start()
    peaks = dict(queue.get() for _ in processes)
    readings = [psutil.Process(pid).memory_full_info() for pid in peaks]
    finished.set()
    for process in processes:
        process.join()
    rows = []
    for i, (reading, peak) in enumerate(zip(readings, peaks.values()), 1):
        rows.append((f"worker {i} of {workers}: RSS / USS / PSS, peak RSS (MiB)",
                     f"{reading.rss / MIB:.0f} / {reading.uss / MIB:.0f} / {reading.pss / MIB:.0f}, {peak / MIB:.0f}"))
    return rows


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
