"""A day's figures for the nightly report (docs/design.md#reports-and-alerts), computed by SQL from the tables alone.

Every figure is an aggregate the database computes over the day's jobs; no query loads the day's
rows into Python, so a 100,000-job day costs a few index range scans. The result is a plain dict
of numbers and short lists, ready for the templates and for JSON (the ``reports`` table keeps it,
so a day's figures outlive the jobs that retention prunes).

Definitions, also printed in the report's notes:

* The day is the calendar day in ``report.timezone``: 23 or 25 hours on daylight-saving days.
* Processed: jobs whose outcome fell in the day, errors included: a job counts when it was routed
  (``routed_at``), a failed one when it failed (``failed_at``).
* Drop-to-routed latency: ``routed_at`` minus the file's last write (``mtime_ns``).
* Uptime: the share of the day vouched for by the scanner's scans, each covering the time to
  the next scan but at most two ``detect.scan_interval`` (a silent scanner is a stopped one).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import zoneinfo
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import store, trends
from . import expectations

if TYPE_CHECKING:
    from ..config import Config

DETECTORS = ("realtime", "startup", "periodic")
ERRORS_LISTED = 10

# The day's processed jobs, each with its outcome time ``done_at``. Two index range scans
# (jobs_routed, jobs_failed) instead of an OR that would read the whole table.
_DAY = """
WITH day AS (
    SELECT id, client_folder, job_category, state, detected_by, detected_at, mtime_ns, routed_at,
           routed_at AS done_at, file_name, failed_step, last_error
    FROM jobs WHERE routed_at >= :start AND routed_at < :end AND state != 'failed'
    UNION ALL
    SELECT id, client_folder, job_category, state, detected_by, detected_at, mtime_ns, routed_at,
           failed_at AS done_at, file_name, failed_step, last_error
    FROM jobs WHERE state = 'failed' AND failed_at >= :start AND failed_at < :end
)
"""

_SQL_SUMMARY = _DAY + """
SELECT count(*),
       coalesce(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0),
       avg(CASE WHEN state != 'failed' THEN routed_at - detected_at END),
       coalesce(sum(CASE WHEN detected_by = 'realtime' THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN detected_by = 'startup' THEN 1 ELSE 0 END), 0),
       coalesce(sum(CASE WHEN detected_by = 'periodic' THEN 1 ELSE 0 END), 0)
FROM day"""

# Jobs a person dismissed that day (docs/design.md#steering), on the partial index jobs_dismissed.
_SQL_DISMISSED = """
SELECT count(*) FROM jobs WHERE state = 'dismissed' AND dismissed_at >= :start AND dismissed_at < :end"""

# Nearest-rank percentiles: one sort of the day's latencies, two rows back.
_SQL_LATENCY = _DAY + """
SELECT rank, latency FROM (
    SELECT routed_at - mtime_ns / 1e9 AS latency, row_number() OVER (ORDER BY routed_at - mtime_ns / 1e9) AS rank
    FROM day WHERE state != 'failed') AS ranked
WHERE rank IN (:p50, :p95)"""

# Per client: Routed = copied to at least one destination other than the highlighted one;
# the highlighted one (Celtra in the seeds) is counted in its own column.
_SQL_CLIENTS = _DAY + """
, marks AS (
    SELECT job_id, max(CASE WHEN lower(name) = lower(:highlight) THEN 1 ELSE 0 END) AS highlight,
           max(CASE WHEN lower(name) != lower(:highlight) THEN 1 ELSE 0 END) AS other
    FROM deliveries WHERE job_id IN (SELECT id FROM day) GROUP BY job_id)
SELECT day.client_folder, count(*), coalesce(sum(marks.other), 0), coalesce(sum(marks.highlight), 0),
       sum(CASE WHEN day.state = 'failed' THEN 1 ELSE 0 END)
FROM day LEFT JOIN marks ON marks.job_id = day.id
GROUP BY day.client_folder
ORDER BY count(*) DESC, day.client_folder"""

_SQL_CATEGORIES = _DAY + """
SELECT client_folder, coalesce(upper(job_category), ''), count(*)
FROM day GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"""

# A delivery's folder is its path up to the last '/': rtrim drops the trailing file name.
_SQL_DESTINATIONS = _DAY + """
SELECT name, rtrim(path, replace(path, '/', '')) AS folder, count(*)
FROM deliveries WHERE job_id IN (SELECT id FROM day)
GROUP BY name, folder ORDER BY 3 DESC, 1, 2"""

_SQL_HOURLY = _DAY + """
SELECT CAST(floor((done_at - :start) / 3600) AS INTEGER) AS hour, count(*) FROM day GROUP BY 1"""

_SQL_ERRORS = _DAY + """
SELECT done_at, client_folder, file_name, coalesce(failed_step, ''), coalesce(last_error, '')
FROM day WHERE state = 'failed' ORDER BY done_at DESC, id DESC LIMIT :limit"""

_SQL_SCANS = """
SELECT count(*), coalesce(sum(slow), 0), coalesce(sum(timed_out), 0)
FROM scans WHERE started_at >= :start AND started_at < :end AND finished_at IS NOT NULL"""

# Each scanner scan vouches for the time until the next one, at most :window seconds.
_SQL_UPTIME = """
WITH s AS (
    SELECT started_at AS a, lead(started_at) OVER (ORDER BY started_at) AS b
    FROM scans WHERE kind IN ('startup', 'periodic') AND started_at >= :start - :window AND started_at < :end)
