"""The `dinoscope` command line: a thin layer over the indexer and the database.

Library code raises its own errors; only this module turns them into one-line messages and exit codes. Heavy
imports (torch, timm) happen inside the commands that need them, so `dinoscope datasets` stays quick.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from dashboard.settings import (
    CACHE_DIR_ENV,
    CELERY_ENV,
    FRAME_ANCESTORS_ENV,
    JOB_SLOTS_ENV,
    LOG_FORMAT,
    LOG_LEVEL_ENV,
    LOGIN_CHECKS_ENV,
    LOGIN_LIMITS_ADDRESS_ENV,
    LOGIN_LIMITS_USER_ENV,
    SECRET_ENV,
    TRUSTED_PROXIES_ENV,
    USERS_FILE_ENV,
    LoginSettings,
)
from db.engine import DB_ENV, default_database_path

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# What they log (start-up, jobs, failed logins, index runs) is for an operator, and there is little of it.
INFO_COMMANDS = ("serve", "worker", "demo", "index")
_DB_HELP = f"Database: a SQLite file path or a SQLAlchemy URL. [env {DB_ENV}; default {default_database_path()}]"


def default_workers() -> int:
    """Half the cores (at least one, at most four)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def default_decode_workers() -> int:
    """One decode worker per core, up to 8.

    On a CPU the model's threads take every core and decoding shares them however it is split: two workers slow
    both of the model's threads a little, where one worker slows one thread a lot and the other waits for it at
    every synchronisation (on 2 shared cores, 0 to 7 % faster than one worker). With a GPU the model needs little
    of the host, and decoding bounds the speed.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


def db_option(function):
    return click.option("--db", envvar=DB_ENV, show_envvar=False, help=_DB_HELP)(function)


def cache_dir_option(function):
    return click.option(
        "--cache-dir", envvar=CACHE_DIR_ENV, type=click.Path(file_okay=False, path_type=Path),
        help=f"Folder shared by the server's workers and `dinoscope worker` for background results and cached "
             f"projections. [env {CACHE_DIR_ENV}; default: a dinoscope-cache folder in the system's temporary "
             "folder]")(function)


def _fail(error: Exception) -> click.ClickException:
    return click.ClickException(str(error))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", envvar=LOG_LEVEL_ENV, type=click.Choice(LOG_LEVELS, case_sensitive=False),
              help=f"What operators are told on standard error. [env {LOG_LEVEL_ENV}; default INFO for serve, "
                   "worker, demo and index, WARNING otherwise]")
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
@click.option("--dataset", help="Dataset name. [default: the folder's name]")
@db_option
@click.option("--model", help="timm model name. [default for a new dataset: vit_base_patch14_reg4_dinov2.lvd142m]")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="Local weights file (timm safetensors or Meta's .pth) instead of the hub.")
@click.option("--random-weights", is_flag=True, help="Randomly initialised model (seeded): for demos and tests.")
@click.option("--image-size", type=click.IntRange(14, 2044),
              help="Square input size in pixels, a multiple of 14. [default for a new dataset: 224]")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=default_decode_workers,
              show_default="one per core, up to 8", help="Decode worker processes (0 decodes in the main process).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True, help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32.")
@click.option("--patch-dims", type=click.IntRange(1, 4096),
              help="Store patch grids reduced to this many dimensions by a PCA basis fitted on the dataset's first "
                   "images (a new dataset only; re-runs keep its choice). [default: full grids]")
@click.option("--shard", metavar="I/N", callback=lambda _ctx, _param, value: _shard(value),
              help="Index only shard I of N (counted from 1): N processes, on one machine or several, index one "
                   "dataset together, each with its own I. [default: the whole folder]")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def index(folder, dataset, db, model, weights, random_weights, image_size, batch_size, workers, device, precision,
          patch_dims, shard, quiet):
    """Embed the images of FOLDER (recursively) into a dataset; re-runs only do the new work."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from db import DinoscopeDbError, open_database
    from indexer.model import ModelError, WeightsChoice
    from indexer.patch_reduction import TooFewPatchTokens
    from indexer.processes import sigterm_interrupts
    from indexer.run import IndexRefused, IndexRequest, index_folder

    if weights and random_weights:
        raise click.UsageError("--weights and --random-weights exclude each other: choose one")
    choice = WeightsChoice("file", weights) if weights else WeightsChoice("random") if random_weights else None
    request = IndexRequest(folder, dataset, model, choice, image_size, batch_size, workers, device, precision,
                           patch_dims, shard)
    try:
        database = open_database(db)
        # Log lines go between the progress bars' lines; SIGTERM stops the run as Ctrl-C does.
        with logging_redirect_tqdm(), sigterm_interrupts():
            summary = index_folder(database, request, show_progress=not quiet)
    except (DinoscopeDbError, IndexRefused, ModelError, TooFewPatchTokens) as error:
        raise _fail(error) from None
    _echo_summary(summary)


