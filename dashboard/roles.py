"""Who may add or remove image sets: the roles a users file gives, and the rules that read them.

`admin` may add sets and remove any; `student` may add sets and remove their own; `viewer` may only browse. A users
file line without a role is a student's: files written before roles existed keep working, and nobody adds anything
anyway until the server is started with `--allow-uploads`. A server without a users file has one local user, who
logs in as nobody (user None) and is an admin: whoever starts it owns it.
"""

from __future__ import annotations

from typing import NamedTuple

ADMIN = "admin"
STUDENT = "student"
VIEWER = "viewer"
ROLES = (ADMIN, STUDENT, VIEWER)
DEFAULT_ROLE = STUDENT


class Visitor(NamedTuple):
    """Who makes a request: a user of the users file and their role, or (None, admin) on a server without login."""

    user: str | None
    role: str


LOCAL_USER = Visitor(None, ADMIN)


def may_add_sets(role: str) -> bool:
    return role in (ADMIN, STUDENT)


def may_remove_set(user: str | None, role: str, owner: str | None) -> bool:
    """Whether `user` may remove a set `owner` added (None: a dataset indexed from the command line, or a set added
    on a server without login): an admin any, a student only their own."""
    return role == ADMIN or (role == STUDENT and user is not None and user == owner)


def may_change_set(user: str | None, role: str, owner: str | None) -> bool:
    """Whether `user` may add files to a set `owner` added and index it again: whoever may remove it."""
    return may_remove_set(user, role, owner)


def may_index_server_folder(role: str) -> bool:
    """Whether a user may index again a dataset indexed from a folder of the server: an admin only."""
    return role == ADMIN
