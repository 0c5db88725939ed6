"""The job table's transitions: one job per appearance, leases, stale owners, audit rows (docs/design.md#job-lifecycle)."""

import os
import time

import pytest

from pipeline.hotfolder import HotFolder
from pipeline.jobs import Archived, Jobs, LeaseLost
from pipeline.states import MAX_CLAIMS, NOTIFY_QUEUE, ROUTE_QUEUE
from pipeline.store.models import Job, JobEvent


def sight(tree, path):
    return HotFolder(tree.hot).sighting(str(path))


def test_create_gives_one_job_per_appearance(tree, jobs):
    path = tree.drop("RANK", "a.json")
    s = sight(tree, path)
    assert len(jobs.create([s], "realtime")) == 1
    assert jobs.create([s], "periodic") == []                # the same file seen again
    assert jobs.create([sight(tree, path)], "startup") == []  # and stat'ed again
    assert Job.select().count() == 1
    job = Job.get()
    assert (job.state, job.detected_by, job.client_folder, job.file_name) == ("detected", "realtime", "RANK", "a.json")
    assert (job.inode, job.size, job.mtime_ns) == (s.st.st_ino, s.st.st_size, s.st.st_mtime_ns)


def test_a_chmod_of_a_file_in_flight_does_not_make_a_second_job(tree, jobs):
    path = tree.drop("RANK", "a.json")
    jobs.create([sight(tree, path)], "realtime")
    os.chmod(path, 0o600)          # changes ctime only
    assert jobs.create([sight(tree, path)], "periodic") == []


def test_a_stale_sighting_of_a_finished_job_makes_no_job(tree, jobs):
    path = tree.drop("RANK", "a.json")
    stale = sight(tree, path)
    [job_id] = jobs.create([stale], "realtime")
    jobs.db.run_sql("UPDATE jobs SET state = 'routed' WHERE id = ?", (job_id,))
    # A scan that listed the folder before the router removed the file reports it late.
    assert jobs.create([stale], "periodic") == []


def test_the_same_name_dropped_again_later_is_a_new_job(tree, jobs):
    path = tree.drop("RANK", "a.json")
    first = sight(tree, path)
    [job_id] = jobs.create([first], "realtime")
    jobs.db.run_sql("UPDATE jobs SET state = 'routed' WHERE id = ?", (job_id,))
    path.unlink()
    time.sleep(0.01)
    path = tree.drop("RANK", "a.json")                     # same content, same name, later
    st = os.lstat(path)
    os.utime(path, ns=(first.st.st_mtime_ns, first.st.st_mtime_ns))   # even with the same mtime (cp -p)
    assert len(jobs.create([sight(tree, path)], "realtime")) == 1
    assert Job.select().count() == 2
    assert st.st_ctime_ns > first.st.st_ctime_ns


def test_creation_is_audited(tree, jobs):
    [job_id] = jobs.create([sight(tree, tree.drop("RANK", "a.json"))], "startup")
    [event] = JobEvent.select().where(JobEvent.job == job_id)
    assert (event.from_state, event.to_state, event.actor) == (None, "detected", "test:1")
    assert event.detail.startswith("startup: ")


def _one_job(tree, jobs, clock=None):
    [job_id] = jobs.create([sight(tree, tree.drop("RANK", f"{time.monotonic_ns()}.json"))], "realtime")
    return job_id


def test_claim_leases_and_hides_the_job_until_the_lease_expires(tree, db, clock):
    a, b = Jobs(db, "router_00:1", clock), Jobs(db, "router_01:2", clock)
    job_id = _one_job(tree, a)
    batch = a.claim(ROUTE_QUEUE, 10, lease=60)
    assert [j.id for j in batch.jobs] == [job_id] and batch.jobs[0].claims == 1
    assert b.claim(ROUTE_QUEUE, 10, lease=60).jobs == ()
    row = Job.get_by_id(job_id)
    assert row.lease_owner == "router_00:1" and row.next_attempt_at == clock.now + 60
    clock.advance(61)                                    # the owner died: its lease ran out
    again = b.claim(ROUTE_QUEUE, 10, lease=60)
    assert [j.id for j in again.jobs] == [job_id] and again.jobs[0].claims == 2
    assert again.token != batch.token


