"""The notifier does not trust the API (SPEC §7): answers too big, too slow or asking for too long a
wait, against the real HTTP server on 127.0.0.1; and a job left un-notified counts as stuck."""

import email.utils
import time

import pytest

import report_day
from api_server import closed_port
from pipeline import alerts
from pipeline.jobs import Jobs
from test_notifier import ENV, api, configure, fresh, notify, routed  # noqa: F401 (api: the fixture)


def test_a_routed_job_not_notified_within_stuck_after_is_stuck(tree, db):
    # Routed and not notified: the API refuses connections.
    configure(tree, f"http://127.0.0.1:{closed_port()}/jobs")
    [job] = routed(tree, db, "a.json")
    routed_at = time.time() - 300
    db.execute_sql("UPDATE jobs SET routed_at = ? WHERE id = ?", (routed_at, job.id))
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
