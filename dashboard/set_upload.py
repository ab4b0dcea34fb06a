"""The route the image-sets page sends files to: one multipart POST (`files`, repeated; `dataset`, the name of a new
dataset, or `into`, the dataset whose set the files join), spooled to disk by the server as it arrives, held
to the set's limits rather than a callback's, and answered with JSON (the ticket of the index run, or why not).

The request must carry the header the page's script sets: a form on another site cannot send one without the
browser asking this server first (a CORS preflight it refuses), so it cannot add sets in a logged-in user's name.
"""

from __future__ import annotations

import logging

import flask
from werkzeug.exceptions import RequestEntityTooLarge

from dashboard.auth import current_user
from dashboard.image_sets import IncomingFile
from dashboard.roles import VIEWER, Visitor, may_add_sets
from dashboard.set_actions import MAY_NOT_ADD, UPLOADS_OFF, ActionRefused, receive
from dashboard.site import Site
from db.errors import DinoscopeError

log = logging.getLogger(__name__)
UPLOAD_PATH = "/image-sets/upload"
UPLOAD_HEADER = "X-Dinoscope-Upload"
FORM_BYTES = 1024**2  # the form's fields and each part's headers, beside the files
FORM_FIELDS = 8


def add_set_upload_route(server: flask.Flask, site: Site) -> None:
    @server.post(UPLOAD_PATH)
    def upload_set():
        if flask.request.headers.get(UPLOAD_HEADER) != "1":
            return _answer(f"{UPLOAD_PATH} takes uploads from the image-sets page only", 400)
        if site.sets is None:
            return _answer(UPLOADS_OFF, 403)
        visitor = current_user() or Visitor(None, VIEWER)
        if not may_add_sets(visitor.role):  # before a byte of the body is read
            return _answer(MAY_NOT_ADD, 403)
        limits = site.sets.limits
        flask.request.max_content_length = limits.set_bytes + FORM_BYTES
        flask.request.max_form_parts = limits.files_per_set + FORM_FIELDS
        try:
            files = [IncomingFile(part.filename or "", part.stream) for part in flask.request.files.getlist("files")]
            dataset, into = flask.request.form.get("dataset"), flask.request.form.get("into")
        except RequestEntityTooLarge:
            return _answer(f"This upload is larger than a set may be ({limits.set_bytes / 1024**2:,.0f} MB), or "
                           f"holds more than {limits.files_per_set:,} files: send fewer", 413)
        try:
            received, ticket = receive(site, visitor, files, dataset=dataset, into=into or None)
        except ActionRefused as refused:
            return _answer(str(refused), 403)
        except DinoscopeError as refused:  # the upload's own checks (SetRefused), a database that fails
            return _answer(str(refused), 400)
        skipped = received.skipped
        message = (f"Received {_count(len(received.added), 'image')} for {received.manifest.dataset!r}"
                   + (f", left out {_count(len(skipped), 'other file')} ({', '.join(name for name, _ in skipped[:3])}"
                      f"{', ...' if len(skipped) > 3 else ''})" if skipped else "") + ": indexing")
        return flask.jsonify({"ticket": ticket, "dataset": received.manifest.dataset,
                              "set": received.manifest.set_id, "added": len(received.added),
                              "skipped": [list(item) for item in skipped], "message": message})


def _answer(message: str, status: int) -> tuple[flask.Response, int]:
    return flask.jsonify({"ticket": None, "message": message}), status


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"
