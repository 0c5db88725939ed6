"""Order per key: router.order_by (docs/design.md#order-per-key). Jobs with one value are routed in
detection order across routers; other values flow in parallel; a job without the value is
unordered; a settled earlier job (routed or failed) lets the next one go."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from conftest import ROOT, job_document, wait_for
from pipeline import health, router as router_module
from pipeline.commands.status import render_text
from pipeline.jobs import Jobs
from pipeline.reporting import alerts
from pipeline.router import Router
from pipeline.scanner import Scanner
from pipeline.states import ROUTE_QUEUE
from pipeline.store.models import Job

ORDER_BY = 'order_by = "JobSpecification.JobDetails.JobNumber"\n'
CAUSE_UNREAD = "waiting for earlier jobs to be read (job #{}: its JobNumber is not known yet)"


@pytest.fixture
def ordered(tree):
    tree.write_config(router=ORDER_BY)
    return tree


@pytest.fixture(autouse=True)
def short_read_wait(monkeypatch):
    """A batch looks again for other routers' keys for a second; here, where the other router is
    the test itself, a moment is enough."""
    monkeypatch.setattr(router_module, "ORDER_READ_WAIT", 0.05)


def drop(tree, name: str, number: str | None, client: str = "RANK", age: float = 60) -> None:
    extra = {} if number is None else {"JobNumber": number}
    tree.age(tree.drop(client, name, job_document(client, **extra)), age)


def detect(tree, jobs: Jobs) -> None:
    Scanner(tree.config, jobs).scan("startup", "startup")


def job(name: str) -> Job:
    return Job.get(Job.file_name == name)


def events(job_id: int) -> list[str]:
    return [d for (d,) in Job._meta.database.run_sql(
        "SELECT detail FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))]


def routed_order(db) -> list[int]:
    return [i for (i,) in db.run_sql("SELECT job_id FROM job_events WHERE to_state = 'routed' ORDER BY id")]


def test_jobs_of_one_key_are_routed_in_detection_order_across_two_routers(ordered, db, clock):
    drop(ordered, "5903771.json", "5903771", age=60)
    drop(ordered, "5903771_rev1.json", "5903771", age=50)
    a, b = Jobs(db, "router-a:1", clock), Jobs(db, "router-b:2", clock)
    detect(ordered, a)
    first, second = job("5903771.json").id, job("5903771_rev1.json").id
    assert first < second                       # detection order is id order
    held = a.claim(ROUTE_QUEUE, 1, 60)          # router A holds the first and has not read it yet
    assert [j.id for j in held.jobs] == [first]

    Router(ordered.config, b).run_batch()       # router B takes the revision
    revision = job("5903771_rev1.json")
    assert (revision.state, revision.attempts, revision.claims) == ("detected", 0, 0)
    assert revision.last_error == CAUSE_UNREAD.format(first) and revision.waits_after == first
    assert (ordered.hot / "RANK" / "5903771_rev1.json").exists()
    assert not (ordered.store / "RANK" / "5903771_rev1.json").exists()      # nothing copied

    a.order(held.token, [(first, "5903771")])   # A has read it: its key is known to every router
    clock.advance(5)
    Router(ordered.config, b).run_batch()
    revision = job("5903771_rev1.json")
    assert revision.last_error == f"after job #{first} with the same JobNumber 5903771"
    assert events(second)[-1] == f"waits in order: after job #{first} with the same JobNumber 5903771"

    a.release(held.token, [first])              # A gives it back (say it stopped); a router routes both
    clock.advance(5)
    Router(ordered.config, b).run(once=True)
    clock.advance(5)
    Router(ordered.config, b).run(once=True)
    assert routed_order(db) == [first, second]
    assert job("5903771_rev1.json").waits_after is None


def test_the_next_job_of_a_key_is_due_as_soon_as_the_earlier_one_is_routed(ordered, db, clock):
    drop(ordered, "5903771.json", "5903771", age=60)
    drop(ordered, "5903771_rev1.json", "5903771", age=50)
    a, b = Jobs(db, "router-a:1", clock), Jobs(db, "router-b:2", clock)
    detect(ordered, a)
    first, second = job("5903771.json").id, job("5903771_rev1.json").id
    held = a.claim(ROUTE_QUEUE, 1, 60)
    a.order(held.token, [(first, "5903771")])
    Router(ordered.config, b).run_batch()
    assert job("5903771_rev1.json").next_attempt_at > clock.now     # held back, due a moment later

    a.release(held.token, [first])
    clock.advance(0.01)
    Router(ordered.config, b).run_batch()       # routes the first: the revision is due at once
    assert job("5903771.json").state == "routed"
    assert job("5903771_rev1.json").next_attempt_at == clock.now
    Router(ordered.config, b).run_batch()       # the clock has not moved
    assert routed_order(db) == [first, second]


def test_other_keys_flow_while_a_key_waits_and_a_missing_field_is_unordered(ordered, db, clock):
    drop(ordered, "a1.json", "A", age=60)
    drop(ordered, "a2.json", "A", age=50)
    drop(ordered, "b1.json", "B", age=40)
    drop(ordered, "none.json", None, age=30)
    a, b = Jobs(db, "router-a:1", clock), Jobs(db, "router-b:2", clock)
    detect(ordered, a)
    held = a.claim(ROUTE_QUEUE, 1, 60)
    a.order(held.token, [(job("a1.json").id, "a")])     # A holds a1, read

    Router(ordered.config, b).run_batch()
    assert job("a2.json").state == "detected"
    assert job("a2.json").last_error == f"after job #{job('a1.json').id} with the same JobNumber A"
    assert job("b1.json").state == "routed" and job("none.json").state == "routed"
    assert events(job("none.json").id)[-1].endswith(
        "; original removed; unordered: JobSpecification.JobDetails.JobNumber is missing")
    assert job("none.json").order_key == "" and job("b1.json").order_key == "b"


def test_keys_compare_as_match_does_and_a_batch_routes_a_key_in_detection_order(ordered, db, clock):
    for i, number in enumerate(["77", 77, "x-1", "X-1", "77"]):     # 77 is "77"; X-1 is x-1
        drop(ordered, f"{i + 1}.json", number, age=60 - i)
    jobs = Jobs(db, "router-a:1", clock)
    detect(ordered, jobs)
    Router(ordered.config, jobs).run(once=True)     # one batch: earlier jobs of a key go first
    assert [j.order_key for j in Job.select().order_by(Job.id)] == ["77", "77", "x-1", "x-1", "77"]
    assert routed_order(db) == [1, 2, 3, 4, 5]


def test_an_earlier_job_that_fails_lets_the_later_one_go(ordered, db, clock):
    ordered.write_config(router=ORDER_BY + "create_folders = false\nmax_attempts = 2\n", routes="""