def test_a_stale_owner_cannot_overwrite_the_new_owners_work(tree, db, clock):
    a, b = Jobs(db, "router_00:1", clock), Jobs(db, "router_01:2", clock)
    _one_job(tree, a)
    old = a.claim(ROUTE_QUEUE, 10, lease=5)
    clock.advance(6)
    new = b.claim(ROUTE_QUEUE, 10, lease=5)
    job = old.jobs[0]
    with pytest.raises(LeaseLost):
        with a.transaction():
            a.archived(old.token, [Archived(job.id, "0" * 64, "RANK", "X", None, None, "/x")])
    assert a.owned(old.token, [job.id]) == set()
    assert b.owned(new.token, [job.id]) == {job.id}
    with b.transaction():
        b.archived(new.token, [Archived(job.id, "1" * 64, "RANK", "X", None, None, "/y")])
    row = Job.get_by_id(job.id)
    assert (row.state, row.sha256, row.claims) == ("archived", "1" * 64, 0)


def test_transitions_write_their_audit_row_in_the_same_transaction(tree, jobs):
    job_id = _one_job(tree, jobs)
    batch = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    with pytest.raises(RuntimeError):
        with jobs.transaction():
            jobs.archived(batch.token, [Archived(job_id, "0" * 64, "RANK", "X", None, None, "/x")])
            raise RuntimeError("crash before commit")
    assert Job.get_by_id(job_id).state == "detected"
    assert JobEvent.select().where(JobEvent.job == job_id).count() == 1   # only 'detected'
    with jobs.transaction():
        jobs.archived(batch.token, [Archived(job_id, "0" * 64, "RANK", "X", None, None, "/x")])
        jobs.delivered(batch.token, [(job_id, "Monday Rank", "/d/a.json", "written")])
        jobs.delivered(batch.token, [(job_id, "Monday Rank", "/d/a.json", "written")])   # idempotent
        jobs.routed(batch.token, [(job_id, "to Monday Rank")])
    history = [(e.from_state, e.to_state) for e in JobEvent.select().where(JobEvent.job == job_id).order_by(JobEvent.id)]
    assert history == [(None, "detected"), ("detected", "archived"), ("archived", "routed")]
    assert jobs.db.run_sql("SELECT count(*) FROM deliveries").fetchone()[0] == 1
    row = Job.get_by_id(job_id)
    assert row.lease_token is None and row.routed_at is not None


def _archive(jobs, token, job_id):
    jobs.archived(token, [Archived(job_id, "0" * 64, "RANK", "X", None, None, f"/x/{job_id}")])


def _statements(monkeypatch, db, starting: str) -> list[str]:
    """The statements starting with ``starting`` that ``db`` runs from now on."""
    seen, execute_sql = [], db.execute_sql

    def counted(sql, params=None, *args, **kwargs):
        if sql.startswith(starting):
            seen.append(sql)
        return execute_sql(sql, params, *args, **kwargs)
    monkeypatch.setattr(db, "execute_sql", counted)
    return seen


def test_a_transactions_audit_rows_are_written_together_in_their_order(tree, jobs, monkeypatch):
    inserts = _statements(monkeypatch, jobs.db, "INSERT INTO job_events")
    sightings = [sight(tree, tree.drop("RANK", f"{i:03}.json")) for i in range(200)]
    created = jobs.create(sightings, "startup")
    assert len(created) == 200
    # One statement per 166 rows (six parameters each, within SQLite's lowest limit of 999), not one per row.
    assert len(inserts) == 2
    events = JobEvent.select().order_by(JobEvent.id)
    assert [(e.job_id, e.detail) for e in events] == [(job_id, f"startup: {s.path}")
                                                      for job_id, s in zip(created, sightings)]


