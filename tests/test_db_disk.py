"""The database's own disk failing under the programs.

A full disk, a read-only one, the database file deleted or renamed over, and a WAL that a long
reader made large. The database lives on its own small tmpfs here, the hot folder and the
destinations on the ordinary disk, and the real programs run as subprocesses.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

import peewee
import pytest

from conftest import job_document, wait_for
from helpers.mounts import fill
from pipeline import heartbeat as heartbeat_module
from pipeline import config as config_module
from pipeline import store
from pipeline.store import sqlite
from pipeline.heartbeat import Heartbeat
from pipeline.hotfolder import Sighting
from pipeline.jobs import Jobs
from pipeline.store.models import Job, JobEvent, bind

pytestmark = pytest.mark.sqlite_only      # SQLite's file on its own disk

ONE_LINE = {"full": "database disk full (database or disk is full)",
            "read-only": "database read-only (attempt to write a readonly database)"}
RECOVERED = "database writable again"


@pytest.fixture
def dbdisk(tree, tmpfs):
    """The tree's database moved onto a 1 MiB tmpfs of its own (the folder ``dbdisk``)."""
    folder = tmpfs.mount(tree.root / "dbdisk", size="1m")
    text = tree.config_path.read_text().replace('database = "pipeline.db"', 'database = "dbdisk/pipeline.db"')
    tree.config_path.write_text(text)
    tree.config = config_module.load(tree.config_path)
    store.connect(tree.config.paths.database).close()      # the schema, before the disk fills
    return folder


def open_db(tree):
    database = store.connect(tree.config.paths.database)
    bind(database)
    return database


def drop(tree, name: str, client: str = "RANK"):
    path = tree.drop(client, name, job_document(client))
    tree.age(path)
    return path


def routed(tree, name: str) -> bool:
    return (tree.dest("Monday Rank") / name).exists()


def count(log: str, text: str) -> int:
    return log.count(text)


# -- the classification and the rollback ---------------------------------------------------------

def test_transient_names_the_reason_of_real_sqlite_errors(tmp_path):
    path = tmp_path / "x.db"
    store.connect(path).close()
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly_error:
        read_only.execute("CREATE TABLE t (x)")
    with pytest.raises(sqlite3.OperationalError) as syntax_error:
        read_only.execute("SELEC 1")
    read_only.close()
    assert sqlite.transient(readonly_error.value) == "read-only"
    assert sqlite.transient(syntax_error.value) is None
    assert sqlite.transient(peewee.OperationalError("database is locked")) == "locked"
    assert sqlite.transient(ValueError("database is locked")) is None       # not a database error
    # An error met while rolling back hides the real one unless its context is looked at.
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise peewee.OperationalError("cannot rollback - no transaction is active")
    except peewee.OperationalError as e:
        assert sqlite.transient(e) == "full"


def test_a_full_disk_rolls_the_transaction_back_cleanly_and_writes_resume_once_there_is_room(tree, dbdisk):
    db = open_db(tree)
    jobs = Jobs(db, "test:1")
    try:
        filler = fill(dbdisk)
        with pytest.raises(peewee.OperationalError) as failed:
            with db.atomic():
                db.run_sql("INSERT INTO scans (kind, actor, started_at) VALUES ('startup', 'test', 1)")
                db.run_sql("UPDATE scans SET files_seen = 7")
                for _ in range(200):             # more than the WAL has room for
                    db.run_sql("INSERT INTO scans (kind, actor, started_at) VALUES (?, ?, 1)",
                                   ("periodic", "x" * 4000))
        # The real error comes out (not peewee's "cannot rollback"), nothing half-written stays.
        assert sqlite.transient(failed.value) == "full", failed.value
        assert "database or disk is full" in str(failed.value)
        assert not db.in_transaction()
        assert store.retry_later(db, failed.value, "trying again")
        assert db.run_sql("SELECT count(*) FROM scans").fetchone()[0] == 0
        filler.unlink()
        path = drop(tree, "after.json")
        st = os.stat(path)
        assert len(jobs.create([Sighting(str(path), "RANK", st)], "realtime")) == 1
        assert db.run_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


