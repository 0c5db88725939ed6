"""The dashboard against hostile requests: bad values, foreign Host headers, a database that is
gone, password guessing. Each is answered with a status that says so and one line, never a 500.

Pages go through Flask's test client, which runs the same WSGI application waitress serves.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from conftest import FakeClock
from helpers.smtp_server import free_port
from pipeline.store import postgres
from pipeline.web import app as web_app
from test_dashboard import BAD_NAME, PASSWORD, _token, auth, client_for, filled  # noqa: F401 - a fixture

ID_MAX = 2**63 - 1

# Which kinds of parameter must refuse each value; the others take it as it is. Kinds: "number"
# (ids, the page key), "text" (the name and client searched), "choice" (state, step), "time".
ALL = {"number", "text", "choice", "time"}
NOT_TEXT = {"number", "choice", "time"}
HOSTILE = {
    "²": NOT_TEXT,                          # isdigit() but not a number int() takes
    "٣": NOT_TEXT,                          # isdecimal(), and int() takes it: still not ours
    "1" * 5000: ALL,                        # past int()'s 4,300 digits, and past any file name
    str(ID_MAX + 1): NOT_TEXT,              # past what SQLite binds and BIGINT holds
    "9" * 20: NOT_TEXT,
    str(ID_MAX): {"choice", "time"},        # the largest id: a number like any other
    "0": {"choice", "time"},
    "-1": NOT_TEXT,
    " 1": NOT_TEXT,
    "+1": NOT_TEXT,
    "1e3": NOT_TEXT,
    "0x10": NOT_TEXT,
    "\x00": ALL,                            # PostgreSQL takes no NUL in a string
    "a\x00b": ALL,
    "line\nfeed": ALL,
    "\x1b[31mred": ALL,
    "\u2028": ALL,
    "x" * 100_000: ALL,
    "%_'\"<script>": NOT_TEXT,
    "☃" * 255: NOT_TEXT,                    # long, but as long as a file name may be
    "2026-13-01": NOT_TEXT,
    "9999-12-31T23:59:59-23:59": {"number", "choice"},
    "0001-01-01T00:00+14:00": {"number", "choice"},
}

KINDS = {"q": "text", "client": "text", "state": "choice", "step": "choice", "since": "time", "before": "number",
         "id": "number"}


def _problem(response) -> str:
    """The one line a 400 page says."""
    [line] = re.findall(r'<p class="problem">(.*?)</p>', response.get_data(as_text=True), re.S)
    assert "\n" not in line
    return line


def _expect(response, name: str, value: str, where: str) -> None:
    refused = KINDS[name] in HOSTILE[value]
    assert response.status_code == (400 if refused else 200), (where, name, value[:30], response.status_code)
    if refused:
        assert _problem(response).startswith(f"{name}: "), (where, name, value[:30])


def test_hostile_values_in_every_parameter_of_every_route_are_400_with_one_line(tree, db, filled):
    client = client_for(tree, db, actions=True, DASHBOARD_PASSWORD=PASSWORD)
    job_id = filled[BAD_NAME]
    token = _token(client, job_id)
    for value in HOSTILE:
        _every_route(client, value, job_id, token)
    assert db.run_sql("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "failed"


def _every_route(client, value: str, job_id: int, token: str) -> None:
    for param in ("q", "client", "state", "step", "since", "before"):
        _expect(client.get("/jobs", query_string={param: value}), param, value, "/jobs")
    for param in ("q", "client", "step", "since", "before"):
        _expect(client.get("/failed", query_string={param: value}), param, value, "/failed")
    assert client.get("/failed", query_string={"state": value}).status_code == 200     # /failed has no state
    for path in ("/jobs/{}", "/jobs/{}/archived"):
        response = client.get(path.format(quote(value, safe="")))
        if "number" in HOSTILE[value]:
            assert response.status_code == 400 and _problem(response).startswith("job id: "), (path, value[:30])
        else:
            assert response.status_code == 404, (path, value[:30])          # a good id that names no job
    for path in ("/", "/waiting", "/healthz", "/metrics"):                  # they take no parameter
        assert client.get(path, query_string={"q": value, "before": value}).status_code in (200, 503), path
    for field in ("id", "client", "step", "since"):
        refused = KINDS[field] in HOSTILE[value]
        form = {"csrf": token, "id": str(job_id), field: value, "confirm": "yes" if refused else "no"}
        response = client.post("/requeue", data=form, headers={**auth(), "Origin": "http://localhost"})
        assert response.status_code == (400 if refused else 200), (field, value[:30])
        if refused:
            assert _problem(response).startswith(f"{field}: "), (field, value[:30])


def test_a_requeue_naming_no_usable_id_chooses_nothing_rather_than_every_failed_job(tree, db, filled):
    client = client_for(tree, db, actions=True, DASHBOARD_PASSWORD=PASSWORD)
    form = {"csrf": _token(client, filled[BAD_NAME]), "confirm": "yes", "id": "x"}
    response = client.post("/requeue", data=form, headers={**auth(), "Origin": "http://localhost"})
    assert response.status_code == 400 and _problem(response).startswith("id: expected a whole number")
    assert db.run_sql("SELECT count(*) FROM jobs WHERE state = 'failed'").fetchone()[0] == 1


# -- the Host header (DNS rebinding) -------------------------------------------------------------------

def _with_dashboard(tree, lines: str) -> None:
    tree.write_config(f"[dashboard]\n{lines}\n")


def test_only_the_names_the_dashboard_is_reached_by_are_answered(tree, db, filled):
    port = tree.dashboard_port
    client = client_for(tree, db)                       # listening on 127.0.0.1
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "127.0.0.1"):
        assert client.get("/healthz", headers={"Host": host}).status_code in (200, 503), host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"localhost:{port}:1",
                 "local host", "", f"[::2]:{port}", "localhost\x00.evil.example"):
        for path in ("/", "/healthz", "/metrics", f"/jobs/{filled['ok-1.json']}", "/static/dashboard.css"):
            response = client.get(path, headers={"Host": host})
            assert response.status_code == 400, (host, path)
            body = response.get_data(as_text=True)
            assert "jobs_by_state" not in body and "ok-1.json" not in body and "hotfolder_jobs" not in body
            assert "is not a name of this dashboard" in _problem(response), (host, path)


def test_a_name_in_dashboard_hosts_is_answered_and_loopback_names_only_on_loopback(tree, db):
    _with_dashboard(tree, 'listen = "192.0.2.10:8750"\nhosts = ["Dashboard.example.com", "[2001:db8::1]"]')
    client = client_for(tree, db)
    for host in ("dashboard.example.com", "DASHBOARD.EXAMPLE.COM:443", "192.0.2.10:8750", "[2001:db8:0::1]:8750"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    for host in ("localhost", "127.0.0.1:8750", "example.com", "evil.dashboard.example.com"):
        assert client.get("/", headers={"Host": host}).status_code == 400, host
    _with_dashboard(tree, 'listen = "0.0.0.0:8750"')            # every address, loopback among them
    client = client_for(tree, db)
    assert client.get("/", headers={"Host": "localhost:8750"}).status_code == 200
    assert client.get("/", headers={"Host": "dashboard.example.com"}).status_code == 400


# -- the database gone -----------------------------------------------------------------------------------

PAGES = ("/", "/jobs", "/failed", "/waiting", "/jobs/1", "/jobs/1/archived")


def _says_the_database_is_gone(client, says: str) -> None:
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 503, path
        assert _problem(response).startswith(says), path
    healthz = client.get("/healthz")
    assert healthz.status_code == 503 and healthz.is_json
    document = healthz.get_json()
    assert document["healthy"] is False and document["nagios"] == 3
    [problem] = document["problems"]
    assert problem.startswith(says) and "\n" not in problem
    metrics = client.get("/metrics")
    assert metrics.status_code == 503 and metrics.get_data(as_text=True).startswith(says)
    assert len(metrics.get_data(as_text=True).splitlines()) == 1


def test_the_tables_dropped_every_page_says_503_database_unusable(tree, db):
    client = client_for(tree, db)
    assert client.get("/").status_code == 200
    with db.write():
        db.execute_sql("DROP TABLE jobs CASCADE" if tree.engine == "postgresql" else "DROP TABLE jobs")
    _says_the_database_is_gone(client, "database unusable: ")


@pytest.mark.postgresql_only
def test_an_unreachable_postgresql_server_every_page_says_503_database_unreachable(tree):
    unreachable = postgres.Database(f"postgresql://pipeline@127.0.0.1:{free_port()}/pipeline")   # nothing listens
    client = web_app.create_app(tree.config, unreachable).test_client()
    _says_the_database_is_gone(client, "database unreachable: ")
    assert "Connection refused" in client.get("/healthz").get_json()["problems"][0]


# -- password guessing -------------------------------------------------------------------------------------

def test_failed_logins_are_logged_and_throttled_per_address_with_429_and_retry_after(tree, db, filled, caplog):
    tree.write_config(f'[dashboard]\nlisten = "127.0.0.1:{tree.dashboard_port}"\nactions = true\n')
    clock = FakeClock()
    client = web_app.create_app(tree.config, db, clock=clock, environ={"DASHBOARD_PASSWORD": PASSWORD}).test_client()
    job_id = filled[BAD_NAME]
    form = {"id": str(job_id), "csrf": _token(client, job_id)}       # a preview: nothing changes

    def post(password, address="192.0.2.7"):
        return client.post("/requeue", data=form, environ_base={"REMOTE_ADDR": address},
                           headers={**auth("mallory", password), "Origin": "http://localhost"})

    caplog.set_level("WARNING", logger="pipeline.web.app")
    for guess in range(5):
        assert post(f"guess-{guess}").status_code == 401
    failures = [r.getMessage() for r in caplog.records if "failed dashboard login" in r.getMessage()]
    assert failures == [f"failed dashboard login from 192.0.2.7 as user 'mallory' ({n} in a row)" for n in range(1, 6)]
    assert all(r.levelname == "WARNING" for r in caplog.records if "failed dashboard login" in r.getMessage())
    throttled = post(PASSWORD)                          # even the right password waits: a guess tells nothing
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert _problem(throttled) == "too many failed logins from 192.0.2.7: try again in 1s"
    assert post("guess-x", address="192.0.2.8").status_code == 401     # another address is not held up
    clock.advance(1)
    assert post("guess-5").status_code == 401
    assert post("guess-6").headers["Retry-After"] == "2"                # each failure doubles the wait
    clock.advance(2)
    assert post(PASSWORD).status_code == 200                            # a success starts afresh
    assert post("guess-7").status_code == 401 and post("guess-8").status_code == 401
    for guess in range(3):
        post(f"again-{guess}")
    assert post("guess-9").status_code == 429
    clock.advance(3601)                                                 # an hour quiet: afresh too
    assert post("guess-10").status_code == 401
    assert "guess-" not in caplog.text and PASSWORD not in caplog.text
    assert db.run_sql("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "failed"
