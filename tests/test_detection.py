"""Detection: the watcher's events, the scanner's stability rule, and what is never a job (docs/design.md#detection)."""

import json
import shutil
import logging
import os
import queue
import struct
import threading
import time
from pathlib import Path

import pytest

from conftest import growing, job_document, states, wait_for
from helpers.dblock import Locker
from pipeline import inotify
from pipeline.cli import Stopper
from pipeline.jobs import Jobs
from pipeline.store.models import Job, JobEvent, Scan
from pipeline.router import Router
from pipeline.scanner import Scanner
from pipeline.watcher import Watcher


@pytest.fixture
def watch(tree, db):
    """Run a real watcher (inotify, or polling by config) in a thread against the tree."""
    running = []

    def start():
        stopper = Stopper()
        watcher = Watcher(tree.config, Jobs(db, "watcher:1"), stopper)
        thread = threading.Thread(target=watcher.run, daemon=True)
        thread.start()
        assert watcher.ready.wait(10)
        running.append((stopper, thread))
        return watcher

    yield start
    for stopper, thread in running:
        stopper.request()
        thread.join(10)


def job_names():
    return sorted(f"{j.client_folder}/{j.file_name}" for j in Job.select())


def test_an_atomic_rename_drop_is_detected_at_once(tree, db, watch):
    (tree.hot / "RANK").mkdir(parents=True)
    watch()
    tree.drop("RANK", "5903771.json")
    wait_for(lambda: Job.select().count() == 1, message="the job")
    job = Job.get()
    assert (job.detected_by, job.client_folder, job.file_name) == ("realtime", "RANK", "5903771.json")


def test_a_file_written_slowly_is_only_taken_once_it_is_closed(tree, db, watch):
    (tree.hot / "RANK").mkdir(parents=True)
    watch()
    path = tree.hot / "RANK" / "slow.json"
    body = str.encode(json.dumps(job_document("RANK")))
    with open(path, "wb") as f:
        for i in range(0, len(body), 10):
            f.write(body[i:i + 10])
            f.flush()
            time.sleep(0.05)
            assert Job.select().count() == 0          # still open: never taken
    wait_for(lambda: Job.select().count() == 1, message="the job after close")
    assert Job.get().size == len(body)


def test_the_scanner_leaves_a_file_that_is_still_growing(tree, db):
    jobs = Jobs(db, "scanner:1")
    scanner = Scanner(tree.config, jobs)
    with growing(tree.hot / "RANK" / "growing.json", every=0.05):
        time.sleep(0.1)
        assert scanner.scan("periodic", "periodic") == 0
        assert scanner.scan("periodic", "periodic") == 0
    assert scanner.scan("periodic", "periodic") == 1        # unchanged for min_file_age now


def test_the_same_file_seen_by_the_watcher_and_by_scans_gives_one_job(tree, db, watch):
    (tree.hot / "RANK").mkdir(parents=True)
    watch()
    tree.drop("RANK", "a.json")
    wait_for(lambda: Job.select().count() == 1, message="the watcher's job")
    scanner = Scanner(tree.config, Jobs(db, "scanner:1"))
    assert scanner.scan("startup", "startup") == 0
    assert scanner.scan("periodic", "periodic") == 0
    assert Job.select().count() == 1


def test_scans_are_recorded(tree, db):
    tree.drop("RANK", "a.json")
    tree.drop("LOREAL", "b.json")
    Scanner(tree.config, Jobs(db, "scanner:1")).scan("startup", "startup")
    scan = Scan.get()
    assert (scan.kind, scan.files_seen, scan.jobs_created, scan.slow, scan.timed_out) == ("startup", 2, 2, 0, 0)
    assert scan.finished_at >= scan.started_at and scan.actor == "scanner:1"


IGNORED = [".DS_Store", "._5903771.json", ".hidden.json", "~$lock.json", "a.json.tmp", "a.part",
           "a.partial", "a.inprogress", "a.crdownload", "a.download", "a.json~", "a.txt", "a.xml"]


