"""Load test: many simulated users drive the real Dash callback endpoints of a gunicorn server while an indexer writes.

    python benchmarks/load_test.py --users 50 --seconds 60

It builds its own world in a temporary folder (unless --db is given): a synthetic dataset to browse and a folder of
photographs that `dinoscope index` adds to a second dataset during the test, which users browse too. It starts
`dinoscope serve --workers N` on a free loopback port, runs for --seconds (or until each user has opened --visits
pages, every page in turn), stops everything and prints requests per second, p50 and p95 latency per request kind,
and the errors. Loopback only, and it always stops by itself.

Each simulated user opens a page the way the browser does (the page router callback, then the page's main
callbacks with the values its layout holds), fetches the thumbnails a gallery page shows, asks whether the dataset
changed, waits a moment, and goes on to the next page.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

DINOSCOPE = [sys.executable, "-c", "from indexer.cli import main; main()"]
PAGES = ("gallery", "similarity", "clustering", "embeddings", "patches")
THUMBNAIL = re.compile(r"/thumbnails/(\d+)/gallery\.jpg")


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            if error:
                self.errors.append(f"{kind}: {error}")


class DashClient:
    """One user's browser: a cookie jar, and callbacks posted the way dash-renderer posts them."""

    def __init__(self, base_url: str, dependencies: list[dict], results: Results) -> None:
        self.base_url = base_url
        self.dependencies = dependencies
        self.results = results
        self.http = requests.Session()

    def get(self, kind: str, path: str) -> bytes | None:
        return self._timed(kind, lambda: self.http.get(self.base_url + path, timeout=60))

    def callback(self, kind: str, output_prefix: str, props: dict[str, dict], changed: str) -> dict | None:
        """Post the callback whose output starts with `output_prefix`, with inputs and state from `props`
        ({component id: {property: value}}, as the page's layout holds them)."""
        spec = next(d for d in self.dependencies if d["output"].lstrip(".").startswith(output_prefix))

        def values(items):
            return [{**item, "value": props.get(item["id"], {}).get(item["property"])} for item in items]

        outputs = [dict(zip(("id", "property"), part.split(".", 1))) for part in spec["output"].strip(".").split("...")]
        payload = {"output": spec["output"], "outputs": outputs if len(outputs) > 1 else outputs[0],
                   "inputs": values(spec["inputs"]), "state": values(spec["state"]), "changedPropIds": [changed]}
        body = self._timed(kind, lambda: self.http.post(f"{self.base_url}/_dash-update-component", json=payload,
                                                        timeout=60))
        return json.loads(body)["response"] if body else None

    def open_page(self, page: str, query: str) -> dict[str, dict] | None:
        """The router callback for /page?query; returns the props of every component with an id in the layout."""
        props = {"_pages_location": {"pathname": f"/{page}", "search": f"?{query}"}}
        response = self.callback(f"{page}: open", "_pages_content.children", props, "_pages_location.pathname")
        if response is None:
            return None
        found: dict[str, dict] = {}
        _collect_props(response["_pages_content"]["children"], found)
        return found

    def _timed(self, kind: str, request) -> bytes | None:
        started = time.perf_counter()
        error, body = None, None
        try:
            reply = request()
            if reply.status_code == 200:
                body = reply.content
            else:
                error = f"HTTP {reply.status_code} {reply.text[:200]!r}"
        except requests.RequestException as failure:
            error = f"{type(failure).__name__}: {failure}"
        self.results.record(kind, time.perf_counter() - started, error)
        return body


def _collect_props(node, found: dict[str, dict]) -> None:
    if isinstance(node, list):
        for item in node:
            _collect_props(item, found)
    elif isinstance(node, dict):
        props = node.get("props") if "type" in node else None
        if props is None:
            for value in node.values():
                _collect_props(value, found)
            return
        if isinstance(props.get("id"), str):
            found[props["id"]] = props
        for value in props.values():
            _collect_props(value, found)


def simulate_user(client: DashClient, datasets: dict[str, list[int]], stop: threading.Event, seed: int,
                  think_seconds: float, visits: int | None = None) -> None:
    """Pages at random until `stop`; or, given `visits`, that many pages, every page in turn from the seed's."""
    rng = random.Random(seed)
    visited = 0
    while not stop.is_set() and visited != visits:
        dataset = rng.choice(sorted(datasets))
        image = rng.choice(datasets[dataset]) if datasets[dataset] else None
        if image is None:
            page = "gallery"
        else:
            page = rng.choice(PAGES) if visits is None else PAGES[(seed + visited) % len(PAGES)]
        visit(client, page, dataset, image, rng)
        visited += 1
        stop.wait(rng.uniform(0.5, 1.5) * think_seconds)


