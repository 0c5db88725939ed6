"""The notifier against a real HTTP server on 127.0.0.1: success, retries, backoff, failures (docs/design.md#notification)."""

import email.utils
import json
import logging
import os
import signal
import subprocess
import threading

import pytest

from helpers.api_server import HANG, ApiServer, closed_port
from conftest import BIN, job_document, states, wait_for
from pipeline import cli
from pipeline.failures import ERROR_LOG_KEYS
from pipeline.jobs import Jobs
from pipeline.states import MAX_CLAIMS
from pipeline.store.models import Job, JobEvent
from pipeline.api import retry_after
from pipeline.notifier import Notifier
from pipeline import retry
from pipeline.router import Router
from pipeline.scanner import Scanner

TOKEN = "s3cret-token-value"
ENV = {"NOTIFY_TEST_TOKEN": TOKEN}


@pytest.fixture
def api():
    server = ApiServer()
    yield server
    server.close()


def configure(tree, endpoint: str, **api) -> None:
    """Point the tree's [api] at ``endpoint``; other [api] keys as given (TOML values)."""
    lines = [f'endpoint = "{endpoint}"',
             'headers = { Authorization = "env:NOTIFY_TEST_TOKEN", X-Source = "pipeline" }']
    lines += [f"{key} = {value}" for key, value in api.items()]
    tree.write_config("[api]\n" + "\n".join(lines) + "\n", detect="min_file_age = 0.05\n")


def routed(tree, db, *names, client="RANK", content=None) -> list[Job]:
    """Drop files and take everything through the real scanner and router, in-process; all jobs, by id."""
    for i, name in enumerate(names):
        tree.age(tree.drop(client, name, content), seconds=10 - i / 10)    # scanned in this order
    jobs = Jobs(db, "test-router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)
    everything = list(Job.select().order_by(Job.id))
    assert {j.state for j in everything} == {"routed"}
    return everything


def notify(tree, db, clock, environ=ENV) -> None:
    Notifier(tree.config, Jobs(db, "notifier:1", clock), environ=environ).run(once=True)


def fresh(job: Job) -> Job:
    return Job.get_by_id(job.id)


def error_logs(tree) -> list[dict]:
    folder = tree.config.paths.error_log
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def test_notifies_with_the_file_the_headers_and_the_idempotency_key(tree, db, api, clock, caplog):
    caplog.set_level(logging.DEBUG)
    configure(tree, api.url)
    document = job_document("RANK", Title="Café ünïcode")
    [job] = routed(tree, db, "5903771.json", content=b"\xef\xbb\xbf" + json.dumps(document).encode())
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.attempts, job.notified_at, job.last_error) == ("notified", 1, clock.now, None)
    [request] = api.received
    assert json.loads(request.body) == document                 # the archived JSON, BOM stripped
    assert not request.body.startswith(b"\xef\xbb\xbf")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == job.uuid
    assert request.headers["Authorization"] == TOKEN            # env:NOTIFY_TEST_TOKEN, resolved
    assert request.headers["X-Source"] == "pipeline"
    assert TOKEN not in caplog.text
    [event] = JobEvent.select().where(JobEvent.job == job.id, JobEvent.to_state == "notified")
    assert (event.from_state, event.detail) == ("routed", "API answered 200 OK on attempt 1")


def test_500_200_is_notified_on_the_third_attempt_after_2_then_4_seconds(tree, db, api, clock):
    configure(tree, api.url)
    api.script = [500, 500, 200]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.attempts, job.next_attempt_at) == ("routed", 1, clock.now + 2)
    assert job.last_error == "API answered 500 Internal Server Error (attempt 1 of 5)"
    assert job.lease_token is None
    notify(tree, db, clock)                                     # not due yet: nothing is sent
    assert len(api.received) == 1
    clock.advance(2)
    notify(tree, db, clock)
    assert (fresh(job).attempts, fresh(job).next_attempt_at) == (2, clock.now + 4)
    clock.advance(3.9)
    notify(tree, db, clock)
    assert len(api.received) == 2
    clock.advance(0.1)
    notify(tree, db, clock)
    assert (fresh(job).state, fresh(job).attempts) == ("notified", 3)
    assert len(api.received) == 3
    details = [e.detail for e in JobEvent.select().where(JobEvent.job == job.id).order_by(JobEvent.id)][-3:]
    assert details == ["retry 1 in 2s: API answered 500 Internal Server Error (attempt 1 of 5)",
                       "retry 2 in 4s: API answered 500 Internal Server Error (attempt 2 of 5)",
                       "API answered 200 OK on attempt 3"]


