"""The dashboard's commands: `serve`, `worker` and `users`.

The root group (`indexer.cli`) loads this module only when one of these commands is run or listed, so that the
indexer's commands never import Dash. Errors are raised as they are: the root group turns every DinoscopeError into
a one-line message.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dashboard.image_sets import UploadLimits
from dashboard.roles import DEFAULT_ROLE, ROLES
from dashboard.settings import (
    ALLOW_UPLOADS_ENV,
    CACHE_DIR_ENV,
    CELERY_ENV,
    FRAME_ANCESTORS_ENV,
    IMAGE_SIZE_ENV,
    INDEX_SLOTS_ENV,
    JOB_SLOTS_ENV,
    LOGIN_CHECKS_ENV,
    LOGIN_LIMITS_ADDRESS_ENV,
    LOGIN_LIMITS_USER_ENV,
    MODEL_ENV,
    RANDOM_WEIGHTS_ENV,
    SECRET_ENV,
    TRUSTED_PROXIES_ENV,
    UPLOAD_LIMITS_ENV,
    UPLOADS_DIR_ENV,
    USERS_FILE_ENV,
    WEIGHTS_ENV,
    LoginSettings,
    Settings,
    UploadSettings,
    describe_upload_limits,
    parse_upload_limits,
    server_model_from_env,
)
from db.cli_options import db_option
from db.engine import resolve_url


def default_concurrency() -> int:
    """Half the cores (at least one, at most four)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def cache_dir_option(function):
    return click.option(
        "--cache-dir", envvar=CACHE_DIR_ENV, type=click.Path(file_okay=False, path_type=Path),
        show_default="a dinoscope-cache folder in the system's temporary folder",
        help="Folder shared by the server's workers and `dinoscope worker` for background jobs, cached projections "
             f"and each dataset's matrix; keep it on a local disk. Environment: {CACHE_DIR_ENV}.")(function)


def index_model_options(function):
    """The model that image sets added from the browser are indexed with (`serve`, and `worker`, which runs
    those index runs for `serve --celery`), with `dinoscope index`'s defaults."""
    for option in reversed((
        click.option("--model", envvar=MODEL_ENV, metavar="NAME",
                     show_default="the dataset's; index's default for a new one",
                     help=f"The timm DINOv2 ViT that image sets added from the browser are indexed with. "
                          f"Environment: {MODEL_ENV}."),
        click.option("--weights", envvar=WEIGHTS_ENV, type=click.Path(dir_okay=False, path_type=Path),
                     show_default="the hub's",
                     help=f"A local weights file for that model instead of the hub. Environment: {WEIGHTS_ENV}."),
        click.option("--random-weights", envvar=RANDOM_WEIGHTS_ENV, is_flag=True,
                     help=f"Index image sets with a seeded random initialisation, for demos and tests without a "
                          f"network. Environment: {RANDOM_WEIGHTS_ENV}."),
        click.option("--image-size", envvar=IMAGE_SIZE_ENV, type=click.IntRange(14, 2044),
                     show_default="the dataset's; index's default for a new one",
                     help=f"Square model input in pixels for those runs, a multiple of 14. Environment: "
                          f"{IMAGE_SIZE_ENV}."),
    )):
        function = option(function)
    return function


def _server_model(model, weights, random_weights, image_size):
    if weights and random_weights:
        raise click.UsageError("--weights and --random-weights exclude each other: choose one")
    return server_model_from_env(model, weights, random_weights, image_size)


def _upload_limits(_context, _param, values: tuple[str, ...]) -> UploadLimits:
    try:
        return parse_upload_limits(values)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def server_options(function):
    """The options of every command that serves the dashboard (`serve`, and `demo` after it has indexed)."""
    for option in reversed((
        click.option("--host", metavar="ADDRESS", default="127.0.0.1", show_default=True,
                     help="Address to listen on; 0.0.0.0 for every network (then use --users)."),
        click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True,
                     help="Port to listen on."),
        cache_dir_option,
        click.option("--workers", type=click.IntRange(1, 64),
                     show_default="Flask's development server, one process, for use on this machine",
                     help="Serve with gunicorn and this many worker processes, for many users."),
    )):
        function = option(function)
    return function


