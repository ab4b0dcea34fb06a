"""One index run: check the request against the dataset, plan, then apply the plan batch by batch.

Each batch is one transaction (its images, embeddings, patch grids, thumbnails, failures, the dataset's
generation and the run's counters of them; in the first batch of a reduced dataset, its patch basis too), so a run
killed at any moment leaves only whole images behind, its counters say what it committed, and the next run picks up
the rest. The batches are stored by a writer thread (indexer.writer) while the model computes the next ones.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL
import timm
import torch
from tqdm import tqdm

from db.engine import Database
from db.errors import ConflictingWrite, DinoscopeDbError, DinoscopeError
from db.holds import hold
from db.mutations import (
    add_image,
    add_images_in_bulk,
    bump_generation,
    create_dataset,
    move_image,
    record_uploaded_set,
    remove_images,
    remove_vanished_images,
    replace_image_content,
    stored_content,
    touch_image,
)
from db.queries import dataset_by_id, find_dataset, image_with_content, stored_images, uploaded_set
from db.records import DatasetProvenance
from db.runs import check_no_run_in_progress, count_run_changes, end_run, process_alive, start_run
from db.schema import Dataset
from indexer.embed import EmbeddedFile, embed_files
from indexer.model import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MODEL,
    LoadedModel,
    WeightsChoice,
    load_model,
    resolve_device,
    resolve_precision,
)
from indexer.patch_reduction import PatchReduction, check_fittable
from indexer.plan import WHOLE_FOLDER, IndexPlan, Shard, plan_index
from indexer.scan import IMAGE_SUFFIXES, FolderScan, content_hash, scan_folder
from indexer.writer import BatchWriter

log = logging.getLogger(__name__)


class IndexRefused(DinoscopeError):
    """The run cannot go ahead as asked; nothing was changed."""


# Only where the folder changed while shards of one job planned at different times: the next run embeds it.
_STORED_BYTES_CHANGED = "its bytes were stored under another path, which a concurrent run changed: index again"


@dataclass(frozen=True)
class UploadedSetRef:
    """An image set of the dashboard's uploads folder and who added it, recorded with the dataset it creates."""

    set_id: str
    owner: str | None


@dataclass(frozen=True)
class IndexRequest:
    folder: Path
    dataset: str | None = None
    model: str | None = None  # None: the dataset's model, or the default for a new dataset
    weights: WeightsChoice | None = None  # None: the dataset's weights, or the hub for a new dataset
    image_size: int | None = None
    batch_size: int = 16
    workers: int = 1
    device: str = "auto"
    precision: str = "auto"
    patch_dims: int | None = None  # None: the dataset's, or full patch grids for a new dataset
    shard: Shard = WHOLE_FOLDER  # the part of the folder this run indexes
    uploaded_set: UploadedSetRef | None = None  # the folder is this image set, added from the browser

    @property
    def dataset_name(self) -> str:
        return self.dataset or self.folder.resolve().name


@dataclass
class IndexSummary:
    dataset: str
    shard: Shard = WHOLE_FOLDER
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    embedded: int = 0  # images that went through the model (the rest were copied or moved)
    embedding_seconds: float = 0.0  # from the first batch asked for to the last one stored
    seconds: float = 0.0  # the whole run: scan, hashing, model loading included
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embedding_seconds if self.embedding_seconds else 0.0


@dataclass(frozen=True)
class IndexProgress:
    """How far a run has got through the images it embeds: reported once they are planned (none done yet), then
    after each batch has committed."""

    done: int
    total: int
    images_per_second: float = 0.0  # since the first batch was asked for
    seconds_left: float | None = None  # None until a batch has given a rate


ProgressCallback = Callable[[IndexProgress], None]
# (paths, model, device, precision, batch size, decode workers) -> the embedded files, batch by batch, in order
Embedder = Callable[[Sequence[Path], LoadedModel, torch.device, str, int, int], Iterator[list[EmbeddedFile]]]