[[route]]
name = "RIP"
clients = ["RANK"]
files = ["first*"]
to = "dest/RIP"
[[route]]
name = "Proofs"
clients = ["RANK"]
files = ["second*"]
to = "dest/Proofs"
""")
    (ordered.root / "dest" / "Proofs").mkdir(parents=True)     # RIP's folder is missing
    drop(ordered, "first.json", "5903771", age=60)
    drop(ordered, "second.json", "5903771", age=50)
    jobs = Jobs(db, "router-a:1", clock)
    detect(ordered, jobs)
    Router(ordered.config, jobs).run(once=True)
    first, second = job("first.json"), job("second.json")
    assert (first.state, first.attempts) == ("archived", 1)        # waits for its place
    assert second.state == "detected" and second.attempts == 0
    assert second.last_error == f"after job #{first.id} with the same JobNumber 5903771"

    clock.advance(120)                          # the place's retry: the second attempt fails it
    Router(ordered.config, jobs).run(once=True)
    assert job("first.json").state == "failed"
    clock.advance(5)
    Router(ordered.config, jobs).run(once=True)
    assert job("second.json").state == "routed"
    assert (ordered.root / "dest" / "Proofs" / "second.json").exists()


def test_an_earlier_job_still_being_written_holds_up_nobody(ordered, db, clock):
    cut = json.dumps(job_document("RANK", JobNumber="5903771")).encode()
    path = ordered.hot / "RANK" / "first.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(cut[: len(cut) // 2])      # still being written (new: within the grace)
    drop(ordered, "second.json", "5903771", age=0)
    os.utime(path, (time.time() - 2, time.time() - 2))     # detected first
    jobs = Jobs(db, "router-a:1", clock)
    detect(ordered, jobs)
    assert job("first.json").id < job("second.json").id
    Router(ordered.config, jobs).run(once=True)
    assert job("first.json").state == "detected"
    assert job("first.json").last_error == "incomplete JSON, still being written?"
    assert job("second.json").state == "routed"     # its key is unknown: it does not hold the key


def test_the_wait_shows_in_status_and_is_not_stuck(ordered, db, clock):
    drop(ordered, "a1.json", "5903771", age=60)
    drop(ordered, "a2.json", "5903771", age=50)
    a, b = Jobs(db, "router-a:1", clock), Jobs(db, "router-b:2", clock)
    detect(ordered, a)
    held = a.claim(ROUTE_QUEUE, 1, 3600)
    a.order(held.token, [(job("a1.json").id, "5903771")])
    Router(ordered.config, b).run_batch()

    status = health.gather(db, ordered.config, clock.now + 3600)
    line = next(x for x in render_text(status).splitlines() if x.startswith("in order"))
    assert line == (f"in order  1 job(s) wait for an earlier job of their key; the first: RANK/a2.json "
                    f"(job {job('a2.json').id}): after job #{job('a1.json').id} with the same JobNumber 5903771")
    total, rows = alerts.stuck(db, clock.now + 3600, 600, notify=False)
    assert [r["file"] for r in rows] == ["a1.json"] and total == 1      # the one it waits for is stuck
    shown = ordered.run("status", check=False).stdout
    assert "in order  1 job(s) wait for an earlier job of their key" in shown


def _router_to_kill(tree, read: bool) -> subprocess.Popen:
    """A router that claims the first job (batch_size 1) and stops there, before reading it or (with
    ``read``) once its key is recorded, before any copy: it prints the job's id, to be SIGKILLed."""
    stop = ("_copy_all", "lambda works: stop(works[0].job.id)") if read else \
        ("_prepare", "lambda work, delivered: stop(work.job.id)")
    code = f"""
import time
from pipeline import config, store
from pipeline.jobs import Jobs
from pipeline.router import Router

def stop(job_id):
    print(job_id, flush=True)
    time.sleep(600)

cfg = config.load({str(tree.config_path)!r})
router = Router(cfg, Jobs(store.connect(cfg.paths.database), "router_09@doomed:1"))
router.{stop[0]} = {stop[1]}
router.run_batch()
"""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tree.root)


