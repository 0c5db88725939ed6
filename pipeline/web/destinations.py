"""``/destinations``: each route with its state, its waiting jobs, its last delivery, its failures
today and its deliveries per hour over the last 24 hours (docs/design.md#dashboard-pages).

Read in one snapshot: the waits grouped by the database (``waits.waiting``), the last delivery of
each route through the deliveries_name index, a day of deliveries through deliveries_at, and the
day's failed jobs through the partial jobs_failed index.
"""

from __future__ import annotations

import peewee

from . import queries
from .. import waits
from ..config import Config

HOURS = 24

_SQL_LAST = "SELECT max(delivered_at) FROM deliveries WHERE name = ?"
_SQL_HOURLY = ("SELECT name, CAST(floor((delivered_at - ?) / 3600) AS INTEGER), count(*) FROM deliveries "
               "WHERE delivered_at >= ? GROUP BY 1, 2")
_SQL_FAILED = ("SELECT last_error, count(*) FROM jobs WHERE state = 'failed' AND failed_at >= ? "
               "AND failed_step = 'route' GROUP BY last_error")


def figures(db: peewee.Database, config: Config, now: float) -> list[dict]:
    names = list(dict.fromkeys(route.name for route in config.routes))
    start = now - HOURS * 3600
    with db.snapshot():
        groups = waits.waiting(db, names, notify=False)
        last = {name: db.run_sql(_SQL_LAST, (name,)).fetchone()[0] for name in names}
        hourly = db.run_sql(_SQL_HOURLY, (start, start)).fetchall()
        failed = db.run_sql(_SQL_FAILED, (queries.midnight(config, now),)).fetchall()
    failures = dict.fromkeys(names, 0)
    for error, count in failed:
        for name in waits.named_destinations(error, names) or _refused_in(error, names):
            failures[name] += count
    per_hour = {name: [0] * HOURS for name in names}
    for name, hour, count in hourly:
        if name in per_hour and 0 <= hour < HOURS:
            per_hour[name][hour] += count
    folders: dict[str, list[str]] = {}           # two rules may share a name (and its deliveries)
    for route in config.routes:
        folders.setdefault(route.name, []).append(str(route.to))
    out = []
    for name, tos in folders.items():
        d = waits.Destination(name, {g.cause: g for g in groups if g.destination == name})
        waiting = d.waiting.get("destination")
        counted = list(d.waiting.values())      # on its place, paused, full, outside its window
        out.append({"name": name, "to": ", ".join(dict.fromkeys(tos)), "state": waits.destination_state(d),
                    "waiting": sum(g.jobs for g in counted),
                    "oldest": min((g.since for g in counted if g.since is not None), default=None),
                    "reason": waiting.errors[0] if waiting and waiting.errors else None, "last_delivery": last[name],
                    "failed_today": failures[name], "hourly": per_hour[name], "start": start})
    return out


def _refused_in(error: str | None, names: list[str]) -> list[str]:
    """The route a conflict failure names: "a different file named X is already in NAME (folder)"."""
    if not error:
        return []
    return [n for n in names if f" is already in {n} (" in error][:1]
