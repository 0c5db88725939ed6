"""A real HTTP server on 127.0.0.1 that answers the notifier from a script, for the tests."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

HANG = "hang"   # a scripted answer: hold the request until ``release`` is set, then answer 200
BLOCK = b"x" * 2**16


@dataclass(frozen=True)
class Huge:
    """A scripted answer whose body has ``size`` bytes, made as it is sent (never held in memory);
    with ``cut``, the server hangs up after that many bytes of it."""
    status: int = 200
    size: int = 300 * 2**20
    cut: int | None = None


@dataclass(frozen=True)
class Trickle:
    """A scripted answer that comes one byte every ``every`` seconds: its body (``length`` bytes), or
    with ``head`` its headers too, so that no socket read ever waits long."""
    status: int = 200
    length: int = 200
    every: float = 0.05
    head: bool = False


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float           # time.time() when the request was read

    @property
    def key(self) -> str:
        return self.headers.get("Idempotency-Key", "")


class ApiServer:
    """Answers each POST from ``script`` in arrival order (an int status, a (status, headers) pair
    or a (status, headers, body) triple, HANG, Huge or Trickle), then 200; or from
    ``answer(request)`` when that is set. Counts requests in progress, so a test can see how many
    were in flight at once."""

    def __init__(self):
        self.received: list[Received] = []
        self.script: list = []
        self.answer: Callable[[Received], object] | None = None
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
        self.streamed: list[tuple[int, bool]] = []     # per Huge or Trickle answer: (bytes sent, all sent)
        self.connections = 0                            # TCP connections accepted
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.api = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/jobs"

    def keys(self) -> list[str]:
        return [r.key for r in self.received]

    def _take(self, request: Received) -> object:
        with self._lock:
            self.received.append(request)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.answer is not None:
                return self.answer(request)
            return self.script.pop(0) if self.script else 200

    def _done(self) -> None:
        with self._lock:
            self.active -= 1

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive, so the notifier's pooled sessions are used
    disable_nagle_algorithm = True      # headers and body are two writes: no 40 ms delayed-ACK stall

    def setup(self):
        super().setup()
        api: ApiServer = self.server.api
        with api._lock:
            api.connections += 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        api: ApiServer = self.server.api
        request = Received(self.path, dict(self.headers.items()), body, time.time())
        reply = api._take(request)
        try:
            if reply == HANG:
                api.release.wait(30)
                reply = 200
            if isinstance(reply, (Huge, Trickle)):
                self._stream(reply)
                return
            status, headers, *payload = reply if isinstance(reply, tuple) else (reply, {})
            payload = payload[0] if payload else b'{"ok": true}' if status < 300 else b'{"error": "scripted"}'
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Type" not in headers:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True     # the client gave up (a timeout test): nothing to answer
        finally:
            api._done()

    def _stream(self, reply: Huge | Trickle) -> None:
        """Send a Huge or Trickle answer, recording how much of it went out before the client hung up."""
        api: ApiServer = self.server.api
        length = reply.size if isinstance(reply, Huge) else reply.length
        head = (f"HTTP/1.1 {reply.status} {http.client.responses[reply.status]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()
        whole, sent = len(head) + length, 0
        try:
            if not (isinstance(reply, Trickle) and reply.head):
                sent += self.wfile.write(head)
            if isinstance(reply, Huge):
                end = whole if reply.cut is None else sent + reply.cut
                while sent < end:
                    sent += self.wfile.write(BLOCK[:end - sent])
            else:
                rest = (b"" if sent else head) + b"x" * length
                for i in range(len(rest)):
                    if api.release.wait(reply.every):       # the test is over
                        break
                    sent += self.wfile.write(rest[i:i + 1])
        except OSError:
            pass                        # the client hung up
        self.close_connection = True
        with api._lock:
            api.streamed.append((sent, sent == whole))

    def log_message(self, format, *args):
        pass


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrickleTls:
    """A listener on 127.0.0.1 that starts every connection's TLS handshake, as a server would,
    and then sends it one byte every ``every`` seconds: a client that bounds only each socket read
    never finishes the handshake. ``hung_up`` counts the connections the client closed."""

    def __init__(self, every: float = 0.05):
        self.every = every
        self.hung_up = 0
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._sock.getsockname()[1]}/jobs"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        # A handshake record (type 22, TLS 1.2) announcing 16 KiB: the client waits for all of it.
        with conn:
            try:
                conn.sendall(b"\x16\x03\x03\x40\x00")
                while not self._stop.wait(self.every):
                    conn.sendall(b"\x02")
            except OSError:
                self.hung_up += 1

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