@pytest.mark.parametrize("read", [False, True], ids=["unread", "read"])
def test_a_router_killed_holding_an_earlier_job_holds_the_key_until_its_lease_runs_out(tree, db, read):
    tree.write_config(router=ORDER_BY + "lease = 3\nbatch_size = 1\n")
    drop(tree, "first.json", "5903771", age=60)
    drop(tree, "second.json", "5903771", age=50)
    tree.run("scanner", "--once")
    doomed = _router_to_kill(tree, read)
    first = int(doomed.stdout.readline())
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    lease_end = Job.get_by_id(first).next_attempt_at
    router = tree.spawn("router")
    try:
        wait_for(lambda: Job.select().where(Job.state == "routed").count() == 2, timeout=30,
                 message="both jobs routed")
    finally:
        router.terminate()
        router.wait(10)
    assert routed_order(db) == [first, job("second.json").id]
    second = job("second.json")
    assert second.routed_at >= lease_end        # it went only once the first was taken again
    cause = (f"after job #{first} with the same JobNumber 5903771" if read else CAUSE_UNREAD.format(first))
    assert f"waits in order: {cause}" in events(second.id)


@pytest.mark.postgresql_only
def test_four_routers_on_postgresql_route_each_key_in_detection_order(tree, db):
    tree.write_config(router=ORDER_BY + "batch_size = 16\n")
    keys = [f"J{k:02d}" for k in range(20)]
    total = 300
    for i in range(total):
        drop(tree, f"{i:04d}.json", keys[(i * 7) % 20], client=("RANK", "LOREAL", "BISSELL")[i % 3],
             age=600 - i)
    tree.run("scanner", "--once")
    routers = [tree.spawn("router") for _ in range(4)]
    try:
        wait_for(lambda: Job.select().where(Job.state == "routed").count() == total, timeout=120,
                 message="every job routed")
    finally:
        for r in routers:
            r.terminate()
        for r in routers:
            r.wait(10)
    rows = db.run_sql("SELECT e.job_id, j.order_key, e.actor FROM job_events e JOIN jobs j ON j.id = e.job_id "
                      "WHERE e.to_state = 'routed' ORDER BY e.id").fetchall()
    assert len(rows) == total
    by_key, routers_of_key = defaultdict(list), defaultdict(set)
    for job_id, key, actor in rows:
        by_key[key].append(job_id)
        routers_of_key[key].add(actor)
    assert len(by_key) == 20
    for key, ids in by_key.items():
        assert ids == sorted(ids), f"key {key} routed out of detection order: {ids}"
    # The keys were shared: each key's jobs went through several routers, some of them waiting.
    assert all(len(r) > 1 for r in routers_of_key.values()), routers_of_key
    waits = db.run_sql("SELECT count(*) FROM job_events WHERE detail LIKE 'waits in order: %'").fetchone()[0]
    assert waits > 0