@dataclass
class Changes:
    """What one transaction does to the dataset: counted into the run's row in that same transaction, and into
    the summary once it has committed, so that neither ever counts what was rolled back."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def record(self, session, run_id: int) -> None:
        count_run_changes(session, run_id, added=self.added, updated=self.updated, moved=self.moved,
                          removed=self.removed, failures=self.failures)

    def count_into(self, summary: IndexSummary) -> None:
        summary.added += self.added
        summary.updated += self.updated
        summary.moved += self.moved
        summary.removed += self.removed
        summary.failures.extend(self.failures)


def index_folder(database: Database, request: IndexRequest, *, show_progress: bool = True,
                 progress: ProgressCallback | None = None, embed: Embedder = embed_files) -> IndexSummary:
    """Index the request's folder into its dataset. Refused (RunInProgress) while another run over the same files
    of the dataset (the whole folder, or the same shard) is running; shards of one job run together. `progress`
    is told how far the embedding has got (IndexProgress), after each batch. `embed` turns the files into
    embedded batches (`dinoscope bench --pipeline` passes a stand-in for the model)."""
    started = time.perf_counter()
    folder = request.folder.resolve()
    scan = _scan(folder, request.folder)
    summary = IndexSummary(request.dataset_name, request.shard)

    with database.session() as session:
        dataset = find_dataset(session, request.dataset_name)
        if dataset is not None:  # told before hashing and loading the model; checked again as the run starts
            _check_same_set(session, dataset, request)
            check_no_run_in_progress(session, dataset.id, socket.gethostname(), process_alive,
                                     _overlapping(request.shard))
        model_name, weights, image_size = _model_request(dataset, request, folder)
        stored = stored_images(session, dataset.id) if dataset else {}
    _check_something_is_there(scan, stored, folder, request.dataset_name)
    plan = plan_index(scan, stored, content_hash,
                      lambda files: tqdm(files, desc="hashing", unit="file", disable=not show_progress or
                                         len(files) < 1000), request.shard)

    device, precision = _device_and_precision(dataset, request)
    loaded = load_model(model_name, weights, image_size) if plan.embed or dataset is None else None
    _check_patch_dims(dataset, request, loaded, len(plan.embed))
    if dataset is not None and precision != dataset.precision and plan.embed:
        summary.notes.append(f"this run embeds in {precision}; the dataset was built in {dataset.precision}")

    with database.session() as session:
        if dataset is None:
            dataset = _create_or_join_dataset(session, request, folder, loaded, precision)
        dataset_id = dataset.id
        run_id = start_run(session, dataset_id, socket.gethostname(), os.getpid(),
                           _run_options(request, model_name, image_size, device, precision),
                           alive=process_alive, overlaps=_overlapping(request.shard))
        reduction = PatchReduction(session, dataset)
    log.info("run %d of dataset %r started on %s: %d image files found, %d to embed on %s in %s, %d to remove",
             run_id, request.dataset_name, folder, len(scan.found), sum(len(job.targets) for job in plan.embed),
             device, precision, len(plan.removed))
    if plan.embed and request.device == "auto" and device.type == "cpu":
        log.info("run %d: no CUDA or MPS device found, so it embeds on the CPU", run_id)
    for note in summary.notes:
        log.warning("run %d: %s", run_id, note)

    report = progress or (lambda _progress: None)
    report(IndexProgress(0, len(plan.embed)))
    try:
        _apply_changes_without_model(database, dataset_id, run_id, plan, summary)
        if plan.embed:
            _embed_and_store(database, dataset_id, run_id, plan, loaded, device, precision, request, reduction,
                             summary, show_progress, report, embed)
    except BaseException as error:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        summary.seconds = time.perf_counter() - started
        _end_unfinished_run(database, run_id, summary, status, error)
        if isinstance(error, ConflictingWrite):
            raise IndexRefused(
                f"another process changed dataset {request.dataset_name!r} where this run was writing (two runs "
                "over the same files at once, or the dataset removed meanwhile): give each process of one job its "
                "own --shard I/N, then index again"
            ) from error
        raise
    summary.seconds = time.perf_counter() - started
    _finish_run(database, run_id, summary, "completed")
    log.info("run %d of dataset %r completed in %.1f s: %s", run_id, summary.dataset, summary.seconds,
             _counts(summary))
    database.checkpoint()
    return summary


def _scan(folder: Path, as_given: Path) -> FolderScan:
    try:
        if not folder.is_dir():
            raise IndexRefused(f"{as_given} is not a folder")
        scan = scan_folder(folder)
    except OSError as error:  # a stale network mount, say
        raise IndexRefused(f"cannot list {folder}: {error.strerror or error}; nothing was changed") from error
    for path, reason in scan.unreadable:
        log.warning("%s/%s: %s; what is stored there is kept", folder, path, reason)
    return scan


def _check_something_is_there(scan: FolderScan, stored: dict, folder: Path, dataset_name: str) -> None:
    """Refuse a scan that finds no image, or none of the images the dataset holds (not counting those under
    paths it could not read): that is far likelier an unmounted or stale network folder than every image deleted,
    and removing them all would lose every embedding."""
    visible = [relpath for relpath in stored if not scan.hides(relpath)]
    if visible and {f.relpath for f in scan.found}.isdisjoint(visible):
        raise IndexRefused(
            f"none of the {len(visible)} images that dataset {dataset_name!r} holds from {folder} is there now "
            f"({len(scan.found)} image files found{_unreadable_note(scan)}): is it a network folder that is not "
            f"mounted, or mounted stale? Nothing was changed. If the images are really gone, remove the dataset "
            f"(`dinoscope remove {dataset_name}`) and index the folder again"
        )
    if not scan.found:
        raise IndexRefused(f"no image files in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))} in any "
                           f"letter case, hidden files skipped{_unreadable_note(scan)}); nothing was changed")


def _unreadable_note(scan: FolderScan) -> str:
    if not scan.unreadable:
        return ""
    shown = "; ".join(f"{path}: {reason}" for path, reason in scan.unreadable[:3])
    more = f" and {len(scan.unreadable) - 3} more" if len(scan.unreadable) > 3 else ""
    return f"; could not read {shown}{more}"


def _model_request(dataset: Dataset | None, request: IndexRequest, folder: Path) -> tuple[str, WeightsChoice, int]:
    """The model, weights and input size of this run: what was asked, or what the dataset was built with."""
    if dataset is None:
        return (request.model or DEFAULT_MODEL, request.weights or WeightsChoice("hub"),
                request.image_size or DEFAULT_IMAGE_SIZE)
    if Path(dataset.root) != folder:
        raise IndexRefused(
            f"dataset {dataset.name!r} holds the images of {dataset.root}, not {folder}: pick another name with "
            f"--dataset, or `dinoscope remove {dataset.name}` first"
        )
    stored_weights = WeightsChoice(dataset.weights_kind,
                                   Path(dataset.weights_source) if dataset.weights_kind == "file" else None)
    asked = (request.model or dataset.model_name, request.weights or stored_weights,
             request.image_size or dataset.image_size)
    differences = []
    if asked[0] != dataset.model_name:
        differences.append(f"model {asked[0]} instead of {dataset.model_name}")
    if asked[2] != dataset.image_size:
        differences.append(f"image size {asked[2]} instead of {dataset.image_size}")
    if asked[1].kind != dataset.weights_kind:
        differences.append(f"{_describe_weights(asked[1].kind)} instead of {_describe_weights(dataset.weights_kind)}")
    elif asked[1].kind == "file" and request.weights is not None and asked[1].file.is_file() \
            and f"sha256:{content_hash(asked[1].file)}" != dataset.weights_identity:
        differences.append(f"weights file {asked[1].file}, which differs from {dataset.weights_source}")
    if differences:
        raise IndexRefused(
            f"dataset {dataset.name!r} was built with {dataset.model_name} at {dataset.image_size} px and "
            f"{_describe_weights(dataset.weights_kind)}; this run asks for {', '.join(differences)}. Embeddings "
            f"of different models cannot be mixed: index into a new dataset (--dataset NEW_NAME), or rebuild "
            f"this one (`dinoscope remove {dataset.name}`, then index again)"
        )
    return asked


def _describe_weights(kind: str) -> str:
    return {"hub": "pretrained hub weights", "file": "a weights file", "random": "random weights"}[kind]


def _check_patch_dims(dataset: Dataset | None, request: IndexRequest, loaded: LoadedModel | None,
                      images: int) -> None:
    """A dataset keeps the patch dimensions it was created with; a new one can only reduce to fewer than the
    model's, and needs enough patch tokens in its first run to fit the basis on."""
    if request.patch_dims is None:
        return
    if dataset is not None:
        if request.patch_dims != dataset.patch_dims:
            stored = (f"patch grids reduced to {dataset.patch_dims} dims" if dataset.patch_dims
                      else f"full {dataset.embed_dim}-dim patch grids")
            raise IndexRefused(
                f"dataset {dataset.name!r} stores {stored}; this run asks for --patch-dims {request.patch_dims}. "
                f"Patch grids of one dataset share one basis: run without --patch-dims, index into a new dataset "
                f"(--dataset NEW_NAME), or rebuild this one (`dinoscope remove {dataset.name}`, then index again)"
            )
        return
    if request.patch_dims >= loaded.embed_dim:
        raise IndexRefused(f"--patch-dims {request.patch_dims} does not reduce {loaded.name}'s {loaded.embed_dim}-dim "
                           f"patch tokens: choose fewer, or leave the option out to store full grids")
    check_fittable(request.patch_dims, images, loaded.grid_size[0] * loaded.grid_size[1])


