"""The optional login: the users file, `dinoscope users add`, and credentials asked on every route."""

from __future__ import annotations

import stat

import pytest
from dash.testing.wait import until
from werkzeug.security import check_password_hash, generate_password_hash

from dashboard.auth import User, UsersFileError, add_user, current_user, read_users
from dashboard.roles import ADMIN, LOCAL_USER, STUDENT, VIEWER, Visitor
from tests.conftest import run_cli
from tests.servers import basic_auth


def test_users_add_stores_a_hash_not_the_password_and_changes_it_on_request(tmp_path):
    users_file = tmp_path / "users"
    assert "added 'alice'" in run_cli("users", "add", users_file, "alice", "--password-stdin",
                                      input="correct horse\n").output
    run_cli("users", "add", users_file, "bob", input="s3cret\ns3cret\n")  # prompted, twice
    text = users_file.read_text()
    assert "correct horse" not in text and "s3cret" not in text
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    users = read_users(users_file)
    assert check_password_hash(users["alice"].password_hash, "correct horse")
    assert check_password_hash(users["bob"].password_hash, "s3cret")

    assert "changed the password of 'alice'" in run_cli("users", "add", users_file, "alice", "--password-stdin",
                                                        input="battery staple\n").output
    users = read_users(users_file)
    assert sorted(users) == ["alice", "bob"] and check_password_hash(users["alice"].password_hash, "battery staple")


def test_users_add_refuses_bad_names_and_empty_passwords(tmp_path):
    refused = run_cli("users", "add", tmp_path / "users", "al:ice", "--password-stdin", input="pw\n", expect=1)
    assert "use a non-empty name without colons or spaces" in refused.output
    refused = run_cli("users", "add", tmp_path / "users", "alice", "--password-stdin", input="\n", expect=1)
    assert "the password is empty" in refused.output
    assert not (tmp_path / "users").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("alice\n", "line 1: expected USER:HASH"),
    ("# the team\n\nalice:hunter2\n", "line 3: the password of 'alice' is not a werkzeug hash"),
    ("alice:{hash}\nalice:{hash}\n", "line 2: user 'alice' appears twice"),
    ("# nobody yet\n", "has no users"),
])
def test_a_bad_users_file_is_refused_with_its_line(tmp_path, content, message):
    users_file = tmp_path / "users"
    run_cli("users", "add", tmp_path / "valid", "alice", "--password-stdin", input="pw\n")
    users_file.write_text(content.format(hash=read_users(tmp_path / "valid")["alice"].password_hash))
    with pytest.raises(UsersFileError, match=message) as refused:
        read_users(users_file)
    assert str(users_file) in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(UsersFileError, match=message):
        add_user(users_file, "bob", "pw")  # an unreadable file is not overwritten


def test_users_add_gives_a_role_and_a_new_password_keeps_it(tmp_path):
    users_file = tmp_path / "users"
    assert "added 'alice' (admin)" in run_cli("users", "add", users_file, "alice", "--role", "admin",
                                              "--password-stdin", input="pw\n").output
    assert "added 'bob' (student)" in run_cli("users", "add", users_file, "bob", "--password-stdin",
                                              input="pw\n").output
    assert "changed the password of 'alice' (admin)" in run_cli("users", "add", users_file, "alice",
                                                                "--password-stdin", input="new\n").output
    assert {name: user.role for name, user in read_users(users_file).items()} == {"alice": ADMIN, "bob": STUDENT}
    run_cli("users", "add", users_file, "bob", "--role", "viewer", "--password-stdin", input="pw\n")
    users = read_users(users_file)
    assert users["bob"].role == VIEWER and check_password_hash(users["alice"].password_hash, "new")
    assert [line.rsplit(":", 1)[1] for line in users_file.read_text().splitlines()] == ["admin", "viewer"]
    refused = run_cli("users", "add", users_file, "carol", "--role", "teacher", "--password-stdin", input="pw\n",
                      expect=2)
    assert "'teacher' is not one of 'admin', 'student', 'viewer'" in refused.output


def test_a_users_file_without_roles_still_reads_and_gives_the_default_role(tmp_path):
    """Files written before roles existed hold user:hash lines; new ones user:hash:role."""
    password_hash = generate_password_hash("pw")
    users_file = tmp_path / "users"
    users_file.write_text(f"# written by an older dinoscope\nalice:{password_hash}\nbob:{password_hash}:viewer\n")
    assert read_users(users_file) == {"alice": User(password_hash, STUDENT), "bob": User(password_hash, VIEWER)}
    add_user(users_file, "carol", "pw", ADMIN)  # rewriting the file keeps everyone's password and role
    users = read_users(users_file)
    assert [(name, user.role) for name, user in users.items()] == [("alice", STUDENT), ("bob", VIEWER),
                                                                   ("carol", ADMIN)]
    assert users["alice"].password_hash == users["bob"].password_hash == password_hash


