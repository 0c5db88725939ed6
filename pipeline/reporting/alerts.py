"""Alerts (docs/design.md#reports-and-alerts): what is new since the last alert, and the ``alerts`` table.

An alert goes out when jobs failed since the last alert, when a client fell silent or resumed
(expectations.py), or when jobs became stuck:
still not routed ``alerts.stuck_after`` seconds after detection (a destination offline, no router
running), or, with an API configured, still not notified ``stuck_after`` seconds after being routed
(the API down or rate-limiting, no notifier running). It lists the new failures and every job
stuck now. At most one alert is raised per ``alerts.min_interval``.

Deciding and recording happen in one write transaction that inserts the alert's row and one
``alert_deliveries`` row per destination (the email, each channel) with what it says, so two
reporters never raise the same alert: the second sees the first one's row. Each delivery is then
claimed with a lease, sent, and on failure retried on its own after RETRY seconds, doubling up to
RETRY_CAP, MAX_ATTEMPTS times: one destination down never holds up or repeats the others. The
alert's row says 'sent' once any destination has it, 'failed' while none has.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Sequence

from .. import retry, rules as routing, steering, store
from ..config import Alerts, Expect
from ..states import WAITS
from .expectations import expected_text

LISTED = 50            # jobs listed per kind; the rest are counted
LEASE = 120.0          # seconds a claimed delivery is held, besides alerts.channel_timeout
RETRY = 120.0          # seconds before a failed delivery is tried again; doubles each time
RETRY_CAP = 3600.0
MAX_ATTEMPTS = 10      # tries of one delivery (about five hours) before it is given up
FIRST_LOOKBACK = 86400.0   # the very first alert looks back one day, not to the start of time


@dataclass(frozen=True)
class Findings:
    since: float             # failures after this ...
    until: float             # ... up to this are covered
    failed_total: int
    failed: list[dict]
    stuck_total: int
    newly_stuck: int
    stuck: list[dict]
    silenced: list[dict] = field(default_factory=list)     # silences begun (and maybe ended) since
    resumed: list[dict] = field(default_factory=list)      # silences said before, ended since
    unmatched: list[dict] = field(default_factory=list)    # clients no rule names, at their first job of a day
    long_pauses: list[dict] = field(default_factory=list)  # pauses in force that passed stuck_after since

    @property
    def worth_sending(self) -> bool:
        return bool(self.failed_total or self.newly_stuck or self.silenced or self.resumed or self.unmatched
                    or self.long_pauses)

    def summary(self) -> str:
        """ "2 failed, 1 stuck" and, when there are any, the silences."""
        text = f"{self.failed_total} failed, {self.stuck_total} stuck"
        if self.silenced or self.resumed:
            text += f", {len(self.silenced)} silent, {len(self.resumed)} resumed"
        if self.unmatched:
            text += f", {len(self.unmatched)} client(s) no rule names"
        if self.long_pauses:
            text += f", {len(self.long_pauses)} long pause(s)"
        return text

    def asdict(self) -> dict:
        return dataclasses.asdict(self)


_SQL_LAST = "SELECT at FROM alerts ORDER BY id DESC LIMIT 1"
_SQL_COVERED = "SELECT max(covered_until) FROM alerts"

_SQL_FAILED = """
SELECT id, failed_at, client_folder, file_name, coalesce(failed_step, ''), coalesce(last_error, '')
FROM jobs WHERE state = 'failed' AND failed_at > ? AND failed_at <= ?
ORDER BY failed_at, id LIMIT ?"""
_SQL_FAILED_COUNT = "SELECT count(*) FROM jobs WHERE state = 'failed' AND failed_at > ? AND failed_at <= ?"

# The "+" keeps SQLite on the small partial queue index (the states) rather than a range over the
# time column, which holds nearly every job in the table.
# Not stuck: a job held back behind an earlier one of its key (waits_after: that one is), or
# waiting on a person's pause (waits_on: it waits as it was told to).
_NOT_IN_ORDER = {"route": " AND waits_after IS NULL", "notify": ""}
_SQL_STUCK_COUNT = {wait: f"SELECT count(*), coalesce(sum(CASE WHEN {since} >= ? THEN 1 ELSE 0 END), 0) "
                          f"FROM jobs WHERE {states} AND +{since} < ? AND waits_on IS NULL{_NOT_IN_ORDER[wait]}"
                    for wait, (states, since) in WAITS.items()}
_SQL_STUCK = {wait: f"SELECT id, {since}, detected_at, client_folder, file_name, state, last_error "
                    f"FROM jobs WHERE {states} AND +{since} < ? AND waits_on IS NULL{_NOT_IN_ORDER[wait]} "
                    f"ORDER BY +{since}, id LIMIT ?"
              for wait, (states, since) in WAITS.items()}

_SQL_SILENCED = """
SELECT id, rule, client, last_seen, due_at, resumed_at FROM silences
WHERE opened_alert IS NULL AND opened_at > ? ORDER BY due_at, id"""
_SQL_RESUMED = """
SELECT id, rule, client, last_seen, due_at, resumed_at FROM silences
WHERE resumed_at IS NOT NULL AND resumed_alert IS NULL AND opened_alert IS NOT NULL ORDER BY resumed_at, id"""
_SQL_SAID_OPENED = "UPDATE silences SET opened_alert = ? WHERE id = ?"
_SQL_SAID_RESUMED = "UPDATE silences SET resumed_alert = ? WHERE id = ?"

# Clients whose jobs came since the last alert, and whether one came earlier that (UTC) day: a client
# no rule names is said once a day, at its first job.
_SQL_NEW_CLIENTS = """
SELECT client_folder, count(*), min(detected_at) FROM jobs WHERE detected_at > ? AND detected_at <= ?
GROUP BY client_folder ORDER BY client_folder"""
_SQL_CLIENT_EARLIER = "SELECT 1 FROM jobs WHERE upper(client_folder) = ? AND detected_at >= ? AND detected_at <= ? LIMIT 1"

_SQL_INSERT = """
INSERT INTO alerts (at, actor, state, covered_until, failures, stuck, recipients)
VALUES (?, ?, 'sending', ?, ?, ?, ?) RETURNING id"""
_SQL_DELIVERY = """
INSERT INTO alert_deliveries (alert_id, destination, label, state, next_attempt_at, findings)
VALUES (?, ?, ?, 'pending', ?, ?)"""
_SQL_CLAIM = """
UPDATE alert_deliveries SET lease_token = ?, next_attempt_at = ?
WHERE state = 'pending' AND next_attempt_at <= ?
RETURNING id, alert_id, destination, label, attempts, findings"""
_SQL_DELIVERED = """
UPDATE alert_deliveries SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL,
                            lease_token = NULL
