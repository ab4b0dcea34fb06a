"""`dinoscope bench`: how fast the indexer is, measured three ways on the same real-size JPEGs in one run.

- model only: forward passes on inputs decoded beforehand, the ceiling for indexing (and, asked for, the same in
  other precisions, taking turns batch by batch: `--compare-precision int8`);
- end to end: `index_folder` into a fresh dataset (reading, decoding, the model, thumbnails, database writes), with
  the resident memory of the indexing process sampled while it runs;
- the original app's way: one image at a time in float32 at 518 pixels, centre-cropped, keeping only the CLS token.

`dinoscope bench --pipeline` measures the other ceiling, that of everything but the model: `index_folder` with a
stand-in of negligible cost in the model's place, at several numbers of decode workers, and the database writer
alone on batches prepared beforehand. A model faster than that ceiling (on a GPU) waits for the pipeline.

Weights are random unless a file is given: the speed of a model does not depend on the values of its weights.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from timm.data import create_transform

from db.engine import open_database, resolve_url
from db.errors import DinoscopeError
from db.mutations import remove_dataset
from db.queries import find_dataset
from db.records import ImageContent
from indexer.decode import decode_image
from indexer.embed import EmbeddedFile, embed_files, embed_pixels
from indexer.model import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MODEL,
    LoadedModel,
    WeightsChoice,
    cpu_has_native_bf16,
    inference_model,
    load_model,
    resolve_device,
    resolve_precision,
)
from indexer.run import Embedder, IndexRequest, index_folder
from indexer.samples import sample_sources
from indexer.scan import scan_folder

ORIGINAL_SIZE = 518  # the original app: timm's pretrained input size for DINOv2, centre crop, float32, batch of one
MEGAPIXELS = (1.0, 4.0)  # the sizes of the generated JPEGs, as photographs from phones and cameras come
_GRAIN = 6  # +- grey levels of noise, so the JPEGs are as large as a camera's, not smooth upscaled samples
_MEMORY_SAMPLE_SECONDS = 0.05
PREPARED_IMAGES = 64  # what `bench --pipeline` gives the database writer alone, over again: the memory stays small


class BenchError(DinoscopeError):
    """The bench cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class BenchSettings:
    model: str = DEFAULT_MODEL
    image_size: int = DEFAULT_IMAGE_SIZE
    precision: str = "auto"
    batch_size: int = 16
    workers: int = 1
    device: str = "auto"
    images: int = 128
    original_images: int = 6
    original_size: int = ORIGINAL_SIZE
    weights: WeightsChoice = field(default_factory=lambda: WeightsChoice("random"))
    folder: Path | None = None  # None: a temporary folder, removed afterwards
    db: str | None = None  # None: a temporary SQLite file; otherwise a dataset of its own, removed afterwards
    compare_precisions: tuple[str, ...] = ()  # model only again in each of these


@dataclass(frozen=True)
class Throughput:
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


@dataclass(frozen=True)
class MemoryTrace:
    """The resident memory (RSS) of the indexing process over time."""

    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds from the start, bytes)

    def peak(self, until: float = math.inf) -> int:
        return max((size for at, size in self.samples if at <= until), default=0)

    @property
    def seconds(self) -> float:
        return self.samples[-1][0] if self.samples else 0.0


@dataclass(frozen=True)
class BenchResult:
    settings: BenchSettings
    device: str
    precision: str  # as resolved from "auto"
    threads: int  # the model's threads in this process
    native_bf16: bool
    weights: str  # the weights' identity
    folder: Path
    sizes: list[tuple[int, int]]  # width and height of every generated JPEG
    model_only: Throughput
    compared: dict[str, Throughput]  # model only in another precision (as resolved) -> its throughput
    end_to_end: Throughput
    original: Throughput
    memory: MemoryTrace  # of the end-to-end run

    @property
    def megapixels(self) -> tuple[float, float]:
        pixels = [width * height / 1e6 for width, height in self.sizes]
        return min(pixels), max(pixels)

    @property
    def end_to_end_share(self) -> float:
        """End-to-end throughput as a fraction of the model-only throughput."""
        return self.end_to_end.images_per_second / self.model_only.images_per_second

    @property
    def speedup(self) -> float:
        """How many times faster dinoscope indexes than the original app embedded."""
        return self.end_to_end.images_per_second / self.original.images_per_second


