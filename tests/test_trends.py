"""The charts' ended days kept in daily_figures (docs/design.md#charts): measured once, by whichever
program comes first, once the day is over, and read with the same figures by every program after."""

from __future__ import annotations

import datetime as dt

import pytest

from helpers import report_day
from pipeline import trends
from pipeline.reporting import figures
from pipeline.web import app as web_app

ZONE = "Europe/London"                      # the helpers' day and the config's report.timezone
MIDNIGHT = report_day.END                   # the end of 15 July


def kept(db) -> dict[str, tuple]:
    return {day: (jobs, p50, p95) for day, jobs, p50, p95 in
            db.run_sql("SELECT day, jobs, p50, p95 FROM daily_figures WHERE zone = ?", (ZONE,)).fetchall()}


def overview(tree, db, now: float) -> str:
    """The overview as a freshly started dashboard answers it."""
    return web_app.create_app(tree.config, db, environ={}, clock=lambda: now).test_client().get("/").get_data(as_text=True)


def test_a_second_dashboard_reads_the_ended_days_the_first_kept_instead_of_measuring_them(tree, db):
    report_day.routed_at(tree, db, [(9, 10), (10, 20)])
    now = report_day.at(11, 30) + 86400                 # the next day
    assert "07-15: 2 jobs" in overview(tree, db, now)
    days = kept(db)
    assert sorted(days) == [f"2026-07-{d:02d}" for d in range(3, 16)]      # 13 ended days, not today
    assert days["2026-07-15"] == (2, pytest.approx(120), pytest.approx(120)) and days["2026-07-14"] == (0, None, None)
    db.run_sql("DELETE FROM jobs")                      # pruned (report.retention_days): the day stays as kept
    body = overview(tree, db, now + 60)
    assert "07-15: 2 jobs" in body and "p95 07-15: 2.0 min" in body


def test_a_day_is_kept_only_once_it_has_been_over_for_the_settling_time(tree, db):
    report_day.routed_at(tree, db, [(9, 10)])
    for now in (report_day.at(23, 59), MIDNIGHT + 1, MIDNIGHT + trends.SETTLE - 1):
        assert trends.daily(db, now, ZONE)[-2 if now > MIDNIGHT else -1].jobs == 1
        assert "2026-07-15" not in kept(db)
    # A job whose router read its clock before midnight and committed just after still counts.
    report_day.routed_at(tree, db, [(23, 59, 30)])
    trends.daily(db, MIDNIGHT + trends.SETTLE, ZONE)
    assert kept(db)["2026-07-15"][0] == 2


def test_kept_figures_are_the_measured_ones_on_either_engine(tree, db):
    report_day.routed_at(tree, db, [(9, 10, 5), (9, 50, 61.25), (13, 0, 0.5), (23, 30, 3600)])
    report_day.routed_at(tree, db, [(8, 0, 7.5)], day=report_day.DAY - dt.timedelta(days=3))
    now = MIDNIGHT + 86400
    measured = trends.measure(db, trends.day_spans(report_day.DAY, MIDNIGHT, ZONE))
    assert trends.days(db, report_day.DAY, MIDNIGHT, ZONE, now) == measured          # measured, and kept
    assert [b.jobs for b in measured][-4:] == [1, 0, 0, 4] and len(kept(db)) == 14
    db.run_sql("DELETE FROM jobs")
    assert trends.days(db, report_day.DAY, MIDNIGHT, ZONE, now) == measured          # read, the same


def test_the_report_keeps_the_days_it_measures_and_the_dashboard_reads_them(tree, db):
    report_day.routed_at(tree, db, [(9, 10), (22, 0)])
    now = MIDNIGHT + 3600                               # the nightly report, an hour after midnight
    numbers = figures.of_day(db, tree.config, figures.Day.of(report_day.DAY, ZONE), now)
    assert numbers["trends"]["days"][-1]["jobs"] == 2 and kept(db)["2026-07-15"][0] == 2
    db.run_sql("DELETE FROM jobs")
    assert "07-15: 2 jobs" in overview(tree, db, now)
