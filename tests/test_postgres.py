"""PostgreSQL itself (docs/design.md#several-hosts): many writers at once, lost connections, a restarted server.

The rest of the suite runs on PostgreSQL too (the ``tree`` fixture's engines); these are the
things SQLite's single writer and local file never meet.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from conftest import job_document, end_connections, wait_for
from pipeline import store
from pipeline.heartbeat import Heartbeat
from pipeline.jobs import Jobs
from pipeline.scanner import Scanner

pytestmark = pytest.mark.postgresql_only

N = 5000


def _drop_backlog(tree, n: int) -> None:
    folder = tree.hot / "RANK"
    folder.mkdir(parents=True)
    body = json.dumps(job_document("RANK")).encode()
    old = time.time() - 60
    for i in range(n):
        path = folder / f"{i:05d}.json"
        path.write_bytes(body)
        os.utime(path, (old, old))


def _routed_once(db) -> tuple[int, int, int]:
    """(jobs, jobs routed, jobs with more than one archived or routed event)."""
    jobs = db.run_sql("SELECT count(*) FROM jobs").fetchone()[0]
    routed = db.run_sql("SELECT count(*) FROM jobs WHERE state = 'routed'").fetchone()[0]
    twice = db.run_sql("""
        SELECT count(*) FROM (SELECT job_id FROM job_events WHERE to_state IN ('archived', 'routed')
                              GROUP BY job_id, to_state HAVING count(*) > 1) AS t""").fetchone()[0]
    return jobs, routed, twice


def _stop(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def test_two_scanners_and_four_routers_on_one_backlog_make_one_job_per_file_each_routed_once(tree, db):
    tree.write_config(router="batch_size = 100\n", routes='[[route]]\nname = "Rank"\nclients = ["RANK"]\n'
                                                          'to = "dest/Rank"\n')
    _drop_backlog(tree, N)
    routers = [tree.spawn("router") for _ in range(4)]
    try:
        scanners = [tree.spawn("scanner", "--once") for _ in range(2)]
        for s in scanners:
            assert s.wait(120) == 0
        wait_for(lambda: _routed_once(db)[1] == N, timeout=240, interval=0.5, message="every job routed")
    finally:
        _stop(routers)
    assert _routed_once(db) == (N, N, 0)
    assert len(os.listdir(tree.dest("Rank"))) == N and tree.files(tree.hot) == []
    claimed_by = {r[0] for r in db.run_sql("SELECT DISTINCT actor FROM job_events WHERE to_state = 'routed'")}
    assert len(claimed_by) == 4, f"every router took a share: {claimed_by}"
    # Their transactions bump the same tallies: written in one order, they never deadlock.
    assert "deadlock" not in tree.logs("router")


def test_concurrent_job_creation_of_one_appearance_gives_one_job(tree, db, database):
    """Two scanners' transactions that both passed the duplicate check: the unique index decides."""
    _drop_backlog(tree, 50)
    first, second = store.connect(database), store.connect(database)
    try:
        sightings = Scanner(tree.config, Jobs(first, "scanner:1")).hot.list(None, deadline=time.monotonic() + 30)[0]
        with first.write():
            made = Jobs(first, "scanner:1").create(sightings, "startup")
            # The second inserts while the first has not committed: it waits on the index entry, then
            # finds the appearance taken once the first commits.
            other = Jobs(second, "scanner:2")
            result = {}
            t = threading.Thread(target=lambda: result.setdefault("ids", other.create(sightings, "startup")))
            t.start()
            time.sleep(0.3)
        t.join(30)
    finally:
        first.close()
        second.close()
    assert len(made) == 50 and result["ids"] == []
    assert db.run_sql("SELECT count(*) FROM jobs").fetchone()[0] == 50


def test_connections_killed_mid_backlog_every_program_reconnects_and_nothing_is_done_twice(tree, db):
    tree.write_config(routes='[[route]]\nname = "Rank"\nclients = ["RANK"]\nto = "dest/Rank"\n')
    _drop_backlog(tree, 1500)
    programs = [tree.spawn("scanner"), tree.spawn("router"), tree.spawn("router")]
    try:
        wait_for(lambda: _routed_once(db)[1] >= 300, timeout=120, message="routing under way")
        killed = end_connections(db)
        assert killed >= 3
        wait_for(lambda: _routed_once(db)[1] == 1500, timeout=180, interval=0.5, message="every job routed")
    finally:
        _stop(programs)
    assert _routed_once(db) == (1500, 1500, 0)
    logs = tree.logs("router") + tree.logs("scanner")
    assert "database unreachable" in logs
    assert "Traceback" not in logs


def through(tree, proxy) -> None:
    """The tree's programs reach the database through ``proxy``."""
    tree.database = proxy.url(tree.database)
    tree.write_config(routes='[[route]]\nname = "Rank"\nclients = ["RANK"]\nto = "dest/Rank"\n')


def test_the_database_host_gone_mid_run_the_programs_carry_on_and_status_says_unreachable_meanwhile(tree, db, proxy):
    through(tree, proxy)
    proxy.open()
    _drop_backlog(tree, 1000)
    programs = [tree.spawn("scanner"), tree.spawn("router")]
    try:
        wait_for(lambda: _routed_once(db)[1] >= 200, timeout=120, message="routing under way")
        proxy.close()
        down = tree.run("status", check=False)
        assert down.returncode == 69, down.stderr
        assert "database unreachable: " in down.stderr and "Connection refused" in down.stderr
        assert len(down.stderr.strip().splitlines()) == 1, down.stderr
        wait_for(lambda: "database unreachable" in tree.logs("router"), message="the router to say it")
        assert all(p.poll() is None for p in programs)
        proxy.open()
        wait_for(lambda: _routed_once(db)[1] == 1000, timeout=180, interval=0.5, message="every job routed")
    finally:
        _stop(programs)
    assert _routed_once(db) == (1000, 1000, 0)
    logs = tree.logs("router")
    assert "Traceback" not in logs
    assert [p.returncode for p in programs] == [0, 0]


def test_a_url_with_a_password_is_refused_naming_the_key(tree):
    text = tree.config_path.read_text()
    url = tree.database.replace("postgresql://pipeline@", "postgresql://pipeline:secret@")
    tree.config_path.write_text(text.replace(tree.database, url))
    proc = tree.run("router", "--once", check=False)
    assert proc.returncode == 78
    assert "[paths] database: the URL holds a password" in proc.stderr and "secret" not in proc.stderr


def test_a_clock_off_the_databases_is_logged_and_makes_status_unhealthy(tree, db, caplog):
    Heartbeat(db, "router_00", clock=lambda: time.time() + 30, max_clock_skew=2).beat()
    assert "this host's clock is +30.0s off the database's, more than database.max_clock_skew" in caplog.text
    proc = tree.run("status", check=False)
    assert proc.returncode == 1
    assert "router_00 (pid" in proc.stdout and "its clock is +30.0s off the database's" in proc.stdout
    Heartbeat(db, "router_00", max_clock_skew=2).beat()          # NTP put it right
    assert "its clock is" not in tree.run("status", check=False).stdout
