"""The job table and its transitions: the only code that writes to ``jobs``.

Life of a job: ``states.py``.

Rules every function here keeps (docs/design.md#job-lifecycle):

* Writes happen inside ``Jobs.transaction()``, the engine's write transaction (``BEGIN IMMEDIATE``
  on SQLite).
* Work is claimed with a lease in the statement that selects it; ``next_attempt_at`` doubles as
  the lease expiry, so a job whose owner died is simply due again. No reaper.
* Every later update of a claimed job says ``WHERE id=? AND lease_token=? AND state=?`` and
  checks the row count (a batch's statement, the ids it returns): a stale owner whose lease
  expired cannot overwrite the new owner's work.
* Each transition appends its audit row to ``job_events`` in the same transaction: the rows of a
  transaction are kept until it is about to commit and written by one statement (a savepoint
  rolled back drops its own), so a batch costs one statement for its audit trail, not one a job.
* The SQL is pre-written, once for every engine (``store.Engine.sql``): building it per call costs
  more than running it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Sequence

import peewee

from . import store
from .states import NOTIFY_QUEUE, ORDER_PENDING, REQUEUE_STATE, ROUTE_QUEUE
from .store import LeaseLost

if TYPE_CHECKING:
    from .hotfolder import Sighting

log = logging.getLogger(__name__)

_CLAIMED_COLUMNS = ("id, uuid, state, source_path, client_folder, file_name, size, mtime_ns, "
                    "device, inode, sha256, client_code, job_category, archive_path, failed_path, "
                    "attempts, claims, last_error, detected_at, released_at")


@dataclass(frozen=True)
class Claimed:
    """A job as its claimant sees it."""
    id: int
    uuid: str
    state: str
    source_path: str
    client_folder: str
    file_name: str
    size: int
    mtime_ns: int
    device: int
    inode: int
    sha256: str | None
    client_code: str | None
    job_category: str | None
    archive_path: str | None
    failed_path: str | None
    attempts: int
    claims: int
    last_error: str | None
    detected_at: float
    released_at: float | None = None        # a person released it from held: its rules hold it no more

    @property
    def label(self) -> str:
        """CLIENT/name.json, as log lines name a job."""
        return f"{self.client_folder}/{self.file_name}"

    @property
    def about(self) -> dict:
        """``extra=`` for a log line about the job: JSON logs carry its id and file, text ones ``job=N``."""
        return {"job": self.id, "file": self.source_path}


class Archived(NamedTuple):
    """What ``Jobs.archived`` records of a job: its row of the statement's VALUES, in this order."""
    job_id: int
    sha256: str
    client_code: str
    job_category: str
    studio_code: str | None
    title: str | None
    archive_path: str


@dataclass(frozen=True)
class Batch:
    token: str
    jobs: tuple[Claimed, ...]


@dataclass(frozen=True)
class OrderBlock:
    """What a job of an ordered key waits for (``Jobs.order``)."""
    after: int          # the earlier job
    read: bool          # that job has the same key; False: it is not read yet
    busy: bool          # a router holds it now (it will be settled, or read, within its batch)
    due: float          # otherwise when it is due (a place's backoff, a file still being written)


@dataclass(frozen=True)
class Renewal:
    """What renewing a batch's lease found (``Jobs.renew``)."""
    held: frozenset[int]                # the jobs the token still holds, now until ``until``
    until: float | None                 # None: their leases were not extended (``Jobs.check``)
    # For a held job that a job of the same file name detected after it may have overtaken: each
    # path where such a later job has a copy (its archive copy, its deliveries), and the newest
    # such job's id.
    later: dict[int, dict[str, int]]


_SQL_FIRST_WAITING_FULL = """
SELECT waits_on, min(id) FROM jobs WHERE waits_on LIKE 'full:%' AND (lease_token IS NULL OR lease_token != ?)
GROUP BY waits_on"""
# New jobs for sightings, ``v``: (uuid, path, client folder, file name, size, mtime, ctime, device,
# inode) each; detected_by and the time (three times) before them, the time after (_FOLLOWS).
_SQL_CREATE = ("""
INSERT INTO jobs (uuid, state, source_path, client_folder, file_name, size, mtime_ns, ctime_ns,
                  device, inode, detected_by, detected_at, updated_at, next_attempt_at)
SELECT v.column1, 'detected', v.column2, v.column3, v.column4, v.column5, v.column6, v.column7,
       v.column8, v.column9, ?, ?, ?, ?
FROM (""", """) AS v
WHERE NOT EXISTS (
    -- The same appearance is already a job: one in flight, or a finished one seen again by a
    -- scan that listed the folder before the file was removed (its ctime is not newer). A job
    -- failed at detect never took its file (it was gone, or another file): that file seen again,
    -- say with its client folder moved back into the hot folder, is a new appearance.
    SELECT 1 FROM jobs
    WHERE inode = v.column9 AND size = v.column5 AND mtime_ns = v.column6
      AND (state IN ('detected', 'archived')
           OR (ctime_ns >= v.column7 AND (failed_step IS NULL OR failed_step <> 'detect'))))
  -- Nor is the same file changed in place (grown, rewritten) while its job has not taken its
  -- content, and no router holds that job: the job follows the file (_SQL_FOLLOW_FILE).
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE inode = v.column9 AND source_path = v.column2 AND state = 'detected'
                  AND failed_path IS NULL AND ctime_ns < v.column7 AND (lease_token IS NULL OR next_attempt_at <= ?))
-- Where the engine has several writers, a unique index over the appearance of unfinished jobs
-- stops the second of two concurrent inserts that both passed the check above.
ON CONFLICT DO NOTHING
RETURNING uuid, id""")

