"""Optional login: HTTP basic authentication against a users file of password hashes.

The users file holds one `user:hash` line per user, the hash from werkzeug (scrypt or pbkdf2, written by
`dinoscope users add`); blank lines and lines starting with # are skipped. Plain passwords are refused. Once
installed, every route needs credentials (pages, callbacks, background-callback polling, assets, thumbnails)
except the health check, which load balancers call without any. A single sign-on scheme (dash_auth.OIDCAuth)
would be installed by `protect` in the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

import flask
from dash import Dash
from dash_auth import BasicAuth
from werkzeug.security import check_password_hash, generate_password_hash

HASH_METHODS = ("scrypt", "pbkdf2")


class UsersFileError(ValueError):
    """A users file that cannot be used; the message names the file (and the line)."""


def read_users(path: Path) -> dict[str, str]:
    """The users file as {user: password hash}."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError(f"cannot read users file {path}: {getattr(error, 'strerror', None) or error}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, _, password_hash = line.partition(":")
        if not user or not password_hash:
            raise UsersFileError(f"{path}, line {number}: expected USER:HASH (write it with "
                                 f"`dinoscope users add {path} USER`)")
        if not _is_password_hash(password_hash):
            raise UsersFileError(f"{path}, line {number}: the password of {user!r} is not a werkzeug hash "
                                 f"(plain passwords are not accepted): set it with `dinoscope users add {path} {user}`")
        if user in users:
            raise UsersFileError(f"{path}, line {number}: user {user!r} appears twice")
        users[user] = password_hash
    if not users:
        raise UsersFileError(f"users file {path} has no users: add one with `dinoscope users add {path} USER`")
    return users


def add_user(path: Path, user: str, password: str) -> bool:
    """Add `user` to the users file (created if missing, readable by its owner only), or change their password.
    Returns whether the user was new."""
    if not user or ":" in user or any(c.isspace() for c in user):
        raise UsersFileError(f"user name {user!r}: use a non-empty name without colons or spaces")
    if not password:
        raise UsersFileError("the password is empty")
    path = Path(path)
    users = read_users(path) if path.exists() and path.read_bytes().strip() else {}
    new = user not in users
    users[user] = generate_password_hash(password)
    text = "".join(f"{name}:{password_hash}\n" for name, password_hash in users.items())
    # Written beside the old file and renamed over it: a reader never sees half a file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        if path.exists():  # keep the permissions an administrator gave the file
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise UsersFileError(f"cannot write users file {path}: {error.strerror or error}") from None
    return new


def protect(app: Dash, users: dict[str, str], public_path: str) -> None:
    """Ask for a user and password on every route of `app` except `public_path`."""
    _HashedBasicAuth(app, users, public_path)


class _HashedBasicAuth(BasicAuth):
    """dash_auth's BasicAuth checking password hashes. It reads the header with werkzeug, so a malformed one is
    refused (401) rather than failing (500), and it keeps the public path out of dash_auth's public routes, which
    would also open every callback whose `pathname` input a client claims to be that path."""

    def __init__(self, app: Dash, users: dict[str, str], public_path: str) -> None:
        self._hashes = users
        self._public_path = public_path
        # Checking a hash takes a fifth of a second on purpose, and a page sends credentials with every thumbnail:
        # a password that passed once is recognised by a keyed digest for the life of this process.
        self._digest_key = secrets.token_bytes(32)
        self._passed: dict[str, bytes] = {}
        super().__init__(app, auth_func=self._check)

    def is_authorized(self) -> bool:
        if flask.request.path == self._public_path:
            return True
        credentials = flask.request.authorization
        return (credentials is not None and credentials.type == "basic"
                and self._check(credentials.username or "", credentials.password or ""))

    def _check(self, user: str, password: str) -> bool:
        digest = hmac.new(self._digest_key, password.encode(), hashlib.sha256).digest()
        passed = self._passed.get(user)
        if passed is not None and hmac.compare_digest(passed, digest):
            return True
        password_hash = self._hashes.get(user)
        if password_hash is None or not check_password_hash(password_hash, password):
            return False
        self._passed[user] = digest
        return True


def _is_password_hash(text: str) -> bool:
    method, *rest = text.split("$")
    return len(rest) == 2 and all(rest) and method.split(":")[0] in HASH_METHODS
