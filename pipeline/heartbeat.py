"""Heartbeats: each running program's row in ``heartbeats``, which bin/status reads (docs/design.md#operating-it)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

from . import store

log = logging.getLogger(__name__)

INTERVAL = 5.0              # seconds; bin/status calls a program silent after 30 s
TIDY_INTERVAL = 60.0        # seconds between two of a program's calls of the engine's tidy()

_SQL_BEAT = """
INSERT INTO heartbeats (program, host, pid, started_at, beat_at, clock_skew, config, config_since)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (program, host) DO UPDATE SET pid = excluded.pid, started_at = excluded.started_at,
                                          beat_at = excluded.beat_at, clock_skew = excluded.clock_skew,
                                          config = excluded.config, config_since = excluded.config_since"""
# A file found invalid keeps the time it was first found so; a valid load of it removes the row.
_SQL_CONFIG_INVALID = """
INSERT INTO config_problems (host, file, problem, since, seen_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (host, file) DO UPDATE SET problem = excluded.problem, seen_at = excluded.seen_at"""
_SQL_CONFIG_VALID = "DELETE FROM config_problems WHERE host = ? AND file = ?"
_SQL_RETIRE = "DELETE FROM heartbeats WHERE program = ? AND host = ? AND pid = ?"
_SQL_LAST_RELOAD = "SELECT coalesce(max(id), 0) FROM config_reloads"
_SQL_REQUEST_RELOAD = "INSERT INTO config_reloads (requested_at, host, actor) VALUES (?, ?, ?)"


class Heartbeat:
    """Beats into ``heartbeats`` at most every INTERVAL seconds, checking first that the database
    is still the one opened, and lets the engine tidy up (the WAL) every TIDY_INTERVAL.

    Each beat also records how far this host's clock is from the database's (leases and due times
    compare the clocks of several hosts): past ``max_clock_skew`` it logs an error, and bin/status
    calls the pipeline unhealthy.

    And the configuration: its fingerprint and since when the program runs it, and, once after a
    start or a reload, whether its file was found valid or not (``config_problems``; a write that
    fails is tried again at the next beat).

    And the reload requests of ``bin/reload`` (``config_reloads``), which reach the programs of
    every host: a beat that finds one newer than the last it saw sets ``reload_asked``. The first
    beat only takes note of the newest: a program that just started read the file as it is.
    """

    def __init__(self, db: store.Engine, program: str, clock: Callable[[], float] = time.time,
                 once: bool = False, max_clock_skew: float = 2.0, config: str = "", config_file: str = ""):
        self.db, self.program, self.clock, self.once = db, program, clock, once
        self.max_clock_skew = max_clock_skew
        self.skewed = False
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started_at = clock()
        self._last = 0.0
        self._tidied = clock()
        self.config, self.config_since = config, self.started_at
        # (file, problem): what to record at the next beat; a start with a file says it is valid.
        self._config_outcome: tuple[str, str | None] | None = (config_file, None) if config_file else None
        self._reload_seen: int | None = None    # the newest reload request seen; None before the first beat
        self.reload_asked = False               # a newer one came: the program reads its file again

    def config_loaded(self, fingerprint: str, file: str) -> None:
        """A reload took ``file``: beat at once with its fingerprint, and clear its problem."""
        if fingerprint != self.config:
            self.config, self.config_since = fingerprint, self.clock()
        self._config_outcome, self._last = (file, None), 0.0

    def config_invalid(self, file: str, problem: str) -> None:
        """A reload found ``file`` invalid: record it at once (the program runs on as it was)."""
        self._config_outcome, self._last = (file, problem), 0.0

    def beat(self, force: bool = False) -> None:
        """Record that the program is alive. A database that cannot be written just now (locked past
        its busy timeout, disk full, read-only) skips this beat instead of stopping the program: the
        next beat comes a few seconds later. A database that carrying on would lose writes to (its
        file deleted or replaced) raises DatabaseUnusable: the program exits 69 and supervisord
        starts it again."""
        now = self.clock()
        if not force and now - self._last < INTERVAL:
            return
        self.db.check_alive()
        try:
            skew = self.db.clock_skew(self.clock)
            outcome = self._config_outcome
            with self.db.write():
                self.db.run_sql(_SQL_BEAT, (self.program, self.host, self.pid, self.started_at, now, skew,
                                            self.config, self.config_since))
                if outcome:
                    file, problem = outcome
                    if problem is None:
                        self.db.run_sql(_SQL_CONFIG_VALID, (self.host, file))
                    else:
                        self.db.run_sql(_SQL_CONFIG_INVALID, (self.host, file, problem, now, now))
                newest = self.db.run_sql(_SQL_LAST_RELOAD).fetchone()[0]
            if self._config_outcome is outcome:
                self._config_outcome = None
            if self._reload_seen is not None and newest > self._reload_seen:
                self.reload_asked = True
            self._reload_seen = newest
            if now - self._tidied >= TIDY_INTERVAL:
                self._tidied = now
                self.db.tidy()
        except Exception as e:
            if not store.retry_later(self.db, e, "heartbeat skipped", self.once):
                raise
            return
        self.db.trouble.cleared()
        self._last = now
        self._judge(skew)

    def _judge(self, skew: float) -> None:
        """One line when the clock goes off (and when it is right again), not one per beat."""
        skewed = abs(skew) > self.max_clock_skew
        if skewed and not self.skewed:
            log.error("this host's clock is %+.1fs off the database's, more than database.max_clock_skew "
                      "(%gs): leases and due times go wrong; run NTP on every host", skew, self.max_clock_skew)
        elif self.skewed and not skewed:
            log.info("this host's clock agrees with the database's again (%+.1fs)", skew)
        self.skewed = skewed


def retire(db: store.Engine, program: str) -> None:
    """A program that stops on purpose removes its heartbeat: only a program that died leaves a
    stale one behind, which is what bin/status calls silent. A database that cannot be written now
    leaves it behind too, rather than turning a clean stop into a failure."""
    try:
        with db.write():
            db.run_sql(_SQL_RETIRE, (program, socket.gethostname(), os.getpid()))
    except Exception as e:
        if db.transient(e) is None:
            raise
        log.warning("heartbeat left behind, the database cannot be written (%s)", db.describe(e))


def request_reload(db: store.Engine, actor: str) -> None:
    """Ask every program, on every host, to read its configuration again (``bin/reload``): each
    sees the request at its next heartbeat (within INTERVAL seconds)."""
    with db.write():
        db.run_sql(_SQL_REQUEST_RELOAD, (time.time(), socket.gethostname(), actor))