# -- the real programs ----------------------------------------------------------------------------

def test_a_full_database_disk_is_logged_once_waited_out_and_the_waiting_file_flows(tree, dbdisk):
    scanner, router = tree.spawn("scanner"), tree.spawn("router")
    try:
        drop(tree, "before.json")
        wait_for(lambda: routed(tree, "before.json"), message="the first file routed")
        filler = fill(dbdisk)
        drop(tree, "waiting.json")
        for program in ("scanner", "router"):
            wait_for(lambda: ONE_LINE["full"] in tree.logs(program), timeout=30,
                     message=f"the {program} to log the full disk")
        time.sleep(3)                               # several retries, and heartbeats, while full
        assert scanner.poll() is None and router.poll() is None, "a program died of a full disk"
        filler.unlink()
        wait_for(lambda: routed(tree, "waiting.json"), timeout=30, message="the waiting file routed")
        for program in ("scanner", "router"):
            wait_for(lambda: RECOVERED in tree.logs(program), message=f"the {program} to log the recovery")
    finally:
        for proc in (scanner, router):
            proc.terminate()
            proc.wait(30)
    for program in ("scanner", "router"):
        log = tree.logs(program)
        assert count(log, ONE_LINE["full"]) == 1, log
        assert count(log, RECOVERED) == 1, log
        assert "Traceback" not in log, log
    assert [p.returncode for p in (scanner, router)] == [0, 0]
    assert tree.files(tree.hot) == []


def killed_while_open(path) -> None:
    """A process that dies with the database open leaves its -wal and -shm behind, as SIGKILL does.

    The kernel refuses to remount a filesystem read-only while a file on it is open for writing, so
    a disk cannot be made read-only under a running program here; this is the state in which one
    that starts afterwards opens it read-only, and SQLite keeps that connection read-only even once
    the disk is writable again.
    """
    code = ("import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('PRAGMA journal_mode=wal'); c.execute('DELETE FROM heartbeats'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=30)


def test_a_read_only_database_disk_is_waited_out_and_the_connection_reopened(tree, dbdisk, tmpfs):
    drop(tree, "waiting.json")
    killed_while_open(tree.config.paths.database)
    tmpfs.read_only(dbdisk)
    scanner = tree.spawn("scanner")
    try:
        wait_for(lambda: ONE_LINE["read-only"] in tree.logs("scanner"), message="the read-only line")
        time.sleep(2)
        assert scanner.poll() is None, tree.logs("scanner")
        tmpfs.read_only(dbdisk, on=False)
        # SQLite keeps a connection opened read-only so: only a new connection can write.
        wait_for(lambda: RECOVERED in tree.logs("scanner"), message="the scanner to write again")
    finally:
        scanner.terminate()
        scanner.wait(30)
    log = tree.logs("scanner")
    assert count(log, ONE_LINE["read-only"]) == 1 and "Traceback" not in log, log
    tree.run("router", "--once")
    assert routed(tree, "waiting.json")


@pytest.mark.parametrize("trouble", ["full", "read-only"])
@pytest.mark.parametrize("program", ["scanner", "router"])
def test_once_exits_69_with_one_line_when_the_database_disk_cannot_be_written(tree, dbdisk, tmpfs, trouble, program):
    drop(tree, "waiting.json")
    if program == "router":
        tree.run("scanner", "--once")
    if trouble == "full":
        fill(dbdisk)
    else:
        killed_while_open(tree.config.paths.database)
        tmpfs.read_only(dbdisk)
    proc = tree.run(program, "--once", check=False)
    assert proc.returncode == 69, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "database" in line and " ERROR " in line]
    assert len(lines) == 1 and "database unusable" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and " WARNING " not in proc.stderr, proc.stderr
    assert (tree.hot / "RANK" / "waiting.json").exists()


