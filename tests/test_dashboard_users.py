"""Users and roles of the dashboard (docs/design.md#dashboard-users): the users file written by the
real bin/dashboard-user, viewers and operators, a trusted proxy's header, pages behind a login.

Pages go through Flask's test client, which runs the same WSGI application waitress serves.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import BIN, FakeClock
from pipeline import config as config_module
from pipeline.commands import check_config
from pipeline.config import ConfigError
from pipeline.web import app as web_app
from test_dashboard import BAD_NAME, PASSWORD, _token, auth, filled  # noqa: F401 - a fixture

ORIGIN = {"Origin": "http://localhost"}


def add_user(tree, name: str, role: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dashboard-user"), "add", name, "--role", role, "--password-stdin"],
                          input=password + "\n", cwd=tree.root, env=tree.env(), capture_output=True, text=True,
                          timeout=60)


def with_users(tree, extra: str = "", actions: bool = True) -> None:
    tree.write_config(f'[dashboard]\nlisten = "127.0.0.1:{tree.dashboard_port}"\nactions = {str(actions).lower()}\n'
                      f'users_file = "users"\n{extra}')


def app_client(tree, db, clock=time.time, **environ):
    return web_app.create_app(tree.config, db, environ=environ, clock=clock).test_client()


def last_actor(db, job_id: int) -> str:
    return db.run_sql("SELECT actor FROM job_events WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job_id,)).fetchone()[0]


def test_dashboard_user_writes_an_argon2_line_readable_by_its_owner_only(tree):
    with_users(tree)
    proc = add_user(tree, "ann", "operator")
    assert proc.returncode == 0 and "added operator ann" in proc.stdout, proc.stderr
    users = tree.root / "users"
    [line] = users.read_text().splitlines()
    name, role, hashed = line.split(":", 2)
    assert (name, role) == ("ann", "operator") and hashed.startswith("$argon2id$") and PASSWORD not in line
    assert users.stat().st_mode & 0o077 == 0
    again = add_user(tree, "ann", "viewer", "another password")
    assert "changed viewer ann" in again.stdout and users.read_text().count("ann:") == 1


@pytest.mark.parametrize("args, password, says, code", [
    (["add", "bad name"], PASSWORD, "name 'bad name'", 2),
    (["add", "ann", "--role", "root"], PASSWORD, "invalid choice", 2),
    (["add", "ann"], "short", "shorter than 8", 65),
])
def test_dashboard_user_refuses_bad_input_in_one_line(tree, args, password, says, code):
    with_users(tree)
    proc = subprocess.run([str(BIN / "dashboard-user"), *args, "--password-stdin"], input=password + "\n",
                          cwd=tree.root, env=tree.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == code and says in proc.stderr, proc.stderr
    assert not (tree.root / "users").exists()


def test_dashboard_user_without_a_users_file_is_a_config_error(tree):
    proc = add_user(tree, "ann", "viewer")
    assert proc.returncode == 78 and "users_file is not set" in proc.stderr


def test_a_viewer_reads_but_cannot_act_and_an_operator_acts_in_their_own_name(tree, db, filled):
    with_users(tree)
    add_user(tree, "vera", "viewer")
    add_user(tree, "otto", "operator")
    client = app_client(tree, db)
    job_id = filled[BAD_NAME]
    form = {"id": str(job_id), "csrf": _token(client, job_id), "confirm": "yes"}
    viewer = client.post("/requeue", data=form, headers={**auth("vera"), **ORIGIN})
    assert viewer.status_code == 403 and "vera is a viewer" in viewer.get_data(as_text=True)
    assert client.post("/requeue", data=form, headers={**auth("otto", "wrong password"), **ORIGIN}).status_code == 401
    assert db.run_sql("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "failed"
    done = client.post("/requeue", data=form, headers={**auth("otto"), **ORIGIN})
    assert done.status_code == 200 and "went back to detected" in done.get_data(as_text=True)
    assert last_actor(db, job_id).endswith(":otto")


def test_the_shared_password_still_makes_an_operator_beside_the_users_file(tree, db, filled):
    with_users(tree)
    add_user(tree, "vera", "viewer")
    client = app_client(tree, db, DASHBOARD_PASSWORD=PASSWORD)
    job_id = filled[BAD_NAME]
    form = {"id": str(job_id), "csrf": _token(client, job_id), "confirm": "yes"}
    # vera is in the file: the shared password is not hers, and does not make her an operator
    assert client.post("/requeue", data=form, headers={**auth("vera", "wrong password"), **ORIGIN}).status_code == 401
    assert client.post("/requeue", data=form, headers={**auth("sam"), **ORIGIN}).status_code == 200
    assert last_actor(db, job_id).endswith(":sam")


def test_failed_logins_of_file_users_are_logged_and_throttled(tree, db, caplog):
    with_users(tree, "read_requires_login = true\n")
    add_user(tree, "vera", "viewer")
    clock = FakeClock(time.time())
    client = app_client(tree, db, clock)
    said = [client.get("/", headers=auth("vera", "guess")).status_code for _ in range(6)]
    assert said[:5] == [401] * 5 and said[5] == 429
    assert client.get("/", headers=auth("vera")).status_code == 429          # even the right one, for now
    clock.now += 1
    assert client.get("/", headers=auth("vera")).status_code == 200          # its wait is over
    assert "failed dashboard login from 127.0.0.1 as user 'vera' (5 in a row)" in caplog.text


def test_read_requires_login_guards_every_page_but_the_stylesheet(tree, db, filled):
    with_users(tree, "read_requires_login = true\n", actions=False)
    add_user(tree, "vera", "viewer")
    client = app_client(tree, db)
    for url in ("/", "/jobs", "/failed", "/waiting", "/metrics", "/healthz", f"/jobs/{filled[BAD_NAME]}"):
        response = client.get(url)
        assert response.status_code == 401 and "Basic" in response.headers["WWW-Authenticate"], url
        assert client.get(url, headers=auth("vera")).status_code in (200, 503), url
    assert client.get("/static/dashboard.css").status_code == 200
    assert "vera" in client.get("/", headers=auth("vera")).get_data(as_text=True)     # who is logged in


def test_the_proxy_header_is_believed_only_from_trusted_proxies(tree, db, filled):
    with_users(tree, 'trusted_user_header = "X-Remote-User"\ntrusted_proxies = ["127.0.0.0/8"]\n'
                     'read_requires_login = true\n')
    add_user(tree, "otto", "operator")
    client = app_client(tree, db)
    job_id = filled[BAD_NAME]
    from_proxy = {"X-Remote-User": "otto"}
    assert client.get("/", headers={"X-Remote-User": "otto"}).status_code == 200
    elsewhere = {"REMOTE_ADDR": "192.0.2.9"}
    assert client.get("/", headers=from_proxy, environ_base=elsewhere).status_code == 401
    page = client.get(f"/jobs/{job_id}", headers=from_proxy).get_data(as_text=True)
    token = page.split('name="csrf" value="')[1].split('"')[0]
    form = {"id": str(job_id), "csrf": token, "confirm": "yes"}
    # a name the users file does not list is a viewer
    assert client.post("/requeue", data=form, headers={"X-Remote-User": "nobody", **ORIGIN}).status_code == 403
    assert client.post("/requeue", data=form, headers={"X-Remote-User": "a b", **ORIGIN}).status_code == 400
    assert client.post("/requeue", data=form, headers={**from_proxy, **ORIGIN}).status_code == 200
    assert last_actor(db, job_id).endswith(":otto")


@pytest.mark.parametrize("lines, says", [
    ('trusted_user_header = "X-Remote-User"\n', "trusted_user_header: needs trusted_proxies"),
    ('trusted_user_header = "X Remote"\ntrusted_proxies = ["127.0.0.1"]\n', "trusted_user_header: 'X Remote' is not"),
    ('trusted_proxies = ["10.0.0.300"]\n', "trusted_proxies: '10.0.0.300' is not an IP address"),
    ("read_requires_login = true\n", "read_requires_login: nobody could log in"),
])
def test_login_settings_that_cannot_work_are_config_errors_naming_the_key(tmp_path, lines, says):
    with pytest.raises(ConfigError, match=f"\\[dashboard\\] {says}"):
        config_module.parse(config_module.tomllib.loads(f"[dashboard]\n{lines}"), base=tmp_path)


def test_a_broken_users_file_is_a_problem_for_check_config_and_actions_need_a_login(tree):
    with_users(tree)
    (tree.root / "users").write_text("ann:admin:$argon2id$x\n")
    problems, _, _ = check_config.check(tree.config)
    assert any("users:1: user 'ann' has role 'admin'" in p for p in problems), problems
    tree.write_config(f'[dashboard]\nlisten = "127.0.0.1:{tree.dashboard_port}"\nactions = true\n')
    with pytest.raises(ConfigError, match="or dashboard.users_file"):
        web_app.password(tree.config, {})