def run_bench(settings: BenchSettings, say: Callable[[str], None] = lambda _: None) -> BenchResult:
    """Generate (or reuse) the JPEGs, then measure the model alone, the indexer end to end and the original way."""
    if settings.original_images > settings.images:
        raise BenchError(f"--original-images {settings.original_images} is more than --images {settings.images}: "
                         "the original way embeds some of the same images")
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    asked = dict.fromkeys(resolve_precision(other, device) for other in settings.compare_precisions)
    others = [other for other in asked if other != precision]
    with ExitStack() as cleanup:
        folder = settings.folder or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="dinoscope-bench-")))
        say(f"writing {settings.images} JPEGs of {MEGAPIXELS[0]:g} to {MEGAPIXELS[1]:g} megapixels into {folder}")
        paths = write_bench_images(folder, settings.images)
        sizes = [_size(path) for path in paths]

        say(f"model only: {settings.model} at {settings.image_size} px, {precision}, batch {settings.batch_size}")
        if others:
            say(f"and in {', '.join(others)}, taking turns batch by batch")
        # a LoadedModel serves one precision: the same weights loaded for each
        models = {each: load_model(settings.model, settings.weights, settings.image_size)
                  for each in [precision, *others]}
        weights = models[precision].weights.identity
        compared = model_throughputs(model_inputs(paths, models[precision]), models, device, settings.batch_size)
        model_only = compared.pop(precision)
        del models
        gc.collect()

        say(f"end to end: indexing {folder} with {settings.workers} decode worker(s)")
        db = settings.db or f"sqlite:///{cleanup.enter_context(tempfile.TemporaryDirectory())}/bench.db"
        end_to_end, memory = indexing_throughput(folder, db, settings)

        say(f"original way: {settings.original_images} images one at a time, fp32, {settings.original_size} px")
        original = original_way_throughput(paths[: settings.original_images], settings.model, settings.weights,
                                           settings.original_size, device)
    return BenchResult(settings, str(device), precision, torch.get_num_threads(), cpu_has_native_bf16(), weights,
                       folder, sizes, model_only, compared, end_to_end, original, memory)


