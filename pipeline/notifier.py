"""The notifier: POSTs each routed job's JSON to the API, with retries and backoff (SPEC §7).

The main thread claims due jobs and commits their outcomes; a pool of ``api.concurrency`` worker
threads only makes the HTTP calls, so one slow call never holds the others. No HTTP call happens
inside a write transaction: claim (commit), POST, commit the outcome.

The retry schedule lives in the table: a failed attempt commits ``attempts`` and the time of the
next one (``next_attempt_at``), so a notifier killed between attempts resumes the same schedule
and neither loses an attempt nor makes one early. Every request carries ``Idempotency-Key: <job
uuid>``, the same on every attempt, so the receiver can drop the duplicate that a crash between
POST and commit produces.

The API is not trusted to behave: ``api.timeout`` bounds each whole call (a ``deadline.Watchdog``
ends one that trickles), only the first ``BODY_CAP`` bytes of an answer are read, and a
``Retry-After`` is honoured up to ``api.max_retry_after``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import http.client
import itertools
import logging
import math
import os
import socket
import ssl
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

import backoff
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from . import activity, cli, deadline, failures
from . import db as db_module
from .activity import Heartbeat
from .config import Config, ConfigError, header_value_problem
from .files import Folders, Modes
from .jobs import MAX_CLAIMS, NOTIFY_QUEUE, Claimed, Jobs, LeaseLost

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05        # seconds between looks at the queue while nothing is due
UTF8_BOM = b"\xef\xbb\xbf"      # stripped: JSON on the wire must not start with one
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


def backoff_delay(attempt: int, cap: float) -> float:
    """Seconds to wait after failed attempt number ``attempt``: 2**attempt, capped at ``cap``.

    backoff.expo yields 1, 2, 4, ... once primed, so the value at index ``attempt`` is 2**attempt:
    2 s after the first attempt, 4 s after the second. No jitter: the schedule is exact.
    """
    waits = backoff.expo(base=2, factor=1, max_value=cap)
    next(waits)             # backoff's wait generators first yield None (they are primed by send)
    return float(next(itertools.islice(waits, attempt, None)))


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


@dataclass
class Call:
    """A claimed job on its way to the API."""
    token: str
    job: Claimed
    started: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return f"{self.job.client_folder}/{self.job.file_name}"


@dataclass
class Outcome:
    """What to commit for a call: notified, wait (a retry later) or failed."""
    call: Call
    kind: str
    attempts: int
    message: str
    delay: float = 0.0


class Notifier:
    def __init__(self, config: Config, jobs: Jobs, stopper: cli.Stopper | None = None,
                 environ: Mapping[str, str] = os.environ):
        self.config = config
        self.jobs = jobs
        self.stopper = stopper or cli.Stopper()
        api = config.api
        self.headers = resolve_headers(api.headers, environ)
        # A claimed job may wait in the pool behind one full timeout before its own call starts.
        self.lease = api.timeout * 2 + 30
        self.in_flight_limit = api.concurrency * 2
        self.error_log = failures.ErrorLog(config.paths.error_log, jobs, Folders(
            Modes(file=config.router.file_mode, dir=config.router.dir_mode), create=True))
        self.watchdog = deadline.Watchdog()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, once: bool = False, heartbeat: Heartbeat | None = None) -> None:
        """Notify due jobs until stopped; with ``once``, until nothing is due or in flight."""
        if not self.config.api.endpoint:
            self._idle(once, heartbeat)
            return
        log.info("notifying %s with %d requests in flight at most", redact(self.config.api.endpoint),
                 self.config.api.concurrency)
        self.watchdog.start()
        try:
            with ThreadPoolExecutor(self.config.api.concurrency, thread_name_prefix="notify") as pool:
                self._loop(pool, once, heartbeat)
        finally:
            self.watchdog.stop()
            with self._sessions_lock:
                for session in self._sessions:
                    session.close()

    def _idle(self, once: bool, heartbeat: Heartbeat | None) -> None:
        log.info("no api.endpoint configured: routed is the final state, nothing to notify")
        if heartbeat:
            heartbeat.beat()
        if not once:
            activity.sleep(self.stopper, math.inf, heartbeat)

    def _loop(self, pool: ThreadPoolExecutor, once: bool, heartbeat: Heartbeat | None) -> None:
        in_flight: dict[Future, Call] = {}
        ready: list[Outcome] = []           # decided, not yet committed
        unsent: list[Call] = []             # claimed, never sent, to give back on a stop
        pause = POLL_INTERVAL
        while True:
            if heartbeat:
                heartbeat.beat()
            stopping = self.stopper.requested
            if stopping:
                unsent += [in_flight.pop(f) for f in list(in_flight) if f.cancel()]
            claimed = 0
            try:
                if not stopping and len(in_flight) < self.in_flight_limit and self.jobs.has_due(NOTIFY_QUEUE):
                    claimed = self._claim(pool, in_flight, ready)
                if ready:
                    self._commit(ready)
                    ready = []
                if unsent:
                    self._release(unsent)
                    unsent = []
                pause = POLL_INTERVAL
            except Exception as e:
                pause = min(pause * 2, 5.0)
                if not db_module.retry_later(self.jobs.db, e, f"trying again in {pause:.1f}s", once):
                    raise
                self.stopper.wait(pause)
                continue
            if not in_flight:
                if stopping or once and not claimed:
                    return
                if not claimed:
                    self.stopper.wait(POLL_INTERVAL)
                continue
            done, _ = wait(in_flight, timeout=POLL_INTERVAL, return_when=FIRST_COMPLETED)
            now = self.jobs.clock()
            for future in done:
                call, answer = in_flight.pop(future), future.result()
                if answer is None:
                    unsent.append(call)
                else:
                    ready.append(self._decide(call, answer, now))

    def _claim(self, pool: ThreadPoolExecutor, in_flight: dict[Future, Call], ready: list[Outcome]) -> int:
        """Claim due jobs up to the in-flight limit and hand them to the pool; returns how many."""
        batch = self.jobs.claim(NOTIFY_QUEUE, self.in_flight_limit - len(in_flight), self.lease)
        for job in batch.jobs:
            call = Call(batch.token, job)
            if job.claims > MAX_CLAIMS:
                ready.append(Outcome(call, "failed", job.attempts,
                                     f"claimed {job.claims - 1} times without an outcome being recorded "
                                     "(the notifier stopped each time); not tried again"))
            else:
                in_flight[pool.submit(self._call, job)] = call
        return len(batch.jobs)

    def _release(self, calls: list[Call]) -> None:
        """Give back jobs claimed but never sent (a stop): due at once, their claim not counted."""
        tokens: dict[str, list[int]] = {}
        for call in calls:
            tokens.setdefault(call.token, []).append(call.job.id)
        for token, job_ids in tokens.items():
            self.jobs.release(token, job_ids)

    # -- one call (in a worker thread) ------------------------------------------------------------

    def _session(self) -> requests.Session:
        """One pooled session per worker thread: requests does not promise that sharing is safe."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = deadline.session()
            session.verify = self.config.api.verify_tls
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _call(self, job: Claimed) -> Answer | None:
        """POST the job's archived JSON; None when a stop came first. Never raises: an unexpected
        error is logged and retried."""
        if self.stopper.requested:          # queued behind a call that finished after the stop
            return None
        try:
            return self._post(job)
        except Exception as e:
            log.exception("%s/%s: unexpected error while notifying", job.client_folder, job.file_name)
            return Answer("retry", f"unexpected error while notifying: {type(e).__name__}")

    def _post(self, job: Claimed) -> Answer:
        api = self.config.api
        if not job.archive_path:
            return Answer("fail", "no archived copy is recorded for the job: nothing to send", attempted=False)
        try:
            data = Path(job.archive_path).read_bytes()
        except FileNotFoundError:
            return Answer("fail", f"archived copy {job.archive_path} is missing: nothing to send", attempted=False)
        except OSError as e:
            return Answer("fail", f"cannot read the archived copy {job.archive_path}: {e.strerror}",
                          attempted=False)
        if job.sha256 and hashlib.sha256(data).hexdigest() != job.sha256:
            return Answer("fail", f"archived copy {job.archive_path} was replaced by a newer file of the same name "
                                  "before it was sent (the newer job sends its own)", attempted=False)
        body = data[len(UTF8_BOM):] if data.startswith(UTF8_BOM) else data
        headers = CaseInsensitiveDict(self.headers)
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = job.uuid
        # Only the start of an answer is read, as it came: a compressed one would say nothing.
        headers.setdefault("Accept-Encoding", "identity")
        with self.watchdog.deadline(api.timeout) as limit:
            try:
                # Redirects are not followed: requests would turn the POST into a GET. verify is given per
                # request because requests lets REQUESTS_CA_BUNDLE override a session's verify=False.
                response = self._session().post(api.endpoint, data=body, headers=headers, timeout=api.timeout,
                                                allow_redirects=False, verify=api.verify_tls, stream=True)
            except requests.RequestException as e:
                if limit.expired:
                    return Answer("retry", f"API did not answer within {api.timeout:g} s")
                return Answer("retry", describe_error(e, api.timeout))
            # Closing an answer read to its end keeps the connection for the next call; closing one
            # that was not closes the connection, so the rest of it is never read.
            with response:
                return self._read(response, limit)

    def _read(self, response: requests.Response, limit: deadline.Deadline) -> Answer:
        """The answer, once its body has ended or ``BODY_CAP`` bytes of it came within the deadline.

        An answer cut short is no answer, whatever its status said: the call is retried (the
        Idempotency-Key makes that safe).
        """
        timeout = self.config.api.timeout
        try:
            start = read_start(response.raw)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
            if not limit.expired:
                return Answer("retry", f"{said(response)} but the answer broke off: {_root_reason(e)}")
            start = b""
        if limit.expired:
            return Answer("retry", f"{said(response)} but sent no complete answer within api.timeout "
                                   f"({timeout:g} s)")
        return classify(response, start, secrets=self._secrets(response.request))

    def _secrets(self, request: requests.PreparedRequest) -> list[str]:
        """What an answer must never be quoted with: every configured header value and the credentials
        sent (Basic auth from a user:password@ endpoint), whole and by their last word (the token)."""
        values = [*self.headers.values(), request.headers.get("Authorization", ""),
                  request.headers.get("Proxy-Authorization", ""),
                  unquote(urlsplit(self.config.api.endpoint).password or "")]
        forms = {form for value in values if value.strip() for form in (value, value.split()[-1])}
        return sorted(forms, key=len, reverse=True)

    # -- outcomes (main thread) -------------------------------------------------------------------

    def _decide(self, call: Call, answer: Answer, now: float) -> Outcome:
        api = self.config.api
        attempts = call.job.attempts + (1 if answer.attempted else 0)
        if answer.kind == "ok":
            return Outcome(call, "notified", attempts, answer.message)
        if answer.kind == "fail":
            return Outcome(call, "failed", attempts, answer.message)
        if attempts >= api.max_attempts:
            return Outcome(call, "failed", attempts,
                           f"{answer.message} (attempt {attempts} of {api.max_attempts}; giving up)")
        attempt = f"attempt {attempts} of {api.max_attempts}"
        delay = retry_after(answer.retry_after, now)
        if delay is None:
            delay = backoff_delay(attempts, api.backoff_cap)
        elif delay > api.max_retry_after:       # an API asking for days (or for ever) gets the cap
            asked = f"{delay:.0f} s" if delay < 1e12 else "of over 10^12 s"
            attempt += f"; Retry-After {asked} cut to api.max_retry_after, {api.max_retry_after:g} s"
            delay = api.max_retry_after
        return Outcome(call, "wait", attempts, f"{answer.message} ({attempt})", delay)

    def _commit(self, outcomes: list[Outcome]) -> None:
        """Commit decided outcomes in one transaction, then log them and write the error logs."""
        with self.jobs.transaction():
            for o in outcomes:
                try:
                    self._record(o)
                except LeaseLost:
                    log.warning("%s: lease lost (the call took longer than %gs); leaving the job to its new "
                                "owner", o.call.label, self.lease)
                    o.kind = "lost"
        for o in outcomes:
            self._report(o)
        self.error_log.flush(new=any(o.kind == "failed" for o in outcomes))

    def _record(self, o: Outcome) -> None:
        token, job = o.call.token, o.call.job
        if o.kind == "notified":
            self.jobs.notified(token, job.id, o.attempts, f"{o.message} on attempt {o.attempts}")
        elif o.kind == "wait":
            self.jobs.wait(token, job, o.delay, o.message, o.attempts)
        else:
            self.jobs.failed(token, job, "notify", o.message, o.attempts,
                             file_path=job.archive_path or job.source_path)

    def _report(self, o: Outcome) -> None:
        ms = (time.monotonic() - o.call.started) * 1000
        if o.kind == "notified":
            log.info("notified %s: %s on attempt %d (%.0f ms)", o.call.label, o.message, o.attempts, ms)
        elif o.kind == "wait":
            log.warning("%s: %s; trying again in %gs", o.call.label, o.message, o.delay)
        elif o.kind == "failed":
            log.error("failed %s at notify: %s", o.call.label, o.message)


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
    excerpt = " ".join(text.split())
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
        return f"API TLS error: {_root_reason(error)}"
    if isinstance(error, requests.ConnectionError):
        return f"API unreachable: {_root_reason(error)}"
    return f"API call failed: {_root_reason(error)}"


def _root_reason(error: BaseException) -> str:
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


def main(argv: list[str] | None = None) -> int:
    return cli.serve("notifier", "POST each routed job's JSON to api.endpoint, retrying with backoff.",
                     lambda ctx: Notifier(ctx.config, Jobs(ctx.db, ctx.actor), ctx.stopper), argv)

if __name__ == "__main__":
    raise SystemExit(main())