SELECT coalesce(sum(greatest(0, least(coalesce(b, a + :window), a + :window, :end) - greatest(a, :start))), 0) FROM s"""


@dataclass(frozen=True)
class Day:
    """A calendar day in a time zone, and its bounds as UTC epoch seconds."""
    date: dt.date
    zone: str
    start: float
    end: float

    @classmethod
    def of(cls, date: dt.date, zone: str) -> "Day":
        tz = zoneinfo.ZoneInfo(zone)
        start = dt.datetime.combine(date, dt.time(0), tz).timestamp()
        end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(0), tz).timestamp()
        return cls(date, zone, start, end)

    @classmethod
    def containing(cls, ts: float, zone: str) -> "Day":
        return cls.of(dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(zone)).date(), zone)

    def next(self) -> "Day":
        return Day.of(self.date + dt.timedelta(days=1), self.zone)

    def due_at(self, at: dt.time) -> float:
        """When this day's report is due: ``at`` on the following day (a time skipped by a clock
        change resolves to the moment the clocks jumped)."""
        tz = zoneinfo.ZoneInfo(self.zone)
        return dt.datetime.combine(self.date + dt.timedelta(days=1), at, tz).timestamp()

    @property
    def hours(self) -> int:
        return round((self.end - self.start) / 3600)

    def local(self, ts: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(self.zone))


def figures(db: store.Engine, day: Day, *, highlight: str, scan_interval: float,
            now: float | None = None) -> dict:
    """Everything the report shows for ``day``, from one consistent read of the database."""
    def sql(query: str, extra: dict | None = None):
        return db.run_sql(query, {"start": day.start, "end": day.end, **(extra or {})})

    with db.snapshot():          # one snapshot: the sections add up even while routers work
        processed, errors, avg_processing, *detected = sql(_SQL_SUMMARY).fetchone()
        routed_ok = processed - errors
        ranks = {"p50": _rank(0.50, routed_ok), "p95": _rank(0.95, routed_ok)}
        latency = dict(sql(_SQL_LATENCY, ranks).fetchall())
        clients = _clients(sql(_SQL_CLIENTS, {"highlight": highlight}).fetchall(),
                           sql(_SQL_CATEGORIES).fetchall())
        destinations = [{"name": name, "folder": folder.rstrip("/") or folder, "files": files}
                        for name, folder, files in sql(_SQL_DESTINATIONS).fetchall()]
        hourly = dict(sql(_SQL_HOURLY).fetchall())
        last_errors = sql(_SQL_ERRORS, {"limit": ERRORS_LISTED}).fetchall()
        scans, slow, timed_out = sql(_SQL_SCANS).fetchone()
        covered = sql(_SQL_UPTIME, {"window": 2 * scan_interval}).fetchone()[0]
        dismissed = sql(_SQL_DISMISSED).fetchone()[0]
    return {
        "day": day.date.isoformat(),
        "timezone": day.zone,
        "start": day.start,
        "end": day.end,
        "hours": day.hours,
        "generated_at": time.time() if now is None else now,
        "processed": processed,
        "errors": errors,
        "dismissed": dismissed,
        "success_rate": round(100.0 * routed_ok / processed, 1) if processed else None,
        "uptime": round(100.0 * covered / (day.end - day.start), 1),
        "avg_processing": avg_processing,
        "latency_p50": latency.get(ranks["p50"]),
        "latency_p95": latency.get(ranks["p95"]),
        "detections": dict(zip(DETECTORS, detected)),
        "scans": {"done": scans, "slow": slow, "timed_out": timed_out},
        "highlight": highlight,
        "clients": clients,
        "destinations": destinations,
        "hourly": _hourly(day, hourly),
        "last_errors": [{"time": day.local(at).strftime("%H:%M:%S"), "client": client, "file": name,
                         "step": step, "reason": reason}
                        for at, client, name, step, reason in last_errors],
    }


def of_day(db: store.Engine, config: Config, day: Day, now: float) -> dict:
    """The day's figures with this configuration, silences included: the reporter and bin/report
    show the same."""
    numbers = figures(db, day, highlight=config.report.highlight_destination,
                      scan_interval=config.detect.scan_interval, now=now)
    numbers["silences"] = expectations.at(db, min(day.end, now))
    # The dashboard's charts for this day: its hours, and the 14 days ending with it (those kept
    # by whichever program measured them first, outside the snapshot: keeping one is a write).
    days = trends.days(db, day.date, day.end, day.zone, now)
    with db.snapshot():
        numbers["trends"] = trends.as_figures(trends.measure(db, trends.hours_between(day.start, day.end, day.zone)),
                                              days)
    return numbers


def _rank(p: float, n: int) -> int:
    """The nearest-rank position of percentile ``p`` among ``n`` sorted values (0 when none)."""
    return max(1, math.ceil(p * n)) if n else 0


def _clients(rows: list[tuple], categories: list[tuple]) -> list[dict]:
    by_client: dict[str, list] = {}
    for client, category, count in categories:
        by_client.setdefault(client, []).append([category, count])
    return [{"client": client, "processed": processed, "routed": routed, "highlight": highlight,
             "errors": errors, "categories": by_client.get(client, [])}
            for client, processed, routed, highlight, errors in rows]


def _hourly(day: Day, counts: dict[int, int]) -> list[dict]:
    """One bar per local hour from the first busy hour to the last (none on a quiet day).

    The hour that repeats when the clocks go back is labelled with its zone abbreviation.
    """
    if not counts:
        return []
    hours = range(min(counts), max(counts) + 1)
    starts = [day.local(day.start + 3600 * h) for h in hours]
    labels = [f"{t:%H:%M}" for t in starts]
    return [{"label": label + (f" {t:%Z}" if labels.count(label) > 1 else ""), "count": counts.get(h, 0)}
            for h, t, label in zip(hours, starts, labels)]