def test_a_scans_new_jobs_are_made_by_one_statement_and_seen_again_make_none(tree, jobs, monkeypatch):
    inserts = _statements(monkeypatch, jobs.db, "\nINSERT INTO jobs")
    sightings = [sight(tree, tree.drop("RANK", f"{i:03}.json")) for i in range(50)]
    created = jobs.create(sightings, "startup")
    assert len(created) == 50 and len(inserts) == 1          # not one statement (a round trip) per file
    assert [Job.get_by_id(job_id).file_name for job_id in created] == [f"{i:03}.json" for i in range(50)]
    assert jobs.create(sightings + [sight(tree, tree.drop("RANK", "new.json"))], "periodic") != []
    assert Job.select().count() == 51                        # the 50 seen again make no job


def test_two_sightings_of_one_file_in_one_call_give_one_job_that_follows_the_later(tree, jobs):
    """Two looks at a file still being written, in one call: its checks cannot see a job the same
    statement makes, so such sightings go one at a time, the later one followed by the job."""
    path = tree.drop("RANK", "a.json", b'{"JobSpecification":')
    first = sight(tree, path)
    with open(path, "ab") as f:
        f.write(b' {"JobDetails": {}}}')
    os.utime(path, ns=(first.st.st_mtime_ns + 10**9, first.st.st_mtime_ns + 10**9))
    later = sight(tree, path)
    assert later.st.st_ino == first.st.st_ino and later.st.st_size != first.st.st_size
    created = jobs.create([first, later], "startup")
    assert len(created) == 1 and Job.select().count() == 1
    row = Job.get_by_id(created[0])
    assert (row.size, row.mtime_ns) == (later.st.st_size, later.st.st_mtime_ns)


def test_a_savepoint_rolled_back_drops_its_audit_rows_and_the_transaction_keeps_the_others(tree, jobs):
    first, second = _one_job(tree, jobs), _one_job(tree, jobs)
    batch = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    with jobs.transaction():
        _archive(jobs, batch.token, first)
        with pytest.raises(RuntimeError):
            with jobs.transaction():
                _archive(jobs, batch.token, second)
                raise RuntimeError("this job refused")
    archived = [e.job_id for e in JobEvent.select().where(JobEvent.to_state == "archived")]
    assert archived == [first]
    assert Job.get_by_id(second).state == "detected"


def test_an_audit_row_of_a_transaction_rolled_back_is_never_written_by_the_next(tree, jobs):
    first, second = _one_job(tree, jobs), _one_job(tree, jobs)
    batch = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    with pytest.raises(RuntimeError):
        with jobs.transaction():
            _archive(jobs, batch.token, first)
            raise RuntimeError("crash before commit")
    with jobs.transaction():
        _archive(jobs, batch.token, second)
    archived = [e.job_id for e in JobEvent.select().where(JobEvent.to_state == "archived")]
    assert archived == [second]


def test_a_transaction_routing_several_jobs_wakes_the_idle_workers_once(tree, jobs, monkeypatch):
    """On PostgreSQL each wake-up is a NOTIFY, a round trip; the server sends one per transaction anyway."""
    ids = [_one_job(tree, jobs) for _ in range(3)]
    batch = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    with jobs.transaction():
        for job_id in ids:
            _archive(jobs, batch.token, job_id)
    announced, announce = [], jobs.db.announce
    monkeypatch.setattr(jobs.db, "announce", lambda: (announced.append(1), announce()))
    with jobs.transaction():
        for job_id in ids:
            jobs.routed(batch.token, [(job_id, "archive only")])
    assert announced == [1]
    assert jobs.has_due(NOTIFY_QUEUE)


