"""One time limit over a whole HTTP call made with requests: connect, send, and every read.

requests' ``timeout`` bounds each socket operation, not the call: an answer that trickles in one
byte a second never trips it, and holds the thread (at ``api.concurrency = 1``, every
notification) for as long as the server likes. Here each call gets a ``Deadline``; the sessions
from ``session()`` hand every socket a call uses to it, and one ``Watchdog`` thread shuts the
socket down once the deadline has passed. That wakes the thread blocked on it at once, whatever
it is doing: a TLS handshake, sending, waiting for the headers or reading the body.

Name resolution happens before there is a socket and stays outside the deadline; connecting is
bounded by requests' connect timeout (per address tried), and a call whose deadline passed while it
connected is ended as soon as it has its socket.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

TICK = 0.05                 # seconds between the watchdog's looks: how late past a deadline a call may end

_current = threading.local()    # the deadline of the call the thread is making, if any


class Deadline:
    """One call's time limit, and the socket the call is using."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._over = False          # the call ended: its socket may be back in the pool, hands off
        self._handle: socket.socket | None = None
        self._owned = False         # the handle is the deadline's own dup, to close when done
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket, pooled: bool = False) -> None:
        """Note the socket the call uses now; shut it at once when the deadline has passed already.

        A new connection's socket is watched through a descriptor of the deadline's own (a dup):
        wrapping a socket in TLS detaches the one urllib3 connected, so without its own a deadline
        could not end a handshake. A pooled connection's socket (``pooled``), TLS done, is watched
        as it is, saving a dup and a close per call; it is never closed here, only shut down.
        shutdown acts on the connection, whichever descriptor it is given.
        """
        if pooled:
            handle, owned = sock, False
        else:
            try:
                handle, owned = socket.fromfd(sock.fileno(), sock.family, sock.type), True
            except OSError:
                return              # already closed: the call is ending anyway
        with self._lock:
            if self._over:
                if owned:
                    handle.close()
                return
            self._drop()
            self._handle, self._owned = handle, owned
            if self.expired:
                _shutdown(handle)

    def forget(self, sock: socket.socket) -> None:
        """The call is closing ``sock``: a pooled socket watched as it is must not be shut down
        once closed, when its descriptor number may already be another file's."""
        with self._lock:
            if self._handle is sock:
                self._handle = None

    def expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.expired = True
            if self._handle is not None:
                _shutdown(self._handle)

    def end(self) -> None:
        with self._lock:
            self._over = True
            self._drop()

    def _drop(self) -> None:
        if self._handle is not None and self._owned:
            self._handle.close()
        self._handle = None


def _shutdown(sock: socket.socket) -> None:
    try:
        # shutdown, not close: it wakes the thread blocked on the connection (reading, sending, in a
        # TLS handshake) at once, and the thread's own descriptor stays its own until it closes it.
        # The plain socket's shutdown even on a TLS socket: SSLSocket's own would drop its TLS state
        # under the thread reading it. A socket closed meanwhile has no descriptor: OSError.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass                        # the peer has gone already


class Watchdog:
    """Ends every call that outlives its deadline; one thread for all the calls in flight."""

    def __init__(self):
        self._live: set[Deadline] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="notify-deadlines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[Deadline]:
        """A deadline for the calls this thread makes inside the block (one at a time)."""
        deadline = Deadline(seconds)
        with self._lock:
            self._live.add(deadline)
        _current.deadline = deadline
        try:
            yield deadline
        finally:
            _current.deadline = None
            deadline.end()
            with self._lock:
                self._live.discard(deadline)

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            now = time.monotonic()
            with self._lock:
                overdue = [d for d in self._live if d.at <= now]
            for deadline in overdue:
                deadline.expire()


def _watch(sock: socket.socket, pooled: bool = False) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock, pooled)


class _Watched:
    """Hands each socket to the call's deadline: a new one as soon as it is connected (before any
    TLS handshake), a pooled one when a request starts on it."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _watch(sock)
        return sock

    def request(self, *args, **kwargs):
        if self.sock is not None:
            _watch(self.sock, pooled=True)
        return super().request(*args, **kwargs)

    def close(self) -> None:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None and self.sock is not None:
            deadline.forget(self.sock)
        super().close()


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy, **kwargs):
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):   # SOCKS brings its own connections: unwatched
            manager.pool_classes_by_scheme = _POOLS
        return manager


def session() -> requests.Session:
    """A requests session whose calls a ``Watchdog.deadline`` bounds."""
    s = requests.Session()
    s.mount("http://", _Adapter())
    s.mount("https://", _Adapter())
    return s
