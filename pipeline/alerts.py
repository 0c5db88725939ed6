"""Failure alerts (SPEC §8): what is new since the last alert, and the ``alerts`` table.

An alert goes out when jobs failed since the last alert that went out, or when jobs became stuck
(still not routed ``alerts.stuck_after`` seconds after detection: a destination offline, no
router running). It lists the new failures and every job stuck now. At most one alert is sent per
``alerts.min_interval``; a failed send is retried sooner (``RETRY``), since nobody has been told.

Deciding and recording happen in one ``BEGIN IMMEDIATE`` transaction that inserts a 'sending'
row, so two reporters never send the same alert: the second sees the first one's row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import peewee

from .config import Alerts

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

_STUCK = "state IN ('detected', 'archived') AND detected_at < ?"
_SQL_STUCK = f"""
SELECT id, detected_at, client_folder, file_name, state, last_error
FROM jobs WHERE {_STUCK} ORDER BY detected_at, id LIMIT ?"""
_SQL_STUCK_COUNT = f"SELECT count(*), coalesce(sum(detected_at >= ?), 0) FROM jobs WHERE {_STUCK}"

_SQL_INSERT = """
INSERT INTO alerts (at, actor, state, covered_until, failures, stuck, recipients)
VALUES (?, ?, 'sending', ?, ?, ?, ?) RETURNING id"""
_SQL_SENT = "UPDATE alerts SET state = 'sent', sent_at = ? WHERE id = ?"
_SQL_FAILED_SEND = "UPDATE alerts SET state = 'failed', error = ? WHERE id = ?"


def _held_off(db: peewee.SqliteDatabase, now: float, cfg: Alerts) -> bool:
    """Whether the last alert (sent, being sent, or failed) says to wait."""
    row = db.execute_sql(_SQL_LAST).fetchone()
    if row is None:
        return False
    state, at = row
    wait = {"sent": cfg.min_interval, "sending": LEASE, "failed": min(RETRY, cfg.min_interval)}[state]
    return now < at + wait


def findings(db: peewee.SqliteDatabase, now: float, cfg: Alerts) -> Findings:
    """New failures since the last alert sent, and the jobs stuck now."""
    covered = db.execute_sql(_SQL_COVERED).fetchone()[0]
    since = covered if covered is not None else now - FIRST_LOOKBACK
    failed = [{"id": i, "at": at, "client": client, "file": name, "step": step, "reason": reason}
              for i, at, client, name, step, reason in db.execute_sql(_SQL_FAILED, (since, now, LISTED))]
    failed_total = db.execute_sql(_SQL_FAILED_COUNT, (since, now)).fetchone()[0]
    stuck_before = now - cfg.stuck_after
    # Newly stuck: crossed the threshold after the last alert, so each stuck job triggers once.
    stuck_total, newly_stuck = db.execute_sql(_SQL_STUCK_COUNT, (since - cfg.stuck_after, stuck_before)).fetchone()
    stuck = [{"id": i, "detected_at": at, "client": client, "file": name, "state": state, "reason": reason}
             for i, at, client, name, state, reason in db.execute_sql(_SQL_STUCK, (stuck_before, LISTED))]
    return Findings(since, now, failed_total, failed, stuck_total, newly_stuck, stuck)


def claim(db: peewee.SqliteDatabase, actor: str, now: float, cfg: Alerts) -> tuple[int, Findings] | None:
    """An alert to send now, recorded as 'sending'; None when there is nothing new or it is too soon."""
    if _held_off(db, now, cfg):                  # the cheap read first: most calls end here
        return None
    with db.atomic("IMMEDIATE"):
        if _held_off(db, now, cfg):
            return None
        found = findings(db, now, cfg)
        if not found.worth_sending:
            return None
        alert_id = db.execute_sql(_SQL_INSERT, (now, actor, now, found.failed_total, found.stuck_total,
                                                ", ".join(cfg.recipients))).fetchone()[0]
    return alert_id, found


def sent(db: peewee.SqliteDatabase, alert_id: int, now: float) -> None:
    with db.atomic("IMMEDIATE"):
        db.execute_sql(_SQL_SENT, (now, alert_id))


def failed(db: peewee.SqliteDatabase, alert_id: int, error: str) -> None:
    with db.atomic("IMMEDIATE"):
        db.execute_sql(_SQL_FAILED_SEND, (error, alert_id))


def stuck(db: peewee.SqliteDatabase, now: float, stuck_after: float, limit: int = LISTED) -> tuple[int, list[dict]]:
    """Jobs still not routed ``stuck_after`` seconds after detection: (how many, the oldest ``limit``).

    The one definition of "stuck", shared by the alerts and ``bin/status``.
    """
    before = now - stuck_after
    total = db.execute_sql(f"SELECT count(*) FROM jobs WHERE {_STUCK}", (before,)).fetchone()[0]
    rows = [{"id": i, "detected_at": at, "client": client, "file": name, "state": state, "reason": reason}
            for i, at, client, name, state, reason in db.execute_sql(_SQL_STUCK, (before, limit))]
    return total, rows
