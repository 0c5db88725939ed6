"""The ``reports`` table: one row per day, so each day's report is sent once and never twice.

A row is created before its day's report is due (``next_attempt_at`` = the due time). A reporter
claims a due row with a lease in one write transaction, like a job: a second reporter
finds nothing to claim, and one that died mid-send leaves a lease that simply expires. The send
happens outside any transaction; then ``sent`` (or ``failed``, with the next attempt) is recorded
under the lease token. A crash in the instant between the server accepting the message and that
commit is the one case that sends a day twice; every other failure is retried.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Iterable, Sequence

from .. import retry, store
from ..store import LeaseLost

KIND = "daily"
LEASE = 300.0          # seconds a claimed report may take to compute, render and send
RETRY_FIRST = 60.0     # seconds before the first retry of a failed send; doubles each time
RETRY_CAP = 3600.0


@dataclass(frozen=True)
class Claim:
    """A due report held by this reporter until ``LEASE`` runs out."""
    id: int
    day: dt.date
    token: str
    attempts: int
    figures: dict | None


_SQL_SCHEDULE = """
INSERT INTO reports (kind, day, state, created_at, next_attempt_at) VALUES (?, ?, 'pending', ?, ?)
ON CONFLICT (kind, day) DO NOTHING"""

_CLAIM_SET = "claimed_by = ?, claimed_at = ?, lease_token = ?, next_attempt_at = ?"
_CLAIM_WHERE = "kind = ? AND state = 'pending' AND next_attempt_at <= ?"

_SQL_FIGURES = "UPDATE reports SET figures = ? WHERE id = ? AND lease_token = ?"

_SQL_SENT = """
UPDATE reports SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL,
                   recipients = ?, lease_token = NULL
WHERE id = ? AND lease_token = ?"""

_SQL_RECORDED = """
UPDATE reports SET state = 'recorded', last_error = ?, lease_token = NULL WHERE id = ? AND lease_token = ?"""

_SQL_FAILED = """
UPDATE reports SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, lease_token = NULL
WHERE id = ? AND lease_token = ?"""

_SQL_SENT_BY_HAND = """
INSERT INTO reports (kind, day, state, created_at, next_attempt_at, claimed_by, claimed_at, attempts,
                     sent_at, recipients, figures)
VALUES (?, ?, 'sent', ?, ?, ?, ?, 1, ?, ?, ?)
ON CONFLICT (kind, day) DO UPDATE SET state = 'sent', claimed_by = excluded.claimed_by,
    claimed_at = excluded.claimed_at, attempts = reports.attempts + 1, sent_at = excluded.sent_at,
    recipients = excluded.recipients, last_error = NULL, lease_token = NULL,
    figures = coalesce(reports.figures, excluded.figures)"""


def latest_day(db: store.Engine) -> dt.date | None:
    """The last day that has a row (due or done), or None on a new database."""
    row = db.run_sql("SELECT max(day) FROM reports WHERE kind = ?", (KIND,)).fetchone()
    return dt.date.fromisoformat(row[0]) if row[0] else None


def schedule(db: store.Engine, days: Iterable[tuple[dt.date, float]], now: float) -> None:
    """Create the rows of ``days`` (date, due time) that do not exist yet."""
    with db.write():
        for day, due in days:
            db.run_sql(_SQL_SCHEDULE, (KIND, day.isoformat(), now, due))


def claim_due(db: store.Engine, actor: str, now: float, lease: float = LEASE) -> Claim | None:
    """The oldest due report, leased to ``actor``; None when nothing is due."""
    token = uuid.uuid4().hex
    with db.write():
        row = db.claim("reports", _CLAIM_WHERE, "day", _CLAIM_SET, "id, day, attempts, figures",
                       (actor, now, token, now + lease), (KIND, now), 1).fetchone()
    if row is None:
        return None
    report_id, day, attempts, figures = row
    return Claim(report_id, dt.date.fromisoformat(day), token, attempts,
                 json.loads(figures) if figures else None)


def save_figures(db: store.Engine, claim: Claim, figures: dict) -> None:
    """Keep the figures with the row: retries send the same numbers, and they outlive pruning."""
    _update(db, _SQL_FIGURES, (json.dumps(figures, separators=(",", ":")), claim.id, claim.token))


def sent(db: store.Engine, claim: Claim, recipients: Sequence[str], now: float) -> None:
    _update(db, _SQL_SENT, (now, ", ".join(recipients), claim.id, claim.token))


def recorded(db: store.Engine, claim: Claim, why: str) -> None:
    """Figures kept, nothing sent: mail is not configured. The row is done; bin/report can send it."""
    _update(db, _SQL_RECORDED, (why, claim.id, claim.token))


def failed(db: store.Engine, claim: Claim, error: str, now: float) -> float:
    """Record a failed send; returns when it will be tried again (doubling delays, capped)."""
    retry_at = now + retry.delay(claim.attempts, RETRY_CAP, RETRY_FIRST)
    _update(db, _SQL_FAILED, (error, retry_at, claim.id, claim.token))
    return retry_at


def sent_by_hand(db: store.Engine, day: dt.date, figures: dict, recipients: Sequence[str],
                 actor: str, now: float) -> None:
    """``bin/report --send`` sent ``day``: a reporter must not send it again."""
    with db.write():
        db.run_sql(_SQL_SENT_BY_HAND, (KIND, day.isoformat(), now, now, actor, now, now,
                                           ", ".join(recipients), json.dumps(figures, separators=(",", ":"))))


def next_due(db: store.Engine) -> float | None:
    """When the next pending report is due (or its lease runs out), or None."""
    row = db.run_sql("SELECT min(next_attempt_at) FROM reports WHERE kind = ? AND state = 'pending'",
                         (KIND,)).fetchone()
    return row[0]


def stored_figures(db: store.Engine, day: dt.date) -> dict | None:
    """The figures recorded for ``day`` when its report was made, if any."""
    row = db.run_sql("SELECT figures FROM reports WHERE kind = ? AND day = ?",
                         (KIND, day.isoformat())).fetchone()
    return json.loads(row[0]) if row and row[0] else None


def _update(db: store.Engine, sql: str, params: tuple) -> None:
    with db.write():
        if db.run_sql(sql, params).rowcount != 1:
            raise LeaseLost("the report's lease ran out and another reporter took it")
