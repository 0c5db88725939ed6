"""What the programs record about themselves: scans and heartbeats (not the job table)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

import peewee

from . import db as db_module

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0   # seconds; bin/status calls a program silent after 30 s (SPEC §9)
CHECKPOINT_INTERVAL = 60.0  # seconds between two of a program's checkpoints (db.bound_wal)

_SQL_BEAT = """
INSERT INTO heartbeats (program, host, pid, started_at, beat_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (program, host) DO UPDATE SET pid = excluded.pid, started_at = excluded.started_at,
                                          beat_at = excluded.beat_at"""
_SQL_RETIRE = "DELETE FROM heartbeats WHERE program = ? AND host = ? AND pid = ?"
_SQL_SCAN_START = "INSERT INTO scans (kind, actor, started_at) VALUES (?, ?, ?) RETURNING id"
_SQL_SCAN_END = """
UPDATE scans SET finished_at = ?, files_seen = ?, jobs_created = ?, slow = ?, timed_out = ? WHERE id = ?"""


class Heartbeat:
    """Beats into ``heartbeats`` at most every HEARTBEAT_INTERVAL seconds, checking first that the
    database file is still the one opened, and keeps the WAL bounded every CHECKPOINT_INTERVAL."""

    def __init__(self, db: peewee.SqliteDatabase, program: str, clock: Callable[[], float] = time.time,
                 once: bool = False):
        self.db, self.program, self.clock, self.once = db, program, clock, once
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started_at = clock()
        self._last = 0.0
        self._checkpointed = clock()

    def beat(self, force: bool = False) -> None:
        """Record that the program is alive. A database that cannot be written just now (locked past
        its busy timeout, disk full, read-only) skips this beat instead of stopping the program: the
        next beat comes a few seconds later. A database file deleted or replaced raises
        DatabaseUnusable: the program exits 69 and supervisord starts it on the file there now."""
        now = self.clock()
        if force or now - self._last >= HEARTBEAT_INTERVAL:
            db_module.check_file(self.db)
            try:
                with self.db.atomic("IMMEDIATE"):
                    self.db.execute_sql(_SQL_BEAT, (self.program, self.host, self.pid, self.started_at, now))
                if now - self._checkpointed >= CHECKPOINT_INTERVAL:
                    self._checkpointed = now
                    db_module.bound_wal(self.db)
            except peewee.OperationalError as e:
                if not db_module.retry_later(self.db, e, "heartbeat skipped", self.once):
                    raise
                return
            self.db.trouble.cleared()
            self._last = now


def sleep(stopper, seconds: float, heartbeat: Heartbeat | None = None,
          clock: Callable[[], float] = time.monotonic) -> None:
    """Sleep up to ``seconds`` (``math.inf``: until stopped) in heartbeat-sized slices, beating
    between them, so a long wait never looks like a silent program; returns early on a stop."""
    deadline = clock() + seconds
    while not stopper.requested:
        left = deadline - clock()
        if left <= 0:
            return
        if heartbeat:
            heartbeat.beat()
        stopper.wait(min(HEARTBEAT_INTERVAL, left))


def retire(db: peewee.SqliteDatabase, program: str) -> None:
    """A program that stops on purpose removes its heartbeat: only a program that died leaves a
    stale one behind, which is what bin/status calls silent. A database that cannot be written now
    leaves it behind too, rather than turning a clean stop into a failure."""
    try:
        with db.atomic("IMMEDIATE"):
            db.execute_sql(_SQL_RETIRE, (program, socket.gethostname(), os.getpid()))
    except peewee.OperationalError as e:
        if db_module.transient(e) is None:
            raise
        log.warning("heartbeat left behind, the database cannot be written (%s)", e)


def scan_started(db: peewee.SqliteDatabase, kind: str, actor: str, now: float) -> int:
    with db.atomic("IMMEDIATE"):
        return db.execute_sql(_SQL_SCAN_START, (kind, actor, now)).fetchone()[0]


def scan_finished(db: peewee.SqliteDatabase, scan_id: int, now: float, files_seen: int,
                  jobs_created: int, slow: bool, timed_out: bool) -> None:
    with db.atomic("IMMEDIATE"):
        db.execute_sql(_SQL_SCAN_END, (now, files_seen, jobs_created, int(slow), int(timed_out), scan_id))
