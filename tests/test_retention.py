"""Retention of the files the pipeline leaves behind: archive copies, FAILED files with their
sidecars, error-log files. Off by default; run by the reporter's maintenance after the daily
report; removes only what the job table says is finished, and only the exact file a job recorded."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from pathlib import Path

import pytest

from conftest import FakeClock, job_document
from pipeline import config as config_module, retention
from pipeline.jobs import Jobs
from pipeline.reporter import Reporter
from pipeline.router import Router
from pipeline.scanner import Scanner
from pipeline.store.models import Job, JobEvent

DAY = 86400
ROUTES = '''
[[route]]
name = "Rank"
clients = ["RANK"]
to = "dest/Rank"

[[route]]
name = "By desk"
clients = ["LOREAL"]
to = "dest/Desks/{field:JobSpecification.JobDetails.Desk}"

[[route]]
name = "Bissell"
clients = ["BISSELL"]
to = "dest/missing/Bissell"
'''


def configure(tree, report: str = "", extra: str = "", retention_days: int = 90) -> None:
    """The tree with ROUTES; BISSELL's destination is never there (create_folders is off), so its
    jobs wait, archived, in flight."""
    (tree.root / "dest" / "Rank").mkdir(parents=True, exist_ok=True)
    (tree.root / "dest" / "Desks").mkdir(parents=True, exist_ok=True)
    tree.write_config(routes=ROUTES, router="create_folders = false\n",
                      extra=f"[report]\nretention_days = {retention_days}\n{report}\n{extra}")


def route(tree, db, *drops: tuple[str, str, object]) -> None:
    """Drop (client, name, content) files and route them with the real scanner and router."""
    for client, name, content in drops:
        tree.age(tree.drop(client, name, content))      # settled: older than detect.incomplete_grace
    jobs = Jobs(db, "test-router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)


def age(db, days: float, *names: str) -> None:
    """Make the jobs of these file names look finished ``days`` ago."""
    for name in names:
        db.run_sql("UPDATE jobs SET updated_at = updated_at - ? WHERE file_name = ?", (days * DAY, name))


def job(name: str) -> Job:
    return Job.select().where(Job.file_name == name).order_by(Job.id.desc()).get()


def maintain(tree, db, caplog, now: float | None = None) -> str:
    """Run the reporter's maintenance; returns its one retention line about files."""
    now = time.time() if now is None else now
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        Reporter(tree.config, db, "reporter:1", clock=FakeClock(now)).maintain(now)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("file retention:")]
    assert len(lines) <= 1, lines
    return lines[0] if lines else ""


def test_the_retentions_are_off_by_default_and_nothing_is_removed(tree, db, caplog):
    configure(tree)
    assert (tree.config.report.archive_retention_days, tree.config.report.failed_retention_days,
            tree.config.report.error_log_retention_days) == (0, 0, 0)
    route(tree, db, ("RANK", "done.json", job_document("RANK")), ("RANK", "bad.json", "{"))
    age(db, 80, "done.json", "bad.json")
    before = tree.files(tree.root)
    assert maintain(tree, db, caplog) == ""
    assert tree.files(tree.root) == before
    assert job("done.json").archive_path and job("bad.json").failed_path


