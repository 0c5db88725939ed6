"""Signals and exit codes: the first SIGTERM finishes or releases the batch and exits 0, a second
exits at once; a broken config or database gives a documented exit code (docs/design.md#operating-it)."""

import signal

import pytest

from helpers.api_server import HANG, ApiServer
from conftest import job_document, wait_for
from pipeline.jobs import Jobs
from pipeline.states import ROUTE_QUEUE
from pipeline.store.models import Job


def backlog(tree, n=1500):
    for i in range(n):
        tree.age(tree.drop(("RANK", "LOREAL", "ACME")[i % 3], f"{i:05d}.json",
                           job_document(("RANK", "LOREAL", "ACME")[i % 3], "CELTRA")))
    tree.run("scanner", "--once")


def routed(db):
    return Job.select().where(Job.state == "routed").count()


def beats(db, prefix):
    return db.run_sql("SELECT count(*) FROM heartbeats WHERE program LIKE ?", (prefix + "%",)).fetchone()[0]


def test_sigterm_finishes_or_releases_the_batch_and_exits_zero(tree, db):
    tree.write_config(router="batch_size = 100\nlease = 60")
    backlog(tree)
    router = tree.spawn("router")
    try:
        wait_for(lambda: routed(db) >= 100 and beats(db, "router"), interval=0.01, message="the router at work")
        router.send_signal(signal.SIGTERM)
        assert router.wait(30) == 0
    finally:
        if router.poll() is None:
            router.kill()
    # Nothing is left half-done or held: every job is committed somewhere and claimable at once.
    assert Job.select().where(Job.lease_token.is_null(False)).count() == 0
    left = Job.select().where(Job.state.in_(["detected", "archived"])).count()
    assert 0 < left < 1500
    assert len(Jobs(db, "t:1").claim(ROUTE_QUEUE, 2000, 60).jobs) == left     # no lease to wait out
    assert beats(db, "router") == 0                                            # its heartbeat retired


def test_a_second_sigterm_exits_at_once(tree, db):
    """The first SIGTERM waits for the call in flight (here one that hangs); the second cuts it short."""
    api = ApiServer()
    api.script = [HANG]
    try:
        tree.write_config(extra=f'[api]\nendpoint = "{api.url}"\ntimeout = 60\n')
        tree.age(tree.drop("RANK", "a.json"))
        tree.run("scanner", "--once")
        tree.run("router", "--once")
        notifier = tree.spawn("notifier")
        try:
            wait_for(lambda: api.active == 1, message="the call in flight")
            notifier.send_signal(signal.SIGTERM)
            wait_for(lambda: "SIGTERM received" in tree.logs("notifier"), message="the first SIGTERM handled")
            assert notifier.poll() is None                  # still waiting for its call
            notifier.send_signal(signal.SIGTERM)
            assert notifier.wait(10) == 1
        finally:
            if notifier.poll() is None:
                notifier.kill()
    finally:
        api.close()
    assert Job.get().state == "routed"                      # nothing was recorded as done


@pytest.mark.parametrize("program", ["scanner", "watcher", "notifier", "reporter"])
def test_idle_programs_stop_on_sigterm_with_exit_zero(tree, db, program):
    proc = tree.spawn(program)
    try:
        wait_for(lambda: beats(db, program), message=f"the {program}'s heartbeat")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert beats(db, program) == 0


@pytest.mark.sqlite_only
def test_an_unusable_database_exits_69(tree):
    tree.config.paths.database.write_bytes(b"not a database " * 200)
    proc = tree.run("router", "--once", check=False)
    assert proc.returncode == 69 and "database unusable" in proc.stderr


def test_a_bad_configuration_exits_78(tree):
    tree.config_path.write_text("[router]\nconflict = 'sometimes'\n")
    for program in ("scanner", "watcher", "router", "notifier", "reporter"):
        proc = tree.run(program, "--once", check=False)
        assert proc.returncode == 78, program
        assert "[router] conflict" in proc.stderr