def _create_or_join_dataset(session, request: IndexRequest, folder: Path, loaded: LoadedModel,
                            precision: str) -> Dataset:
    """Create the dataset, or take the one that another process (a shard of the same job) created since this run
    looked, if it was built the same way."""
    grid_height, grid_width = loaded.grid_size
    created = create_dataset(session, DatasetProvenance(
        name=request.dataset_name, root=str(folder), model_name=loaded.name, weights_kind=loaded.weights.kind,
        weights_identity=loaded.weights.identity, weights_source=loaded.weights.source,
        image_size=loaded.image_size, patch_size=loaded.patch_size, grid_height=grid_height, grid_width=grid_width,
        embed_dim=loaded.embed_dim, patch_dims=request.patch_dims, precision=precision,
        preprocessing=loaded.preprocessing,
        library_versions={"torch": torch.__version__, "timm": timm.__version__, "pillow": PIL.__version__},
    ))
    if created is not None:
        if request.uploaded_set:
            record_uploaded_set(session, created, request.uploaded_set.set_id, request.uploaded_set.owner)
        return created
    dataset = find_dataset(session, request.dataset_name)
    if dataset is None:
        raise IndexRefused(f"another process created dataset {request.dataset_name!r} and removed it again while "
                           "this run started: index again")
    _check_same_set(session, dataset, request)
    _model_request(dataset, request, folder)
    _check_patch_dims(dataset, request, loaded, 0)
    return dataset