def test_a_batch_statement_finding_one_job_taken_over_raises_lease_lost_for_it(tree, db, clock):
    """archived and routed for a batch's jobs are one statement each: a job another router took
    over is named, and the caller's savepoint undoes the whole statement."""
    a = Jobs(db, "router_00:1", clock)
    mine, lost = _one_job(tree, a), _one_job(tree, a)
    old = a.claim(ROUTE_QUEUE, 10, lease=60)
    Job.update(lease_token="another-router").where(Job.id == lost).execute()
    with a.transaction():
        with pytest.raises(LeaseLost, match=f"job {lost} "):
            with a.transaction():
                a.archived(old.token, [Archived(job_id, "0" * 64, "RANK", "X", None, None, f"/x/{job_id}")
                                           for job_id in (mine, lost)])
        _archive(a, old.token, mine)
    assert [(j.id, j.state) for j in Job.select().order_by(Job.id)] == [(mine, "archived"), (lost, "detected")]
    Job.update(lease_token=old.token).where(Job.id == lost).execute()
    with a.transaction():
        _archive(a, old.token, lost)
    Job.update(lease_token="another-router").where(Job.id == lost).execute()
    with pytest.raises(LeaseLost, match=f"job {lost} "):
        with a.transaction():
            a.routed(old.token, [(mine, "archive only"), (lost, "archive only")])
    assert Job.get_by_id(mine).state == "archived"
    assert JobEvent.select().where(JobEvent.to_state == "routed").count() == 0


def test_copies_of_a_batch_are_recorded_once_each_for_the_jobs_still_held(tree, db, clock):
    jobs = Jobs(db, "router_00:1", clock)
    held, lost = _one_job(tree, jobs), _one_job(tree, jobs)
    batch = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    Job.update(lease_token="another-router").where(Job.id == lost).execute()
    copies = [(held, "Monday Rank", "/d/a.json", "written"), (held, "Celtra", "/c/a.json", "written"),
              (held, "Monday Rank", "/d/a.json", "written"), (lost, "Monday Rank", "/d/b.json", "written")]
    with jobs.transaction():
        jobs.delivered(batch.token, copies)
    with jobs.transaction():
        jobs.delivered(batch.token, copies[:1])                 # again: idempotent per job and path
    assert sorted(db.run_sql("SELECT job_id, path FROM deliveries").fetchall()) == [
        (held, "/c/a.json"), (held, "/d/a.json")]
    tallies = dict(db.run_sql("SELECT labels, value FROM tallies WHERE name = 'deliveries'").fetchall())
    assert tallies == {'["Monday Rank"]': 1, '["Celtra"]': 1}


def test_routed_jobs_move_to_the_notify_queue(tree, jobs):
    job_id = _one_job(tree, jobs)
    batch = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    with jobs.transaction():
        jobs.archived(batch.token, [Archived(job_id, "0" * 64, "RANK", "X", None, None, "/x")])
        jobs.routed(batch.token, [(job_id, "archive only")])
    assert jobs.has_due(NOTIFY_QUEUE) and not jobs.has_due(ROUTE_QUEUE)
    assert [j.id for j in jobs.claim(NOTIFY_QUEUE, 10, lease=60).jobs] == [job_id]


def test_release_makes_a_job_claimable_at_once_without_counting_the_claim(tree, db, clock):
    jobs = Jobs(db, "router:1", clock)
    job_id = _one_job(tree, jobs)
    batch = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    jobs.release(batch.token, [job_id])
    again = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    assert [j.id for j in again.jobs] == [job_id] and again.jobs[0].claims == 1


