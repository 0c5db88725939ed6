"""Each remote's last success and last error, kept in the job table's database for bin/status and
the dashboard (docs/design.md#remote-destinations). A router writes what it saw after each batch
that made remote copies, in one short write transaction; several routers' news merge by remote."""

from __future__ import annotations

from typing import Any

from .delivery import Seen

_SQL_SEEN = """
INSERT INTO remotes (remote, last_success, last_error, last_error_at) VALUES (?, ?, ?, ?)
ON CONFLICT (remote) DO UPDATE SET last_success = COALESCE(excluded.last_success, remotes.last_success),
                                   last_error = COALESCE(excluded.last_error, remotes.last_error),
                                   last_error_at = COALESCE(excluded.last_error_at, remotes.last_error_at)"""
_SQL_LATEST = "SELECT remote, last_success, last_error, last_error_at FROM remotes ORDER BY remote"


def write(db, news: dict[str, Seen]) -> None:
    if not news:
        return
    with db.write():
        for remote in sorted(news):             # one order for every writer: no deadlock between routers
            seen = news[remote]
            db.run_sql(_SQL_SEEN, (remote, seen.success_at, seen.error, seen.error_at))


def latest(db) -> list[dict[str, Any]]:
    """Every remote a router has delivered to or tried, with its last success and last error."""
    return [dict(zip(("remote", "last_success", "last_error", "last_error_at"), row))
            for row in db.run_sql(_SQL_LATEST).fetchall()]
