"""The report's figures come from the tables alone, by SQL, with the day in report.timezone (docs/design.md#reports-and-alerts)."""

import datetime as dt

import pytest

from helpers import report_day
from pipeline import jobs as jobs_module
from pipeline.jobs import Jobs
from pipeline.store.models import Delivery, Job, JobEvent
from pipeline.reporting.figures import Day, figures

FLOATS = ("start", "end", "avg_processing", "latency_p50", "latency_p95")


def known_day_figures(tree, db, clock):
    report_day.build(tree, Jobs(db, "test:1", clock), clock)
    return figures(db, Day.of(report_day.DAY, "Europe/London"), highlight="Celtra",
                   scan_interval=report_day.SCAN_INTERVAL, now=123.0)


def test_a_known_day_gives_exactly_the_expected_figures(tree, db, clock):
    got = known_day_figures(tree, db, clock)
    want = report_day.expected(tree)
    assert got.pop("generated_at") == 123.0
    for key in FLOATS:
        assert got.pop(key) == pytest.approx(want.pop(key), abs=1e-3), key
    assert got == want


def test_an_empty_day_has_no_rates_to_show(db):
    got = figures(db, Day.of(dt.date(2026, 1, 1), "Europe/London"), highlight="Celtra", scan_interval=60)
    assert (got["processed"], got["errors"], got["success_rate"], got["uptime"]) == (0, 0, None, 0.0)
    assert (got["latency_p50"], got["latency_p95"], got["avg_processing"]) == (None, None, None)
    assert got["clients"] == got["destinations"] == got["hourly"] == got["last_errors"] == []


def test_without_a_highlighted_destination_every_copy_counts_as_routed(tree, db, clock):
    report_day.build(tree, Jobs(db, "test:1", clock), clock)
    got = figures(db, Day.of(report_day.DAY, "Europe/London"), highlight="", scan_interval=600)
    assert [(c["client"], c["routed"], c["highlight"]) for c in got["clients"]] == [
        ("RANK", 3, 0), ("OLIVER", 1, 0), ("BISSELL", 0, 0), ("LOREAL", 0, 0)]


@pytest.mark.parametrize("date, hours, start, end", [
    # Spring forward: 00:00 GMT to 00:00 BST is 23 hours.
    (dt.date(2026, 3, 29), 23, "2026-03-29T00:00:00+00:00", "2026-03-29T23:00:00+00:00"),
    # Fall back: 00:00 BST to 00:00 GMT is 25 hours.
    (dt.date(2026, 10, 25), 25, "2026-10-24T23:00:00+00:00", "2026-10-26T00:00:00+00:00"),
    (dt.date(2026, 7, 15), 24, "2026-07-14T23:00:00+00:00", "2026-07-15T23:00:00+00:00"),
])
def test_a_day_is_the_calendar_day_in_the_report_time_zone(date, hours, start, end):
    day = Day.of(date, "Europe/London")
    assert day.hours == hours
    assert (day.start, day.end) == (dt.datetime.fromisoformat(start).timestamp(),
                                    dt.datetime.fromisoformat(end).timestamp())


def test_the_repeated_hour_of_an_autumn_day_gets_two_bars(tree, db, clock):
    j = Jobs(db, "test:1", clock)
    day = Day.of(dt.date(2026, 10, 25), "Europe/London")
    first_one_am = dt.datetime.fromisoformat("2026-10-25T00:30:00+00:00").timestamp()    # 01:30 BST
    second_one_am = dt.datetime.fromisoformat("2026-10-25T01:30:00+00:00").timestamp()   # 01:30 GMT
    for name, t in (("a.json", first_one_am), ("b.json", second_one_am), ("c.json", second_one_am + 1)):
        report_day.put_job(tree, j, clock, "RANK", name, drop=t, detected=t, routed=t + 0.1, to=("Monday Rank",))
    got = figures(db, day, highlight="Celtra", scan_interval=60)
    assert got["hours"] == 25
    assert got["hourly"] == [{"label": "01:00 BST", "count": 1}, {"label": "01:00 GMT", "count": 2}]


def test_prune_deletes_old_finished_jobs_with_their_events_and_deliveries(tree, db, clock):
    j = Jobs(db, "test:1", clock)
    now = report_day.at(12)
    old = now - 100 * 86400
    report_day.put_job(tree, j, clock, "RANK", "old.json", drop=old, detected=old, routed=old + 1, to=("Monday Rank",))
    report_day.put_job(tree, j, clock, "RANK", "old-failed.json", drop=old, detected=old, failed=old + 1)
    report_day.put_job(tree, j, clock, "RANK", "new.json", drop=now, detected=now, routed=now + 1, to=("Monday Rank",))
    report_day.put_job(tree, j, clock, "RANK", "old-waiting.json", drop=old, detected=old, archived=old + 1)    # last: it stays claimable
    assert jobs_module.prune(db, now - 90 * 86400, chunk=1) == 2
    assert sorted(job.file_name for job in Job.select()) == ["new.json", "old-waiting.json"]
    assert {e.job.file_name for e in JobEvent.select()} == {"new.json", "old-waiting.json"}
    assert [d.job.file_name for d in Delivery.select()] == ["new.json"]
