"""Optional login: HTTP basic authentication against a users file of password hashes.

The users file holds one `user:hash:role` line per user, the hash from werkzeug (scrypt or pbkdf2, written by
`dinoscope users add`) and the role one of dashboard.roles (a line without one, as files before roles were written,
is a DEFAULT_ROLE's); blank lines and lines starting with # are skipped. Plain passwords are refused. Once
installed, every route needs credentials (pages, callbacks, background-callback polling, assets, thumbnails)
except the health check, which load balancers call without any. A single sign-on scheme (dash_auth.OIDCAuth)
would be installed by `protect` in the same way.

Against guessing: a password that passed once is recognised at once afterwards (requests of logged-in users never
wait for a check); an unknown user name costs as long as a wrong password (a dummy hash of the same kind is checked);
failed logins are counted per client address and per user name, and past their limits a login is refused with 429
before any check (dashboard.login_limits); and only a few checks run at once in a process
(dashboard.password_checks). Failed logins are logged with the user name and the client's address.

A request's pages and callbacks learn who made it, and their role, from `current_user()`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import stat
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import flask
from dash import Dash
from dash_auth import BasicAuth
from limits.errors import StorageError
from werkzeug.exceptions import ServiceUnavailable, TooManyRequests
from werkzeug.security import check_password_hash, generate_password_hash

from dashboard.login_limits import LoginLimits
from dashboard.password_checks import PasswordChecks
from dashboard.roles import DEFAULT_ROLE, LOCAL_USER, ROLES, Visitor
from dashboard.settings import LoginSettings
from db.errors import DinoscopeError

log = logging.getLogger(__name__)
HASH_METHODS = ("scrypt", "pbkdf2")
# A class logging in at the same moment can outrun the checks a process runs at once: the page opened tries again.
BUSY_PAGE = ('<!doctype html><meta http-equiv="refresh" content="1"><title>dinoscope</title>'
             "<p>The server is busy checking other logins: this page tries again in a second.</p>")
_LOGGED_IN = "login"  # the session cookie's entry: the proof of the credentials its browser logged in with
_ROLES = "dinoscope-roles"  # the Flask app's extension of a server with login: {user: role}


class UsersFileError(DinoscopeError):
    """A users file that cannot be used; the message names the file (and the line)."""


@dataclass(frozen=True)
class User:
    """A user's line of the users file."""

    password_hash: str
    role: str = DEFAULT_ROLE


