"""Who may add and remove image sets, by role and by who added the set."""

from __future__ import annotations

import pytest

from dashboard.roles import ADMIN, DEFAULT_ROLE, LOCAL_USER, ROLES, STUDENT, VIEWER, may_add_sets, may_remove_set


@pytest.mark.parametrize(("role", "may"), [(ADMIN, True), (STUDENT, True), (VIEWER, False), ("teacher", False)])
def test_who_may_add_sets(role, may):
    assert may_add_sets(role) is may


@pytest.mark.parametrize(("user", "role", "owner", "may"), [
    ("ada", ADMIN, "ada", True),
    ("ada", ADMIN, "stu", True),
    ("ada", ADMIN, None, True),  # a dataset indexed from the command line
    ("stu", STUDENT, "stu", True),
    ("stu", STUDENT, "sue", False),
    ("stu", STUDENT, None, False),
    ("vic", VIEWER, "vic", False),
    ("vic", VIEWER, None, False),
    (None, STUDENT, None, False),  # nobody is no owner
    (*LOCAL_USER, None, True),  # the one user of a server without login
    (*LOCAL_USER, "stu", True),
])
def test_who_may_remove_a_set(user, role, owner, may):
    assert may_remove_set(user, role, owner) is may


def test_a_line_without_a_role_is_a_students_and_roles_are_what_the_users_file_accepts():
    assert DEFAULT_ROLE == STUDENT and ROLES == ("admin", "student", "viewer")
    assert may_add_sets(LOCAL_USER.role)
