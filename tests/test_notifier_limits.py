"""The notifier does not trust the API (docs/design.md#notification): answers too big, too slow or asking for too long a
wait, against the real HTTP server on 127.0.0.1; and a job left un-notified counts as stuck."""

import email.utils
import json
import os
import subprocess
import time

import pytest

from helpers import report_day
from helpers.api_server import Huge, Trickle, TrickleTls, closed_port
from conftest import job_document, wait_for
from pipeline.reporting import alerts
from pipeline.jobs import Jobs
from pipeline.store.models import Job
from pipeline.api import BODY_CAP
from pipeline.router import Router
from pipeline.scanner import Scanner
from test_notifier import ENV, TOKEN, api, configure, fresh, notify, routed  # noqa: F401 (api: the fixture)


def test_a_routed_job_not_notified_within_stuck_after_is_stuck(tree, db):
    # Routed and not notified: the API refuses connections.
    configure(tree, f"http://127.0.0.1:{closed_port()}/jobs")
    [job] = routed(tree, db, "a.json")
    routed_at = time.time() - 300
    db.run_sql("UPDATE jobs SET routed_at = ? WHERE id = ?", (routed_at, job.id))
    notify(tree, db, time.time)
    cfg = tree.config.alerts
    now = routed_at + cfg.stuck_after
    assert alerts.stuck(db, now - 1, cfg.stuck_after, notify=True) == (0, [])     # not yet past stuck_after
    total, [row] = alerts.stuck(db, now + 1, cfg.stuck_after, notify=True)
    assert (total, row["id"], row["state"], row["since"]) == (1, job.id, "routed", routed_at)
    assert row["reason"] == "routed but not yet notified: API unreachable: connection refused (attempt 1 of 5)"
    found = alerts.findings(db, now + 1, cfg, notify=True)
    assert (found.stuck_total, found.newly_stuck, found.stuck) == (1, 1, [row])
    # Without an API, routed is the final state: nothing waits.
    assert alerts.stuck(db, now + 1, cfg.stuck_after, notify=False) == (0, [])


def test_stuck_jobs_of_both_waits_are_listed_longest_waiting_first(tree, db, clock):
    tree.write_config(extra='[api]\nendpoint = "http://127.0.0.1:9/jobs"\n[alerts]\nstuck_after = 60\n')
    jobs = Jobs(db, "t:1", clock)
    t0 = clock.now
    routed_id = _put(tree, jobs, clock, "routed.json", detected=t0, routed=t0 + 100)
    waiting_id = _put(tree, jobs, clock, "waiting.json", detected=t0 + 50)
    clock.now = t0 + 1000
    total, rows = alerts.stuck(db, clock.now, 60, notify=True)
    assert total == 2
    assert [(r["id"], r["since"], r["reason"]) for r in rows] == [
        (waiting_id, t0 + 50, None), (routed_id, t0 + 100, "routed but not yet notified (no attempt recorded)")]
    assert alerts.stuck(db, clock.now, 60, limit=1, notify=True) == (2, rows[:1])


def _put(tree, jobs, clock, name, *, detected, routed=None):
    return report_day.put_job(tree, jobs, clock, "RANK", name, drop=detected, detected=detected,
                              archived=detected + 1, routed=routed)


@pytest.mark.parametrize("header, api_keys, delay, said", [
    ("999999", {}, 600, "Retry-After 999999 s cut to api.max_retry_after, 600 s"),
    ("9" * 400, {}, 600, "Retry-After of over 10^12 s cut to api.max_retry_after, 600 s"),
    ("in 30 days", {"max_retry_after": 45}, 45, "Retry-After 2592000 s cut to api.max_retry_after, 45 s"),
    ("45", {"max_retry_after": 45}, 45, None),                    # up to the cap: as asked
])
def test_retry_after_is_honoured_up_to_max_retry_after(tree, db, api, clock, header, api_keys, delay, said):
    configure(tree, api.url, **api_keys)
    if header == "in 30 days":
        header = email.utils.formatdate(clock.now + 30 * 86400, usegmt=True)
    api.script = [(429, {"Retry-After": header})]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.attempts, job.next_attempt_at) == ("routed", 1, clock.now + delay)
    attempt = f"attempt 1 of 5; {said}" if said else "attempt 1 of 5"
    assert job.last_error == f"API answered 429 Too Many Requests ({attempt})"


