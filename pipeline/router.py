"""The router: claims detected jobs in batches, validates, archives, copies, and cleans up
(docs/design.md#validation-and-routing, docs/design.md#file-operations).

A batch goes through four phases so that no file operation happens inside a write transaction
and a crash between any two of them is resumed by the next owner of the lease:

A. read, validate, archive and copy each file (fsync per file; folders fsynced once per batch;
   copies to remotes, docs/design.md#remote-destinations, made once the archive copy is);
B. commit: detected -> archived, the deliveries made, the failures about to be moved, the waits;
C. remove the originals (only the exact file the job took) and move invalid files to FAILED;
D. commit: archived -> routed, and the failures.

A router may be frozen at any point (SIGSTOP, a paused VM, a hung network mount) for longer than
its lease, while another router takes its jobs over. So it renews the batch's lease (one statement)
right before it publishes the copies, and publishes, removes and moves only the files of jobs it
still holds, with the lease far enough from its end for each file operation; past that point it
renews again first. A job it no longer holds is left to its new owner, untouched. And an older
job never replaces a copy that a later job of the same name has made already: that copy is kept.

A job follows its file: when the file is not at its recorded path but a file with its identity
(inode, size, mtime) is elsewhere in the hot folder (renamed, or its client folder renamed), the
job is moved there, with an audit event, and goes on; a rename is not a new appearance, and not an
error. The hot folder is listed for that only when a job's file is missing, once per phase.

A problem with the *job* (invalid file) fails it at once. A problem with the *place* (a folder
missing, read-only or full) is not the job's fault: the job waits and retries with backoff, and
only the deliveries that failed are tried again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
import time
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import peewee

from . import cli, failures, flow, ordering, redelivery, retry, rules, schemas, steering, strictjson
from .remote import Problem, record as remote_record
from .remote.delivery import Remotes
from .config import Config
from .hotfolder import HotFolder, Sighting
from .files import (Changed, Folders, Identity, NotRegular, discard, move_exact, publish, read_exact,
                    remove_exact, remove_stale_temporaries, stage, sync_together)
from .jobs import Archived, Claimed, Jobs, LeaseLost
from .states import MAX_CLAIMS, ROUTE_QUEUE, STEP_OF_STATE
from .program import Program
from .validation import Invalid, JobDetails, too_large, wanted

log = logging.getLogger(__name__)

PLACE_BACKOFF_CAP = 60.0   # seconds: the longest wait between tries at a place
RECHECK_CAP = 4.0           # seconds: the longest wait before a file still being written is read again
COPY_BUDGET = 16 << 20      # bytes of read jobs a batch holds before it copies them
FIRST_BATCH = 8             # jobs claimed when work starts again; doubles up to router.batch_size
# Order per key (docs/design.md#order-per-key): how long a batch looks again for earlier jobs that
# other routers are reading (their keys come within their batch), and when a job held back behind
# an earlier one of its key is looked at again: soon while a router holds that one, else at its
# due time, but within ORDER_RECHECK_CAP.
ORDER_READ_WAIT = 1.0
ORDER_RECHECK = 0.25
ORDER_RECHECK_CAP = 2.0
REDELIVERIES_EVERY = 1.0    # seconds: during a backlog, re-delivery requests are looked for this often


@dataclass
class Pending:
    """A batch read and copied whose last steps wait for its remote copies (Router._settle)."""
    token: str
    works: list[Work]
    sent: list          # (work, copy, future) of its remote copies


@dataclass
class Work:
    """One claimed job going through a batch."""
    job: Claimed
    state: str                                  # the job's state as committed so far
    details: JobDetails | None = None
    sha256: str | None = None
    archive_path: Path | None = None
    archived_now: bool = False                  # detected -> archived to commit in phase B
    delivered: list[tuple[str, str, str]] = field(default_factory=list)   # (name, path, action)
    data: bytes | None = None                   # the content, from its read to its copies
    targets: list = field(default_factory=list)     # rules.Destination: where its copies go
    refused: str = ""                           # why its destinations cannot be made (rules.Unsafe)
    delivered_before: set[str] = field(default_factory=set)   # copies an earlier claim made
    held_until: float = 0.0                     # its lease's end as this router last set it (jobs' clock)
    newer: dict[str, int] = field(default_factory=dict)   # path -> the later job of its name with a copy there
    outcome: str = ""                           # route | fail | move | wait | recheck | release | lost
    step: str = ""
    error: str = ""
    errors: list[str] = field(default_factory=list)     # every error of a schema broken, for the sidecar
    failed_path: Path | None = None
    attempts: int | None = None                 # set when this batch counted a retry
    problem: str = ""                           # a place problem found after phase B, beside error
    late: bool = False                          # its wait is committed in phase D, not B
    moved_from: str | None = None               # the file's recorded path, when it moved: to be recorded
    moved_ctime_ns: int = 0
    grew_from: int | None = None                # the size it was detected with, when its file changed in place
    recheck_in: float = 0.0                     # outcome recheck: read the file again after this long
    key: ordering.Key | None = None             # router.order_by's value, once read (ordering on)
    after: "Work | None" = None                 # the earlier job of its key in this batch, routed first
    waits_after: int = 0                        # outcome after: the earlier job it waits for
    waiting: steering.Wait | None = None        # outcome park: what it waits for (a paused destination, client)
    hold: str = ""                              # outcome hold: why it waits, held, for a person
    remote: list = field(default_factory=list)  # its copies to remotes, made after the batch's local ones
    started: float = field(default_factory=time.monotonic)

    @property
    def identity(self) -> Identity:
        j = self.job
        return Identity(j.inode, j.size, j.mtime_ns)

    @property
    def label(self) -> str:
        return self.job.label

    @property
    def about(self) -> dict:
        return self.job.about

    def follow(self, found: Sighting) -> None:
        """The job's file is at ``found`` now. Until its content is taken (detected) the job is the
        file's at its new place, folder and name included (validation, archive and FAILED use
        them); once archived, only where the original is to be removed from changes."""
        if self.moved_from is None:
            self.moved_from = self.job.source_path
        if self.state == "detected":
            self.job = dataclasses.replace(self.job, source_path=found.path, client_folder=found.client_folder,
                                           file_name=found.file_name)
        else:
            self.job = dataclasses.replace(self.job, source_path=found.path)
        self.moved_ctime_ns = found.st.st_ctime_ns

    def grow(self, st: os.stat_result) -> None:
        """The job's file changed in place before its content was taken: the job takes its new
        size and mtime (committed in phase B, ``Jobs.grew``)."""
        if self.grew_from is None:
            self.grew_from = self.job.size
        self.job = dataclasses.replace(self.job, size=st.st_size, mtime_ns=st.st_mtime_ns)
        self.moved_ctime_ns = st.st_ctime_ns

    def recheck(self, delay: float, reason: str) -> None:
        """Read the file again after ``delay``: it is still being written (not an attempt)."""
        self.outcome, self.step, self.error, self.recheck_in = "recheck", "validate", reason, delay

    def fail(self, step: str, error: str, move: bool = False) -> "Work":
        self.outcome, self.step, self.error = ("move" if move else "fail"), step, error
        return self

    def wait(self, step: str, error: str) -> "Work":
        self.outcome, self.step, self.error = "wait", step, error
        return self

    def wait_late(self, step: str, problem: str) -> None:
        """Phase C found a place problem: wait, keeping the reason of a failure about to be recorded."""
        if self.outcome not in ("fail", "move"):
            self.step, self.error = step, problem
        self.outcome, self.problem, self.late = "wait", problem, True


@dataclass
class Copy:
    """One copy of a job's content: staged in a copying thread, published by the batch's."""
    target: Path
    dest: rules.Destination | None = None       # None: the archive copy
    staged: Path | None = None                  # its temporary, written and fsynced
    error: Exception | None = None              # what staging it met, for publishing to judge
    present: bool = False                       # made already, by an owner that stopped before recording it


class Router(Program):
    wakes_on_work = True

    def __init__(self, config: Config, jobs: Jobs, stopper: cli.Stopper | None = None):
        self.config = config
        self.jobs = jobs
        self.db = jobs.db
        self.stopper = stopper or cli.Stopper()
        rc = config.router
        self.places, self.destinations, self.hot, self.keep = self._derived(config)
        self.error_log = failures.ErrorLog(config.paths.error_log, jobs.db, Folders.made_as(rc))
        self.hot_folder = HotFolder(config.paths.hot_folder)
        self._hot_files: dict[Identity, Sighting] | None = None     # listed on first need, per phase
        self._last_of_key: dict[str, Work] = {}     # ordering: the batch's latest job of each key
        self._copying: ThreadPoolExecutor | None = None
        self._syncing: ThreadPoolExecutor | None = None
        self.remotes = Remotes(config.remotes, rc.create_folders, rc.dir_mode)    # connections pooled per remote
        self._remote_threads: ThreadPoolExecutor | None = None
        self._remote_sent: list = []    # the batch's remote copies under way: (work, copy, future)
        self._remote_last: dict = {}    # target -> the future of the last copy sent to it
        self._pending: Pending | None = None    # a batch whose remote copies run on (_settle)
        self._claim_size = min(FIRST_BATCH, rc.batch_size)
        self._token = ""                # the lease token of the batch in hand
        self.pauses = steering.Pauses()     # what a person paused, read once per batch
        self._holding = any(route.hold for route in config.routes)
        self.gate, self._windowed, self._counting = self._flow(config)
        self.folder_places = flow.Places(jobs.db)      # max_waiting under several routers
        self.redeliveries = redelivery.Redeliverer(config, jobs.db, jobs.actor, self.destinations, jobs.clock)
        self._redeliveries_at = 0.0     # monotonic: when to look for re-delivery requests next

    @staticmethod
    def _derived(config: Config) -> tuple:
        """What the router makes of its configuration, beside reading it where it is used."""
        rc = config.router
        return (Folders.made_as(rc),                                   # archive, FAILED
                Folders.made_as(rc, create=rc.create_folders),         # client destinations
                Folders.made_as(rc, create=False),                     # the hot folder: only fsynced after removals
                # What validation keeps of a job file: what the rules read, and the order's key.
                wanted(rules.paths_named(config.routes) + ordering.paths(config.router.order_by)))

    def configure(self, config: Config) -> None:
        """Between two batches (nothing is held, every folder touched is synced): the rules, the
        modes, the batch size and the copy threads change with the configuration."""
        derived = self._derived(config)
        self._settle_pending()          # its copies made with the settings they were sent with
        idle_pools = [self._copying, self._syncing] if config.router.threads != self.config.router.threads else []
        old, rc = self.config, config.router
        self.config = config
        self.places, self.destinations, self.hot, self.keep = derived
        self.error_log.folders = Folders.made_as(config.router)
        self._holding = any(route.hold for route in config.routes)
        self.gate, self._windowed, self._counting = self._flow(config)
        self.redeliveries.config, self.redeliveries.folders = config, self.destinations
        self._claim_size = min(self._claim_size, config.router.batch_size)
        if idle_pools:                  # made again at the next batch, with the new count
            self._copying = self._syncing = None
            for pool in filter(None, idle_pools):
                pool.shutdown()
        if (config.remotes, config.routes) != (old.remotes, old.routes) or \
                (rc.create_folders, rc.dir_mode) != (old.router.create_folders, old.router.dir_mode):
            # Remote settings or routes changed: new pools (their connections made as the next
            # batch needs them) and as many threads as they now allow; nothing is in flight.
            remotes, threads = self.remotes, self._remote_threads
            self.remotes = Remotes(config.remotes, rc.create_folders, rc.dir_mode)
            self._remote_threads = None
            if threads is not None:
                threads.shutdown()
            remotes.close()

    @staticmethod
    def _flow(config: Config) -> tuple[flow.Gate, bool, bool]:
        """Flow control (docs/design.md#flow-control): the gate, whether a route has a window, and
        whether one has a max_waiting."""
        windowed = any(r.hours is not None or r.days is not None for r in config.routes)
        return flow.Gate(config.report.timezone), windowed, any(r.max_waiting is not None for r in config.routes)

    @property
    def copying(self) -> ThreadPoolExecutor:
        """The threads making copies (``router.threads``), from the first batch to the finish."""
        if self._copying is None:
            self._copying = ThreadPoolExecutor(self.config.router.threads, thread_name_prefix="copy")
        return self._copying

    @property
    def syncing(self) -> ThreadPoolExecutor:
        """The threads syncing the folders a batch's clean-up changed (the hot folder's, FAILED's):
        others than the copy threads, which may be writing the next batch's copies meanwhile."""
        if self._syncing is None:
            self._syncing = ThreadPoolExecutor(self.config.router.threads, thread_name_prefix="sync")
        return self._syncing

    @property
    def _margin(self) -> float:
        """A job's file is touched only while its lease has at least this long to run: more than
        one file operation can take, and more than two hosts' clocks may differ."""
        return self.config.router.lease / 2

    @property
    def remote_threads(self) -> ThreadPoolExecutor:
        """The threads making remote copies: as many as the remotes' connections together."""
        if self._remote_threads is None:
            remotes = {r.remote for r in self.config.routes if r.remote is not None}
            self._remote_threads = ThreadPoolExecutor(sum(self.remotes.size(r) for r in remotes) or 1,
                                                      thread_name_prefix="remote")
        return self._remote_threads

    def finish(self) -> None:
        # A batch still pending here was not drained (the database unusable at the stop): its jobs
        # are taken over when their leases run out; its copies under way end with the threads.
        self._pending = None
        for pool in filter(None, (self._copying, self._syncing)):
            pool.shutdown()
        self._copying = self._syncing = None
        if self._remote_threads is not None:
            self._remote_threads.shutdown()
            self._remote_threads = None
        self.remotes.close()

    # -- the loop ---------------------------------------------------------------------------------

    def step(self, now: float) -> float:
        """Route a batch when one is due; ask to be called again at once while there was work.
        While a person has paused all routing nothing is claimed: the router idles until woken
        (a resume is a commit) or the pause's end."""
        done = self.run_batch() if self.once or self.jobs.has_due(ROUTE_QUEUE) else 0
        if not done:
            self._settle_pending()      # no next batch to overlap its remote copies with
        if not done or time.monotonic() >= self._redeliveries_at:      # between batches, or once a second
            self._redeliveries_at = time.monotonic() + REDELIVERIES_EVERY
            if self.redeliveries.due():
                self.pauses = steering.Pauses.read(self.db, self.jobs.clock())
                if self.pauses.routing() is None:
                    done += self.redeliveries.run(self.pauses)
        self.error_log.flush()      # what an earlier run or a full disk left behind
        if not done and self.pauses.routing() and not self.once:
            end = self.pauses.next_end()
            return max(min(steering.PARK, end - now) if end else steering.PARK, self.config.router.poll_interval)
        return 0 if done else self.config.router.poll_interval

    def run_batch(self) -> int:
        """Claim and finish one batch; returns how many jobs it claimed."""
        cfg = self.config.router
        claimed_at = self.jobs.clock()
        self.pauses = steering.Pauses.read(self.db, claimed_at)     # once per batch: one small query
        if self.pauses.routing():
            return 0
        batch = self.jobs.claim(ROUTE_QUEUE, self._claim_size, cfg.lease)
        # A backlog starts with small batches, doubling up to batch_size: its first files are
        # routed within milliseconds instead of after a whole batch.
        full = len(batch.jobs) == self._claim_size
        self._claim_size = min(self._claim_size * 2, cfg.batch_size) if full else min(FIRST_BATCH, cfg.batch_size)
        if not batch.jobs:
            self._settle_pending()
            return 0
        # Folders counted afresh, once per batch; with a max_waiting, who waits for one outside it.
        self.gate.begin(claimed_at, self.jobs.first_waiting_full(batch.token) if self._counting else None)
        delivered = self.jobs.delivered_paths(j.id for j in batch.jobs if j.state == "archived")
        self._token = batch.token
        # What a batch cut short sent is dropped; copies still under way keep their place in the
        # order of their targets.
        self._remote_sent = []
        self._remote_last = {target: made for target, made in self._remote_last.items() if not made.done()}
        works = [Work(job=job, state=job.state, held_until=claimed_at + cfg.lease) for job in batch.jobs]
        self._hot_files = None
        self._last_of_key = {}
        self._places_taken = False
        ready, held = [], 0
        for i, work in enumerate(works):
            if self.stopper.requested:
                work.outcome = "release"
                continue
            # Validating may take a while ([[schema]] checks, up to schemas.TIME_LIMIT a job): the
            # jobs still to be read keep their lease.
            if not self._held(work, works[i:]):
                continue
            if self._guarded(work, self._prepare, work, delivered.get(work.job.id, set())):
                ready.append(work)
                held += len(work.data)
            if held > COPY_BUDGET:      # many large files: copy what is read before reading on
                self._copy_all(self._take_places(self._in_order(ready)))
                ready, held = [], 0
        self._copy_all(self._take_places(self._in_order(ready)))
        if self._places_taken:          # the copies are in their folders now: they count themselves
            self.folder_places.give_back(batch.token)
            self._places_taken = False
        self._sync_copies(works)
        batch_done = Pending(batch.token, works, self._remote_sent)
        self._remote_sent = []
        self._settle_pending()          # the batch before: its remote copies ran while this one was read
        if (batch_done.sent or full) and not self.config.router.order_by and not self.stopper.requested:
            self._pending = batch_done
        else:
            self._settle(batch_done)
        return len(batch.jobs)

    def _settle_pending(self, local_only: bool = False) -> None:
        """Settle the batch left pending, if any (also when idle, before a reload, and when
        stopping: ``drain``); with ``local_only``, only if it has no remote copies under way."""
        pending = self._pending
        if pending is None or local_only and pending.sent:
            return
        self._pending, token = None, self._token
        self._settle(pending)
        self._token = token             # the batch being copied, if any

    def _settle(self, batch: Pending) -> None:
        """The batch's last steps, once its copies are made: judge its remote copies, record its
        progress, remove its originals, record its outcomes.

        A batch with remote copies under way is settled only after the next batch has been read and
        copied (``run_batch``): an SFTP or S3 upload takes about as long as the router's own work for
        a job, and so the uploads overlap that work instead of waiting for it. A full batch (a
        backlog) with local copies only is settled while the next batch's copies are being written
        (``_copy_all``): its commits and removals overlap their fsyncs. The batch's jobs stay
        leased to this router meanwhile; a router killed in between leaves them to be taken over, as
        in the middle of any batch, their copies made again or found made. Not with
        ``router.order_by``, where a settled job hands on to the next of its key at once."""
        self._token = batch.token
        works = batch.works
        self._finish_remote(batch.sent)
        self._commit_progress(batch.token, works)
        self._hot_files = None          # files may have moved since phase A looked
        self._clean_up(works)
        self._commit_outcomes(batch.token, works)
        self._hand_on(works)
        remote_record.write(self.db, self.remotes.news())     # each remote's last success and error
        self._report(works)
        self.error_log.flush(new=any(w.outcome in FAILED_NOW for w in works))

    def drain(self) -> bool:
        """Stopping: settle the batch whose remote copies are under way."""
        self._settle_pending()
        return True

    # -- phase A: read, validate, archive, copy ------------------------------------------------------

    def _prepare(self, work: Work, delivered: set[str]) -> None:
        job = work.job
        if job.claims > MAX_CLAIMS:
            step = STEP_OF_STATE[job.state]
            work.fail(step, f"claimed {job.claims - 1} times without finishing (its worker stopped each "
                            "time); not tried again", move=job.state == "detected")
            return
        if job.failed_path:                      # a crash interrupted the move to FAILED: finish it
            work.failed_path = Path(job.failed_path)
            work.fail("validate", job.last_error or "invalid file", move=True)
            return
        if self.pauses and (paused := self.pauses.client(job.client_folder)):
            work.outcome, work.waiting = "park", paused     # detected, recorded, and left alone
            return
        data = self._read(work)
        if data is None:
            return
        try:
            # Where the file is now (it may have moved); with the [[schema]] tables that apply.
            work.details = schemas.parse_job(data, work.job.client_folder, self.keep, self.config.schemas)
        except Invalid as e:
            if work.state == "detected" and self._being_written(work, data):
                return
            work.errors = getattr(e, "errors", [])
            work.fail("validate", str(e), move=work.state == "detected")
            return
        job = work.job
        facts = rules.Facts.of(work.details, job.client_folder, job.file_name, job.detected_at)
        work.data, work.delivered_before = data, delivered
        try:
            work.targets = rules.destinations(self.config.routes, facts)
        except rules.Unsafe as e:
            work.refused = str(e)       # archived all the same: the job fails at route below
            return True
        self._steer(work, facts)
        return True

    def _in_order(self, ready: list[Work]) -> list[Work]:
        """With ``router.order_by``: record the keys of the jobs just read and hold back each one
        an earlier job of its key is not settled for (or an earlier job not read yet, held by
        another router, whose key may be the same); returns those that go on. Earlier jobs of a
        key in this batch go first, in claim order (``_deliver``). Without order_by: nothing."""
        keys = self.config.router.order_by
        if not keys or not ready:
            return ready
        for w in ready:
            w.key = ordering.key_of(w.details.document, keys)
        blocks = self.jobs.order(self._token, [(w.job.id, w.key.value) for w in ready])
        # Other routers read their batches as this one did and record their keys at once: look
        # again a few times rather than give back a job that may well go in a moment.
        deadline, pause = time.monotonic() + ORDER_READ_WAIT, 0.005
        while (any(b.busy and not b.read for b in blocks.values()) and time.monotonic() < deadline
               and not self.stopper.requested):
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            blocks = self.jobs.still_blocked(self._token, list(blocks))
        now, going = self.jobs.clock(), []
        for w in ready:
            block = blocks.get(w.job.id)
            if block is not None:
                delay = ORDER_RECHECK if block.busy and block.read else \
                    min(max(block.due - now, ORDER_RECHECK), ORDER_RECHECK_CAP)
                self._hold_back(w, block.after, ordering.after_text(keys, block.after, w.key) if block.read
                                else ordering.unread_text(keys, block.after), delay)
                continue
            if w.key.ordered:
                w.after = self._last_of_key.get(w.key.value)
                self._last_of_key[w.key.value] = w
            going.append(w)
        return going

    def _take_places(self, works: list[Work]) -> list[Work]:
        """With a max_waiting (docs/design.md#flow-control): take the places in their folders that
        the copies of ``works`` need, in one transaction; then, in claim order, a copy that finds
        no room waits (its job parked) while the job's other copies go on. Returns ``works``."""
        if not self._counting:
            return works
        limited = [(w, t) for w in works for t in w.targets
                   if self.gate.limited(t) and str(t.path) not in w.delivered_before]
        if not limited:
            return works
        wanted: dict[Path, tuple[int, int]] = {}
        for _, t in limited:
            cap, copies = wanted.get(t.folder, (t.route.max_waiting, 0))
            wanted[t.folder] = (cap, copies + 1)
        now = self.jobs.clock()
        self.gate.counted(self.folder_places.take(self._token, now, now + self.config.router.lease, wanted))
        self._places_taken = True
        for w, t in limited:
            if (wait := self.gate.full(t, w.job.id)) is not None:
                w.targets = [other for other in w.targets if other is not t]
                if w.waiting is None:
                    w.waiting = wait
        return works

    def _hand_on(self, works: list[Work]) -> None:
        """The jobs of ordered keys this batch settled let the jobs held back behind them go now."""
        settled = [w.job.id for w in works if w.key is not None and w.key.ordered and w.outcome in SETTLED_NOW]
        if settled:
            self.jobs.hand_on(settled)

    @staticmethod
    def _hold_back(work: Work, after: int, reason: str, delay: float) -> None:
        """The job waits behind ``after`` (no attempt spent), to be claimed again after ``delay``."""
        work.outcome, work.step, work.error, work.recheck_in, work.waits_after = "after", "route", reason, delay, after
        work.data = None
    def _steer(self, work: Work, facts: rules.Facts) -> None:
        """A person's say in where the job goes (docs/design.md#steering). An approval step
        (``hold = true``) or ``router.unmatched = "hold"`` holds it once archived, copying nothing;
        ``"fail"`` fails it at route once archived; a paused destination's copy waits (the job is
        parked) while its other copies are made, as does the copy of a route whose folder is full
        (``max_waiting``) or whose window is shut (docs/design.md#flow-control). A job a person
        released is not held again."""
        job = work.job
        if not work.targets and self.config.router.unmatched != "archive" and job.released_at is None:
            why = f"no rule routes client {job.client_folder} (router.unmatched = {self.config.router.unmatched})"
            if self.config.router.unmatched == "hold":
                work.hold = why
            else:
                work.refused = why
            return
        if self._holding and job.released_at is None and (route := rules.holding(self.config.routes, facts)):
            work.hold, work.targets = f"held for approval by [[route]] {route.name!r}", []
            return
        if self.pauses or self._windowed:
            going = []
            for target in work.targets:
                wait = None if str(target.path) in work.delivered_before else \
                    self.pauses.destination(target.name) or (self.gate.wait(target) if self._windowed else None)
                if wait is None:
                    going.append(target)
                elif work.waiting is None:
                    work.waiting = wait
            work.targets = going

    def _being_written(self, work: Work, data: bytes) -> bool:
        """A file whose JSON ends early (stops inside a value, or is empty) and that changed less
        than ``detect.incomplete_grace`` ago is taken to be still being written: the job waits
        and reads it again, sooner the newer the file (or at once when it changes: Jobs.create).
        Past the grace, or with a syntax error in the middle, it fails as invalid."""
        grace = self.config.detect.incomplete_grace
        age = max(time.time() - work.job.mtime_ns / 1e9, 0.0)
        if age >= grace or not strictjson.ends_early(data):
            return False
        work.recheck(min(max(age, 1.0), RECHECK_CAP, max(grace - age, 0.05)),
                     "incomplete JSON, still being written?")
        return True

    def _guarded(self, work: Work, call, *args) -> bool:
        """``call(*args)`` for one job; a defect it meets fails that job alone, its batch flows.
        The database's trouble (renewing the lease) is the batch's: it is raised."""
        try:
            return bool(call(*args))
        except Exception as e:
            if self._database_trouble(e):
                raise
            log.exception("%s: unexpected error", work.label, extra=work.about)
            work.fail(STEP_OF_STATE[work.state], f"unexpected error: {_describe(e)}",
                      move=work.state == "detected")
            return False

    def _copy_all(self, works: list[Work]) -> None:
        """Make the copies of read jobs. Each copy is first staged, written and fsynced under a
        temporary name, ``router.threads`` at a time: the fsyncs overlap, those of one job
        included, and fsyncs from several writers share the filesystem's journal commits. Then
        this thread publishes them under their names, job by job in claim order: no destination
        copy appears unless its job's archive copy did, and of two jobs writing one path the
        later one wins, as in one thread.

        Just before publishing, the batch's lease is renewed: the jobs another router took over
        while this one was held up (frozen, or stuck on a hung mount) are left to it, their
        temporaries discarded; and while publishing, a job's lease is renewed again before a
        copy whenever it runs short (``_held``)."""
        self._hold(works)           # a job held no longer must not clear the temporaries of its new owner
        for work in works:
            if work.outcome == "lost":
                work.data = None
        works = [work for work in works if work.outcome != "lost"]
        planned = [(work, self._planned(work)) for work in works]
        staging = [self.copying.submit(self._stage, copy, work.data, work.job.mtime_ns)
                   for work, copies in planned for copy in copies if not copy.present and not _is_remote(copy)]
        try:
            self._settle_pending(local_only=True)   # the batch before, while these are written
            for staged in staging:
                staged.result()
            if works:
                self._hold(works, renew=True)
            for i, (work, copies) in enumerate(planned):
                try:
                    if work.outcome != "lost":
                        self._guarded(work, self._deliver, work, copies, works[i:])
                        self._send_remote(work)
                finally:
                    _discard_unpublished(copies)    # not published: the job failed, waits or was lost
        finally:
            futures.wait(staging)                   # none still writing when the rest is discarded
            for work, copies in planned:            # the batch cut short (the database's trouble)
                _discard_unpublished(copies)
                work.data = None

    def _hold(self, works: list[Work], renew: bool = False) -> None:
        """Renew, in one statement, the lease of those of ``works`` whose lease has less than
        ``_margin`` to run. With ``renew`` (right before publishing), all of them are looked at:
        renewed when any runs short, else only read (``Jobs.check``: no write transaction, the
        usual case, as a batch takes far less than half a lease). A job another router has taken
        over meanwhile, or a person has taken out of its hands, is lost: this router leaves it
        alone from now on, whatever it did so far."""
        now = self.jobs.clock()
        short = [w for w in works if w.outcome != "lost" and now >= w.held_until - self._margin]
        due = [w for w in works if w.outcome != "lost"] if renew else short
        if not due:
            return
        ids = [w.job.id for w in due]
        renewal = self.jobs.renew(self._token, ids, self.config.router.lease) if short else \
            self.jobs.check(self._token, ids)
        for w in due:
            if w.job.id in renewal.held:
                w.held_until = renewal.until or w.held_until
                w.newer = renewal.later.get(w.job.id, {})
            else:
                log.warning("%s: lease lost to another router; leaving the job to it", w.label, extra=w.about)
                w.outcome = "lost"

    def _held(self, work: Work, batch: list[Work]) -> bool:
        """Whether this router may still touch ``work``'s files: its lease is checked on the clock
        first, and renewed with those of ``batch`` (the jobs whose files are still to be touched)
        when it runs short."""
        if work.outcome != "lost" and self.jobs.clock() >= work.held_until - self._margin:
            self._hold(batch)
        return work.outcome != "lost"

    def _planned(self, work: Work) -> list[Copy]:
        """The copies the job still needs, its archive copy first."""
        job = work.job
        archive = self.config.paths.store / job.client_folder / job.file_name
        if job.claims > 1:      # its previous owner died, maybe mid-copy: clear what it left
            for target in [archive] + [d.path for d in work.targets if d.remote is None]:   # (before any staging)
                remove_stale_temporaries(target.parent, target.name)
        copies = [Copy(archive)] if work.state == "detected" and work.archive_path is None else []
        if not work.refused:
            copies += [Copy(d.path, d) for d in work.targets if d.where not in work.delivered_before]
        if job.claims > 1:
            # Its previous owner may have published copies and stopped (killed, or frozen past
            # its lease) before recording them: a copy that is there, this very content with the
            # original's mtime, is not published again, so a consumer of the folder does not
            # receive the file twice.
            for copy in copies:     # (a remote copy is looked at when it is made: Remotes.deliver)
                copy.present = not _is_remote(copy) and _is_copy_of(copy.target, work.identity) \
                    and _same_content(copy.target, work.sha256)
        return copies

    def _stage(self, copy: Copy, data: bytes, mtime_ns: int) -> None:
        try:
            if copy.dest is None:
                copy.staged = stage(copy.target, data, self.places, mtime_ns=mtime_ns)
                return
            if copy.dest.templated:     # folders named by the job's values: no symlink below the base
                self.destinations.ensure(copy.dest.folder, below=copy.dest.base)
            copy.staged = stage(copy.target, data, self.destinations, mtime_ns=mtime_ns)
        except Exception as e:
            copy.error = e

    def _read(self, work: Work) -> bytes | None:
        """The job's content: from the hot folder while detected, from the archive once archived."""
        job = work.job
        limit = self.config.router.max_file_bytes
        archive = self.config.paths.store / job.client_folder / job.file_name
        if work.state == "archived":
            return self._read_archive(work, Path(job.archive_path or archive))
        try:
            data = read_exact(job.source_path, work.identity, limit)
        except FileNotFoundError:
            # Gone from the hot folder: if our archive copy is there (a crash after the removal,
            # before the commit), carry on from it; otherwise someone else removed the file.
            if _is_copy_of(archive, work.identity):
                return self._read_archive(work, archive)
            if self._follow(work):
                return self._read(work)
            work.fail("detect", "file disappeared from the hot folder before it could be read")
            return None
        except NotRegular as e:
            work.fail("detect", f"file {e}; left where it is")
            return None
        except Changed as e:
            return self._changed(work, e)
        except OSError as e:
            work.wait("archive", f"cannot read the file: {_os_reason(e)}")
            return None
        if data is None:
            work.fail("validate", str(too_large(job.size, limit)), move=True)
            return None
        work.sha256 = hashlib.sha256(data).hexdigest()
        return data

    def _changed(self, work: Work, change: Changed) -> bytes | None:
        """The file at the job's path is not the one it took. Another file (another inode) is a
        new appearance, a job of its own. The same file changed in place, still being written, is
        followed: the job has not taken its content, and a file is one job. Unless the new
        version has a job already (one a detector made while a router held this one): then this
        job, which only ever saw a part of the file, ends, and that one goes on."""
        job = work.job
        try:
            st = os.lstat(job.source_path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_ino != job.inode:
            work.fail("detect", f"file {change}; the new version is handled as a job of its own")
            return None
        if work.grew_from is not None:          # changed again while it was read: being written now
            work.recheck(1.0, "the file is still being written (it changed while it was read)")
            return None
        newer = self.jobs.appearance(Identity.of(st), job.id)
        if newer is not None:
            work.fail("detect", f"replaced by a newer version of the file while it was being written (job {newer})")
            return None
        log.info("%s: changed in place (%d -> %d bytes) before it was read; the job follows it",
                 work.label, job.size, st.st_size)
        work.grow(st)
        return self._read(work)

    def _follow(self, work: Work) -> bool:
        """Make the job follow its file when it was renamed within the hot folder; True when it did."""
        if self._hot_files is None:
            sightings, _ = self.hot_folder.list()
            self._hot_files = {Identity.of(s.st): s for s in sightings}
        found = self._hot_files.get(work.identity)
        if found is None or found.path == work.job.source_path:
            return False
        log.info("%s: moved to %s/%s in the hot folder; the job follows it", work.label, found.client_folder,
                 found.file_name, extra=work.about)
        work.follow(found)
        return True

    def _read_archive(self, work: Work, path: Path) -> bytes | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            work.fail("route", f"archived copy {path} is missing")
            return None
        except OSError as e:
            work.wait("route", f"cannot read the archived copy: {_os_reason(e)}")
            return None
        sha = hashlib.sha256(data).hexdigest()
        if work.job.sha256 and sha != work.job.sha256:
            work.fail("route", "its archived copy was replaced by a newer file of the same name "
                               "before every copy was made")
            return None
        work.sha256, work.archive_path = sha, path
        return data

    def _deliver(self, work: Work, copies: list[Copy], batch: list[Work]) -> None:
        """Publish the job's staged copies in order, and judge what went wrong with any. Each
        copy only while the job is held (``batch``: the jobs from this one on, renewed together)."""
        before = work.after
        if before is not None and before.outcome not in SETTLED_NOW:
            # The earlier job of its key in this batch did not go: this one follows it, later.
            self._hold_back(work, before.job.id, ordering.after_text(self.config.router.order_by, before.job.id,
                                                                     work.key), ORDER_RECHECK)
            return
        if copies and copies[0].dest is None:
            archive, copies = copies[0], copies[1:]
            newer = work.newer.get(str(archive.target))
            if newer is not None:
                # Its file was replaced after it was read, and the newer file's job is archived:
                # this older content is not put over it. (The original stays, as after any
                # failure at archive: bin/requeue takes it again.)
                work.fail("archive", f"a newer job of the same name (job {newer}) is already archived "
                                     f"at {archive.target}; this older one is not put over it")
                return
            if archive.present:
                self.places.touched(archive.target.parent)      # its folder synced with this batch's
            else:
                if not self._held(work, batch):
                    return
                try:
                    _published(archive, self.places, replace=True)
                except OSError as e:
                    self.places.forget(archive.target.parent)
                    work.wait("archive", f"cannot write the archive copy {archive.target}: {_os_reason(e)}")
                    return
            work.archive_path = archive.target
        if work.state == "detected":
            work.archived_now = True
        if work.refused:
            work.fail("route", work.refused)
            return
        if work.hold:
            work.outcome = "hold"
            return
        problems = []
        conflict = self.config.router.conflict
        for copy in copies:
            dest = copy.dest
            newer = work.newer.get(dest.where)
            if newer is not None and conflict == "replace":
                # Of two jobs writing one path the later one wins, whichever publishes last.
                log.info("%s: %s keeps the copy of a newer job of the same name (job %d)",
                         work.label, dest.name, newer, extra=work.about)
                work.delivered.append((dest.name, dest.where, "kept"))
                continue
            if dest.remote is not None:
                work.remote.append(copy)        # made from the archive copy on (_send_remote)
                continue
            if copy.present:
                log.info("%s: %s holds its copy already (made before its previous owner stopped)",
                         work.label, dest.name, extra=work.about)
                self.destinations.touched(copy.target.parent)
                work.delivered.append((dest.name, str(copy.target), "written"))
                continue
            if not self._held(work, batch):
                return
            try:
                written = _published(copy, self.destinations, replace=conflict == "replace")
            except NotRegular as e:
                work.fail("route", f"{dest.name}: {e}")
                return
            except OSError as e:
                self.destinations.forget(dest.folder)
                problems.append(f"{dest.name}: {_os_reason(e)} ({dest.folder})")
                continue
            action = "written"
            if not written and not _same_content(copy.target, work.sha256):
                if conflict == "fail":
                    work.fail("route", f"a different file named {dest.file_name} is already in {dest.name} "
                                       f"({dest.folder}) and router.conflict is fail")
                    return
                action = "kept"
            work.delivered.append((dest.name, str(copy.target), action))
        if problems:
            work.wait("route", "; ".join(problems))
        else:
            work.outcome = "park" if work.waiting else "route"

    def _send_remote(self, work: Work) -> None:
        """Start the job's remote copies, its archive copy published: they are made while the
        batch goes on (the next jobs' copies, the folders' fsyncs), each remote's connections
        busy at once; ``_finish_remote`` waits for them. Copies to one target are made in claim
        order (each waits for the one before): of two jobs the later one wins."""
        copies, work.remote = work.remote, []
        if not copies or not (work.outcome == "route" or work.outcome == "wait" and work.step == "route"):
            return
        for copy in copies:
            before = self._remote_last.get(copy.dest.where)
            made = self.remote_threads.submit(self._make_remote, work, copy, work.data, before)
            self._remote_last[copy.dest.where] = made
            self._remote_sent.append((work, copy, made))

    def _finish_remote(self, sent: list) -> None:
        """Judge a batch's remote copies, ``sent`` (work, copy, future). A remote that could not take
        a copy is a place problem for that copy alone (the job waits for it); the job's other
        copies are recorded."""
        problems: dict[int, list[str]] = {}
        conflict = self.config.router.conflict
        for w, copy, future in sent:
            dest, made = copy.dest, future.result()
            if w.outcome not in ("route", "wait") or w.outcome == "wait" and w.step != "route":
                continue        # failed meanwhile (conflict = fail), or its archive folder did not sync
            if isinstance(made, Problem):
                problems.setdefault(id(w), []).append(f"{dest.name}: {made}")
                continue
            if made.before:
                log.info("%s: %s holds its copy already (made before its previous owner stopped)",
                         w.label, dest.name, extra=w.about)
            if not made.same and conflict == "fail":
                w.fail("route", f"a different file named {dest.file_name} is already in {dest.name} "
                                f"({dest.remote.label}{dest.folder}) and router.conflict is fail")
                continue
            w.delivered.append((dest.name, dest.where, "written" if made.same else "kept"))
        for w, _, _ in sent:
            found = problems.pop(id(w), None)
            if found and w.outcome == "route":
                w.wait("route", "; ".join(found))
            elif found and w.outcome == "wait":
                w.error = "; ".join([w.error] + found)

    def _make_remote(self, work: Work, copy: Copy, data: bytes, before) -> object:
        """Make one remote copy, after ``before`` (the previous copy to its target, if any, in
        this batch): its Made, or the Problem met."""
        if before is not None:
            before.result()
        dest = copy.dest
        try:
            return self.remotes.deliver(dest.remote, str(dest.folder), dest.file_name, data, work.sha256,
                                        replace=self.config.router.conflict == "replace",
                                        # taken over from a router that stopped, or tried before
                                        # (a connection cut mid-write leaves its temporary there)
                                        resumed=work.job.claims > 1 or work.job.attempts > 0)
        except Problem as e:
            return e
        except Exception as e:      # a defect: this copy waits, the others go on
            log.exception("%s: unexpected error while copying to %s", work.label, dest.remote.label,
                          extra=work.about)
            return Problem(f"{dest.remote.label}: unexpected error: {_describe(e)}")

    def _sync_copies(self, works: list[Work]) -> None:
        """fsync the folders phase A wrote to; a copy whose folder did not sync is not made."""
        failed = sync_together([self.places, self.destinations], self.copying.map)
        if not failed:
            return
        for w in works:
            if w.archived_now and str(w.archive_path.parent) in failed:
                w.archived_now, w.delivered = False, []
                w.wait("archive", f"cannot sync the archive folder: {_os_reason(failed[str(w.archive_path.parent)])}")
                continue
            unsynced = [(name, path) for name, path, _ in w.delivered if str(Path(path).parent) in failed]
            if unsynced:
                w.delivered = [d for d in w.delivered if (d[0], d[1]) not in unsynced]
                w.wait("route", "; ".join(f"{name}: cannot sync the folder: "
                                         f"{_os_reason(failed[str(Path(path).parent)])}" for name, path in unsynced))

    # -- phase B: commit progress -----------------------------------------------------------------

    def _commit_progress(self, token: str, works: list[Work]) -> None:
        now = self.jobs.clock()
        releases = [w.job.id for w in works if w.outcome == "release"]
        for w in works:
            if w.outcome == "move" and not w.job.failed_path:
                w.failed_path = failures.failed_path(self.config.paths.failed, w.job.client_folder,
                                                     w.job.file_name, now, w.job.id)
        self._commit_each(token, works, self._record_progress)
        if releases:
            self.jobs.release(token, releases)

    def _record_move(self, token: str, w: Work) -> None:
        if w.moved_from is not None:
            self.jobs.moved(token, self._as_committed(w), w.moved_from, w.moved_ctime_ns)
            w.moved_from = None

    def _record_progress(self, token: str, works: list[Work]) -> None:
        """Each job's steps in their order; the archiving and the copies of all the jobs each in one
        statement (a job's earlier steps come before them, its ending after)."""
        for w in works:
            self._record_found(token, w)
        archived = [w for w in works if w.archived_now]
        self.jobs.archived(token, [Archived(w.job.id, w.sha256, w.details.client_code, w.details.job_category,
                                                w.details.studio_code, w.details.title, str(w.archive_path))
                                       for w in archived])
        for w in archived:
            w.state = "archived"
        self.jobs.delivered(token, [(w.job.id, *copy) for w in works for copy in w.delivered])
        for w in works:
            self._record_ending(token, w)

    def _record_found(self, token: str, w: Work) -> None:
        """What reading the job found before it could go on: its file moved or grown, or not ready."""
        self._record_move(token, w)
        if w.grew_from is not None:
            self.jobs.grew(token, self._as_committed(w), w.grew_from, w.moved_ctime_ns)
            w.grew_from = None
        if w.outcome == "recheck":
            self.jobs.recheck(token, self._as_committed(w), w.recheck_in, w.error)
        elif w.outcome == "after":
            self.jobs.wait_in_order(token, self._as_committed(w), w.recheck_in, w.error, w.waits_after)

    def _record_ending(self, token: str, w: Work) -> None:
        if w.outcome == "wait":
            self._wait(token, w)
        elif w.outcome == "park":
            self.jobs.park(token, self._as_committed(w), w.waiting.cause, w.waiting.says,
                           w.waiting.due(self.jobs.clock()))
        elif w.outcome == "hold":
            self.jobs.held(token, w.job.id, w.hold)
        elif w.outcome == "move" and not w.job.failed_path:
            self.jobs.will_fail(token, self._as_committed(w), str(w.failed_path), w.error)
        elif w.outcome == "fail" and w.step == "detect":
            self._failed(token, w)

    def _commit_each(self, token: str, works: list[Work], record) -> None:
        """One transaction for the batch. A job whose record cannot be written (its lease lost to
        another router, a value the database refuses) is rolled back alone and the others are
        committed: the batch is recorded whole under one savepoint (``record`` takes the list of
        jobs, and writes each kind of step for all of them in one statement), and only when a job
        refuses is it recorded again with a savepoint per job. The database itself failing fails
        the whole batch."""
        with self.jobs.transaction():
            owned = self.jobs.owned(token, [w.job.id for w in works])
            todo = []
            for w in works:
                if w.outcome in ("lost", "release", "unrecorded"):
                    continue
                if w.job.id not in owned:
                    log.warning("%s: lease lost to another router; leaving the job to it", w.label,
                                extra=w.about)
                    w.outcome = "lost"
                    continue
                todo.append(w)
            before = [(w, _recorded_fields(w)) for w in todo]
            try:
                with self.jobs.transaction():       # a savepoint: the batch as one
                    record(token, todo)
                return
            except Exception as e:
                if self._database_trouble(e):
                    raise           # the database's trouble, not a job's: the batch waits
            for w, fields in before:
                vars(w).update(fields)              # as before the savepoint rolled back
                self._record_alone(token, w, record, fields)

    def _record_alone(self, token: str, w: Work, record, fields: dict) -> None:
        try:
            with self.jobs.transaction():    # a savepoint: one job's refusal is its own
                record(token, [w])
        except LeaseLost:
            log.warning("%s: lease lost to another router; leaving the job to it", w.label, extra=w.about)
            w.outcome = "lost"
        except Exception as e:
            if self._database_trouble(e):
                raise
            log.exception("%s: cannot record its outcome", w.label, extra=w.about)
            vars(w).update(fields)
            w.outcome, w.error = "unrecorded", f"cannot record its outcome: {_describe(e)}"

    def _database_trouble(self, e: Exception) -> bool:
        return isinstance(e, peewee.OperationalError) or self.db.transient(e) is not None

    def _failed(self, token: str, w: Work) -> None:
        job = self._as_committed(w)
        attempts = job.attempts if w.attempts is None else w.attempts
        where = str(w.failed_path or w.archive_path or job.source_path)
        self.jobs.failed(token, job, w.step, w.error, attempts,
                         error_log=failures.error_log_record(job, w.error, attempts, where, self.jobs.clock()))

    def _wait(self, token: str, w: Work) -> None:
        attempts = w.attempts = w.job.attempts + 1
        limit = self.config.router.max_attempts
        if limit and attempts >= limit:
            w.outcome, w.error = "fail", f"{w.error} (gave up after {attempts} attempts, router.max_attempts)"
            if w.state == "archived" and not w.late:
                return                  # failed in phase D, after the original is removed
            self._failed(token, w)
            w.outcome = "failed"
            return
        delay = retry.delay(attempts, PLACE_BACKOFF_CAP)
        self.jobs.wait(token, self._as_committed(w), delay, w.error, attempts, problem=w.problem or None)

    @staticmethod
    def _as_committed(w: Work) -> Claimed:
        return dataclasses.replace(w.job, state=w.state)

    # -- phase C: remove originals, move failures ---------------------------------------------------

    def _clean_up(self, works: list[Work]) -> None:
        now = self.jobs.clock()
        touching = [w for w in works if _cleans_up(w)]
        for i, w in enumerate(touching):
            if not self._held(w, touching[i:]):     # taken over while this router was held up
                continue
            try:
                self._clean_up_one(w, now)
            except Exception as e:      # a defect met by this one job: it waits, its batch flows
                log.exception("%s: unexpected error while cleaning up", w.label, extra=w.about)
                w.wait_late(w.step or "route", f"unexpected error: {_describe(e)}")
        moved = {str(w.failed_path.parent): w for w in works if w.outcome == "move"}
        for folder, error in sync_together([self.places, self.hot], self.syncing.map).items():
            if folder in moved:
                moved[folder].wait_late("validate", f"cannot sync the FAILED folder: {_os_reason(error)}")
            else:
                # Originals removed (should one come back after a crash, detection knows its job),
                # or a FAILED folder's parent made.
                log.warning("cannot sync the folder %s after removing or moving files: %s", folder, _os_reason(error))

    def _clean_up_one(self, w: Work, now: float) -> None:
        # After a failure the original goes only if the archive copy is verified to hold it.
        if _removes_original(w):
            if not os.path.lexists(w.job.source_path):
                self._follow(w)         # removed where it is now; or it is gone (removed before a crash)
            try:
                removed = remove_exact(w.job.source_path, w.identity)
            except OSError as e:
                # A place problem (an immutable or read-only client folder, a deny-delete ACL):
                # routed once it can be removed; a failure is recorded with the file left in place.
                reason = f"cannot remove the original from the hot folder: {_os_reason(e)}"
                if w.outcome == "route":
                    w.wait_late("route", reason)
                else:
                    w.error += f"; {reason}"
                return
            if not removed:
                log.warning("%s: left in the hot folder: a newer file of that name replaced it", w.label,
                            extra=w.about)
            else:
                self._remove_marker(w)
            self.hot.touched(Path(w.job.source_path).parent)
        elif w.outcome == "move":
            self._move_to_failed(w, now)

    def _remove_marker(self, w: Work) -> None:
        """With detect.done_suffix, the done marker goes once its job file has left the hot folder
        (never before: a marker without its file is a drop not done). One already gone is fine."""
        suffix = self.config.detect.done_suffix
        if not suffix:
            return
        marker = w.job.source_path + suffix
        try:
            if not stat.S_ISDIR(os.lstat(marker).st_mode):
                os.unlink(marker)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("%s: cannot remove its done marker %s: %s", w.label, marker, _os_reason(e),
                        extra=w.about)

    def _move_to_failed(self, w: Work, now: float) -> None:
        try:
            move_exact(w.job.source_path, w.failed_path, w.identity, self.places)
        except FileNotFoundError:
            if not w.failed_path.exists():      # not moved by an earlier attempt either
                w.error += "; the file disappeared before it could be moved to FAILED"
            else:
                self._remove_marker(w)
        except Changed as e:
            w.error += f"; not moved to FAILED: the file {e}"
        except OSError as e:
            w.wait_late("validate", f"cannot move the file to FAILED: {_os_reason(e)}")
            return
        else:
            self._remove_marker(w)
        try:
            failures.write_sidecar(w.failed_path, w.job, w.step, w.error, w.job.attempts, now, self.places,
                                   errors=w.errors)
        except OSError as e:
            self.places.forget(w.failed_path.parent)
            w.wait_late("validate", f"cannot write the reason beside the file in FAILED: {_os_reason(e)}")

    # -- phase D: commit outcomes -----------------------------------------------------------------

    def _commit_outcomes(self, token: str, works: list[Work]) -> None:
        self._commit_each(token, [w for w in works if w.outcome == "route" or w.outcome == "move" or
                                  (w.outcome == "fail" and w.step != "detect") or
                                  (w.outcome == "wait" and w.late)], self._record_outcomes)

    def _record_outcomes(self, token: str, works: list[Work]) -> None:
        """The routed jobs in one statement, after any move of their files; the others one by one."""
        for w in works:
            self._record_move(token, w)
        self.jobs.routed(token, [(w.job.id, _route_detail(w)) for w in works if w.outcome == "route"])
        for w in works:
            if w.outcome == "wait":
                self._wait(token, w)
            elif w.outcome != "route":
                self._failed(token, w)

    def _report(self, works: list[Work]) -> None:
        for w in works:
            ms = (time.monotonic() - w.started) * 1000
            if w.outcome == "route":
                where = ", ".join(name for name, _, _ in w.delivered) or "archive only"
                log.info("routed %s -> %s (%.0f ms)", w.label, where, ms, extra=w.about)
            elif w.outcome == "wait":
                log.warning("%s waits: %s", w.label, w.problem or w.error, extra=w.about)
            elif w.outcome == "park":
                log.info("%s waits: %s", w.label, w.waiting.says, extra=w.about)
            elif w.outcome == "hold":
                log.info("%s held: %s", w.label, w.hold, extra=w.about)
            elif w.outcome == "recheck":
                log.info("%s: %s; read again in %.3gs", w.label, w.error, w.recheck_in, extra=w.about)
            elif w.outcome == "after" and w.error != w.job.last_error:     # said once per cause
                log.info("%s waits in order: %s", w.label, w.error, extra=w.about)
            elif w.outcome in FAILED_NOW:
                place = f"; moved to {w.failed_path}" if w.outcome == "move" else ""
                log.error("failed %s at %s: %s%s", w.label, w.step, w.error, place, extra=w.about)
            elif w.outcome == "unrecorded":
                log.error("%s: left for a later claim: %s", w.label, w.error, extra=w.about)


FAILED_NOW = ("fail", "move", "failed")     # the outcomes that record a failure in this batch
SETTLED_NOW = ("route",) + FAILED_NOW        # a job of a key so settled lets the next one of its key go


def _removes_original(w: Work) -> bool:
    """Whether phase C removes the job's original from the hot folder."""
    return w.state == "archived" and (w.outcome == "route" or w.outcome == "fail" and bool(w.archive_path))


def _cleans_up(w: Work) -> bool:
    """Whether phase C touches the job's files: removes its original, or moves it to FAILED."""
    return _removes_original(w) or w.outcome == "move"


def _is_remote(copy: Copy) -> bool:
    return copy.dest is not None and copy.dest.remote is not None


def _discard_unpublished(copies: list[Copy]) -> None:
    for copy in copies:
        if copy.staged is not None:
            discard(copy.staged)
            copy.staged = None


def _recorded_fields(w: Work) -> dict:
    """What recording a job's progress changes in its Work: put back when the record is undone."""
    return {name: getattr(w, name) for name in ("state", "attempts", "outcome", "error", "moved_from", "grew_from")}


def _published(copy: Copy, folders: Folders, replace: bool) -> bool:
    """Give a staged copy its name (False: kept what was there), or raise what staging it met."""
    if copy.error is not None:
        raise copy.error
    tmp, copy.staged = copy.staged, None
    return publish(tmp, copy.target, folders, replace=replace)


def _route_detail(w: Work) -> str:
    names = [f"{name}{' (kept existing)' if action == 'kept' else ''}" for name, _, action in w.delivered]
    unordered = f"; {ordering.unordered_text(w.key)}" if w.key is not None and not w.key.ordered else ""
    return "to " + (", ".join(names) if names else "archive only") + "; original removed" + unordered


def _is_copy_of(path: Path, identity: Identity) -> bool:
    """Our archive copies keep the original's size and mtime: a match means the copy was made."""
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (identity.size, identity.mtime_ns)


def _same_content(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


def _describe(e: Exception) -> str:
    """An unexpected exception in one line: its type and the first line of its message."""
    message = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    return cli.serve("router", "Claim detected job files in batches, validate, archive and route them.",
                     lambda ctx: Router(ctx.config, Jobs(ctx.db, ctx.actor), ctx.stopper), argv)

if __name__ == "__main__":
    raise SystemExit(main())