def _shard(value: str | None):
    from indexer.plan import WHOLE_FOLDER, Shard

    try:
        return WHOLE_FOLDER if value is None else Shard.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _echo_summary(summary) -> None:
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
    from db import DinoscopeDbError, open_database
    from db.queries import dataset_summaries

    try:
        with open_database(db, readonly=True).session() as session:
            summaries = dataset_summaries(session)
    except DinoscopeDbError as error:
        raise _fail(error) from None
    if not summaries:
        click.echo("no datasets yet: index a folder with `dinoscope index FOLDER`")
    for item in summaries:
        d = item.dataset
        last = item.last_run
        when = (f"last run {last.status} {last.finished_at or last.started_at:%Y-%m-%d %H:%M} UTC"
                if last else "never indexed")
        warning = "  [RANDOM WEIGHTS: not meaningful]" if d.weights_kind == "random" else ""
        click.echo(f"{d.name}: {item.image_count} images from {d.root}{warning}")
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
    from db import DinoscopeDbError, open_database
    from db.export import export_npz
    from db.queries import dataset_by_name

    try:
        with open_database(db, readonly=True).session() as session:
            count = export_npz(session, dataset_by_name(session, dataset), output, patch_grids=patch_grids)
    except DinoscopeDbError as error:
        raise _fail(error) from None
    except OSError as error:
        raise click.ClickException(f"cannot write {output}: {error.strerror or error}") from None
    click.echo(f"wrote {count} images of {dataset!r} to {output}")


@main.command()
@click.argument("dataset")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
def remove(dataset, yes, db):
    """Remove a dataset and everything stored for it (the image files are not touched)."""
    from db import DinoscopeDbError, open_database
    from db.mutations import remove_dataset
    from db.queries import dataset_by_name

    try:
        database = open_database(db)
        with database.session() as session:
            dataset_by_name(session, dataset)
        if not yes:
            click.confirm(f"remove dataset {dataset!r} and all its embeddings?", abort=True)
        with database.session() as session:
            remove_dataset(session, dataset_by_name(session, dataset))
    except DinoscopeDbError as error:
        raise _fail(error) from None
    click.echo(f"removed dataset {dataset!r}")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def samples(folder):
    """Copy the sample photographs (from scikit-image and scikit-learn) into FOLDER/<label>/."""
    from indexer.samples import copy_samples

    try:
        copied = copy_samples(folder)
    except OSError as error:
        raise click.ClickException(f"cannot write into {folder}: {error.strerror or error}") from None
    labels = sorted({path.parent.name for path in copied})
    click.echo(f"{len(copied)} sample images in {folder} ({len(labels)} labels: {', '.join(labels)})")


@main.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 for every network (then use --users).")
@click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True)
@cache_dir_option
@click.option("--workers", type=click.IntRange(1, 64),
              help="Serve with gunicorn and this many worker processes, for many users. [default: Flask's "
                   "development server, one process, for use on this machine]")
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Threads per gunicorn worker (with --workers).")
@click.option("--users", "users_file", envvar=USERS_FILE_ENV, type=click.Path(dir_okay=False, path_type=Path),
              help=f"Ask for a login from the users in this file (see `dinoscope users add`). [env "
                   f"{USERS_FILE_ENV}; default: no login]")
@click.option("--celery", envvar=CELERY_ENV, metavar="REDIS_URL",
              help=f"Run background callbacks (t-SNE, UMAP) in `dinoscope worker` processes through this Redis. "
                   f"[env {CELERY_ENV}; default: the server's own job server]")
@click.option("--job-slots", envvar=JOB_SLOTS_ENV, type=click.IntRange(1, 64),
              help=f"Background jobs the job server runs at once of each kind (projections, sampled clusterings, "
                   f"uploads); later ones wait in order. [env {JOB_SLOTS_ENV}; default: a quarter of the cores, at "
                   "least 1]")
@click.option("--login-limits-address", envvar=LOGIN_LIMITS_ADDRESS_ENV, metavar="LIMITS",
              help=f"Failed logins allowed from one client address; past them its logins are refused (429) until "
                   f"the oldest failure leaves its window. [env {LOGIN_LIMITS_ADDRESS_ENV}; default "
                   f"{LoginSettings.failures_per_address}]")
@click.option("--login-limits-user", envvar=LOGIN_LIMITS_USER_ENV, metavar="LIMITS",
              help=f"Failed logins allowed as one user name, from any address. [env {LOGIN_LIMITS_USER_ENV}; "
                   f"default {LoginSettings.failures_per_user}]")
