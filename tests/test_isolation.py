"""One job's trouble stays that job's (docs/design.md#bad-input).

Each test puts one job in trouble in a batch of good ones, with real files, folders, mounts and
the real router, and checks that the trouble job waits or fails with a one-line reason, that the
rest of its batch flows, and that the router carries on (``--once`` exits 0).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import job_document
from helpers.mounts import fill
from pipeline import rules
from pipeline.jobs import Jobs, LeaseLost
from pipeline.states import ROUTE_QUEUE
from pipeline.store.models import ErrorLogRecord, Job, JobEvent
from pipeline.router import Router
from pipeline.scanner import Scanner

GOOD = [("RANK", "good1.json"), ("LOREAL", "good2.json"), ("RANK", "good3.json")]


@pytest.fixture
def immutable():
    """chattr +i on folders, undone at the end: the one way to refuse root an unlink (EPERM)."""
    if not shutil.which("chattr"):
        pytest.skip("no chattr here: cannot make a folder immutable")
    done = []

    def make(folder, on=True):
        proc = subprocess.run(["chattr", "+i" if on else "-i", str(folder)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here: {proc.stderr.strip()}")
        (done.append if on else done.remove)(folder)
    yield make
    for folder in done:
        subprocess.run(["chattr", "-i", str(folder)])


def drop_batch(tree, bad: dict[str, bytes | dict] | None = None) -> None:
    for client, name in GOOD:
        tree.age(tree.drop(client, name, job_document(client)))
    for name, content in (bad or {}).items():
        tree.age(tree.drop("RANK", name, content))


def job(name: str) -> Job:
    return Job.get(Job.file_name == name)


def assert_good_routed(tree) -> None:
    for client, name in GOOD:
        assert job(name).state == "routed", name
        assert not (tree.hot / client / name).exists()


def make_due(name: str) -> None:
    Job.update(next_attempt_at=0).where(Job.file_name == name).execute()


def route(tree) -> str:
    """bin/router --once; returns its log (it must exit 0)."""
    return tree.run("router", "--once").stderr


def test_an_original_that_cannot_be_removed_waits_and_flows_on_later(tree, db, immutable):
    drop_batch(tree, {"stuck.json": job_document("RANK")})
    tree.run("scanner", "--once")
    client = tree.hot / "RANK"
    # An immutable client folder refuses the unlink (EPERM) after the copies are made.
    (client / "good1.json").rename(tree.root / "good1.json")     # routed apart, below
    immutable(client)
    log = route(tree)
    stuck = job("stuck.json")
    reason = "cannot remove the original from the hot folder: Operation not permitted"
    assert (stuck.state, stuck.last_error, stuck.attempts) == ("archived", reason, 1)
    assert f"RANK/stuck.json waits: {reason}" in log
    assert job("good2.json").state == "routed"
    # The copies were made once and are recorded; the original is still where upstream put it.
    assert (tree.dest("Monday Rank") / "stuck.json").exists() and (client / "stuck.json").exists()
    immutable(client, on=False)
    make_due("stuck.json")
    route(tree)
    stuck = job("stuck.json")
    assert stuck.state == "routed" and not (client / "stuck.json").exists()
    assert [d.path for d in stuck.deliveries] == [str(tree.dest("Monday Rank") / "stuck.json")]


def test_a_failure_whose_error_log_disk_is_full_is_recorded_and_its_record_written_later(tree, db, tmpfs):
    tmpfs.mount(tree.config.paths.error_log)
    filler = fill(tree.config.paths.error_log)
    drop_batch(tree, {"bad.json": b"{not json"})
    tree.run("scanner", "--once")
    log = route(tree)
    bad = job("bad.json")
    assert (bad.state, bad.failed_step) == ("failed", "validate")
    assert_good_routed(tree)
    assert "cannot write to the error log" in log and "1 record(s) kept in the database" in log
    [record] = ErrorLogRecord.select()
    assert record.job_id == bad.id
    filler.unlink()
    route(tree)                 # a later run writes what was kept, with the failure's own time
    [written] = tree.config.paths.error_log.glob(f"*_job{bad.id}_bad.json.error.json")
    assert written.name == record.name and json.loads(written.read_text()) == json.loads(record.record)
    assert ErrorLogRecord.select().count() == 0


def test_a_file_that_cannot_reach_a_full_failed_folder_waits_with_its_real_reason(tree, db, tmpfs):
    tmpfs.mount(tree.failed, size="16k")
    filler = fill(tree.failed)
    drop_batch(tree, {"bad.json": b"[1, 2"})
    tree.run("scanner", "--once")
    log = route(tree)
    bad = job("bad.json")
    real = "invalid JSON: Expecting ',' delimiter at line 1 column 6"
    # It waits where it is; its reason stays the real one, and the place problem is beside it.
    assert (bad.state, bad.last_error) == ("detected", real)
    assert (tree.hot / "RANK" / "bad.json").exists()
    last = JobEvent.select().where(JobEvent.job == bad.id).order_by(JobEvent.id.desc()).first()
    assert "cannot" in last.detail and "FAILED" in last.detail and "No space left on device" in last.detail
    assert "RANK/bad.json waits: cannot" in log
    assert_good_routed(tree)
    filler.unlink()
    make_due("bad.json")
    route(tree)
    bad = job("bad.json")
    assert (bad.state, bad.failed_step, bad.last_error) == ("failed", "validate", real)
    sidecar = json.loads((tree.failed / "RANK" / (bad.failed_path.rsplit("/", 1)[1] + ".error.json")).read_text())
    assert sidecar["reason"] == real and not (tree.hot / "RANK" / "bad.json").exists()


def test_a_failed_move_whose_unlink_was_refused_is_finished_later(tree, db, immutable):
    """The link into FAILED was made but the original could not be removed: the next attempt
    finds its own link there and finishes, rather than waiting for ever on "file exists"."""
    drop_batch(tree, {"bad.json": b"{"})
    tree.run("scanner", "--once")
    client = tree.hot / "RANK"
    for client_name, name in GOOD:
        if client_name == "RANK":
            (client / name).rename(tree.root / name)
    immutable(client)
    route(tree)
    bad = job("bad.json")
    assert bad.state == "detected" and bad.failed_path and (client / "bad.json").exists()
    immutable(client, on=False)
    make_due("bad.json")
    route(tree)
    bad = job("bad.json")
    assert bad.state == "failed" and not (client / "bad.json").exists()
    assert open(bad.failed_path, "rb").read() == b"{"


# -- in-process: faults no file can cause ----------------------------------------------------------

def scan(tree, db) -> Jobs:
    jobs = Jobs(db, "test-router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    return jobs


def test_an_unexpected_error_with_one_job_fails_that_job_alone(tree, db, monkeypatch):
    drop_batch(tree, {"odd.json": job_document("RANK", "ODD")})
    jobs = scan(tree, db)
    real = rules.destinations

    def destinations(routes, facts):
        if facts.job_category == "ODD":
            raise KeyError("a defect met by one job")
        return real(routes, facts)
    monkeypatch.setattr(rules, "destinations", destinations)
    Router(tree.config, jobs).run(once=True)
    odd = job("odd.json")
    assert (odd.state, odd.failed_step) == ("failed", "validate")
    assert odd.last_error == "unexpected error: KeyError: 'a defect met by one job'"
    assert_good_routed(tree)


def test_a_lease_lost_between_the_two_commits_leaves_that_job_to_its_new_owner(tree, db, monkeypatch):
    drop_batch(tree, {"taken.json": job_document("RANK")})
    jobs = scan(tree, db)
    router = Router(tree.config, jobs)
    clean_up = router._clean_up

    def stolen(works):
        clean_up(works)             # then another router re-claims one job before phase D
        Job.update(lease_token="another-router").where(Job.file_name == "taken.json").execute()
    monkeypatch.setattr(router, "_clean_up", stolen)
    assert router.run_batch() == 4
    assert job("taken.json").state == "archived" and job("taken.json").lease_token == "another-router"
    assert_good_routed(tree)
    assert not jobs.has_due(ROUTE_QUEUE)


def test_a_job_whose_record_the_database_refuses_is_rolled_back_alone(tree, db, monkeypatch):
    drop_batch(tree, {"refused.json": job_document("RANK")})
    jobs = scan(tree, db)
    archived = jobs.archived

    def refuse(token, rows):
        if any(Job.get_by_id(a.job_id).file_name == "refused.json" for a in rows):
            jobs.db.run_sql("INSERT INTO jobs (id) VALUES (NULL)")      # a NOT NULL violation
        return archived(token, rows)
    monkeypatch.setattr(jobs, "archived", refuse)
    Router(tree.config, jobs).run_batch()
    refused = job("refused.json")
    assert refused.state == "detected" and refused.lease_token is not None    # claimed again later
    assert JobEvent.select().where(JobEvent.job == refused.id, JobEvent.to_state == "archived").count() == 0
    assert_good_routed(tree)
    # The batch was first recorded whole, then undone and recorded job by job: once each.
    for _, name in GOOD:
        assert JobEvent.select().where(JobEvent.job == job(name).id, JobEvent.to_state == "archived").count() == 1


def test_a_job_refused_after_its_audit_row_leaves_no_row_and_the_others_keep_theirs(tree, db, monkeypatch):
    drop_batch(tree, {"refused.json": job_document("RANK")})
    jobs = scan(tree, db)
    archived = jobs.archived

    def refuse(token, rows):
        archived(token, rows)
        if any(Job.get_by_id(a.job_id).file_name == "refused.json" for a in rows):
            jobs.db.run_sql("INSERT INTO jobs (id) VALUES (NULL)")      # a NOT NULL violation
    monkeypatch.setattr(jobs, "archived", refuse)
    Router(tree.config, jobs).run_batch()
    refused = job("refused.json")
    assert refused.state == "detected"
    assert [e.to_state for e in JobEvent.select().where(JobEvent.job == refused.id)] == ["detected"]
    assert_good_routed(tree)
    for _, name in GOOD:
        trail = [e.to_state for e in JobEvent.select().where(JobEvent.job == job(name).id).order_by(JobEvent.id)]
        assert trail == ["detected", "archived", "routed"]


def test_a_lease_found_lost_while_recording_leaves_that_job_and_records_the_others_once(tree, db, monkeypatch):
    drop_batch(tree, {"taken.json": job_document("RANK")})
    jobs = scan(tree, db)
    routed = jobs.routed

    def taken(token, rows):
        for job_id, _ in rows:
            if Job.get_by_id(job_id).file_name == "taken.json":
                raise LeaseLost(f"job {job_id} is no longer held")
        return routed(token, rows)
    monkeypatch.setattr(jobs, "routed", taken)
    assert Router(tree.config, jobs).run_batch() == 4
    assert job("taken.json").state == "archived"        # left to whoever holds it now
    assert_good_routed(tree)
    for _, name in GOOD:
        assert JobEvent.select().where(JobEvent.job == job(name).id, JobEvent.to_state == "routed").count() == 1
