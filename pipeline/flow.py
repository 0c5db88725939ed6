"""Flow control toward the next application (docs/design.md#flow-control).

Most destinations are the hot folders of a RIP, a preflight or an MIS. Two route keys keep the
router from burying them:

* ``max_waiting = N``: while the route's folder holds N job files (regular, non-hidden, whoever
  put them there) its copies wait, and are looked at again within ``FULL_RECHECK``, so files a
  consumer takes away make room promptly. Counting stops at N (a folder of 100,000 files costs N
  directory entries, not 100,000), once per batch and folder; the copies the batch itself makes
  count too. Several routers may feed one folder: each takes the places its batch needs
  (``Places``) before it copies, counting the folder and the others' places under one lock, so
  together they never pass N.
* ``hours`` and ``days`` (as ``[[expect]]``, in ``report.timezone``): outside the window its
  copies wait until it next opens.

Either makes a ``steering.Wait`` (``full:NAME``, ``window:NAME``): the copy waits as a paused
destination's does (the job parked, no attempt spent, not stuck) while its other copies go on.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import zoneinfo
from pathlib import Path

from .rules import Destination
from .steering import Wait
from .times import utc_text

FULL_RECHECK = 1.0      # seconds before a copy waiting on a full folder is looked at again
_DAY = dt.timedelta(days=1)


def spans(hours: tuple[int, int] | None, days: frozenset[int], zone: zoneinfo.ZoneInfo,
          first: dt.date, last: dt.date) -> list[tuple[float, float]]:
    """The windows (``hours`` on ``days``) that start from ``first`` to ``last``, as UTC (start,
    end), those that touch merged. Local times go through zoneinfo, so a window keeps its
    wall-clock hours across a daylight-saving change (and lasts an hour less or more that night)."""
    merged: list[tuple[float, float]] = []
    start, end = hours or (0, 1440)
    day = first
    while day <= last:
        if day.weekday() in days:
            span = (_local(day, start, zone), _local(day + _DAY * (end <= start), end, zone))
            if merged and span[0] <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(span[1], merged[-1][1]))
            else:
                merged.append(span)
        day += _DAY
    return merged


def _local(day: dt.date, minutes: int, zone: zoneinfo.ZoneInfo) -> float:
    day += dt.timedelta(days=minutes // 1440)
    return dt.datetime.combine(day, dt.time(minutes % 1440 // 60, minutes % 60), zone).timestamp()


def opens_at(hours: tuple[int, int] | None, days: frozenset[int], zone: zoneinfo.ZoneInfo,
             now: float) -> float | None:
    """None while the window is open at ``now``; else when it next opens (within a week)."""
    today = dt.datetime.fromtimestamp(now, zone).date()
    for start, end in spans(hours, days, zone, today - _DAY, today + 8 * _DAY):
        if end > now:
            return None if start <= now else start
    return None     # not reached: days is never empty


def count_files(folder: Path, cap: int) -> int:
    """The job files in ``folder`` (regular, not hidden, not followed through a symlink), counted
    up to ``cap`` and no further. A folder that is missing or cannot be read holds none."""
    found = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                found += 1
                if found >= cap:
                    break
    except OSError:
        return 0
    return found


_SQL_EXPIRED = "DELETE FROM places WHERE until < ?"
_SQL_OTHERS = "SELECT coalesce(sum(taken), 0) FROM places WHERE folder = ? AND owner <> ?"
_SQL_TAKE = ("INSERT INTO places (folder, owner, taken, until) VALUES (?, ?, ?, ?) ON CONFLICT (folder, owner) "
             "DO UPDATE SET taken = excluded.taken, until = excluded.until")
_SQL_GIVE_BACK = "DELETE FROM places WHERE owner = ?"


class Places:
    """The places routers' batches take in folders with a max_waiting (the ``places`` table).

    A router counts such a folder and copies into it some milliseconds later; another router
    counting in between would not see those copies yet, and both would fill the folder to N. So
    a batch counts its folders inside one write transaction that holds the ``places`` lock (on
    PostgreSQL an advisory lock; SQLite has one writer), adds the places other batches hold, and
    takes what it will use; it gives them back once its copies are in the folder, where they
    count themselves. A router that dies holding places loses them with its lease."""

    def __init__(self, db):
        self.db = db

    def take(self, token: str, now: float, until: float, wanted: dict[Path, tuple[int, int]]) -> dict[Path, int]:
        """``wanted``: folder -> (its max_waiting, the copies this batch would put there). Takes
        as many places as there is room for, up to the copies; returns per folder what the gate
        starts from: its files and the places other batches hold, at most max_waiting. Taking
        again (the next part of a batch of large files) replaces what the batch took before: its
        copies made since are in the folder and counted there."""
        held: dict[Path, int] = {}
        with self.db.write():
            self.db.serialize("places")
            self.db.run_sql(_SQL_EXPIRED, (now,))
            for folder, (cap, copies) in wanted.items():
                others = self.db.run_sql(_SQL_OTHERS, (str(folder), token)).fetchone()[0]
                held[folder] = min(cap, others + (count_files(folder, cap - others) if others < cap else 0))
                if (take := min(cap - held[folder], copies)) > 0:
                    self.db.run_sql(_SQL_TAKE, (str(folder), token, take, until))
        return held

    def give_back(self, token: str) -> None:
        with self.db.write():
            self.db.run_sql(_SQL_GIVE_BACK, (token,))


class Gate:
    """Whether a route's copy may go now: read once per batch (``begin``), consulted per copy
    (``wait`` for the window; ``full`` for max_waiting, once the batch has ``counted``)."""

    def __init__(self, timezone: str):
        self.zone = zoneinfo.ZoneInfo(timezone)
        self.now = 0.0
        self._held: dict[Path, int] = {}       # folder -> its files, with the batch's copies so far

    def begin(self, now: float, first_waiting: dict[str, int] | None = None) -> None:
        """A new batch. ``first_waiting``: per route, the first job that waits on its full folder
        and is not in this batch: a later job's copy may not take a place that frees up before it."""
        self.now, self._held, self._first_waiting = now, {}, first_waiting or {}

    def wait(self, target: Destination) -> Wait | None:
        """A Wait while the route's window is shut."""
        route = target.route
        if route is None or (route.hours is None and route.days is None):
            return None
        opens = opens_at(route.hours, route.days or frozenset(range(7)), self.zone, self.now)
        if opens is None:
            return None
        return Wait(f"window:{route.name}", f"{route.name} is outside its hours {route.window_text} "
                                            f"(opens at {utc_text(opens)} UTC)", opens)

    @staticmethod
    def limited(target: Destination) -> bool:
        """Whether the copy counts against its folder's max_waiting (a remote's is refused at load)."""
        return target.route is not None and target.route.max_waiting is not None and target.remote is None

    def counted(self, held: dict[Path, int]) -> None:
        """What ``Places.take`` found in the batch's folders (their files and others' places)."""
        self._held.update(held)

    def full(self, target: Destination, job_id: int) -> Wait | None:
        """A Wait while the folder of a ``limited`` target holds its max_waiting."""
        route, cap = target.route, target.route.max_waiting
        # Copies go into the folder in detection order: every job waiting on it is due again at the
        # same whole second (claimed together, in id order), and none overtakes an earlier one
        # waiting outside this batch.
        due = math.floor(self.now) + FULL_RECHECK
        first = self._first_waiting.get(route.name)
        if first is not None and first < job_id:
            return Wait(f"full:{route.name}", f"{route.name} is full: after the earlier jobs waiting for it", due)
        held = self._held[target.folder]
        if held >= cap:
            return Wait(f"full:{route.name}", f"{route.name} holds {held} files, max_waiting {cap}", due)
        self._held[target.folder] = held + 1        # this copy will be there too
        return None