def test_a_huge_2xx_answer_notifies_and_only_its_start_is_read(tree, db, api, clock):
    configure(tree, api.url)
    api.script = [Huge()]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.attempts, job.last_error) == ("notified", 1, None)
    # The notifier hung up after the first bytes: the server could send no more than what fits in
    # the sockets' buffers on top of them, far from the 300 MiB it had.
    [(sent, complete)] = wait_for(lambda: api.streamed, message="the server to see the client hang up")
    assert not complete
    assert sent < 32 * 2**20


def test_a_real_notifier_reading_a_huge_answer_stays_small(tree, db, api):
    # bin/notifier as it runs in production, its peak memory as the kernel counted it: an answer of
    # 300 MiB read whole (as requests does unless told otherwise) took it to 640 MB.
    configure(tree, api.url)
    routed(tree, db, "small.json")
    small = _peak_rss(tree.spawn("notifier", "--once", **ENV))
    api.script = [Huge()]
    tree.age(tree.drop("RANK", "huge.json"), seconds=10)
    Scanner(tree.config, Jobs(db, "test-scanner:1")).scan("startup", "startup")
    Router(tree.config, Jobs(db, "test-router:1")).run(once=True)
    job = Job.get(Job.file_name == "huge.json")
    huge = _peak_rss(tree.spawn("notifier", "--once", **ENV))
    assert huge - small < 32 * 2**20, f"peak RSS {small / 2**20:.0f} MiB, {huge / 2**20:.0f} MiB with the huge answer"
    assert fresh(job).state == "notified"
    assert [complete for _, complete in api.streamed] == [False]


def _peak_rss(proc: subprocess.Popen) -> int:
    """Bytes: the peak resident set of the process, once it has exited 0 (reaped here, hence wait4)."""
    deadline = time.monotonic() + 60
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("bin/notifier --once did not exit within 60 s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_maxrss * 1024               # Linux counts it in KiB


def test_a_huge_refusal_fails_quoting_the_start_of_its_body(tree, db, api, clock):
    configure(tree, api.url)
    api.script = [Huge(status=404)]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.failed_step, job.attempts) == ("failed", "notify", 1)
    assert job.last_error == f"API answered 404 Not Found: {'x' * 200} (not retried)"
    [(sent, complete)] = wait_for(lambda: api.streamed, message="the server to see the client hang up")
    assert not complete and sent > BODY_CAP


@pytest.mark.parametrize("cut", [0, 6, len(TOKEN) - 1])
def test_a_token_echoed_across_the_read_limit_is_not_quoted_in_part(tree, db, api, clock, cut):
    # Whitespace up to the limit, then the token echoed back: only its first ``cut`` characters are
    # read, too few to be recognised, yet whitespace collapsed would put them in the quoted excerpt.
    configure(tree, api.url)
    api.script = [(400, {}, b" " * (BODY_CAP - cut) + TOKEN.encode() + b" refused")]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.last_error) == ("failed", "API answered 400 Bad Request (not retried)")


def test_a_refusal_quoting_control_characters_is_recorded_on_both_engines(tree, db, api, clock):
    """The quoted body is one line a log and the job table hold: a NUL (PostgreSQL's text refuses it)
    or a terminal escape becomes a space, as a line break does."""
    configure(tree, api.url)
    api.script = [(400, {}, b'{"error": "bad\x00byte\x1b[31m red\r\nX: 1"}')]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.failed_step) == ("failed", "notify")
    assert job.last_error == 'API answered 400 Bad Request: {"error": "bad byte [31m red X: 1"} (not retried)'


def test_an_answer_that_breaks_off_is_retried(tree, db, api, clock):
    configure(tree, api.url)
    api.script = [Huge(size=1000, cut=10)]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.attempts, job.next_attempt_at) == ("routed", 1, clock.now + 2)
    assert job.last_error == ("API answered 200 OK but the answer broke off: the connection was closed before "
                              "the end of the answer (attempt 1 of 5)")


