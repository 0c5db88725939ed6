"""File operations that are atomic, durable, and never touch a file that is not the one meant.

* A copy is written to a hidden temporary name in the target folder, fsynced, then renamed; the
  folder is fsynced once per batch (``Folders.sync``). A half-written file never appears.
* A file is identified by (device, inode, size, mtime): removing or moving an original checks
  that it is still the exact file the job took (docs/design.md#detection).
* Symbolic links are never followed: sources are opened with O_NOFOLLOW.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


_TEMP_SUFFIX = re.compile(r"\.[0-9a-f]{12}\.tmp")
_TEMP_ROOM = len("." + "." + "0123456789ab" + ".tmp")   # what a temporary adds to the name it copies
NAME_MAX = 255   # bytes in one file name on Linux filesystems (ext4, xfs, tmpfs, NFS, SMB)


def fit_name(name: str, room: int = 0) -> str:
    """``name`` itself when it and ``room`` more bytes fit in one file name; else a shortened name.

    A name near the 255-byte limit is legal in the hot folder, but the names made from it (a
    temporary, the FAILED name with its time stamp, the ``.error.json`` beside it) would not be.
    The shortened name keeps the start of the name and its extension, with ``~`` and a hash of
    the whole name between them, so two long names that differ only near their end stay apart.
    """
    raw = os.fsencode(name)
    if len(raw) + room <= NAME_MAX:
        return name
    stem, ext = os.path.splitext(name)
    ext = ext if len(os.fsencode(ext)) <= 16 else ""
    tag = "~" + hashlib.sha256(raw).hexdigest()[:8]
    keep = NAME_MAX - room - len(tag) - len(os.fsencode(ext))
    head = os.fsencode(stem)[:max(keep, 1)].decode("utf-8", "ignore")   # never half a character
    return head + tag + ext


class Identity(NamedTuple):
    """Which file this is: inode, size and mtime. Not the device: on a network share ``st_dev``
    differs from host to host and from mount to mount for the same file (docs/design.md#several-hosts), while these
    three do not; within one hot folder an inode number is one file."""
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Identity":
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


class NotRegular(Exception):
    """The path is a symlink, FIFO, device or folder, not a regular file."""


class Changed(Exception):
    """The file at the path is no longer the one the job took."""


@dataclass(frozen=True)
class Modes:
    file: int = 0o664
    dir: int = 0o775


def read_exact(path: str, identity: Identity, limit: int) -> bytes | None:
    """Read the file at ``path`` if it is still ``identity``; None when it is larger than ``limit``.

    Raises FileNotFoundError, NotRegular (symlink, FIFO, ...) or Changed.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not hang; O_NOFOLLOW: a symlink fails with ELOOP.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegular("is a symbolic link (not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular("is not a regular file")
        if Identity.of(st) != identity:
            raise Changed(_describe_change(identity, Identity.of(st)))
        if st.st_size > limit:
            return None
        chunks, remaining = [], st.st_size
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        # A writer still appending between fstat and read shows up as a changed identity.
        if Identity.of(os.fstat(fd)) != identity or len(data) != identity.size:
            raise Changed("was written to while being read")
        return data
    finally:
        os.close(fd)


def _describe_change(old: Identity, new: Identity) -> str:
    if old.inode != new.inode:
        return "was replaced by another file of the same name"
    return f"was modified after it was detected (size {old.size} -> {new.size} bytes)"


class Folders:
    """Creates target folders (with their mode) and remembers which to fsync at the end of a batch."""

    def __init__(self, modes: Modes, create: bool = True):
        self.modes = modes
        self.create = create
        self._dirty: set[str] = set()
        self._known: set[str] = set()

    @classmethod
    def made_as(cls, router_config, create: bool = True) -> "Folders":
        """Folders made with the modes of ``[router]`` (``file_mode``, ``dir_mode``), as every
        program that writes into the pipeline's places makes them."""
        return cls(Modes(file=router_config.file_mode, dir=router_config.dir_mode), create)

    def ensure(self, folder: Path, below: Path | None = None) -> None:
        """Make sure ``folder`` exists; with ``create`` off, a missing folder is an error (unmounted share).

        With ``below``, the levels of ``folder`` under it (named by a job's values) must be real
        folders where they exist: a symlink is not followed, and neither is made a folder of;
        raises NotRegular.
        """
        key = str(folder)
        if key in self._known:
            return
        if below is not None:
            _real_folders_below(below, folder)
        if not folder.is_dir():
            if not self.create:
                raise FileNotFoundError(errno.ENOENT, "destination folder is missing (share not mounted?)", key)
            self._makedirs(folder)
        self._known.add(key)

    def _makedirs(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, self.modes.dir)
            except FileExistsError:
                continue
            os.chmod(d, self.modes.dir)  # mkdir's mode is filtered by the umask
            self._dirty.add(str(d.parent))

    def forget(self, folder: Path) -> None:
        """Check the folder again next time (after an error it may have gone away)."""
        self._known.discard(str(folder))

    def touched(self, folder: Path | str) -> None:
        self._dirty.add(str(folder))

    def sync(self) -> None:
        """fsync every folder whose entries changed since the last sync: one fsync per folder per batch."""
        for error in self.sync_each().values():
            raise error

    def sync_each(self, map=map) -> dict[str, OSError]:
        """Like ``sync``, but every folder is tried: returns the folders that failed, with why.
        ``map`` may be a thread pool's, to sync the folders at the same time."""
        return sync_together([self], map)


def sync_together(groups: list[Folders], map=map) -> dict[str, OSError]:
    """``Folders.sync_each`` of several groups as one: with a thread pool's ``map`` the folders
    of all of them are synced at the same time, rather than one group's after the other's."""
    dirty = {}
    for group in groups:
        for folder in group._dirty:
            dirty.setdefault(folder, []).append(group)
        group._dirty = set()
    failed = {}
    for folder, error in zip(sorted(dirty), map(_fsync_dir_error, sorted(dirty))):
        if error is not None:
            failed[folder] = error
            for group in dirty[folder]:
                group._known.discard(folder)
    return failed


def _real_folders_below(base: Path, folder: Path) -> None:
    """Raises NotRegular when a level of ``folder`` below ``base`` is a symlink or not a folder.
    Each level is looked at: a symlink higher up would be followed by a look at a deeper one."""
    level = folder
    while base in level.parents:
        try:
            st = os.lstat(level)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise NotRegular(f"{level} is a symbolic link (not followed)")
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise NotRegular(f"{level} is not a folder")
        level = level.parent


def _fsync_dir_error(folder: str) -> OSError | None:
    try:
        fsync_dir(folder)
    except OSError as e:
        return e
    return None


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes, folders: Folders, *, mtime_ns: int | None = None,
                 replace: bool = True) -> bool:
    """Write ``data`` to ``target`` durably; the folder fsync is left to ``folders.sync()``.

    Returns False, writing nothing, when ``replace`` is off and ``target`` already exists.
    The file keeps ``mtime_ns`` when given, so a copy carries its original's time.
    """
    return publish(stage(target, data, folders, mtime_ns=mtime_ns), target, folders, replace=replace)


def stage(target: Path, data: bytes, folders: Folders, *, mtime_ns: int | None = None) -> Path:
    """The slow half of ``write_atomic``: write ``data`` and fsync it under a temporary name
    beside ``target``, and return that name for ``publish`` (or ``discard``)."""
    folders.ensure(target.parent)
    tmp = target.parent / temporary_name(target.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, folders.modes.file)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, folders.modes.file)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        discard(tmp)
        raise
    return tmp


