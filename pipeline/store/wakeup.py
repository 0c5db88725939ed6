"""Wake-ups on SQLite: every commit writes the database's WAL file, and inotify says so.

PostgreSQL has LISTEN/NOTIFY; SQLite has no way to tell another process that work has come. But in
WAL mode a commit appends its pages to ``<database>-wal``, whoever makes it (a watcher creating a
job, a requeue, another router's outcome), so an inotify watch on the database's folder, for that
one name, wakes an idle router or notifier within a fraction of a millisecond instead of at its
next poll. Events that came while nobody waited wait in the queue: a commit between a program's
last look and its wait still wakes it (at worst once for nothing). inotify is Linux's; where it
cannot be had (no inotify, watches used up) ``WalWatch.open`` says so and the program polls.
"""

from __future__ import annotations

import os
import select
from pathlib import Path

_IN_MODIFY = 0x00000002


class WalWatch:
    def __init__(self, watch, parse, wal_name: bytes):
        self.watch, self.parse = watch, parse       # inotify.Inotify on the database's folder, inotify.parse
        self.wal_name = wal_name

    @classmethod
    def open(cls, database: Path) -> "WalWatch":
        """A watch for commits to ``database``; raises OSError when inotify cannot be had."""
        from .. import inotify      # here (it loads ctypes): only a program that waits for work opens a watch
        watch = inotify.Inotify()
        try:
            watch.add_watch(os.path.dirname(os.path.abspath(database)), _IN_MODIFY)
        except OSError:
            watch.close()
            raise
        return cls(watch, inotify.parse, os.fsencode(os.path.basename(database) + "-wal"))

    def wait(self, seconds: float) -> bool:
        """Up to ``seconds`` for a commit; True when one came (since the last wait, or during it)."""
        if self._drain():
            return True
        ready, _, _ = select.select([self.watch.fd], [], [], max(seconds, 0))
        return bool(ready) and self._drain()

    def _drain(self) -> bool:
        committed = False
        while data := self.watch.read():
            committed |= any(event.name == self.wal_name for event in self.parse(data))
        return committed

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