def test_the_backoff_is_2_to_the_attempt_capped():
    assert [retry.delay(n, 60) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert [retry.delay(n, 5) for n in range(1, 5)] == [2, 4, 5, 5]


def test_after_max_attempts_the_job_fails_with_an_error_log(tree, db, api, clock):
    configure(tree, api.url, max_attempts=3, backoff_cap=3)
    api.script = [503, 503, 503, 200]
    [job] = routed(tree, db, "a.json")
    waits = []
    for _ in range(3):
        notify(tree, db, clock)
        waits.append(fresh(job).next_attempt_at - clock.now)
        clock.advance(60)
    job = fresh(job)
    assert waits[:2] == [2, 3]
    assert (job.state, job.failed_step, job.attempts) == ("failed", "notify", 3)
    assert job.last_error == "API answered 503 Service Unavailable (attempt 3 of 3; giving up)"
    assert len(api.received) == 3
    [log] = error_logs(tree)
    assert tuple(log) == ERROR_LOG_KEYS
    assert (log["file_name"], log["retry_count"], log["error_message"]) == ("a.json", 3, job.last_error)
    assert log["file_path"] == job.archive_path


@pytest.mark.parametrize("status, said", [
    (404, "API answered 404 Not Found: {\"error\": \"scripted\"} (not retried)"),
    (400, "API answered 400 Bad Request: {\"error\": \"scripted\"} (not retried)"),
    (301, "API answered 301 Moved Permanently; redirects are not followed, check api.endpoint"),
])
def test_other_4xx_and_redirects_fail_at_once_with_an_error_log(tree, db, api, clock, status, said):
    configure(tree, api.url)
    api.script = [status]
    [job] = routed(tree, db, "5903771.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.failed_step, job.attempts, job.last_error) == ("failed", "notify", 1, said)
    assert len(api.received) == 1
    [log] = error_logs(tree)
    assert list(log) == list(ERROR_LOG_KEYS)
    assert log == {"timestamp": log["timestamp"], "file_name": "5903771.json", "file_path": job.archive_path,
                   "error_message": said, "retry_count": 1, "first_detected": log["first_detected"],
                   "processing_duration": round(clock.now - job.detected_at, 3)}


def test_and_503_honour_retry_after_in_seconds_and_as_an_http_date(tree, db, api, clock):
    configure(tree, api.url)
    api.script = [(429, {"Retry-After": "3"}),
                  (503, {"Retry-After": email.utils.formatdate(clock.now + 3 + 7, usegmt=True)})]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    assert (fresh(job).next_attempt_at, fresh(job).last_error) == (
        clock.now + 3, "API answered 429 Too Many Requests (attempt 1 of 5)")
    clock.advance(3)
    notify(tree, db, clock)
    assert fresh(job).next_attempt_at == clock.now + 7
    clock.advance(7)
    notify(tree, db, clock)
    assert (fresh(job).state, fresh(job).attempts) == ("notified", 3)


@pytest.mark.parametrize("value, delay", [
    ("3", 3.0), ("0", 0.0), (" 120 ", 120.0),
    ("Wed, 15 Jan 2027 08:00:10 GMT", 10.0),
    ("Wed, 15 Jan 2027 07:00:00 GMT", 0.0),        # a date in the past: at once
    ("soon", None), ("", None), (None, None), ("-5", None), ("1.5", None),
    ("²", None), ("\u0663", None),                 # digits to str.isdigit, not to HTTP
    ("9" * 400, float("inf")),                     # capped by api.max_retry_after
])
def test_retry_after_values(value, delay):
    now = email.utils.parsedate_to_datetime("Wed, 15 Jan 2027 08:00:00 GMT").timestamp()
    assert retry_after(value, now) == delay


def test_connection_refused_is_retried(tree, db, clock):
    configure(tree, f"http://127.0.0.1:{closed_port()}/jobs")
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.attempts, job.next_attempt_at) == ("routed", 1, clock.now + 2)
    assert job.last_error == "API unreachable: connection refused (attempt 1 of 5)"


def test_a_server_that_never_answers_times_out_and_is_retried(tree, db, api, clock):
    configure(tree, api.url, timeout=0.3)
    api.script = [HANG, 200]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.attempts, job.next_attempt_at) == ("routed", 1, clock.now + 2)
    assert job.last_error == "API did not answer within 0.3 s (attempt 1 of 5)"
    clock.advance(2)
    notify(tree, db, clock)
    assert (fresh(job).state, fresh(job).attempts) == ("notified", 2)