def publish(tmp: Path, target: Path, folders: Folders, *, replace: bool = True) -> bool:
    """Give the temporary ``stage`` wrote its name ``target`` at once (rename or link).

    Returns False, removing the temporary, when ``replace`` is off and ``target`` already exists.
    """
    try:
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # unlike rename, link never clobbers an existing name
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
    except BaseException:
        discard(tmp)
        raise
    folders.touched(target.parent)
    return True


def temporary_name(name: str) -> str:
    """A hidden name, unique to this write, to copy ``name`` under before it is renamed to it
    (also on a remote destination, docs/design.md#remote-destinations)."""
    return f".{fit_name(name, _TEMP_ROOM)}.{uuid.uuid4().hex[:12]}.tmp"


def is_temporary_of(candidate: str, name: str) -> bool:
    """Whether ``candidate`` is a name ``temporary_name(name)`` gives."""
    prefix = "." + fit_name(name, _TEMP_ROOM)
    return candidate.startswith(prefix) and _TEMP_SUFFIX.fullmatch(candidate[len(prefix):]) is not None


def discard(tmp: Path) -> None:
    """Remove a temporary that will not be published (or what is left of one)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def remove_stale_temporaries(folder: Path, name: str) -> int:
    """Remove temporaries of ``name`` that a writer killed mid-copy left in ``folder``.

    Called only for a job resumed after its previous owner died, for that job's own file name.
    """
    removed = 0
    try:
        candidates = [p for p in folder.glob(f".{glob_escape(fit_name(name, _TEMP_ROOM))}.*.tmp")]
    except OSError:
        return 0
    for path in candidates:
        if is_temporary_of(path.name, name):
            discard(path)
            removed += 1
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def remove_exact(path: str, identity: Identity) -> bool:
    """Remove ``path`` if it is still ``identity``. Already gone is fine (the step is idempotent).

    Returns False when a different file now stands at ``path``: it is left alone.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if Identity.of(st) != identity:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return True


