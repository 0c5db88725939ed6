"""Failure alerts (SPEC §8): what is new since the last alert, and the ``alerts`` table.

An alert goes out when jobs failed since the last alert that went out, or when jobs became stuck:
still not routed ``alerts.stuck_after`` seconds after detection (a destination offline, no router
running), or, with an API configured, still not notified ``stuck_after`` seconds after being routed
(the API down or rate-limiting, no notifier running). It lists the new failures and every job
stuck now. At most one alert is sent per ``alerts.min_interval``; a failed send is retried sooner
(``RETRY``), since nobody has been told.

Deciding and recording happen in one ``BEGIN IMMEDIATE`` transaction that inserts a 'sending'
row, so two reporters never send the same alert: the second sees the first one's row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import store
from ..config import Alerts
from ..jobs import WAITS

LISTED = 50            # jobs listed per kind; the rest are counted
LEASE = 120.0          # seconds a 'sending' row holds off other reporters
RETRY = 120.0          # seconds before a failed alert is tried again (at most min_interval)
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

    @property
    def worth_sending(self) -> bool:
        return bool(self.failed_total or self.newly_stuck)

    def asdict(self) -> dict:
        return dataclasses.asdict(self)


_SQL_LAST = "SELECT state, at FROM alerts ORDER BY id DESC LIMIT 1"
_SQL_COVERED = "SELECT max(covered_until) FROM alerts WHERE state = 'sent'"

_SQL_FAILED = """
SELECT id, failed_at, client_folder, file_name, coalesce(failed_step, ''), coalesce(last_error, '')
FROM jobs WHERE state = 'failed' AND failed_at > ? AND failed_at <= ?
ORDER BY failed_at, id LIMIT ?"""
_SQL_FAILED_COUNT = "SELECT count(*) FROM jobs WHERE state = 'failed' AND failed_at > ? AND failed_at <= ?"

# The "+" keeps SQLite on the small partial queue index (the states) rather than a range over the
# time column, which holds nearly every job in the table.
_SQL_STUCK_COUNT = {wait: f"SELECT count(*), coalesce(sum(CASE WHEN {since} >= ? THEN 1 ELSE 0 END), 0) "
                          f"FROM jobs WHERE {states} AND +{since} < ?"
                    for wait, (states, since) in WAITS.items()}
_SQL_STUCK = {wait: f"SELECT id, {since}, detected_at, client_folder, file_name, state, last_error "
                    f"FROM jobs WHERE {states} AND +{since} < ? ORDER BY +{since}, id LIMIT ?"
              for wait, (states, since) in WAITS.items()}

_SQL_INSERT = """
INSERT INTO alerts (at, actor, state, covered_until, failures, stuck, recipients)
VALUES (?, ?, 'sending', ?, ?, ?, ?) RETURNING id"""
_SQL_SENT = "UPDATE alerts SET state = 'sent', sent_at = ? WHERE id = ?"
_SQL_FAILED_SEND = "UPDATE alerts SET state = 'failed', error = ? WHERE id = ?"


def _held_off(db: store.Engine, now: float, cfg: Alerts) -> bool:
    """Whether the last alert (sent, being sent, or failed) says to wait."""
    row = db.run_sql(_SQL_LAST).fetchone()
    if row is None:
        return False
    state, at = row
    wait = {"sent": cfg.min_interval, "sending": LEASE, "failed": min(RETRY, cfg.min_interval)}[state]
    return now < at + wait


def findings(db: store.Engine, now: float, cfg: Alerts, *, notify: bool) -> Findings:
    """New failures since the last alert sent, and the jobs stuck now (``notify``: an API is configured)."""
    covered = db.run_sql(_SQL_COVERED).fetchone()[0]
    since = covered if covered is not None else now - FIRST_LOOKBACK
    failed = [{"id": i, "at": at, "client": client, "file": name, "step": step, "reason": reason}
              for i, at, client, name, step, reason in db.run_sql(_SQL_FAILED, (since, now, LISTED))]
    failed_total = db.run_sql(_SQL_FAILED_COUNT, (since, now)).fetchone()[0]
    # Newly stuck: crossed the threshold after the last alert, so each stuck job triggers once.
    stuck_total, newly_stuck, listed = _stuck(db, now - cfg.stuck_after, since - cfg.stuck_after, LISTED, notify)
    return Findings(since, now, failed_total, failed, stuck_total, newly_stuck, listed)


def claim(db: store.Engine, actor: str, now: float, cfg: Alerts, *,
          notify: bool) -> tuple[int, Findings] | None:
    """An alert to send now, recorded as 'sending'; None when there is nothing new or it is too soon."""
    if _held_off(db, now, cfg):                  # the cheap read first: most calls end here
        return None
    with db.write():
        db.serialize("alerts")                  # two reporters: one alert, the other held off
        if _held_off(db, now, cfg):
            return None
        found = findings(db, now, cfg, notify=notify)
        if not found.worth_sending:
            return None
        alert_id = db.run_sql(_SQL_INSERT, (now, actor, now, found.failed_total, found.stuck_total,
                                                ", ".join(cfg.recipients))).fetchone()[0]
    return alert_id, found


def sent(db: store.Engine, alert_id: int, now: float) -> None:
    with db.write():
        db.run_sql(_SQL_SENT, (now, alert_id))


def failed(db: store.Engine, alert_id: int, error: str) -> None:
    with db.write():
        db.run_sql(_SQL_FAILED_SEND, (error, alert_id))


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
    for wait in ("route", "notify") if notify else ("route",):
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