def test_the_idempotency_key_is_the_jobs_on_every_attempt_and_differs_between_jobs(tree, db, api, clock):
    configure(tree, api.url)
    api.script = [500, 502, 504]
    jobs = routed(tree, db, "a.json", "b.json", "c.json")
    notify(tree, db, clock)
    clock.advance(2)
    notify(tree, db, clock)
    assert states(db) == {"notified": 3}
    keys = api.keys()
    uuids = {j.uuid for j in jobs}
    assert len(uuids) == 3
    assert len(keys) == 6 and set(keys[:3]) == set(keys[3:]) == uuids    # each job once per round


def test_a_slow_call_does_not_hold_the_others(tree, db, api, clock):
    configure(tree, api.url, concurrency=2)
    slow = json.dumps(job_document("RANK", Title="slow")).encode()
    api.answer = lambda request: HANG if request.body == slow else 200
    tree.age(tree.drop("RANK", "slow.json", slow), seconds=20)        # the first job, claimed first
    jobs = routed(tree, db, *[f"fast{i}.json" for i in range(6)])
    assert jobs[0].file_name == "slow.json"
    notifier = Notifier(tree.config, Jobs(db, "notifier:1", clock), environ=ENV)

    def run():
        try:
            notifier.run(once=True)
        finally:
            db.close()          # this thread's connection

    thread = threading.Thread(target=run)
    thread.start()
    try:
        # With the slow call still pending, every other job was sent and its outcome committed.
        wait_for(lambda: api.active == 1 and Job.select().where(Job.state == "notified").count() == 6,
                 timeout=10, message="the fast jobs notified while the slow one hangs")
        assert sorted(r.key for r in api.received if r.body != slow) == sorted(j.uuid for j in jobs[1:])
        assert fresh(jobs[0]).state == "routed"
        assert api.max_active == 2                   # api.concurrency, no more
    finally:
        api.release.set()
        thread.join(30)
    assert not thread.is_alive()
    assert states(db) == {"notified": 7}


def test_a_stop_finishes_the_calls_in_flight_and_releases_the_rest(tree, db, api, clock):
    configure(tree, api.url, concurrency=1)
    api.script = [HANG]
    first, *rest = routed(tree, db, "a.json", "b.json", "c.json")
    stopper = cli.Stopper()
    notifier = Notifier(tree.config, Jobs(db, "notifier:1", clock), stopper, environ=ENV)

    def run():
        try:
            notifier.run()
        finally:
            db.close()

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: api.active == 1, timeout=10, message="the first call in flight")
    stopper.request()
    api.release.set()
    thread.join(30)
    assert not thread.is_alive()
    assert api.keys() == [first.uuid]
    assert fresh(first).state == "notified"
    for job in map(fresh, rest):          # claimed, never sent, given back: due at once, claim not counted
        assert (job.state, job.lease_token, job.claims, job.attempts) == ("routed", None, 0, 0)
        assert job.next_attempt_at <= clock.now


def test_a_missing_archive_copy_fails_at_once_without_a_call(tree, db, api, clock):
    configure(tree, api.url)
    [job] = routed(tree, db, "a.json")
    os.unlink(job.archive_path)
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.failed_step, job.attempts) == ("failed", "notify", 0)
    assert job.last_error == f"archived copy {job.archive_path} is missing: nothing to send"
    assert api.received == []
    assert len(error_logs(tree)) == 1


