"""What counts as a job file in the hot folder, shared by the scanner and the watcher (docs/design.md#detection).

Eligible: a regular file ending in ``.json`` (any case) directly inside a client subfolder; with
``detect.done_suffix``, only once its done marker stands beside it.
Ignored: dotfiles, ``~$*``, ``*~``, temporary and partial downloads (they do not end in .json),
other extensions, files in the hot folder's root (warned once), symlinks (never followed, warned
once), FIFOs, devices and folders, and names that are not valid UTF-8 (warned once: they cannot be
recorded, so they stay where they are until someone renames them).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .convert import is_utf8
from .files import Identity

log = logging.getLogger(__name__)


class FileStat(NamedTuple):
    """What a sighting keeps of a file's ``os.stat_result``: five numbers instead of its twenty
    fields, each an object of its own (a startup scan of 50,000 files holds 50,000 of these)."""
    st_ino: int
    st_dev: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStat":
        return cls(st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A file seen in the hot folder by a scan or an event, ready to become a job. Slots, and the
    name taken from the path: a startup scan holds one for every file of the backlog."""
    path: str
    client_folder: str
    st: os.stat_result | FileStat

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)


def eligible_name(name: str, done_suffix: str = "") -> bool:
    """A job file's name; with ``done_suffix``, never a done marker (``x.json.done``, or
    ``x.json.done.json`` when the suffix itself ends in .json)."""
    if name.startswith((".", "~$")) or name.endswith("~"):
        return False
    return name.lower().endswith(".json") and marked(name, done_suffix) is None


def marked(name: str, done_suffix: str) -> str | None:
    """The job file a done marker of this name stands for (``x.json`` for ``x.json.done``); None
    when the name is not a marker."""
    if not done_suffix or not name.endswith(done_suffix) or len(name) == len(done_suffix):
        return None
    job_file = name[:-len(done_suffix)]
    return job_file if eligible_name(job_file, done_suffix) else None


class HotFolder:
    """The hot folder as detection sees it. Remembers what it has warned about, to warn once."""

    def __init__(self, root: Path, done_suffix: str = ""):
        self.root = root
        # With a suffix, a job file is taken only once NAME<suffix> stands beside it (a sighting
        # of the marker is one of its file), and the marker is never a job.
        self.done_suffix = done_suffix
        self._warned: set[str] = set()

    def _warn_once(self, path: str, message: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            log.warning(message, path)

    def client_folders(self) -> list[Path]:
        """The client subfolders; files in the root are warned about once; symlinks are not followed."""
        folders = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            self.root.mkdir(parents=True, exist_ok=True)
            return []
        for entry in entries:
            if entry.is_symlink():
                self._warn_once(entry.path, "ignoring symbolic link %s (links are not followed)")
            elif entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("."):
                    folders.append(Path(entry.path))
            elif not entry.name.startswith("."):
                self._warn_once(entry.path, "ignoring %s: files belong in a client subfolder, not the hot folder's root")
        return sorted(folders)

    def list(self, folders: list[Path] | None = None, deadline: float | None = None) -> tuple[list[Sighting], bool]:
        """Sightings of every eligible file; True as second value when ``deadline`` cut the listing short."""
        sightings = []
        for folder in self.client_folders() if folders is None else folders:
            if deadline is not None and time.monotonic() > deadline:
                return sightings, True
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as e:
                log.warning("cannot list %s: %s", folder, e.strerror)
                continue
            client = folder.name            # one string for the folder's files, not one each
            for entry in entries:
                sighting = self._sighting(entry.path, client, entry.name)
                if sighting:
                    sightings.append(sighting)
                elif self.done_suffix:
                    self._lone_marker(entry.path, entry.name)
        return sightings, False

    def _lone_marker(self, path: str, name: str) -> None:
        job_file = marked(name, self.done_suffix)
        if job_file is not None and not os.path.lexists(path[:-len(self.done_suffix)]):
            self._warn_once(path, "done marker %s has no job file beside it; left as it is")

    def sighting(self, path: str) -> Sighting | None:
        """A sighting for one path reported by an event, or None when it is not a job file."""
        path = os.path.normpath(path)
        folder, name = os.path.split(path)
        parent, client = os.path.split(folder)
        if parent != str(self.root):
            if folder == str(self.root) and eligible_name(name):
                self._warn_once(path, "ignoring %s: files belong in a client subfolder, not the hot folder's root")
            return None
        job_file = marked(name, self.done_suffix)
        if job_file is not None:                # the marker came: its job file may be taken now
            path, name = os.path.join(folder, job_file), job_file
        return self._sighting(path, client, name)

    def _sighting(self, path: str, client: str, name: str) -> Sighting | None:
        if not eligible_name(name, self.done_suffix) or client.startswith("."):
            return None
        if self.done_suffix and not os.path.lexists(path + self.done_suffix):
            return None                         # not done yet: its marker is not there
        if not (is_utf8(client) and is_utf8(name)):
            # Such a name cannot be stored, logged or put into an email as it is: it stays where it
            # is, and a person renames it.
            self._warn_once(os.fsencode(path).decode("utf-8", "backslashreplace"),
                            "ignoring %s: its name is not valid UTF-8; rename the file to have it processed")
            return None
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ESTALE:         # NFS: the file was removed on another host
                return None
            raise
        if stat.S_ISLNK(st.st_mode):
            self._warn_once(path, "ignoring symbolic link %s (links are not followed)")
            return None
        if not stat.S_ISREG(st.st_mode):
            self._warn_once(path, "ignoring %s: not a regular file")
            return None
        return Sighting(path=path, client_folder=client, st=FileStat.of(st))

    def restat(self, sighting: Sighting) -> Sighting | None:
        """The second look of a scan, through open and fstat: on NFS an open revalidates the
        file's attributes with the server, where a stat may answer from the client's cache."""
        again = self._sighting(sighting.path, sighting.client_folder, sighting.file_name)
        if again is None:
            return None
        try:
            fd = os.open(again.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:             # gone (ENOENT, ESTALE), replaced by a link (ELOOP), refused
            return None
        try:
            st = os.fstat(fd)
        except OSError:             # removed meanwhile: a FUSE or NFS view of a share answers ENOENT, ESTALE
            return None
        finally:
            os.close(fd)
        return again if stat.S_ISREG(st.st_mode) and Identity.of(st) == Identity.of(again.st) else None
