"""A class on one server: simulated students do the heavy things at once while the indexer adds images.

    python benchmarks/classroom.py                                  # 30 students, 100,000 images, 180 s
    python benchmarks/classroom.py --students 6 --synthetic 3000 --seconds 45    # a quick look

It builds its world in a temporary folder: a synthetic dataset `bench` (--synthetic images), the sample photographs
indexed as `samples`, a users file with a login per student, and a folder of photographs that `dinoscope index`
keeps adding to a dataset `live` (at a low priority, as the README advises on a shared server). It starts `dinoscope serve --workers 4 --users FILE` on a free loopback port and,
the moment the server answers, asks for one t-SNE (how long the first job waits after a fresh start). Then each
student, logged in with their own browser session, keeps doing what a class does: t-SNE and UMAP with their own
parameters, Ward and DBSCAN on the embeddings and on the 2-D projection, uploads (some of them an 80-megapixel PNG
of a few kilobytes), the .npz download of every embedding, gallery pages with their thumbnails, top-K and patch
clicks, each with a pause to think. A student waits --patience seconds for a background result, then moves on
(the page is left: a job still queued then is dropped, as for a closed browser tab).

At the end it prints, per interaction, the count, p50 and p95 of the time to an answer, and the errors; for the
heavy ones also the time until the page showed a state (a queue place, progress or the answer); the queue waits the
job board recorded per lane; and the peak memory of the server's whole process tree (resident, and proportional,
which counts memory shared by processes once). Exit code 1 if anything failed. Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from dashboard.job_board import LANES, JobBoard

sys.path.insert(0, str(Path(__file__).parent))
from load_test import (
    DINOSCOPE,
    THUMBNAIL,
    DashClient,
    Results,
    free_port,
    run_indexer,
    wait_for_health,
    write_photographs,
)

LIGHT = ("log in", "page open", "gallery page", "thumbnail", "top-K", "patch click")
POLL_S = 0.5  # as the pages poll their background jobs
PASSWORD = "classroom"
BIG_PNG = (10_000, 8_000)  # 80 megapixels in a few kilobytes


class Student(DashClient):
    """One student's browser: logged in, with the page-load token Dash signs background jobs with."""

    def __init__(self, url: str, dependencies: list[dict], results: Results, name: str, end_id: str) -> None:
        super().__init__(url, dependencies, results)
        self.http.auth = (name, PASSWORD)
        self.end_id = end_id

    def log_in(self, tries: int = 30) -> None:
        """Open the dashboard as a browser does at the start of the class: a login refused while the server is busy
        with other logins' checks is tried again after its Retry-After, as the refusal's page does by itself."""
        started = time.perf_counter()
        for _ in range(tries):
            reply = self.http.get(f"{self.base_url}/", timeout=60)
            if reply.status_code != 429:
                break
            time.sleep(float(reply.headers.get("Retry-After", 1)))
        error = None if reply.status_code == 200 else f"HTTP {reply.status_code} {reply.text[:200]!r}"
        self.results.record("log in", time.perf_counter() - started, error)

    def background(self, kind: str, output_prefix: str, props: dict, changed: str, patience: float,
                   first_states: dict[str, list[float]], on_progress=None) -> dict | None:
        """A background callback as dash-renderer runs one: the request that starts the job, then a poll every
        POLL_S until the answer. Records when the page first had something to show (a queue place, progress or the
        answer) and when the answer came; None if it did not come within `patience` seconds. `on_progress` is
        called with the seconds so far and each progress the page receives."""
        spec = next(d for d in self.dependencies if d["output"].lstrip(".").startswith(output_prefix))
        payload = self._payload(spec, props, changed)
        started = time.perf_counter()
        handles = self._post(f"{kind} (start)", payload, {"endId": self.end_id})
        if handles is None or "cacheKey" not in handles:
            return handles.get("response") if handles else None
        polled = {**{key: value for key, value in payload.items() if key not in ("inputs", "state")},
                  "inputs": [{**item, "value": None} for item in payload["inputs"]],
                  "state": [{**item, "value": None} for item in payload["state"]]}
        shown = False
        while time.perf_counter() - started < patience:
            time.sleep(POLL_S)
            reply = self._post(f"{kind} (poll)", polled, {"endId": self.end_id, "cacheKey": handles["cacheKey"],
                                                           "job": handles["job"]})
            if reply is None:
                return None
            if not shown and ("progress" in reply or "response" in reply):
                shown = True
                with self.results.lock:
                    first_states[kind].append(time.perf_counter() - started)
            if on_progress and "progress" in reply:
                on_progress(time.perf_counter() - started, reply["progress"])
            if "response" in reply:
                self.results.record(kind, time.perf_counter() - started, None)
                return reply["response"]
        return None

    def _payload(self, spec: dict, props: dict, changed: str) -> dict:
        def values(items):
            return [{**item, "value": props.get(item["id"], {}).get(item["property"])} for item in items]

        outputs = [dict(zip(("id", "property"), part.split(".", 1))) for part in spec["output"].strip(".").split("...")]
        return {"output": spec["output"], "outputs": outputs if len(outputs) > 1 else outputs[0],
                "inputs": values(spec["inputs"]), "state": values(spec["state"]), "changedPropIds": [changed]}

    def _post(self, kind: str, payload: dict, arguments: dict) -> dict | None:
        body = self._timed(kind, lambda: self.http.post(f"{self.base_url}/_dash-update-component", json=payload,
                                                        params=arguments, timeout=120))
        return json.loads(body) if body else None

    def download(self, kind: str, path: str, first_states: dict[str, list[float]]) -> None:
        """A download read to its end by curl, as a browser would save it (reading hundreds of megabytes in this
        Python process would slow every other student of it); the page 'shows a state' at its first byte."""
        user, password = self.http.auth
        run = subprocess.run(["curl", "--config", "-", "--silent", "--show-error", "--output", os.devnull,
                              "--write-out", "%{http_code} %{time_starttransfer} %{time_total}", self.base_url + path],
                             input=f'user = "{user}:{password}"\n', capture_output=True, text=True, check=False,
                             timeout=300)  # the login on standard input, not on a command line others can list
        status, first_byte, total = (run.stdout.split() + ["0", "0", "0"])[:3]
        error = None if run.returncode == 0 and status == "200" else f"HTTP {status} {run.stderr.strip()[:200]}"
        with self.results.lock:
            first_states[kind].append(float(first_byte))
        self.results.record(kind, float(total), error)


