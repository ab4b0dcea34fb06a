"""The `dinoscope` command line: the root group, with the indexer's and the database's commands.

The dashboard's commands live in `dashboard.cli`, and `demo`, which composes the indexer and the dashboard, in
`indexer.demo`: the root group loads them only when one of them is run or listed. Library code raises its own
errors; the root group alone turns them into one-line messages and exit codes. Heavy imports (torch, timm) happen
inside the commands that need them, so `dinoscope datasets` stays quick.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import click

from db.cli_options import db_option
from db.errors import DinoscopeError
from db.logs import LOG_FORMAT, LOG_LEVEL_ENV, LOG_LEVELS

# What they log (start-up, jobs, failed logins, index runs) is for an operator, and there is little of it.
INFO_COMMANDS = ("serve", "worker", "demo", "index")
# The commands of other modules, loaded when asked for: name -> module (whose attribute of that name is the command).
LAZY_COMMANDS = {"demo": "indexer.demo", "serve": "dashboard.cli", "users": "dashboard.cli", "worker": "dashboard.cli"}
# What the model runs on (indexer.model takes these names; it imports torch, so they are listed here).
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEFAULT_MODEL = "vit_base_patch14_reg4_dinov2.lvd142m"  # indexer.model.DEFAULT_MODEL, without importing torch


def default_decode_workers() -> int:
    """One decode worker per core, up to 8.

    On a CPU the model's threads take every core and decoding shares them however it is split: two workers slow
    both of the model's threads a little, where one worker slows one thread a lot and the other waits for it at
    every synchronisation (on 2 shared cores, 0 to 7 % faster than one worker). With a GPU the model needs little
    of the host, and decoding bounds the speed.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def model_run_options(function):
    """The options of every command that runs the model over files (`index`, `bench`)."""
    for option in reversed((
        click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True,
                     help="Images per forward pass, and per database transaction."),
        click.option("--workers", type=click.IntRange(0, 64), default=default_decode_workers,
                     show_default="one per core, up to 8",
                     help="Processes that read and decode files while the model runs (0: in the main process)."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="auto picks CUDA, then Apple MPS, then the CPU."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                     help="auto is bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16 "
                          "(avx512_bf16 or AMX), fp16 on MPS, else fp32. int8 (CPU only, never auto) quantises the "
                          "linear layers: faster than fp32 on CPUs without native bf16."),
    )):
        function = option(function)
    return function


class Commands(click.Group):
    """The root group. It lists and loads the commands of LAZY_COMMANDS from their modules only when asked for, and
    ends any command that raises a DinoscopeError with its message on one line (`Error: ...`, exit status 1, as
    for every refusal: the message says what to do)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            return getattr(importlib.import_module(LAZY_COMMANDS[name]), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DinoscopeError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", envvar=LOG_LEVEL_ENV,
              type=click.Choice(LOG_LEVELS, case_sensitive=False),
              show_default=f"INFO for {', '.join(INFO_COMMANDS[:-1])} and {INFO_COMMANDS[-1]}, WARNING otherwise",
              help=f"What operators are told on standard error. Environment: {LOG_LEVEL_ENV}.")
@click.pass_context
def main(context: click.Context, log_level: str | None) -> None:
    """Explore image collections through DINOv2 embeddings."""
    level = (log_level or ("INFO" if context.invoked_subcommand in INFO_COMMANDS else "WARNING")).upper()
    _log_to_stderr(level, context.invoked_subcommand)


class _StandardError(logging.StreamHandler):
    """Writes to whatever standard error is when a record comes (as logging's last resort does), so that a progress
    bar's redirection (tqdm's logging_redirect_tqdm) finds it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _stream) -> None:
        pass


def _log_to_stderr(level: str, command: str | None) -> None:
    """Standard logging to standard error, one timestamped line a record; processes the command starts (the job
    server) are given the same level. Other handlers on the root logger (a test's capture, say) stay. Celery's
    worker sets up its own handler on the root logger, at this level."""
    root = logging.getLogger()
    root.setLevel(level)
    if level != "DEBUG":  # the development server's line per request is not for the operator
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if command != "worker" and not any(isinstance(handler, _StandardError) for handler in root.handlers):
        handler = _StandardError()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", metavar="NAME", show_default="the folder's name", help="The dataset to create or update.")
