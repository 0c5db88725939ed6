"""A place that goes away while jobs flow: the jobs wait, an alert goes out, they finish by themselves (docs/design.md#file-operations).

The places are real: an unmounted share is a missing folder with ``router.create_folders = false``;
a read-only or full destination is a small tmpfs remounted read-only or filled up (root ignores
permission bits, not EROFS or ENOSPC). The alert comes from the reporter, with time injected,
through a real SMTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import job_document, wait_for
from helpers.mounts import Tmpfs, fill
from pipeline.jobs import Jobs
from pipeline.store.models import Delivery, Job
from pipeline.reporter import Reporter
from pipeline.router import PLACE_BACKOFF_CAP, Router
from pipeline.scanner import Scanner
from test_reporter import parts

RANK, LOREAL, CELTRA = "Monday Rank", "CLIENT-STORES/LOREAL/IN", "Celtra - Create_Rename - Project_Design File"
STUCK_AFTER = 600
WHY = {"unmounted": "destination folder is missing (share not mounted?)", "read-only": "Read-only file system",
       "full": "No space left on device"}
# (client, name, JobCategory): the RANK jobs need Monday Rank; LOREAL's destination stays fine.
FILES = [("RANK", "a.json", "CELTRA"), ("RANK", "b.json", "PRODUCTION"), ("RANK", "c.json", "CELTRA"),
         ("LOREAL", "d.json", "CAMPAIGN")]


@pytest.fixture
def tmpfs():
    """Small filesystems mounted for the test, unmounted after it."""
    mounts = Tmpfs()
    yield mounts
    mounts.unmount_all()


def configure(tree, port: int, router: str = "") -> None:
    tree.write_config(router=router, extra=f"""
