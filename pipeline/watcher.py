"""The watcher: creates a job within milliseconds of a file being complete in the hot folder (SPEC §4).

With inotify it reacts to close-after-write and moved-into-folder events only, never to creation,
so a file still being written is never taken. With ``detect.observer = "polling"`` (network
mounts, where inotify sees nothing) it takes a file once it has stayed unchanged for
``detect.min_file_age``. A new client folder is rescanned (files written into it before its watch
existed), and an inotify queue overflow or a dead observer triggers a full rescan. Rescans run in
their own thread so they never delay realtime events.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from . import cli
from .activity import Heartbeat
from .config import Config
from .files import Identity
from .jobs import Jobs
from .scanner import Scanner

log = logging.getLogger(__name__)

INOTIFY_EVENTS = [FileClosedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]
POLLING_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]
POLL_SECONDS = 1.0
FULL_RESCAN = None   # the rescan queue's item for "the whole hot folder"


class _Events(FileSystemEventHandler):
    """Runs in watchdog's thread: only hands paths over to the watcher's loop."""

    def __init__(self, out: queue.Queue):
        self.out = out

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = event.dest_path if isinstance(event, (FileMovedEvent, DirMovedEvent)) else event.src_path
        if path:
            self.out.put((event.is_directory, str(path)))


class _OverflowAlarm(logging.Handler):
    """watchdog deals with an inotify queue overflow internally and only logs it; events were lost,
    so the watcher needs to know in order to rescan."""

    def __init__(self, alarm: threading.Event):
        super().__init__(logging.WARNING)
        self.alarm = alarm

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.alarm.set()


class Watcher:
    def __init__(self, config: Config, jobs: Jobs, stopper: cli.Stopper | None = None):
        self.config = config
        self.jobs = jobs
        self.stopper = stopper or cli.Stopper()
        self.root = config.paths.hot_folder
        self.scanner = Scanner(config, jobs, self.stopper)
        self.hot = self.scanner.hot
        self.polling = config.detect.observer == "polling"
        self.events: queue.Queue = queue.Queue()
        self.rescans: queue.Queue = queue.Queue()
        self.overflow = threading.Event()
        self.pending: dict[str, tuple[Identity, float]] = {}    # polling: path -> (identity, seen at)
        self.ready = threading.Event()                            # set once the watch is in place

    def _start_observer(self):
        observer = PollingObserver(timeout=POLL_SECONDS) if self.polling else InotifyObserver(generate_full_events=True)
        observer.schedule(_Events(self.events), str(self.root), recursive=True,
                          event_filter=POLLING_EVENTS if self.polling else INOTIFY_EVENTS)
        observer.start()
        return observer

    def run(self, once: bool = False, heartbeat: Heartbeat | None = None) -> None:
        """Watch until stopped. ``once``: rescan the hot folder once, as a scan would, and exit."""
        self.root.mkdir(parents=True, exist_ok=True)
        if once:
            try:
                self.scanner.scan("rescan", "realtime")
            except Exception as e:
                if not cli.is_locked(e):
                    raise
                log.warning("database busy past the timeout (%s); nothing detected this time", e)
            return
        alarm = _OverflowAlarm(self.overflow)
        logging.getLogger("watchdog").addHandler(alarm)
        rescanner = threading.Thread(target=self._rescan_loop, name="rescan", daemon=True)
        rescanner.start()
        observer = self._start_observer()
        log.info("watching %s (%s)", self.root, "polling" if self.polling else "inotify")
        self.ready.set()
        try:
            while not self.stopper.requested:
                if heartbeat:
                    heartbeat.beat()
                if not observer.is_alive():
                    log.error("the file watch stopped; starting it again and rescanning")
                    observer = self._start_observer()
                    self.rescans.put(FULL_RESCAN)
                if self.overflow.is_set():
                    self.overflow.clear()
                    log.warning("inotify queue overflowed: events were lost; rescanning the hot folder")
                    self.rescans.put(FULL_RESCAN)
                self._handle_events(timeout=0.25 if self.pending else 1.0)
        finally:
            logging.getLogger("watchdog").removeHandler(alarm)
            self.rescans.put(False)
            observer.stop()
            observer.join(timeout=5)

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
        for is_dir, path in batch:
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
        if not sightings:
            return
        while True:
            try:
                created = self.jobs.create(sightings, detected_by)
                break
            except Exception as e:
                if not cli.is_locked(e) or self.stopper.requested:
                    raise
                log.warning("database busy past the timeout (%s); trying again", e)
                self.stopper.wait(0.5)
        if created:
            log.info("%d new job%s: %s", len(created), "s" * (len(created) != 1),
                     ", ".join(f"{s.client_folder}/{s.file_name}" for s in sightings[:5])
                     + (" ..." if len(sightings) > 5 else ""))

    def _rescan_loop(self) -> None:
        while True:
            item = self.rescans.get()
            if item is False:
                return
            try:
                if item is FULL_RESCAN:
                    self.scanner.scan("rescan", "periodic")
                else:
                    log.info("new client folder %s: scanning it for files written before its watch", item.name)
                    self.scanner.scan("rescan", "realtime", folders=[item])
            except Exception as e:
                if cli.is_locked(e):
                    log.warning("database busy past the timeout (%s); the rescan is left to the scanner's "
                                "next periodic scan", e)
                else:
                    log.exception("rescan failed; the scanner's next periodic scan will cover it")


def main(argv: list[str] | None = None) -> int:
    return cli.serve("watcher", "Watch the hot folder and create a job as soon as a file is complete.",
                     lambda ctx: Watcher(ctx.config, Jobs(ctx.db, ctx.actor), ctx.stopper), argv)

if __name__ == "__main__":
    raise SystemExit(main())
