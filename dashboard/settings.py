"""How a dashboard process is configured: from the command line, or from the environment under a WSGI server."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

from dashboard.framing import DEFAULT_FRAME_ANCESTORS
from dashboard.image_sets import UploadLimits
from db.engine import DB_ENV, default_uploads_dir, resolve_url
from indexer.index_job import ServerModel

CACHE_DIR_ENV = "DINOSCOPE_CACHE_DIR"
SECRET_ENV = "DINOSCOPE_SECRET_KEY"
CELERY_ENV = "DINOSCOPE_CELERY"
USERS_FILE_ENV = "DINOSCOPE_USERS_FILE"
JOB_SLOTS_ENV = "DINOSCOPE_JOB_SLOTS"
LOGIN_LIMITS_ADDRESS_ENV = "DINOSCOPE_LOGIN_LIMITS_ADDRESS"
LOGIN_LIMITS_USER_ENV = "DINOSCOPE_LOGIN_LIMITS_USER"
LOGIN_CHECKS_ENV = "DINOSCOPE_LOGIN_CHECKS"
TRUSTED_PROXIES_ENV = "DINOSCOPE_TRUSTED_PROXIES"
FRAME_ANCESTORS_ENV = "DINOSCOPE_FRAME_ANCESTORS"
ALLOW_UPLOADS_ENV = "DINOSCOPE_ALLOW_UPLOADS"
UPLOADS_DIR_ENV = "DINOSCOPE_UPLOADS_DIR"
UPLOAD_LIMITS_ENV = "DINOSCOPE_UPLOAD_LIMITS"
INDEX_SLOTS_ENV = "DINOSCOPE_INDEX_SLOTS"
MODEL_ENV = "DINOSCOPE_MODEL"
WEIGHTS_ENV = "DINOSCOPE_WEIGHTS"
RANDOM_WEIGHTS_ENV = "DINOSCOPE_RANDOM_WEIGHTS"
IMAGE_SIZE_ENV = "DINOSCOPE_IMAGE_SIZE"
_TRUE = ("1", "true", "yes", "on")
# What the job server warms up before its first job: UMAP and t-SNE; torch, timm and the newest upload models.
PRELOADS = ("projections", "models")
PRELOAD_ENV = "DINOSCOPE_PRELOAD"
# The names an operator gives the limits of image sets (`serve --upload-limit NAME=VALUE`): the field of UploadLimits
# each sets, and how its value is written (a size in bytes, a count, or pixels, which may be counted in millions).
UPLOAD_LIMIT_NAMES = {"file": ("file_bytes", "size"), "files": ("files_per_set", "count"),
                      "set": ("set_bytes", "size"), "user": ("user_bytes", "size"),
                      "pixels": ("image_pixels", "pixels"), "zip": ("zip_bytes", "size"),
                      "zip-members": ("zip_members", "count")}
_LIMIT_UNITS = {"size": {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
                         "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3},
                "pixels": {"": 1, "M": 1_000_000}, "count": {"": 1}}
_LIMIT_WRITTEN = {"size": "a number of bytes, with an optional unit B, KB, MB, GB (1000-based), KiB, MiB or GiB",
                  "pixels": "a whole number, or millions with M (50M)", "count": "a whole number"}
_LIMIT_VALUE = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*([A-Za-z]*)")


def preloads_from_env() -> tuple[str, ...]:
    """What the job server warms up: all of PRELOADS, or those named in $DINOSCOPE_PRELOAD (comma-separated; empty
    for nothing, as test servers that run no job, or one job, are better without)."""
    value = os.environ.get(PRELOAD_ENV)
    if value is None:
        return PRELOADS
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = sorted(set(names) - set(PRELOADS))
    if unknown:
        logging.getLogger(__name__).warning("%s names %s, which the job server does not know (it knows %s): ignored",
                                            PRELOAD_ENV, ", ".join(unknown), ", ".join(PRELOADS))
    return tuple(name for name in names if name in PRELOADS)


def parse_upload_limits(values: Iterable[str]) -> UploadLimits:
    """The limits of image sets named in `values` ("file=20MiB", "user=2GiB,pixels=50M": each item NAME=VALUE, a
    value holding several comma-separated), the defaults for the others. Sizes are bytes, or a number with a unit
    (KB, MB, GB: 1000-based; KiB, MiB, GiB: 1024-based); counts are whole numbers; pixels may be counted in millions
    (50M). A ValueError names the bad item."""
    given: dict[str, int] = {}
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        name, equals, value = (piece.strip() for piece in item.partition("="))
        if not equals or name not in UPLOAD_LIMIT_NAMES:
            raise ValueError(f"{item!r} names no limit: write NAME=VALUE, NAME one of "
                             f"{', '.join(UPLOAD_LIMIT_NAMES)}")
        field_name, kind = UPLOAD_LIMIT_NAMES[name]
        if field_name in given:
            raise ValueError(f"{item!r}: the limit {name} is given twice")
        given[field_name] = _limit_value(item, value, kind)
    return UploadLimits(**given)


def _limit_value(item: str, value: str, kind: str) -> int:
    found = _LIMIT_VALUE.fullmatch(value)
    if not found:
        raise ValueError(f"{item!r}: the value is not {_LIMIT_WRITTEN[kind]}")
    number, unit = found.groups()
    factor = next((factor for key, factor in _LIMIT_UNITS[kind].items() if key.lower() == unit.lower()), None)
    if factor is None:
        raise ValueError(f"{item!r}: unknown unit {unit!r}; the value is {_LIMIT_WRITTEN[kind]}")
    if "." in number and factor == 1:  # a fraction of a byte, an image or a pixel
        raise ValueError(f"{item!r}: the value is not {_LIMIT_WRITTEN[kind]}")
    limit = int(Decimal(number) * factor)
    if limit <= 0:
        raise ValueError(f"{item!r}: a limit must be above zero")
    return limit


def describe_upload_limits(limits: UploadLimits) -> str:
    """The limits as `--upload-limit` takes them, each in its largest whole unit: "file=20MiB, files=1000, ..."."""
    items = []
    for name, (field_name, kind) in UPLOAD_LIMIT_NAMES.items():
        number = getattr(limits, field_name)
        units = _LIMIT_UNITS[kind]
        unit = max((key for key in units if number % units[key] == 0), key=units.get)
        items.append(f"{name}={number // units[unit]}{unit}")
    return ", ".join(items)


def default_job_slots() -> int:
    """Background jobs at once in each of the job server's lanes: a quarter of the cores, at least one."""
    return max(1, (os.cpu_count() or 2) // 4)


@dataclass(frozen=True)
class LoginSettings:
    """How password guessing is held back: the failed logins allowed per client address and per user name (limits
    such as '10/minute;100/hour', over moving windows), and the password checks run at once by one process."""

    failures_per_address: str = "10/minute;100/hour"
    failures_per_user: str = "5/minute;30/hour"
    checks: int = 2

    @classmethod
    def from_env(cls, failures_per_address: str | None = None, failures_per_user: str | None = None,
                 checks: int | None = None) -> LoginSettings:
        return cls(failures_per_address or os.environ.get(LOGIN_LIMITS_ADDRESS_ENV) or cls.failures_per_address,
                   failures_per_user or os.environ.get(LOGIN_LIMITS_USER_ENV) or cls.failures_per_user,
                   checks or int(os.environ.get(LOGIN_CHECKS_ENV) or cls.checks))


def server_model_from_env(name: str | None = None, weights: str | Path | None = None,
                          random_weights: bool | None = None, image_size: int | None = None) -> ServerModel:
    """The model the dashboard indexes image sets with: as given, else from the environment (as `serve` reads it
    under a WSGI server, and `dinoscope worker` for the runs it does)."""
    weights = weights or os.environ.get(WEIGHTS_ENV)
    if random_weights is None:
        random_weights = os.environ.get(RANDOM_WEIGHTS_ENV, "").strip().lower() in _TRUE
    return ServerModel(name or os.environ.get(MODEL_ENV) or None,
                       Path(weights).expanduser().resolve() if weights else None, random_weights,
                       image_size or int(os.environ.get(IMAGE_SIZE_ENV) or 0) or None)


@dataclass(frozen=True)
class UploadSettings:
    """Whether users may add image sets from the browser, where their files go (absolute), and what one may hold."""

    allowed: bool = False
    folder: Path | None = None  # None: dashboard.settings.Settings puts it by the database
    limits: UploadLimits = field(default_factory=UploadLimits)

    @classmethod
    def from_env(cls, db_url: str, allowed: bool | None = None, folder: str | Path | None = None,
                 limits: UploadLimits | None = None) -> UploadSettings:
        if allowed is None:
            allowed = os.environ.get(ALLOW_UPLOADS_ENV, "").strip().lower() in _TRUE
        folder = folder or os.environ.get(UPLOADS_DIR_ENV) or default_uploads_dir(db_url)
        if limits is None:
            try:
                limits = parse_upload_limits([os.environ.get(UPLOAD_LIMITS_ENV, "")])
            except ValueError as error:
                raise ValueError(f"{UPLOAD_LIMITS_ENV}: {error}") from None
        return cls(allowed, Path(folder).expanduser().resolve(), limits)


@dataclass(frozen=True)
class Settings:
    db_url: str
    cache_dir: Path  # absolute, shared by every worker process: background results and cached projections
    secret_key: str | None = None
    change_check_seconds: float = 15.0  # how often an open page asks whether its dataset has changed
    celery_url: str | None = None  # Redis for background callbacks run by `dinoscope worker`; None: diskcache
    users_file: Path | None = None  # user:hash lines; None: no login
    login: LoginSettings = LoginSettings()
    trusted_proxies: int = 0  # reverse proxies in front whose X-Forwarded-For names the client (0: none)
    job_slots: int = 1  # background jobs running at once per lane of the job server (diskcache manager)
    preload: tuple[str, ...] = field(default_factory=preloads_from_env)
    frame_ancestors: str = DEFAULT_FRAME_ANCESTORS  # the pages that may frame the dashboard (dashboard.framing)
    uploads: UploadSettings = UploadSettings()
    index_model: ServerModel = field(default_factory=ServerModel)  # what image sets are indexed with (index_job)
    index_slots: int = 1  # index runs at once in the job server's indexing lane (heavy: one or two)

    def __post_init__(self) -> None:
        if self.uploads.folder is None:
            folder = default_uploads_dir(self.db_url).resolve()
            object.__setattr__(self, "uploads", replace(self.uploads, folder=folder))

    @classmethod
    def from_env(cls, db: str | None = None, cache_dir: str | Path | None = None, celery_url: str | None = None,
                 users_file: str | Path | None = None, job_slots: int | None = None,
                 login: LoginSettings | None = None, trusted_proxies: int | None = None,
                 frame_ancestors: str | None = None, uploads: UploadSettings | None = None,
                 index_model: ServerModel | None = None, index_slots: int | None = None) -> Settings:
        cache = cache_dir or os.environ.get(CACHE_DIR_ENV) or Path(tempfile.gettempdir()) / "dinoscope-cache"
        users = users_file or os.environ.get(USERS_FILE_ENV)
        db_url = resolve_url(db or os.environ.get(DB_ENV))
        return cls(db_url, Path(cache).expanduser().resolve(),
                   os.environ.get(SECRET_ENV), celery_url=celery_url or os.environ.get(CELERY_ENV) or None,
                   users_file=Path(users).expanduser().resolve() if users else None,
                   job_slots=job_slots or int(os.environ.get(JOB_SLOTS_ENV) or default_job_slots()),
                   login=login or LoginSettings.from_env(),
                   trusted_proxies=trusted_proxies if trusted_proxies is not None
                   else int(os.environ.get(TRUSTED_PROXIES_ENV) or 0),
                   frame_ancestors=frame_ancestors or os.environ.get(FRAME_ANCESTORS_ENV) or DEFAULT_FRAME_ANCESTORS,
                   uploads=uploads or UploadSettings.from_env(db_url),
                   index_model=index_model or server_model_from_env(),
                   index_slots=index_slots or int(os.environ.get(INDEX_SLOTS_ENV) or 1))