# A detected job whose file, at its path with its inode, changed after an older look (its ctime),
# and that no router holds (never leased, given back, or its lease run out).
_FOLLOWS = """inode = ? AND source_path = ? AND state = 'detected' AND failed_path IS NULL AND ctime_ns < ?
    AND (lease_token IS NULL OR next_attempt_at <= ?)"""

# Such a job takes the file's new identity and is due at once; a stale lease can no longer write.
_SQL_FOLLOW_FILE = f"""
UPDATE jobs SET size = ?, mtime_ns = ?, ctime_ns = ?, updated_at = ?, next_attempt_at = ?,
                lease_owner = NULL, lease_token = NULL
WHERE {_FOLLOWS}
  AND NOT EXISTS (SELECT 1 FROM jobs AS other WHERE other.inode = ? AND other.size = ? AND other.mtime_ns = ?
                  AND other.state IN ('detected', 'archived'))
RETURNING id"""

# The job in flight, other than ``id``, that holds this appearance of a file.
_SQL_APPEARANCE = """
SELECT id FROM jobs WHERE inode = ? AND size = ? AND mtime_ns = ? AND state IN ('detected', 'archived')
  AND id <> ? LIMIT 1"""

_SQL_GREW = """
UPDATE jobs SET size = ?, mtime_ns = ?, ctime_ns = ?, updated_at = ?
WHERE id = ? AND lease_token = ? AND state = 'detected'
  AND NOT EXISTS (SELECT 1 FROM jobs AS other WHERE other.inode = ? AND other.size = ? AND other.mtime_ns = ?
                  AND other.state IN ('detected', 'archived') AND other.id <> ?)"""

_SQL_EVENTS = "INSERT INTO job_events (job_id, at, from_state, to_state, actor, detail)"     # + VALUES rows

# A claim, in the engine's form (store.Engine.claim): the lease is set on the first due jobs in
# the statement that selects them.
_CLAIM_SET = "lease_owner = ?, lease_token = ?, next_attempt_at = ?, claims = claims + 1"
_CLAIM_WHERE = "{queue} AND next_attempt_at <= ?"

# A batch's ids go in as one parameter ({id_list}: a JSON array on SQLite), so these statements are
# written once and cached instead of being built with a placeholder per id for every batch.
_SQL_OWNED = "SELECT id FROM jobs WHERE lease_token = ? AND id IN ({id_list})"
_SQL_DELIVERED_PATHS = "SELECT job_id, path FROM deliveries WHERE job_id IN ({id_list})"

_SQL_DUE = "SELECT 1 FROM jobs WHERE {queue} AND next_attempt_at <= ? LIMIT 1"

# A batch's lease renewed just before its files are touched: the jobs the token still holds, each
# with whether a job of the same file name was detected after it (one that may have made a copy
# at one of its paths already). The CAST lets SQLite use jobs_file_name for a column of the
# updated row: without it, the subquery scans the table once per job.
_OVERTAKEN = """EXISTS (SELECT 1 FROM jobs AS later
                      WHERE later.file_name = CAST(jobs.file_name AS TEXT) AND later.id > jobs.id)"""

_SQL_RENEW = f"""
UPDATE jobs SET next_attempt_at = ?
WHERE lease_token = ? AND id IN ({{id_list}})
RETURNING id, {_OVERTAKEN}"""

# Jobs.check: the same answer, a read.
_SQL_STILL_HOLDS = f"SELECT id, {_OVERTAKEN} FROM jobs WHERE lease_token = ? AND id IN ({{id_list}})"

# The copies the later jobs of those names made: their archive copy and their deliveries.
_SQL_LATER_COPIES = """
SELECT mine.id, later.id, later.archive_path, d.path
FROM jobs AS mine
JOIN jobs AS later ON later.file_name = mine.file_name AND later.id > mine.id
LEFT JOIN deliveries AS d ON d.job_id = later.id
WHERE mine.id IN ({id_list})"""

# The claim and the idle poll of each queue, formatted once: the routers poll every few ms.
_CLAIM = {queue: _CLAIM_WHERE.format(queue=queue) for queue in (ROUTE_QUEUE, NOTIFY_QUEUE)}
_DUE = {queue: _SQL_DUE.format(queue=queue) for queue in (ROUTE_QUEUE, NOTIFY_QUEUE)}

# The transitions of a router's batch are one statement for all its jobs (a statement per job is a
# round trip per job on PostgreSQL): these are written around the rows' VALUES (Engine.run_rows),
# whose columns are column1, column2, ... on both engines. A job that RETURNING leaves out is no
# longer held.
_SQL_ARCHIVED = ("""
UPDATE jobs SET state = 'archived', archived_at = ?, updated_at = ?, sha256 = v.column2, client_code = v.column3,
                job_category = v.column4, studio_code = v.column5, title = v.column6, archive_path = v.column7,
                attempts = 0, claims = 0, last_error = NULL
FROM (""", """) AS v
WHERE jobs.id = v.column1 AND jobs.lease_token = ? AND jobs.state = 'detected'
RETURNING id""")

# A copy recorded once per job and path, only while the token holds the job.
_SQL_DELIVERED = ("""
INSERT INTO deliveries (job_id, name, path, action, delivered_at)
SELECT v.column1, v.column2, v.column3, v.column4, ? FROM (""", """) AS v
WHERE EXISTS (SELECT 1 FROM jobs WHERE jobs.id = v.column1 AND jobs.lease_token = ?)
ON CONFLICT (job_id, path) DO NOTHING
RETURNING name""")

_SQL_ROUTED = """
UPDATE jobs SET state = 'routed', routed_at = ?, updated_at = ?, next_attempt_at = ?,
                attempts = 0, claims = 0, last_error = NULL, lease_owner = NULL, lease_token = NULL, waits_on = NULL
WHERE lease_token = ? AND state = 'archived' AND id IN ({id_list})
RETURNING id"""