def test_wait_schedules_a_retry_and_counts_the_attempt(tree, db, clock):
    jobs = Jobs(db, "router:1", clock)
    job_id = _one_job(tree, jobs)
    batch = jobs.claim(ROUTE_QUEUE, 10, lease=60)
    with jobs.transaction():
        jobs.wait(batch.token, batch.jobs[0], 8, "Monday Rank: Read-only file system", 3)
    row = Job.get_by_id(job_id)
    assert (row.state, row.attempts, row.claims, row.next_attempt_at) == ("detected", 3, 0, clock.now + 8)
    assert row.last_error == "Monday Rank: Read-only file system" and row.lease_token is None
    assert jobs.claim(ROUTE_QUEUE, 10, lease=60).jobs == ()
    clock.advance(8)
    assert len(jobs.claim(ROUTE_QUEUE, 10, lease=60).jobs) == 1


def test_claims_are_counted_until_an_outcome_is_recorded(tree, db, clock):
    jobs = Jobs(db, "router:1", clock)
    _one_job(tree, jobs)
    for expected in range(1, MAX_CLAIMS + 2):
        batch = jobs.claim(ROUTE_QUEUE, 10, lease=1)
        assert batch.jobs[0].claims == expected
        clock.advance(2)                                 # the worker died each time


def test_an_idle_wait_is_woken_by_another_programs_commit_not_by_its_poll(tree, db):
    """A wait of 60 s ends as soon as another connection commits a new job: on SQLite every commit
    writes the WAL file (store/wakeup.py), on PostgreSQL the commit sends a NOTIFY."""
    import threading
    from pipeline import store
    from pipeline.cli import Stopper
    from pipeline.scanner import Scanner
    tree.drop("RANK", "a.json")
    waiter, stopper, woken = store.connect(tree.config.paths.database), Stopper(), {}
    try:
        waiter.wait_for_work(stopper, 0, listen=True)          # the watch or LISTEN is in place from here on
        assert waiter.IDLE_POLL > 0                             # woken on commits: polls seldom
        while waiter.wait_for_work(stopper, 0, listen=True):   # what earlier commits left
            pass
        thread = threading.Thread(target=lambda: woken.setdefault("by", waiter.wait_for_work(stopper, 60, listen=True)))
        thread.start()
        time.sleep(0.35)                                        # past min_file_age
        Scanner(tree.config, Jobs(db, "scanner:1")).scan("startup", "startup")
        thread.join(20)             # far less than the 60 s asked: only a wake-up ends it this soon
        assert not thread.is_alive(), "the wait was not woken"
    finally:
        stopper.request()
        waiter.close()
    assert woken["by"] is True


def test_a_first_idle_wait_looks_again_for_a_commit_made_before_it_listened(tree, db):
    """The wake-up (the WAL watch, LISTEN) is set up at a program's first idle wait: a job committed
    between the program's last look and then woke nobody, and would wait for the next poll
    (router.poll_interval): at start, the scanner's first jobs while a router set up its wait. That
    first wait ends at once for one more look; the next ones wait for a commit."""
    from pipeline import store
    from pipeline.cli import Stopper
    waiter, stopper = store.connect(tree.config.paths.database), Stopper()
    try:
        _one_job(tree, Jobs(db, "scanner:1"))                   # committed before the waiter listens
        assert waiter.wait_for_work(stopper, 5, listen=True) is True
        assert waiter.wait_for_work(stopper, 0.01, listen=True) is False    # nothing came since
    finally:
        waiter.close()


@pytest.mark.sqlite_only
def test_without_inotify_an_idle_wait_on_sqlite_polls(tree, db, monkeypatch, caplog):
    from pipeline import store
    from pipeline.cli import Stopper
    from pipeline.store import wakeup

    def refuse(database):
        raise OSError(24, "inotify_init1: Too many open files")
    monkeypatch.setattr(wakeup.WalWatch, "open", refuse)
    caplog.set_level("INFO")
    waiter = store.connect(tree.config.paths.database)
    try:
        assert waiter.wait_for_work(Stopper(), 0.01, listen=True) is False
        assert waiter.IDLE_POLL == 0            # the router's own poll_interval applies
    finally:
        waiter.close()
    assert "cannot be watched" in caplog.text and "idle programs poll" in caplog.text