def test_ignored_names_and_places_never_become_jobs(tree, db, caplog):
    client = tree.hot / "RANK"
    client.mkdir(parents=True)
    for name in IGNORED:
        (client / name).write_text("{}")
    (tree.hot / "root.json").write_text("{}")                    # in the hot folder's root
    (client / "deeper").mkdir()
    (client / "deeper" / "x.json").write_text("{}")                # below a client folder
    (client / "folder.json").mkdir()                               # a folder named like a job
    os.mkfifo(client / "pipe.json")                                # a FIFO must not hang anything
    outside = tree.root / "outside.json"
    outside.write_text(json.dumps(job_document("RANK")))
    os.symlink(outside, client / "link.json")                      # a symlink is never followed
    os.symlink(tree.root, tree.hot / "LINKED")                     # nor a linked client folder
    (client / "UPPER.JSON").write_text("{}")                       # .json in any case is eligible
    caplog.set_level(logging.WARNING)
    scanner = Scanner(tree.config, Jobs(db, "scanner:1"))
    scanner.scan("startup", "startup")
    scanner.scan("periodic", "periodic")
    assert job_names() == ["RANK/UPPER.JSON"]
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("root.json" in w for w in warnings) == 1            # warned once, not every scan
    assert sum("link.json" in w and "not followed" in w for w in warnings) == 1
    assert sum("LINKED" in w for w in warnings) == 1


def test_the_watcher_ignores_the_same_names(tree, db, watch):
    client = tree.hot / "RANK"
    client.mkdir(parents=True)
    watch()
    for name in IGNORED:
        (client / name).write_text("{}")
    (tree.hot / "root.json").write_text("{}")
    os.symlink(tree.root / "pipeline.toml", client / "link.json")
    tree.drop("RANK", "last.json")
    wait_for(lambda: Job.select().count() >= 1, message="the eligible file")
    time.sleep(0.2)
    assert job_names() == ["RANK/last.json"]


def test_a_client_folder_created_after_start_is_watched_and_early_files_found(tree, db, watch):
    watcher = watch()
    with watcher.observer.lock:               # the reader cannot watch the new folder yet
        (tree.hot / "NEWCLIENT").mkdir()
        tree.drop("NEWCLIENT", "early.json")  # so this lands before the folder's watch exists
    tree.drop("NEWCLIENT", "later.json")
    wait_for(lambda: job_names() == ["NEWCLIENT/early.json", "NEWCLIENT/later.json"], message="both files")


def test_a_file_moved_in_from_outside_the_hot_folder_is_detected(tree, db, watch):
    (tree.hot / "RANK").mkdir(parents=True)
    watch()
    outside = tree.root / "staging.json"
    outside.write_text(json.dumps(job_document("RANK")))
    os.rename(outside, tree.hot / "RANK" / "moved.json")
    wait_for(lambda: job_names() == ["RANK/moved.json"], message="the moved-in file")


def test_an_inotify_overflow_triggers_a_full_rescan(tree, db, watch):
    tree.drop("RANK", "missed.json")              # present before the watch: no event for it
    tree.age(tree.hot / "RANK" / "missed.json")
    watcher = watch()
    time.sleep(0.1)
    assert Job.select().count() == 0
    # A real overflow: while the reader is held, more events than the kernel queues for it (and
    # than one read takes). Two names in turn, as the kernel merges an event equal to the last.
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text()) + 64 * 1024 // 16
    with watcher.observer.lock:
        for i in range(limit):
            open(tree.hot / "RANK" / f"burst{i % 2}.tmp", "wb").close()
    wait_for(lambda: Job.select().count() == 1, message="the rescan's job")
    assert Job.get().detected_by == "periodic"
    assert Scan.get().kind == "rescan"


def test_a_file_moved_out_holds_back_no_event_behind_it(tree, db):
    """Each path is handed over as its event is read: none waits for the other half of a rename.

    A file moved out of the hot folder gives an IN_MOVED_FROM whose IN_MOVED_TO never comes (it
    lands where nothing is watched). watchdog's inotify reading held every IN_MOVED_FROM for 0.5 s
    at the head of its queue, waiting for its pair, and every event read after it waited behind
    it. Each round here moves a file out, then one in, and waits for the moved-in path to be
    handed over before the next round begins: so with that pairing each round waits its own full
    0.5 s, and twenty rounds cannot end within the 10 s of patience given to all of them, however
    fast the machine. Without it a round takes a thread's wake-up. The patience is a bound the
    pairing cannot meet, not a measure of speed."""
    rounds = 20
    (tree.hot / "RANK").mkdir(parents=True)
    outside = tree.root / "outside"
    outside.mkdir()
    for i in range(rounds):
        (tree.hot / "RANK" / f"leaving{i}.json").write_text("{}")
        (outside / f"coming{i}.json").write_text("{}")
    watcher = Watcher(tree.config, Jobs(db, "watcher:1"))
    watcher.start()                   # the reader runs, the loop does not: paths stay in its queue
    try:
        deadline = time.monotonic() + rounds * 0.5
        for i in range(rounds):
            os.rename(tree.hot / "RANK" / f"leaving{i}.json", outside / f"leaving{i}.json")
            os.rename(outside / f"coming{i}.json", tree.hot / "RANK" / f"coming{i}.json")
            wanted = (False, str(tree.hot / "RANK" / f"coming{i}.json"))
            while True:
                try:
                    item = watcher.events.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(f"round {i}: the moved-in file's path was held back") from None
                if item == wanted:
                    break
                assert item[1] != str(outside / f"leaving{i}.json")     # never reported: not ours
    finally:
        watcher.finish()