_SQL_NOTIFIED = """
UPDATE jobs SET state = 'notified', notified_at = ?, updated_at = ?, attempts = ?,
                claims = 0, last_error = NULL, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ? AND state = 'routed'"""

_SQL_WILL_FAIL = """
UPDATE jobs SET failed_path = ?, last_error = ?, updated_at = ?
WHERE id = ? AND lease_token = ? AND state = ?"""

_SQL_FAILED = """
UPDATE jobs SET state = 'failed', failed_at = ?, updated_at = ?, failed_step = ?, last_error = ?,
                attempts = ?, claims = 0, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ? AND state = ?"""

# Counter tallies (docs/design.md#operating-it): one row per counter and label values (a JSON array), bumped in the
# transaction of the transitions they count. The bumps of a transaction are added up and written
# at its end, in the order of their rows: several writers at once (routers on PostgreSQL) then
# lock the shared rows in one order, and never deadlock on them.
_SQL_TALLY = """
INSERT INTO tallies (name, labels, value) VALUES (?, ?, ?)
ON CONFLICT (name, labels) DO UPDATE SET value = tallies.value + excluded.value"""
_SQL_CLIENTS = "SELECT id, client_folder FROM jobs WHERE id IN ({id_list})"
_SQL_ROUTE_LATENCY = "SELECT routed_at - mtime_ns / 1e9 FROM jobs WHERE id IN ({id_list})"

# The drop-to-routed histogram (/metrics hotfolder_route_latency_seconds): upper bounds in seconds.
# Each routing bumps the tally of the first bucket it fits ("+Inf" past the last) and the sum in
# milliseconds (tallies hold integers); /metrics adds the buckets up as Prometheus wants them.
ROUTE_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Each bucket's tally key, made once: a batch of routed jobs looks one up per job.
_LATENCY_KEYS = [(bound, ("route_latency", json.dumps([f"{bound:g}"]))) for bound in ROUTE_LATENCY_BUCKETS]
_LATENCY_OVER = ("route_latency", json.dumps(["+Inf"]))
_LATENCY = object()          # marks a routing's bump: (_LATENCY, job id)

_SQL_ERROR_LOG_ADD = "INSERT INTO error_log_outbox (job_id, name, record) VALUES (?, ?, ?)"

_SQL_WAIT = """
UPDATE jobs SET next_attempt_at = ?, updated_at = ?, attempts = ?, last_error = ?,
                claims = 0, lease_owner = NULL, lease_token = NULL, waits_on = NULL
WHERE id = ? AND lease_token = ? AND state = ?"""

# A job that waits for a person's pause (docs/design.md#steering): no attempt spent, its claim not
# counted, the cause recorded; due again when the pause ends (resuming makes it due at once).
_SQL_PARK = """
UPDATE jobs SET next_attempt_at = ?, updated_at = ?, waits_on = ?, claims = 0, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ? AND state = ?"""

_SQL_HELD = """
UPDATE jobs SET state = 'held', updated_at = ?, attempts = 0, claims = 0, last_error = NULL, waits_on = NULL,
                lease_owner = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ? AND state = 'archived'"""

_SQL_REQUEUE = """
UPDATE jobs SET state = ?, updated_at = ?, next_attempt_at = ?, attempts = 0, claims = 0,
                last_error = NULL, failed_step = NULL, failed_at = NULL
WHERE id = ? AND state = 'failed' AND failed_step = ?"""

_SQL_REQUEUE_FILE = """
UPDATE jobs SET state = 'detected', updated_at = ?, source_path = ?, device = ?, inode = ?, size = ?,
                mtime_ns = ?, ctime_ns = ?, failed_path = NULL, attempts = 0, claims = 0,
                last_error = NULL, failed_step = NULL, failed_at = NULL,
                lease_owner = ?, lease_token = ?, next_attempt_at = ?
WHERE id = ? AND state = 'failed' AND failed_step = 'validate'"""

_SQL_FILE_IN_PLACE = """
UPDATE jobs SET source_path = ?, ctime_ns = ?, next_attempt_at = ?, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ? AND state = 'detected'"""

_SQL_MOVED = """
UPDATE jobs SET source_path = ?, client_folder = ?, file_name = ?, ctime_ns = ?, updated_at = ?
WHERE id = ? AND lease_token = ? AND state = ?"""

# Order per key (docs/design.md#order-per-key). A batch's keys, written once its files are read
# (a key of '' is unordered); the wait a job proceeds from is cleared with it.
_SQL_KEYED = """
UPDATE jobs SET order_key = k.order_key, waits_after = NULL
FROM ({id_key_list}) AS k
WHERE jobs.id = k.id AND jobs.lease_token = ?"""

# For each ordered job of the batch, the nearest earlier job outside the batch that it waits for:
# one of its key not settled yet; or one not read yet (no key) that a router holds or is due to
# take now, whose key may turn out the same. An unread job waiting for later (its file still
# being written, a place's backoff) holds nobody up. Both read the partial index jobs_order_key.
_SQL_ORDER_BLOCKERS = """
SELECT mine.id,
  (SELECT e.id FROM jobs AS e
   WHERE e.order_key = mine.order_key AND e.id < mine.id AND {pending}
     AND (e.lease_token IS NULL OR e.lease_token <> ?)
   ORDER BY e.order_key DESC, e.id DESC LIMIT 1),
  (SELECT e.id FROM jobs AS e
   WHERE e.order_key IS NULL AND e.id < mine.id AND {pending}
     AND (e.lease_token IS NULL AND e.next_attempt_at <= ? OR e.lease_token <> ?)
   ORDER BY e.order_key DESC, e.id DESC LIMIT 1)
FROM jobs AS mine WHERE mine.id IN ({id_list}) AND mine.order_key <> ''"""
_SQL_ORDER_BLOCKERS = _SQL_ORDER_BLOCKERS.replace("{pending}", ORDER_PENDING.replace("state", "e.state"))

