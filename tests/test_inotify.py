"""The watcher's inotify reading: events parsed, paths handed over as they are read, folders watched as they come and go (docs/design.md#detection)."""

import logging
import os
import queue
import shutil
import struct

import pytest

from conftest import wait_for

from pipeline import inotify
from pipeline.hotfolder import HotFolder
from pipeline.inotify import FolderWatch, parse

SENTINEL = "zz-sentinel"


def event_bytes(wd: int, mask: int, cookie: int, name: bytes, padded_to: int = 0) -> bytes:
    """One struct inotify_event as the kernel writes it: the name NUL-padded, len counting the padding."""
    padded = name + b"\0" * (padded_to - len(name)) if padded_to else name
    return struct.pack("iIII", wd, mask, cookie, len(padded)) + padded


class Watched:
    """A FolderWatch on ``root``, its calls in one queue in the order they were made."""

    def __init__(self, root):
        self.root = root
        self.calls: queue.Queue = queue.Queue()
        self.watch = FolderWatch(lambda is_dir, path: self.calls.put((is_dir, path)),
                                 lambda: self.calls.put("root"), lambda: self.calls.put("overflow"))
        self.watch.start()

    def until_sentinel(self) -> list:
        """The calls made until a file closed in the hot folder's root is reported: the kernel
        queues events in order, so everything done before has been read by then (and a folder
        created before has its watch)."""
        (self.root / SENTINEL).write_text("")
        calls = []
        while (call := self.calls.get(timeout=10)) != (False, str(self.root / SENTINEL)):
            calls.append(call)
        return calls


@pytest.fixture
def watched(tmp_path):
    root = tmp_path / "hot"
    (root / "RANK").mkdir(parents=True)
    w = Watched(root)
    assert w.watch.watch(root)
    yield w
    w.watch.stop()


def test_parse_reads_several_events_with_their_names_unpadded():
    buffer = (event_bytes(1, inotify.IN_CLOSE_WRITE, 0, b"a.json", padded_to=16)
              + event_bytes(2, inotify.IN_MOVED_TO, 7, b"a-longer-name.json", padded_to=32)
              + event_bytes(-1, inotify.IN_Q_OVERFLOW, 0, b"")
              + event_bytes(3, inotify.IN_CREATE | inotify.IN_ISDIR, 0, b"NEW", padded_to=16))
    assert parse(buffer) == [(1, inotify.IN_CLOSE_WRITE, 0, b"a.json"), (2, inotify.IN_MOVED_TO, 7, b"a-longer-name.json"),
                             (-1, inotify.IN_Q_OVERFLOW, 0, b""), (3, inotify.IN_CREATE | inotify.IN_ISDIR, 0, b"NEW")]


def test_parse_keeps_a_name_that_is_not_utf8_as_bytes():
    assert parse(event_bytes(1, inotify.IN_CLOSE_WRITE, 0, b"caf\xe9.json", padded_to=16))[0].name == b"caf\xe9.json"


def test_files_closed_after_writing_or_moved_in_are_reported_and_nothing_else(watched, tmp_path):
    rank = watched.root / "RANK"
    (rank / "deeper").mkdir()
    with open(rank / "written.json", "wb") as f:
        f.write(b"{}")
        f.flush()                                          # written, still open: not reported yet
        (rank / ".drop.json.part").write_bytes(b"{}")
        os.rename(rank / ".drop.json.part", rank / "drop.json")
    (tmp_path / "outside.json").write_text("{}")
    os.rename(tmp_path / "outside.json", rank / "moved-in.json")
    os.rename(rank / "moved-in.json", tmp_path / "moved-out.json")     # its pair never comes
    (rank / "deeper" / "below.json").write_text("{}")                 # below a client folder
    os.symlink(tmp_path / "outside", rank / "link.json")
    assert watched.until_sentinel() == [(False, str(rank / ".drop.json.part")), (False, str(rank / "drop.json")),
                                            (False, str(rank / "written.json")), (False, str(rank / "moved-in.json"))]