def test_polling_observer_takes_files_once_they_are_stable(tree, db, watch):
    tree.write_config(detect='observer = "polling"\nmin_file_age = 0.3\nscan_interval = 60')
    (tree.hot / "RANK").mkdir(parents=True)
    watch()
    tree.drop("RANK", "polled.json", atomic=False)
    wait_for(lambda: Job.select().count() == 1, message="the polled file")
    assert Job.get().detected_by == "realtime"


def test_scanner_once_exits_zero_and_records_a_startup_scan(tree, db):
    tree.drop("RANK", "a.json")
    proc = tree.run("scanner", "--once")
    assert "startup scan: 1 files seen, 1 new jobs" in proc.stderr
    assert Job.get().detected_by == "startup"


class RecordingStopper(Stopper):
    def __init__(self):
        super().__init__()
        self.waits = []

    def wait(self, seconds):
        self.waits.append(seconds)
        return super().wait(seconds)


def test_a_file_unchanged_for_min_file_age_by_its_own_times_is_taken_without_waiting(tree, db):
    tree.drop("RANK", "old.json")
    time.sleep(0.35)                                  # ctime cannot be set back: really wait it out
    stopper = RecordingStopper()
    assert Scanner(tree.config, Jobs(db, "scanner:1"), stopper).scan("startup", "startup") == 1
    assert stopper.waits == []


def test_a_fresh_file_is_looked_at_twice(tree, db):
    tree.drop("RANK", "fresh.json")
    stopper = RecordingStopper()
    assert Scanner(tree.config, Jobs(db, "scanner:1"), stopper).scan("startup", "startup") == 1
    assert len(stopper.waits) == 1 and 0 < stopper.waits[0] <= 0.3


def test_on_a_network_mount_every_file_is_looked_at_twice(tree, db):
    tree.write_config(detect='observer = "polling"')
    tree.drop("RANK", "old.json")
    time.sleep(0.35)
    stopper = RecordingStopper()
    assert Scanner(tree.config, Jobs(db, "scanner:1"), stopper).scan("startup", "startup") == 1
    assert len(stopper.waits) == 1