def class_group(url: str, dependencies: list[dict], end_id: str, numbers: list[int], datasets: dict, options: dict,
                uploads: dict[str, str], answers) -> None:
    """Some of the students, each in a thread of this process, for the run's seconds; their figures go back on
    `answers` as (latencies, errors, first states)."""
    args = argparse.Namespace(**options)
    results, first_states, stop = Results(), defaultdict(list), threading.Event()
    threads = [threading.Thread(target=study, daemon=True, args=(
        Student(url, dependencies, results, f"student{number}", end_id), datasets, stop, number, args, uploads,
        first_states)) for number in numbers]
    for thread in threads:
        thread.start()
    stop.wait(args.seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=args.patience + 120)
    times = os.times()
    answers.put((dict(results.latencies), results.errors, dict(first_states), times.user + times.system))


def study(student: Student, datasets: dict[str, list[int]], stop: threading.Event, seed: int, args,
          uploads: dict[str, str], first_states) -> None:
    rng = random.Random(seed)
    student.log_in()
    actions = [tsne, umap, ward_or_dbscan, ward_or_dbscan, upload, gallery, gallery, top_k, patch_click, download]
    while not stop.is_set():
        dataset = rng.choice(("bench", "bench", "samples", "live"))
        rng.choice(actions)(student, dataset, rng, datasets, args, uploads, first_states)
        stop.wait(rng.uniform(0.5, 1.5) * args.think)


def tsne(student, dataset, rng, datasets, args, uploads, first_states) -> None:
    projection(student, dataset, {"projection": "tsne", "perplexity": rng.choice((5, 10, 20, 30, 40, 50))}, args,
               first_states, "t-SNE")


def umap(student, dataset, rng, datasets, args, uploads, first_states) -> None:
    projection(student, dataset, {"projection": "umap", "n_neighbors": rng.choice((5, 10, 15, 30)),
                                  "min_dist": rng.choice((0.0, 0.1, 0.5))}, args, first_states, "UMAP")


