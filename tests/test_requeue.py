"""bin/requeue --failed: failed jobs go back where they failed, and then finish (docs/design.md#operating-it)."""

import hashlib
import json
import os
import subprocess

import pytest

from helpers.api_server import ApiServer
from conftest import BIN, FakeClock, job_document, states
from pipeline.jobs import Jobs
from pipeline.store.models import Job, JobEvent
from pipeline.notifier import Notifier
from pipeline.requeue import HOLD
from pipeline.router import Router
from pipeline.scanner import Scanner


@pytest.fixture
def api():
    server = ApiServer()
    yield server
    server.close()


def configure(tree, api, router: str = "") -> None:
    tree.write_config(f'[api]\nendpoint = "{api.url}"\n', router=router, detect="min_file_age = 0.05\n")


def work(tree, db, clock=None) -> None:
    """One pass of the scanner, the router and the notifier, in-process."""
    jobs = Jobs(db, "test:1", clock) if clock else Jobs(db, "test:1")
    Scanner(tree.config, jobs).scan("periodic", "periodic")
    Router(tree.config, jobs).run(once=True)
    Notifier(tree.config, jobs).run(once=True)


def requeue(tree, *args: str) -> subprocess.CompletedProcess:
    return tree.run("requeue", "--failed", *args)


def job_named(name: str) -> Job:
    return Job.get(Job.file_name == name)


def snapshot(tree, db) -> tuple:
    rows = db.run_sql("SELECT * FROM jobs ORDER BY id").fetchall()
    events = db.run_sql("SELECT count(*) FROM job_events").fetchone()
    return rows, events, tree.files(tree.hot), tree.files(tree.failed)


