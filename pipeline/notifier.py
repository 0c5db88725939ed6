"""The notifier: POSTs each routed job's JSON to the API, with retries and backoff (docs/design.md#notification).

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

import hashlib
import http.client
import logging
import math
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from . import cli, deadline, failures, retry, steering
from .api import (Answer, classify, describe_error, read_start, redact, resolve_headers, retry_after,
                  root_reason, said)
from .config import Config
from .files import Folders
from .jobs import Claimed, Jobs, LeaseLost
from .states import MAX_CLAIMS, NOTIFY_QUEUE
from .program import Program

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05        # seconds between looks at the queue while nothing is due
COMMIT_WITHIN = 0.02        # seconds a decided outcome may wait for others to share its commit
UTF8_BOM = b"\xef\xbb\xbf"      # stripped: JSON on the wire must not start with one


@dataclass
class Call:
    """A claimed job on its way to the API."""
    token: str
    job: Claimed
    started: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return self.job.label


@dataclass
class Outcome:
    """What to commit for a call: notified, wait (a retry later) or failed."""
    call: Call
    kind: str
    attempts: int
    message: str
    delay: float = 0.0
    decided: float = field(default_factory=time.monotonic)


class Notifier(Program):
    wakes_on_work = True

    def __init__(self, config: Config, jobs: Jobs, stopper: cli.Stopper | None = None,
                 environ: Mapping[str, str] = os.environ):
        self.config = config
        self.jobs = jobs
        self.db = jobs.db
        self._said_paused = False       # the notification pause was said in the log
        self.stopper = stopper or cli.Stopper()
        api = config.api
        # Without an endpoint nothing is sent: a header's variable need not be set (an example
        # configuration with its Authorization line must not stop the notifier).
        self.environ = environ
        self.headers = resolve_headers(api.headers, environ) if api.endpoint else {}
        self._next: tuple[Config, dict] | None = None      # a reloaded configuration, not taken yet
        # A claimed job may wait in the pool behind one full timeout before its own call starts.
        self.lease = api.timeout * 2 + 30
        self.in_flight_limit = api.concurrency * 2
        self.error_log = failures.ErrorLog(config.paths.error_log, jobs.db, Folders.made_as(config.router))
        self.watchdog = deadline.Watchdog()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # -- the loop's step ---------------------------------------------------------------------------

    def start(self) -> None:
        self.in_flight: dict[Future, Call] = {}
        self.ready: list[Outcome] = []          # decided, not yet committed
        self.unsent: list[Call] = []            # claimed, never sent, to give back
        self.pool = None
        self._start_pool()

    def _start_pool(self) -> None:
        if not self.config.api.endpoint:
            log.info("no api.endpoint configured: routed is the final state, nothing to notify")
            return
        log.info("notifying %s with %d requests in flight at most", redact(self.config.api.endpoint),
                 self.config.api.concurrency)
        self.watchdog.start()
        self.pool = ThreadPoolExecutor(self.config.api.concurrency, thread_name_prefix="notify")

    def step(self, now: float) -> float:
        """Claim what is due (up to the in-flight limit), commit what was decided, then wait up to
        POLL_INTERVAL for calls to end. With ``--once``: until nothing is due or in flight."""
        if self._next is not None and not self.in_flight:
            self._take_config()
        if self.pool is None or not self.config.api.endpoint:
            return math.inf
        claimed = self._settle(claim=self._next is None)
        if not self.in_flight:
            return 0 if claimed else POLL_INTERVAL
        self._collect(POLL_INTERVAL)
        return 0

    def configure(self, config: Config) -> None:
        """A reloaded configuration is taken once no call is in flight (none is claimed meanwhile):
        a call and the reading of its answer use one endpoint, one set of headers, one timeout."""
        headers = resolve_headers(config.api.headers, self.environ) if config.api.endpoint else {}
        self._next = (config, headers)          # ConfigError above: nothing changed

    def _take_config(self) -> None:
        config, headers = self._next
        if not config.api.endpoint:
            self._settle(claim=False)           # what was decided is committed first
            if self.config.api.endpoint:
                log.info("api.endpoint emptied: routed is the final state from now on, nothing to notify")
        self.config, self.headers, self._next = config, headers, None
        self.lease = config.api.timeout * 2 + 30
        if self.pool is None:                   # the API turned on (its threads stay once made)
            self._start_pool()

    def drain(self) -> bool:
        """After a stop: calls not started are given back, those under way are waited for (each
        ends within api.timeout) and their outcomes committed."""
        if self.pool is None:
            return True
        self.unsent += [self.in_flight.pop(f) for f in list(self.in_flight) if f.cancel()]
        while self.in_flight:
            self._collect(POLL_INTERVAL)
        self._settle(claim=False)
        return True

    def finish(self) -> None:
        if self.pool is None:
            return
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.watchdog.stop()
        with self._sessions_lock:
            for session in self._sessions:
                session.close()

    def _settle(self, claim: bool) -> int:
        """Claim (when asked and there is room), commit the decided outcomes, give back the unsent.
        Each list is emptied only once its transaction committed: a database error keeps it for
        the next try. Returns how many jobs were claimed."""
        claimed = 0
        # Claimed again once half the calls in flight are done: a claim of many at a time, while the
        # other half keeps every worker busy (not one claim transaction per call that ends).
        if (claim and len(self.in_flight) <= self.in_flight_limit // 2 and self.jobs.has_due(NOTIFY_QUEUE)
                and not self._paused()):
            claimed = self._claim(self.pool, self.in_flight, self.ready)
        if self.ready and (claimed or len(self.ready) >= self.config.api.concurrency or not self.in_flight
                           or time.monotonic() - self.ready[0].decided > COMMIT_WITHIN):
            self._commit(self.ready)
            self.ready = []
        if self.unsent:
            self._release(self.unsent)
            self.unsent = []
        return claimed

    def _paused(self) -> bool:
        """Whether a person paused notification (docs/design.md#steering): then nothing is claimed,
        so no attempt is made nor spent; a resume is a commit, which wakes the notifier."""
        paused = steering.Pauses.read(self.db, self.jobs.clock()).notification()
        if paused is not None and not self._said_paused:
            log.info("notification %s: nothing is sent until it is resumed", paused.says)
        self._said_paused = paused is not None
        return self._said_paused

    def _collect(self, timeout: float) -> None:
        """Wait up to ``timeout`` for calls to end, and decide their outcomes."""
        done, _ = wait(self.in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
        now = self.jobs.clock()
        for future in done:
            call, answer = self.in_flight.pop(future), future.result()
            if answer is None:
                self.unsent.append(call)
            else:
                self.ready.append(self._decide(call, answer, now))

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
                return Answer("retry", f"{said(response)} but the answer broke off: {root_reason(e)}")
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
            delay = retry.delay(attempts, api.backoff_cap)
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
                                "owner", o.call.label, self.lease, extra=o.call.job.about)
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
            record = failures.error_log_record(job, o.message, o.attempts, job.archive_path or job.source_path,
                                               self.jobs.clock())
            self.jobs.failed(token, job, "notify", o.message, o.attempts, error_log=record)

    def _report(self, o: Outcome) -> None:
        ms = (time.monotonic() - o.call.started) * 1000
        if o.kind == "notified":
            log.info("notified %s: %s on attempt %d (%.0f ms)", o.call.label, o.message, o.attempts, ms,
                     extra=o.call.job.about)
        elif o.kind == "wait":
            log.warning("%s: %s; trying again in %gs", o.call.label, o.message, o.delay, extra=o.call.job.about)
        elif o.kind == "failed":
            log.error("failed %s at notify: %s", o.call.label, o.message, extra=o.call.job.about)


def main(argv: list[str] | None = None) -> int:
    return cli.serve("notifier", "POST each routed job's JSON to api.endpoint, retrying with backoff.",
                     lambda ctx: Notifier(ctx.config, Jobs(ctx.db, ctx.actor), ctx.stopper), argv)

if __name__ == "__main__":
    raise SystemExit(main())