def projection(student, dataset, parameters, args, first_states, kind, on_progress=None) -> None:
    query = "&".join(f"{name}={value}" for name, value in {"dataset": dataset, **parameters}.items())
    props = student.open_page("clustering", query)
    if props is None:
        return
    chosen = student.callback(f"{kind}: ask", "clustering-projection-key.data...", props, "clustering-projection.value")
    if chosen is None:
        return
    if chosen.get("clustering-projection-request", {}).get("data"):
        props["clustering-projection-request"] = {"data": chosen["clustering-projection-request"]["data"]}
        student.background(kind, "clustering-projection-key.data@", props, "clustering-projection-request.data",
                           args.patience, first_states, on_progress)
    else:  # computed already: the page has it at once
        with student.results.lock:
            first_states[kind].append(0.0)


def ward_or_dbscan(student, dataset, rng, datasets, args, uploads, first_states) -> None:
    method = rng.choice(("hierarchical", "dbscan"))
    space = rng.choice(("true", "false"))
    kind = f"{'Ward' if method == 'hierarchical' else 'DBSCAN'}{' on 2-D' if space == 'true' else ''}"
    query = (f"dataset={dataset}&method={method}&k={rng.randint(2, 20)}&eps={rng.choice((0.3, 0.5, 1.0))}"
             f"&min_samples={rng.choice((3, 5, 10))}&space={space}")
    props = student.open_page("clustering", query)
    if props is None:
        return
    chosen = student.callback(f"{kind}: ask", "clustering-projection-key.data...", props, "clustering-projection.value")
    if chosen is None or not chosen.get("clustering-projection-key", {}).get("data"):
        return
    props["clustering-projection-key"] = {"data": chosen["clustering-projection-key"]["data"]}
    started = time.perf_counter()
    clusters = student.callback(f"{kind}: ask", "clustering-shown.data...", props, "clustering-projection-key.data")
    if clusters is None:
        return
    request = clusters.get("clustering-cluster-request", {}).get("data")
    shown = clusters.get("clustering-shown", {}).get("data")
    if request:
        props["clustering-cluster-request"] = {"data": request}
        answer = student.background(kind, "clustering-shown.data@", props, "clustering-cluster-request.data",
                                    args.patience, first_states)
        shown = answer and answer.get("props", {}).get("data")
    else:
        with student.results.lock:
            first_states[kind].append(time.perf_counter() - started)
    if shown:
        props["clustering-shown"] = {"data": shown}
        student.callback("clusters: draw", "clustering-scatter.figure", props, "clustering-shown.data")


def upload(student, dataset, rng, datasets, args, uploads, first_states) -> None:
    name = "huge.png" if rng.random() < 0.25 else "photo.jpg"
    dataset = rng.choice(("samples", "live"))  # a synthetic dataset has no model to embed an upload with
    props = student.open_page("similarity", f"dataset={dataset}")
    if props is None or "similarity-upload-accepted" not in props:
        return
    props["similarity-upload-accepted"] = {"data": uploads[name]}
    props["similarity-upload"] = {"filename": name}
    props["similarity-k"] = {"value": 8}
    answer = student.background(f"upload {name}", "similarity-upload-facts.children", props,
                                "similarity-upload-accepted.data", args.patience, first_states)
    if answer is not None:
        message = json.dumps(answer)
        expected = "uploads other than JPEG are limited" if name == "huge.png" else "most similar"
        if expected not in message:
            with student.results.lock:
                student.results.errors.append(f"upload {name}: unexpected answer: {message[:200]}")


def gallery(student, dataset, rng, datasets, args, uploads, first_states) -> None:
    props = student.open_page("gallery", f"dataset={dataset}&per_page=50")
    if props is None:
        return
    props["gallery-pages"]["active_page"] = rng.randint(1, max(1, props["gallery-pages"].get("max_value") or 1))
    response = student.callback("gallery page", "gallery-grid.children", props, "gallery-pages.active_page")
    for image_id in THUMBNAIL.findall(json.dumps(response))[:rng.randint(10, 30)]:
        student.get("thumbnail", f"/thumbnails/{image_id}/gallery.jpg")


def top_k(student, dataset, rng, datasets, args, uploads, first_states) -> None:
    image = rng.choice(datasets[dataset])
    props = student.open_page("similarity", f"dataset={dataset}&image={image}")
    if props is not None:
        props["similarity-k"]["value"] = rng.randint(1, 50)
        student.callback("top-K", "similarity-results.children", props, "similarity-k.value")


