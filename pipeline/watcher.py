"""The watcher: creates a job within milliseconds of a file being complete in the hot folder (docs/design.md#detection).

With inotify it reacts to close-after-write and moved-into-folder events only, never to creation,
so a file still being written is never taken. With ``detect.observer = "polling"`` (network
mounts, where inotify sees nothing) it takes a file once it has stayed unchanged for
``detect.min_file_age``. A new client folder is rescanned (files written into it before its watch
existed), and an inotify queue overflow or a dead reader triggers a full rescan. Rescans run in
their own thread so they never delay realtime events, and they are coalesced: however many
overflows a burst brings, one rescan is pending at a time (docs/design.md#detection).

Events are read by pipeline/inotify.py, our own inotify reading, which hands each path over as it
is read (watchdog's reading held every event behind a rename's unpaired half for 0.5 s); polling
is pipeline/polling.py's, watchdog's PollingObserver.

The hot folder itself may be deleted, or moved away, and created again while the watcher runs.
Its watch then hears nothing more. The watcher therefore also watches the hot folder's parent for
the hot folder's own name, and checks on every turn of its loop that the folder it watches is
still the one at the hot folder's path. When it is not, it logs one line, waits for the folder to
be there again, watches it afresh and rescans.
"""

from __future__ import annotations

import logging
import math
import queue
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import cli, store
from .config import Config
from .files import Identity
from .inotify import FolderWatch
from .jobs import Jobs
from .leadership import Leadership
from .program import Program
from .scanner import Scanner

if TYPE_CHECKING:
    from .polling import PollingWatch

log = logging.getLogger(__name__)

FULL_RESCAN = None   # the rescan queue's item for "the whole hot folder"
ROOT_EVENT = (True, None)   # the events queue's item for "something happened to the hot folder itself"