@pytest.mark.parametrize("role", ["teacher", "Admin", ""])
def test_an_unknown_role_is_refused_with_its_line(tmp_path, role):
    users_file = tmp_path / "users"
    users_file.write_text(f"alice:{generate_password_hash('pw')}\n\nbob:{generate_password_hash('pw')}:{role}\n")
    with pytest.raises(UsersFileError, match=f"{users_file}, line 3: unknown role '{role}' of 'bob' "
                                             r"\(roles: admin, student, viewer\)") as refused:
        read_users(users_file)
    assert "\n" not in str(refused.value)
    with pytest.raises(UsersFileError, match="unknown role 'teacher'"):
        add_user(tmp_path / "other", "alice", "pw", "teacher")


def test_a_missing_users_file_is_one_line(tmp_path):
    with pytest.raises(UsersFileError, match=r"cannot read users file .*nowhere: No such file"):
        read_users(tmp_path / "nowhere")


# --- credentials on every route ---------------------------------------------------------------------------------

_CONTROLS = ["clustering-perplexity-group", "clustering-umap-group", "clustering-k-group", "clustering-dbscan-group",
             "clustering-trust-k-group"]


def _callback(inputs=(("clustering-projection", "value", "tsne"), ("clustering-method", "value", "dbscan"),
                      ("clustering-colour", "value", "clusters"))):
    """A real callback request: which of the clustering page's parameter groups to show."""
    return {"output": ".." + "...".join(f"{name}.style" for name in _CONTROLS) + "..",
            "outputs": [{"id": name, "property": "style"} for name in _CONTROLS],
            "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
            "changedPropIds": [f"{inputs[0][0]}.{inputs[0][1]}"], "state": []}


@pytest.fixture
def protected_app(sample_db, tmp_path):
    from dashboard.app import create_app
    from dashboard.settings import Settings

    run_cli("users", "add", tmp_path / "users", "alice", "--password-stdin", input="correct horse\n")
    return create_app(Settings(f"sqlite:///{sample_db}", tmp_path / "cache", "test-secret",
                               users_file=tmp_path / "users"))


def test_every_route_but_health_needs_credentials(protected_app):
    client = protected_app.server.test_client()
    rules = list(protected_app.server.url_map.iter_rules())
    assert {"/", "/_dash-update-component", "/thumbnails/<int:image_id>/<kind>.jpg", "/assets/<path:filename>"} \
        <= {rule.rule for rule in rules}
    for rule in rules:
        path = rule.rule.replace("<int:image_id>", "1").replace("<kind>", "gallery")
        path = path.replace("<path:filename>", "dinoscope.js").replace("<path:path>", "gallery")
        path = path.replace("<string:package_name>", "dash").replace("<path:fingerprinted_path>", "x.js")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(path, method=method, json=_callback() if method == "POST" else None)
            assert response.status_code == (200 if path == "/health" else 401), (method, path)
            if response.status_code == 401:
                assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize("headers", [
    {}, basic_auth("alice", "wrong"), basic_auth("mallory", "correct horse"), basic_auth("alice", ""),
    {"Authorization": "Bearer correct horse"}, {"Authorization": "Basic !!!"},
], ids=["none", "wrong password", "unknown user", "empty password", "other scheme", "malformed"])
def test_pages_callbacks_and_thumbnails_refuse_bad_credentials(protected_app, headers):
    client = protected_app.server.test_client()
    assert client.get("/gallery?dataset=samples", headers=headers).status_code == 401
    assert client.get("/thumbnails/1/gallery.jpg", headers=headers).status_code == 401
    assert client.post("/_dash-update-component", json=_callback(), headers=headers).status_code == 401
    polling = "/_dash-update-component?cacheKey=key&job=1"  # how the browser asks after a background callback
    assert client.post(polling, json=_callback(), headers=headers).status_code == 401


def test_the_right_credentials_open_pages_callbacks_and_thumbnails(protected_app):
    client = protected_app.server.test_client()
    alice = basic_auth("alice", "correct horse")
    page = client.get("/gallery?dataset=samples", headers=alice)
    assert page.status_code == 200 and b"dinoscope" in page.data
    for path in ("/_dash-layout", "/_dash-dependencies", "/assets/dinoscope.js"):
        assert client.get(path, headers=alice).status_code == 200, path
    thumbnail = client.get("/thumbnails/1/gallery.jpg", headers=alice)
    assert thumbnail.status_code == 200 and thumbnail.content_type == "image/jpeg"
    assert thumbnail.headers["Cache-Control"].startswith("private")  # no shared proxy keeps it for others
    answer = client.post("/_dash-update-component", json=_callback(), headers=alice)
    assert answer.status_code == 200
    shown = answer.get_json()["response"]
    assert shown["clustering-perplexity-group"]["style"] == {} and shown["clustering-dbscan-group"]["style"] == {}
    assert shown["clustering-umap-group"]["style"] == {"display": "none"}
    assert client.get("/thumbnails/1/gallery.jpg", headers=alice).status_code == 200  # recognised again


