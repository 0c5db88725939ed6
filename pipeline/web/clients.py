"""``/clients``: each client folder's day, its silences, and the jobs no rule routed
(docs/design.md#dashboard-pages).

The day is today in report.timezone, by detection time (as ``bin/status`` counts it), read
through the jobs_detected index. A job routed today without a single delivery went through no
rule (``router.unmatched``): it was archived only. Silences are ``bin/status``'s own, so a client
that sent nothing today and is expected to is listed too.
"""

from __future__ import annotations

import peewee

from . import queries
from ..config import Config
from ..reporting import expectations
from ..states import STATES

_SQL_DAY = ("SELECT client_folder, state, count(*), max(detected_at) FROM jobs WHERE detected_at >= ? "
            "GROUP BY client_folder, state")
_SQL_UNROUTED = ("SELECT client_folder, count(*) FROM jobs WHERE detected_at >= ? AND state IN ('routed', 'notified') "
                 "AND NOT EXISTS (SELECT 1 FROM deliveries WHERE deliveries.job_id = jobs.id) GROUP BY client_folder")


def figures(db: peewee.Database, config: Config, now: float) -> list[dict]:
    start = queries.midnight(config, now)
    with db.snapshot():
        day = db.run_sql(_SQL_DAY, (start,)).fetchall()
        unrouted = dict(db.run_sql(_SQL_UNROUTED, (start,)).fetchall())
        silences = expectations.current(db, config.expect, now, config.report.timezone)
    clients: dict[str, dict] = {}

    def client(name: str) -> dict:
        return clients.setdefault(name, {"name": name, "states": dict.fromkeys(STATES, 0), "jobs": 0,
                                         "last": None, "unrouted": 0, "silences": []})
    for name, state, count, last in day:
        c = client(name)
        c["states"][state] += count
        c["jobs"] += count
        c["last"] = max(c["last"] or last, last)
    for name, count in unrouted.items():
        client(name)["unrouted"] = count
    for silence in silences:
        # expectations name clients upper-cased; a folder's own spelling is kept when it sent today
        folder = next((n for n in clients if n.upper() == silence["client"]), silence["client"])
        client(folder)["silences"].append(silence)
    return sorted(clients.values(), key=lambda c: (not c["silences"], c["name"].lower()))
