"""Re-delivery (docs/design.md#steering): finished jobs copied again from their archive copy.

``bin/redeliver`` (or a page) only *records* a request per job, one ``redeliveries`` row, after
checking the job is finished and its archive copy is there with the job's sha256. The routers
carry requests out (``Redeliverer``, called by the router between batches and at least once a
second during a backlog): a request is claimed with a lease like a job; its copies are staged,
fsynced and renamed in like every copy, and each is recorded in ``redelivered`` in the request's
final transaction, which also marks it done (and, with ``notify``, sends the job back to
``routed`` with a fresh uuid, the notifier's Idempotency-Key). A router that dies mid-request
leaves it to the next claimant once the lease runs out: the request is done once (its copies
are whole files written again, never half ones). A place problem makes the request wait and
retry with the router's backoff; a paused destination makes it wait for the resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import retry, rules, schemas, steering, store
from .config import Config
from .files import Folders, NotRegular, discard, publish, remove_stale_temporaries, stage
from .states import MAX_CLAIMS
from .validation import Invalid, wanted

log = logging.getLogger(__name__)

PLACE_BACKOFF_CAP = 60.0    # seconds: as the router's waits at a place

_SQL_FINISHED = """
SELECT id, state, client_folder, file_name, archive_path, sha256, detected_at FROM jobs WHERE id = ?"""


@dataclass(frozen=True)
class Finished:
    """A finished job, as a re-delivery sees it."""
    id: int
    state: str
    client_folder: str
    file_name: str
    archive_path: str | None
    sha256: str | None
    detected_at: float

    @property
    def label(self) -> str:
        return f"job {self.id} {self.client_folder}/{self.file_name}"


class Refused(steering.Refused):
    """This job cannot be re-delivered (not finished, its archive copy missing or altered)."""


def finished_job(db: store.Engine, job_id: int) -> Finished:
    row = db.run_sql(_SQL_FINISHED, (job_id,)).fetchone()
    if row is None:
        raise Refused(f"job {job_id}: no such job")
    job = Finished(*row)
    if job.state not in ("routed", "notified"):
        raise Refused(f"{job.label} is {job.state}, not routed or notified: only finished jobs are re-delivered")
    return job


def archived_content(job: Finished) -> bytes:
    """The job's archive copy, checked against its sha256 (Refused: missing or altered)."""
    if not job.archive_path:
        raise Refused(f"{job.label}: no archive copy is recorded (removed by the archive retention?)")
    try:
        data = Path(job.archive_path).read_bytes()
    except FileNotFoundError:
        raise Refused(f"{job.label}: its archive copy {job.archive_path} is missing") from None
    except OSError as e:
        raise Refused(f"{job.label}: cannot read its archive copy {job.archive_path}: {e.strerror}") from None
    if job.sha256 and hashlib.sha256(data).hexdigest() != job.sha256:
        raise Refused(f"{job.label}: its archive copy {job.archive_path} was altered (its sha256 is not the job's)")
    return data


def destinations(config: Config, job: Finished, data: bytes, only: str | None) -> list[rules.Destination]:
    """Where the job's rules send it today (or only the route named ``only``), from its archive copy."""
    try:
        details = schemas.parse_job(data, job.client_folder, wanted(rules.paths_named(config.routes)),
                                    config.schemas)
        chosen = rules.destinations(config.routes, rules.Facts.of(details, job.client_folder, job.file_name,
                                                                  job.detected_at))
    except (Invalid, rules.Unsafe) as e:
        raise Refused(f"{job.label}: its rules cannot be applied to it now: {e}") from None
    chosen = [d for d in chosen if only is None or d.name == only]
    remote = sorted({d.name for d in chosen if d.remote is not None})
    if remote:      # its copies are made by the router's remote pools, which re-delivery does not use
        raise Refused(f"{job.label}: re-delivery to a remote destination is not supported ({', '.join(remote)}); "
                      "--destination NAME re-delivers to one of its folders")
    return chosen


def plan(db: store.Engine, config: Config, job_id: int, only: str | None) -> tuple[Finished, list[rules.Destination]]:
    """What re-delivering this job would write: checked, touching nothing."""
    job = finished_job(db, job_id)
    return job, destinations(config, job, archived_content(job), only)