def visit(client: DashClient, page: str, dataset: str, image: int | None, rng: random.Random) -> None:
    query = f"dataset={dataset}" + (f"&image={image}" if image is not None and page != "gallery" else "")
    props = client.open_page(page, query)
    if props is None:
        return
    if page == "gallery":
        props["gallery-pages"]["active_page"] = rng.randint(1, max(1, props["gallery-pages"].get("max_value") or 1))
        response = client.callback("gallery: page", "gallery-grid.children", props, "gallery-pages.active_page")
        for image_id in THUMBNAIL.findall(json.dumps(response))[:rng.randint(5, 20)]:
            client.get("thumbnail", f"/thumbnails/{image_id}/gallery.jpg")
    elif page == "similarity":
        client.callback("similarity: top-k", "similarity-results.children", props, "similarity-reference.value")
    elif page == "clustering":
        response = client.callback("clustering: projection", "clustering-projection-key.data", props,
                                   "clustering-projection.value")
        if response is not None:
            props["clustering-projection-key"] = {"data": response["clustering-projection-key"]["data"]}
            chosen = client.callback("clustering: clusters", "clustering-shown.data", props,
                                     "clustering-projection-key.data")
            if chosen is not None and "clustering-shown" in chosen:
                props["clustering-shown"] = {"data": chosen["clustering-shown"]["data"]}
                client.callback("clustering: scatter", "clustering-scatter.figure", props, "clustering-shown.data")
    elif page == "embeddings":
        client.callback("embeddings: image", "embeddings-line.figure", props, "embeddings-image.value")
    elif page == "patches":
        client.callback("patches: overlay", "patches-overlay.figure", props, "patches-image.value")
    props["dataset-picker"]["options"] = None
    props["dataset-check"] = {"n_intervals": 1}
    props["navigate"] = {"href": f"/{page}?{query}"}
    client.callback("shell: changed?", "dataset-picker.options", props, "dataset-check.n_intervals")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode} before it answered")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"no answer from {url}/health within {timeout:.0f} s")


def dataset_images(url: str, dependencies: list[dict]) -> dict[str, list[int]]:
    """Image ids per dataset, as the gallery shows them (the first page of each dataset)."""
    client = DashClient(url, dependencies, Results())
    props = client.open_page("gallery", "")
    names = props["dataset-picker"]["options"] if props else []
    found = {}
    for name in names:
        page = client.open_page("gallery", f"dataset={name}&per_page=200")
        found[name] = [int(i) for i in THUMBNAIL.findall(json.dumps(page))] if page else []
    return found


def write_photographs(folder: Path, count: int, start: int) -> None:
    """Sample photographs resized and recoloured, so that every file is a new image for the indexer."""
    from indexer.samples import sample_sources

    sources = [path for files in sample_sources().values() for path in files]
    rng = np.random.default_rng(start)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        with Image.open(sources[i % len(sources)]) as image:
            pixels = np.asarray(image.convert("RGB").resize((320, 240)), dtype=np.float32)
        tinted = np.clip(pixels * rng.uniform(0.7, 1.3, 3), 0, 255).astype(np.uint8)
        Image.fromarray(tinted).save(folder / f"photo{i:05d}.jpg", quality=90)


# The README's way to run an indexer beside a server: in a session of its own (Linux shares the processors between
# sessions first) whose scheduling group, and the indexer in it, yield to the server.
FIRST_RUN_GRACE_S = 100
LOW_PRIORITY = ["setsid", "sh", "-c", 'echo 10 > /proc/self/autogroup 2>/dev/null; exec nice -n 10 "$@"', "sh"]


