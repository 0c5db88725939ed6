"""A TCP proxy on loopback that refuses connections until it is opened, then forwards them.

It stands for a database host that is down: the programs are given ``127.0.0.1:<port>`` instead of
the real server's address. While closed its socket is bound but not listening, so a connection is
refused at once (ECONNREFUSED, as from a host whose server is not running yet) and the port stays
reserved. ``open()`` starts forwarding to the target; ``close()`` cuts every forwarded connection
and refuses again, as a server going away does.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)):
        self.target = target
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._bound = self._bind(0)
        self.port = self._bound.getsockname()[1]

    def url(self, url: str) -> str:
        """``url`` (a postgresql:// URL to the target) with this proxy's port instead."""
        host, port = self.target
        return url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/")

    @staticmethod
    def _bind(port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return s

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def open(self) -> None:
        """Accept connections and forward each to the target."""
        with self._lock:
            if self._listener is not None:
                return
            self._listener, self._bound = self._bound, None
            self._listener.listen(64)
            listener = self._listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Cut every forwarded connection and refuse new ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            pairs, self._pairs = self._pairs, []
            for pair in pairs:
                for s in pair:
                    _shut(s)
            if listener is not None:
                _shut(listener)         # shutdown wakes the thread blocked in accept(); close alone does not
                self._bound = self._bind(self.port)

    def stop(self) -> None:
        """The end of the test: close everything, the port included."""
        self.close()
        if self._bound is not None:
            self._bound.close()
            self._bound = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return                  # closed
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _shut(client)
                continue
            with self._lock:
                if self._listener is not listener:      # closed meanwhile
                    _shut(client), _shut(server)
                    return
                self._pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    _shut(source)
    _shut(sink)


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