def test_a_name_that_is_not_utf8_is_handed_over_as_the_hot_folder_reads_names(watched, caplog):
    rank = watched.root / "RANK"
    name = os.fsencode(rank) + b"/caf\xe9.json"
    os.close(os.open(name, os.O_CREAT | os.O_WRONLY))
    [(is_dir, path)] = watched.until_sentinel()
    assert not is_dir and os.fsencode(path) == name and os.path.exists(path)
    caplog.set_level(logging.WARNING)
    assert HotFolder(watched.root).sighting(path) is None
    assert "not valid UTF-8" in caplog.text


def test_a_new_client_folder_is_watched_and_reported(watched):
    new = watched.root / "NEW"
    new.mkdir()
    (new / "a.json").write_text("{}")           # may land before the watch: the watcher rescans
    calls = watched.until_sentinel()
    assert calls[0] == (True, str(new)) and set(calls[1:]) <= {(False, str(new / "a.json"))}


def test_a_file_written_into_a_new_folder_before_its_watch_is_not_reported_only_the_folder(watched):
    new = watched.root / "NEW"
    with watched.watch.lock:                    # the reader cannot act on the folder's creation yet
        new.mkdir()
        (new / "early.json").write_text("{}")
    assert watched.until_sentinel() == [(True, str(new))]


def test_a_folder_moved_in_is_watched_and_one_moved_away_is_not_any_more(watched, tmp_path):
    away = tmp_path / "away"
    os.rename(watched.root / "RANK", away)
    (away / "after.json").write_text("{}")              # not in the hot folder any more
    (tmp_path / "LOREAL").mkdir()
    os.rename(tmp_path / "LOREAL", watched.root / "LOREAL")
    assert watched.until_sentinel() == [(True, str(watched.root / "LOREAL"))]
    os.rename(away, watched.root / "Rank")               # back, under another name
    assert watched.until_sentinel() == [(True, str(watched.root / "Rank"))]
    (watched.root / "Rank" / "back.json").write_text("{}")
    assert watched.until_sentinel() == [(False, str(watched.root / "Rank" / "back.json"))]


def test_a_symlinked_folder_is_not_followed(watched, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", watched.root / "LINKED")
    (tmp_path / "elsewhere" / "a.json").write_text("{}")
    assert watched.until_sentinel() == []
    assert not watched.watch.watch(watched.root / "LINKED")      # nor watched as a hot folder


@pytest.mark.parametrize("how", ["deleted", "moved away"])
def test_the_hot_folder_gone_is_said_and_a_new_one_is_watched(watched, tmp_path, how):
    if how == "deleted":
        shutil.rmtree(watched.root)
    else:
        os.rename(watched.root, tmp_path / "hot.old")
    assert watched.calls.get(timeout=10) == "root"
    wait_for(lambda: not watched.watch.watching(), message="the tree's watches to go")
    if how == "moved away":
        (tmp_path / "hot.old" / "RANK" / "after.json").write_text("{}")     # elsewhere now: not reported
    (watched.root / "RANK").mkdir(parents=True)
    assert watched.watch.watch(watched.root)
    (watched.root / "RANK" / "new.json").write_text("{}")
    calls = watched.until_sentinel()
    assert (False, str(watched.root / "RANK" / "new.json")) in calls
    assert all(c == "root" for c in calls if c != (False, str(watched.root / "RANK" / "new.json")))


def test_the_kernels_overflow_is_reported(watched):
    watched.watch.dispatch(parse(event_bytes(-1, inotify.IN_Q_OVERFLOW, 0, b"")))
    assert watched.calls.get(timeout=10) == "overflow"


def test_a_folder_that_cannot_be_watched_is_logged_and_reported_as_lost_events(watched, caplog, monkeypatch):
    def refuse(path, mask):
        raise OSError(28, "inotify_add_watch: No space left on device")
    monkeypatch.setattr(watched.watch.inotify, "add_watch", refuse)   # the user's watch limit reached
    (watched.root / "NEW").mkdir()
    assert watched.calls.get(timeout=10) == "overflow"
    assert watched.calls.get(timeout=10) == (True, str(watched.root / "NEW"))
    assert "cannot watch" in caplog.text and "NEW" in caplog.text