def test_a_file_removed_between_the_second_looks_open_and_fstat_is_gone_not_an_error(tree, db, monkeypatch):
    """Through a FUSE view of a share (bindfs, as the several-hosts tests mount it) a file another
    host removes after the scanner opened it answers fstat with ENOENT: gone, as an open's ENOENT is."""
    tree.write_config(detect='observer = "polling"')
    dropped = tree.drop("RANK", "taken.json")
    real_fstat = os.fstat

    def removed_meanwhile(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == str(dropped):
            dropped.unlink()                            # another host's router took it
            raise FileNotFoundError(2, "No such file or directory")
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", removed_meanwhile)
    assert Scanner(tree.config, Jobs(db, "scanner:1"), RecordingStopper()).scan("startup", "startup") == 0
    monkeypatch.undo()
    assert Job.select().count() == 0


def start_watcher(tree):
    """The real bin/watcher, once it has logged that it watches."""
    proc = tree.spawn("watcher")
    wait_for(lambda: "watching" in tree.logs("watcher"), message="the watcher to start")
    return proc


@pytest.mark.parametrize("how", ["deleted", "moved away"])
def test_the_hot_folder_removed_and_created_again_is_watched_again(tree, db, how):
    # No scanner runs, and the watcher's own rescan is the only scan: a long interval changes nothing.
    tree.write_config(detect="min_file_age = 0.3\nscan_interval = 3600")
    (tree.hot / "RANK").mkdir(parents=True)
    watcher = start_watcher(tree)
    try:
        tree.drop("RANK", "before.json")
        wait_for(lambda: job_names() == ["RANK/before.json"], message="the first file")
        if how == "deleted":
            shutil.rmtree(tree.hot)
        else:
            tree.hot.rename(tree.root / "hot.old")
        wait_for(lambda: "is gone" in tree.logs("watcher"), message="the watcher to notice")
        tree.drop("RANK", "after.json")             # creates the hot folder and RANK again
        wait_for(lambda: job_names() == ["RANK/after.json", "RANK/before.json"], timeout=10,
                 message="the file dropped into the new hot folder")
        tree.drop("RANK", "later.json")              # and the new folder's own events are heard
        wait_for(lambda: "RANK/later.json" in job_names(), timeout=10, message="a later file")
    finally:
        watcher.terminate()
        watcher.wait(10)
    log = tree.logs("watcher")
    assert log.count("is gone") == 1 and log.count("watching it again") == 1, log
    assert Job.get(Job.file_name == "later.json").detected_by == "realtime"


def test_with_polling_the_hot_folder_moved_away_and_created_again_is_watched_again(tree, db, watch, caplog):
    # Polling has no watch on the hot folder's parent: the loop's own check is what notices.
    tree.write_config(detect='observer = "polling"\nmin_file_age = 0.3\nscan_interval = 3600')
    caplog.set_level(logging.INFO)
    (tree.hot / "RANK").mkdir(parents=True)
    watch()
    tree.hot.rename(tree.root / "hot.old")
    tree.drop("RANK", "after.json")
    wait_for(lambda: job_names() == ["RANK/after.json"], timeout=10, message="the file in the new hot folder")
    assert "watching it again" in caplog.text


OVERFLOW = struct.pack("iIII", -1, inotify.IN_Q_OVERFLOW, 0, 0)    # what the kernel queues when it drops events


def test_an_overflow_burst_gives_one_rescan(tree, db, watch, caplog):
    tree.drop("RANK", "missed.json")
    tree.age(tree.hot / "RANK" / "missed.json")
    watcher = watch()
    caplog.set_level(logging.WARNING, logger="pipeline.watcher")
    # The lock keeps the rescan from starting until the whole burst is in, as a kernel burst is
    # in before the watcher's loop has drained its queue. The overflows come through the reader's
    # own hand-over of what it read, as the kernel's would.
    with Locker(tree.config.paths.database, 1.0) as lock:
        watcher.observer.dispatch(inotify.parse(OVERFLOW * 50))
        lock.wait()
    wait_for(lambda: Job.select().count() == 1, message="the rescan's job")
    wait_for(lambda: Scan.get().finished_at, message="the rescan to finish")
    time.sleep(0.5)                                   # room for a second rescan, were one queued
    assert Scan.select().count() == 1
    assert sum("overflowed" in r.getMessage() for r in caplog.records if r.name == "pipeline.watcher") == 1


def test_an_overflow_during_a_rescan_asks_for_exactly_one_more(tree, db):
    watcher = Watcher(tree.config, Jobs(db, "watcher:1"))
    assert watcher._request_rescan() is True
    assert watcher._request_rescan() is False         # pending: the same rescan
    watcher.full_rescan.clear()                        # that rescan starts listing
    assert watcher._request_rescan() is True           # events may be lost in folders it listed
    assert [watcher._request_rescan() for _ in range(10)] == [False] * 10
    assert watcher.rescans.qsize() == 2


# -- a file that moves after it was detected: the job follows it ----------------------------------

def moves(job):
    return [e.detail for e in JobEvent.select().where(JobEvent.job == job.id) if (e.detail or "").startswith("file moved")]


def test_a_client_folder_renamed_after_detection_flows_from_its_new_name(tree, db, watch):
    (tree.hot / "Rank").mkdir(parents=True)
    watch()
    names = ["a.json", "b.json", "c.json"]
    for name in names:
        tree.drop("Rank", name, job_document("RANK"))
    wait_for(lambda: Job.select().count() == 3, message="the three jobs")
    (tree.hot / "Rank").rename(tree.hot / "RANK")
    tree.run("scanner", "--once")                    # a scan of the renamed folder adds no job
    tree.run("router", "--once")
    assert states(db) == {"routed": 3}
    assert tree.files(tree.hot) == []
    assert tree.files(tree.store / "RANK") == names and tree.files(tree.dest("Monday Rank")) == names
    for job in Job.select():
        assert (job.client_folder, job.source_path) == ("RANK", str(tree.hot / "RANK" / job.file_name))
        assert moves(job) == [f"file moved in the hot folder: {tree.hot / 'Rank' / job.file_name} -> "
                              f"{tree.hot / 'RANK' / job.file_name}; the job follows it"]
    tree.run("scanner", "--once")
    assert Job.select().count() == 3


def test_a_client_folder_renamed_while_its_jobs_wait_has_its_originals_removed_there(tree, db, clock):
    tree.write_config(router="create_folders = false")   # Monday Rank not mounted: archived jobs wait
    jobs = Jobs(db, "t:1", clock)
    tree.drop("Rank", "a.json", job_document("RANK"))
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)
    assert Job.get().state == "archived"
    (tree.hot / "Rank").rename(tree.hot / "RANK")
    tree.dest("Monday Rank").mkdir(parents=True)
    clock.advance(2)
    Router(tree.config, jobs).run(once=True)
    job = Job.get()
    assert job.state == "routed" and tree.files(tree.hot) == []
    assert job.source_path == str(tree.hot / "RANK" / "a.json")
    assert job.client_folder == "Rank"                  # archived from there; only the original moved
    assert len(moves(job)) == 1 and tree.files(tree.store / "Rank") == ["a.json"]