# Whether a router holds each such earlier job now, and when it is due.
_SQL_BLOCKER_STATE = """
SELECT id, lease_token IS NOT NULL AND next_attempt_at > ?, next_attempt_at FROM jobs WHERE id IN ({id_list})"""

_SQL_WAIT_IN_ORDER = """
UPDATE jobs SET next_attempt_at = ?, updated_at = ?, last_error = ?, waits_after = ?,
                claims = 0, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ? AND state = ?"""

# The jobs held back behind these (now settled), due at once: the next of each key goes without
# waiting for its timer.
_SQL_HAND_ON = """
UPDATE jobs SET next_attempt_at = ?
WHERE waits_after IS NOT NULL AND waits_after IN ({id_list})
  AND lease_token IS NULL AND next_attempt_at > ?"""

_SQL_RELEASE = """
UPDATE jobs SET next_attempt_at = ?, claims = CASE WHEN claims > 0 THEN claims - 1 ELSE 0 END, lease_owner = NULL, lease_token = NULL
WHERE id = ? AND lease_token = ?"""


class Jobs:
    """The job table as one program instance (the ``actor``) sees it.

    ``clock`` returns UTC epoch seconds; tests inject their own.
    """

    def __init__(self, db: store.Engine, actor: str, clock: Callable[[], float] = time.time):
        self.db = db
        self.actor = actor
        self.clock = clock
        self._bumps: list[tuple] = []       # tallies of the open transaction: (name, labels) or (job id, outcome)
        self._events: list[tuple] = []      # audit rows of the open transaction, in their order
        self._announcing = False            # the open transaction made work due
        self._depth = 0                     # transaction() levels open

    # -- transactions ---------------------------------------------------------------------------


    def _sql(self, sql: str, params: Sequence = ()):
        return self.db.run_sql(sql, params)

    def _event(self, job_id: int, now: float, from_state: str | None, to_state: str, detail: str | None):
        self._events.append((job_id, now, from_state, to_state, self.actor, detail))
        if self._depth == 0:        # a transition called in a transaction of the caller's own
            self._write_events()

    def _write_events(self) -> None:
        events, self._events = self._events, []
        self.db.run_rows(_SQL_EVENTS, events)

    def _announce(self) -> None:
        """The transaction makes work due: said once at its end (on PostgreSQL a NOTIFY is a round trip)."""
        self._announcing = True
        if self._depth == 0:
            self._write_announce()

    def _write_announce(self) -> None:
        if self._announcing:
            self._announcing = False
            self.db.announce()

    @contextlib.contextmanager
    def transaction(self):
        """A write transaction: ``BEGIN IMMEDIATE`` ... ``COMMIT`` on SQLite (rolled back on error).
        Inside another, a savepoint: what it did, its audit rows and tallies included, is undone on
        error. Those are written just before the outermost one commits."""
        marks = len(self._bumps), len(self._events)
        self._depth += 1
        try:
            with self.db.write():
                yield
                if self._depth == 1:
                    self._write_events()
                    self._write_announce()
                    self._write_tallies()
        except BaseException:
            del self._bumps[marks[0]:]
            del self._events[marks[1]:]
            raise
        finally:
            self._depth -= 1
            if self._depth == 0:
                # Rolled back, it made nothing due (a savepoint rolled back keeps the flag: a
                # wake-up for nothing is harmless).
                self._announcing = False

    def _tally(self, name: str, *labels: str) -> None:
        self._bump((name, labels))

    def _tally_finished(self, job_id: int, outcome: str) -> None:
        """finished{client, outcome}: the client comes from the job's row when the tallies are written."""
        self._bump((job_id, outcome))

    def _bump(self, bump: tuple) -> None:
        self._bumps.append(bump)
        if self._depth == 0:        # a transition called in a transaction of the caller's own
            self._write_tallies()

    def _write_tallies(self) -> None:
        bumps, self._bumps = self._bumps, []
        routed = [job_id for first, job_id in bumps if first is _LATENCY]
        bumps = [b for b in bumps if b[0] is not _LATENCY]
        finished = [job_id for job_id, _ in bumps if isinstance(job_id, int)]
        clients = dict(self._sql(_SQL_CLIENTS, (self.db.id_list(finished),)).fetchall()) if finished else {}
        counts: dict[tuple[str, str], int] = {}
        for first, second in bumps:
            name, labels = ("finished", (clients[first], second)) if isinstance(first, int) else (first, second)
            key = (name, json.dumps(labels, separators=(",", ":"), ensure_ascii=False))
            counts[key] = counts.get(key, 0) + 1
        for key, value in self._latency_tallies(routed).items():
            counts[key] = counts.get(key, 0) + value
        for (name, labels), value in sorted(counts.items()):
            self._sql(_SQL_TALLY, (name, labels, value))

    def _latency_tallies(self, routed: list[int]) -> dict[tuple[str, str], int]:
        """The histogram's increments for the jobs routed in this transaction: a bucket each, and
        the sum of their latencies in milliseconds."""
        counts: dict[tuple[str, str], int] = {}
        if not routed:
            return counts
        total = 0
        for (waited,) in self._sql(_SQL_ROUTE_LATENCY, (self.db.id_list(routed),)).fetchall():
            waited = max(0.0, float(waited))     # a file dated in the future (a skewed clock) counts as at once
            key = next((key for bound, key in _LATENCY_KEYS if waited <= bound), _LATENCY_OVER)
            counts[key] = counts.get(key, 0) + 1
            total += round(waited * 1000)
        counts[("route_latency_ms", "[]")] = total
        return counts

    def _expect_one(self, cursor, job_id: int) -> None:
        if cursor.rowcount != 1:
            raise LeaseLost(f"job {job_id} is no longer held by {self.actor}")

    def _expect_all(self, done: set[int], job_ids: Iterable[int]) -> None:
        """Each of ``job_ids`` is in ``done`` (the rows a statement changed), or LeaseLost names the first not."""
        for job_id in job_ids:
            if job_id not in done:
                raise LeaseLost(f"job {job_id} is no longer held by {self.actor}")

    # -- detection ------------------------------------------------------------------------------

    def create(self, sightings: Iterable[Sighting], detected_by: str) -> list[int]:
        """Turn sightings into jobs, one per appearance of a file; returns the new ids.

        Runs its own transaction: the duplicate check and the insert must see the same table.
        """
        now = self.clock()
        sightings = list(sightings)
        rows = [(uuid.uuid4().hex, s.path, s.client_folder, s.file_name, s.st.st_size, s.st.st_mtime_ns,
                 s.st.st_ctime_ns, s.st.st_dev, s.st.st_ino) for s in sightings]
        # One statement for all of them (a round trip per file on PostgreSQL otherwise), unless two
        # share an inode: its checks look at the table as it was before the statement, so each of
        # those sightings goes alone and in order, as a later one may follow an earlier one's job.
        together = len({s.st.st_ino for s in sightings}) == len(sightings)
        head, tail = _SQL_CREATE
        created, seen, followed = [], [], False
        with self.transaction():
            made = {}
            for chunk in [rows] if together else [[row] for row in rows]:
                for cursor in self.db.run_rows(head, chunk, tail, before=(detected_by, now, now, now), after=(now,)):
                    made.update(cursor.fetchall())
            for row, s in zip(rows, sightings):
                job_id = made.get(row[0])
                if job_id is not None:
                    created.append(job_id)
                    seen.append(s)
                    self._event(job_id, now, None, "detected", f"{detected_by}: {s.path}")
                else:
                    followed = self._follow_file(s, now, (s.st.st_ino, s.path, s.st.st_ctime_ns, now)) or followed
            if created or followed:
                self._announce()
        for job_id, s in zip(created, seen):        # after the commit: the write lock is not held for it
            log.info("new job %d: %s/%s (%s)", job_id, s.client_folder, s.file_name, detected_by,
                     extra={"job": job_id, "file": s.path})
        return created

    def _follow_file(self, s: Sighting, now: float, follows: tuple) -> bool:
        """A sighting of a job's file changed in place before the job took its content (a file
        still being written, closed after its first part): the job follows the file and is due at
        once, rather than a second job for one file. True when a job followed."""
        st = s.st
        # Under a savepoint: on PostgreSQL a concurrent insert of this appearance breaks the unique index.
        try:
            with self.transaction():
                rows = self._sql(_SQL_FOLLOW_FILE, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, now, now,
                                                    *follows, st.st_ino, st.st_size, st.st_mtime_ns)).fetchall()
        except peewee.IntegrityError:
            return False
        for (job_id,) in rows:
            self._event(job_id, now, "detected", "detected",
                        f"file changed before its content was read ({st.st_size} bytes now): the job follows it")
        return bool(rows)

    # -- claims ---------------------------------------------------------------------------------

    def claim(self, queue: str, limit: int, lease: float) -> Batch:
        """Lease up to ``limit`` due jobs of ``queue`` (ROUTE_QUEUE or NOTIFY_QUEUE)."""
        now = self.clock()
        token = uuid.uuid4().hex
        with self.transaction():
            rows = self.db.claim("jobs", _CLAIM[queue], "next_attempt_at, id", _CLAIM_SET, _CLAIMED_COLUMNS,
                                 (self.actor, token, now + lease), (now,), limit).fetchall()
        jobs = sorted((Claimed(*row) for row in rows), key=lambda j: j.id)
        return Batch(token, tuple(jobs))

    def has_due(self, queue: str) -> bool:
        """Whether a job of ``queue`` is due now: a cheap read for idle polling."""
        return self._sql(_DUE[queue], (self.clock(),)).fetchone() is not None

    def owned(self, token: str, job_ids: Iterable[int]) -> set[int]:
        """Which of ``job_ids`` this token still holds. Inside a transaction the answer stays true."""
        return {row[0] for row in self._sql(_SQL_OWNED, (token, self.db.id_list(job_ids)))}

    def renew(self, token: str, job_ids: Iterable[int], lease: float) -> Renewal:
        """Extend the lease of those of ``job_ids`` that ``token`` still holds to ``lease`` seconds
        from now, in one short write transaction; the others were taken over by another worker
        after the lease ran out (a claim gives a new token), and are not in ``held``.

        A router calls it right before it publishes a batch's copies: a router that was frozen
        past its lease must not put its copies over the new owner's. For the held jobs it also
        says which paths a later job of the same name has made a copy at (one more statement,
        only when there is such a job), so that an older job never replaces a newer one's copy.
        """
        until = self.clock() + lease
        with self.transaction():
            rows = self._sql(_SQL_RENEW, (until, token, self.db.id_list(list(job_ids)))).fetchall()
            return self._renewal(rows, until)

    def check(self, token: str, job_ids: Iterable[int]) -> Renewal:
        """``renew``'s answer without extending the leases (``until`` is None): one read, no write
        transaction, for a batch whose leases have long to run. Which jobs ``token`` still holds
        (one a person dismissed, or another worker took over, is not held) and where later jobs
        of the same names have copies."""
        with self.db.snapshot():
            return self._renewal(self._sql(_SQL_STILL_HOLDS, (token, self.db.id_list(list(job_ids)))).fetchall(), None)

    def _renewal(self, rows: list[tuple[int, bool]], until: float | None) -> Renewal:
        later: dict[int, dict[str, int]] = {}
        overtaken = [job_id for job_id, newer in rows if newer]
        if overtaken:
            for job_id, later_id, archive_path, path in self._sql(_SQL_LATER_COPIES, (self.db.id_list(overtaken),)):
                copies = later.setdefault(job_id, {})
                for where in (archive_path, path):
                    if where is not None:
                        copies[where] = max(copies.get(where, 0), later_id)
        return Renewal(frozenset(job_id for job_id, _ in rows), until, later)

    def order(self, token: str, keyed: Sequence[tuple[int, str]]) -> dict[int, OrderBlock]:
        """Record the keys of a batch's jobs just read ((id, key) pairs; '' for unordered) and say,
        for each ordered one, what earlier job outside the batch it waits for (only those that
        wait are in the answer). One short write transaction: once it commits, every other router
        sees these keys, so an unread job never hides its key from a later one for long."""
        now = self.clock()
        with self.transaction():
            self._sql(_SQL_KEYED, (json.dumps(list(keyed)), token))
            return self._blocks(token, [job_id for job_id, key in keyed if key], now)

    def still_blocked(self, token: str, job_ids: Sequence[int]) -> dict[int, OrderBlock]:
        """``order``'s answer again for jobs already keyed (a read: the router looks again within its
        batch while the earlier jobs are being read by other routers)."""
        return self._blocks(token, list(job_ids), self.clock())

    def _blocks(self, token: str, job_ids: list[int], now: float) -> dict[int, OrderBlock]:
        if not job_ids:
            return {}
        found = {job_id: (same, unread) for job_id, same, unread in self._sql(
            _SQL_ORDER_BLOCKERS, (token, now, token, self.db.id_list(job_ids))) if same or unread}
        if not found:
            return {}
        blockers = {b for same, unread in found.values() for b in (same, unread) if b}
        state = {b: (bool(busy), due) for b, busy, due in self._sql(
            _SQL_BLOCKER_STATE, (now, self.db.id_list(blockers)))}
        out = {}
        for job_id, (same, unread) in found.items():
            after = same or unread      # a job of its own key first: that one it must follow
            busy, due = state.get(after, (False, now))
            out[job_id] = OrderBlock(after=after, read=bool(same), busy=busy, due=due)
        return out

    def wait_in_order(self, token: str, job: Claimed, delay: float, reason: str, after: int) -> None:
        """Keep the job in its state, due again after ``delay``, behind the earlier job ``after`` of
        its key: no attempt spent, its claim not counted. The audit trail hears of a wait when its
        reason changes, not at each look."""
        now = self.clock()
        self._expect_one(self._sql(_SQL_WAIT_IN_ORDER, (
            now + delay, now, reason, after, job.id, token, job.state)), job.id)
        if reason != job.last_error:
            self._event(job.id, now, job.state, job.state, f"waits in order: {reason}")

    def hand_on(self, settled: Sequence[int]) -> None:
        """These jobs of ordered keys are settled (routed or failed): the jobs held back behind them
        are due now. One statement; the waits' own timers cover a router that stops before it."""
        now = self.clock()
        with self.transaction():
            if self._sql(_SQL_HAND_ON, (now, self.db.id_list(settled), now)).rowcount:
                self._announce()

    def delivered_paths(self, job_ids: Iterable[int]) -> dict[int, set[str]]:
        """The destination paths already committed for each job (so only failed copies are retried)."""
        ids = list(job_ids)
        out: dict[int, set[str]] = {i: set() for i in ids}
        if ids:
            for job_id, path in self._sql(_SQL_DELIVERED_PATHS, (self.db.id_list(ids),)):
                out[job_id].add(path)
        return out

    def release(self, token: str, job_ids: Iterable[int]) -> None:
        """Give claimed jobs back, due at once (a graceful stop: their claim does not count)."""
        now = self.clock()
        with self.transaction():
            for job_id in job_ids:
                self._sql(_SQL_RELEASE, (now, job_id, token))
            self._announce()

    # -- transitions (call inside transaction()) -------------------------------------------------

    def archived(self, token: str, jobs: Sequence[Archived]) -> None:
        """detected -> archived: the content is read, valid, and durable in the archive; for all of
        ``jobs`` in one statement. LeaseLost when one is no longer held (the caller's savepoint
        undoes the others)."""
        if not jobs:
            return
        now = self.clock()
        head, tail = _SQL_ARCHIVED
        cursors = self.db.run_rows(head, jobs, tail, before=(now, now), after=(token,))
        self._expect_all({row[0] for cursor in cursors for row in cursor.fetchall()}, [a.job_id for a in jobs])
        for a in jobs:
            self._event(a.job_id, now, "detected", "archived", a.archive_path)

    def moved(self, token: str, job: Claimed, old_path: str, ctime_ns: int) -> None:
        """The job's file was renamed within the hot folder (same inode, size and mtime): ``job``
        says where it is now. The job follows its file; a rename is not a new appearance.

        The new ctime (a rename changes it) lets ``create`` recognise a later sighting as this job's.
        """
        now = self.clock()
        self._expect_one(self._sql(_SQL_MOVED, (
            job.source_path, job.client_folder, job.file_name, ctime_ns, now,
            job.id, token, job.state)), job.id)
        self._event(job.id, now, job.state, job.state,
                    f"file moved in the hot folder: {old_path} -> {job.source_path}; the job follows it")

    def appearance(self, identity: tuple[int, int, int], other_than: int) -> int | None:
        """The job in flight for this appearance (inode, size, mtime) of a file, other than
        ``other_than``; None when there is none."""
        row = self._sql(_SQL_APPEARANCE, (*identity, other_than)).fetchone()
        return row[0] if row else None

    def grew(self, token: str, job: Claimed, old_size: int, ctime_ns: int) -> None:
        """The job's file changed in place (same inode) before the job took its content: ``job``
        has the file's new size and mtime. The job follows it, unless another job in flight holds
        that appearance already (LeaseLost: the job is left as it was)."""
        now = self.clock()
        self._expect_one(self._sql(_SQL_GREW, (
            job.size, job.mtime_ns, ctime_ns, now, job.id, token,
            job.inode, job.size, job.mtime_ns, job.id)), job.id)
        self._event(job.id, now, job.state, job.state,
                    f"file changed before its content was read ({old_size} -> {job.size} bytes): the job follows it")

    def recheck(self, token: str, job: Claimed, delay: float, reason: str) -> None:
        """Keep the job in its state and read its file again after ``delay`` seconds; not an
        attempt (a file still being written is not a problem with it, nor with a place)."""
        now = self.clock()
        self._expect_one(self._sql(_SQL_WAIT, (
            now + delay, now, job.attempts, reason, job.id, token, job.state)), job.id)
        self._event(job.id, now, job.state, job.state, f"read again in {delay:.3g}s: {reason}")

    def delivered(self, token: str, copies: Sequence[tuple[int, str, str, str]]) -> None:
        """Record committed copies to destinations ((job id, name, path, action)), in one statement,
        once per job and path; a copy of a job the token no longer holds is left out."""
        head, tail = _SQL_DELIVERED
        for cursor in self.db.run_rows(head, copies, tail, before=(self.clock(),), after=(token,)):
            for (name,) in cursor.fetchall():
                self._tally("deliveries", name)

    def routed(self, token: str, jobs: Sequence[tuple[int, str]]) -> None:
        """archived -> routed: every copy is committed and the original is gone; for all of ``jobs``
        ((job id, detail)) in one statement. LeaseLost when one is no longer held (the caller's
        savepoint undoes the others)."""
        if not jobs:
            return
        now = self.clock()
        ids = [job_id for job_id, _ in jobs]
        self._expect_all({row[0] for row in self._sql(_SQL_ROUTED, (now, now, now, token, self.db.id_list(ids)))},
                         ids)
        self._announce()
        for job_id, detail in jobs:
            self._event(job_id, now, "archived", "routed", detail)
            self._tally_finished(job_id, "routed")
            self._bump((_LATENCY, job_id))

    def notified(self, token: str, job_id: int, attempts: int, detail: str) -> None:
        """routed -> notified: the API accepted the job."""
        now = self.clock()
        self._expect_one(self._sql(_SQL_NOTIFIED, (now, now, attempts, job_id, token)), job_id)
        self._event(job_id, now, "routed", "notified", detail)
        self._tally_finished(job_id, "notified")
        self._tally("notify_attempts", "accepted")

    def will_fail(self, token: str, job: Claimed, failed_path: str, error: str) -> None:
        """Record where a failing file is about to be moved, so a crash mid-move is recoverable."""
        self._expect_one(self._sql(_SQL_WILL_FAIL, (
            failed_path, error, self.clock(), job.id, token, job.state)), job.id)

    def failed(self, token: str, job: Claimed, step: str, error: str, attempts: int | None = None,
               error_log: tuple[str, str] | None = None) -> None:
        """Any state -> failed, at ``step``, with a one-line reason a person understands.

        ``error_log``, the (name, JSON text) that ``failures.error_log_record`` built, is put in
        the error log's outbox in the failure's transaction, for ``failures.ErrorLog`` to write
        after the commit.
        """
        now = self.clock()
        attempts = job.attempts if attempts is None else attempts
        self._expect_one(self._sql(_SQL_FAILED, (
            now, now, step, error, attempts, job.id, token, job.state)), job.id)
        self._event(job.id, now, job.state, "failed", f"{step}: {error}")
        self._tally_finished(job.id, "failed")
        if job.state == "routed":
            self._tally("notify_attempts", "failed")
        if error_log is not None:
            self._sql(_SQL_ERROR_LOG_ADD, (job.id, *error_log))

    def wait(self, token: str, job: Claimed, delay: float, error: str, attempts: int,
             problem: str | None = None) -> None:
        """Keep the job in its state and try again after ``delay`` seconds (a retry, not a claim).

        ``error`` becomes the job's last error; ``problem``, when given, is what stops it now and
        goes to the audit trail beside it (a failing job that cannot reach FAILED keeps its reason).
        """
        now = self.clock()
        self._expect_one(self._sql(_SQL_WAIT, (
            now + delay, now, attempts, error, job.id, token, job.state)), job.id)
        self._event(job.id, now, job.state, job.state, f"retry {attempts} in {delay:g}s: {problem or error}")
        if job.state == "routed":
            self._tally("notify_attempts", "retried")

    def first_waiting_full(self, token: str) -> dict[str, int]:
        """Per route, the first job waiting on its full folder (``max_waiting``) that the batch of
        ``token`` does not hold (the jobs_waits_on index: waiting jobs only)."""
        return {cause[len("full:"):]: first for cause, first in self._sql(_SQL_FIRST_WAITING_FULL, (token,))}

    def park(self, token: str, job: Claimed, cause: str, says: str, due: float) -> None:
        """Keep the job in its state until ``due``, waiting on ``cause`` (a pause; ``says`` who
        paused it and why): not an attempt, and not stuck (docs/design.md#steering)."""
        now = self.clock()
        self._expect_one(self._sql(_SQL_PARK, (due, now, cause, job.id, token, job.state)), job.id)
        self._event(job.id, now, job.state, job.state, f"waits: {says}")

    def held(self, token: str, job_id: int, detail: str) -> None:
        """archived -> held: an approval step (or router.unmatched = hold); a person releases it."""
        now = self.clock()
        self._expect_one(self._sql(_SQL_HELD, (now, job_id, token)), job_id)
        self._event(job_id, now, "archived", "held", detail)

    # -- requeue (bin/requeue; failed jobs hold no lease) -----------------------------------------

    def requeue(self, job_id: int, step: str, detail: str) -> bool:
        """failed -> the state before ``step`` (REQUEUE_STATE), due now with a fresh retry budget.

        Returns False when the job is no longer failed at ``step`` (someone requeued it first).
        """
        now = self.clock()
        to_state = REQUEUE_STATE[step]
        if self._sql(_SQL_REQUEUE, (to_state, now, now, job_id, step)).rowcount != 1:
            return False
        self._event(job_id, now, "failed", to_state, detail)
        self._announce()
        return True

    def requeue_file(self, job_id: int, path: str, st: os.stat_result, hold: float, detail: str) -> str | None:
        """failed at validate -> detected, as the file ``st`` at ``path`` (a hidden copy in the hot folder).

        The job stays leased to this actor for ``hold`` seconds while the copy is put in place
        (``file_in_place``). Should the actor die meanwhile, the lease expires and a router takes
        the job from the hidden copy, which is the exact file the job records. Returns the lease
        token, or None when the job is no longer failed at validate.
        """
        now = self.clock()
        token = uuid.uuid4().hex
        if self._sql(_SQL_REQUEUE_FILE, (
                now, path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                self.actor, token, now + hold, job_id)).rowcount != 1:
            return None
        self._event(job_id, now, "failed", "detected", detail)
        return token

    def file_in_place(self, token: str, job_id: int, path: str, ctime_ns: int) -> None:
        """The requeued file is now at ``path`` (same inode and mtime): record it and make the job due.

        The new ctime (a link or rename changes it) lets ``create`` recognise a later sighting.
        """
        self._expect_one(self._sql(_SQL_FILE_IN_PLACE, (path, ctime_ns, self.clock(), job_id, token)), job_id)
        self._announce()

    # -- retention of files (the reporter, nightly; finished jobs hold no lease) --------------------

    def forget_files(self, kind: str, files: Iterable[tuple[RecordedFile, str]]) -> None:
        """The jobs no longer record these files (``kind``: "archive" or "failed"), which retention
        removed, found gone, or found not to be theirs; each gets an event with ``detail``. A job
        that changed since it was read (requeued) is left as it is."""
        now = self.clock()
        with self.transaction():
            for f, detail in files:
                if self._sql(_SQL_FORGET[kind], (f.id, f.state, f.path)).rowcount == 1:
                    self._event(f.id, now, f.state, f.state, detail)