def test_claiming_the_public_health_path_opens_no_callback(protected_app):
    """dash_auth lets a callback through when its `pathname` input is a public route: /health must not be one."""
    body = _callback((("navigate", "pathname", "/health"), ("clustering-method", "value", "dbscan"),
                      ("clustering-colour", "value", "clusters")))
    response = protected_app.server.test_client().post("/_dash-update-component", json=body)
    assert response.status_code == 401


def test_without_a_users_file_nothing_asks_for_credentials(dashboard_app):
    client = dashboard_app.server.test_client()
    assert client.get("/gallery?dataset=samples").status_code == 200
    assert client.get("/thumbnails/1/gallery.jpg").status_code == 200
    assert client.post("/_dash-update-component", json=_callback()).status_code == 200


def test_a_bad_users_file_stops_serve_with_one_line(tmp_path):
    (tmp_path / "users").write_text("alice:hunter2\n")
    refused = run_cli("serve", "--users", tmp_path / "users", "--db", tmp_path / "none.db", expect=1)
    assert f"{tmp_path / 'users'}, line 1: the password of 'alice' is not a werkzeug hash" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def test_a_browser_logs_in_once_and_the_whole_page_works(dash_duo, protected_app):
    dash_duo.start_server(protected_app, navigate=False)  # the runner's own first look would be refused
    # As after the browser's login dialog: the credentials, given once, are kept for the site (a page whose own
    # address holds credentials cannot make requests from scripts).
    dash_duo.driver.get(dash_duo.server.url.replace("http://", "http://alice:correct%20horse@") + "/_favicon.ico")
    dash_duo.driver.get(dash_duo.server.url + "/gallery?dataset=samples")
    dash_duo.wait_for_element("#gallery-grid img")
    until(lambda: dash_duo.driver.execute_script(
        "const images = [...document.querySelectorAll('#gallery-grid img')];"
        "return images.length > 0 && images.every(image => image.complete && image.naturalWidth > 0);"), timeout=20)
    assert dash_duo.get_logs() == []


# --- who makes a request ------------------------------------------------------------------------------------------

@pytest.fixture
def class_app(tmp_path):
    """An app whose users file holds an admin, a student written before roles existed, and a viewer."""
    from dashboard.app import create_app
    from dashboard.settings import Settings

    users_file = tmp_path / "users"
    users_file.write_text(f"ada:{generate_password_hash('a', 'pbkdf2:sha256:1000')}:admin\n"
                          f"stu:{generate_password_hash('s', 'pbkdf2:sha256:1000')}\n"
                          f"vic:{generate_password_hash('v', 'pbkdf2:sha256:1000')}:viewer\n")
    return create_app(Settings(f"sqlite:///{tmp_path / 'none.db'}", tmp_path / "cache", "test-secret",
                               users_file=users_file))


def _visitor(app, path: str = "/gallery", headers: dict | None = None):
    """current_user() in a request to `path`, after the app's login check; the refusal's status if it refuses."""
    with app.server.test_request_context(path, headers=headers or {}):
        refused = app.server.preprocess_request()
        return refused.status_code if refused is not None else current_user()


def test_the_current_user_is_who_logged_in_with_their_role(class_app):
    assert _visitor(class_app, headers=basic_auth("ada", "a")) == Visitor("ada", ADMIN)
    assert _visitor(class_app, headers=basic_auth("stu", "s")) == Visitor("stu", STUDENT)
    assert _visitor(class_app, headers=basic_auth("vic", "v")) == Visitor("vic", VIEWER)
    assert _visitor(class_app, headers=basic_auth("vic", "a")) == 401
    assert _visitor(class_app, "/health") is None  # public: nobody logged in


def test_the_current_user_of_a_logged_in_browser_is_known_from_its_session(class_app):
    """A browser that logged in once is recognised by its session cookie, without a password check: its user too."""
    client = class_app.server.test_client()
    assert client.get("/_dash-layout", headers=basic_auth("stu", "s")).status_code == 200
    with client:
        client.get("/_dash-layout", headers=basic_auth("stu", "s"))
        assert current_user() == Visitor("stu", STUDENT)


def test_without_a_users_file_the_local_user_is_an_admin(tmp_path):
    from dashboard.app import create_app
    from dashboard.settings import Settings

    app = create_app(Settings(f"sqlite:///{tmp_path / 'none.db'}", tmp_path / "cache", "test-secret"))
    assert _visitor(app) == LOCAL_USER == Visitor(None, ADMIN)
