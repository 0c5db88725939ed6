"""Alert channels through Apprise (docs/design.md#reports-and-alerts): chat and webhook services besides email.

``[alerts] urls`` holds Apprise URLs, or ``"env:NAME"`` to read one from the environment at start:
the URLs carry tokens. Those tokens must never reach a log, a table or an error message, so a
channel is known by its ``label`` (scheme, host and the tokens cut to their first and last
character) and its ``key`` (a hash), and every line Apprise itself logs is redacted and passed on
at DEBUG: the reporter logs each failure once, in its own words.

``concurrently`` runs the sends of one alert side by side, each bounded by
``alerts.channel_timeout``: a channel that hangs is given up on (and retried later) while the
others are delivered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit

import apprise

from ..config import ConfigError

log = logging.getLogger(__name__)


class ChannelError(Exception):
    """A channel did not take the alert; the text says why in one line, with no secret in it."""


@dataclass(frozen=True)
class Channel:
    key: str            # "channel:" and a hash of the URL: which delivery row is whose
    label: str          # for people and logs
    url: str = ""       # the real URL: never logged, never stored

    def __repr__(self) -> str:
        return f"Channel({self.label!r})"


_secrets: set[str] = set()
_captured: dict[int, list[str]] = {}


def resolve(urls: Sequence[str], environ: Mapping[str, str] = os.environ) -> list[Channel]:
    """The configured channels, each URL read (``env:NAME``) and checked by Apprise, once at start.

    A missing variable or a URL Apprise does not know is a configuration error naming the entry and
    the variable, never the URL.
    """
    return [resolve_one(i, text, environ) for i, text in enumerate(urls, 1)]


def resolve_one(i: int, text: str, environ: Mapping[str, str] = os.environ) -> Channel:
    """The ``i``-th entry of ``[alerts] urls`` as a channel (ConfigError naming the entry)."""
    where = f"[alerts] urls #{i}"
    name = None
    if text.startswith("env:"):
        name = text[4:]
        if not environ.get(name):
            raise ConfigError(f"{where}: the environment variable {name} is not set")
        text = environ[name]
    _secrets.update(secrets_of(text))
    plugin = apprise.Apprise.instantiate(text)
    if plugin is None:
        source = f"the environment variable {name}" if name else "it"
        raise ConfigError(f"{where}: {source} does not hold a URL Apprise can send to (the value is not shown)")
    label = redact(_shorten(plugin.url(privacy=True)))
    return Channel(key="channel:" + hashlib.sha256(text.encode()).hexdigest()[:16],
                   label=f"{name} {label}" if name else label, url=text)


def send(channel: Channel, title: str, body: str, timeout: float) -> None:
    """Post one alert to ``channel``; raises ChannelError (redacted) when it did not take it."""
    plugin = apprise.Apprise.instantiate(channel.url)
    for attribute in ("socket_connect_timeout", "socket_read_timeout"):
        if hasattr(plugin, attribute):
            setattr(plugin, attribute, timeout)
    me = threading.get_ident()
    _captured[me] = []
    try:
        ok = plugin.notify(body=body, title=title)
    except Exception as e:                   # a plugin's own defect: the channel failed, not the reporter
        raise ChannelError(redact(f"{type(e).__name__}: {e}")) from None
    finally:
        said = _captured.pop(me, [])
    if not ok:
        raise ChannelError(said[-1] if said else "Apprise reported a failure")


def concurrently(calls: Mapping[str, Callable[[], None]], timeout: float) -> dict[str, str | None]:
    """Run each call in a thread of its own; after ``timeout`` seconds give up on those not done.
    Returns, per key, None (done) or why not. Threads given up on are daemons: they never hold the
    program (nor ``--once``) open."""
    results: dict[str, str | None] = {}
    threads = {}

    def run(key: str, call: Callable[[], None]) -> None:
        try:
            call()
            results[key] = None
        except Exception as e:
            results[key] = redact(str(e)) or type(e).__name__

    for key, call in calls.items():
        threads[key] = threading.Thread(target=run, args=(key, call), name=f"alert {key}", daemon=True)
        threads[key].start()
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.daemon = True
    timer.start()
    for thread in threads.values():
        while thread.is_alive() and not deadline.is_set():
            thread.join(0.05)
    timer.cancel()
    return {key: results[key] if key in results else f"no answer within {timeout:g}s" for key in calls}


# -- keeping the tokens out of the logs ------------------------------------------------------------

def secrets_of(url: str) -> set[str]:
    """The parts of a URL that may be tokens: user, password, path segments, query values, and a
    host that is no host name (Slack's first token sits there)."""
    try:
        parts = urlsplit(url)
        found = {parts.username, parts.password, *parts.path.split("/"), *(v for _, v in parse_qsl(parts.query))}
        host = parts.hostname or ""
    except ValueError:
        return {url}
    if host and "." not in host and host != "localhost":
        found.add(host)
    return {s for s in found if s and len(s) >= 4} | {url}


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ***."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _shorten(url: str) -> str:
    """A label: the URL without its options, each long path segment cut to its ends."""
    base = url.split("?", 1)[0].rstrip("/")
    scheme, sep, rest = base.partition("://")
    host, _, path = rest.partition("/")
    segments = [s if len(s) < 4 or "..." in s else f"{s[0]}...{s[-1]}" for s in path.split("/") if s]
    return scheme + sep + "/".join([host, *segments])


class _AppriseLog(logging.Handler):
    """Apprise's own log lines: kept per thread for the failure's reason, and passed on, redacted,
    at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        text = redact(record.getMessage())
        if record.levelno >= logging.WARNING and record.thread in _captured:
            _captured[record.thread].append(text)
        log.debug("apprise: %s", text)


_apprise_log = logging.getLogger("apprise")
_apprise_log.handlers[:] = [_AppriseLog()]
_apprise_log.propagate = False
_apprise_log.setLevel(logging.INFO)