def test_a_misfiled_file_moved_to_its_client_folder_is_routed_not_failed(tree, db, watch):
    (tree.hot / "LOREAL").mkdir(parents=True)
    (tree.hot / "RANK").mkdir(parents=True)
    watch()
    tree.drop("LOREAL", "5903771.json", job_document("RANK"))      # a RANK job in LOREAL's folder
    wait_for(lambda: Job.select().count() == 1, message="the job")
    os.rename(tree.hot / "LOREAL" / "5903771.json", tree.hot / "RANK" / "5903771.json")
    time.sleep(0.2)                                  # the moved-in event: the job exists, none is added
    assert Job.select().count() == 1
    router = tree.run("router", "--once")
    job = Job.get()
    assert (job.state, job.client_folder, job.failed_step) == ("routed", "RANK", None)
    assert tree.files(tree.dest("Monday Rank")) == ["5903771.json"] and tree.files(tree.hot) == []
    assert not tree.failed.exists() and not tree.config.paths.error_log.exists()
    assert "the job follows it" in router.stderr and " ERROR " not in router.stderr
    assert len(moves(job)) == 1


def test_a_file_renamed_in_its_folder_after_detection_keeps_its_job_under_the_new_name(tree, db):
    jobs = Jobs(db, "t:1")
    tree.drop("RANK", "draft.json")
    Scanner(tree.config, jobs).scan("startup", "startup")
    os.rename(tree.hot / "RANK" / "draft.json", tree.hot / "RANK" / "final.json")
    Router(tree.config, jobs).run(once=True)
    job = Job.get()
    assert (job.state, job.file_name) == ("routed", "final.json")
    assert tree.files(tree.store / "RANK") == ["final.json"] and tree.files(tree.hot) == []


def test_a_client_folder_moved_out_and_back_after_its_jobs_failed_is_detected_again(tree, db):
    jobs = Jobs(db, "t:1")
    tree.drop("RANK", "a.json")
    Scanner(tree.config, jobs).scan("startup", "startup")
    (tree.hot / "RANK").rename(tree.root / "RANK.away")         # out of the hot folder
    Router(tree.config, jobs).run(once=True)
    assert (Job.get().state, Job.get().failed_step) == ("failed", "detect")
    (tree.root / "RANK.away").rename(tree.hot / "RANK")         # back, its files' ctime unchanged
    assert Scanner(tree.config, jobs).scan("periodic", "periodic") == 1
    Router(tree.config, jobs).run(once=True)
    assert states(db) == {"failed": 1, "routed": 1} and tree.files(tree.hot) == []


def test_a_startup_scan_creates_a_small_first_chunk_then_chunks_of_a_hundred(tree, db, monkeypatch):
    """Routers start on the first jobs while the scan inserts the rest, and can claim between chunks."""
    for i in range(250):
        tree.drop("ACME", f"{i:03}.json")
    jobs = Jobs(db, "scanner@test:1")
    sizes, create = [], jobs.create
    monkeypatch.setattr(jobs, "create", lambda sightings, by: sizes.append(len(sightings)) or create(sightings, by))
    time.sleep(0.35)                          # past min_file_age: the scan takes every file at once
    assert Scanner(tree.config, jobs).scan("startup", "startup") == 250
    assert sizes == [20, 100, 100, 30]
    assert states(db) == {"detected": 250}
