"""Throughput and drop-to-routed latency over time (docs/design.md#charts): per hour over the last
24 hours and per day over the last 14, for the dashboard's charts and the daily report alike.

A bucket holds the jobs routed in it (``routed_at``, failed jobs aside, as the report counts
"processed" minus errors) and the nearest-rank p50 and p95 of their latency, ``routed_at`` minus
the file's last write, the report's own definition. Days are calendar days in report.timezone
(23 or 25 hours when the clocks change). One query per series: the buckets are a VALUES list
joined by range, the percentiles a window over each bucket, both engines alike.

A day that has ended does not change any more (a job is routed at the time it is routed), so
``Trends`` keeps the figures of ended days and reads only the current day again: the overview
sorts a day of latencies per refresh, not fourteen.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import zoneinfo
from dataclasses import asdict, dataclass

import peewee

HOURS = 24
DAYS = 14

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


class Trends:
    """The two series, with ended days kept (a dashboard process is long-lived; safe across threads)."""

    def __init__(self, zone: str):
        self.zone = zone
        self._ended: dict[tuple[float, float], Bucket] = {}
        self._lock = threading.Lock()

    def hourly(self, db: peewee.Database, now: float) -> list[Bucket]:
        return measure(db, hour_spans(now, self.zone))

    def daily(self, db: peewee.Database, now: float) -> list[Bucket]:
        spans = day_spans(dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(self.zone)).date(), now, self.zone)
        with self._lock:
            known = {k: self._ended.get(k[:2]) for k in spans}
        missing = [s for s in spans if known[s] is None]
        for span, bucket in zip(missing, measure(db, missing)):
            known[span] = bucket
        with self._lock:
            # An ended day is one whose end is a midnight already past (the span was not cut at now).
            self._ended = {(b.start, b.end): b for b in known.values() if b.end < now}
        return [known[s] for s in spans]


def as_figures(hours: list[Bucket], days: list[Bucket]) -> dict:
    """The two series as plain JSON (the daily report keeps its figures as JSON)."""
    return {"hours": [asdict(b) for b in hours], "days": [asdict(b) for b in days]}


def from_figures(series: list[dict]) -> list[Bucket]:
    return [Bucket(**b) for b in series]
