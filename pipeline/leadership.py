"""One detector at a time (docs/design.md#several-hosts): the scanner and the watcher of one host hold a lease.

Several hosts may share one hot folder. Routers and notifiers work on every host at once, but
listing a large hot folder from every host would only multiply the work (job creation is
deduplicated anyway: an old and a new leader may overlap for a moment). So detection has a
leader: the host whose scanner or watcher last renewed the ``detect`` row of ``leaders`` while
its lease ran. Its programs renew it at every heartbeat; when that host dies, the lease runs out
and the first program of another host to look takes it over, and rescans the hot folder.

On one host (SQLite) the host is always the leader; the row costs one write every few seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

from . import store

log = logging.getLogger(__name__)

LEASE = 15.0        # seconds a leader's host keeps detection without renewing it (3 heartbeats)
RENEW = 5.0         # seconds between two renewals by one program

_SQL_TAKE = """
INSERT INTO leaders (role, host, holder, since, lease_until) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (role) DO UPDATE SET host = excluded.host, holder = excluded.holder,
    since = CASE WHEN leaders.host = excluded.host THEN leaders.since ELSE excluded.since END,
    lease_until = excluded.lease_until
WHERE leaders.host = excluded.host OR leaders.lease_until < ?
RETURNING host"""
_SQL_LEADER = "SELECT host FROM leaders WHERE role = ?"


class Leadership:
    """Whether this host detects now; ``held(now)`` renews the lease at most every RENEW seconds.

    ``take_over()`` is True once after this host took detection over from another, so that the
    program can rescan what it did not watch meanwhile.
    """

    def __init__(self, db: store.Engine, program: str, role: str = "detect",
                 clock: Callable[[], float] = time.time):
        self.db, self.role, self.clock = db, role, clock
        self.host = socket.gethostname()
        self.holder = f"{program}@{self.host}:{os.getpid()}"
        self.leading: bool | None = None        # None: not looked yet
        self._renewed = float("-inf")
        self.taken = False

    def held(self) -> bool:
        now = self.clock()
        if now - self._renewed < RENEW and self.leading is not None:
            return self.leading
        with self.db.write():
            row = self.db.run_sql(_SQL_TAKE, (self.role, self.host, self.holder, now, now + LEASE, now)).fetchone()
            other = None if row else (self.db.run_sql(_SQL_LEADER, (self.role,)).fetchone() or [None])[0]
        self._renewed = now
        leading = row is not None
        if leading and self.leading is False:
            self.taken = True
            log.warning("taking over detection: the other host's lease ran out")
        elif not leading and self.leading is not False:
            log.info("standing by: host %s detects; taking over if its lease (%gs) runs out", other, LEASE)
        self.leading = leading
        return leading

    def take_over(self) -> bool:
        """True once after this host became the detector (the program rescans then)."""
        taken, self.taken = self.taken, False
        return taken
