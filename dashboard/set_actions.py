"""What the image-sets page does, as plain Python: add a set or files to one, index a dataset again, remove a set,
each checked against the visitor's role; and the tickets that carry an index run from the request that asked for it
(which knows who asked) to the background job that does it (which does not).

A ticket is kept in the site's results cache (the folder every web process, the job server and the Celery workers
share) under a random token, and taken by the job that runs it: a job given a token nobody issued does nothing.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dashboard.data import Provenance
from dashboard.image_sets import IncomingFile, Received, SetManifest, SetNotFound, SetRefused
from dashboard.roles import Visitor, may_add_sets, may_change_set, may_index_server_folder, may_remove_set
from dashboard.site import Site
from db.engine import open_database
from db.errors import DatabaseNotFound, DatasetNotFound, DinoscopeError
from db.queries import find_dataset
from db.runs import remove_dataset_unless_indexed
from indexer.index_job import ServerModel, run_index_job

log = logging.getLogger(__name__)
TICKET_PREFIX = "index-ticket/"
TICKET_SECONDS = 24 * 3600  # a run waits in the indexing lane's queue at most this long
DATASET_NAME_CHARS = 80
MAY_NOT_ADD = "Your role lets you browse, not add image sets: ask the server's administrator"
UPLOADS_OFF = "This server does not take image sets from the browser: its operator starts it with --allow-uploads"


class ActionRefused(DinoscopeError):
    """The visitor may not do this, or it cannot be done; the message says why in one line."""


@dataclass(frozen=True)
class IndexTicket:
    """An index run asked for: the dataset, the folder it is indexed from, the image set that folder is (set id,
    owner; None for a folder of the server) and who asked."""

    dataset: str
    folder: str
    uploaded_set: tuple[str, str | None] | None
    asked_by: str | None


@dataclass(frozen=True)
class SetRow:
    """A line of the page's table: a dataset, an image set, or both; and what the visitor may do with it."""

    dataset: str
    owner: str | None  # who added the set; None for a folder of the server or a server without login
    uploaded: bool
    images: int | None  # indexed; None: not indexed (yet)
    files: int | None  # in the set; None for a folder of the server
    bytes: int | None
    may_add: bool
    may_reindex: bool
    may_remove: bool


def set_rows(site: Site, visitor: Visitor) -> list[SetRow]:
    """Every dataset and every image set, in name order, with what `visitor` may do with each."""
    provenances = {p.name: p for p in _provenances(site)}
    manifests = {m.dataset: m for m in site.sets.sets()} if site.sets else {}
    rows = []
    for name in sorted(provenances.keys() | manifests.keys()):
        provenance, manifest = provenances.get(name), manifests.get(name)
        uploaded = manifest is not None or (provenance is not None and provenance.uploaded_set is not None)
        owner = manifest.owner if manifest else provenance.owner
        changes = site.sets is not None and (may_change_set(visitor.user, visitor.role, owner) if uploaded
                                             else may_index_server_folder(visitor.role))
        rows.append(SetRow(name, owner, uploaded, provenance.image_count if provenance else None,
                           len(manifest.files) if manifest else None, manifest.bytes if manifest else None,
                           changes and manifest is not None, changes and (manifest is not None or not uploaded),
                           site.sets is not None and uploaded and may_remove_set(visitor.user, visitor.role, owner)))
    return rows


def receive(site: Site, visitor: Visitor, files: Sequence[IncomingFile], *, dataset: str | None = None,
            into: str | None = None) -> tuple[Received, str]:
    """Store an upload as a new set for the new dataset `dataset`, or add it to the set of the dataset `into`, and
    issue the ticket of its index run: (what was received, the ticket's token)."""
    if site.sets is None:
        raise ActionRefused(UPLOADS_OFF)
    if not may_add_sets(visitor.role):
        raise ActionRefused(MAY_NOT_ADD)
    if into:
        manifest = _manifest_of(site, into)
        if manifest is None:
            raise ActionRefused(f"There is no image set of a dataset named {into!r} to add files to")
        _check_may_change(visitor, manifest.owner, into)
        received = site.sets.add(manifest.set_id, files)
    else:
        received = site.sets.create(visitor.user, _new_dataset_name(site, dataset), files)
    return received, issue_ticket(site, _set_ticket(site, received.manifest, visitor))


def reindex(site: Site, visitor: Visitor, dataset: str) -> str:
    """Issue the ticket of a run that indexes `dataset` again from its folder: its image set's, or the server's."""
    if site.sets is None:
        raise ActionRefused(UPLOADS_OFF)
    manifest = _manifest_of(site, dataset)
    if manifest is not None:
        _check_may_change(visitor, manifest.owner, dataset)
        return issue_ticket(site, _set_ticket(site, manifest, visitor))
    provenance = _provenance_of(site, dataset)
    if provenance.uploaded_set is not None:
        raise ActionRefused(f"The files of {dataset!r} are no longer in the uploads folder: remove the dataset")
    if not may_index_server_folder(visitor.role):
        raise ActionRefused(f"{dataset!r} was indexed from a folder of the server: only an admin indexes it again")
    return issue_ticket(site, IndexTicket(dataset, provenance.root, None, visitor.user))