@click.option("--login-checks", envvar=LOGIN_CHECKS_ENV, type=click.IntRange(1, 64),
              help=f"Password checks run at once by each worker process (as many more may wait a second for their "
                   f"turn; other new logins are refused with 429). [env {LOGIN_CHECKS_ENV}; default "
                   f"{LoginSettings.checks}]")
@click.option("--trusted-proxies", envvar=TRUSTED_PROXIES_ENV, type=click.IntRange(0, 8), default=0,
              help=f"Reverse proxies in front of the server, whose X-Forwarded-For header names the client's "
                   f"address for the login limits and the logs. [env {TRUSTED_PROXIES_ENV}; default 0]")
@click.option("--frame-ancestors", envvar=FRAME_ANCESTORS_ENV, metavar="SOURCES",
              help=f"The pages that may show the dashboard in a frame: 'self', 'none', or origins such as "
                   f"https://intranet.example.edu, space-separated (a Content-Security-Policy frame-ancestors list). "
                   f"[env {FRAME_ANCESTORS_ENV}; default: 'self']")
def serve(db, host, port, cache_dir, workers, threads, users_file, celery, job_slots, login_limits_address,
          login_limits_user, login_checks, trusted_proxies, frame_ancestors):
    """Serve the dashboard on the database (read-only)."""
    from dashboard.settings import Settings

    login = LoginSettings.from_env(login_limits_address, login_limits_user, login_checks)
    _serve(Settings.from_env(db, cache_dir, celery, users_file, job_slots, login, trusted_proxies, frame_ancestors),
           host, port, workers, threads)


def _serve(settings, host: str, port: int, workers: int | None = None, threads: int = 8) -> None:
    from dashboard import serving
    from dashboard.app import create_app
    from dashboard.auth import UsersFileError, read_users
    from dashboard.framing import frame_ancestors
    from dashboard.jobs import BrokerError, check_redis
    from dashboard.login_limits import LoginLimitsError, check_limits

    try:  # here, so that a mistake is one line rather than a traceback from every worker
        if settings.users_file:
            read_users(settings.users_file)
            check_limits(settings.login)
        if settings.celery_url:
            check_redis(settings.celery_url)
        frame_ancestors(settings.frame_ancestors)
    except (UsersFileError, LoginLimitsError, BrokerError, ValueError) as error:
        raise _fail(error) from None
    if serving.needs_login_warning(host, settings):
        click.echo(serving.NO_LOGIN_WARNING.format(host=host), err=True)
    with serving.job_server(settings):  # warming up while the web server starts
        if workers is None:
            app = create_app(settings)
            click.echo(f"dinoscope dashboard on http://{host}:{port}/ (development server; Ctrl+C stops it)")
            app.run(host=host, port=port, debug=False)
            return
        settings, generated = serving.shared_secret(settings)
        if generated:
            click.echo(f"note: {SECRET_ENV} is not set: the workers share a key made for this run, so sessions end "
                       "when the server restarts", err=True)
        click.echo(f"dinoscope dashboard on http://{host}:{port}/ (gunicorn, {workers} workers of {threads} "
                   "threads; Ctrl+C stops it)")
        serving.DashboardServer(settings, host, port, workers, threads).run()


@main.command()
@db_option
@cache_dir_option
@click.option("--celery", envvar=CELERY_ENV, required=True, metavar="REDIS_URL",
              help=f"The Redis of `dinoscope serve --celery`. [env {CELERY_ENV}]")
@click.option("--concurrency", type=click.IntRange(1, 64), default=default_workers, show_default="half the cores",
              help="Background callbacks run at once (processes).")
def worker(db, cache_dir, celery, concurrency):
    """Run the dashboard's background callbacks (t-SNE, UMAP) for `dinoscope serve --celery`, on the same machine:
    give it the server's database and cache folder."""
    from dashboard.app import create_worker
    from dashboard.auth import UsersFileError
    from dashboard.jobs import BrokerError, check_redis
    from dashboard.settings import Settings

    try:
        check_redis(celery)
        app = create_worker(Settings.from_env(db, cache_dir, celery))
    except (UsersFileError, BrokerError) as error:
        raise _fail(error) from None
    app.worker_main(["worker", f"--concurrency={concurrency}", "--pool=prefork", "--loglevel=INFO",
                     f"--hostname=dinoscope-{os.getpid()}@%h"])


@main.group()
def users():
    """Manage the users file that `dinoscope serve --users FILE` takes logins from."""


@users.command("add")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def users_add(file, user, password_stdin):
    """Add USER to FILE (created if missing), or change their password. Only a hash of the password is stored."""
    from dashboard.auth import UsersFileError, add_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        new = add_user(file, user, password)
    except UsersFileError as error:
        raise _fail(error) from None
    click.echo(f"{'added' if new else 'changed the password of'} {user!r} in {file}")


