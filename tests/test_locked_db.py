"""A database locked by another process past the busy timeout: every program logs it, backs off and
carries on; no job is lost or failed because of it (docs/design.md#bad-input, docs/design.md#job-lifecycle).

The programs run in-process, in threads, with the busy timeout lowered to 0.2 s so that a lock held
for about a second is "past the busy timeout" (the real 5 s is used by the docs/design.md#bad-input test in
test_bad_input.py, with the real programs). The lock is held by a separate process.
"""

from __future__ import annotations

import logging
import threading

import pytest

from helpers.api_server import ApiServer
from conftest import job_document, wait_for
from helpers.dblock import Locker
from pipeline import cli, heartbeat
from pipeline import store
from pipeline.store import sqlite
from pipeline.heartbeat import Heartbeat
from pipeline.jobs import Jobs
from pipeline.store.models import Alert, Job, bind
from pipeline.notifier import Notifier
from pipeline.reporter import Reporter
from pipeline.router import Router
from pipeline.scanner import Scanner
from pipeline.watcher import Watcher
from test_reporter import Inbox, free_port, start_server

pytestmark = pytest.mark.sqlite_only      # SQLite's busy timeout; PostgreSQL writers wait their turn

BUSY = "database busy past the timeout (database is locked)"
HOLD = 0.7      # seconds the other process holds the lock: over three busy timeouts


@pytest.fixture
def db(tree, monkeypatch):
    """The tree's database with a 0.2 s busy timeout, for this test's threads."""
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT_MS", 200)
    database = store.connect(tree.config.paths.database)
    bind(database)
    yield database
    database.close()


class Running:
    """A program's ``run`` in a thread; an exception escaping it is kept, to fail the test."""

    def __init__(self, db, target, *args, **kwargs):
        self.error: BaseException | None = None
        self.db = db

        def run():
            try:
                target(*args, **kwargs)
            except BaseException as e:      # noqa: B902 - the test reports it
                self.error = e
            finally:
                db.close()                  # this thread's connection

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self, stopper: cli.Stopper) -> None:
        stopper.request()
        self.thread.join(20)
        assert not self.thread.is_alive(), "the program did not stop"
        assert self.error is None, f"an exception escaped the program: {self.error!r}"


def busy_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if BUSY in r.getMessage()]


def drop(tree, n: int, client: str = "RANK") -> None:
    for i in range(n):
        tree.age(tree.drop(client, f"{client.lower()}{i}.json", job_document(client)))


def no_failures() -> bool:
    return Job.select().where(Job.state == "failed").count() == 0