def test_explain_shows_the_jobs_key_or_that_it_is_unordered(ordered):
    keyed = ordered.drop("RANK", "5903771.json", job_document("RANK", JobNumber="5903771"))
    loose = ordered.drop("RANK", "loose.json", job_document("RANK"))
    out = ordered.run("route", "--explain", str(keyed)).stdout
    assert ("order key:   JobSpecification.JobDetails.JobNumber = 5903771 "
            "(routed after the earlier jobs with that value)") in out.splitlines()
    out = ordered.run("route", "--explain", str(loose)).stdout
    assert ("order key:   none: JobSpecification.JobDetails.JobNumber is missing; the job is unordered"
            in out.splitlines())
    ordered.write_config()
    assert "order key:" not in ordered.run("route", "--explain", str(keyed)).stdout


def test_check_config_says_what_order_by_does(ordered):
    out = ordered.run("check-config").stdout
    assert ("note: [router] order_by JobSpecification.JobDetails.JobNumber: jobs with the same value are routed "
            "in the order they were detected; a job without it is unordered") in out.splitlines()


def test_the_order_index_is_partial_on_the_unsettled_states_the_queries_name():
    """The planner uses jobs_order_key only when a query spells its condition as the index does."""
    from pipeline.states import ORDER_PENDING
    for ddl in (ROOT / "schema.sql", ROOT / "pipeline" / "store" / "postgres.sql"):
        text = " ".join(ddl.read_text().split())
        assert f"jobs_order_key ON jobs (order_key, id) WHERE {ORDER_PENDING};" in text


@pytest.mark.postgresql_only
def test_a_postgresql_database_of_schema_8_is_upgraded_in_place_its_jobs_not_read_yet(database):
    """postgres-v8.sql is the DDL of schema 8, the release before order per key."""
    import psycopg2
    from pipeline import store
    from pipeline.store import sqlite
    old = psycopg2.connect(database)
    with old, old.cursor() as cur:
        cur.execute((ROOT / "tests" / "fixtures" / "postgres-v8.sql").read_text())
        cur.execute("INSERT INTO pipeline_schema (version) VALUES (8)")
        cur.execute("INSERT INTO jobs (uuid, state, source_path, client_folder, file_name, size, mtime_ns, ctime_ns, "
                    "device, inode, detected_by, detected_at, updated_at, next_attempt_at) VALUES "
                    "('u1', 'archived', '/hot/RANK/a.json', 'RANK', 'a.json', 1, 2, 3, 4, 5, 'startup', 6, 7, 8)")
    old.close()
    upgraded = store.connect(database)
    try:
        assert upgraded.execute_sql("SELECT max(version) FROM pipeline_schema").fetchone()[0] == sqlite.SCHEMA_VERSION
        assert upgraded.execute_sql("SELECT uuid, state, order_key, waits_after FROM jobs").fetchall() == [
            ("u1", "archived", None, None)]
        indexes = {name for (name,) in upgraded.execute_sql(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
        assert {"jobs_order_key", "jobs_waits_after"} <= indexes
    finally:
        upgraded.close()