# -- retention (the reporter, nightly) -------------------------------------------------------------

# A job whose archive copy or FAILED file a file retention is to remove (the flags) is kept while
# it records it: the table forgets a file only once it is removed, never leaving one nobody knows.
_SQL_PRUNE = """
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE updated_at < ? AND state IN ('routed', 'notified', 'failed', 'dismissed')
      AND NOT (? AND archive_path IS NOT NULL) AND NOT (? AND failed_path IS NOT NULL) LIMIT ?)"""

PRUNE_CHUNK = 2000   # jobs per delete transaction: routers wait for each chunk, never for the whole prune


def prune(db: store.Engine, before: float, chunk: int = PRUNE_CHUNK, *, keep_archives: bool = False,
          keep_failed: bool = False) -> int:
    """Delete finished jobs whose last change is older than ``before``; returns how many.

    Their audit rows and deliveries go with them (ON DELETE CASCADE); the daily reports keep their
    figures. Jobs still in flight are kept whatever their age: they are someone's work. With
    ``keep_archives`` (``keep_failed``), a job still recording an archive copy (a FAILED file) is
    kept too: the archive (FAILED) retention removes that file first.
    """
    deleted = 0
    while True:
        with db.write():
            count = db.run_sql(_SQL_PRUNE, (before, keep_archives, keep_failed, chunk)).rowcount
        deleted += count
        if count < chunk:
            return deleted


