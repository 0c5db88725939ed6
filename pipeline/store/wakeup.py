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

import errno
import os
import select
import struct
from pathlib import Path

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")      # wd, mask, cookie, len; then len bytes of name


class WalWatch:
    def __init__(self, fd: int, wal_name: bytes):
        self.fd = fd
        self.wal_name = wal_name

    @classmethod
    def open(cls, database: Path) -> "WalWatch":
        """A watch for commits to ``database``; raises OSError when inotify cannot be had."""
        import ctypes       # here: only a program that waits for work opens a watch, not the scanner
        # libc from the process's own symbols (Python is linked with it): ctypes.util.find_library
        # would run ldconfig in a child process to find its file.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        folder = os.fsencode(os.path.dirname(os.path.abspath(database)))
        if libc.inotify_add_watch(fd, folder, _IN_MODIFY) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"inotify_add_watch: {os.strerror(error)}")
        return cls(fd, os.fsencode(os.path.basename(database) + "-wal"))

    def wait(self, seconds: float) -> bool:
        """Up to ``seconds`` for a commit; True when one came (since the last wait, or during it)."""
        if self._drain():
            return True
        ready, _, _ = select.select([self.fd], [], [], max(seconds, 0))
        return bool(ready) and self._drain()

    def _drain(self) -> bool:
        committed = False
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return committed
                raise
            offset = 0
            while offset < len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                committed |= data[start:start + length].rstrip(b"\0") == self.wal_name
                offset = start + length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
