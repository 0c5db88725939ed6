"""``detect.observer = "polling"``: the watcher's look at a hot folder that inotify cannot see (a
network mount), through watchdog's PollingObserver.

A module of its own so that only a watcher configured to poll imports watchdog; the default
watcher (pipeline/inotify.py) starts without it, sooner and with less CPU taken from the scanner
and the routers starting beside it.
"""

from __future__ import annotations

from pathlib import Path

from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent,
                             FileSystemEvent, FileSystemEventHandler)
from watchdog.observers.polling import PollingObserver

POLLING_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent]


class PollingWatch:
    """watchdog's PollingObserver, which lists the tree every ``poll_interval`` and compares it
    with the last listing. It has none of the pairing delay of watchdog's inotify reading (it
    reports a listing's differences at once), so it stays; it has the same few methods as
    FolderWatch. It watches no parent: the loop's own check of the hot folder comes as often as a
    poll would."""

    def __init__(self, interval: float, on_path):
        self.observer = PollingObserver(timeout=interval)
        self.handler = _Events(on_path)
        self.root_watch = None

    def start(self) -> None:
        self.observer.start()

    def is_alive(self) -> bool:
        return self.observer.is_alive()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

    def watch(self, root: Path) -> bool:
        self.observer.unschedule_all()
        self.root_watch = None
        if not root.is_dir():
            return False
        self.root_watch = self.observer.schedule(self.handler, str(root), recursive=True,
                                                 event_filter=POLLING_EVENTS)
        return True

    def watching(self) -> bool:
        return any(e.watch == self.root_watch and e.is_alive() for e in list(self.observer.emitters))


class _Events(FileSystemEventHandler):
    """Runs in watchdog's thread: only hands paths over to the watcher's loop."""

    def __init__(self, on_path):
        self.on_path = on_path

    def on_any_event(self, event: FileSystemEvent) -> None:
        path = event.dest_path if isinstance(event, (FileMovedEvent, DirMovedEvent)) else event.src_path
        if path:
            self.on_path(event.is_directory, str(path))
