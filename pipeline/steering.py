"""Steering the flow (docs/design.md#steering): pauses, holds, dismissals and re-deliveries.

A person's levers, each one short write transaction on the database, so that a command, a page of
the dashboard or a test makes the same change, the programs of every host see it at their next
look, and nothing is lost when anything dies:

* ``Pauses``: what is paused now, read in one query. The router reads it once per batch, the
  notifier once per claim; a job that must wait for one of them is *parked*: it keeps its state,
  spends no attempt, records the cause in ``jobs.waits_on`` and is due again when the pause ends
  (its ``until``, or at once when someone resumes). Waiting is a ``Wait`` with a cause, so another
  reason for a delivery to wait plugs in beside the pauses.
* ``Steering``: the actions (pause, resume, hold, release, dismiss, redeliver), each with a
  ``steering_events`` row naming the actor and, for jobs, their ``job_events`` rows.

Bad input is refused with one line and nothing changed: ``Refused`` carries the exit status (64 a
usage error, such as a route name that does not exist; 65 a data error, such as a job not held).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from . import store
from .times import utc_text

KINDS = ("destination", "client", "routing", "notification")
PARK = 3600.0       # seconds before a job waiting on a pause with no end is looked at again anyway
                    # (resuming makes it due at once; this only bounds a pause row removed by hand)

EX_USAGE = 64       # sysexits.h: the command was used wrongly (a name that does not exist)
EX_DATAERR = 65     # the data is not as asked (a job not held, an archive copy altered)


class Refused(Exception):
    """An action refused, nothing changed: str() is the one line, ``code`` the exit status."""

    def __init__(self, message: str, code: int = EX_DATAERR):
        super().__init__(message)
        self.code = code


def actor(given: str | None = None) -> str:
    """Who acts: a name given (the dashboard's user), else the login name at this host."""
    if given:
        return given
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def until_time(value: str, now: float) -> float:
    """``--until``: an ISO date or date and time (UTC unless it names its zone), in the future."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise Refused(f"--until: expected an ISO date or date and time in UTC, such as 2024-05-01T13:30, "
                      f"got {value!r}", EX_USAGE) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    if when.timestamp() <= now:
        raise Refused(f"--until: {value} is not in the future", EX_USAGE)
    return when.timestamp()


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?")
_UNIT = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def for_seconds(value: str) -> float:
    """``--for``: a duration such as 90s, 15m, 2h or 1d (a bare number is seconds)."""
    found = _DURATION.fullmatch(value.strip())
    if not found or float(found.group(1)) <= 0:
        raise Refused(f"--for: expected a duration such as 90s, 15m, 2h or 1d, got {value!r}", EX_USAGE)
    return float(found.group(1)) * _UNIT[found.group(2)]


# -- what waits ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Wait:
    """Why a delivery, or a whole job, waits now: ``cause`` goes to ``jobs.waits_on`` (a key that
    ending the wait finds the jobs by), ``says`` to the audit trail, ``until`` when it ends by itself."""
    cause: str
    says: str
    until: float | None = None

    def due(self, now: float) -> float:
        """When a job parked on it is due again."""
        return self.until if self.until is not None else now + PARK


@dataclass(frozen=True)
class Pause:
    kind: str
    name: str           # the route's name, the client folder (upper-cased); "" for routing, notification
    until: float | None
    reason: str | None
    actor: str
    created: float

    @property
    def key(self) -> str:
        return key(self.kind, self.name)

    @property
    def target(self) -> str:
        return f"{self.kind} {self.name}" if self.name else self.kind

    def line(self) -> str:
        """One line for people: what, by whom, since and until when, why."""
        what = f"{self.kind} {self.name!r}" if self.kind == "destination" else self.target
        until = f"until {utc_text(self.until)} UTC" if self.until is not None else "until resumed"
        return (f"{what}: paused by {self.actor} since {utc_text(self.created)} UTC, {until}"
                + (f": {self.reason}" if self.reason else ""))

    @property
    def wait(self) -> Wait:
        says = f"paused by {self.actor}" + (f": {self.reason}" if self.reason else "")
        if self.until is not None:
            says += f" (until {utc_text(self.until)} UTC)"
        return Wait(self.key, says, self.until)


def key(kind: str, name: str = "") -> str:
    """A pause's key, as ``jobs.waits_on`` records it: ``destination:PRINTER``, ``routing``."""
    return f"{kind}:{name}" if name else kind


_SQL_IN_FORCE = ("SELECT kind, name, until, reason, actor, created FROM pauses "
                 "WHERE until IS NULL OR until > ? ORDER BY kind, name")


class Pauses:
    """The pauses in force at one moment (one query): what the programs consult, per batch."""

    def __init__(self, pauses: Sequence[Pause] = ()):
        self.all = tuple(pauses)
        self._by = {(p.kind, p.name): p.wait for p in self.all}

    @classmethod
    def read(cls, db: store.Engine, now: float) -> "Pauses":
        return cls([Pause(*row) for row in db.run_sql(_SQL_IN_FORCE, (now,)).fetchall()])

    def __bool__(self) -> bool:
        return bool(self.all)

    def routing(self) -> Wait | None:
        return self._by.get(("routing", "")) if self.all else None

    def notification(self) -> Wait | None:
        return self._by.get(("notification", "")) if self.all else None

    def client(self, folder: str) -> Wait | None:
        return self._by.get(("client", folder.upper())) if self.all else None

    def destination(self, name: str) -> Wait | None:
        return self._by.get(("destination", name)) if self.all else None

    def next_end(self) -> float | None:
        """The soonest ``until`` among them (a program idle on a pause looks again then)."""
        ends = [p.until for p in self.all if p.until is not None]
        return min(ends) if ends else None


# -- the actions -----------------------------------------------------------------------------------

_SQL_STEERED = "INSERT INTO steering_events (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)"
_SQL_EVENT = "INSERT INTO job_events (job_id, at, from_state, to_state, actor, detail) VALUES (?, ?, ?, ?, ?, ?)"
_SQL_PAUSE = """
INSERT INTO pauses (kind, name, until, reason, actor, created) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (kind, name) DO UPDATE SET until = excluded.until, reason = excluded.reason,
                                       actor = excluded.actor, created = excluded.created"""
_SQL_ENDED = "DELETE FROM pauses WHERE until IS NOT NULL AND until <= ?"
# Jobs parked on a pause that changed or ended are due at once: each is claimed again and parks
# anew on what is still paused, or goes on.
_SQL_WAKE = "UPDATE jobs SET next_attempt_at = ?, waits_on = NULL WHERE waits_on = ?"
# And re-delivery requests waiting (for a pause, or a place): they are few, all are looked at again.
_SQL_WAKE_REDELIVERIES = "UPDATE redeliveries SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?"
_SQL_JOB = "SELECT id, state, client_folder, file_name, archived_at FROM jobs WHERE id = ?"
_SQL_HOLD = """
UPDATE jobs SET state = 'held', updated_at = ?, waits_on = NULL, lease_owner = NULL, lease_token = NULL,
                claims = 0
WHERE id = ? AND state = ?"""
_SQL_RELEASE = """
UPDATE jobs SET state = ?, updated_at = ?, released_at = ?, next_attempt_at = ?, attempts = 0, claims = 0,
                last_error = NULL
WHERE id = ? AND state = 'held'"""
_SQL_DISMISS = """
UPDATE jobs SET state = 'dismissed', updated_at = ?, dismissed_at = ?, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND state = ?"""
_SQL_TALLY = """
INSERT INTO tallies (name, labels, value) VALUES (?, ?, 1)
ON CONFLICT (name, labels) DO UPDATE SET value = tallies.value + excluded.value"""


@dataclass(frozen=True)
class Chosen:
    """A job an action would touch, as its line says it."""
    id: int
    state: str
    client_folder: str
    file_name: str
    archived: bool          # its archive copy was made (a held job is released to archived, else detected)

    @property
    def released_to(self) -> str:
        return "archived" if self.archived else "detected"

    @property
    def label(self) -> str:
        return f"job {self.id} {self.client_folder}/{self.file_name}"


class Steering:
    """The actions of one person (``actor``) on the database. Each is one write transaction."""

    def __init__(self, db: store.Engine, actor_name: str, clock: Callable[[], float] = time.time):
        self.db = db
        self.actor = actor_name
        self.clock = clock

    def _steered(self, now: float, action: str, target: str, detail: str | None) -> None:
        self.db.run_sql(_SQL_STEERED, (now, self.actor, action, target, detail))

    def _job_event(self, job_id: int, now: float, from_state: str, to_state: str, detail: str) -> None:
        self.db.run_sql(_SQL_EVENT, (job_id, now, from_state, to_state, self.actor, detail))

    # -- pauses ------------------------------------------------------------------------------

    def in_force(self) -> Pauses:
        return Pauses.read(self.db, self.clock())

    def pause(self, kind: str, name: str = "", *, until: float | None = None, reason: str | None = None,
              route_names: Iterable[str] = ()) -> Pause:
        """Pause ``kind`` (a destination by its route's name, a client folder, all routing or
        notification) until ``until`` or until resumed. Pausing what is paused already replaces
        its end and reason. ``route_names``: the configured routes, which a destination must be."""
        name = self._target(kind, name, route_names)
        now = self.clock()
        pause = Pause(kind, name, until, reason or None, self.actor, now)
        with self.db.write():
            self.db.run_sql(_SQL_ENDED, (now,))
            self.db.run_sql(_SQL_PAUSE, (kind, name, until, pause.reason, self.actor, now))
            self.db.run_sql(_SQL_WAKE, (now, pause.key))        # parked anew with this end and reason
            self._steered(now, "pause", pause.target, pause.wait.says)
            self.db.announce()
        return pause

    def resume(self, kind: str, name: str = "", route_names: Iterable[str] = ()) -> Pause:
        """End a pause in force; its jobs are due at once. Refused when it is not paused."""
        name = self._target(kind, name, route_names, resuming=True)
        now = self.clock()
        with self.db.write():
            found = [p for p in Pauses.read(self.db, now).all if (p.kind, p.name) == (kind, name)]
            if not found:
                raise Refused(f"{key(kind, name).replace(':', ' ')} is not paused")
            self.db.run_sql(_SQL_ENDED, (now,))
            self.db.run_sql("DELETE FROM pauses WHERE kind = ? AND name = ?", (kind, name))
            self.db.run_sql(_SQL_WAKE, (now, found[0].key))
            self.db.run_sql(_SQL_WAKE_REDELIVERIES, (now, now))
            self._steered(now, "resume", found[0].target, None)
            self.db.announce()
        return found[0]

    def resume_all(self) -> list[Pause]:
        """End every pause in force; returns them (none: nothing was paused)."""
        now = self.clock()
        with self.db.write():
            ended = list(Pauses.read(self.db, now).all)
            self.db.run_sql("DELETE FROM pauses")
            for pause in ended:
                self.db.run_sql(_SQL_WAKE, (now, pause.key))
                self._steered(now, "resume", pause.target, None)
            self.db.run_sql(_SQL_WAKE_REDELIVERIES, (now, now))
            self.db.announce()
        return ended

    @staticmethod
    def _target(kind: str, name: str, route_names: Iterable[str], resuming: bool = False) -> str:
        if kind not in KINDS:
            raise Refused(f"unknown kind of pause {kind!r}; one of {', '.join(KINDS)}", EX_USAGE)
        if kind in ("routing", "notification"):
            return ""
        if not name or not name.strip():
            raise Refused(f"--{kind}: a name is required", EX_USAGE)
        if kind == "client":
            if "/" in name or name in (".", "..") or "\0" in name:
                raise Refused(f"--client: {name!r} is not a client folder's name", EX_USAGE)
            return name.upper()
        names = list(route_names)
        if name not in names and not resuming:      # a destination once paused can always be resumed
            raise Refused(f"--destination: no [[route]] is named {name!r}; the routes are: "
                          f"{', '.join(repr(n) for n in names) or 'none'}", EX_USAGE)
        return name

    # -- holds and dismissals ----------------------------------------------------------------

    def hold(self, job_ids: Iterable[int], reason: str | None = None, dry_run: bool = False) -> list[Chosen]:
        """Hold jobs not yet routed (detected or archived): they wait in ``held`` for a person.
        Refused, nothing changed, when one of them is not there or already past routing."""
        return self._move(job_ids, ("detected", "archived"), "held", "hold", reason, dry_run,
                          lambda job, now: (_SQL_HOLD, (now, job.id, job.state)))

    def release(self, job_ids: Iterable[int], reason: str | None = None, dry_run: bool = False) -> list[Chosen]:
        """Send held jobs on where they stopped: detected when held before their archive copy,
        archived after it; a released job is not held again by its rules."""
        return self._move(job_ids, ("held",), None, "release", reason, dry_run,
                          lambda job, now: (_SQL_RELEASE, (job.released_to, now, now, now, job.id)))

    def dismiss(self, job_ids: Iterable[int], reason: str, dry_run: bool = False) -> list[Chosen]:
        """Close failed or held jobs a person has dealt with: final state ``dismissed``. Files are
        left as they are."""
        if not reason or not reason.strip():
            raise Refused("--reason is required: say why these jobs are closed", EX_USAGE)
        return self._move(job_ids, ("failed", "held"), "dismissed", "dismiss", reason, dry_run,
                          lambda job, now: (_SQL_DISMISS, (now, now, job.id, job.state)))

    def _move(self, job_ids, states: tuple[str, ...], to_state: str | None, action: str, reason: str | None,
              dry_run: bool, statement) -> list[Chosen]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return []
        now = self.clock()
        with self.db.write():
            chosen = []
            for job_id in ids:
                row = self.db.run_sql(_SQL_JOB, (job_id,)).fetchone()
                if row is None:
                    raise Refused(f"job {job_id}: no such job")
                job = Chosen(*row[:4], archived=row[4] is not None)
                if job.state not in states:
                    raise Refused(f"{job.label} is {job.state}, not {' or '.join(states)}: nothing changed")
                chosen.append(job)
            if dry_run:
                return chosen
            for job in chosen:
                sql, params = statement(job, now)
                if self.db.run_sql(sql, params).rowcount != 1:
                    raise Refused(f"{job.label} changed meanwhile: nothing changed")
                target = to_state or job.released_to
                detail = f"{action} by {self.actor}" + (f": {reason}" if reason else "")
                self._job_event(job.id, now, job.state, target, detail)
                self._steered(now, action, f"job {job.id}", reason)
                if target == "dismissed":
                    labels = json.dumps([job.client_folder, "dismissed"], separators=(",", ":"), ensure_ascii=False)
                    self.db.run_sql(_SQL_TALLY, ("finished", labels))
            if action == "release":
                self.db.announce()
        return chosen

