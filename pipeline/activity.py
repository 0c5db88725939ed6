"""What the programs record about themselves: scans and heartbeats (not the job table)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable

import peewee

from .db import is_locked

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0   # seconds; bin/status calls a program silent after 30 s (SPEC §9)

_SQL_BEAT = """
INSERT INTO heartbeats (program, host, pid, started_at, beat_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (program, host) DO UPDATE SET pid = excluded.pid, started_at = excluded.started_at,
                                          beat_at = excluded.beat_at"""
_SQL_RETIRE = "DELETE FROM heartbeats WHERE program = ? AND host = ? AND pid = ?"
_SQL_SCAN_START = "INSERT INTO scans (kind, actor, started_at) VALUES (?, ?, ?) RETURNING id"
_SQL_SCAN_END = """
UPDATE scans SET finished_at = ?, files_seen = ?, jobs_created = ?, slow = ?, timed_out = ? WHERE id = ?"""


class Heartbeat:
    """Beats into ``heartbeats`` at most every HEARTBEAT_INTERVAL seconds."""

    def __init__(self, db: peewee.SqliteDatabase, program: str, clock: Callable[[], float] = time.time):
        self.db, self.program, self.clock = db, program, clock
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.started_at = clock()
        self._last = 0.0

    def beat(self, force: bool = False) -> None:
        """Record that the program is alive. A database locked past its busy timeout skips this beat
        (logged) instead of stopping the program: the next beat comes a few seconds later."""
        now = self.clock()
        if force or now - self._last >= HEARTBEAT_INTERVAL:
            try:
                with self.db.atomic("IMMEDIATE"):
                    self.db.execute_sql(_SQL_BEAT, (self.program, self.host, self.pid, self.started_at, now))
            except peewee.OperationalError as e:
                if not is_locked(e):
                    raise
                log.warning("database busy past the timeout (%s); heartbeat skipped", e)
                return
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
    stale one behind, which is what bin/status calls silent."""
    with db.atomic("IMMEDIATE"):
        db.execute_sql(_SQL_RETIRE, (program, socket.gethostname(), os.getpid()))


def scan_started(db: peewee.SqliteDatabase, kind: str, actor: str, now: float) -> int:
    with db.atomic("IMMEDIATE"):
        return db.execute_sql(_SQL_SCAN_START, (kind, actor, now)).fetchone()[0]


def scan_finished(db: peewee.SqliteDatabase, scan_id: int, now: float, files_seen: int,
                  jobs_created: int, slow: bool, timed_out: bool) -> None:
    with db.atomic("IMMEDIATE"):
        db.execute_sql(_SQL_SCAN_END, (now, files_seen, jobs_created, int(slow), int(timed_out), scan_id))