def run_indexer(folder: Path, db: str, model: str, stop: threading.Event, log: list[str],
                low_priority: bool = False) -> None:
    """Add photographs to the folder and index it, again and again, until the test ends (the run going on
    then is stopped: it resumes like any interrupted run). The first run is let finish, however busy the machine:
    the users' requests met an indexer writing either way, and its run shows whether it wrote without failing."""
    added = len(list(folder.glob("*.jpg")))
    while not stop.is_set():
        write_photographs(folder, 16, added)
        added += 16
        run = subprocess.Popen([*(LOW_PRIORITY if low_priority else []), *DINOSCOPE, "index", str(folder),
                                "--dataset", "live", "--db", db, "--model", model, "--random-weights",
                                "--batch-size", "8", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while run.poll() is None and not stop.wait(0.2):
            pass
        if not log:
            try:
                run.wait(FIRST_RUN_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        if run.poll() is None:
            run.terminate()
            run.wait()
            return
        output = run.stdout.read().strip()
        if run.returncode != 0:
            log.append(f"indexer failed with {run.returncode}: {output}")
            return
        log.append(output)


def summarise(results: Results, seconds: float) -> str:
    rows = [f"{'request':<26}{'count':>7}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"]
    total = 0
    for kind in sorted(results.latencies):
        times = np.array(results.latencies[kind]) * 1000
        total += len(times)
        rows.append(f"{kind:<26}{len(times):>7}{np.percentile(times, 50):>9.0f}{np.percentile(times, 95):>9.0f}"
                    f"{times.max():>9.0f}")
    rows.append(f"{total} requests in {seconds:.0f} s: {total / seconds:.1f} requests/s; {len(results.errors)} errors")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--visits", type=int, help="pages each user opens (every page in turn), instead of --seconds")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--think", type=float, default=1.0, help="mean pause between a user's pages, in seconds")
    parser.add_argument("--synthetic", type=int, default=5000, help="images in the synthetic dataset")
    parser.add_argument("--photos", type=int, default=64, help="photographs the indexer starts with")
    parser.add_argument("--index-model", default="vit_small_patch14_reg4_dinov2.lvd142m")
    parser.add_argument("--no-indexer", action="store_true", help="no indexer writing during the test")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dinoscope-load-"))
    db = str(work / "load.db")
    subprocess.run([*DINOSCOPE, "synthetic", "browse", "--count", str(args.synthetic), "--grid", "16", "--db", db],
                   check=True, capture_output=True)
    photos = work / "photos"
    write_photographs(photos, args.photos, 0)
    subprocess.run([*DINOSCOPE, "index", str(photos), "--dataset", "live", "--db", db, "--model", args.index_model,
                    "--random-weights", "--quiet"], check=True, capture_output=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DINOSCOPE_SECRET_KEY": "load-test"}
    server = subprocess.Popen([*DINOSCOPE, "serve", "--db", db, "--host", "127.0.0.1", "--port", str(port),
                               "--workers", str(args.workers), "--cache-dir", str(work / "cache")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    stop = threading.Event()
    indexer_log: list[str] = []
    try:
        wait_for_health(url, server)
        dependencies = requests.get(f"{url}/_dash-dependencies", timeout=30).json()
        datasets = dataset_images(url, dependencies)
        results = Results()
        users = [threading.Thread(target=simulate_user, daemon=True,
                                  args=(DashClient(url, dependencies, results), datasets, stop, seed, args.think,
                                        args.visits))
                 for seed in range(args.users)]
        indexer = [] if args.no_indexer else [threading.Thread(
            target=run_indexer, daemon=True, args=(photos, db, args.index_model, stop, indexer_log))]
        started = time.perf_counter()
        for thread in [*users, *indexer]:
            thread.start()
        if args.visits is None:
            stop.wait(args.seconds)
            stop.set()
        for thread in users:
            thread.join(timeout=120 if args.visits is None else None)
        stop.set()
        elapsed = time.perf_counter() - started  # the users' last pages included
        for thread in indexer:
            thread.join(timeout=FIRST_RUN_GRACE_S + 20)
    finally:
        stop.set()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    how_long = f"{args.seconds:.0f} s" if args.visits is None else f"{args.visits} pages each"
    print(f"{args.users} users for {how_long} against {args.workers} gunicorn workers; indexer: "
          f"{'off' if args.no_indexer else f'{len(indexer_log)} runs'}")
    print(summarise(results, elapsed))
    for error in results.errors[:20]:
        print(f"error: {error}")
    indexer_failed = any(line.startswith("indexer failed") for line in indexer_log)
    if indexer_failed:
        print("\n".join(indexer_log[-3:]))
    if args.json:
        args.json.write_text(json.dumps({
            "users": args.users, "seconds": elapsed, "errors": results.errors, "indexer_runs": len(indexer_log),
            "indexer_failed": indexer_failed,
            "latencies_ms": {kind: {"count": len(t), "p50": float(np.percentile(t, 50) * 1000),
                                    "p95": float(np.percentile(t, 95) * 1000)}
                             for kind, t in results.latencies.items()},
            "requests_per_second": sum(map(len, results.latencies.values())) / elapsed,
        }, indent=2))
    return 1 if results.errors or indexer_failed else 0


if __name__ == "__main__":
    sys.exit(main())