def write_bench_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs of 1 to 4 megapixels made from the sample photographs; files already there are kept.

    The folder may hold nothing else, as the end-to-end run indexes all of it.
    """
    sources = [path for files in sample_sources().values() for path in files]
    paths = [folder / f"{number:04d}-{sources[number % len(sources)].stem}.jpg" for number in range(count)]
    if folder.exists():
        others = sorted({found.relpath for found in scan_folder(folder).found} - {path.name for path in paths})
        if others:
            raise BenchError(f"{folder} holds {len(others)} image files besides this bench's {count} (such as "
                             f"{others[0]}); the bench indexes the whole folder, so give it a folder of its own")
    folder.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(paths):
        if not path.exists():
            _write_photo(sources[number % len(sources)], path, np.random.default_rng([seed, number]))
    return paths


def _write_photo(source: Path, path: Path, rng: np.random.Generator) -> None:
    picture = Image.open(source).convert("RGB")
    megapixels = rng.uniform(MEGAPIXELS[0] + 0.05, MEGAPIXELS[1] - 0.05)  # rounding stays inside the range
    aspect = picture.width / picture.height
    width = round(math.sqrt(megapixels * 1e6 * aspect))
    height = round(width / aspect)
    pixels = np.asarray(picture.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    pixels = pixels + rng.integers(-_GRAIN, _GRAIN + 1, pixels.shape, dtype=np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as picture:
        return picture.size


def model_inputs(paths: list[Path], loaded: LoadedModel) -> torch.Tensor:
    """The images decoded and transformed as the indexer does it, stacked: (images, 3, size, size) float32."""
    return torch.stack([loaded.transform(decode_image(path.read_bytes(), loaded.image_size).rgb) for path in paths])


def model_throughputs(pixels: torch.Tensor, models: dict[str, LoadedModel], device: torch.device,
                      batch_size: int) -> dict[str, Throughput]:
    """Forward passes (with the tokens copied out as the indexer stores them) on inputs decoded beforehand and
    already on the device, by each precision's model (precision -> its LoadedModel). The precisions take turns
    batch by batch, so that a shared machine's changing load slows them alike and their ratios hold; each one's
    first batch runs once untimed, to warm up."""
    batches = list(torch.split(pixels.to(device), batch_size))
    networks = {precision: inference_model(loaded, device, precision) for precision, loaded in models.items()}
    for precision, network in networks.items():
        embed_pixels(network, batches[0], models[precision], device, precision)
    seconds = dict.fromkeys(networks, 0.0)
    for batch in batches:
        for precision, network in networks.items():
            started = time.perf_counter()
            embed_pixels(network, batch, models[precision], device, precision)
            seconds[precision] += time.perf_counter() - started
    return {precision: Throughput(len(pixels), seconds[precision]) for precision in networks}


def indexing_throughput(folder: Path, db: str, settings: BenchSettings,
                        embed: Embedder = embed_files) -> tuple[Throughput, MemoryTrace]:
    """`index_folder` on the folder into a new dataset of the database, as `dinoscope index` runs it (unless given
    another `embed`), and the memory of this process meanwhile. The dataset is removed afterwards."""
    database = open_database(db)
    name = f"dinoscope-bench-{secrets.token_hex(4)}"
    request = IndexRequest(folder, name, model=settings.model, weights=settings.weights,
                           image_size=settings.image_size, batch_size=settings.batch_size, workers=settings.workers,
                           device=settings.device, precision=settings.precision)
    try:
        with sampled_memory() as memory:
            summary = index_folder(database, request, show_progress=False, embed=embed)
    finally:
        with database.session() as session:
            if (dataset := find_dataset(session, name)) is not None:
                remove_dataset(session, dataset)
        database.dispose()
    if summary.failures:
        relpath, reason = summary.failures[0]
        raise BenchError(f"{summary.failed} files could not be indexed, such as {relpath}: {reason}")
    return Throughput(summary.embedded, summary.embedding_seconds), memory


def original_way_throughput(paths: list[Path], model_name: str, weights: WeightsChoice, size: int,
                            device: torch.device) -> Throughput:
    """The original app's way: each image decoded in full, resized and centre-cropped to `size`, embedded alone in
    float32, keeping the CLS token. One image runs once untimed, to warm up."""
    loaded = load_model(model_name, weights, size)
    model = loaded.model.to(device)
    config = model.pretrained_cfg
    transform = create_transform(input_size=(3, size, size), interpolation=config.get("interpolation", "bicubic"),
                                 mean=config["mean"], std=config["std"], crop_pct=1.0, crop_mode="center")

    def embed(path: Path) -> np.ndarray:
        pixels = transform(Image.open(path).convert("RGB")).unsqueeze(0).to(device)
        with torch.inference_mode():
            return model(pixels)[0].cpu().numpy()  # num_classes=0: the CLS token after the final norm

    embed(paths[0])
    started = time.perf_counter()
    for path in paths:
        embed(path)
    return Throughput(len(paths), time.perf_counter() - started)


@contextmanager
def sampled_memory(interval: float = _MEMORY_SAMPLE_SECONDS) -> Iterator[MemoryTrace]:
    """Samples the resident memory of this process from a background thread.

    The decode workers are forked copies whose RSS counts the pages they share with this process, and reading
    their proportional share (PSS) costs tens of milliseconds per sample, which would slow what is measured.
    """
    trace, stop, process = MemoryTrace(), threading.Event(), psutil.Process()
    started = time.perf_counter()

    def sample() -> None:
        while True:
            trace.samples.append((time.perf_counter() - started, process.memory_info().rss))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=sample, name="memory-sampler", daemon=True)
    thread.start()
    try:
        yield trace
    finally:
        stop.set()
        thread.join()


def bench_table(result: BenchResult) -> str:
    """The result as one Markdown table, under two lines on what was measured where."""
    s = result.settings
    low, high = result.megapixels
    weights = ("random weights (speed does not depend on weight values)" if s.weights.kind == "random"
               else f"weights {result.weights}")
    bf16 = "native bf16" if result.native_bf16 else "no native bf16"
    setting = f"{s.image_size} px, {result.precision}, batch {s.batch_size}"
    workers = f"{s.workers} decode worker{'s' if s.workers != 1 else ''}"
    half, whole = result.memory.seconds / 2, result.memory.seconds
    rows = [
        ("model only (forward passes on decoded inputs)", setting, result.model_only),
        *((f"model only in {other}", f"{s.image_size} px, {other}, batch {s.batch_size}", throughput)
          for other, throughput in result.compared.items()),
        ("end to end (`index`: decode, embed, thumbnails, database writes)", f"{setting}, {workers}",
         result.end_to_end),
        ("original way (one image at a time, CLS only)", f"{s.original_size} px centre crop, fp32, batch 1",
         result.original),
    ]
    lines = [
        f"dinoscope bench: {s.model} on {result.device} ({result.threads} threads, {bf16}), {weights}",
        f"{len(result.sizes)} JPEGs of {low:.1f} to {high:.1f} megapixels in {result.folder}",
        "",
        "| measurement | setting | images | seconds | result |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {name} | {detail} | {t.images} | {t.seconds:.2f} | {t.images_per_second:.2f} images/s |"
          for name, detail, t in rows),
        *_compared_ratios(result),
        f"| end to end / model only | | | | {result.end_to_end_share:.2f} |",
        f"| dinoscope / original way | end to end / original way | | | {result.speedup:.1f} times |",
        *(f"| peak memory, end to end: {part} | RSS of the indexing process | | {until:.2f} | "
          f"{result.memory.peak(until) / 2**20:.0f} MiB |"
          for part, until in (("first half", half), ("whole run", whole))),
    ]
    return "\n".join(lines)


class StandInModel(torch.nn.Module):
    """In the model's place for `bench --pipeline`: tokens of the model's shapes (prefix and patch tokens of its
    width), each image's filled with the mean of its input, so that the inputs go to the device and the tokens come
    back as with the model, at no cost worth counting."""

    def __init__(self, tokens: int, width: int) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        level = pixels.mean(dim=(1, 2, 3))
        return level[:, None, None].expand(len(pixels), self.tokens, self.width).contiguous()


def stand_in(loaded: LoadedModel) -> LoadedModel:
    """The model as loaded (its input size, preprocessing and output shapes), with the stand-in in its place."""
    grid_height, grid_width = loaded.grid_size
    return dataclasses.replace(loaded, model=StandInModel(loaded.num_prefix_tokens + grid_height * grid_width,
                                                          loaded.embed_dim))


def embed_with_stand_in(paths: Sequence[Path], loaded: LoadedModel, device: torch.device, precision: str,
                        batch_size: int, workers: int) -> Iterator[list[EmbeddedFile]]:
    """The indexer's embedding (decode workers, batches, copies to and from the device) with the stand-in."""
    return embed_files(paths, stand_in(loaded), device, precision, batch_size, workers)


