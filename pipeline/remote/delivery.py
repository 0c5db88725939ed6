"""Making copies on remotes: one pool of connections per remote, per router, reused from batch to
batch (docs/design.md#remote-destinations).

A copy is made so that a retry is never a duplicate: a job resumed after its previous owner
stopped first clears the temporaries that owner left, and a copy already there with this very
content (made, then not recorded) counts as made instead of being sent again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from . import Problem
from .pool import Pool
from .urls import Settings, Where, settings_for

@dataclass
class Seen:
    """What a router saw of one remote since it last reported: its last success and last error."""
    success_at: float | None = None
    error: str | None = None
    error_at: float | None = None


@dataclass(frozen=True)
class Made:
    written: bool           # False: a file of that name was there and was kept (conflict keep)
    same: bool = True       # the file there holds this content (written by us, now or before)
    before: bool = False    # it was there already, made before its previous owner stopped


class Remotes:
    """The remotes a router delivers to. Thread-safe: copies are made from several threads."""

    def __init__(self, tables: tuple[Settings, ...], create_folders: bool, dir_mode: int = 0o775):
        self.tables, self.create_folders, self.dir_mode = tables, create_folders, dir_mode
        self._pools: dict[Where, Pool] = {}
        self._lock = threading.Lock()
        self._seen: dict[str, Seen] = {}

    def size(self, where: Where) -> int:
        return settings_for(where, self.tables).max_connections

    def deliver(self, where: Where, folder: str, name: str, data: bytes, sha256: str, *, replace: bool,
                resumed: bool) -> Made:
        """Put ``data`` at ``folder/name`` on ``where``; raises Problem (a place problem)."""
        pool, reused = self._pool(where), False
        try:
            try:
                with pool.connection() as conn:
                    reused = conn.reused
                    made = _made(conn, folder, name, data, sha256, replace, resumed)
            except Problem:
                if not reused:
                    raise
                # A connection made before the remote went away and came back: once more on a new
                # one, looking first for what the broken one may have left or made.
                pool.drop_idle()
                with pool.connection() as conn:
                    made = _made(conn, folder, name, data, sha256, replace, True)
        except Problem as e:
            self._note(where, error=str(e))
            raise
        self._note(where)
        return made

    def news(self) -> dict[str, Seen]:
        """What was seen of each remote since the last call (for bin/status and the dashboard)."""
        with self._lock:
            seen, self._seen = self._seen, {}
        return seen

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def _note(self, where: Where, error: str | None = None) -> None:
        with self._lock:
            seen = self._seen.setdefault(where.label, Seen())
            if error is None:
                seen.success_at = time.time()
            else:
                seen.error, seen.error_at = error, time.time()

    def _pool(self, where: Where) -> Pool:
        with self._lock:
            pool = self._pools.get(where)
            if pool is None:
                settings = settings_for(where, self.tables)
                pool = self._pools[where] = Pool(lambda: _connect(where, settings, self.create_folders, self.dir_mode),
                                                 settings.max_connections)
            return pool


def _made(conn, folder: str, name: str, data: bytes, sha256: str, replace: bool, resumed: bool) -> Made:
    if resumed:
        conn.clean(folder, name)
        if conn.holds(folder, name, sha256):
            return Made(written=True, before=True)
    if conn.put(folder, name, data, sha256, replace):
        return Made(written=True)
    return Made(written=False, same=conn.holds(folder, name, sha256))


def _connect(where: Where, settings: Settings, create_folders: bool, dir_mode: int):
    """A new connection to ``where`` (its protocol's library imported only now)."""
    if where.scheme == "sftp":
        from .sftp import Connection
        return Connection(where, settings, create_folders, dir_mode)
    if where.scheme == "s3":
        from .s3 import Client
        return Client(where, settings)
    from .smb import Session
    return Session(where, settings, create_folders)
