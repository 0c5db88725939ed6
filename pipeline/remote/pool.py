"""A pool of connections to one remote: opened on first need, reused, at most ``size`` at once."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Generic, Iterator, TypeVar

C = TypeVar("C")


class Pool(Generic[C]):
    """Connections made by ``connect``; a connection whose use raised is closed, not reused (it may
    be half-way through a request, or talking to a server that has gone)."""

    def __init__(self, connect: Callable[[], C], size: int):
        self._connect = connect
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[C] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[C]:
        with self._slots:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
                conn.reused = False
            else:
                conn.reused = True      # made before: the remote may have gone and come back since
            try:
                yield conn
            except BaseException:
                _close(conn)
                raise
            with self._lock:
                self._idle.append(conn)

    def drop_idle(self) -> None:
        """After a reused connection failed: drop the idle ones too, made as long ago."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


def _close(conn) -> None:
    try:
        conn.close()
    except Exception:       # noqa: BLE001 - closing a broken connection may fail; it is dropped either way
        pass