def embed_prepared(contents: list[ImageContent]) -> Embedder:
    """An embedder that hands over, batch by batch and at no cost, contents prepared beforehand (the same ones over
    again where there are more files): all the database writer is given to do."""

    def embed(paths: Sequence[Path], _loaded, _device, _precision, batch_size: int,
              _workers: int) -> Iterator[list[EmbeddedFile]]:
        files = [EmbeddedFile(index, contents[index % len(contents)]) for index in range(len(paths))]
        return iter([files[start:start + batch_size] for start in range(0, len(files), batch_size)])

    return embed


@dataclass(frozen=True)
class PipelineResult:
    settings: BenchSettings
    device: str
    precision: str
    database: str  # "SQLite" or the server's kind
    folder: Path
    sizes: list[tuple[int, int]]
    tokens: tuple[int, int]  # the stand-in's tokens per image and their width
    by_workers: dict[int, Throughput]  # everything but the model, by decode workers
    writer: Throughput  # the database writer alone

    @property
    def ceiling(self) -> tuple[int, Throughput]:
        """The decode workers that went fastest, and how fast."""
        return max(self.by_workers.items(), key=lambda item: item[1].images_per_second)


def pipeline_workers(asked: int) -> list[int]:
    """Decode workers to measure: none, one and two, to see what each adds, and as many as asked."""
    return sorted({0, 1, 2, asked})