def remove_copy(path: Path, root: Path, size: int, mtime_ns: int) -> str:
    """Remove the copy the pipeline made at ``path`` below ``root`` of a file of ``size`` bytes and
    mtime ``mtime_ns`` (its copies keep both). Returns "removed"; "gone" when nothing is there (an
    earlier run removed it); or "left" when what is there is not that copy, or is reached through
    a symbolic link below ``root`` or lies outside it: such a file is never touched. Raises OSError.
    """
    if root not in path.parents:
        return "left"
    try:
        _real_folders_below(root, path.parent)
    except NotRegular:
        return "left"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "gone"
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
        return "left"
    return "removed" if remove_exact(str(path), Identity.of(st)) else "left"


def move_exact(src: str, dst: Path, identity: Identity, folders: Folders) -> None:
    """Move the exact file ``identity`` from ``src`` to ``dst`` without clobbering anything.

    A hard link then an unlink: the link cannot replace an existing ``dst``, and what was linked is
    checked to be the expected inode before the original name is removed. Across filesystems the
    content is copied durably instead. Raises Changed when ``src`` is another file now.
    """
    folders.ensure(dst.parent)
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        # An earlier attempt linked it and then could not remove the original: finish that one.
        if Identity.of(os.lstat(dst)) != identity:
            raise
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        data = read_exact(src, identity, limit=identity.size)
        if not write_atomic(dst, data, folders, mtime_ns=identity.mtime_ns, replace=False):
            fd = os.open(dst, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)   # an earlier attempt's copy?
            with os.fdopen(fd, "rb") as f:
                if f.read(identity.size + 1) != data:
                    raise FileExistsError(errno.EEXIST, "another file has that name", str(dst))
    else:
        if Identity.of(os.lstat(dst)) != identity:
            os.unlink(dst)
            raise Changed("was replaced by another file of the same name")
        folders.touched(dst.parent)
    remove_exact(src, identity)
    folders.touched(os.path.dirname(src))


def mount_of(path: Path, mountinfo: str = "/proc/self/mountinfo") -> tuple[str, set[str]]:
    """(type, options) of the filesystem holding ``path``, from
    mountinfo: ("unknown", set()) when it cannot be told. Options are the mount's and the
    filesystem's own (SMB's ``noserverino`` is one of the latter)."""
    path = Path(path).resolve()         # a path not there yet is on the mount of its ancestors
    best, found = "", ("unknown", set())
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, extra = left.split(), right.split()
                mount_point = fields[4].replace("\\040", " ")
                if (str(path) == mount_point or str(path).startswith(mount_point.rstrip("/") + "/")) \
                        and len(mount_point) >= len(best):
                    options = set(fields[5].split(",")) | set(extra[2].split(",") if len(extra) > 2 else ())
                    best, found = mount_point, (extra[0], options)
    except OSError:
        pass
    return found


def unstable_inodes(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Why inode numbers under ``path`` are not the same on every host, or None. An SMB mount with
    ``noserverino`` makes its inode numbers up on each client: the job of a file would not know the
    file again on another host, nor after a remount (docs/design.md#several-hosts)."""
    fstype, options = mount_of(path, mountinfo)
    if fstype in ("cifs", "smb3") and "noserverino" in options:
        return (f"{path} is an SMB mount with noserverino: its inode numbers differ from host to host; "
                "mount it with serverino")
    return None
