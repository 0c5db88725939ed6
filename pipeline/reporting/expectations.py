"""Expected arrivals (docs/design.md#reports-and-alerts): ``[[expect]]`` rules, and the ``silences`` table.

A rule's clients each send a file within ``within`` seconds during the rule's window (``hours`` on
``days``, in ``report.timezone``; windows that touch, such as whole days, make one). The clock
starts at the client's last file, or at the window's start when that is later, so a file sent the
evening before does not count for the morning. A client is silent once ``within`` has passed in
a window without a file: nothing outside a window ever counts. A client never seen counts from the
window's start (or from the first job the table holds, when that is later).

The reporter records each silence once (a partial unique index keeps one open row per rule and
client, even with two reporters) and closes it at the first file after it; the alerts say each
once (``opened_alert``, ``resumed_alert``). ``bin/status`` and the daily report read the same rows.
Everything is recomputed from ``jobs.detected_at``, so a restart changes nothing.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Iterable

from .. import flow, store
from ..config import Expect
from ..times import duration

LOOKBACK_DAYS = 8      # windows looked at, back from today: a week and a day covers every rule

_SQL_LAST = "SELECT max(detected_at) FROM jobs WHERE upper(client_folder) = ? AND detected_at <= ?"
_SQL_FIRST_AFTER = "SELECT min(detected_at) FROM jobs WHERE upper(client_folder) = ? AND detected_at > ?"
_SQL_HISTORY = "SELECT min(detected_at) FROM jobs"
_SQL_OPEN = ("SELECT id, rule, client, last_seen, due_at, opened_at FROM silences "
             "WHERE resumed_at IS NULL ORDER BY due_at, id")
_SQL_OPEN_ONE = "SELECT id, last_seen FROM silences WHERE rule = ? AND client = ? AND resumed_at IS NULL"
_SQL_INSERT = """
INSERT INTO silences (rule, client, last_seen, due_at, opened_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (rule, client) WHERE resumed_at IS NULL DO NOTHING"""
_SQL_RESUMED = "UPDATE silences SET resumed_at = ? WHERE id = ? AND resumed_at IS NULL"
_SQL_AT = ("SELECT rule, client, last_seen, due_at, resumed_at FROM silences "
           "WHERE due_at <= ? AND (resumed_at IS NULL OR resumed_at > ?) ORDER BY due_at, id")


def windows(rule: Expect, now: float, zone: zoneinfo.ZoneInfo) -> list[tuple[float, float]]:
    """The rule's windows that started in the last LOOKBACK_DAYS days, as UTC (start, end), with
    windows that touch merged (``flow.spans``: a window keeps its wall-clock hours across a
    daylight-saving change, and lasts an hour less or more that night)."""
    today = dt.datetime.fromtimestamp(now, zone).date()
    spans = flow.spans(rule.hours, rule.days, zone, today - dt.timedelta(days=LOOKBACK_DAYS), today)
    return [(s, e) for s, e in spans if s <= now]


def due(db: store.Engine, rule: Expect, client: str, now: float, zone: zoneinfo.ZoneInfo,
        history: float | None) -> dict | None:
    """The silence of ``client`` under ``rule`` at ``now`` (last_seen, due_at), or None."""
    found = windows(rule, now, zone)
    if not found:
        return None
    start, end = found[-1]
    last = db.run_sql(_SQL_LAST, (client, now)).fetchone()[0]
    clock = max(x for x in (last, history, start) if x is not None)
    due_at = clock + rule.within
    if due_at <= now and due_at < end:
        return {"rule": rule.label, "client": client, "last_seen": last, "due_at": due_at}
    return None


def check(db: store.Engine, rules: Iterable[Expect], now: float, zone: str) -> tuple[int, int]:
    """Record silences that began and ended; (how many opened, how many resumed). The reporter's."""
    tz = zoneinfo.ZoneInfo(zone)
    opened = resumed = 0
    with db.write():
        history = db.run_sql(_SQL_HISTORY).fetchone()[0]
        for rule in rules:
            for client in rule.clients:
                row = db.run_sql(_SQL_OPEN_ONE, (rule.label, client)).fetchone()
                if row is not None:
                    back = db.run_sql(_SQL_FIRST_AFTER, (client, row[1] or -1.0)).fetchone()[0]
                    if back is None or back > now:
                        continue
                    resumed += db.run_sql(_SQL_RESUMED, (back, row[0])).rowcount
                silence = due(db, rule, client, now, tz, history)
                if silence is not None:
                    opened += db.run_sql(_SQL_INSERT, (rule.label, client, silence["last_seen"],
                                                       silence["due_at"], now)).rowcount
    return opened, resumed


def current(db: store.Engine, rules: Iterable[Expect], now: float, zone: str) -> list[dict]:
    """The silences open now under the configured rules, recorded or not yet (bin/status)."""
    tz = zoneinfo.ZoneInfo(zone)
    history = db.run_sql(_SQL_HISTORY).fetchone()[0]
    recorded = {(rule, client): (last, due_at) for _, rule, client, last, due_at, _ in db.run_sql(_SQL_OPEN)}
    found = []
    for rule in rules:
        for client in rule.clients:
            if (rule.label, client) in recorded:
                last, due_at = recorded[(rule.label, client)]
                back = db.run_sql(_SQL_FIRST_AFTER, (client, last or -1.0)).fetchone()[0]
                if back is None or back > now:
                    found.append(described(rule, client, last, due_at))
                    continue
            silence = due(db, rule, client, now, tz, history)
            if silence is not None:
                found.append(described(rule, client, silence["last_seen"], silence["due_at"]))
    return found


def at(db: store.Engine, when: float) -> list[dict]:
    """The recorded silences open at ``when`` (the daily report: at the end of its day)."""
    return [{"rule": rule, "client": client, "last_seen": last, "due_at": due_at}
            for rule, client, last, due_at, _ in db.run_sql(_SQL_AT, (when, when))]


def described(rule: Expect, client: str, last: float | None, due_at: float) -> dict:
    return {"rule": rule.label, "client": client, "last_seen": last, "due_at": due_at,
            "expected": expected_text(rule)}


def expected_text(rule: Expect) -> str:
    """ "expected within 2 h on weekdays 08:00-18:00", as an alert says it."""
    days = {frozenset(range(7)): "", frozenset(range(5)): "on weekdays", frozenset({5, 6}): "on weekends"}
    when = days.get(rule.days, f"on {rule.days_text}")
    return " ".join(filter(None, (f"expected within {duration(rule.within)}", when, rule.hours_text)))