def read_users(path: Path) -> dict[str, User]:
    """The users file as {user name: User}."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError(f"cannot read users file {path}: {getattr(error, 'strerror', None) or error}") from None
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, _, rest = line.partition(":")
        if not user or not rest:
            raise UsersFileError(f"{path}, line {number}: expected USER:HASH[:ROLE] (write it with "
                                 f"`dinoscope users add {path} USER`)")
        password_hash, role = _hash_and_role(rest)
        if not _is_password_hash(password_hash):
            raise UsersFileError(f"{path}, line {number}: the password of {user!r} is not a werkzeug hash "
                                 f"(plain passwords are not accepted): set it with `dinoscope users add {path} {user}`")
        if role not in ROLES:
            raise UsersFileError(f"{path}, line {number}: unknown role {role!r} of {user!r} (roles: "
                                 f"{', '.join(ROLES)}): set it with `dinoscope users add {path} {user} --role ROLE`")
        if user in users:
            raise UsersFileError(f"{path}, line {number}: user {user!r} appears twice")
        users[user] = User(password_hash, role)
    if not users:
        raise UsersFileError(f"users file {path} has no users: add one with `dinoscope users add {path} USER`")
    return users


def add_user(path: Path, user: str, password: str, role: str | None = None) -> bool:
    """Add `user` to the users file (created if missing, readable by its owner only) with `role` (None: the default
    role), or change their password and, if given, their role. Returns whether the user was new."""
    if not user or ":" in user or any(c.isspace() for c in user):
        raise UsersFileError(f"user name {user!r}: use a non-empty name without colons or spaces")
    if not password:
        raise UsersFileError("the password is empty")
    if role is not None and role not in ROLES:
        raise UsersFileError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    path = Path(path)
    users = read_users(path) if path.exists() and path.read_bytes().strip() else {}
    new = user not in users
    users[user] = User(generate_password_hash(password), role or (DEFAULT_ROLE if new else users[user].role))
    text = "".join(f"{name}:{entry.password_hash}:{entry.role}\n" for name, entry in users.items())
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


def protect(app: Dash, users: dict[str, User], public_path: str, login: LoginSettings,
            redis_url: str | None = None) -> None:
    """Ask for a user and password on every route of `app` except `public_path`, holding guessers back as `login`
    says (failures counted in the Redis of `redis_url`, else in this process)."""
    app.server.extensions[_ROLES] = {name: user.role for name, user in users.items()}
    hashes = {name: user.password_hash for name, user in users.items()}
    _HashedBasicAuth(app, hashes, public_path, LoginLimits(login, redis_url), PasswordChecks(login.checks))


def current_user() -> Visitor | None:
    """Who made the current request, with their role: the user it logged in as on a server with a users file (None
    for a request that needs no login, the health check), the local user (None, admin) on a server without one."""
    roles = flask.current_app.extensions.get(_ROLES)
    if roles is None:
        return LOCAL_USER
    user = flask.g.get("dinoscope_user")
    return None if user is None else Visitor(user, roles[user])


class _HashedBasicAuth(BasicAuth):
    """dash_auth's BasicAuth checking password hashes. It reads the header with werkzeug, so a malformed one is
    refused (401) rather than failing (500), and it keeps the public path out of dash_auth's public routes, which
    would also open every callback whose `pathname` input a client claims to be that path."""

    def __init__(self, app: Dash, users: dict[str, str], public_path: str, limits: LoginLimits,
                 checks: PasswordChecks) -> None:
        self._hashes = users
        self._public_path = public_path
        self._limits = limits
        self._checks = checks
        # Checked for unknown user names, so that they take as long as a known user's wrong password.
        self._dummy_hash = generate_password_hash(secrets.token_urlsafe(16), method=_commonest_method(users))
        # Checking a hash takes a fifth of a second on purpose, and a page sends credentials with every thumbnail:
        # a password that passed once is recognised by a keyed digest for the life of this process.
        self._digest_key = secrets.token_bytes(32)
        self._passed: dict[str, bytes] = {}
        super().__init__(app, auth_func=self._verify)  # unused: is_authorized is replaced below

    def is_authorized(self) -> bool:
        if flask.request.path == self._public_path:
            return True
        credentials = flask.request.authorization
        if credentials is None or credentials.type != "basic":
            return False
        user, password = credentials.username or "", credentials.password or ""
        # A browser that has logged in carries a session cookie (signed with the workers' shared secret) holding a
        # proof of the credentials it logged in with: every worker recognises them without a check, and it is never
        # held back. Any other request is refused at once while its address or user is locked out, even with the
        # right password: otherwise a locked-out guesser would still learn when it guessed.
        proof = self._proof(user, password)
        if hmac.compare_digest(flask.session.get(_LOGGED_IN, ""), proof):
            flask.g.dinoscope_user = user  # whose credentials this request passed with
            return True
        self._refuse_if_locked_out(user)
        digest = hmac.new(self._digest_key, password.encode(), hashlib.sha256).digest()
        passed = self._recognised(user, digest) or self._check(user, password, digest)
        if passed:
            flask.session[_LOGGED_IN] = proof
            flask.g.dinoscope_user = user
        return passed

    def _proof(self, user: str, password: str) -> str:
        """A keyed digest of the credentials and of the user's stored hash (so that it ends when the password is
        changed in the users file); without the server's secret it cannot be made or reversed."""
        key = str(flask.current_app.secret_key).encode()
        credentials = "\0".join((user, self._hashes.get(user, ""), password)).encode()
        return hmac.new(key, credentials, hashlib.sha256).hexdigest()

    def _recognised(self, user: str, digest: bytes) -> bool:
        passed = self._passed.get(user)
        return passed is not None and hmac.compare_digest(passed, digest)

    def _refuse_if_locked_out(self, user: str) -> None:
        try:
            wait_s = self._limits.wait_s(_client_address(), user)
        except StorageError as error:
            raise self._unavailable(error) from None
        if wait_s > 0:
            raise TooManyRequests("Too many failed logins: try again later.", retry_after=math.ceil(wait_s))

    def _check(self, user: str, password: str, digest: bytes) -> bool:
        """Check a password not seen to pass yet in this process; 429 when the process is busy with other checks. A
        failure is logged and counted."""
        passed = self._checks.run((user, digest), lambda: self._recognised(user, digest)
                                  or self._verify(user, password))
        if passed is None:
            raise TooManyRequests(response=flask.Response(BUSY_PAGE, 429, {"Retry-After": "1"}, mimetype="text/html"))
        if passed:
            self._passed[user] = digest
            return True
        address = _client_address()
        log.warning("failed login as %r from %s", user, address)
        try:
            locked = self._limits.count_failure(address, user)
        except StorageError as error:
            raise self._unavailable(error) from None
        for what in locked:
            log.warning("too many failed logins: %s is refused for a while", what)
        return False

    @staticmethod
    def _unavailable(error: StorageError) -> ServiceUnavailable:
        log.error("cannot count failed logins in Redis, so no new login is checked: %s", error.storage_error)
        return ServiceUnavailable("Logins cannot be checked at the moment: try again later.")

    def _verify(self, user: str, password: str) -> bool:
        password_hash = self._hashes.get(user)
        passed = check_password_hash(password_hash or self._dummy_hash, password)
        return passed and password_hash is not None


def _client_address() -> str:
    return flask.request.remote_addr or "an unknown address"


def _hash_and_role(text: str) -> tuple[str, str]:
    """A line's hash and role from what follows its user name: a hash's last part (after its last $) holds no colon,
    so a colon after it starts the role; a line without one has the default role."""
    password_hash, colon, role = text.rpartition(":")
    if not colon or "$" in role:
        return text, DEFAULT_ROLE
    return password_hash, role


def _commonest_method(users: dict[str, str]) -> str:
    """The hash method and cost most users' hashes were made with, as werkzeug writes it ("scrypt:32768:8:1")."""
    return Counter(password_hash.split("$")[0] for password_hash in users.values()).most_common(1)[0][0]


def _is_password_hash(text: str) -> bool:
    method, *rest = text.split("$")
    return len(rest) == 2 and all(rest) and method.split(":")[0] in HASH_METHODS