def remove_database(tree, how: str):
    """The database file "deleted", or "replaced" by another renamed over it; its path."""
    path = tree.config.paths.database
    if how == "deleted":
        path.unlink()
    else:
        other = tree.root / "other.db"
        store.connect(other).close()
        os.replace(other, path)
    return path


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_file_deleted_or_replaced_under_a_running_program_makes_it_exit_69(tree, db, how):
    router = tree.spawn("router")
    try:
        wait_for(lambda: db.run_sql("SELECT count(*) FROM heartbeats").fetchone()[0] == 1,
                 message="the router's first heartbeat")
        path = remove_database(tree, how)
        router.wait(30)
    finally:
        if router.poll() is None:
            router.kill()
            router.wait()
    log = tree.logs("router")
    assert router.returncode == 69, log
    assert f"database file {path} was {how}; exiting so supervisord restarts on the real one" in log
    assert "Traceback" not in log, log


def sightings(tree, *names: str) -> list[Sighting]:
    return [Sighting(str(p), "RANK", os.stat(p)) for p in (drop(tree, name) for name in names)]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_write_after_the_database_file_is_deleted_or_replaced_is_refused_at_once(tree, db, how):
    """Not at the next heartbeat: the very next write transaction, before anything is written."""
    jobs = Jobs(db, "scanner:1")
    assert len(jobs.create(sightings(tree, "before.json"), "startup")) == 1
    path = remove_database(tree, how)
    with pytest.raises(store.DatabaseUnusable, match=f"database file {path} was {how}"):
        jobs.create(sightings(tree, "after.json"), "realtime")
    assert not db.in_transaction()


class HeldOpen:
    """Another process holding the database open in WAL mode, as a running program does, until closed."""

    CODE = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('PRAGMA journal_mode=wal'); c.execute('DELETE FROM heartbeats'); "
            "c.execute('SELECT count(*) FROM jobs').fetchone(); print('open', flush=True); sys.stdin.read()")

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "open\n"

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def test_a_database_created_where_one_was_deleted_under_running_programs_does_not_take_its_wal(tree, db):
    """SQLite finds the -wal and -shm by the database's name: a new file beside those of a deleted
    one still open elsewhere would share their index (reads fail with "disk I/O error")."""
    Jobs(db, "scanner:1").create(sightings(tree, "before.json"), "startup")
    db.close()
    path = tree.config.paths.database
    held = HeldOpen(path)
    try:
        path.unlink()
        new = open_db(tree)
        try:
            assert Job.select().count() == 0
            assert len(Jobs(new, "scanner:1").create(sightings(tree, "after.json"), "startup")) == 1
            assert new.run_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            new.close()
    finally:
        held.close()
    again = open_db(tree)           # after the last holder of the old file is gone
    try:
        assert [j.file_name for j in Job.select()] == ["after.json"]
    finally:
        again.close()


def scanner_beat(tree) -> float | None:
    conn = sqlite3.connect(f"file:{tree.config.paths.database}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT beat_at FROM heartbeats WHERE program = 'scanner'").fetchone()
    finally:
        conn.close()
    return row and row[0]


