"""Steering from the dashboard (docs/design.md#dashboard-actions): pause and resume, hold, release,
dismiss (one job and in bulk, after a preview) and re-deliver, as forms. Each is refused to a
viewer and without this site's CSRF token or Origin, makes the call its command makes, names the
dashboard user in the audit trail, and says a refusal in one line with nothing changed.

Pages go through Flask's test client (the WSGI application waitress serves) with the real users
file written by bin/dashboard-user; the jobs are made by the real scanner and router.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pytest

from conftest import FakeClock, Tree
from pipeline.jobs import Jobs
from pipeline.scanner import Scanner
from test_dashboard_users import ORIGIN, add_user, app_client, with_users
from test_dashboard import auth
from test_steering import drop_aged, job, scan_and_route

OTTO = {**auth("otto"), **ORIGIN}
VERA = {**auth("vera"), **ORIGIN}


@pytest.fixture(scope="module")
def users(tmp_path_factory) -> Path:
    """A users file with a viewer (vera) and an operator (otto), written once by the real
    bin/dashboard-user (argon2 is slow on purpose); each test's site gets a copy."""
    tree = Tree(tmp_path_factory.mktemp("users"))
    with_users(tree)
    for name, role in (("vera", "viewer"), ("otto", "operator")):
        added = add_user(tree, name, role)
        assert added.returncode == 0, added.stderr
    return tree.root / "users"


@pytest.fixture
def site(tree, db, users):
    """Jobs of each kind a form acts on: routed, failed, detected; a viewer and an operator."""
    clock = FakeClock()
    drop_aged(tree, "RANK", "done.json")
    bad = tree.drop("RANK", "bad.json", b"{not json")
    tree.age(bad)
    scan_and_route(tree, db, clock)
    drop_aged(tree, "RANK", "new.json")
    Scanner(tree.config, Jobs(db, "test:1", clock)).scan("periodic", "periodic")
    with_users(tree)
    shutil.copy2(users, tree.root / "users")
    client = app_client(tree, db)
    ids = {name: job(db, name)["id"] for name in ("done.json", "bad.json", "new.json")}
    return client, ids


def token(client) -> str:
    page = client.get("/", headers=auth("otto")).get_data(as_text=True)
    return page.split('name="csrf" value="')[1].split('"')[0]


def trail(db) -> list[tuple]:
    return db.run_sql("SELECT actor, action, target, detail FROM steering_events ORDER BY id").fetchall()


def everything(db) -> tuple:
    return tuple(db.run_sql(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                 for t in ("jobs", "job_events", "steering_events", "pauses", "redeliveries"))


def said(response) -> str:
    """The one line a refusal shows."""
    return re.search(r'<p class="problem" id="refused">(.*?)</p>', response.get_data(as_text=True)).group(1)


def confirmation(preview: str) -> dict[str, list[str]]:
    """The fields the preview's confirm button posts, as a browser sends them."""
    form = preview.split('<form class="action" method="post"')[1].split("</form>")[0]
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form):
        fields.setdefault(name, []).append(html.unescape(value))
    return fields