def _folder_id(path: Path) -> tuple[int, int] | None:
    """Which folder is at ``path`` now (device, inode); None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


class Watcher(Program):
    def __init__(self, config: Config, jobs: Jobs, stopper: cli.Stopper | None = None):
        self.config = config
        self.jobs = jobs
        self.db = jobs.db
        self.stopper = stopper or cli.Stopper()
        self.root = config.paths.hot_folder
        self.scanner = Scanner(config, jobs, self.stopper)
        self.hot = self.scanner.hot
        self.polling = config.detect.observer == "polling"
        self.events: queue.Queue = queue.Queue()
        self.rescans: queue.Queue = queue.Queue()
        self.overflow = threading.Event()
        self.full_rescan = threading.Event()                      # a full rescan is pending
        self.pending: dict[str, tuple[Identity, float]] = {}    # polling: path -> (identity, seen at)
        self.unsaved: dict = {}         # sightings whose jobs are not committed yet (a database error)
        self.leadership = Leadership(jobs.db, "watcher")
        self.leading = True
        self.ready = threading.Event()                            # set once the watch is in place
        self.observer: FolderWatch | PollingWatch | None = None
        self.root_id: tuple[int, int] | None = None   # the folder watched as the hot folder; None: none is

    def configure(self, config: Config) -> None:
        """The observer stays as it started (detect.observer and poll_interval need a restart)."""
        self.scanner.configure(config)
        self.config = config

    def _start_observer(self) -> None:
        if self.polling:
            from .polling import PollingWatch     # here: only a polling watcher loads watchdog
            self.observer = PollingWatch(self.config.detect.poll_interval, self._on_path)
        else:
            self.observer = FolderWatch(self._on_path, lambda: self.events.put(ROOT_EVENT), self.overflow.set)
        self.observer.start()
        self._watch()

    def _on_path(self, is_folder: bool, path: str) -> None:
        """Runs in the observer's thread: only hands the path over to the watcher's loop."""
        self.events.put((is_folder, path))

    def _watch(self) -> None:
        """(Re)place the watches: on the hot folder's parent, and on the hot folder when it is there."""
        # Which folder it is is read before the watch is placed: should the folder be replaced in
        # between, the two differ and the next check watches again, rather than never noticing.
        folder = _folder_id(self.root)
        self.root_id = folder if self.observer.watch(self.root) else None

    def _check_root(self) -> None:
        """Watch the hot folder again when the folder watched is no longer the one at its path."""
        if self.root_id is not None and _folder_id(self.root) == self.root_id and self.observer.watching():
            return
        was_watched = self.root_id is not None
        self._watch()
        if self.root_id is None:
            if was_watched:
                log.error("the hot folder %s is gone (deleted or moved away); waiting for it to be there again",
                          self.root)
            return
        # Whatever was written into it before its new watch existed is found by the rescan.
        log.warning("the hot folder %s was %s: watching it again and rescanning it", self.root,
                    "replaced" if was_watched else "created again")
        self._request_rescan()

    def _request_rescan(self) -> bool:
        """Ask for a full rescan. False when one is pending already (not yet listing): that one covers it."""
        if self.full_rescan.is_set():
            return False
        self.full_rescan.set()
        self.rescans.put(FULL_RESCAN)
        return True

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.once:
            return
        threading.Thread(target=self._rescan_loop, name="rescan", daemon=True).start()
        self._start_observer()
        log.info("watching %s (%s)", self.root, "polling" if self.polling else "inotify")
        self.ready.set()

    def step(self, now: float) -> float:
        """Take the events that came (waiting up to a second for them), and create their jobs.
        ``--once``: rescan the hot folder once, as a scan would, and exit."""
        if self.once:
            self.scanner.scan("rescan", "realtime")
            return math.inf
        if not self.observer.is_alive():
            log.error("the file watch stopped; starting it again and rescanning")
            self.observer.stop()
            self._start_observer()
            self._request_rescan()
        self._check_root()
        self.leading = self.leadership.held()
        if self.leadership.take_over():
            self._request_rescan()      # this host was standing by: what came meanwhile is found
        # Checked after the queue is drained, so that a burst of overflows asks once.
        if self.overflow.is_set():
            self.overflow.clear()
            if self._request_rescan():
                log.warning("inotify events were lost (its queue overflowed, or a folder could not be watched); "
                            "rescanning the hot folder")
        self._handle_events(timeout=0.25 if self.pending or self.unsaved else 1.0)
        return 0

    def finish(self) -> None:
        if self.observer is None:
            return
        self.rescans.put(False)
        self.observer.stop()

    def _handle_events(self, timeout: float) -> None:
        """Wait for events, then take everything queued and create its jobs in one transaction."""
        try:
            batch = [self.events.get(timeout=timeout)]
        except queue.Empty:
            batch = []
        while True:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        sightings = {}
        for item in batch:
            if item is ROOT_EVENT:
                continue                               # it only woke the loop: _check_root looks
            is_dir, path = item
            if is_dir:
                if Path(path).parent == self.root:
                    self.rescans.put(Path(path))       # a new client folder
                continue
            sighting = self.hot.sighting(path)
            if sighting is None:
                continue
            if self.polling:
                identity = Identity.of(sighting.st)
                if self.pending.get(path, (None,))[0] != identity:
                    self.pending[path] = (identity, time.monotonic())
            else:
                sightings[sighting.path] = sighting
        if self.polling:
            sightings.update(self._stable_pending())
        if self.leading:                # standing by, the events are the detecting host's to take
            self._create(list(sightings.values()), "realtime")

    def _stable_pending(self) -> dict:
        """Polling mode: the files that have stayed unchanged for min_file_age."""
        ready, now = {}, time.monotonic()
        for path, (identity, seen) in list(self.pending.items()):
            if now - seen < self.config.detect.min_file_age:
                continue
            del self.pending[path]
            sighting = self.hot.sighting(path)
            if sighting and Identity.of(sighting.st) == identity:
                ready[path] = sighting
            elif sighting:
                self.pending[path] = (Identity.of(sighting.st), now)
        return ready

    def _create(self, sightings: list, detected_by: str) -> None:
        """Create the jobs of ``sightings`` and of those a database error left unsaved before. On a
        new error they stay unsaved, and the loop's next step tries them again: no event is lost."""
        for s in sightings:
            self.unsaved[s.path] = s
        if not self.unsaved:
            return
        batch = list(self.unsaved.values())
        self.jobs.create(batch, detected_by)          # each new job is logged with its id
        self.unsaved.clear()

    def _rescan_loop(self) -> None:
        while True:
            item = self.rescans.get()
            if item is False:
                return
            try:
                if item is FULL_RESCAN:
                    if self.full_rescan.is_set():   # not already done by an earlier item's scan
                        # Pending until it lists: an overflow before that is covered by this scan;
                        # one after may have lost events in folders already listed, so it asks again.
                        self.scanner.scan("rescan", "periodic", on_listing=self.full_rescan.clear)
                else:
                    log.info("new client folder %s: scanning it for files written before its watch", item.name)
                    self.scanner.scan("rescan", "realtime", folders=[item])
            except Exception as e:
                if item is FULL_RESCAN:
                    self.full_rescan.clear()    # it did not happen: the next request must not be absorbed
                if reason := self.db.transient(e):
                    self.db.reopen_after(reason)
                    log.warning("%s (%s); the rescan is left to the scanner's next periodic scan",
                                store.SAYS[reason], self.db.describe(e))
                elif isinstance(e, store.DatabaseUnusable):     # the main loop meets it at its next write
                    log.warning("rescan not recorded: %s", e)
                else:
                    log.exception("rescan failed; the scanner's next periodic scan will cover it")


def main(argv: list[str] | None = None) -> int:
    return cli.serve("watcher", "Watch the hot folder and create a job as soon as a file is complete.",
                     lambda ctx: Watcher(ctx.config, Jobs(ctx.db, ctx.actor), ctx.stopper), argv)

if __name__ == "__main__":
    raise SystemExit(main())