def test_files_routed_while_the_database_file_is_deleted_all_have_their_jobs_and_audit_in_the_new_one(tree):
    """A stream of files through a real scanner and router, restarted on exit 69 as supervisord
    does, while the database file is deleted: no file dropped after the deletion has its job only
    in the deleted file; every file is routed, those dropped before it at worst a second time."""
    tree.write_config(detect="min_file_age = 0.1\nscan_interval = 0.2\n")
    programs = {name: tree.spawn(name) for name in ("scanner", "router")}
    restarts = []
    names: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def dropping():
        i = 0
        while not stop.is_set():
            name = f"{i:04d}.json"
            drop(tree, name)
            with lock:
                names.append(name)
            i += 1
            time.sleep(0.05)

    def supervise():
        """What supervisord does: a program that exited 69 is started again."""
        for name, proc in programs.items():
            if proc.poll() is not None:
                assert proc.returncode == 69 and len(restarts) < 20, tree.logs(name)
                restarts.append(name)
                programs[name] = tree.spawn(name)

    def routed_now() -> int:
        supervise()
        return len(os.listdir(tree.dest("Monday Rank"))) if tree.dest("Monday Rank").exists() else 0

    dropper = threading.Thread(target=dropping)
    dropper.start()
    try:
        wait_for(lambda: routed_now() >= 20, timeout=60, message="routing under way")
        # Just after the scanner's heartbeat, which would notice the deletion only 5 s later.
        beat = scanner_beat(tree)
        wait_for(lambda: scanner_beat(tree) != beat, message="the scanner's next heartbeat")
        with lock:
            tree.config.paths.database.unlink()
            before = len(names)
        wait_for(lambda: routed_now() >= 0 and len(names) >= before + 60, timeout=60, message="files after it")
        stop.set()
        dropper.join()
        # Each program has met the deletion (at a write, or at its heartbeat) and been restarted.
        wait_for(lambda: routed_now() == len(names) and tree.files(tree.hot) == []
                 and set(restarts) == {"scanner", "router"}, timeout=120, message="every file routed")
    finally:
        stop.set()
        dropper.join()
        for proc in programs.values():
            proc.terminate()
            proc.wait(30)
    db = open_db(tree)
    try:
        assert db.run_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
        routed = {job.file_name: job for job in Job.select().where(Job.state == "routed")}
        lost = [name for name in names[before:] if name not in routed]
        assert not lost, f"{len(lost)} of the {len(names) - before} files dropped after the deletion have no job: {lost}"
        for name in names[before:]:
            trail = [e.to_state for e in JobEvent.select().where(JobEvent.job == routed[name].id).order_by(JobEvent.id)]
            assert trail[0] == "detected" and "archived" in trail and trail[-1] == "routed", (name, trail)
    finally:
        db.close()
    log = tree.logs("router") + tree.logs("scanner")
    assert "Traceback" not in log, log


# -- the WAL's bound ------------------------------------------------------------------------------

def test_the_wal_a_long_reader_made_large_shrinks_below_the_limit_after_it_lets_go(tree, monkeypatch, caplog):
    limit = 256 * 1024
    monkeypatch.setattr(sqlite, "JOURNAL_SIZE_LIMIT", limit)
    monkeypatch.setattr(heartbeat_module, "TIDY_INTERVAL", 0)
    db = open_db(tree)
    wal = f"{tree.config.paths.database}-wal"
    jobs = Jobs(db, "scanner:1")
    heartbeat = Heartbeat(db, "scanner")
    reader = sqlite3.connect(tree.config.paths.database, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM jobs").fetchone()      # holds its snapshot: no checkpoint passes it
        files = [drop(tree, f"many{i}.json") for i in range(300)]
        for chunk in range(0, len(files), 10):
            jobs.create([Sighting(str(p), "RANK", os.stat(p)) for p in files[chunk:chunk + 10]], "startup")
            heartbeat.beat(force=True)
        assert os.path.getsize(wal) > limit, "the test wrote too little to grow the WAL"
        reader.execute("COMMIT")
        # The heartbeat's checkpoint alone (no more job writes) brings it back.
        wait_for(lambda: heartbeat.beat(force=True) or os.path.getsize(wal) <= limit,
                 message="the WAL back below its limit")
    finally:
        reader.close()
        db.close()
    assert Job.select().count() == 300
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_connect_sets_the_journal_size_limit(db):
    assert db.run_sql("PRAGMA journal_size_limit").fetchone()[0] == sqlite.JOURNAL_SIZE_LIMIT
