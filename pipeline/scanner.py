"""The scanner: a startup scan (crash recovery), then periodic scans as a safety net (docs/design.md#detection).

A scan takes only files whose size and mtime stayed unchanged for ``detect.min_file_age``. On a
local disk a file whose mtime and ctime are both older than that has been unchanged that long (any
write moves mtime, any change moves ctime, and nobody can set ctime back), so it is taken at once:
a backlog found after downtime starts routing without delay. Any other file, and every file when
the hot folder is a network mount (``observer = "polling"``, where the file server's clock stamps
the times), is looked at twice, ``min_file_age`` apart; a file still being written changes in
between and is left for the next scan (or for the watcher's close-after-write event).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from . import cli, store
from .config import Config
from .hotfolder import HotFolder, Sighting
from .files import Identity
from .jobs import Jobs
from .leadership import RENEW, Leadership
from .program import Program

log = logging.getLogger(__name__)

CREATE_CHUNK = 100   # jobs per insert transaction (a few ms: waiting routers get their turn between two)
FIRST_CHUNK = 20     # the first transaction of a scan: routers start on these while it goes on

_SQL_SCAN_START = "INSERT INTO scans (kind, actor, started_at) VALUES (?, ?, ?) RETURNING id"
_SQL_SCAN_END = """
UPDATE scans SET finished_at = ?, files_seen = ?, jobs_created = ?, slow = ?, timed_out = ? WHERE id = ?"""


def scan_started(db: store.Engine, kind: str, actor: str, now: float) -> int:
    """A scan's row in ``scans`` (the report's detection section, bin/status's last scans)."""
    with db.write():
        return db.run_sql(_SQL_SCAN_START, (kind, actor, now)).fetchone()[0]


def scan_finished(db: store.Engine, scan_id: int, now: float, files_seen: int,
                  jobs_created: int, slow: bool, timed_out: bool) -> None:
    with db.write():
        db.run_sql(_SQL_SCAN_END, (now, files_seen, jobs_created, int(slow), int(timed_out), scan_id))


class Scanner(Program):
    def __init__(self, config: Config, jobs: Jobs, stopper: cli.Stopper | None = None):
        self.config = config
        self.jobs = jobs
        self.stopper = stopper or cli.Stopper()
        self.hot = HotFolder(config.paths.hot_folder, config.detect.done_suffix)
        self.db = jobs.db
        self.kind = "startup"
        self.leadership = Leadership(jobs.db, "scanner")

    def configure(self, config: Config) -> None:
        """Intervals, ages and the done-marker suffix are read where they are used."""
        self.config = config
        self.hot.done_suffix = config.detect.done_suffix

    def scan(self, kind: str, detected_by: str, folders: list[Path] | None = None,
             on_listing: Callable[[], None] | None = None) -> int:
        """Scan the hot folder (or some client folders); returns the number of jobs created.

        ``on_listing`` is called just before the folders are listed: whatever happened before that
        call (events lost to an inotify overflow, say) is seen by this scan.
        """
        cfg = self.config.detect
        clock = self.jobs.clock
        started, t0 = clock(), time.monotonic()
        scan_id = scan_started(self.jobs.db, kind, self.jobs.actor, started)
        if on_listing:
            on_listing()
        first, timed_out = self.hot.list(folders, deadline=t0 + cfg.scan_timeout)
        settled, unsure = self._split_by_age(first)
        created = self._create(settled, detected_by)
        if unsure:
            self.stopper.wait(cfg.min_file_age - (time.monotonic() - t0))
            again = [self.hot.restat(s) for s in unsure]
            created += self._create([a for s, a in zip(unsure, again)
                                     if a and Identity.of(a.st) == Identity.of(s.st)], detected_by)
        seconds = time.monotonic() - t0
        slow = seconds > cfg.slow_scan
        scan_finished(self.jobs.db, scan_id, clock(), len(first), created, slow, timed_out)
        level = logging.WARNING if slow or timed_out else logging.INFO
        log.log(level, "%s scan: %d files seen, %d new jobs, %.2fs%s%s", kind, len(first), created, seconds,
                " (slow)" if slow else "", " (timed out: the rest waits for the next scan)" if timed_out else "")
        return created

    def _split_by_age(self, sightings: list[Sighting]) -> tuple[list[Sighting], list[Sighting]]:
        """(unchanged for min_file_age by their own times, to be looked at again)."""
        if self.config.detect.observer != "inotify":
            return [], sightings
        limit = (time.time() - self.config.detect.min_file_age) * 1e9
        settled = [s for s in sightings if max(s.st.st_mtime_ns, s.st.st_ctime_ns) <= limit]
        return settled, [s for s in sightings if max(s.st.st_mtime_ns, s.st.st_ctime_ns) > limit]

    def _create(self, sightings: list[Sighting], detected_by: str) -> int:
        """Jobs for the sightings, oldest drop first, in chunks so routers start on the first at once."""
        sightings = sorted(sightings, key=lambda s: s.st.st_mtime_ns)
        edges = [0] + list(range(FIRST_CHUNK, len(sightings), CREATE_CHUNK)) + [len(sightings)]
        created = 0
        for start, end in zip(edges, edges[1:]):
            if start:
                self.db.give_way()      # a router waiting to claim the first ones gets its turn
            created += len(self.jobs.create(sightings[start:end], detected_by))
        return created

    def step(self, now: float) -> float:
        """The startup scan, then one scan every ``detect.scan_interval`` seconds (a scan that took
        longer still leaves a moment before the next; ``--once`` ends after one), while this host
        detects (leadership.py)."""
        if not self.leadership.held():
            return RENEW                # another host detects: look again at the next renewal
        if self.leadership.take_over():
            self.kind = "rescan"        # this host was standing by: scan all it did not detect
        started = time.monotonic()
        self.scan(self.kind, "periodic" if self.kind == "rescan" else self.kind)
        self.kind = "periodic"
        return max(started + self.config.detect.scan_interval - time.monotonic(), 0.1)


def main(argv: list[str] | None = None) -> int:
    return cli.serve("scanner", "Scan the hot folder at start and periodically; create a job per new file.",
                     lambda ctx: Scanner(ctx.config, Jobs(ctx.db, ctx.actor), ctx.stopper), argv)

if __name__ == "__main__":
    raise SystemExit(main())