def test_archive_copies_of_finished_jobs_past_the_retention_go_and_nothing_else(tree, db, caplog, monkeypatch):
    monkeypatch.setattr(retention, "CHUNK", 3)                            # several chunks, each row once
    configure(tree, "archive_retention_days = 30\n")
    route(tree, db, ("RANK", "done.json", job_document("RANK")),
          ("RANK", "recent.json", job_document("RANK")),
          ("LOREAL", "no-desk.json", job_document("LOREAL")),              # fails at route: archive kept
          ("BISSELL", "waiting.json", job_document("BISSELL")),            # archived, waits for its place
          ("RANK", "bad.json", "{"),                                       # FAILED: not an archive copy
          ("RANK", "twice.json", job_document("RANK", Title="first")),
          ("RANK", "replaced.json", job_document("RANK")),
          ("RANK", "linked.json", job_document("RANK")),
          ("OLIVER", "moved.json", job_document("OLIVER")))                  # no rule: archived only
    route(tree, db, ("RANK", "twice.json", job_document("RANK", Title="second, still recent")))
    assert (job("no-desk.json").state, job("waiting.json").state) == ("failed", "archived")
    age(db, 31, "done.json", "no-desk.json", "waiting.json", "bad.json", "replaced.json", "linked.json",
        "moved.json")
    age(db, 31, "twice.json")                                             # both jobs: the second one...
    db.run_sql("UPDATE jobs SET updated_at = ? WHERE id = ?", (time.time(), job("twice.json").id))  # ...is recent
    store = tree.store
    (store / "RANK" / "replaced.json").write_text("another file now")    # not the copy the job made
    outside = tree.root / "outside.json"
    outside.write_text("not ours")
    (store / "RANK" / "linked.json").unlink()
    (store / "RANK" / "linked.json").symlink_to(outside)                  # never followed, never removed
    elsewhere = tree.root / "elsewhere"
    (store / "OLIVER").rename(elsewhere)
    (store / "OLIVER").symlink_to(elsewhere)                              # the copy, behind a link: left
    (store / "RANK" / "stray.json").write_text("{}")                      # a file the table does not know
    os.utime(store / "RANK" / "stray.json", (time.time() - 99 * DAY,) * 2)

    line = maintain(tree, db, caplog)
    assert line == ("file retention: archive copies older than 30 days: 2 removed, "
                    "4 left (not the job's copy)")
    assert tree.files(store) == ["BISSELL/waiting.json", "RANK/linked.json", "RANK/recent.json",
                                 "RANK/replaced.json", "RANK/stray.json", "RANK/twice.json"]
    assert (store / "OLIVER").is_symlink() and (elsewhere / "moved.json").exists()
    assert (store / "RANK" / "linked.json").is_symlink() and outside.read_text() == "not ours"
    assert json.loads((store / "RANK" / "twice.json").read_text())["JobSpecification"]["JobDetails"]["Title"] \
        == "second, still recent"
    # The copies in the destinations are the next application's: never touched.
    assert tree.files(tree.root / "dest" / "Rank") == sorted(["done.json", "recent.json", "twice.json",
                                                               "replaced.json", "linked.json"])
    # The table forgets what it no longer holds, and says so in the job's history.
    for name in ("done.json", "no-desk.json", "replaced.json", "linked.json", "moved.json"):
        assert job(name).archive_path is None, name
    first_twice = Job.select().where(Job.file_name == "twice.json").order_by(Job.id).first()
    assert first_twice.archive_path is None and job("twice.json").archive_path == str(store / "RANK/twice.json")
    assert job("waiting.json").archive_path and job("recent.json").archive_path
    assert job("bad.json").failed_path and Path(job("bad.json").failed_path).exists()
    done = job("done.json")
    [event] = JobEvent.select().where(JobEvent.job == done.id, JobEvent.detail.contains("retention"))
    assert (event.from_state, event.to_state) == ("routed", "routed")
    assert event.detail == (f"archive copy {store / 'RANK/done.json'} removed: older than 30 days "
                            "(report.archive_retention_days)")
    [event] = JobEvent.select().where(JobEvent.job == job("replaced.json").id, JobEvent.detail.contains("retention"))
    assert event.detail == (f"archive copy {store / 'RANK/replaced.json'} not removed: what is there is not "
                            "this job's copy (report.archive_retention_days)")

    # Idempotent: a second run finds nothing more to do.
    assert maintain(tree, db, caplog) == "file retention: archive copies older than 30 days: 0 removed"