def remove(site: Site, visitor: Visitor, dataset: str) -> str:
    """Remove an image set: its dataset from the database (refused while a run indexes it), then its files. A dataset
    indexed from a folder of the server is removed on the server (`dinoscope remove`). Returns what was done."""
    if site.sets is None:
        raise ActionRefused(UPLOADS_OFF)
    manifest = _manifest_of(site, dataset)
    provenance = next((p for p in _provenances(site) if p.name == dataset), None)
    if manifest is None and (provenance is None or provenance.uploaded_set is None):
        raise ActionRefused(f"{dataset!r} is not an image set added from the browser: it is removed on the server, "
                            "with dinoscope remove")
    owner = manifest.owner if manifest else provenance.owner
    if not may_remove_set(visitor.user, visitor.role, owner):
        raise ActionRefused(f"Only {owner or 'the local user'} or an admin may remove {dataset!r}")
    database = open_database(site.store.db_url)
    try:
        with database.session() as session:
            stored = find_dataset(session, dataset)
            if stored is not None:
                remove_dataset_unless_indexed(session, stored, socket.gethostname())
    finally:
        database.dispose()
    if manifest is not None:
        try:
            site.sets.remove(manifest.set_id)
        except SetNotFound:
            pass  # removed meanwhile by another request: the same outcome
    log.info("dataset %r removed from the browser by %s", dataset, visitor.user or "the local user")
    return f"Removed {dataset!r}" + (f" and its {len(manifest.files)} files" if manifest else "")


def issue_ticket(site: Site, ticket: IndexTicket) -> str:
    token = secrets.token_urlsafe(16)
    site.results.set(TICKET_PREFIX + token, ticket, expire=TICKET_SECONDS)
    return token


def run_ticket(site: Site, token: str, progress: Callable[[dict], None] | None = None) -> dict:
    """Run the index run of a ticket, once: run_index_job's summary, or {"dataset": None, "refused": ...} for a
    token that is not (or no longer) a ticket. `progress` is given run_index_job's steps with the dataset's name."""
    ticket = site.results.pop(TICKET_PREFIX + token, None) if isinstance(token, str) else None
    if not isinstance(ticket, IndexTicket):
        return {"dataset": None, "refused": "This index run was not asked for here, or has run already: ask again"}
    log.info("index run of dataset %r asked for by %s", ticket.dataset, ticket.asked_by or "the local user")
    report = (lambda step: progress({**step, "dataset": ticket.dataset})) if progress else None
    # A dataset that exists is indexed with its own model and weights, whatever the server's are now.
    exists = any(p.name == ticket.dataset for p in _provenances(site))
    return run_index_job(site.store.db_url, ticket.folder, ticket.dataset, ServerModel() if exists
                         else site.index_model, report, ticket.uploaded_set)


def _set_ticket(site: Site, manifest: SetManifest, visitor: Visitor) -> IndexTicket:
    folder = site.sets.folder(manifest.set_id)
    return IndexTicket(manifest.dataset, str(folder), (manifest.set_id, manifest.owner), visitor.user)


def _new_dataset_name(site: Site, dataset: str | None) -> str:
    name = (dataset or "").strip()
    if not name:
        raise SetRefused("Name the new dataset first")
    if len(name) > DATASET_NAME_CHARS or not name.isprintable():
        raise SetRefused(f"A dataset's name is at most {DATASET_NAME_CHARS} printable characters")
    if _manifest_of(site, name) is not None or any(p.name == name for p in _provenances(site)):
        raise SetRefused(f"A dataset named {name!r} exists already: choose another name, or add the files to it")
    return name


def _provenances(site: Site) -> list[Provenance]:
    """The datasets; none before the first run has made the database (which the first image set's run does)."""
    try:
        return site.store.provenances()
    except DatabaseNotFound:
        return []


def _manifest_of(site: Site, dataset: str) -> SetManifest | None:
    return next((m for m in site.sets.sets() if m.dataset == dataset), None)


def _provenance_of(site: Site, dataset: str) -> Provenance:
    found = next((p for p in _provenances(site) if p.name == dataset), None)
    if found is None:
        raise DatasetNotFound(f"There is no dataset named {dataset!r}")
    return found


def _check_may_change(visitor: Visitor, owner: str | None, dataset: str) -> None:
    if not may_change_set(visitor.user, visitor.role, owner):
        raise ActionRefused(f"{dataset!r} is {owner or 'the local user'}'s image set: only they or an admin change it")