@main.command()
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default=Path("dinoscope-samples"),
              show_default=True, help="Where to copy the sample photographs.")
@db_option
@click.option("--random-weights", is_flag=True, help="Index with random weights (machines without the model hub).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True)
@cache_dir_option
@click.option("--workers", type=click.IntRange(1, 64),
              help="Serve with gunicorn and this many worker processes (see `serve`). [default: Flask's "
                   "development server]")
def demo(folder, db, random_weights, host, port, cache_dir, workers):
    """Copy the sample photographs, index them, and serve the dashboard."""
    from db import DinoscopeDbError, open_database
    from indexer.model import ModelError, WeightsChoice
    from indexer.run import IndexRefused, IndexRequest, index_folder
    from indexer.samples import copy_samples

    copy_samples(folder)
    request = IndexRequest(folder, "samples", weights=WeightsChoice("random") if random_weights else None,
                           workers=default_decode_workers())
    try:
        _echo_summary(index_folder(open_database(db), request))
    except (DinoscopeDbError, IndexRefused, ModelError) as error:
        raise _fail(error) from None
    from dashboard.settings import Settings

    _serve(Settings.from_env(db, cache_dir), host, port, workers)


@main.command()
@click.argument("name")
@click.option("--count", type=click.IntRange(1, 10_000_000), required=True, help="Number of images.")
@click.option("--dim", type=click.IntRange(2, 4096), default=768, show_default=True, help="Embedding dimension.")
@click.option("--clusters", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--grid", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Patch grid side (grid x grid tokens per image).")
@click.option("--seed", type=int, default=0, show_default=True)
@db_option
def synthetic(name, count, dim, clusters, grid, seed, db):
    """Write a synthetic dataset of clustered embeddings straight into the database (no model, for scale tests)."""
    from tqdm import tqdm

    from db import DinoscopeDbError, open_database
    from db.queries import find_dataset
    from indexer.synthetic import write_synthetic_dataset

    try:
        database = open_database(db)
        with database.session() as session:
            if find_dataset(session, name) is not None:
                raise click.ClickException(f"a dataset named {name!r} exists already: pick another name, or "
                                           f"`dinoscope remove {name}` first")
        with tqdm(total=count, desc="writing", unit="img", disable=None) as written:  # shown on a terminal only
            write_synthetic_dataset(database, name, count, dim=dim, clusters=clusters, grid=grid, seed=seed,
                                    progress=lambda done: written.update(done - written.n))
    except DinoscopeDbError as error:
        raise _fail(error) from None
    click.echo(f"wrote synthetic dataset {name!r}: {count} images, {dim} dimensions, {clusters} clusters")


@main.command()
@click.option("--model", default="vit_base_patch14_reg4_dinov2.lvd142m", show_default=True, help="timm model name.")
@click.option("--image-size", type=click.IntRange(14, 2044), default=224, show_default=True,
              help="Square input size in pixels, a multiple of 14.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True, help="As for `index`.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=default_decode_workers,
              show_default="one per core, up to 8", help="Decode worker processes of the end-to-end run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--images", type=click.IntRange(1, 100_000), default=128, show_default=True,
              help="JPEGs of 1 to 4 megapixels to generate from the sample photographs.")
@click.option("--original-images", type=click.IntRange(1, 100_000), default=6, show_default=True,
              help="How many of them the original way embeds (it is slow).")
@click.option("--original-size", type=click.IntRange(14, 2044), default=518, show_default=True,
              help="The original way's input size.")
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the JPEGs here and reuse them next time. [default: a temporary folder]")
@click.option("--db", help="Database for the end-to-end run (its dataset is removed afterwards). "
                           "[default: a temporary SQLite file]")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Local weights file. [default: random weights; speed does not depend on them]")
def bench(model, image_size, precision, batch_size, workers, device, images, original_images, original_size,
          folder, db, weights):
    """Measure indexing speed: the model alone, the indexer end to end, and the original app's way."""
    from db import DinoscopeDbError
    from indexer.bench import BenchError, BenchSettings, bench_table, run_bench
    from indexer.model import ModelError, WeightsChoice
    from indexer.run import IndexRefused

    settings = BenchSettings(model, image_size, precision, batch_size, workers, device, images, original_images,
                             original_size, WeightsChoice("file", weights) if weights else WeightsChoice("random"),
                             folder, db)
    try:
        result = run_bench(settings, say=lambda line: click.echo(line, err=True))
    except (BenchError, DinoscopeDbError, IndexRefused, ModelError) as error:
        raise _fail(error) from None
    click.echo(bench_table(result))
