"""The notifier does not trust the API (SPEC §7): answers too big, too slow or asking for too long a
wait, against the real HTTP server on 127.0.0.1; and a job left un-notified counts as stuck."""

import time

import report_day
from api_server import closed_port
from pipeline import alerts
from pipeline.jobs import Jobs
from test_notifier import configure, notify, routed


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