def test_the_router_waits_out_the_lock_and_routes_everything(tree, db, caplog):
    drop(tree, 5)
    jobs = Jobs(db, "router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    stopper = cli.Stopper()
    caplog.set_level(logging.WARNING)
    with Locker(tree.config.paths.database, HOLD) as lock:
        router = Running(db, Router(tree.config, jobs, stopper).run, heartbeat=Heartbeat(db, "router"))
        lock.wait()
        wait_for(lambda: Job.select().where(Job.state == "routed").count() == 5, message="every job routed")
    router.stop(stopper)
    assert busy_lines(caplog), "the router did not log the lock"
    assert no_failures() and tree.files(tree.hot) == []


def test_the_scanner_logs_the_lock_and_finds_the_files_at_its_next_scan(tree, db, caplog):
    drop(tree, 3)
    stopper = cli.Stopper()
    caplog.set_level(logging.WARNING)
    with Locker(tree.config.paths.database, HOLD) as lock:
        scanner = Running(db, Scanner(tree.config, Jobs(db, "scanner:1"), stopper).run,
                          heartbeat=Heartbeat(db, "scanner"))
        lock.wait()
        wait_for(lambda: Job.select().count() == 3, message="the jobs of the next scan")
    scanner.stop(stopper)
    assert busy_lines(caplog)
    assert {j.state for j in Job.select()} == {"detected"}


def test_the_watcher_keeps_its_events_through_the_lock(tree, db, caplog):
    (tree.hot / "RANK").mkdir(parents=True)
    stopper = cli.Stopper()
    caplog.set_level(logging.WARNING)
    watcher = Watcher(tree.config, Jobs(db, "watcher:1"), stopper)
    running = Running(db, watcher.run, heartbeat=Heartbeat(db, "watcher"))
    assert watcher.ready.wait(10)
    with Locker(tree.config.paths.database, HOLD) as lock:
        (tree.hot / "NEWCLIENT").mkdir()                            # its rescan meets the lock
        wait_for(lambda: "rescan is left" in caplog.text, message="the rescan to meet the lock")
        drop(tree, 3)                                               # events arrive while it is locked
        lock.wait()
        wait_for(lambda: Job.select().count() == 3, message="the watcher's jobs after the lock")
    running.stop(stopper)
    assert busy_lines(caplog)
    assert "the rescan is left to the scanner's next periodic scan" in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "a traceback for a locked database"
    assert {j.detected_by for j in Job.select()} == {"realtime"}


def test_the_notifier_waits_out_the_lock_and_notifies_everything(tree, db, caplog):
    api = ApiServer()
    try:
        tree.write_config(f'[api]\nendpoint = "{api.url}"\n')
        drop(tree, 4)
        jobs = Jobs(db, "router:1")
        Scanner(tree.config, jobs).scan("startup", "startup")
        Router(tree.config, jobs).run(once=True)
        stopper = cli.Stopper()
        caplog.set_level(logging.WARNING)
        with Locker(tree.config.paths.database, HOLD) as lock:
            notifier = Running(db, Notifier(tree.config, Jobs(db, "notifier:1"), stopper).run,
                               heartbeat=Heartbeat(db, "notifier"))
            lock.wait()
            wait_for(lambda: Job.select().where(Job.state == "notified").count() == 4, message="every job notified")
        notifier.stop(stopper)
    finally:
        api.close()
    assert busy_lines(caplog)
    assert no_failures()
    assert sorted(api.keys()) == sorted(j.uuid for j in Job.select())   # each sent once: no duplicate


def test_the_reporter_logs_the_lock_and_sends_the_alert_afterwards(tree, db, clock, caplog):
    inbox = Inbox()
    port = free_port()
    controller = start_server(inbox, port)
    try:
        tree.write_config(f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\n'
                          '[alerts]\nrecipients = ["oncall@example.com"]\n[report]\nsender = "p@example.com"\n')
        tree.age(tree.drop("RANK", "bad.json", b"{"))
        jobs = Jobs(db, "router:1", clock)
        Scanner(tree.config, jobs).scan("startup", "startup")
        Router(tree.config, jobs).run(once=True)
        caplog.set_level(logging.WARNING)
        reporter = Reporter(tree.config, db, "reporter:1", clock=clock)
        with Locker(tree.config.paths.database, HOLD) as lock:
            # --once waits the lock out, as every program does, rather than giving up the round.
            reporter.run(once=True, heartbeat=Heartbeat(db, "reporter", clock))
            lock.wait()
        assert busy_lines(caplog)
        reporter.run(once=True, heartbeat=Heartbeat(db, "reporter", clock))     # nothing new: no second alert
    finally:
        controller.stop()
    assert [a.state for a in Alert.select()] == ["sent"]
    assert [m["Subject"] for m in inbox.messages] == ["Alert: 1 failed job - JSON Workflow Daily Report"]


def test_a_heartbeat_that_meets_the_lock_is_skipped_not_fatal(tree, db, caplog, monkeypatch):
    # The scanner's wait between scans beats on its own: the lock arrives while it waits.
    tree.write_config(detect="min_file_age = 0.05\nscan_interval = 2\n")
    monkeypatch.setattr(heartbeat, "INTERVAL", 0.1)         # beat often while it waits
    stopper = cli.Stopper()
    caplog.set_level(logging.WARNING)
    scanner = Running(db, Scanner(tree.config, Jobs(db, "scanner:1"), stopper).run,
                      heartbeat=Heartbeat(db, "scanner"))
    wait_for(lambda: db.run_sql("SELECT count(*) FROM scans").fetchone()[0] == 1, message="the first scan")
    with Locker(tree.config.paths.database, HOLD) as lock:
        lock.wait()
    drop(tree, 2)
    wait_for(lambda: Job.select().count() == 2, message="the next periodic scan")
    scanner.stop(stopper)
    assert "database busy past the timeout (database is locked); heartbeat skipped" in caplog.text


def test_a_writer_waiting_for_the_lock_gets_it_between_two_transactions_of_a_busy_one(tree):
    """SQLite's own wait backs off to 100 ms between tries: behind a writer that begins again soon
    after it commits (a startup scan inserting thousands of jobs), a router found the lock free only
    by chance. Now the waiter tries every millisecond and gets in at the busy writer's first pause."""
    import time
    from pipeline.scanner import scan_started
    busy, waiter = store.connect(tree.config.paths.database), store.connect(tree.config.paths.database)
    rounds, done, waited = 60, [], []

    def hog():
        for i in range(rounds):
            with busy.write():
                scan_started(busy, "periodic", "hog", 0.0)
                time.sleep(0.02)                # a transaction of 20 ms
            done.append(i)
            busy.give_way()

    thread = threading.Thread(target=hog)
    thread.start()
    wait_for(lambda: len(done) >= 3)
    waited.append(len(done))
    with waiter.write():
        waited.append(len(done))
        scan_started(waiter, "periodic", "waiter", 0.0)
    thread.join()
    busy.close(), waiter.close()
    assert waited[1] - waited[0] <= 3, f"the waiter got the lock only {waited[1] - waited[0]} transactions later"