def run_pipeline_bench(settings: BenchSettings, say: Callable[[str], None] = lambda _: None) -> PipelineResult:
    """Generate (or reuse) the JPEGs, then index them with the stand-in at each number of decode workers, and store
    batches prepared beforehand with the database writer alone."""
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    with ExitStack() as cleanup:
        folder = settings.folder or Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="dinoscope-bench-")))
        say(f"writing {settings.images} JPEGs of {MEGAPIXELS[0]:g} to {MEGAPIXELS[1]:g} megapixels into {folder}")
        paths = write_bench_images(folder, settings.images)
        db = settings.db or f"sqlite:///{cleanup.enter_context(tempfile.TemporaryDirectory())}/bench.db"
        by_workers = {}
        for workers in pipeline_workers(settings.workers):
            say(f"everything but the model: indexing {folder} with {workers} decode worker(s)")
            by_workers[workers], _memory = indexing_throughput(
                folder, db, dataclasses.replace(settings, workers=workers), embed_with_stand_in)

        say("database writer alone: storing batches prepared beforehand")
        loaded = stand_in(load_model(settings.model, settings.weights, settings.image_size))
        contents = [result.content for batch in embed_files(paths[:PREPARED_IMAGES], loaded, device, precision,
                                                            settings.batch_size, settings.workers) for result in batch]
        writer, _memory = indexing_throughput(folder, db, settings, embed_prepared(contents))
    database = "SQLite" if resolve_url(db).startswith("sqlite") else "PostgreSQL"
    return PipelineResult(settings, str(device), precision, database, folder, [_size(path) for path in paths],
                          (loaded.model.tokens, loaded.model.width), by_workers, writer)


def pipeline_table(result: PipelineResult) -> str:
    """The result as one Markdown table, under two lines on what was measured, and the ceiling under it."""
    s = result.settings
    pixels = [width * height / 1e6 for width, height in result.sizes]
    setting = f"{s.image_size} px, {result.precision}, batch {s.batch_size}"

    def workers(count: int) -> str:
        return f"{count} decode worker{'s' if count != 1 else ''}" if count else "decoding in the indexing process"

    rows = [(f"everything but the model, {workers(count)}", setting, t, f"{t.images_per_second / count:.2f}"
             if count else "") for count, t in result.by_workers.items()]
    rows.append(("database writer alone (batches prepared beforehand)", f"batch {s.batch_size}, {result.database}",
                 result.writer, ""))
    best_workers, best = result.ceiling
    tokens, width = result.tokens
    lines = [
        (f"dinoscope bench --pipeline: everything but the model on {result.device}, the model {s.model} replaced by "
         f"a stand-in of its output shapes ({tokens} tokens of {width})"),
        f"{len(result.sizes)} JPEGs of {min(pixels):.1f} to {max(pixels):.1f} megapixels in {result.folder}",
        "",
        "| measurement | setting | images | seconds | result | per decode worker |",
        "| --- | --- | --- | --- | --- | --- |",
        *(f"| {name} | {detail} | {t.images} | {t.seconds:.2f} | {t.images_per_second:.2f} images/s | {per} |"
          for name, detail, t, per in rows),
        "",
        (f"ceiling without the model: {best.images_per_second:.2f} images/s ({workers(best_workers)}); a model "
         "faster than that waits for decoding or the database"),
    ]
    return "\n".join(lines)


def _compared_ratios(result: BenchResult) -> Iterator[str]:
    """Two table lines per other precision: its model-only speed over --precision's, and over the original way."""
    for other, throughput in result.compared.items():
        speed = throughput.images_per_second
        ratio = speed / result.model_only.images_per_second
        yield f"| model only: {other} / {result.precision} | | | | {ratio:.2f} times |"
        yield f"| model only in {other} / original way | | | | {speed / result.original.images_per_second:.1f} times |"
