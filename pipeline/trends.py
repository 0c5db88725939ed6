"""Throughput and drop-to-routed latency over time (docs/design.md#charts): per hour over the last
24 hours and per day over the last 14, for the dashboard's charts and the daily report alike.

A bucket holds the jobs routed in it (``routed_at``, failed jobs aside, as the report counts
"processed" minus errors) and the nearest-rank p50 and p95 of their latency, ``routed_at`` minus
the file's last write, the report's own definition. Days are calendar days in report.timezone
(23 or 25 hours when the clocks change). One query per series: the buckets are a VALUES list
joined by range, the percentiles a window over each bucket, both engines alike.

A day that has ended does not change any more (a job is routed at the time it is routed), so the
first program to measure it once it is over keeps its figures in ``daily_figures``, and every
program after reads them there: a dashboard's overview measures today only, not fourteen days
(most of a second on a million jobs), whichever process, and however freshly started, it is.
"""

from __future__ import annotations

import datetime as dt
import math
import logging
import zoneinfo
from dataclasses import asdict, dataclass

import peewee

log = logging.getLogger(__name__)

HOURS = 24
DAYS = 14
# Seconds after a day's end before its figures are kept: a router's transaction that read its
# clock before midnight commits within its lease (router.lease, a minute), and hosts' clocks agree
# within database.max_clock_skew (seconds); until then the day is measured like today.
SETTLE = 600

# Each bucket's jobs, ranked by latency; the rows at the nearest ranks of p50 and p95 come back
# ((n * p + 99) / 100 is ceil(n * p / 100) in integer arithmetic, which both engines share).
_SQL = """
WITH buckets (k, a, z) AS (VALUES {values}),
lat AS (
    SELECT buckets.k AS k, jobs.routed_at - jobs.mtime_ns / 1e9 AS latency
    FROM buckets JOIN jobs ON jobs.routed_at >= buckets.a AND jobs.routed_at < buckets.z
    WHERE jobs.state != 'failed'),
ranked AS (
    SELECT k, latency, row_number() OVER (PARTITION BY k ORDER BY latency) AS rn, count(*) OVER (PARTITION BY k) AS n
    FROM lat)
SELECT k, n, rn, latency FROM ranked WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 95 + 99) / 100
"""


@dataclass(frozen=True)
class Bucket:
    start: float                # UTC seconds
    end: float
    label: str                  # local "HH:MM" or "MM-DD"
    jobs: int
    p50: float | None           # seconds
    p95: float | None


def measure(db: peewee.Database, spans: list[tuple[float, float, str]]) -> list[Bucket]:
    """One bucket per (start, end, label), read in one query."""
    if not spans:
        return []
    params: list = []
    for k, (start, end, _) in enumerate(spans):
        params += [k, start, end]
    values = ", ".join(["(CAST(? AS INTEGER), CAST(? AS DOUBLE PRECISION), CAST(? AS DOUBLE PRECISION))"]
                       * len(spans))
    found: dict[int, dict] = {}
    for k, n, rn, latency in db.run_sql(_SQL.format(values=values), tuple(params)).fetchall():
        b = found.setdefault(k, {"jobs": n})
        if rn == (n * 50 + 99) // 100:
            b["p50"] = latency
        if rn == (n * 95 + 99) // 100:
            b["p95"] = latency
    return [Bucket(start, end, label, found.get(k, {}).get("jobs", 0), found.get(k, {}).get("p50"),
                   found.get(k, {}).get("p95"))
            for k, (start, end, label) in enumerate(spans)]


def hour_spans(now: float, zone: str, hours: int = HOURS) -> list[tuple[float, float, str]]:
    """The last ``hours`` hours, each from a full hour to the next; the last one ends at ``now``."""
    tz = zoneinfo.ZoneInfo(zone)
    top = now - now % 3600
    spans = []
    for back in range(hours - 1, -1, -1):
        start = top - back * 3600
        spans.append((start, min(start + 3600, now), f"{dt.datetime.fromtimestamp(start, tz):%H:%M}"))
    return spans


def day_spans(last: dt.date, until: float, zone: str, days: int = DAYS) -> list[tuple[float, float, str]]:
    """The ``days`` local calendar days ending with ``last``, the last one cut at ``until``."""
    tz = zoneinfo.ZoneInfo(zone)
    spans = []
    for back in range(days - 1, -1, -1):
        day = last - dt.timedelta(days=back)
        start = dt.datetime.combine(day, dt.time(), tz).timestamp()
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tz).timestamp()
        spans.append((start, min(end, until), f"{day:%m-%d}"))
    return spans