def patch_click(student, dataset, rng, datasets, args, uploads, first_states) -> None:
    image = rng.choice(datasets[dataset])
    props = student.open_page("patches", f"dataset={dataset}&image={image}")
    if props is None:
        return
    width, height = 512, 384  # anywhere on the preview: the page maps it to a patch
    props["patches-overlay"] = {"clickData": {"points": [{"x": rng.uniform(0, width), "y": rng.uniform(0, height)}]}}
    selected = student.callback("patch click", "patches-selected.data", props, "patches-overlay.clickData")
    if selected and "patches-selected" in selected:
        props["patches-selected"] = {"data": selected["patches-selected"]["data"]}
        student.callback("patch click", "patches-similarity.children", props, "patches-selected.data")


def download(student, dataset, rng, datasets, args, uploads, first_states) -> None:
    student.download(".npz download", f"/download/embeddings.npz?dataset={dataset}", first_states)


class MemoryWatch(threading.Thread):
    """Samples the memory of a process and all its descendants: the resident sets twice a second, the proportional
    sets (slower to read) every two seconds; keeps the peaks."""

    def __init__(self, pid: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop = pid, stop
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0

    def run(self) -> None:
        tick = 0
        while not self.stop.wait(0.5):
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            tick += 1
            self.peak_rss = max(self.peak_rss, self._total(tree, lambda p: p.memory_info().rss))
            if tick % 4 == 0:
                self.peak_pss = max(self.peak_pss, self._total(tree, lambda p: p.memory_full_info().pss))
            self.peak_processes = max(self.peak_processes, len(tree))

    @staticmethod
    def _total(tree, measure) -> int:
        total = 0
        for process in tree:
            try:
                total += measure(process)
            except psutil.Error:
                continue
        return total


def slow_requests(log: str) -> collections.Counter:
    """The server's slow-request warnings, counted by what they ran."""
    found = re.findall(r"slow request: (\S+ \S+) ?(\S*) took", log)
    return collections.Counter(output.strip(".").split("...")[0] or path for path, output in found)


def server_cpu(pid: int) -> dict[str, float]:
    """Processor seconds the server's processes have used so far: the web workers, and the job server with the
    jobs it has reaped (psutil counts a process's ended children in its own times)."""
    used = {"web workers": 0.0, "job server and its jobs": 0.0}
    try:
        tree = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return used
    for process in tree:
        try:
            part = "job server and its jobs" if "dashboard.job_server" in " ".join(process.cmdline()) else \
                "web workers" if process.ppid() == pid else None
            if part is None:
                continue  # a running job: its time is counted with the job server once it ends
            times = process.cpu_times()
            used[part] += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            continue
    return used


def first_job_wait(url: str, dependencies: list[dict], end_id: str) -> tuple[float, list[str]]:
    """Seconds from asking for a t-SNE of the samples, right after the server started, until the job ran (its own
    progress, or its answer, reached the page), and what the page was told meanwhile."""
    results = Results()
    student = Student(url, dependencies, results, "student0", end_id)
    told: list[tuple[float, str]] = []

    def heard(seconds: float, progress: dict) -> None:
        told.extend((seconds, str(text)) for text in progress.values())

    projection(student, "samples", {"projection": "tsne", "perplexity": 5}, argparse.Namespace(patience=300),
               defaultdict(list), "first job", heard)
    if results.errors or not results.latencies.get("first job"):
        raise SystemExit(f"the first job failed: {results.errors}")
    waiting = ("Waiting", "Queued", "Starting")
    ran = next((seconds for seconds, text in told if not text.startswith(waiting)), results.latencies["first job"][0])
    return ran, [f"{seconds:.1f} s: {text}" for seconds, text in told]


def queue_waits(cache_dir: Path) -> dict[str, list[float]]:
    """Per lane, how long each job that started waited in the queue (from the job board's records)."""
    board = JobBoard(cache_dir / "jobs")
    waits: dict[str, list[float]] = defaultdict(list)
    states: dict[str, int] = defaultdict(int)
    for key in list(board.cache):
        if isinstance(key, tuple) and key[0] == "job":
            job = board.job(key[1])
            if job:
                states[job["state"]] += 1
                if "started" in job:
                    waits[job["lane"]].append(job["started"] - job["submitted"])
    waits["states"] = dict(states)
    return waits


def make_uploads() -> dict[str, str]:
    """What the browser sends for a photograph and for the 80-megapixel PNG (both pass its size and type check)."""
    from indexer.samples import sample_sources

    def data_url(data: bytes, mime: str) -> str:
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"

    source = next(path for files in sample_sources().values() for path in files)
    with Image.open(source) as image:
        photo = io.BytesIO()
        image.convert("RGB").resize((1600, 1200)).save(photo, "JPEG", quality=90)
    huge = io.BytesIO()
    Image.new("1", BIG_PNG).save(huge, "PNG")
    return {"photo.jpg": data_url(photo.getvalue(), "image/jpeg"), "huge.png": data_url(huge.getvalue(), "image/png")}


def percentile_row(name: str, times: list[float], errors: int) -> str:
    ms = np.array(times) * 1000 if times else np.array([np.nan])
    return (f"{name:<24}{len(times):>7}{np.percentile(ms, 50):>9.0f}{np.percentile(ms, 95):>9.0f}"
            f"{ms.max():>9.0f}{errors:>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--synthetic", type=int, default=100_000, help="images in the synthetic dataset")
    parser.add_argument("--think", type=float, default=3.0, help="mean pause between a student's actions, seconds")
    parser.add_argument("--patience", type=float, default=45.0, help="how long a student waits for a job")
    parser.add_argument("--client-processes", type=int, default=6, help="processes the students are spread over")
    parser.add_argument("--index-model", default="vit_small_patch14_reg4_dinov2.lvd142m")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--server-log", type=Path, help="keep the server's log (its warnings) in this file")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dinoscope-classroom-"))
    db, cache = str(work / "class.db"), work / "cache"
    print(f"writing {args.synthetic:,} synthetic images and indexing the samples…", flush=True)
    subprocess.run([*DINOSCOPE, "synthetic", "bench", "--count", str(args.synthetic), "--db", db], check=True,
                   capture_output=True)
    subprocess.run([*DINOSCOPE, "samples", str(work / "samples")], check=True, capture_output=True)
    subprocess.run([*DINOSCOPE, "index", str(work / "samples"), "--db", db, "--model", args.index_model,
                    "--random-weights", "--quiet"], check=True, capture_output=True)
    photos = work / "photos"
    write_photographs(photos, 32, 0)
    subprocess.run([*DINOSCOPE, "index", str(photos), "--dataset", "live", "--db", db, "--model", args.index_model,
                    "--random-weights", "--quiet"], check=True, capture_output=True)
    users = work / "users"
    for number in range(args.students):
        subprocess.run([*DINOSCOPE, "users", "add", str(users), f"student{number}", "--password-stdin"],
                       input=f"{PASSWORD}\n", text=True, check=True, capture_output=True)
    uploads = make_uploads()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DINOSCOPE_SECRET_KEY": "classroom"}
    server_log = work / "serve.log"
    server = subprocess.Popen([*DINOSCOPE, "serve", "--db", db, "--host", "127.0.0.1", "--port", str(port),
                               "--workers", str(args.workers), "--cache-dir", str(cache), "--users", str(users)],
                              env=env, stdout=subprocess.DEVNULL, stderr=server_log.open("w"),
                              start_new_session=True)
    stop = threading.Event()
    memory = MemoryWatch(server.pid, stop)
    memory.start()
    indexer_log: list[str] = []
    results = Results()
    first_states: dict[str, list[float]] = defaultdict(list)
    try:
        wait_for_health(url, server)
        login = requests.Session()
        login.auth = ("student0", PASSWORD)
        html = login.get(f"{url}/", timeout=60).text
        end_id = json.loads(re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>', html,
                                      re.DOTALL).group(1))["end_id"]
        dependencies = login.get(f"{url}/_dash-dependencies", timeout=60).json()
        first_wait, first_told = first_job_wait(url, dependencies, end_id)
        print(f"first job after the start ran after {first_wait:.1f} s; the page was told: {first_told[:6]}",
              flush=True)
        datasets = {}
        for name in ("bench", "samples", "live"):
            probe = Student(url, dependencies, Results(), "student0", end_id)
            page = probe.open_page("gallery", f"dataset={name}&per_page=200")
            datasets[name] = [int(i) for i in THUMBNAIL.findall(json.dumps(page))] if page else []
        indexer = threading.Thread(target=run_indexer, daemon=True,  # at a low priority, as the README advises
                                   args=(photos, db, args.index_model, stop, indexer_log, True))
        # Students in several processes: one Python process sending for all of them would itself be the
        # bottleneck (its lock on the interpreter), and its delays would count as the server's.
        context = multiprocessing.get_context("spawn")
        answers = context.Queue()
        groups = [list(range(args.students))[number::args.client_processes]
                  for number in range(args.client_processes)]
        clients = [context.Process(target=class_group, args=(url, dependencies, end_id, group, datasets, vars(args),
                                                             uploads, answers)) for group in groups if group]
        started = time.perf_counter()
        psutil.cpu_percent()
        before = server_cpu(server.pid), os.times()
        indexer.start()
        for client in clients:
            client.start()
        client_cpu = 0.0
        for _ in clients:
            latencies, errors_found, states, cpu = answers.get(timeout=args.seconds + args.patience + 300)
            client_cpu += cpu
            for kind, times in latencies.items():
                results.latencies[kind] += times
            results.errors += errors_found
            for kind, times in states.items():
                first_states[kind] += times
        busy = psutil.cpu_percent()
        used = {part: seconds - before[0].get(part, 0.0) for part, seconds in server_cpu(server.pid).items()}
        stop.set()
        indexer.join(timeout=120)
        for client in clients:
            client.join(timeout=60)
        elapsed = time.perf_counter() - started
        slow = slow_requests(server_log.read_text())
        if args.server_log:
            shutil.copyfile(server_log, args.server_log)
        after = os.times()  # the clients and the indexer's runs, all ended and reaped by now
        used["students"] = client_cpu
        used["indexer"] = (after.children_user + after.children_system
                           - before[1].children_user - before[1].children_system - client_cpu)
        waits = queue_waits(cache)
    finally:
        stop.set()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    errors = defaultdict(int)
    for error in results.errors:
        errors[error.split(":")[0]] += 1
    print(f"\n{args.students} students for {elapsed:.0f} s, {args.workers} gunicorn workers, "
          f"{args.synthetic:,} + samples + live images; indexer runs: {len(indexer_log)}; the {psutil.cpu_count()} "
          f"processors were {busy:.0f} % busy (server, indexer and the students' {len(clients)} processes)")
    print(f"{'interaction':<24}{'count':>7}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'errors':>8}")
    for kind in sorted(results.latencies):
        print(percentile_row(kind, results.latencies[kind], errors.get(kind, 0)))
    print(f"\n{'until the page showed a state':<24}{'count':>7}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for kind in sorted(first_states):
        print(percentile_row(kind, first_states[kind], 0)[:-8])
    for lane in LANES:
        print(percentile_row(f"queue wait, {lane} lane", waits.get(lane, []), 0)[:-8])
    print(f"jobs by state: {waits.get('states')}")
    print(f"first job after a fresh start: {first_wait:.1f} s")
    print("processor seconds used: " + ", ".join(f"{part} {seconds:.0f}" for part, seconds in used.items())
          + f" (of {elapsed * psutil.cpu_count():.0f} available)")
    print(f"peak memory of the server's process tree ({memory.peak_processes} processes at most): "
          f"{memory.peak_rss / 1024**3:.2f} GiB resident, {memory.peak_pss / 1024**3:.2f} GiB proportional")
    print(f"requests the server logged as slow (over 1 s): {sum(slow.values())}; by callback: "
          f"{dict(slow.most_common(8))}")
    print(f"errors: {len(results.errors)}")
    for error in results.errors[:20]:
        print(f"  {error}")
    light_p95 = {kind: float(np.percentile(results.latencies[kind], 95)) for kind in LIGHT
                 if results.latencies.get(kind)}
    slowest_state = max((max(times) for times in first_states.values() if times), default=0.0)
    if args.json:
        args.json.write_text(json.dumps({
            "students": args.students, "seconds": elapsed, "errors": results.errors, "first_job_s": first_wait,
            "light_p95_s": light_p95, "slowest_first_state_s": slowest_state,
            "peak_rss_bytes": memory.peak_rss, "peak_pss_bytes": memory.peak_pss, "indexer_runs": len(indexer_log),
            "latencies_ms": {kind: {"count": len(t), "p50": float(np.percentile(t, 50) * 1000),
                                    "p95": float(np.percentile(t, 95) * 1000)}
                             for kind, t in results.latencies.items() if t},
            "first_state_ms": {kind: {"count": len(t), "max": float(max(t) * 1000)}
                               for kind, t in first_states.items() if t},
            "jobs": waits.get("states"), "processor_seconds": used,
        }, indent=2))
    return 1 if results.errors or any(line.startswith("indexer failed") for line in indexer_log) else 0


if __name__ == "__main__":
    sys.exit(main())