_SQL_REQUEST = """
INSERT INTO redeliveries (job_id, destination, notify, actor, requested_at, next_attempt_at)
VALUES (?, ?, ?, ?, ?, ?) RETURNING id"""
_SQL_EVENT = "INSERT INTO job_events (job_id, at, from_state, to_state, actor, detail) VALUES (?, ?, ?, ?, ?, ?)"
_SQL_STEERED = "INSERT INTO steering_events (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)"


def request(db: store.Engine, actor: str, jobs: Iterable[Finished], only: str | None, notify: bool,
            now: float) -> list[int]:
    """Record a request per job, in one transaction; the routers carry them out. Returns their ids."""
    ids = []
    what = f"to {only!r}" if only else "to every destination its rules choose"
    what += ", then notify again with a fresh Idempotency-Key" if notify else ""
    with db.write():
        for job in jobs:
            request_id = db.run_sql(_SQL_REQUEST, (job.id, only, int(notify), actor, now, now)).fetchone()[0]
            db.run_sql(_SQL_EVENT, (job.id, now, job.state, job.state, actor,
                                    f"re-delivery {request_id} requested by {actor}: {what}"))
            db.run_sql(_SQL_STEERED, (now, actor, "redeliver", f"job {job.id}", what))
            ids.append(request_id)
        db.announce()
    return ids


# -- carried out by the routers ------------------------------------------------------------------

_DUE = "SELECT 1 FROM redeliveries WHERE state = 'pending' AND next_attempt_at <= ? LIMIT 1"
_CLAIM_WHERE = "state = 'pending' AND next_attempt_at <= ?"
_CLAIM_SET = "lease_owner = ?, lease_token = ?, next_attempt_at = ?, claims = claims + 1"
_SQL_DONE_COPIES = "SELECT path FROM redelivered WHERE redelivery_id = ?"
_SQL_COPIED = """
INSERT INTO redelivered (redelivery_id, name, path, delivered_at)
SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM redeliveries WHERE id = ? AND lease_token = ?)
ON CONFLICT (redelivery_id, path) DO NOTHING"""
_SQL_END = """
UPDATE redeliveries SET state = ?, done_at = ?, last_error = ?, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ? AND state = 'pending'"""
_SQL_WAIT = """
UPDATE redeliveries SET next_attempt_at = ?, attempts = ?, last_error = ?, claims = 0, lease_owner = NULL,
                        lease_token = NULL
WHERE id = ? AND lease_token = ? AND state = 'pending'"""
_SQL_NOTIFY_AGAIN = """
UPDATE jobs SET state = 'routed', uuid = ?, updated_at = ?, next_attempt_at = ?, attempts = 0, claims = 0,
                last_error = NULL, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND state IN ('routed', 'notified')"""
_SQL_TALLY = """
INSERT INTO tallies (name, labels, value) VALUES ('deliveries', ?, 1)
ON CONFLICT (name, labels) DO UPDATE SET value = tallies.value + excluded.value"""


@dataclass
class Request:
    id: int
    job_id: int
    destination: str | None
    notify: bool
    claims: int
    attempts: int
    outcome: str = ""                   # done | failed | wait
    error: str = ""
    paused_until: float | None = None   # waits for a paused destination only: no attempt spent
    place_problem: bool = False
    copied: list[tuple[str, str]] | None = None     # (route name, path) written this time


