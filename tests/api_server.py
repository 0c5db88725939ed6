"""A real HTTP server on 127.0.0.1 that answers the notifier from a script, for the tests."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

HANG = "hang"   # a scripted answer: hold the request until ``release`` is set, then answer 200


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
    """Answers each POST from ``script`` in arrival order (an int status, a (status, headers)
    pair, or HANG), then 200; or from ``answer(request)`` when that is set. Counts requests in
    progress, so a test can see how many were in flight at once."""

    def __init__(self):
        self.received: list[Received] = []
        self.script: list = []
        self.answer: Callable[[Received], object] | None = None
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
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

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        api: ApiServer = self.server.api
        request = Received(self.path, dict(self.headers.items()), body, time.time())
        reply = api._take(request)
        try:
            if reply == HANG:
                api.release.wait(30)
                reply = 200
            status, headers = reply if isinstance(reply, tuple) else (reply, {})
            payload = b'{"ok": true}' if status < 300 else b'{"error": "scripted"}'
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True     # the client gave up (a timeout test): nothing to answer
        finally:
            api._done()

    def log_message(self, format, *args):
        pass


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