WHERE id = ? AND lease_token = ?"""
_SQL_NOT_DELIVERED = """
UPDATE alert_deliveries SET state = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ?,
                            lease_token = NULL
WHERE id = ? AND lease_token = ?"""
_SQL_SENT = "UPDATE alerts SET state = 'sent', sent_at = coalesce(sent_at, ?) WHERE id = ?"
_SQL_FAILED_SEND = """
UPDATE alerts SET error = ?, state = CASE WHEN state = 'sent' THEN 'sent' ELSE 'failed' END WHERE id = ?"""


@dataclass(frozen=True)
class Delivery:
    """One destination of one alert, claimed by this reporter."""
    id: int
    alert_id: int
    destination: str        # 'email' or a channel's key
    label: str
    attempts: int           # tries before this one
    token: str
    findings: Findings


def _held_off(db: store.Engine, now: float, cfg: Alerts) -> bool:
    """Whether the last alert is younger than ``alerts.min_interval``."""
    row = db.run_sql(_SQL_LAST).fetchone()
    return row is not None and now < row[0] + cfg.min_interval


def unmatched(db: store.Engine, since: float, now: float, routes: Sequence) -> list[dict]:
    """The client folders no rule names whose first job of the (UTC) day came after ``since``."""
    day = now - now % 86400
    found = []
    for client, count, first in db.run_sql(_SQL_NEW_CLIENTS, (since, now)).fetchall():
        if routing.names_client(routes, client):
            continue
        if db.run_sql(_SQL_CLIENT_EARLIER, (client.upper(), day, since)).fetchone() is None:
            found.append({"client": client, "jobs": count, "first_at": first})
    return found


def long_pauses(db: store.Engine, since: float, now: float, stuck_after: float) -> list[dict]:
    """The pauses in force that became older than ``stuck_after`` after ``since``: each said once."""
    return [{"target": p.target, "says": p.wait.says, "created": p.created}
            for p in steering.Pauses.read(db, now).all if since - stuck_after < p.created <= now - stuck_after]


def findings(db: store.Engine, now: float, cfg: Alerts, *, notify: bool,
             rules: Sequence[Expect] = (), routes: Sequence = ()) -> Findings:
    """New failures since the last alert, the jobs stuck now (``notify``: an API is configured),
    the silences not yet said (``rules`` describe them), and the clients no rule (of ``routes``)
    names that sent their first job of the day."""
    covered = db.run_sql(_SQL_COVERED).fetchone()[0]
    since = covered if covered is not None else now - FIRST_LOOKBACK
    failed = [{"id": i, "at": at, "client": client, "file": name, "step": step, "reason": reason}
              for i, at, client, name, step, reason in db.run_sql(_SQL_FAILED, (since, now, LISTED))]
    failed_total = db.run_sql(_SQL_FAILED_COUNT, (since, now)).fetchone()[0]
    # Newly stuck: crossed the threshold after the last alert, so each stuck job triggers once.
    stuck_total, newly_stuck, listed = _stuck(db, now - cfg.stuck_after, since - cfg.stuck_after, LISTED, notify)
    expected = {rule.label: expected_text(rule) for rule in rules}

    def silences(sql: str, params: tuple = ()) -> list[dict]:
        return [{"id": i, "rule": rule, "client": client, "last_seen": last, "due_at": due, "resumed_at": back,
                 "expected": expected.get(rule, f"expected {rule}")}
                for i, rule, client, last, due, back in db.run_sql(sql, params)]

    return Findings(since, now, failed_total, failed, stuck_total, newly_stuck, listed,
                    silences(_SQL_SILENCED, (now - FIRST_LOOKBACK,)), silences(_SQL_RESUMED),
                    unmatched(db, since, now, routes), long_pauses(db, since, now, cfg.stuck_after))


def claim(db: store.Engine, actor: str, now: float, cfg: Alerts, destinations: Sequence[tuple[str, str]], *,
          notify: bool, rules: Sequence[Expect] = (), routes: Sequence = ()) -> tuple[int, Findings] | None:
    """Raise an alert now: its row, and a pending delivery to each of ``destinations`` ((key,
    label) pairs); None when there is nothing new or it is too soon."""
    if _held_off(db, now, cfg):                  # the cheap read first: most calls end here
        return None
    with db.write():
        db.serialize("alerts")                  # two reporters: one alert, the other held off
        if _held_off(db, now, cfg):
            return None
        found = findings(db, now, cfg, notify=notify, rules=rules, routes=routes)
        if not found.worth_sending:
            return None
        alert_id = db.run_sql(_SQL_INSERT, (now, actor, now, found.failed_total, found.stuck_total,
                                                ", ".join(cfg.recipients))).fetchone()[0]
        said = json.dumps(found.asdict(), separators=(",", ":"))
        for key, label in destinations:
            db.run_sql(_SQL_DELIVERY, (alert_id, key, label, now, said))
        for silence in found.silenced:           # begun and ended before any alert: both said here
            db.run_sql(_SQL_SAID_OPENED, (alert_id, silence["id"]))
            if silence["resumed_at"] is not None:
                db.run_sql(_SQL_SAID_RESUMED, (alert_id, silence["id"]))
        for silence in found.resumed:
            db.run_sql(_SQL_SAID_RESUMED, (alert_id, silence["id"]))
    return alert_id, found


def claim_deliveries(db: store.Engine, now: float, lease: float) -> list[Delivery]:
    """The deliveries due now (new, or to try again), leased to this reporter."""
    token = uuid.uuid4().hex
    with db.write():
        rows = db.run_sql(_SQL_CLAIM, (token, now + lease, now)).fetchall()
    return [Delivery(i, alert_id, destination, label, attempts, token, Findings(**json.loads(said)))
            for i, alert_id, destination, label, attempts, said in sorted(rows)]


def delivered(db: store.Engine, delivery: Delivery, now: float) -> None:
    with db.write():
        if db.run_sql(_SQL_DELIVERED, (now, delivery.id, delivery.token)).rowcount:
            db.run_sql(_SQL_SENT, (now, delivery.alert_id))


def not_delivered(db: store.Engine, delivery: Delivery, error: str, now: float) -> float | None:
    """Record a failed send; returns when it is tried again, or None when it is given up."""
    retry_at = now + retry.delay(delivery.attempts, RETRY_CAP, RETRY)
    give_up = delivery.attempts + 1 >= MAX_ATTEMPTS
    with db.write():
        if db.run_sql(_SQL_NOT_DELIVERED, ("failed" if give_up else "pending", error, retry_at,
                                           delivery.id, delivery.token)).rowcount:
            db.run_sql(_SQL_FAILED_SEND, (error, delivery.alert_id))
    return None if give_up else retry_at


def stuck(db: store.Engine, now: float, stuck_after: float, limit: int = LISTED, *,
          notify: bool) -> tuple[int, list[dict]]:
    """Jobs still not routed ``stuck_after`` seconds after detection and, with ``notify`` (an API is
    configured), jobs still not notified ``stuck_after`` seconds after routing: (how many, the
    ``limit`` waiting longest).

    The one definition of "stuck", shared by the alerts and ``bin/status``.
    """
    before = now - stuck_after
    total, _, rows = _stuck(db, before, before, limit, notify)
    return total, rows


def _stuck(db: store.Engine, before: float, newly_from: float, limit: int,
           notify: bool) -> tuple[int, int, list[dict]]:
    """Jobs waiting since before ``before``: (how many, how many of them since ``newly_from`` or
    later, the ``limit`` waiting longest)."""
    total = newly = 0
    rows = []
    # While all routing (notification) is paused, nothing waiting for it is stuck; nor for
    # stuck_after after the pause ended (read as of ``before``), while the flow catches up.
    pauses = steering.Pauses.read(db, before)
    for wait in [w for w in (("route", "notify") if notify else ("route",))
                 if not (pauses.routing() if w == "route" else pauses.notification())]:
        count, new = db.run_sql(_SQL_STUCK_COUNT[wait], (newly_from, before)).fetchone()
        total, newly = total + count, newly + new
        rows += [{"id": i, "since": since, "detected_at": detected, "client": client, "file": name,
                  "state": state, "reason": _waiting_for(state, error)}
                 for i, since, detected, client, name, state, error
                 in db.run_sql(_SQL_STUCK[wait], (before, limit))]
    rows.sort(key=lambda r: (r["since"], r["id"]))
    return total, newly, rows[:limit]


def _waiting_for(state: str, error: str | None) -> str | None:
    """Why a stuck job waits: its last error; a routed one says it is the notification that is late."""
    if state != "routed":
        return error
    return f"routed but not yet notified: {error}" if error else "routed but not yet notified (no attempt recorded)"