@click.command()
@db_option
@server_options
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Threads per gunicorn worker (with --workers).")
@click.option("--users", "users_file", envvar=USERS_FILE_ENV, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path), show_default="no login",
              help=f"Ask for a login from the users in this file (see `dinoscope users add`). Environment: "
                   f"{USERS_FILE_ENV}.")
@click.option("--celery", envvar=CELERY_ENV, metavar="REDIS_URL",
              show_default="the server's own job server",
              help=f"Run background callbacks (t-SNE, UMAP) in `dinoscope worker` processes through this Redis. "
                   f"Environment: {CELERY_ENV}.")
@click.option("--job-slots", envvar=JOB_SLOTS_ENV, type=click.IntRange(1, 64),
              show_default="a quarter of the cores, at least 1",
              help="Background jobs the job server runs at once of each kind (projections, sampled clusterings, "
                   f"uploads); later ones wait in order. Environment: {JOB_SLOTS_ENV}.")
@click.option("--login-limits-address", envvar=LOGIN_LIMITS_ADDRESS_ENV, metavar="LIMITS",
              show_default=LoginSettings.failures_per_address,
              help="Failed logins allowed from one client address; past them its logins are refused (429) until "
                   f"the oldest failure leaves its window. Environment: {LOGIN_LIMITS_ADDRESS_ENV}.")
@click.option("--login-limits-user", envvar=LOGIN_LIMITS_USER_ENV, metavar="LIMITS",
              show_default=LoginSettings.failures_per_user,
              help=f"Failed logins allowed as one user name, from any address. Environment: {LOGIN_LIMITS_USER_ENV}.")
@click.option("--login-checks", envvar=LOGIN_CHECKS_ENV, type=click.IntRange(1, 64),
              show_default=str(LoginSettings.checks),
              help="Password checks run at once by each worker process (as many more may wait a second for their "
                   f"turn; other new logins are refused with 429). Environment: {LOGIN_CHECKS_ENV}.")
@click.option("--trusted-proxies", envvar=TRUSTED_PROXIES_ENV, type=click.IntRange(0, 8),
              default=0, show_default=True,
              help="Reverse proxies in front of the server, whose X-Forwarded-For header names the client's "
                   f"address for the login limits and the logs. Environment: {TRUSTED_PROXIES_ENV}.")
@click.option("--frame-ancestors", envvar=FRAME_ANCESTORS_ENV, metavar="SOURCES",
              show_default="'self'",
              help="The pages that may show the dashboard in a frame: 'self', 'none', or origins such as "
                   "https://intranet.example.edu, space-separated (a Content-Security-Policy frame-ancestors list). "
                   f"Environment: {FRAME_ANCESTORS_ENV}.")
@click.option("--allow-uploads", envvar=ALLOW_UPLOADS_ENV, is_flag=True,
              help=f"Let users add image sets from the browser, indexed on the server. Environment: "
                   f"{ALLOW_UPLOADS_ENV}.")
@click.option("--uploads-dir", envvar=UPLOADS_DIR_ENV, type=click.Path(file_okay=False, path_type=Path),
              show_default="an uploads folder beside a SQLite database, else $XDG_DATA_HOME/dinoscope/uploads",
              help=f"Where the image sets users add go (with `--celery`, a folder the workers see at the same "
                   f"path). Environment: {UPLOADS_DIR_ENV}.")
@click.option("--upload-limit", "upload_limits", envvar=UPLOAD_LIMITS_ENV, metavar="NAME=VALUE", multiple=True,
              callback=_upload_limits, show_default=describe_upload_limits(UploadLimits()),
              help="A limit on what users add, repeated for each limit changed: file (bytes of one image), files "
                   "(images in one set), set (bytes of one set), user (bytes of all one user's sets), pixels (of one "
                   "image), zip (uncompressed bytes of one zip), zip-members (files and folders in one zip). Sizes "
                   "take a unit B, KB, MB, GB, or KiB, MiB, GiB (user=2GiB); pixels may be millions (pixels=50M); "
                   f"several limits in one value are comma-separated. Environment: {UPLOAD_LIMITS_ENV}.")
