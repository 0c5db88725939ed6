"""Why jobs wait, and the state of each destination (docs/design.md#dashboard-pages).

A job waits when a try at its step met a problem of a *place* or of the API and it will be tried
again (``attempts > 0`` in a queue). Its cause follows from its state and its last error:

- ``destination``: archived, and its last error names a route (the router writes
  ``NAME: reason (folder)`` for each destination it could not write, joined by ``; ``);
- ``archive``: detected: reading its file, writing the archive copy or reaching FAILED;
- ``place``: archived, but the error names no route (syncing, a late clean-up problem);
- ``api``: routed: the notifier's call failed and is tried again.

Counting is done by the database per (state, last error), so a share that has been down for an
hour costs a few distinct error texts, not a row per waiting job.

A destination's state is the first of ``DESTINATION_STATES`` that holds for it, else ``ok``: a
later cause (paused, full, outside its window) is one more function there, in the order an
operator should see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import peewee

from .states import NOTIFY_QUEUE, ROUTE_QUEUE

CAUSES = {
    "destination": "a destination's place",
    "archive": "the archive, the file or FAILED",
    "place": "another place",
    "api": "the API",
    "paused": "a person's pause",
    "full": "a full folder (max_waiting)",
    "window": "a route's hours (outside its window)",
}
# A parked job's ``waits_on`` (docs/design.md#steering) names its cause before the colon.
_PARKED = {"destination": "paused", "client": "paused", "routing": "paused", "full": "full", "window": "window"}

# Since when a job has waited in its state (states.WAITING_SINCE names the same columns).
_SINCE = "CASE state WHEN 'detected' THEN detected_at ELSE archived_at END"
_SQL_WAITING = (f"SELECT state, last_error, count(*), min({_SINCE}) FROM jobs WHERE {ROUTE_QUEUE} AND attempts > 0 "
                "AND waits_on IS NULL GROUP BY state, last_error")
# Parked jobs, through the partial jobs_waits_on index: a cause each, from what they wait on.
_SQL_PARKED = (f"SELECT waits_on, count(*), min({_SINCE}) FROM jobs WHERE waits_on IS NOT NULL AND {ROUTE_QUEUE} "
               "GROUP BY waits_on")
_SQL_WAITING_API = f"SELECT state, last_error, count(*), min(routed_at) FROM jobs WHERE {NOTIFY_QUEUE} " \
                   "AND attempts > 0 GROUP BY state, last_error"


def named_destinations(error: str | None, names: Iterable[str]) -> list[str]:
    """The routes a router's message names at the start of one of its ``; ``-joined parts."""
    if not error:
        return []
    known = set(names)
    found = []
    for part in error.split("; "):
        name, colon, _ = part.partition(": ")
        if colon and name in known and name not in found:
            found.append(name)
    return found


def causes_of(state: str, error: str | None, names: Iterable[str]) -> list[tuple[str, str]]:
    """(cause, destination) pairs a waiting job counts under; destination is "" but for ``destination``."""
    if state == "routed":
        return [("api", "")]
    if state == "detected":
        return [("archive", "")]
    named = named_destinations(error, names)
    return [("destination", name) for name in named] or [("place", "")]


def parked_cause(waits_on: str) -> tuple[str, str]:
    """(cause, destination) of a parked job from its ``waits_on``: ``full:RIP-1`` is ("full", "RIP-1")."""
    kind, _, name = waits_on.partition(":")
    return _PARKED.get(kind, "paused"), name if kind in ("destination", "full", "window") else ""


@dataclass
class Waiting:
    """The jobs waiting under one cause (and destination)."""
    cause: str
    destination: str
    jobs: int = 0
    since: float | None = None          # the oldest waiting job's start
    errors: list[str] = field(default_factory=list)     # a few of their last errors

    def add(self, count: int, since: float | None, error: str | None) -> None:
        self.jobs += count
        if since is not None and (self.since is None or since < self.since):
            self.since = since
        if error and len(self.errors) < 3 and error not in self.errors:
            self.errors.append(error)


def parked(db: peewee.Database) -> list[Waiting]:
    """The parked jobs (paused, full, outside a window) by cause and destination: one small query."""
    groups: dict[tuple[str, str], Waiting] = {}
    for waits_on, count, since in db.run_sql(_SQL_PARKED).fetchall():
        key = parked_cause(waits_on)
        groups.setdefault(key, Waiting(*key)).add(count, since, None)
    return list(groups.values())


def waiting(db: peewee.Database, names: Iterable[str], notify: bool) -> list[Waiting]:
    """The waiting jobs by cause and destination, the oldest wait first."""
    names = list(names)
    groups: dict[tuple[str, str], Waiting] = {}
    rows = db.run_sql(_SQL_WAITING).fetchall()
    if notify:
        rows += db.run_sql(_SQL_WAITING_API).fetchall()
    for state, error, count, since in rows:
        for key in causes_of(state, error, names):
            groups.setdefault(key, Waiting(*key)).add(count, since, error)
    for parked_group in parked(db):
        groups.setdefault((parked_group.cause, parked_group.destination), parked_group)
    return sorted(groups.values(), key=lambda w: (w.since if w.since is not None else float("inf"), w.cause,
                                                  w.destination))


@dataclass
class Destination:
    """What is known of one destination for its state."""
    name: str
    waiting: dict[str, Waiting] = field(default_factory=dict)     # by cause


def _waiting_on_place(d: Destination) -> str | None:
    return "waiting on its place" if "destination" in d.waiting else None


def _paused(d: Destination) -> str | None:
    return "paused" if "paused" in d.waiting else None


def _full(d: Destination) -> str | None:
    return "full" if "full" in d.waiting else None


def _outside_window(d: Destination) -> str | None:
    return "outside its window" if "window" in d.waiting else None


DESTINATION_STATES: list[Callable[[Destination], str | None]] = [_paused, _waiting_on_place, _full, _outside_window]


def destination_state(d: Destination) -> str:
    for rule in DESTINATION_STATES:
        said = rule(d)
        if said:
            return said
    return "ok"