@pytest.mark.parametrize("headers, said", [
    ({"Content-Type": "text/plain; charset=no-such-charset"}, 'API answered 400 Bad Request: {"error": "scripted"}'),
    ({"Content-Encoding": "gzip"}, "API answered 400 Bad Request"),    # compressed although asked not to
])
def test_a_refusal_in_an_unknown_charset_or_compressed_still_fails_at_once(tree, db, api, clock, headers, said):
    configure(tree, api.url)
    api.script = [(400, headers)]
    [job] = routed(tree, db, "a.json")
    notify(tree, db, clock)
    job = fresh(job)
    assert (job.state, job.failed_step, job.last_error) == ("failed", "notify", f"{said} (not retried)")
    assert api.received[0].headers["Accept-Encoding"] == "identity"


def test_answers_read_to_their_end_keep_the_connection_for_the_next_call(tree, db, api, clock):
    configure(tree, api.url, concurrency=1)
    api.script = [200, 500, (400, {}), 200]
    routed(tree, db, "a.json", "b.json", "c.json", "d.json")
    notify(tree, db, clock)
    assert len(api.received) == 4
    assert api.connections == 1


@pytest.mark.parametrize("trickle, said", [
    (Trickle(), "API answered 200 OK but sent no complete answer within api.timeout (1 s)"),
    (Trickle(head=True, every=0.1), "API did not answer within 1 s"),   # not even its status line in time
])
def test_an_answer_that_trickles_is_cut_at_api_timeout_and_the_next_job_still_goes(tree, db, api, clock,
                                                                                    trickle, said):
    # Every byte comes well within the 1 s a socket read may wait, the whole answer in 10 s or more:
    # without a limit on the whole call, the slow job would be notified, and the other one after it.
    configure(tree, api.url, timeout=1, concurrency=1)
    slow = json.dumps(job_document("RANK", Title="slow")).encode()
    api.answer = lambda request: trickle if request.body == slow else 200
    tree.age(tree.drop("RANK", "slow.json", slow), seconds=20)        # the first job, sent first
    [slow_job, other] = routed(tree, db, "other.json")
    notify(tree, db, clock)
    slow_job, other = fresh(slow_job), fresh(other)
    assert (slow_job.state, slow_job.attempts, slow_job.next_attempt_at) == ("routed", 1, clock.now + 2)
    assert slow_job.last_error == f"{said} (attempt 1 of 5)"
    assert (other.state, other.attempts) == ("notified", 1)
    assert [r.key for r in api.received] == [slow_job.uuid, other.uuid]
    [(_, complete)] = wait_for(lambda: api.streamed, message="the server to see the client hang up")
    assert not complete


def test_an_answer_that_trickles_on_a_kept_connection_is_cut_at_api_timeout(tree, db, api, clock):
    # The second call is made on the connection the first one kept: its deadline watches that
    # pooled socket itself (no descriptor of its own) and still ends the call in time.
    configure(tree, api.url, timeout=1, concurrency=1)
    api.script = [200, Trickle(), 200]
    first, slow, last = routed(tree, db, "a.json", "b.json", "c.json")
    notify(tree, db, clock)
    first, slow, last = fresh(first), fresh(slow), fresh(last)
    assert (first.state, last.state) == ("notified", "notified")
    assert (slow.state, slow.attempts) == ("routed", 1)
    assert slow.last_error == ("API answered 200 OK but sent no complete answer within api.timeout (1 s) "
                               "(attempt 1 of 5)")
    assert [r.key for r in api.received] == [first.uuid, slow.uuid, last.uuid]
    assert api.connections == 2                       # the cut connection is not used again
    [(_, complete)] = wait_for(lambda: api.streamed, message="the server to see the client hang up")
    assert not complete                               # cut at the deadline, not read to its end


def test_a_tls_handshake_that_trickles_is_cut_at_api_timeout(tree, db, clock):
    server = TrickleTls()
    try:
        configure(tree, server.url, timeout=1)
        [job] = routed(tree, db, "a.json")
        notify(tree, db, clock)
        job = fresh(job)
        assert (job.state, job.attempts) == ("routed", 1)
        assert job.last_error == "API did not answer within 1 s (attempt 1 of 5)"
        wait_for(lambda: server.hung_up, message="the server to see the client hang up")
    finally:
        server.close()