def test_a_job_whose_archive_copy_a_newer_file_replaced_does_not_send_the_newer_content(tree, db, api, clock):
    configure(tree, api.url)
    routed(tree, db, "a.json", content=job_document("RANK", Title="first"))
    [older, newer] = routed(tree, db, "a.json", content=job_document("RANK", Title="second"))
    assert older.archive_path == newer.archive_path
    notify(tree, db, clock)
    older, newer = fresh(older), fresh(newer)
    assert (older.state, older.failed_step, older.attempts) == ("failed", "notify", 0)
    assert "was replaced by a newer file of the same name before it was sent" in older.last_error
    assert newer.state == "notified"
    assert api.keys() == [newer.uuid]


def test_a_job_claimed_too_often_fails_instead_of_looping(tree, db, api, clock):
    configure(tree, api.url)
    [job] = routed(tree, db, "a.json")
    Job.update(claims=MAX_CLAIMS).where(Job.id == job.id).execute()   # five notifiers died on it
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.failed_step) == ("failed", "notify")
    assert job.last_error.startswith(f"claimed {MAX_CLAIMS} times without an outcome being recorded")
    assert api.received == []


def test_bin_notifier_once_end_to_end_never_logs_the_token(tree, db, api):
    configure(tree, api.url)
    tree.age(tree.drop("RANK", "a.json"))
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    proc = tree.run("notifier", "--once", **ENV)
    assert states(db) == {"notified": 1}
    assert api.received[0].headers["Authorization"] == TOKEN
    assert TOKEN not in proc.stderr and TOKEN not in proc.stdout
    assert "notified RANK/a.json" in proc.stderr


def test_without_an_endpoint_the_notifier_idles_and_once_exits_at_once(tree, db):
    [job] = routed(tree, db, "a.json")
    proc = tree.run("notifier", "--once")
    assert "no api.endpoint configured" in proc.stderr
    assert fresh(job).state == "routed"


def test_a_header_from_a_missing_variable_is_a_configuration_error(tree, db, api):
    configure(tree, api.url)
    env = dict(tree.env())
    env.pop("NOTIFY_TEST_TOKEN", None)
    proc = subprocess.run([str(BIN / "notifier"), "--once"], cwd=tree.root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == cli.EXIT_CONFIG
    assert "Authorization" in proc.stderr and "NOTIFY_TEST_TOKEN" in proc.stderr


def test_a_notifier_killed_between_attempts_resumes_the_schedule(tree, db, api):
    configure(tree, api.url, backoff_cap=2, concurrency=1)
    api.script = [500, 500, 200]
    [job] = routed(tree, db, "a.json")
    notifier = tree.spawn("notifier", **ENV)
    try:
        wait_for(lambda: fresh(job).attempts == 1, message="the first attempt committed")
        os.kill(notifier.pid, signal.SIGKILL)
        notifier.wait(10)
        first = fresh(job)
        assert (first.state, first.attempts, first.lease_token) == ("routed", 1, None)
        assert len(api.received) == 1
        notifier = tree.spawn("notifier", **ENV)       # at once, before the retry is due
        wait_for(lambda: fresh(job).state == "notified", message="the job notified after the restart")
        notifier.send_signal(signal.SIGTERM)
        assert notifier.wait(20) == 0
    finally:
        if notifier.poll() is None:
            notifier.kill()
            notifier.wait(10)
    assert fresh(job).attempts == 3
    assert api.keys() == [job.uuid] * 3
    waits = list(JobEvent.select().where(JobEvent.job == job.id, JobEvent.from_state == "routed",
                                          JobEvent.to_state == "routed").order_by(JobEvent.id))
    assert [e.detail.split(":")[0] for e in waits] == ["retry 1 in 2s", "retry 2 in 2s"]
    # No attempt was made before its scheduled time, and none was lost or repeated.
    assert first.next_attempt_at == waits[0].at + 2
    assert api.received[1].at >= first.next_attempt_at
    assert api.received[2].at >= waits[1].at + 2


def test_help():
    proc = subprocess.run([str(BIN / "notifier"), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "--once" in proc.stdout and "--config" in proc.stdout and "api.endpoint" in proc.stdout