@db_option
@click.option("--model", metavar="NAME", show_default=f"{DEFAULT_MODEL} for a new dataset",
              help="Any timm DINOv2 ViT (vit_small_..., vit_large_..., vit_giant_...).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="A local weights file (timm safetensors or Meta's original .pth) instead of the hub.")
@click.option("--random-weights", is_flag=True,
              help="A seeded random initialisation, for demos and tests without a network.")
@click.option("--image-size", type=click.IntRange(14, 2044), show_default="224 for a new dataset",
              help="Square model input in pixels, a multiple of 14 (224 gives a 16 x 16 patch grid, 448 gives "
                   "32 x 32).")
@model_run_options
@click.option("--patch-dims", type=click.IntRange(1, 4096), show_default="full grids",
              help="Store patch grids reduced to this many dimensions by a PCA basis fitted on the dataset's first "
                   "images (a new dataset only; re-runs keep its choice).")
@click.option("--shard", metavar="I/N", callback=lambda _ctx, _param, value: _shard(value),
              show_default="the whole folder",
              help="Index only shard I of N (counted from 1): N processes, on one machine or several, index one "
                   "dataset together, each with its own I.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def index(folder, dataset, db, model, weights, random_weights, image_size, batch_size, workers, device, precision,
          patch_dims, shard, quiet):
    """Embed the images of FOLDER (recursively) into a dataset; re-runs only do the new work."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from db import open_database
    from indexer.model import WeightsChoice
    from indexer.processes import sigterm_interrupts
    from indexer.run import IndexRequest, index_folder

    if weights and random_weights:
        raise click.UsageError("--weights and --random-weights exclude each other: choose one")
    choice = WeightsChoice("file", weights) if weights else WeightsChoice("random") if random_weights else None
    request = IndexRequest(folder, dataset, model, choice, image_size, batch_size, workers, device, precision,
                           patch_dims, shard)
    database = open_database(db)
    # Log lines go between the progress bars' lines; SIGTERM stops the run as Ctrl-C does.
    with logging_redirect_tqdm(), sigterm_interrupts():
        summary = index_folder(database, request, show_progress=not quiet)
    echo_summary(summary)


def _shard(value: str | None):
    from indexer.plan import WHOLE_FOLDER, Shard

    try:
        return WHOLE_FOLDER if value is None else Shard.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def echo_summary(summary) -> None:
    """An index run's counts, one line, and its failed files on standard error."""
    for note in summary.notes:
        click.echo(f"note: {note}")
    part = "" if summary.shard.whole else f" in shard {summary.shard}"
    changed = summary.added + summary.updated + summary.moved + summary.removed
    if not changed and not summary.failures:
        click.echo(f"nothing to do: all {summary.unchanged} images of {summary.dataset!r}{part} are unchanged "
                   "(nothing embedded)")
        return
    click.echo(
        f"{summary.dataset}{part}: {summary.added} added, {summary.updated} updated, {summary.unchanged} unchanged, "
        f"{summary.moved} moved, {summary.removed} removed, {summary.failed} failed; {summary.embedded} embedded "
        f"({summary.images_per_second:.1f} images/s); {summary.seconds:.1f} s in all"
    )
    if summary.failures:
        click.echo("failed (not indexed; fix or remove them and run again):", err=True)
        for relpath, reason in summary.failures:
            click.echo(f"  {relpath}: {reason}", err=True)


@main.command()
@db_option
def datasets(db):
    """List the datasets with their image counts and provenance."""
    from db import open_database
    from db.queries import dataset_summaries

    with open_database(db, readonly=True).session() as session:
        summaries = dataset_summaries(session)
    if not summaries:
        click.echo("no datasets yet: index a folder with `dinoscope index FOLDER`")
    for item in summaries:
        d = item.dataset
        last = item.last_run
        when = (f"last run {last.status} {last.finished_at or last.started_at:%Y-%m-%d %H:%M} UTC"
                if last else "never indexed")
        warning = "  [RANDOM WEIGHTS: not meaningful]" if d.weights_kind == "random" else ""
        uploaded = item.uploaded_set
        added = "" if uploaded is None else f", added from the browser by {uploaded.owner or 'the local user'}"
        click.echo(f"{d.name}: {item.image_count} images from {d.root}{added}{warning}")
        click.echo(f"  {d.model_name} at {d.image_size} px ({d.grid_height}x{d.grid_width} patches, {d.embed_dim} "
                   f"dims), {d.precision}, weights {d.weights_identity}; generation {d.generation}; {when}")
        if d.patch_dims:
            basis = item.patch_basis
            fitted = (f"basis fitted on {basis.fitted_images} images, {100 * basis.explained_variance:.1f}% of their "
                      "patch variance kept" if basis else "basis not fitted yet")
            click.echo(f"  patch grids reduced to {d.patch_dims} dims by PCA ({fitted})")


@main.command()
@click.argument("dataset")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="The .npz file to write.")
@click.option("--patch-grids", is_flag=True,
              help="Also export the float16 patch grids (large); reduced ones as patch_coords with their basis, "
                   "patch_mean and patch_axes.")
@db_option
def export(dataset, output, patch_grids, db):
    """Write a dataset's paths, labels and embeddings to an .npz file for numpy.load."""
    from db import open_database
    from db.export import export_npz
    from db.queries import dataset_by_name

    try:
        with open_database(db, readonly=True).session() as session:
            count = export_npz(session, dataset_by_name(session, dataset), output, patch_grids=patch_grids)
    except OSError as error:
        raise click.ClickException(f"cannot write {output}: {error.strerror or error}") from None
    click.echo(f"wrote {count} images of {dataset!r} to {output}")


@main.command()
@click.argument("dataset")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
def remove(dataset, yes, db):
    """Remove a dataset and everything stored for it (the image files are not touched)."""
    import socket

    from db import open_database
    from db.queries import dataset_by_name
    from db.runs import remove_dataset_unless_indexed

    database = open_database(db)
    with database.session() as session:
        dataset_by_name(session, dataset)
    if not yes:
        click.confirm(f"remove dataset {dataset!r} and all its embeddings?", abort=True)
    with database.session() as session:
        remove_dataset_unless_indexed(session, dataset_by_name(session, dataset), socket.gethostname())
    click.echo(f"removed dataset {dataset!r}")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def samples(folder):
    """Copy the 44 sample photographs (shipped with dinoscope, scikit-image and scikit-learn) into labelled
    sub-folders of FOLDER."""
    from indexer.samples import copy_samples

    try:
        copied = copy_samples(folder)
    except OSError as error:
        raise click.ClickException(f"cannot write into {folder}: {error.strerror or error}") from None
    labels = sorted({path.parent.name for path in copied})
    click.echo(f"{len(copied)} sample images in {folder} ({len(labels)} labels: {', '.join(labels)})")


@main.command()
@click.argument("name")
@click.option("--count", type=click.IntRange(1, 10_000_000), required=True, help="Number of images.")
@click.option("--dim", type=click.IntRange(2, 4096), default=768, show_default=True, help="Embedding dimension.")
@click.option("--clusters", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Number of groups, each around a random centre.")
@click.option("--grid", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Patch grid side (grid x grid tokens per image).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random centres, noise and pictures.")
@db_option
def synthetic(name, count, dim, clusters, grid, seed, db):
    """Write a synthetic dataset of clustered embeddings straight into the database (no model, for scale tests)."""
    from tqdm import tqdm

    from db import open_database
    from db.queries import find_dataset
    from indexer.synthetic import write_synthetic_dataset

    database = open_database(db)
    with database.session() as session:
        if find_dataset(session, name) is not None:
            raise click.ClickException(f"a dataset named {name!r} exists already: pick another name, or "
                                       f"`dinoscope remove {name}` first")
    with tqdm(total=count, desc="writing", unit="img", disable=None) as written:  # shown on a terminal only
        write_synthetic_dataset(database, name, count, dim=dim, clusters=clusters, grid=grid, seed=seed,
                                progress=lambda done: written.update(done - written.n))
    click.echo(f"wrote synthetic dataset {name!r}: {count} images, {dim} dimensions, {clusters} clusters")


@main.command()
@click.option("--model", metavar="NAME", default=DEFAULT_MODEL, show_default=True, help="timm model name.")
@click.option("--image-size", type=click.IntRange(14, 2044), default=224, show_default=True,
              help="Square input size in pixels, a multiple of 14.")
@model_run_options
@click.option("--images", type=click.IntRange(1, 100_000), default=128, show_default=True,
              help="JPEGs of 1 to 4 megapixels to generate from the sample photographs.")
@click.option("--original-images", type=click.IntRange(1, 100_000), default=6, show_default=True,
              help="How many of them the original way embeds (it is slow).")
@click.option("--original-size", type=click.IntRange(14, 2044), default=518, show_default=True,
              help="The original way's input size.")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), show_default="a temporary folder",
              help="Keep the JPEGs here and reuse them next time.")
@click.option("--db", metavar="URL", show_default="a temporary SQLite file",
              help="Database for the end-to-end run (its dataset is removed afterwards).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              show_default="random weights; speed does not depend on them", help="Local weights file.")
@click.option("--compare-precision", "compare_precisions", type=click.Choice(PRECISIONS), multiple=True,
              show_default="none", help="Also time the model alone in this precision: a row, with its ratios to "
                                        "--precision's and to the original way. Repeat it for more.")
@click.option("--pipeline", is_flag=True,
              help="Measure everything but the model instead: indexing with a stand-in of negligible cost in the "
                   "model's place, with 0, 1, 2 and --workers decode workers, and the database writer alone. A "
                   "model faster than this ceiling waits for the pipeline.")
def bench(model, image_size, batch_size, workers, device, precision, images, original_images, original_size,
          folder, db, weights, compare_precisions, pipeline):
    """Measure indexing speed: the model alone, the indexer end to end, and the original app's way; or, with
    --pipeline, everything but the model."""
    from indexer.bench import BenchSettings, bench_table, pipeline_table, run_bench, run_pipeline_bench
    from indexer.model import WeightsChoice

    settings = BenchSettings(model, image_size, precision, batch_size, workers, device, images, original_images,
                             original_size, WeightsChoice("file", weights) if weights else WeightsChoice("random"),
                             folder, db, compare_precisions)
    say = lambda line: click.echo(line, err=True)
    click.echo(pipeline_table(run_pipeline_bench(settings, say)) if pipeline else bench_table(run_bench(settings, say)))