def state(db, job_id: int) -> str:
    return db.run_sql("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def test_an_operator_pauses_and_resumes_a_destination_from_its_page_in_their_own_name(site, db):
    client, _ = site
    page = client.get("/destinations", headers=auth("otto")).get_data(as_text=True)
    assert 'action="/pause"' in page and 'name="name" value="Monday Rank"' in page
    form = {"csrf": token(client), "kind": "destination", "name": "Monday Rank", "reason": "printer jam",
            "for": "2h", "back": "/destinations"}
    done = client.post("/pause", data=form, headers=OTTO)
    assert done.status_code == 200 and "paused destination &#39;Monday Rank&#39;" in done.get_data(as_text=True)
    [(actor, action, target, detail)] = trail(db)
    assert actor.startswith("dashboard@") and actor.endswith(":otto")
    assert (action, target) == ("pause", "destination Monday Rank") and detail.startswith(f"paused by {actor}: printer jam")
    page = client.get("/destinations", headers=auth("otto")).get_data(as_text=True)
    assert 'action="/resume"' in page and "printer jam" in page

    assert client.post("/resume", data=form, headers=OTTO).status_code == 200
    assert trail(db)[-1][:3] == (actor, "resume", "destination Monday Rank")
    assert db.run_sql("SELECT count(*) FROM pauses").fetchone()[0] == 0


def test_routing_notification_and_a_client_pause_from_the_overview_and_clients_pages(site, db):
    client, _ = site
    csrf = token(client)
    assert 'name="kind" value="notification"' in client.get("/", headers=auth("otto")).get_data(as_text=True)
    assert client.post("/pause", data={"csrf": csrf, "kind": "routing", "back": "/"}, headers=OTTO).status_code == 200
    assert client.post("/pause", data={"csrf": csrf, "kind": "client", "name": "rank", "back": "/clients"},
                       headers=OTTO).status_code == 200
    assert [(a, t) for _, a, t, _ in trail(db)] == [("pause", "routing"), ("pause", "client RANK")]
    clients = client.get("/clients", headers=auth("vera")).get_data(as_text=True)
    assert "paused by dashboard@" in clients and 'action="/resume"' in clients     # a viewer sees the form, cannot act
    assert client.post("/resume", data={"csrf": csrf, "kind": "routing"}, headers=OTTO).status_code == 200
    assert db.run_sql("SELECT kind, name FROM pauses").fetchall() == [("client", "RANK")]
    client.post("/pause", data={"csrf": csrf, "kind": "client", "name": "quiet", "back": "/clients"}, headers=OTTO)
    clients = client.get("/clients", headers=auth("otto")).get_data(as_text=True)
    assert 'name="name" value="QUIET"' in clients, "a paused client that sent nothing today can be resumed"


@pytest.mark.parametrize("path, form", [
    ("/pause", {"kind": "routing"}),
    ("/resume", {"kind": "routing"}),
    ("/jobs/{new}/hold", {}),
    ("/jobs/{bad}/dismiss", {"reason": "dealt with"}),
    ("/jobs/{done}/redeliver", {}),
    ("/dismiss", {"state": "failed", "reason": "dealt with", "confirm": "yes"}),
    ("/release", {"state": "held", "confirm": "yes"}),
])
def test_a_viewer_gets_403_and_a_form_without_the_token_or_from_elsewhere_is_refused(site, db, path, form):
    client, ids = site
    path = path.format(new=ids["new.json"], bad=ids["bad.json"], done=ids["done.json"])
    before = everything(db)
    with_token = {**form, "csrf": token(client)}
    viewer = client.post(path, data=with_token, headers=VERA)
    assert viewer.status_code == 403 and "vera is a viewer" in viewer.get_data(as_text=True)
    assert client.post(path, data=form, headers=OTTO).status_code == 400                     # no CSRF token
    assert client.post(path, data={**form, "csrf": "stale"}, headers=OTTO).status_code == 400
    assert client.post(path, data=with_token, headers={**auth("otto"), "Origin": "http://evil.example"}).status_code == 403
    assert client.get(path, headers=auth("otto")).status_code == 405                         # POST only
    assert everything(db) == before


def test_hold_release_and_dismiss_one_job_name_the_operator_in_its_audit_trail(site, db):
    client, ids = site
    csrf, new, bad = token(client), ids["new.json"], ids["bad.json"]
    assert 'id="hold"' in client.get(f"/jobs/{new}", headers=auth("otto")).get_data(as_text=True)
    assert client.post(f"/jobs/{new}/hold", data={"csrf": csrf, "reason": "proof first"}, headers=OTTO).status_code == 200
    assert state(db, new) == "held"
    assert 'id="release"' in client.get(f"/jobs/{new}", headers=auth("otto")).get_data(as_text=True)
    released = client.post(f"/jobs/{new}/release", data={"csrf": csrf}, headers=OTTO)
    assert f"job {new} RANK/new.json: held -&gt; detected" in released.get_data(as_text=True)
    assert client.post(f"/jobs/{bad}/dismiss", data={"csrf": csrf, "reason": "sender fixed it"},
                       headers=OTTO).status_code == 200
    assert state(db, bad) == "dismissed"
    actor, _, _, detail = db.run_sql("SELECT actor, from_state, to_state, detail FROM job_events WHERE job_id = ? "
                                     "ORDER BY id DESC LIMIT 1", (bad,)).fetchone()
    assert actor.endswith(":otto") and detail == f"dismiss by {actor}: sender fixed it"
    assert [(a, t) for _, a, t, _ in trail(db)] == [("hold", f"job {new}"), ("release", f"job {new}"),
                                                    ("dismiss", f"job {bad}")]


@pytest.mark.parametrize("path, form, status, says", [
    ("/jobs/{bad}/dismiss", {"reason": "  "}, 400, "--reason is required: say why these jobs are closed"),
    ("/jobs/{bad}/release", {}, 409, "job {bad} RANK/bad.json is failed, not held: nothing changed"),
    ("/jobs/{done}/hold", {}, 409, "job {done} RANK/done.json is routed, not detected or archived: nothing changed"),
    ("/jobs/{new}/redeliver", {}, 409, "job {new} RANK/new.json is detected, not routed or notified"),
    ("/jobs/{done}/redeliver", {"destination": "Nowhere"}, 400, "destination: no [[route]] is named 'Nowhere'"),
    ("/jobs/{done}/redeliver", {"notify": "yes"}, 400, "notify: no api.endpoint is configured"),
    ("/pause", {"kind": "destination", "name": "Nowhere"}, 400, "--destination: no [[route]] is named 'Nowhere'"),
    ("/pause", {"kind": "routing", "for": "soon"}, 400, "--for: expected a duration such as 90s"),
    ("/resume", {"kind": "notification"}, 409, "notification is not paused"),
    ("/dismiss", {"state": "failed", "reason": ""}, 400, "--reason is required"),
])
def test_bad_input_is_one_line_on_the_page_and_changes_nothing(site, db, path, form, status, says):
    client, ids = site
    fill = dict(new=ids["new.json"], bad=ids["bad.json"], done=ids["done.json"])
    before = everything(db)
    response = client.post(path.format(**fill), data={**form, "csrf": token(client)}, headers=OTTO)
    assert response.status_code == status
    line = said(response).replace("&#39;", "'")
    assert line.startswith(says.format(**fill)) and "\n" not in line
    assert everything(db) == before


def test_bulk_dismissal_and_release_show_a_preview_that_changes_nothing_first(site, db, tree):
    client, ids = site
    csrf, bad, new = token(client), ids["bad.json"], ids["new.json"]
    failed_page = client.get("/failed", headers=auth("otto")).get_data(as_text=True)
    assert 'action="/dismiss"' in failed_page
    before = everything(db)
    form = {"csrf": csrf, "state": "failed", "client": "rank", "reason": "sender resent them"}
    preview = client.post("/dismiss", data=form, headers=OTTO).get_data(as_text=True)
    assert "Dismiss: preview" in preview and f"job {bad} RANK/bad.json: failed -&gt; dismissed" in preview
    assert 'name="confirm" value="yes"' in preview and 'name="reason" value="sender resent them"' in preview
    assert everything(db) == before
    assert client.post("/dismiss", data={**form, "client": "OTHER"}, headers=OTTO).get_data(as_text=True).count(
        "no failed job matches") == 1
    done = client.post("/dismiss", data=confirmation(preview), headers=OTTO).get_data(as_text=True)
    assert "Dismissed" in done and state(db, bad) == "dismissed"

    client.post(f"/jobs/{new}/hold", data={"csrf": csrf}, headers=OTTO)
    held_page = client.get("/jobs?state=held", headers=auth("otto")).get_data(as_text=True)
    assert 'action="/release"' in held_page and 'action="/dismiss"' in held_page
    held = everything(db)
    preview = client.post("/release", data={"csrf": csrf, "state": "held"}, headers=OTTO).get_data(as_text=True)
    assert f"job {new} RANK/new.json: held -&gt; detected" in preview and everything(db) == held
    client.post("/release", data=confirmation(preview), headers=OTTO)
    assert state(db, new) == "detected" and trail(db)[-1][0].endswith(":otto")


def test_a_bulk_confirmation_acts_on_the_jobs_its_preview_showed_not_on_one_that_failed_since(site, db, tree):
    client, ids = site
    csrf, bad = token(client), ids["bad.json"]
    form = {"csrf": csrf, "state": "failed", "client": "RANK", "reason": "resent"}
    preview = client.post("/dismiss", data=form, headers=OTTO).get_data(as_text=True)
    assert preview.count("-&gt; dismissed") == 1
    tree.age(tree.drop("RANK", "worse.json", b"[1,"))         # fails while the operator reads the preview
    scan_and_route(tree, db, FakeClock())
    worse = job(db, "worse.json")["id"]
    assert state(db, worse) == "failed"
    done = client.post("/dismiss", data=confirmation(preview), headers=OTTO).get_data(as_text=True)
    assert f"job {bad} RANK/bad.json" in done and "worse.json" not in done
    assert (state(db, bad), state(db, worse)) == ("dismissed", "failed")
    refused = client.post("/dismiss", data={**confirmation(preview), "job": "x1"}, headers=OTTO)
    assert refused.status_code == 400 and "job: expected a whole number" in refused.get_data(as_text=True)


def test_redeliver_a_finished_job_to_one_destination_records_a_request_in_the_operators_name(site, db):
    client, ids = site
    done = ids["done.json"]
    page = client.get(f"/jobs/{done}", headers=auth("otto")).get_data(as_text=True)
    assert 'id="redeliver"' in page and "<option>Monday Rank</option>" in page
    response = client.post(f"/jobs/{done}/redeliver", data={"csrf": token(client), "destination": "Monday Rank"},
                           headers=OTTO)
    assert response.status_code == 200 and "re-delivery requested to" in response.get_data(as_text=True)
    [(job_id, destination, actor, req_state)] = db.run_sql(
        "SELECT job_id, destination, actor, state FROM redeliveries").fetchall()
    assert (job_id, destination, req_state) == (done, "Monday Rank", "pending") and actor.endswith(":otto")
    assert trail(db)[-1][:3] == (actor, "redeliver", f"job {done}")