@index_model_options
@click.option("--index-slots", envvar=INDEX_SLOTS_ENV, type=click.IntRange(1, 8), default=1, show_default=True,
              help=f"Index runs of image sets the job server runs at once; later ones wait in order. Environment: "
                   f"{INDEX_SLOTS_ENV}.")
def serve(db, host, port, cache_dir, workers, threads, users_file, celery, job_slots, login_limits_address,
          login_limits_user, login_checks, trusted_proxies, frame_ancestors, allow_uploads, uploads_dir,
          upload_limits, model, weights, random_weights, image_size, index_slots):
    """Serve the dashboard on the database (read-only; with --allow-uploads, users add image sets to it)."""
    login = LoginSettings.from_env(login_limits_address, login_limits_user, login_checks)
    index_model = _server_model(model, weights, random_weights, image_size)
    uploads = UploadSettings.from_env(resolve_url(db), allow_uploads, uploads_dir, upload_limits)
    serve_dashboard(Settings.from_env(db, cache_dir, celery, users_file, job_slots, login, trusted_proxies,
                                      frame_ancestors, uploads,
                                      index_model, index_slots), host, port, workers, threads)


def serve_dashboard(settings: Settings, host: str, port: int, workers: int | None = None, threads: int = 8) -> None:
    """Check what a mistake could break, start the job server, then serve: Flask's development server without
    `workers`, gunicorn with them."""
    from dashboard import serving
    from dashboard.app import create_app
    from dashboard.auth import read_users
    from dashboard.framing import frame_ancestors
    from dashboard.jobs import check_redis
    from dashboard.login_limits import check_limits

    # Here, so that a mistake is one line rather than a traceback from every worker.
    if settings.users_file:
        read_users(settings.users_file)
        check_limits(settings.login)
    if settings.celery_url:
        check_redis(settings.celery_url)
    frame_ancestors(settings.frame_ancestors)
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


@click.command()
@db_option
@cache_dir_option
@click.option("--celery", envvar=CELERY_ENV, required=True, metavar="REDIS_URL",
              help=f"The Redis of `dinoscope serve --celery`. Environment: {CELERY_ENV}.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=default_concurrency,
              show_default="half the cores, at least 1, at most 4",
              help="Background callbacks run at once (processes).")
@index_model_options
def worker(db, cache_dir, celery, concurrency, model, weights, random_weights, image_size):
    """Run the dashboard's background callbacks (t-SNE, UMAP, index runs of image sets) for `dinoscope serve
    --celery`, on the same machine: give it the server's database, cache folder and model options."""
    from dashboard.app import create_worker
    from dashboard.jobs import check_redis

    index_model = _server_model(model, weights, random_weights, image_size)
    check_redis(celery)
    app = create_worker(Settings.from_env(db, cache_dir, celery, index_model=index_model))
    app.worker_main(["worker", f"--concurrency={concurrency}", "--pool=prefork", "--loglevel=INFO",
                     f"--hostname=dinoscope-{os.getpid()}@%h"])


@click.group()
def users():
    """Manage the users file that `dinoscope serve --users FILE` takes logins from."""


@users.command("add")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.option("--role", type=click.Choice(ROLES), show_default=f"{DEFAULT_ROLE} for a new user, else unchanged",
              help="What the user may do with image sets: admin adds sets and removes any, student adds sets and "
                   "removes their own, viewer only browses.")
def users_add(file, user, password_stdin, role):
    """Add USER to FILE (created if missing), or change their password. Only a hash of the password is stored."""
    from dashboard.auth import add_user, read_users

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    new = add_user(file, user, password, role)
    role = read_users(file)[user].role
    click.echo(f"{'added' if new else 'changed the password of'} {user!r} ({role}) in {file}")