@dataclass(frozen=True)
class RecordedFile:
    """A file a finished job records (its archive copy or its FAILED file), as retention sees it."""
    id: int
    state: str
    path: str
    size: int               # the original's size and mtime: the copies keep both
    mtime_ns: int
    superseded: bool        # a later job records the same path: what is there is that job's


# Finished jobs last changed before the cutoff, by id from a point (keyset: each row read once a
# run). An archive copy is finished with once the job is notified or failed, or routed when no API
# is configured (routed is then final). A later job of the same name may have archived over it.
_SQL_FILES_DUE = {
    "archive": """
SELECT j.id, j.state, j.archive_path, j.size, j.mtime_ns,
       EXISTS (SELECT 1 FROM jobs n WHERE n.file_name = j.file_name AND n.archive_path = j.archive_path
                                     AND n.id > j.id)
FROM jobs j
WHERE j.id > ? AND j.updated_at < ? AND j.archive_path IS NOT NULL
  AND (j.state IN ('notified', 'failed', 'dismissed') OR (j.state = 'routed' AND ?))
ORDER BY j.id LIMIT ?""",
    "failed": """
SELECT id, state, failed_path, size, mtime_ns, 0
FROM jobs
WHERE id > ? AND updated_at < ? AND failed_path IS NOT NULL AND state IN ('failed', 'dismissed')
ORDER BY id LIMIT ?""",
}

_SQL_FORGET = {
    "archive": "UPDATE jobs SET archive_path = NULL WHERE id = ? AND state = ? AND archive_path = ?",
    "failed": "UPDATE jobs SET failed_path = NULL WHERE id = ? AND state = ? AND failed_path = ?",
}


def files_due(db: store.Engine, kind: str, before: float, after_id: int, limit: int,
              routed_final: bool = False) -> list[RecordedFile]:
    """Up to ``limit`` files of ``kind`` ("archive" or "failed") that finished jobs with an id above
    ``after_id``, last changed before ``before``, record; ``routed_final``: no API is configured."""
    params = (after_id, before, routed_final, limit) if kind == "archive" else (after_id, before, limit)
    rows = db.run_sql(_SQL_FILES_DUE[kind], params).fetchall()
    return [RecordedFile(*row[:5], superseded=bool(row[5])) for row in rows]