def test_with_an_api_a_routed_job_is_not_finished_and_keeps_its_archive_copy(tree, db, caplog):
    configure(tree, "archive_retention_days = 30\n", '[api]\nendpoint = "http://127.0.0.1:9/jobs"\n')
    route(tree, db, ("RANK", "routed.json", job_document("RANK")), ("RANK", "notified.json", job_document("RANK")))
    db.run_sql("UPDATE jobs SET state = 'notified' WHERE file_name = 'notified.json'")
    age(db, 31, "routed.json", "notified.json")
    assert maintain(tree, db, caplog) == "file retention: archive copies older than 30 days: 1 removed"
    assert tree.files(tree.store) == ["RANK/routed.json"]


def test_failed_files_and_their_sidecars_go_only_for_failed_jobs_past_the_retention(tree, db, caplog):
    configure(tree, "failed_retention_days = 60\n")
    route(tree, db, ("RANK", "old.json", "{"), ("RANK", "recent.json", "{"), ("RANK", "changed.json", "{"),
          ("RANK", "gone.json", "{"), ("RANK", "done.json", job_document("RANK")))
    age(db, 61, "old.json", "changed.json", "gone.json", "done.json")
    changed = Path(job("changed.json").failed_path)
    changed.write_text('{"fixed": "by hand, not yet requeued"}')         # not the file the job moved there
    gone = Path(job("gone.json").failed_path)
    gone.unlink()                                                         # removed by hand, sidecar left
    old = Path(job("old.json").failed_path)

    line = maintain(tree, db, caplog)
    assert line == ("file retention: FAILED files older than 60 days: 1 removed, 1 already gone, "
                    "1 left (not the job's copy)")
    names = tree.files(tree.failed)
    assert old.name not in str(names) and not Path(str(old) + ".error.json").exists()
    assert not Path(str(gone) + ".error.json").exists()                   # its sidecar goes with it
    assert changed.exists() and Path(str(changed) + ".error.json").exists()
    recent = Path(job("recent.json").failed_path)
    assert sorted(names) == sorted([f"RANK/{p.name}" for p in (changed, recent)] +
                                   [f"RANK/{p.name}.error.json" for p in (changed, recent)])
    assert (job("old.json").failed_path, job("gone.json").failed_path, job("changed.json").failed_path) == \
        (None, None, None)
    assert job("recent.json").failed_path == str(recent)
    assert (tree.store / "RANK" / "done.json").exists()                   # archive retention is off


def test_error_log_files_go_by_the_time_in_their_name_or_else_their_mtime(tree, db, caplog):
    configure(tree, "error_log_retention_days = 14\n")
    route(tree, db, ("RANK", "bad.json", "{"))
    folder = tree.config.paths.error_log
    [fresh] = folder.iterdir()                                            # written by the router just now
    old_stamp = dt.datetime.fromtimestamp(time.time() - 15 * DAY, dt.timezone.utc).strftime("%Y%m%d_%H%M%S")
    named_old = folder / f"{old_stamp}_job7_a.json.error.json"
    named_old.write_text("{}")                                            # written late: a new mtime
    unnamed_old = folder / "by-hand.error.json"
    unnamed_old.write_text("{}")
    os.utime(unnamed_old, (time.time() - 15 * DAY,) * 2)
    unnamed_new = folder / "by-hand-today.error.json"
    unnamed_new.write_text("{}")
    other = folder / "notes.txt"                                          # not an error-log file
    other.write_text("keep")
    os.utime(other, (time.time() - 99 * DAY,) * 2)
    target = tree.root / "target.error.json"
    target.write_text("{}")
    link = folder / f"{old_stamp}_job8_b.json.error.json"
    link.symlink_to(target)                                               # never followed nor removed
    (folder / f"{old_stamp}_sub.error.json").mkdir()

    assert maintain(tree, db, caplog) == "file retention: error-log files older than 14 days: 2 removed"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [fresh.name, unnamed_new.name, other.name, link.name, f"{old_stamp}_sub.error.json"])
    assert target.exists()
    assert maintain(tree, db, caplog) == "file retention: error-log files older than 14 days: 0 removed"


