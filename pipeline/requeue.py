"""Putting failed jobs back where they failed, with an audit event (``bin/requeue`` and the dashboard).

Where each goes back, by the step it failed at:

* notify   -> routed: the notifier tries again with a fresh budget of attempts;
* route    -> archived: the router makes the missing copies from the archive;
* archive  -> detected: the original never left the hot folder;
* validate -> detected, with its file moved from FAILED back into the hot folder;
* detect   -> nothing to put back: the file vanished or was replaced (a new version is its own job).

A validation failure's file goes back in an order that survives a crash at any point: the FAILED
file is copied to a hidden name in the hot client folder (detection ignores dotfiles) and fsynced;
the job is committed as that hidden file, leased to requeue for a while; the copy is linked into
place, which keeps its inode and mtime, so a sighting of it matches the job and makes no duplicate;
the job is released as the file at its place; only then are the FAILED copy and its sidecar
removed. Killed before the link, requeue leaves a job that a router takes from the hidden copy
once the lease expires; killed later, the FAILED copy is merely still there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
from pathlib import Path

import peewee

from .config import Config
from .files import (Changed, Folders, Identity, NotRegular, fit_name, fsync_dir, read_exact, remove_exact,
                    write_atomic)
from .jobs import Jobs, LeaseLost
from .states import REQUEUE_STATE
from .store.models import Job

log = logging.getLogger(__name__)

HOLD = 30.0     # seconds a job put back with its file stays leased to requeue while the file moves

_WHAT_HAPPENS = {
    "notify": "the notifier tries again with a fresh budget of attempts",
    "route": "the router makes the missing copies from the archive",
    "archive": "the router takes the file from the hot folder again",
}


class Skip(Exception):
    """This job cannot be put back; the message says why, for the operator."""


def utc_time(value: str) -> float:
    """``--since``: an ISO date or date and time, UTC unless it names its zone."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or date and time in UTC, such as 2024-05-01 or 2024-05-01T13:30, got {value!r}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def failed_jobs(ids: list[int] | None = None, client: str | None = None, step: str | None = None,
                since: float | None = None) -> list[Job]:
    """The failed jobs that match every filter given, oldest failure first."""
    return jobs_in(("failed",), ids, client, step, since)


def jobs_in(states: tuple[str, ...], ids: list[int] | None = None, client: str | None = None,
            step: str | None = None, since: float | None = None) -> list[Job]:
    """The jobs in ``states`` that match every filter given (bin/requeue's, bin/dismiss's and
    bin/release's), oldest first: by failure for failed jobs (``since`` their failure), else by
    their last change."""
    when = Job.failed_at if states == ("failed",) else Job.updated_at
    query = Job.select().where(Job.state.in_(list(states)))
    if ids:
        query = query.where(Job.id.in_(ids))
    if client:
        query = query.where(peewee.fn.lower(Job.client_folder) == client.lower())
    if step:
        query = query.where(Job.failed_step == step)
    if since is not None:
        query = query.where(when >= since)
    return list(query.order_by(when, Job.id))


class Requeue:
    """Puts failed jobs back; with ``dry_run`` it only says what it would do."""

    def __init__(self, config: Config, jobs: Jobs, dry_run: bool = False):
        self.config = config
        self.jobs = jobs
        self.dry_run = dry_run
        self.folders = Folders.made_as(config.router)

    def job(self, job: Job) -> tuple[bool, str]:
        """Put one job back; returns (done, the line to print)."""
        label = f"job {job.id} {job.client_folder}/{job.file_name} (failed at {job.failed_step})"
        try:
            if job.failed_step == "validate":
                said = self._put_file_back(job)
            elif job.failed_step in REQUEUE_STATE:
                said = self._put_back(job)
            else:
                raise Skip("nothing to put back (the file vanished or was replaced before it could be "
                           "read; a new version is a job of its own)")
        except Skip as e:
            return False, f"{label}: skipped: {e}"
        return True, f"{label}: {'would go' if self.dry_run else 'went'} {said}"

    def _put_back(self, job: Job) -> str:
        to_state = REQUEUE_STATE[job.failed_step]
        said = f"back to {to_state}; {_WHAT_HAPPENS[job.failed_step]}"
        if self.dry_run:
            return said
        with self.jobs.transaction():
            if not self.jobs.requeue(job.id, job.failed_step, f"requeued after failing at {job.failed_step}: "
                                                              f"{_WHAT_HAPPENS[job.failed_step]}"):
                raise Skip("it is no longer failed (requeued by someone else meanwhile)")
        return said

    def _put_file_back(self, job: Job) -> str:
        if not job.failed_path:
            raise Skip("no file in FAILED is recorded for it")
        source = Path(job.failed_path)
        target = self.config.paths.hot_folder / job.client_folder / job.file_name
        try:
            st = os.stat(source, follow_symlinks=False)
        except FileNotFoundError:
            raise Skip(f"its file is no longer in FAILED ({source})") from None
        if os.path.lexists(target):
            raise Skip(f"{target} already exists and is not overwritten: move it away and requeue again")
        if self.dry_run:
            return f"back to detected; {source} moved back to {target}"
        try:
            placed = self._move_back(job, source, Identity.of(st), target)
        except (OSError, NotRegular, Changed) as e:
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else f"the file {e}"
            raise Skip(f"cannot move {source} back to {target}: {reason}") from None
        if placed != target:
            return f"back to detected; {target} could not be created, so the job goes on from its copy {placed}"
        return f"back to detected; {source} moved back to {target}"

    def _move_back(self, job: Job, source: Path, identity: Identity, target: Path) -> Path:
        """Put the FAILED file back at ``target`` (see the module's docstring); returns where it is."""
        data = read_exact(str(source), identity, limit=identity.size)
        suffix = f".requeue-{job.id}"
        hidden = target.with_name(f".{fit_name(target.name, 1 + len(suffix))}{suffix}")   # fits in NAME_MAX
        write_atomic(hidden, data, self.folders, mtime_ns=identity.mtime_ns)
        self.folders.sync()
        with self.jobs.transaction():
            token = self.jobs.requeue_file(job.id, str(hidden), os.stat(hidden), HOLD,
                                           f"requeued after failing at validate: {source} moved back to {target}")
        if token is None:
            os.unlink(hidden)
            raise Skip("it is no longer failed (requeued by someone else meanwhile)")
        try:
            os.link(hidden, target)         # unlike rename, a link never clobbers a file dropped meanwhile
        except OSError as e:                # such a file, or no hard links here: go on from the hidden copy
            log.warning("job %d: cannot create %s (%s); the job goes on from %s", job.id, target, e.strerror, hidden)
            placed = hidden
        else:
            os.unlink(hidden)
            placed = target
        fsync_dir(target.parent)
        self._release(token, job, placed)
        remove_exact(str(source), identity)
        source.with_name(source.name + ".error.json").unlink(missing_ok=True)
        fsync_dir(source.parent)
        return placed

    def _release(self, token: str, job: Job, path: Path) -> None:
        try:
            with self.jobs.transaction():
                self.jobs.file_in_place(token, job.id, str(path), os.stat(path).st_ctime_ns)
        except LeaseLost:
            log.warning("job %d: putting its file back took longer than %gs; a router may have taken it "
                        "first", job.id, HOLD)