def _check_same_set(session, dataset: Dataset, request: IndexRequest) -> None:
    """An image set joins only the dataset it created: a name another dataset holds is refused, not merged."""
    if request.uploaded_set is None:
        return
    recorded = uploaded_set(session, dataset)
    if recorded is None or recorded.set_id != request.uploaded_set.set_id:
        raise IndexRefused(f"a dataset named {request.dataset_name!r} exists already: name the image set otherwise")


def _device_and_precision(dataset: Dataset | None, request: IndexRequest) -> tuple[torch.device, str]:
    """The run's device and precision. int8 is never auto's choice, so a dataset built in int8 was asked for so:
    a later run that leaves the precision to auto (an image set indexed again from the dashboard, say) keeps it, on
    the CPU unless a device is named."""
    if request.precision == "auto" and dataset is not None and dataset.precision == "int8":
        device = resolve_device("cpu" if request.device == "auto" else request.device)
        return device, resolve_precision("int8", device)
    device = resolve_device(request.device)
    return device, resolve_precision(request.precision, device)


def _run_options(request: IndexRequest, model: str, image_size: int, device: torch.device, precision: str) -> dict:
    return {"model": model, "image_size": image_size, "batch_size": request.batch_size, "workers": request.workers,
            "device": str(device), "precision": precision, "shard": str(request.shard)}


def _overlapping(shard: Shard) -> Callable[[dict], bool]:
    """Whether a run with these options indexes files this run's shard indexes too: a run of the whole folder
    meets every run, shards of one split (N) meet only the same shard, and splits into different numbers of shards
    share files."""

    def overlaps(options: dict) -> bool:
        try:
            other = Shard.parse(options.get("shard", str(WHOLE_FOLDER)))
        except ValueError:
            return True
        return shard.whole or other.whole or other.count != shard.count or other.number == shard.number

    return overlaps


def _apply_changes_without_model(database: Database, dataset_id: int, run_id: int, plan: IndexPlan,
                                 summary: IndexSummary) -> None:
    summary.unchanged = plan.unchanged
    changes = Changes(failures=list(plan.unreadable))
    with database.session() as session:
        dataset = dataset_by_id(session, dataset_id)
        for image_id, facts in plan.touched:
            touch_image(session, image_id, facts)
        for image, facts in plan.moved:
            if move_image(session, image.id, image.relpath, facts):
                changes.moved += 1
            else:
                changes.failures.append((facts.relpath, _STORED_BYTES_CHANGED))
        for source_hint, facts, replaced in plan.copies:
            source = image_with_content(session, dataset_id, facts.content_hash, source_hint)
            if source is None:
                changes.failures.append((facts.relpath, _STORED_BYTES_CHANGED))
                continue
            content = stored_content(session, dataset, source)
            if replaced is None:
                add_image(session, dataset, facts, content)
                changes.added += 1
            else:
                replace_image_content(session, replaced, facts, content)
                changes.updated += 1
        changes.removed = remove_vanished_images(session, [(image.id, image.relpath) for image in plan.removed])
        changes.record(session, run_id)
        if plan.changes_without_model:
            bump_generation(session, dataset)
    changes.count_into(summary)