def fail_one_of_each(tree, db, api) -> dict[str, Job]:
    """Jobs failed at validate, archive, route, notify and detect, the way they fail in production."""
    configure(tree, api, router='conflict = "fail"\nmax_attempts = 1')
    api.answer = lambda request: 404
    tree.drop("RANK", "bad.json", {"JobSpecification": {"JobDetails": {"JobCategory": "X"}}})
    tree.drop("RANK", "notify.json")
    tree.drop("RANK", "route.json")
    (tree.dest("Monday Rank")).mkdir(parents=True)
    (tree.dest("Monday Rank") / "route.json").write_text("{}")        # a different file: conflict
    tree.drop("BISSELL", "archive.json")
    tree.store.mkdir(parents=True)
    (tree.store / "BISSELL").write_text("in the way")                  # the archive folder cannot exist
    gone = tree.drop("LOREAL", "detect.json")
    for path in tree.hot.rglob("*.json"):
        tree.age(path)
    jobs = Jobs(db, "test:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    os.unlink(gone)                                                    # vanishes before the router reads it
    Router(tree.config, jobs).run(once=True)
    Notifier(tree.config, jobs).run(once=True)
    failed = {j.failed_step: j for j in Job.select()}
    assert states(db) == {"failed": 5} and set(failed) == {"validate", "archive", "route", "notify", "detect"}
    return failed


def test_a_mix_of_failures_goes_back_where_each_failed_and_then_finishes(tree, db, api):
    failed = fail_one_of_each(tree, db, api)
    bad = failed["validate"]
    moved = tree.failed / "RANK" / os.path.basename(bad.failed_path)
    assert moved.exists() and moved.with_name(moved.name + ".error.json").exists()
    # The operator mends what went wrong.
    moved.write_text(json.dumps(job_document("RANK")))
    os.unlink(tree.dest("Monday Rank") / "route.json")
    os.unlink(tree.store / "BISSELL")
    api.answer = lambda request: 200

    before = snapshot(tree, db)
    dry = requeue(tree, "--dry-run")
    assert snapshot(tree, db) == before
    assert len(dry.stdout.splitlines()) == 6
    assert f"job {bad.id} RANK/bad.json (failed at validate): would go back to detected;" in dry.stdout
    assert dry.stdout.splitlines()[-1] == "would requeue 4 of 5 failed jobs, 1 skipped (dry run: nothing changed)"

    proc = requeue(tree)
    lines = proc.stdout.splitlines()
    assert len(lines) == 6
    said = {step: next(line for line in lines if line.startswith(f"job {job.id} ")) for step, job in failed.items()}
    assert said["notify"].endswith("went back to routed; the notifier tries again with a fresh budget of attempts")
    assert said["route"].endswith("went back to archived; the router makes the missing copies from the archive")
    assert said["archive"].endswith("went back to detected; the router takes the file from the hot folder again")
    assert said["validate"].endswith(f"went back to detected; {moved} moved back to {tree.hot / 'RANK' / 'bad.json'}")
    assert "skipped: nothing to put back" in said["detect"]
    assert lines[-1] == "requeued 4 of 5 failed jobs, 1 skipped"

    assert {j.file_name: j.state for j in Job.select()} == {
        "bad.json": "detected", "archive.json": "detected", "route.json": "archived", "notify.json": "routed",
        "detect.json": "failed"}
    for step in ("validate", "archive", "route", "notify"):
        job = Job.get_by_id(failed[step].id)
        assert (job.attempts, job.claims, job.failed_step, job.failed_at, job.last_error, job.lease_token) == (
            0, 0, None, None, None, None)
        [event] = JobEvent.select().where(JobEvent.job == job.id, JobEvent.from_state == "failed")
        assert event.to_state == job.state and event.actor.startswith("requeue@")
        assert event.detail.startswith(f"requeued after failing at {step}")
    # The invalid file is back in its hot folder as the job's own file; FAILED is empty.
    back = tree.hot / "RANK" / "bad.json"
    job = Job.get_by_id(bad.id)
    st = back.stat()
    assert (job.source_path, job.inode, job.device, job.size, job.mtime_ns, job.ctime_ns, job.failed_path) == (
        str(back), st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, None)
    assert tree.files(tree.failed) == []
    assert tree.files(tree.hot) == ["BISSELL/archive.json", "RANK/bad.json"]      # no temporaries left

    work(tree, db)                      # the scan sees bad.json again: no second job for it
    assert Job.select().count() == 5
    assert {j.file_name: j.state for j in Job.select()} == {
        "bad.json": "notified", "archive.json": "notified", "route.json": "notified", "notify.json": "notified",
        "detect.json": "failed"}
    assert (tree.dest("Monday Rank") / "route.json").read_text() == json.dumps(job_document("RANK"))
    assert tree.files(tree.hot) == []


def test_the_filters_choose_by_id_client_step_and_failure_time(tree, db, api):
    configure(tree, api)
    api.answer = lambda request: 404
    clock = FakeClock()                                    # 2027-01-15 08:00 UTC
    for client, name in [("RANK", "r1.json"), ("rank", "r2.json"), ("BISSELL", "b1.json")]:
        tree.age(tree.drop(client.upper(), name, folder=client))
    work(tree, db, clock)
    clock.advance(86400)
    tree.age(tree.drop("LOREAL", "l1.json"))
    work(tree, db, clock)
    assert states(db) == {"failed": 4}
    ids = {j.file_name: j.id for j in Job.select()}

    def chosen(*args):
        lines = requeue(tree, "--dry-run", *args).stdout.splitlines()
        return sorted(line.split()[2] for line in lines[:-1]) if len(lines) > 1 else lines

    assert chosen("--client", "Rank") == ["RANK/r1.json", "rank/r2.json"]
    assert chosen("--id", str(ids["r1.json"]), "--id", str(ids["b1.json"])) == ["BISSELL/b1.json", "RANK/r1.json"]
    assert chosen("--since", "2027-01-16") == ["LOREAL/l1.json"]
    assert chosen("--since", "2027-01-15T08:00:00+00:00", "--client", "BISSELL") == ["BISSELL/b1.json"]
    assert chosen("--step", "notify", "--client", "LOREAL") == ["LOREAL/l1.json"]
    assert chosen("--step", "validate") == ["nothing to requeue"]
    assert states(db) == {"failed": 4}                   # dry runs all along

    proc = requeue(tree, "--client", "loreal")
    assert proc.stdout.splitlines()[-1] == "requeued 1 of 1 failed jobs"
    assert states(db) == {"failed": 3, "routed": 1}


def test_nothing_to_requeue_says_so_and_exits_0(tree, db):
    proc = requeue(tree)
    assert (proc.returncode, proc.stdout) == (0, "nothing to requeue\n")


def test_a_file_already_back_in_the_hot_folder_is_not_overwritten(tree, db, api):
    configure(tree, api)
    tree.age(tree.drop("RANK", "bad.json", "not json"))
    work(tree, db)
    job = job_named("bad.json")
    newer = tree.drop("RANK", "bad.json", job_document("RANK"))          # upstream sent it again
    proc = requeue(tree)
    assert f"skipped: {newer} already exists and is not overwritten" in proc.stdout
    assert newer.read_text() == json.dumps(job_document("RANK"))
    assert os.path.exists(job.failed_path) and Job.get_by_id(job.id).state == "failed"


def test_a_file_gone_from_failed_is_skipped(tree, db, api):
    configure(tree, api)
    tree.age(tree.drop("RANK", "bad.json", "not json"))
    work(tree, db)
    os.unlink(job_named("bad.json").failed_path)
    proc = requeue(tree)
    assert "skipped: its file is no longer in FAILED" in proc.stdout
    assert states(db) == {"failed": 1}


def test_a_requeue_killed_before_the_file_is_in_place_leaves_a_job_that_still_finishes(tree, db, api, monkeypatch):
    configure(tree, api)
    clock = FakeClock()
    tree.age(tree.drop("RANK", "bad.json", "not json"))
    work(tree, db, clock)
    job = job_named("bad.json")
    failed_copy = job.failed_path
    with open(failed_copy, "w") as f:
        f.write(json.dumps(job_document("RANK")))

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    from pipeline import requeue as requeue_module
    monkeypatch.setattr(requeue_module.os, "link", killed)              # SIGKILL just after the commit
    with pytest.raises(Killed):
        requeue_module.Requeue(tree.config, Jobs(db, "requeue:1", clock)).job(job)
    monkeypatch.undo()
    [hidden] = [name for name in tree.files(tree.hot)]
    assert hidden.startswith("RANK/.bad.json.requeue-")
    work(tree, db, clock)
    assert Job.get_by_id(job.id).state == "detected"                     # leased to the dead requeue
    clock.advance(HOLD)
    work(tree, db, clock)
    assert Job.select().count() == 1
    assert Job.get_by_id(job.id).state == "notified"                     # from the hidden copy
    assert (tree.store / "RANK" / "bad.json").read_text() == json.dumps(job_document("RANK"))
    assert tree.files(tree.hot) == []


def test_a_file_dropped_while_requeue_moves_one_back_is_not_clobbered(tree, db, monkeypatch):
    tree.write_config(detect="min_file_age = 0.05\n")                  # no API: routed is final
    tree.age(tree.drop("RANK", "bad.json", "not json"))
    work(tree, db)
    job = job_named("bad.json")
    mended = json.dumps(job_document("RANK", Title="mended"))
    with open(job.failed_path, "w") as f:
        f.write(mended)
    upstream = json.dumps(job_document("RANK", Title="dropped meanwhile"))
    from pipeline import requeue as requeue_module
    real_link = os.link

    def link_after_a_drop(src, dst, **kwargs):
        monkeypatch.undo()
        tree.drop("RANK", "bad.json", upstream)
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(requeue_module.os, "link", link_after_a_drop)
    done, line = requeue_module.Requeue(tree.config, Jobs(db, "requeue:1")).job(job)
    assert done and "could not be created, so the job goes on from its copy" in line
    assert (tree.hot / "RANK" / "bad.json").read_text() == upstream
    requeued = Job.get_by_id(job.id)
    assert (requeued.state, requeued.lease_token) == ("detected", None)
    assert os.path.basename(requeued.source_path).startswith(".bad.json.requeue-")
    assert tree.files(tree.failed) == []
    work(tree, db)                     # both go through: the requeued job from its copy, the new drop as its own
    assert states(db) == {"routed": 2}
    assert sorted(j.sha256 for j in Job.select()) == sorted(
        hashlib.sha256(text.encode()).hexdigest() for text in (mended, upstream))
    assert tree.files(tree.hot) == []


def test_a_job_requeued_meanwhile_is_not_requeued_twice(tree, db, api):
    configure(tree, api)
    api.answer = lambda request: 404
    tree.age(tree.drop("RANK", "a.json"))
    work(tree, db)
    job = job_named("a.json")
    jobs = Jobs(db, "requeue:1")
    with jobs.transaction():
        assert jobs.requeue(job.id, "notify", "first") is True
    with jobs.transaction():
        assert jobs.requeue(job.id, "notify", "second") is False
    assert JobEvent.select().where(JobEvent.job == job.id, JobEvent.from_state == "failed").count() == 1


def test_a_bad_since_is_a_usage_error(tree, db):
    proc = tree.run("requeue", "--failed", "--since", "yesterday", check=False)
    assert proc.returncode == 2
    assert "expected an ISO date" in proc.stderr


def test_help():
    proc = subprocess.run([str(BIN / "requeue"), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--failed", "--id", "--client", "--step", "--since", "--dry-run"):
        assert option in proc.stdout


def test_a_file_with_a_name_near_the_limit_goes_back_too(tree, db):
    name = "x" * 240 + ".json"                        # 245 bytes: the FAILED name is shortened
    tree.drop("RANK", name, "{broken")
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    job = Job.get()
    assert job.state == "failed" and job.failed_step == "validate"
    (tree.failed / "RANK" / os.path.basename(job.failed_path)).write_text(json.dumps(job_document("RANK")))
    out = requeue(tree, "--failed", "--id", str(job.id)).stdout
    assert "went back to detected" in out
    assert (tree.hot / "RANK" / name).exists()
    tree.run("router", "--once")
    assert Job.get().state == "routed" and (tree.store / "RANK" / name).exists()