[smtp]
host = "127.0.0.1"
port = {port}
starttls = false
[alerts]
recipients = ["oncall@example.com"]
min_interval = 900
stuck_after = {STUCK_AFTER}
[report]
sender = "pipeline@example.com"
""")


def break_destination(tree, tmpfs, problem: str):
    """Make Monday Rank unusable in the way named; returns the function that brings it back."""
    monday = tree.dest(RANK)
    if problem == "unmounted":
        for folder in (tree.dest(LOREAL), tree.dest(CELTRA)):        # the mounted shares
            folder.mkdir(parents=True)
        return lambda: monday.mkdir(parents=True)                     # mounted again
    tmpfs.mount(monday)
    if problem == "read-only":
        tmpfs.read_only(monday)
        return lambda: tmpfs.read_only(monday, False)
    filler = fill(monday)
    return filler.unlink


def content(client: str, name: str, category: str) -> bytes:
    return json.dumps(job_document(client, category, Title=name)).encode()


def drop_all(tree) -> None:
    for client, name, category in FILES:
        tree.age(tree.drop(client, name, content(client, name, category)))


def waiting() -> list[Job]:
    return list(Job.select().where(Job.state.in_(["detected", "archived"])).order_by(Job.id))


def alerts_sent(inbox) -> list:
    return [m for m in inbox.messages if m["Subject"].startswith("Alert")]


@pytest.mark.parametrize("problem", ["unmounted", "read-only", "full"])
def test_a_destination_gone_bad_holds_its_jobs_alerts_after_stuck_after_and_they_flow_when_it_is_back(
        tree, db, clock, inbox, tmpfs, problem):
    configure(tree, inbox.port, router="create_folders = false" if problem == "unmounted" else "")
    bring_back = break_destination(tree, tmpfs, problem)
    monday = tree.dest(RANK)
    drop_all(tree)
    jobs = Jobs(db, "router:1", clock)
    Scanner(tree.config, jobs).scan("startup", "startup")
    router = Router(tree.config, jobs)
    reporter = Reporter(tree.config, db, "reporter:1", clock=clock)
    router.run(once=True)
    detected_at = clock.now

    # The RANK jobs wait, archived, with the place's reason; LOREAL's job is not held up.
    assert Job.get(Job.file_name == "d.json").state == "routed"
    reason = f"Monday Rank: {WHY[problem]} ({monday})"
    assert [(j.file_name, j.state, j.attempts, j.last_error) for j in waiting()] == [
        (name, "archived", 1, reason) for name in ("a.json", "b.json", "c.json")]
    celtra_copies = {n: os.stat(tree.dest(CELTRA) / n).st_ino for n in ("a.json", "c.json")}

    # They keep trying, backing off to the cap, and nobody is alerted before stuck_after ...
    while clock.now < detected_at + STUCK_AFTER + 1:
        clock.now = min(j.next_attempt_at for j in waiting())
        router.run(once=True)
        assert all(j.next_attempt_at - clock.now <= PLACE_BACKOFF_CAP for j in waiting())
        if clock.now < detected_at + STUCK_AFTER:
            reporter.run(once=True)
            assert alerts_sent(inbox) == []
    assert [j.state for j in waiting()] == ["archived"] * 3
    assert min(j.attempts for j in waiting()) >= 10

    # ... then once, listing every stuck job and why it waits.
    reporter.run(once=True)
    [alert] = alerts_sent(inbox)
    assert alert["Subject"].startswith("Alert: 3 stuck jobs")
    text, html = parts(alert)
    for name in ("a.json", "b.json", "c.json"):
        assert f"RANK/{name}  [archived]  {reason}" in text
        assert f"RANK/{name}" in html
    assert not monday.exists() or sorted(os.listdir(monday)) in ([], ["filler.bin"])   # nothing half-written
    assert Job.select().where(Job.state == "failed").count() == 0

    # The place is back: they finish by themselves at their next attempt; only Monday Rank is written.
    bring_back()
    clock.now = max(j.next_attempt_at for j in waiting())
    router.run(once=True)
    assert waiting() == [] and Job.select().where(Job.state == "routed").count() == 4
    for client, name, category in FILES[:3]:
        assert (monday / name).read_bytes() == content(client, name, category)
    assert {n: os.stat(tree.dest(CELTRA) / n).st_ino for n in celtra_copies} == celtra_copies
    assert Delivery.select().count() == 3 + 2 + 1                   # Monday Rank x3, Celtra x2, LOREAL x1
    assert tree.files(tree.hot) == []
    reporter.run(once=True)
    assert len(alerts_sent(inbox)) == 1                             # nothing new to say


def test_a_full_archive_keeps_the_file_in_the_hot_folder_until_there_is_room(tree, db, clock, tmpfs):
    tmpfs.mount(tree.store)
    filler = fill(tree.store)
    path = tree.drop("RANK", "a.json")
    jobs = Jobs(db, "router:1", clock)
    Scanner(tree.config, jobs).scan("startup", "startup")
    router = Router(tree.config, jobs)
    router.run(once=True)
    job = Job.get()
    assert (job.state, job.attempts) == ("detected", 1)
    assert job.last_error == f"cannot write the archive copy {tree.store / 'RANK' / 'a.json'}: No space left on device"
    assert path.exists()                                             # the only copy stays where it was
    filler.unlink()
    clock.advance(2)
    router.run(once=True)
    assert Job.get().state == "routed" and not path.exists()
    assert json.loads((tree.store / "RANK" / "a.json").read_text()) == job_document("RANK")


def test_with_the_real_router_running_a_full_destination_holds_its_jobs_until_space_is_freed(tree, db, tmpfs):
    monday = tmpfs.mount(tree.dest(RANK))
    filler = fill(monday)
    drop_all(tree)
    tree.run("scanner", "--once")
    router = tree.spawn("router")
    try:
        wait_for(lambda: "waits: Monday Rank: No space left on device" in tree.logs("router"),
                 message="the router to report the full destination")
        wait_for(lambda: Job.get(Job.file_name == "d.json").state == "routed", message="the LOREAL job")
        assert {j.state for j in waiting()} == {"archived"}
        assert os.listdir(monday) == ["filler.bin"]                  # no temporary left on the full disk
        filler.unlink()
        wait_for(lambda: Job.select().where(Job.state == "routed").count() == 4, timeout=30,
                 message="the jobs to flow on by themselves")
        router.send_signal(signal.SIGTERM)
        assert router.wait(20) == 0
    finally:
        if router.poll() is None:
            router.kill()
            router.wait(10)
    for client, name, category in FILES[:3]:
        assert (monday / name).read_bytes() == content(client, name, category)
    assert tree.files(tree.hot) == [] and Job.select().where(Job.state == "failed").count() == 0
    assert "Traceback" not in tree.logs("router")
