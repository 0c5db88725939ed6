"""The HTTP side of notifying (docs/design.md#notification): the request's headers, and what an answer means.

Nothing here touches the job table: ``notifier.py`` claims, calls and commits; this module says
what to send and how to read what came back, without trusting the API to behave (only the first
``BODY_CAP`` bytes of an answer are read, a ``Retry-After`` may be an HTTP date, a refusal is
quoted with every secret masked).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http.client
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from .config import ConfigError
from .convert import CONTROL_CHARACTERS, header_value_problem

RETRIED_STATUSES = {408, 429}
BODY_CAP = 64 * 1024            # bytes of an answer read at most: its status says what happened, the
                                # start of its body why; the rest is never read (nor held in memory)


def resolve_headers(configured: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The configured headers with each ``env:NAME`` value read from the environment, once at start.

    A missing variable, or one holding a CR, LF or other control character (header injection), is
    a configuration error naming the header and the variable, never the value.
    """
    resolved = {}
    for name, value in configured.items():
        if value.startswith("env:"):
            variable = value[4:]
            if variable not in environ:
                raise ConfigError(f"[api] headers {name}: the environment variable {variable} is not set")
            value = environ[variable]
            problem = header_value_problem(value)
            if problem:
                raise ConfigError(f"[api] headers {name}: the environment variable {variable} {problem} "
                                  "(its value is not shown)")
        resolved[name] = value
    return resolved


def retry_after(value: str | None, now: float) -> float | None:
    """A Retry-After header in seconds from ``now``: delay-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():     # str.isdigit alone takes "²", which float() refuses
        return float(value)                     # 400 nines: inf, which the caller caps
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:             # "-0000" in a date means UTC with no zone information
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(when.timestamp() - now, 0.0)


def redact(url: str) -> str:
    """The endpoint as it may be logged: credentials in the address are hidden."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"***@{host}" + (f":{parts.port}" if parts.port else "")))


@dataclass(frozen=True)
class Answer:
    """What one call came to, as a worker thread found it."""
    kind: str                       # "ok", "retry" (worth another attempt) or "fail" (never will be)
    message: str                    # one line a person understands
    attempted: bool = True          # False when nothing was sent (the archived copy is missing)
    retry_after: str | None = None  # the raw header, turned into a delay with the injected clock


def read_start(raw: urllib3.BaseHTTPResponse) -> bytes:
    """The body's first ``BODY_CAP`` bytes, or all of it when shorter; raises when it breaks off.

    A read may return less than asked; only an empty one says the body ended (and makes urllib3 check
    that it ended where Content-Length said). Undecoded: a compressed body could grow without bound.
    """
    start = b""
    while len(start) < BODY_CAP:
        chunk = raw.read(BODY_CAP - len(start), decode_content=False)
        if not chunk:
            break
        start += chunk
    return start


def said(response: requests.Response) -> str:
    """What the answer's status line says, e.g. "API answered 503 Service Unavailable"."""
    status = response.status_code
    return f"API answered {status} {response.reason or http.client.responses.get(status, '')}".rstrip()


def classify(response: requests.Response, start: bytes, secrets: Iterable[str] = ()) -> Answer:
    """2xx succeeds; 408, 429 and 5xx are worth another attempt; anything else never will be.

    A refusal quotes ``start``, the start of the answer's body (it often says what is wrong), with
    any header value masked: an API that echoes the request must not put a token into the log.
    """
    status, line = response.status_code, said(response)
    if 200 <= status < 300:
        return Answer("ok", line)
    if status in RETRIED_STATUSES or 500 <= status < 600:
        return Answer("retry", line, retry_after=response.headers.get("Retry-After"))
    if 300 <= status < 400:
        where = response.headers.get("Location")
        return Answer("fail", f"{line}{f' to {where}' if where else ''}; redirects are not followed, "
                              "check api.endpoint")
    secrets = [secret for secret in secrets if secret]
    text = _text(response, start)
    if len(start) >= BODY_CAP:      # cut: a secret running past the cut could not be matched below
        text = text[:len(text) - max(map(len, secrets), default=0)]
    # One line a log and every engine's text hold: control characters (a NUL, which PostgreSQL
    # refuses; a terminal escape) count as the whitespace they are collapsed with.
    excerpt = " ".join(CONTROL_CHARACTERS.sub(" ", text).split())
    for secret in secrets:
        excerpt = excerpt.replace(secret, "***")
    excerpt = excerpt[:200]
    return Answer("fail", f"{line}{f': {excerpt}' if excerpt else ''} (not retried)")


def _text(response: requests.Response, start: bytes) -> str:
    """The body's start as text; nothing when the API compressed it although asked not to."""
    if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        return ""
    try:
        return start.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:                     # a charset Python does not know
        return start.decode("utf-8", errors="replace")


def describe_error(error: requests.RequestException, timeout: float) -> str:
    """One line for a call that got no answer: unreachable, timed out, TLS."""
    if isinstance(error, requests.ConnectTimeout):
        return f"API did not accept a connection within {timeout:g} s"
    if isinstance(error, requests.Timeout):
        return f"API did not answer within {timeout:g} s"
    if isinstance(error, requests.exceptions.SSLError):
        return f"API TLS error: {root_reason(error)}"
    if isinstance(error, requests.ConnectionError):
        return f"API unreachable: {root_reason(error)}"
    return f"API call failed: {root_reason(error)}"


def root_reason(error: BaseException) -> str:
    """The innermost cause worth telling a person (urllib3 wraps it three levels deep)."""
    reason, seen = type(error).__name__, set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return "host name not found"
        if isinstance(current, http.client.RemoteDisconnected):
            return "the connection was closed without an answer"
        if isinstance(current, http.client.IncompleteRead):
            return "the connection was closed before the end of the answer"
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or "certificate verify failed"
        if isinstance(current, OSError) and current.strerror:
            reason = current.strerror[0].lower() + current.strerror[1:]
        inner = [current.__cause__, getattr(current, "reason", None), *current.args[:1], current.__context__]
        current = next((e for e in inner if isinstance(e, BaseException)), None)
    return reason
