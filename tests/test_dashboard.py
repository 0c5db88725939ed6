"""The dashboard over HTTP (docs/design.md#operating-it): a real database filled by the real scanner and router.

Pages go through Flask's test client, which runs the same WSGI application waitress serves
(tests/system/test_dashboard_browser.py drives the real bin/dashboard in a browser).
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import report_day
from pipeline import jobs as jobs_module
from pipeline.web import app as web_app
from pipeline import trends
from pipeline.config import ConfigError
from pipeline.jobs import Jobs
from pipeline.router import Router
from pipeline.scanner import Scanner
from test_status import beat_all

from conftest import FakeClock, job_document

HOSTILE_NAME = "<img src=x onerror=alert(1)>%'\"é.json"
HOSTILE_TITLE = "<script>alert('title')</script>"
BAD_NAME = "<svg onload=bad()>.json"
HOSTILE_CATEGORY = "<b>\"cat\"</b>&%"
PASSWORD = "correct horse"


def route_everything(tree, db) -> None:
    jobs = Jobs(db, "test:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)


@pytest.fixture
def filled(tree, db):
    """A routed job with a hostile name, title and category; a failed one with a hostile name too."""
    tree.drop("RANK", HOSTILE_NAME, job_document("RANK", HOSTILE_CATEGORY, Title=HOSTILE_TITLE))
    tree.drop("RANK", "ok-1.json")
    tree.drop("LOREAL", BAD_NAME, "{not json")
    route_everything(tree, db)
    return {row[1]: row[0] for row in db.run_sql("SELECT id, file_name FROM jobs")}


def client_for(tree, db, actions: bool = False, **environ):
    if actions:
        tree.write_config(f'[dashboard]\nlisten = "127.0.0.1:{tree.dashboard_port}"\nactions = true\n')
    app = web_app.create_app(tree.config, db, environ=environ)
    return app.test_client()


def auth(user: str = "alice", password: str = PASSWORD) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_hostile_names_titles_and_categories_come_out_escaped_on_every_page(tree, db, filled):
    client = client_for(tree, db)
    pages = ["/", "/jobs", "/jobs?q=%3Cimg", "/failed", "/waiting"] + [f"/jobs/{i}" for i in filled.values()]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.get_data(as_text=True)
        for raw in ("<img src=x", "<script>alert", "<svg onload", "<b>\"cat"):
            assert raw not in body, (url, raw)
    job_page = client.get(f"/jobs/{filled[HOSTILE_NAME]}").get_data(as_text=True)
    assert "&lt;img src=x onerror=alert(1)&gt;%&#39;&#34;é.json" in job_page
    assert "&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;" in job_page        # title, archived JSON
    assert "&lt;b&gt;&#34;cat&#34;&lt;/b&gt;&amp;%" in job_page


def test_every_response_carries_the_security_headers(tree, db, filled):
    client = client_for(tree, db)
    for url in ("/", "/jobs", "/healthz", "/metrics", "/nothing-here", f"/jobs/{filled['ok-1.json']}/archived"):
        headers = client.get(url).headers
        assert "script-src" not in headers["Content-Security-Policy"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_job_search_filters_and_pages_by_key(tree, db):
    for i in range(60):
        tree.drop("RANK", f"page-{i:02}.json")
    tree.drop("RANK", "100%_literal.json")
    tree.drop("LOREAL", "x.json")
    tree.drop("LOREAL", "broken.json", "[1, 2]")
    route_everything(tree, db)
    client = client_for(tree, db)

    def page(url: str) -> str:
        return client.get(url).get_data(as_text=True).replace("<wbr>", "")     # long names' break opportunities

    first = page("/jobs?q=page-")
    assert first.count('class="name"><a href="/jobs/') == 50 and "older jobs" in first
    before = first.split("before=")[1].split('"')[0]
    second = page(f"/jobs?q=page-&before={before}")
    assert second.count('class="name"><a href="/jobs/') == 10 and "older jobs" not in second

    assert "100%_literal.json" in page("/jobs?q=0%25_")
    assert "no job matches" in page("/jobs?q=%25_x")     # % and _ are literal
    loreal = page("/jobs?client=loreal")
    assert "x.json" in loreal and "page-01" not in loreal
    failed = page("/jobs?state=failed&step=validate")
    assert "broken.json" in failed and "x.json" not in failed
    assert "no job matches" in page("/jobs?since=2999-01-01")


@pytest.mark.parametrize("query, problem", [
    ("since=yesterday", "since: expected an ISO date"),
    ("state=lost", "state: expected one of"),
    ("step=fly", "step: expected one of"),
])
def test_a_bad_filter_is_a_400_with_one_line(tree, db, filled, query, problem):
    response = client_for(tree, db).get(f"/jobs?{query}")
    assert response.status_code == 400
    assert problem in response.get_data(as_text=True)


def test_a_job_page_tells_its_whole_story(tree, db, filled):
    client = client_for(tree, db)
    page = client.get(f"/jobs/{filled['ok-1.json']}").get_data(as_text=True)
    for seen in ("Audit trail", "detected", "archived", "routed", "test:1", "Monday Rank",
                 str(tree.dest("Monday Rank") / "ok-1.json"), "What routing would do with it now", "download"):
        assert seen in page, seen
    failed = client.get(f"/jobs/{filled[BAD_NAME]}").get_data(as_text=True)
    assert "invalid JSON" in failed and "error.json" in failed and "in FAILED" in failed
    download = client.get(f"/jobs/{filled['ok-1.json']}/archived")
    assert download.status_code == 200 and b'"ClientCode": "RANK"' in download.data
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert client.get("/jobs/999999").status_code == 404


def test_files_the_table_names_are_read_only_inside_their_folders(tree, db, filled):
    job_id = filled["ok-1.json"]
    secret = tree.root / "secret.json"
    secret.write_text('{"password": "x"}')
    db.run_sql("UPDATE jobs SET archive_path = ? WHERE id = ?", (str(secret), job_id))
    client = client_for(tree, db)
    assert client.get(f"/jobs/{job_id}/archived").status_code == 404
    link = tree.store / "RANK" / "link.json"
    link.symlink_to(secret)
    db.run_sql("UPDATE jobs SET archive_path = ? WHERE id = ?", (str(link), job_id))
    assert client.get(f"/jobs/{job_id}/archived").status_code == 404
    assert "neither an archived copy" in client.get(f"/jobs/{job_id}").get_data(as_text=True)


def test_healthz_is_bin_status_json_503_when_programs_are_missing_200_when_healthy(tree, db, filled):
    client = client_for(tree, db)
    unhealthy = client.get("/healthz")
    assert unhealthy.status_code == 503
    assert any("not running" in p for p in unhealthy.get_json()["problems"])
    beat_all(db)
    healthy = client.get("/healthz")
    assert healthy.status_code == 200 and healthy.get_json()["healthy"] is True
    status = tree.run("status", "--json")
    assert healthy.get_json()["jobs_by_state"] == json.loads(status.stdout)["jobs_by_state"]


def test_the_trends_count_a_job_in_the_hour_and_local_day_it_was_routed_in_with_its_latency(tree, db):
    # Report day and zone of the helpers: Europe/London, the config's default report.timezone.
    clock = FakeClock(report_day.at(9))
    for i, (hh, mm, waited) in enumerate([(9, 10, 5), (9, 50, 1), (10, 50, 2), (0, 30, 1)]):
        report_day.put_job(tree, Jobs(db, "test:1", clock), clock, "RANK", f"{i}.json",
                           drop=report_day.at(hh, mm - waited), detected=report_day.at(hh, mm - waited),
                           routed=report_day.at(hh, mm), to=("Monday Rank",))
    now = report_day.at(11, 30)
    hours = trends.hourly(db, now, "Europe/London")
    assert [b.label for b in hours[-4:]] == ["08:00", "09:00", "10:00", "11:00"]
    assert [b.jobs for b in hours[-4:]] == [0, 2, 1, 0]              # 09:50 is nine o'clock's, not ten's
    assert (hours[-3].p50, hours[-3].p95) == (pytest.approx(60), pytest.approx(300))   # nearest rank of 60, 300
    assert hours[-1].end == now and hours[-1].p50 is None
    days = trends.daily(db, now, "Europe/London")
    assert [b.label for b in days[-2:]] == ["07-14", "07-15"] and days[-1].jobs == 4 and days[-2].jobs == 0
    assert days[-1].p95 == pytest.approx(300) and len(days) == 14
    db.run_sql("DELETE FROM jobs")
    assert trends.daily(db, now, "Europe/London")[-1].jobs == 0       # today is read again each time


def test_healthz_and_nagios_give_one_verdict_200_while_files_flow_503_when_critical(tree, db):
    tree.write_config(extra="[alerts]\nstuck_after = 1\n")
    tree.hot.mkdir(parents=True)
    client = client_for(tree, db)

    def verdicts():
        healthz = client.get("/healthz")
        nagios = tree.run("status", "--nagios", check=False)
        return healthz.status_code, healthz.get_json()["verdict"], nagios.returncode, nagios.stdout.split(" - ")[0]

    beat_all(db)
    assert verdicts() == (200, "OK", 0, "PIPELINE OK")
    tree.drop("RANK", "stuck.json")
    Scanner(tree.config, Jobs(db, "test:1", clock=lambda: time.time() - 5)).scan("startup", "startup")
    assert verdicts() == (200, "WARNING", 1, "PIPELINE WARNING")          # files flow; a person should look
    assert "1 job(s) waiting longer than 1s" in client.get("/healthz").get_json()["problems"][0]
    with db.write():
        db.run_sql("DELETE FROM heartbeats WHERE program LIKE 'router%'")
    assert verdicts() == (503, "CRITICAL", 2, "PIPELINE CRITICAL")        # nothing routes


def _families(client) -> dict:
    text = client.get("/metrics").get_data(as_text=True)
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, **labels) -> float:
    return next(s.value for s in family.samples if s.labels == labels)


def test_metrics_parse_and_their_counters_survive_pruning(tree, db, filled):
    client = client_for(tree, db)
    before = _families(client)
    assert _value(before["hotfolder_jobs"], state="routed") == 2
    assert _value(before["hotfolder_jobs_finished"], client="RANK", outcome="routed") == 2
    assert _value(before["hotfolder_jobs_finished"], client="LOREAL", outcome="failed") == 1
    assert _value(before["hotfolder_deliveries"], destination="Monday Rank") == 2
    assert _value(before["hotfolder_healthy"]) == 0
    assert before["hotfolder_build_info"].samples[0].labels["version"]
    assert {"hotfolder_stuck_jobs", "hotfolder_program_last_heartbeat_timestamp_seconds",
            "hotfolder_last_scan_timestamp_seconds", "hotfolder_report_last_sent_timestamp_seconds",
            "hotfolder_oldest_waiting_seconds", "hotfolder_notify_attempts"} <= set(before)
    assert _value(before["hotfolder_last_scan_timestamp_seconds"], kind="startup") > 1.7e9

    assert jobs_module.prune(db, time.time() + 3600) == 3
    after = _families(client)
    assert _value(after["hotfolder_jobs"], state="routed") == 0
    assert _value(after["hotfolder_jobs_finished"], client="RANK", outcome="routed") == 2
    assert _value(after["hotfolder_deliveries"], destination="Monday Rank") == 2
    assert _value(after["hotfolder_jobs_finished"], client="LOREAL", outcome="failed") == 1


def test_actions_are_off_by_default(tree, db, filled):
    client = client_for(tree, db)
    assert "Requeue" not in client.get("/failed").get_data(as_text=True)
    assert "Requeue" not in client.get(f"/jobs/{filled[BAD_NAME]}").get_data(as_text=True)
    response = client.post("/requeue", data={"id": "1"}, headers={**auth(), "Origin": "http://localhost"})
    assert response.status_code == 403 and "actions are off" in response.get_data(as_text=True)


def test_actions_on_without_a_password_is_a_configuration_error(tree, db):
    with pytest.raises(ConfigError, match="DASHBOARD_PASSWORD"):
        client_for(tree, db, actions=True)
    tree.write_config(f'[dashboard]\nlisten = "127.0.0.1:{tree.dashboard_port}"\nactions = true\n')
    proc = tree.run("dashboard", check=False, timeout=30, DASHBOARD_PASSWORD="")
    assert proc.returncode == 78 and "DASHBOARD_PASSWORD" in proc.stderr, proc.stderr


def _token(client, job_id: int) -> str:
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    return page.split('name="csrf" value="')[1].split('"')[0]


def test_a_post_needs_the_password_this_sites_origin_and_the_csrf_token(tree, db, filled):
    client = client_for(tree, db, actions=True, DASHBOARD_PASSWORD=PASSWORD)
    job_id = filled[BAD_NAME]
    token = _token(client, job_id)
    origin = {"Origin": "http://localhost"}
    form = {"id": str(job_id), "csrf": token, "confirm": "yes"}
    no_auth = client.post("/requeue", data=form, headers=origin)
    assert no_auth.status_code == 401 and "Basic" in no_auth.headers["WWW-Authenticate"]
    assert client.post("/requeue", data=form, headers={**auth(password="wrong"), **origin}).status_code == 401
    assert client.post("/requeue", data=form, headers={**auth(user="bad user\n"), **origin}).status_code == 401
    assert client.post("/requeue", data=form, headers={**auth(), "Origin": "http://evil.example"}).status_code == 403
    assert client.post("/requeue", data=form, headers=auth()).status_code == 403          # no Origin nor Referer
    assert client.post("/requeue", data={**form, "csrf": ""}, headers={**auth(), **origin}).status_code == 400
    assert client.post("/requeue", data={**form, "csrf": "x" * 64}, headers={**auth(), **origin}).status_code == 400
    assert client.get("/requeue").status_code == 405
    assert db.run_sql("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "failed"


def test_a_requeue_from_the_browser_writes_what_bin_requeue_writes_and_names_the_user(tree, db, filled):
    tree.drop("LOREAL", "twin.json", "{not json")
    route_everything(tree, db)
    twin = db.run_sql("SELECT id FROM jobs WHERE file_name = 'twin.json'").fetchone()[0]
    client = client_for(tree, db, actions=True, DASHBOARD_PASSWORD=PASSWORD)
    job_id = filled[BAD_NAME]
    headers = {**auth("alice"), "Origin": "http://localhost"}
    form = {"id": str(job_id), "csrf": _token(client, job_id)}

    preview = client.post("/requeue", data=form, headers=headers)
    assert preview.status_code == 200 and "would go back to detected" in preview.get_data(as_text=True)
    assert db.run_sql("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "failed"

    done = client.post("/requeue", data={**form, "confirm": "yes"}, headers=headers)
    assert done.status_code == 200 and "went back to detected" in done.get_data(as_text=True)
    tree.run("requeue", "--failed", "--id", str(twin))

    def last_event(i):
        return db.run_sql("SELECT from_state, to_state, actor, detail FROM job_events WHERE job_id = ? "
                              "ORDER BY id DESC LIMIT 1", (i,)).fetchone()
    ours, theirs = last_event(job_id), last_event(twin)
    assert ours[:2] == theirs[:2] == ("failed", "detected")
    assert ours[2].startswith("dashboard@") and ours[2].endswith(":alice")
    stamp = re.compile(r"\d{8}_\d{6}_")           # FAILED names carry the second each one failed in
    assert stamp.sub("", ours[3].replace(BAD_NAME, "twin.json")) == stamp.sub("", theirs[3])
    assert (tree.hot / "LOREAL" / BAD_NAME).exists()


def test_a_filtered_requeue_previews_the_set_first(tree, db, filled):
    tree.drop("LOREAL", "second.json", "{not json")
    tree.drop("RANK", "third.json", "{not json")
    route_everything(tree, db)
    client = client_for(tree, db, actions=True, DASHBOARD_PASSWORD=PASSWORD)
    headers = {**auth(), "Origin": "http://localhost"}
    token = _token(client, filled[BAD_NAME])
    preview = client.post("/requeue", data={"client": "loreal", "step": "validate", "csrf": token}, headers=headers)
    text = preview.get_data(as_text=True)
    assert text.count("would go back to detected") == 2 and "third.json" not in text and "Requeue 2 job(s)" in text
    done = client.post("/requeue", data={"client": "loreal", "step": "validate", "csrf": token, "confirm": "yes"},
                       headers=headers)
    assert done.get_data(as_text=True).count("went back to detected") == 2
    states = dict(db.run_sql("SELECT file_name, state FROM jobs WHERE state IN ('failed', 'detected')").fetchall())
    assert states["third.json"] == "failed" and states["second.json"] == "detected"


@pytest.mark.parametrize("field, value, says", [("since", "last week", "since: expected an ISO date"),
                                                ("step", "fly", "step: expected one of detect, validate")])
def test_a_requeue_with_a_bad_filter_is_400_with_one_line_and_changes_nothing(tree, db, filled, field, value, says):
    client = client_for(tree, db, actions=True, DASHBOARD_PASSWORD=PASSWORD)
    job_id = filled[BAD_NAME]
    form = {"csrf": _token(client, job_id), "confirm": "yes", field: value}
    response = client.post("/requeue", data=form, headers={**auth(), "Origin": "http://localhost"})
    assert response.status_code == 400 and says in response.get_data(as_text=True)
    assert db.run_sql("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "failed"
