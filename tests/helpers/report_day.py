"""A day with known jobs, put through the real transitions (pipeline/jobs.py) at known times.

The day is 15 July 2026 in Europe/London (summer time, an hour ahead of UTC), so a report that
mixed up UTC and local time would put jobs in the wrong hour or the wrong day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import zoneinfo

from conftest import FakeClock
from pipeline import scanner
from pipeline.hotfolder import Sighting
from pipeline.jobs import Archived, Jobs
from pipeline.states import ROUTE_QUEUE

LONDON = zoneinfo.ZoneInfo("Europe/London")
DAY = dt.date(2026, 7, 15)


def london(day: dt.date, hh: int, mm: int = 0, ss: float = 0.0) -> float:
    """Epoch seconds of a London wall-clock time (fold=0)."""
    return dt.datetime(day.year, day.month, day.day, hh, mm, tzinfo=LONDON).timestamp() + ss


def at(hh: int, mm: int = 0, ss: float = 0.0) -> float:
    return london(DAY, hh, mm, ss)


def put_job(tree, jobs: Jobs, clock, client: str, name: str, *, drop: float, detected: float,
            by: str = "realtime", category: str | None = "PRODUCTION", routed: float | None = None,
            to: tuple[str, ...] = (), failed: float | None = None, step: str = "validate",
            reason: str = "invalid", archived: float | None = None, title: str = "A title") -> int:
    """One job through create, claim and the transitions, each at its own injected time.

    ``routed``: archived just before and routed then, with a delivery to each destination in ``to``.
    ``failed`` with ``step`` "validate": fails from detected; any other step: archived at ``archived``
    (or just before) first. Neither: archived at ``archived`` and left there (in flight).
    """
    path = tree.root / "drops" / client / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    os.utime(path, ns=(round(drop * 1e9), round(drop * 1e9)))
    clock.now = detected
    [job_id] = jobs.create([Sighting(str(path), client, os.stat(path))], by)
    batch = jobs.claim(ROUTE_QUEUE, 1, 3600)
    [job] = batch.jobs
    assert job.id == job_id
    if failed is not None and step == "validate":
        clock.now = failed
        with jobs.transaction():
            jobs.failed(batch.token, job, step, reason)
        return job_id
    clock.now = archived or (routed or failed) - 0.001
    with jobs.transaction():
        jobs.archived(batch.token, [Archived(job_id, "0" * 64, client, category, None, title,
                                             str(tree.store / client / name))])
    if routed is not None:
        clock.now = routed
        with jobs.transaction():
            for dest in to:
                jobs.delivered(batch.token, [(job_id, dest, str(tree.dest(dest) / name), "written")])
            jobs.routed(batch.token, [(job_id, "to " + ", ".join(to))])
    elif failed is not None:
        clock.now = failed
        with jobs.transaction():
            jobs.failed(batch.token, dataclasses.replace(job, state="archived"), step, reason)
    return job_id


def routed_at(tree, db, times: list[tuple], day: dt.date = DAY) -> None:
    """A job routed at each local (hh, mm) of ``day``, its file dropped two minutes before, or
    (hh, mm, seconds) before when a third value is given."""
    clock = FakeClock(london(day, 9))
    for i, (hh, mm, *waited) in enumerate(times):
        done = london(day, hh, mm)
        dropped = done - (waited[0] if waited else 120)
        put_job(tree, Jobs(db, "test:1", clock), clock, "RANK", f"{day}-{i}.json", drop=dropped, detected=dropped,
                routed=done, to=("Monday Rank",))


def scan(db, kind: str, started: float, seconds: float = 0.05, slow: bool = False, timed_out: bool = False) -> None:
    scan_id = scanner.scan_started(db, kind, "scanner:1", started)
    scanner.scan_finished(db, scan_id, started + seconds, 0, 0, slow, timed_out)


SCAN_INTERVAL = 600          # the config the known day is reported with: [detect] scan_interval
START, END = at(0), london(DAY + dt.timedelta(days=1), 0)

MISSING_CODE = "missing JobSpecification.JobDetails.ClientCode"
OFFLINE = "cannot write to destination Monday Rank: No such file or directory"


def build(tree, jobs: Jobs, clock) -> None:
    """The known day: 7 processed (2 errors), 4 jobs on other days or in flight that must not count."""
    put_job(tree, jobs, clock, "RANK", "a.json", drop=at(9), detected=at(9, 0, 0.01), routed=at(9, 0, 0.06),
            to=("Monday Rank",))
    put_job(tree, jobs, clock, "RANK", "b.json", category="CELTRA", drop=at(9, 30), detected=at(9, 30, 0.02),
            routed=at(9, 30, 0.1), to=("Monday Rank", "Celtra"))
    put_job(tree, jobs, clock, "OLIVER", "c.json", category="CELTRA", by="periodic", drop=at(10, 15),
            detected=at(10, 15, 30), routed=at(10, 15, 30.5), to=("Celtra",))
    put_job(tree, jobs, clock, "OLIVER", "d.json", category="DIGITAL", by="startup", drop=at(7),
            detected=at(10, 20), routed=at(10, 20, 0.2))
    put_job(tree, jobs, clock, "LOREAL", "e.json", category=None, drop=at(11, 4, 59.8), detected=at(11, 4, 59.9),
            failed=at(11, 5), reason=MISSING_CODE)
    put_job(tree, jobs, clock, "BISSELL", "f.json", category="ORDER", drop=at(13, 59), detected=at(13, 59, 1),
            archived=at(14), failed=at(14, 10), step="route", reason=OFFLINE)
    put_job(tree, jobs, clock, "RANK", "g.json", drop=at(23, 59, 59), detected=at(23, 59, 59.1),
            routed=at(23, 59, 59.5), to=("Monday Rank",))
    # Not the day's: routed the evening before, routed just after midnight, failed the next day.
    put_job(tree, jobs, clock, "RANK", "h.json", drop=START - 2, detected=START - 1.5, routed=START - 1,
            to=("Monday Rank",))
    put_job(tree, jobs, clock, "RANK", "i.json", drop=END - 1, detected=END - 0.5, routed=END + 0.5,
            to=("Monday Rank",))
    put_job(tree, jobs, clock, "LOREAL", "k.json", drop=END + 10, detected=END + 11, failed=END + 12,
            reason=MISSING_CODE)
    # In flight: archived during the day, not routed yet.
    put_job(tree, jobs, clock, "CIBC", "j.json", drop=at(15), detected=at(15, 0, 1), archived=at(15, 0, 2))
    # Scans: the one before midnight covers the first 600 s; then 1200, 1200 and the last 100 s.
    scan(jobs.db, "periodic", START - 300)
    scan(jobs.db, "periodic", START + 600)
    scan(jobs.db, "periodic", START + 4000, seconds=40, slow=True)
    scan(jobs.db, "rescan", START + 10000)            # the watcher's: counted as a scan, not as uptime
    scan(jobs.db, "periodic", END - 100, timed_out=True)


def expected(tree) -> dict:
    """What the report must say about the known day (``generated_at`` aside)."""
    return {
        "day": "2026-07-15",
        "timezone": "Europe/London",
        "start": START,
        "end": END,
        "hours": 24,
        "processed": 7,
        "errors": 2,
        "dismissed": 0,
        "success_rate": 71.4,                               # 5 / 7
        "uptime": 3.6,                                      # (600 + 1200 + 1200 + 100) / 86400
        "avg_processing": (0.05 + 0.08 + 0.5 + 0.2 + 0.4) / 5,
        "latency_p50": 0.5,                                 # of 0.06, 0.1, 0.5, 30.5, 12000.2
        "latency_p95": 12000.2,
        "detections": {"realtime": 5, "startup": 1, "periodic": 1},
        "scans": {"done": 4, "slow": 1, "timed_out": 1},
        "highlight": "Celtra",
        "clients": [
            {"client": "RANK", "processed": 3, "routed": 3, "highlight": 1, "errors": 0,
             "categories": [["PRODUCTION", 2], ["CELTRA", 1]]},
            {"client": "OLIVER", "processed": 2, "routed": 0, "highlight": 1, "errors": 0,
             "categories": [["CELTRA", 1], ["DIGITAL", 1]]},
            {"client": "BISSELL", "processed": 1, "routed": 0, "highlight": 0, "errors": 1,
             "categories": [["ORDER", 1]]},
            {"client": "LOREAL", "processed": 1, "routed": 0, "highlight": 0, "errors": 1,
             "categories": [["", 1]]},
        ],
        "destinations": [
            {"name": "Monday Rank", "folder": str(tree.dest("Monday Rank")), "files": 3},
            {"name": "Celtra", "folder": str(tree.dest("Celtra")), "files": 2},
        ],
        "hourly": [{"label": f"{h:02d}:00", "count": {9: 2, 10: 2, 11: 1, 14: 1, 23: 1}.get(h, 0)}
                   for h in range(9, 24)],
        "last_errors": [
            {"time": "14:10:00", "client": "BISSELL", "file": "f.json", "step": "route", "reason": OFFLINE},
            {"time": "11:05:00", "client": "LOREAL", "file": "e.json", "step": "validate", "reason": MISSING_CODE},
        ],
    }