def test_a_file_that_cannot_be_removed_keeps_its_job_until_it_can(tree, db, caplog, tmpfs):
    """The table never forgets a file it is to remove: a job whose archive copy cannot be removed
    (its disk read-only) outlives retention_days, and goes the night its copy does."""
    tmpfs.mount(tree.root / "store", "1m")
    configure(tree, "archive_retention_days = 30\n", retention_days=30)
    route(tree, db, ("RANK", "a.json", job_document("RANK")), ("RANK", "b.json", job_document("RANK")))
    age(db, 31, "a.json", "b.json")
    tmpfs.read_only(tree.root / "store")
    line = maintain(tree, db, caplog)
    assert line.startswith("file retention: archive copies older than 30 days: 0 removed, 2 could not be "
                           f"removed (first: {tree.store / 'RANK/a.json'}: Read-only file system)")
    assert [j.file_name for j in Job.select().order_by(Job.id)] == ["a.json", "b.json"]   # kept: they hold a file
    tmpfs.read_only(tree.root / "store", False)
    assert maintain(tree, db, caplog) == "file retention: archive copies older than 30 days: 2 removed"
    assert Job.select().count() == 0 and tree.files(tree.store) == []


def test_a_crash_after_removing_files_is_finished_by_the_next_run(tree, db, caplog, monkeypatch):
    """Files are removed before the rows forget them: a reporter killed in between leaves rows whose
    files are already gone, which the next run takes as done."""
    configure(tree, "archive_retention_days = 30\nfailed_retention_days = 30\n")
    route(tree, db, ("RANK", "a.json", job_document("RANK")), ("RANK", "bad.json", "{"))
    age(db, 31, "a.json", "bad.json")
    failed = Path(job("bad.json").failed_path)
    (tree.store / "RANK" / "a.json").unlink()
    failed.unlink()                                                       # as a crash would leave them
    line = maintain(tree, db, caplog)
    assert line == ("file retention: archive copies older than 30 days: 0 removed, 1 already gone; "
                    "FAILED files older than 30 days: 0 removed, 1 already gone")
    assert not Path(str(failed) + ".error.json").exists()
    assert Job.select().count() == 2 and job("a.json").archive_path is None and job("bad.json").failed_path is None


def test_the_report_runs_the_retention_once_a_day_after_the_report(tree, db, caplog):
    """Through the reporter's own loop: the day's report is recorded, then the files go."""
    configure(tree, "archive_retention_days = 1\nerror_log_retention_days = 1\n")
    route(tree, db, ("RANK", "a.json", job_document("RANK")), ("RANK", "bad.json", "{"))
    now = time.time()
    Reporter(tree.config, db, "reporter:1", clock=FakeClock(now)).run(once=True)     # today's row: not due yet
    assert (tree.store / "RANK" / "a.json").exists()
    later = now + 3 * DAY
    with caplog.at_level(logging.INFO, logger="pipeline"):
        Reporter(tree.config, db, "reporter:1", clock=FakeClock(later)).run(once=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("file retention:")]
    assert lines == ["file retention: archive copies older than 1 day: 1 removed; "
                     "error-log files older than 1 day: 1 removed"]
    assert tree.files(tree.store) == [] and tree.files(tree.config.paths.error_log) == []


@pytest.mark.parametrize("key", ["archive_retention_days", "failed_retention_days", "error_log_retention_days"])
@pytest.mark.parametrize("value, message", [(-1, "expected a whole number of at least 0, got -1"),
                                            (1.5, "expected a whole number of at least 0, got 1.5"),
                                            ('"30"', "expected a whole number of at least 0, got '30'"),
                                            ("true", "expected a whole number of at least 0, got True")])
def test_a_bad_retention_is_a_config_error_naming_the_key(tmp_path, key, value, message):
    path = tmp_path / "p.toml"
    path.write_text(f"[report]\n{key} = {value}\n")
    with pytest.raises(config_module.ConfigError) as e:
        config_module.load(path)
    assert str(e.value) == f"{path}: [report] {key}: {message}"
