"""The watcher's inotify reading: the hot folder and its client folders, each event's path handed over as it is read (docs/design.md#detection).

Our own reading, through ctypes on libc, rather than a library's, because the watcher needs no
pairing of a rename's two halves: it wants the paths of files closed after writing
(IN_CLOSE_WRITE) and moved in (IN_MOVED_TO), and of folders created or moved in. watchdog pairs
every IN_MOVED_FROM with its IN_MOVED_TO in a queue that holds the IN_MOVED_FROM up to 0.5 s, and
every event read after it waits behind it: a file moved out of the hot folder (whose pair never
comes), or a drop's rename read in two halves, held all detection back that long.

Watches are placed on the hot folder and on each folder directly in it, the only places a job
file can be: files further down never count, so neither do their events. A folder created or
moved into the hot folder is watched as its event is read; files that landed in it before are
the watcher's to find by a rescan. A folder moved away loses its watch (the watch would follow it
out, and its events would carry a wrong path). Symbolic links are never followed. A watch on the
hot folder's parent reports the hot folder itself being created, deleted or moved, and when the
hot folder's own watch goes (deleted, moved away, unmounted) every watch of the tree is dropped
and ``watching()`` says so, for the watcher to watch the new one.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import threading
from pathlib import Path
from typing import Callable, NamedTuple

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

# IN_MOVED_FROM only for folders moved away (their watches go), but the kernel cannot be asked for
# a folder's events alone.
FOLDER_EVENTS = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF
                 | IN_ONLYDIR | IN_DONT_FOLLOW)
PARENT_EVENTS = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ONLYDIR | IN_DONT_FOLLOW
_HEADER = struct.Struct("iIII")         # struct inotify_event: wd, mask, cookie, len; then len bytes of name
_READ_SIZE = 64 * 1024


class Event(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: bytes             # empty for an event on the watched folder itself


def parse(buffer: bytes) -> list[Event]:
    """The events of one read of an inotify descriptor. A name is padded with NULs to an aligned
    length, which the kernel counts in ``len``."""
    events, offset = [], 0
    while offset + _HEADER.size <= len(buffer):
        wd, mask, cookie, length = _HEADER.unpack_from(buffer, offset)
        start = offset + _HEADER.size
        events.append(Event(wd, mask, cookie, buffer[start:start + length].split(b"\0", 1)[0]))
        offset = start + length
    return events


class Inotify:
    """One inotify descriptor, non-blocking and closed on exec."""

    def __init__(self):
        # libc from the process's own symbols (Python is linked with it): ctypes.util.find_library
        # would run ldconfig in a child process to find its file.
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = self._check(self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")

    def _check(self, result: int, what: str) -> int:
        if result < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what}: {os.strerror(error)}")
        return result

    def add_watch(self, path: str, mask: int) -> int:
        return self._check(self.libc.inotify_add_watch(self.fd, os.fsencode(path), mask), f"inotify_add_watch {path}")

    def rm_watch(self, wd: int) -> None:
        self.libc.inotify_rm_watch(self.fd, wd)     # EINVAL when the kernel dropped it already: as wanted

    def read(self) -> bytes:
        """What is queued now; b"" when nothing is."""
        try:
            return os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.fd)


class FolderWatch:
    """Watches a hot folder and the folders in it, in a thread of its own, calling

    - ``on_path(is_folder, path)`` for a file closed after writing or moved in, and for a folder
      created or moved in (the hot folder's own client folders and files in them; anything in
      the hot folder's root too, as the watcher decides what counts);
    - ``on_root()`` when something happened to the hot folder itself (in its parent, or its watch
      went);
    - ``on_overflow()`` when the kernel's queue overflowed, or a folder could not be watched:
      events were lost.

    Each call is made as its event is read: nothing is held back to be paired or batched.
    """

    def __init__(self, on_path: Callable[[bool, str], None], on_root: Callable[[], None],
                 on_overflow: Callable[[], None]):
        self.on_path, self.on_root, self.on_overflow = on_path, on_root, on_overflow
        self.inotify = Inotify()
        self.lock = threading.Lock()        # the watches change in the reader's thread and the caller's
        self.folders: dict[int, str] = {}   # wd -> the folder's path
        self.root_wd: int | None = None
        self.parent: tuple[int, bytes] | None = None    # the parent's wd, the hot folder's name in it
        self._stop_r, self._stop_w = os.pipe()
        self.thread = threading.Thread(target=self._read_loop, name="inotify", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self.thread.join(timeout=5)
        for fd in (self.inotify.fd, self._stop_r, self._stop_w):
            os.close(fd)

    def watch(self, root: Path) -> bool:
        """Drop every watch, then watch ``root``'s parent for ``root`` itself, and ``root`` and the
        folders in it. False when ``root`` is not a folder (not there, or a symbolic link)."""
        with self.lock:
            for wd in [*self.folders, *([self.parent[0]] if self.parent else [])]:
                self.inotify.rm_watch(wd)
            self.folders.clear()
            self.root_wd = self.parent = None
            wd = self._add(str(root.parent), PARENT_EVENTS)
            if wd is not None:
                self.parent = (wd, os.fsencode(root.name))
            self.root_wd = self._add(str(root), FOLDER_EVENTS)
            if self.root_wd is None:
                return False
            self.folders[self.root_wd] = str(root)
            try:
                entries = list(os.scandir(root))
            except OSError:
                entries = []
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    self._add_folder(entry.path)
            return True

    def watching(self) -> bool:
        """True while the hot folder's own watch stands and is read."""
        return self.root_wd is not None and self.thread.is_alive()

    def _add(self, path: str, mask: int) -> int | None:
        try:
            return self.inotify.add_watch(path, mask)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None             # gone already, or not a folder: nothing to watch
            log.error("cannot watch %s (%s): its events are lost; rescanning", path, e.strerror)
            self.on_overflow()
            return None

    def _add_folder(self, path: str) -> None:
        wd = self._add(path, FOLDER_EVENTS)
        if wd is not None:
            self.folders[wd] = path

    def _drop_folder(self, path: str) -> None:
        for wd, folder in list(self.folders.items()):
            if folder == path and wd != self.root_wd:
                del self.folders[wd]
                self.inotify.rm_watch(wd)

    def _drop_tree(self) -> None:
        """The hot folder's watch went: its paths no longer say where its events happen."""
        for wd in self.folders:
            self.inotify.rm_watch(wd)
        self.folders.clear()
        self.root_wd = None
        self.on_root()

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self.inotify.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_r in ready:
                    return
                while data := self.inotify.read():
                    self.dispatch(parse(data))
        except Exception:       # the watcher sees the thread gone, and starts a new watch with a rescan
            log.exception("reading inotify events failed")

    def dispatch(self, events: list[Event]) -> None:
        """Act on events read, in the order the kernel queued them."""
        with self.lock:
            for event in events:
                self._dispatch(event)

    def _dispatch(self, event: Event) -> None:
        wd, mask, _, name = event
        if mask & IN_Q_OVERFLOW:
            self.on_overflow()
            return
        if self.parent and wd == self.parent[0]:
            if name == self.parent[1]:
                self.on_root()
            if mask & IN_IGNORED:
                self.parent = None
            return
        folder = self.folders.get(wd)
        if folder is None:
            return                      # a watch dropped since the kernel queued the event
        if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
            if wd == self.root_wd:
                self._drop_tree()
            elif mask & IN_IGNORED:
                del self.folders[wd]
            return
        path = os.path.join(folder, os.fsdecode(name))
        if not mask & IN_ISDIR:
            if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                self.on_path(False, path)
        elif wd != self.root_wd:
            return                      # a folder below a client folder: nothing in it counts
        elif mask & IN_MOVED_FROM:
            self._drop_folder(path)
        elif mask & (IN_CREATE | IN_MOVED_TO):
            self._add_folder(path)
            self.on_path(True, path)
