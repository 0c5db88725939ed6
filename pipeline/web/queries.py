"""What the dashboard reads beyond ``bin/status``: job search, a job's whole story, the waiting
jobs, today's start (docs/design.md#operating-it). Read-only, dialect-neutral SQL, each page one snapshot.

Lists are paged by key (``before`` an id), never by OFFSET, and never counted: on a table of a
million jobs both would read every matching row for each page.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee

from ..config import Config
from ..states import NOTIFY_QUEUE, ROUTE_QUEUE

PAGE = 50
RECENT = 20_000       # ids a name search reads in id order before it turns to the name index
SHOWN_BYTES = 256 * 1024          # the archived JSON shown on a job's page; the download has it all

_JOB_COLUMNS = ("id, state, client_folder AS client, file_name, size, detected_by, detected_at, archived_at, "
                "routed_at, notified_at, failed_at, failed_step, last_error, attempts, next_attempt_at, "
                "job_category, client_code, studio_code, title, source_path, archive_path, failed_path, "
                "sha256, lease_owner, updated_at, waits_on")


# Since when a job has waited in its state (jobs.WAITING_SINCE names the same columns).
_SINCE = "CASE state WHEN 'detected' THEN detected_at ELSE archived_at END"


def rows(db: peewee.Database, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
    cursor = db.run_sql(sql, tuple(params))
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


# A state as SQL the planner can match to a partial queue index (a bound parameter it cannot): on a
# million finished jobs "state = ? ORDER BY id DESC" would walk the table looking for the few failed.
_STATE_CLAUSE = {"detected": f"{ROUTE_QUEUE} AND state = 'detected'",
                 "archived": f"{ROUTE_QUEUE} AND state = 'archived'",
                 "routed": NOTIFY_QUEUE, "notified": "state = 'notified'", "failed": "state = 'failed'",
                 # held and dismissed jobs are few (a person made each one): no index of their own
                 "held": "state = 'held'", "dismissed": "state = 'dismissed'"}


def _like(text: str) -> str:
    """A LIKE pattern for "contains ``text``": its own % and _ are literal characters here."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True)
class Search:
    """The filters of /jobs (and /failed); empty strings mean "any"."""
    q: str = ""
    client: str = ""
    state: str = ""
    step: str = ""
    since: float | None = None        # detected at or after (failed at or after, on /failed)
    before: int | None = None         # the page: ids below this one

    def where(self, time_column: str = "detected_at") -> tuple[str, list]:
        clauses, params = [], []
        if self.q:
            # LIKE's own wildcards in what the operator typed are literal characters here.
            clauses.append("file_name LIKE ? ESCAPE '\\'")
            params.append(_like(self.q))
        if self.client:
            clauses.append("lower(client_folder) = lower(?)")
            params.append(self.client)
        if self.state:
            clauses.append(_STATE_CLAUSE[self.state])
        if self.step:
            clauses.append("failed_step = ?")
            params.append(self.step)
        if self.since is not None:
            clauses.append(f"{time_column} >= ?")
            params.append(self.since)
        if self.before is not None:
            clauses.append("id < ?")
            params.append(self.before)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def search(db: peewee.Database, s: Search, time_column: str = "detected_at") -> tuple[list[dict], int | None]:
    """One page of jobs, newest first, and the ``before`` of the next page (None on the last).

    A name search reads the newest RECENT ids first, in id order, which finds a page at once when
    the name is common; only when that window holds less than a page does it read the rest through
    the narrow jobs_file_name index (a covering scan, a third of the table's bytes). Either way a
    search that matches nothing on a million jobs stays near 100 ms.
    """
    where, params = s.where(time_column)
    # A state that is a small partial index is read through it, not by walking ids newest first.
    order = "+id" if s.state in ("detected", "archived", "failed") else "id"
    page = f"SELECT {_JOB_COLUMNS} FROM jobs{where} {{}} ORDER BY {order} DESC LIMIT ?"
    if not s.q:
        found = rows(db, page.format(""), params + [PAGE + 1])
    else:
        top = db.run_sql("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]
        floor = top - RECENT
        bound = floor if s.before is None else min(floor, s.before - 1)
        found = rows(db, page.format("AND id > ?"), params + [floor, PAGE + 1])
        if len(found) <= PAGE:
            older = page.format("AND id <= ? AND id IN (SELECT id FROM jobs WHERE file_name LIKE ? ESCAPE '\\' "
                                "AND +id <= ? ORDER BY +id DESC LIMIT ?)")
            found += rows(db, older, params + [bound, _like(s.q), bound, PAGE + 1, PAGE + 1 - len(found)])
    more = len(found) > PAGE
    return found[:PAGE], (found[PAGE - 1]["id"] if more else None)


def waiting(db: peewee.Database, notify: bool) -> list[dict]:
    """Jobs held back by a place (or, with ``notify``, the API), or parked (a pause, a full folder, a
    route's hours), and when each is tried again, the
    longest waiting first. Each queue through its partial index."""
    queues = [(ROUTE_QUEUE, _SINCE)] + [(NOTIFY_QUEUE, "routed_at")] * notify
    found = []
    for queue, since in queues:
        found += rows(db, f"SELECT {_JOB_COLUMNS}, {since} AS waiting_since FROM jobs "
                          f"WHERE {queue} AND (attempts > 0 OR waits_on IS NOT NULL) ORDER BY +{since}, id LIMIT ?",
                     (PAGE * 4,))
    return sorted(found, key=lambda j: (j["waiting_since"], j["id"]))[:PAGE * 4]


def story(db: peewee.Database, job_id: int) -> dict[str, Any] | None:
    """A job, its audit events and its deliveries, NiFi-provenance style; None when there is no such job."""
    with db.snapshot():
        found = rows(db, f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not found:
            return None
        events = rows(db, "SELECT id, at, from_state, to_state, actor, detail FROM job_events "
                          "WHERE job_id = ? ORDER BY id", (job_id,))
        deliveries = rows(db, "SELECT name, path, action, delivered_at FROM deliveries WHERE job_id = ? "
                              "ORDER BY delivered_at, path", (job_id,))
    job = found[0]
    notify = [e for e in events if e["from_state"] == "routed"]
    return {"job": job, "events": events, "deliveries": deliveries, "notify_attempts": notify}


def midnight(config: Config, now: float) -> float:
    """Today's start in report.timezone, as UTC seconds."""
    tz = zoneinfo.ZoneInfo(config.report.timezone)
    return dt.datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def read_inside(path: str | None, folder: Path, limit: int) -> tuple[bytes, int] | None:
    """Up to ``limit`` bytes of a file the job table names and its size, only when it is a regular
    file inside ``folder`` (never through a symbolic link); None otherwise."""
    if not path:
        return None
    real_folder = os.path.realpath(folder)
    if os.path.commonpath([os.path.realpath(path), real_folder]) != real_folder:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit), st.st_size
    finally:
        os.close(fd)