class Redeliverer:
    """Carries out due re-delivery requests for one router (its folders and thread pool)."""

    def __init__(self, config: Config, db: store.Engine, actor: str, destinations: Folders,
                 clock: Callable[[], float]):
        self.config = config
        self.db = db
        self.actor = actor
        self.folders = destinations
        self.clock = clock

    def due(self) -> bool:
        return self.db.run_sql(_DUE, (self.clock(),)).fetchone() is not None

    def run(self, pauses: steering.Pauses) -> int:
        """Claim and carry out up to ``router.batch_size`` due requests; returns how many were claimed."""
        now = self.clock()
        token = uuid.uuid4().hex
        with self.db.write():
            rows = self.db.claim("redeliveries", _CLAIM_WHERE, "next_attempt_at, id", _CLAIM_SET,
                                 "id, job_id, destination, notify, claims, attempts",
                                 (self.actor, token, now + self.config.router.lease), (now,),
                                 self.config.router.batch_size).fetchall()
        requests = [Request(*row[:3], bool(row[3]), *row[4:]) for row in sorted(rows)]
        for req in requests:
            self._carry_out(req, pauses)
        for folder, error in self.folders.sync_each().items():     # a copy not synced is not made
            for req in requests:
                unsynced = [c for c in req.copied or () if str(Path(c[1]).parent) == folder]
                if unsynced:
                    req.copied = [c for c in req.copied if c not in unsynced]
                    req.outcome, req.place_problem = "wait", True
                    req.error = f"cannot sync the folder {folder}: {error.strerror}"
        self._record(token, requests)
        return len(requests)

    def _carry_out(self, req: Request, pauses: steering.Pauses) -> None:
        if req.claims > MAX_CLAIMS:
            req.outcome, req.error = "failed", f"claimed {req.claims - 1} times without finishing; not tried again"
            return
        try:
            job = finished_job(self.db, req.job_id)
            data = archived_content(job)
            targets = destinations(self.config, job, data, req.destination)
        except Refused as e:
            req.outcome, req.error = "failed", str(e)
            return
        done = {row[0] for row in self.db.run_sql(_SQL_DONE_COPIES, (req.id,))}
        req.copied, problems = [], []
        for target in targets:
            if str(target.path) in done:
                continue
            paused = pauses.destination(target.name)
            if paused is not None:
                req.paused_until = paused.due(self.clock())
                problems.append(f"{target.name}: {paused.says}")
                continue
            try:
                if req.claims > 1:      # its previous owner died, maybe mid-copy: clear what it left
                    remove_stale_temporaries(target.folder, target.path.name)
                if target.templated:
                    self.folders.ensure(target.folder, below=target.base)
                tmp = stage(target.path, data, self.folders)
                try:
                    publish(tmp, target.path, self.folders, replace=True)
                except BaseException:
                    discard(tmp)
                    raise
            except (OSError, NotRegular) as e:
                self.folders.forget(target.folder)
                req.place_problem = True
                problems.append(f"{target.name}: {getattr(e, 'strerror', None) or e} ({target.folder})")
                continue
            req.copied.append((target.name, str(target.path)))
        if problems:
            req.outcome, req.error = "wait", "; ".join(problems)
        else:
            req.outcome = "done"

    def _record(self, token: str, requests: Sequence[Request]) -> None:
        now = self.clock()
        with self.db.write():
            for req in requests:
                for name, path in req.copied or ():
                    if self.db.run_sql(_SQL_COPIED, (req.id, name, path, now, req.id, token)).rowcount == 1:
                        self.db.run_sql(_SQL_TALLY, (json.dumps([name], separators=(",", ":"), ensure_ascii=False),))
                if req.outcome == "wait":
                    attempts = req.attempts + req.place_problem
                    due = (now + retry.delay(attempts, PLACE_BACKOFF_CAP) if req.place_problem or req.paused_until is None
                           else req.paused_until)
                    self.db.run_sql(_SQL_WAIT, (due, attempts, req.error, req.id, token))
                    continue
                if self.db.run_sql(_SQL_END, (req.outcome, now, req.error or None, req.id, token)).rowcount != 1:
                    continue        # taken over by another router after this one's lease ran out
                detail = (f"re-delivery {req.id} done: " + (", ".join(n for n, _ in req.copied) or "nothing to copy")
                          if req.outcome == "done" else f"re-delivery {req.id} failed: {req.error}")
                state = self.db.run_sql("SELECT state FROM jobs WHERE id = ?", (req.job_id,)).fetchone()
                if state is None:
                    continue
                if req.outcome == "done" and req.notify and self.config.api.endpoint:
                    if self.db.run_sql(_SQL_NOTIFY_AGAIN, (uuid.uuid4().hex, now, now, req.job_id)).rowcount:
                        detail += "; to be notified again with a fresh Idempotency-Key"
                        self.db.announce()
                        self.db.run_sql(_SQL_EVENT, (req.job_id, now, state[0], "routed", self.actor, detail))
                        continue
                self.db.run_sql(_SQL_EVENT, (req.job_id, now, state[0], state[0], self.actor, detail))
        for req in requests:
            if req.outcome == "done":
                log.info("re-delivered job %d (request %d) -> %s", req.job_id, req.id,
                         ", ".join(n for n, _ in req.copied) or "nothing to copy", extra={"job": req.job_id})
            else:
                log.warning("re-delivery %d of job %d %s: %s", req.id, req.job_id,
                            "waits" if req.outcome == "wait" else "failed", req.error, extra={"job": req.job_id})