def hours_between(start: float, end: float, zone: str) -> list[tuple[float, float, str]]:
    """The hours of a report's day, from its start to its end (23 or 25 of them when the clocks change)."""
    tz = zoneinfo.ZoneInfo(zone)
    return [(a, min(a + 3600, end), f"{dt.datetime.fromtimestamp(a, tz):%H:%M}")
            for a in (start + 3600 * i for i in range(math.ceil((end - start) / 3600)))]


_SQL_KEPT = "SELECT day, jobs, p50, p95 FROM daily_figures WHERE zone = ? AND day >= ? AND day <= ?"
_SQL_KEEP = """
INSERT INTO daily_figures (zone, day, jobs, p50, p95, measured_at) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (zone, day) DO NOTHING"""


def hourly(db: peewee.Database, now: float, zone: str) -> list[Bucket]:
    """The last 24 hours, each measured."""
    return measure(db, hour_spans(now, zone))


def daily(db: peewee.Database, now: float, zone: str) -> list[Bucket]:
    """The last 14 days up to ``now`` (the overview's chart)."""
    return days(db, dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(zone)).date(), now, zone, now)


def days(db: peewee.Database, last: dt.date, until: float, zone: str, now: float) -> list[Bucket]:
    """The ``DAYS`` days ending with ``last`` (the last cut at ``until``), as ``day_spans``: a day
    over for ``SETTLE`` seconds at ``now`` is read from ``daily_figures``, or measured and kept
    there when no program has yet; the others are measured.

    Not to be called inside a transaction: keeping a day is a write transaction of its own."""
    spans = day_spans(last, until, zone)
    dates = [last - dt.timedelta(days=back) for back in range(len(spans) - 1, -1, -1)]
    # A whole day (not cut at until) over for SETTLE seconds: its figures can no longer change.
    settled = [end == _midnight_after(d, zone) and end + SETTLE <= now for d, (_, end, _) in zip(dates, spans)]
    found = [b if ok else None for b, ok in zip(_kept(db, zone, dates, spans), settled)]
    todo = [i for i, b in enumerate(found) if b is None]
    for i, b in zip(todo, measure(db, [spans[i] for i in todo])):
        found[i] = b
    _keep(db, zone, [(dates[i], found[i]) for i in todo if settled[i]], now)
    return found


def _midnight_after(day: dt.date, zone: str) -> float:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zoneinfo.ZoneInfo(zone)).timestamp()


def _kept(db: peewee.Database, zone: str, dates: list[dt.date], spans) -> list[Bucket | None]:
    """The kept figures of ``dates`` (None for a day not kept), as buckets of their spans."""
    rows = {day: (jobs, p50, p95) for day, jobs, p50, p95 in
            db.run_sql(_SQL_KEPT, (zone, dates[0].isoformat(), dates[-1].isoformat())).fetchall()}
    return [Bucket(start, end, label, *rows[d.isoformat()]) if d.isoformat() in rows else None
            for d, (start, end, label) in zip(dates, spans)]


def _keep(db: peewee.Database, zone: str, measured: list[tuple[dt.date, Bucket]], now: float) -> None:
    """Keep settled days' figures, in one short write transaction; a day another program kept
    first stays as it is. A database that refuses for now (locked, full, read-only) costs only
    the time to measure these days again next time."""
    if not measured:
        return
    try:
        with db.write():
            for day, b in measured:
                db.run_sql(_SQL_KEEP, (zone, day.isoformat(), b.jobs, b.p50, b.p95, now))
    except peewee.DatabaseError as e:
        if db.transient(e) is None:
            raise
        log.warning("charts: figures of %d ended days not kept (%s); measured again next time",
                    len(measured), db.describe(e))


def as_figures(hours: list[Bucket], days: list[Bucket]) -> dict:
    """The two series as plain JSON (the daily report keeps its figures as JSON)."""
    return {"hours": [asdict(b) for b in hours], "days": [asdict(b) for b in days]}


def from_figures(series: list[dict]) -> list[Bucket]:
    return [Bucket(**b) for b in series]