def _embed_and_store(database: Database, dataset_id: int, run_id: int, plan: IndexPlan, loaded: LoadedModel,
                     device: torch.device, precision: str, request: IndexRequest, reduction: PatchReduction,
                     summary: IndexSummary, show_progress: bool, report: ProgressCallback, embed: Embedder) -> None:
    """The model computes batch after batch in this thread while the writer's thread stores the ones before; the
    summary, the progress and the hold point follow each commit."""
    embedding_started = time.perf_counter()
    done = 0
    batches = reduction.held_back(embed([job.path for job in plan.embed], loaded, device, precision,
                                        request.batch_size, request.workers))
    with tqdm(total=len(plan.embed), desc="embedding", unit="img", disable=not show_progress) as progress:

        def store(batch: list[EmbeddedFile]) -> None:
            nonlocal done
            _store_batch(database, dataset_id, run_id, plan, reduction, batch, summary)
            progress.update(len(batch))
            done += len(batch)
            report(_progress(done, len(plan.embed), time.perf_counter() - embedding_started))
            hold("index-batch-committed")

        with BatchWriter(store) as writer:
            for batch in batches:
                writer.put(batch)
    summary.embedding_seconds = time.perf_counter() - embedding_started


def _store_batch(database: Database, dataset_id: int, run_id: int, plan: IndexPlan, reduction: PatchReduction,
                 batch: list[EmbeddedFile], summary: IndexSummary) -> None:
    """One batch in one transaction: its new images in bulk, its changed ones replaced, its failures recorded (a
    changed file that fails loses its stale vectors), the run's counters and the dataset's generation."""
    changes = Changes()
    with database.session() as session:
        dataset = dataset_by_id(session, dataset_id)
        new = []
        for result in reduction.stored(session, dataset, batch):
            for facts, replaced in plan.embed[result.index].targets:
                if result.content is None:
                    changes.failures.append((facts.relpath, result.failure))
                    if replaced is not None:
                        remove_images(session, [replaced])
                elif replaced is None:
                    new.append((facts, result.content))
                else:
                    replace_image_content(session, replaced, facts, result.content)
                    changes.updated += 1
        add_images_in_bulk(session, dataset, new)
        changes.added += len(new)
        changes.record(session, run_id)
        bump_generation(session, dataset)
    changes.count_into(summary)
    summary.embedded += sum(1 for result in batch if result.content is not None)


def _progress(done: int, total: int, seconds: float) -> IndexProgress:
    rate = done / seconds if seconds > 0 else 0.0
    return IndexProgress(done, total, rate, (total - done) / rate if rate else None)


def _finish_run(database: Database, run_id: int, summary: IndexSummary, status: str) -> None:
    """Mark the run ended; its counters of changes were written with the changes themselves."""
    with database.session() as session:
        end_run(session, run_id, status, summary.seconds, summary.unchanged)


def _end_unfinished_run(database: Database, run_id: int, summary: IndexSummary, status: str,
                        error: BaseException) -> None:
    """Mark a run that stopped early, and log it; what it committed stays (the next run goes on from there)."""
    what = f"run {run_id} of dataset {summary.dataset!r} {status} after {summary.seconds:.1f} s"
    if status == "interrupted":
        log.warning("%s; committed: %s", what, _counts(summary))
    else:
        log.error("%s: %s; committed: %s", what, str(error) or type(error).__name__, _counts(summary))
    try:
        _finish_run(database, run_id, summary, status)
    except DinoscopeDbError as finishing:  # a full disk, say: the next run marks this one as interrupted
        log.error("run %d could not be marked %s: %s", run_id, status, finishing)


def _counts(summary: IndexSummary) -> str:
    return (f"{summary.added} added, {summary.updated} updated, {summary.unchanged} unchanged, {summary.moved} "
            f"moved, {summary.removed} removed, {summary.failed} failed")
