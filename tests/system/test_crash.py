"""Kill a real router with SIGKILL mid-batch: nothing is lost, nothing is done twice (docs/design.md#job-lifecycle)."""

import json
import os
import signal

from conftest import job_document, wait_for
from pipeline.store.models import Delivery, Job, JobEvent

# (client, JobCategory, places the file must end in, the archive included)
CLIENTS = [("RANK", "CELTRA", 3), ("RANK", "PRODUCTION", 2), ("LOREAL", "CAMPAIGN", 2),
           ("OLIVER", "CELTRA", 2), ("ACME", "PRINT", 1)]

LEGAL = {(None, "detected"), ("detected", "archived"), ("archived", "routed"), ("detected", "failed"),
         ("archived", "failed"), ("detected", "detected"), ("archived", "archived")}


def routed_count(db):
    return db.run_sql("SELECT count(*) FROM jobs WHERE state = 'routed'").fetchone()[0]


def leased_count(db):
    return db.run_sql("SELECT count(*) FROM jobs WHERE lease_token IS NOT NULL"
                      " AND state IN ('detected', 'archived')").fetchone()[0]


def test_a_router_killed_mid_batch_loses_nothing_and_duplicates_nothing(tree, db):
    tree.write_config(router="batch_size = 25\nlease = 2")
    n = 500
    expected_places = {}
    for i in range(n):
        client, category, places = CLIENTS[i % len(CLIENTS)]
        path = tree.drop(client, f"{i:05d}.json", job_document(client, category, Title=f"job {i}"))
        tree.age(path)
        expected_places[f"{client}/{i:05d}.json"] = places
    tree.run("scanner", "--once")
    assert Job.select().count() == n

    # Kill the router while it holds a batch, once it has routed a few. The routed count grows
    # only as a batch ends, so waiting on it alone would kill in the gap before the next claim:
    # wait until a batch is held as well. A kill can still land just after that batch ends, so
    # try again (a few times at most) until one lands mid-batch.
    leased = 0
    for attempt in range(5):
        router = tree.spawn("router")
        target = routed_count(db) + 60
        try:
            wait_for(lambda: routed_count(db) >= target and leased_count(db), interval=0.002,
                     message="the router to get going")
            os.kill(router.pid, signal.SIGKILL)
            router.wait(10)
        finally:
            if router.poll() is None:
                router.kill()
        leased = leased_count(db)
        if leased:
            break
    assert leased > 0, "no kill landed mid-batch"
    assert routed_count(db) < n

    tree.run("router", "--once")                   # leased jobs are not due yet: the rest is done
    wait_for(lambda: tree.run("router", "--once") and routed_count(db) == n, timeout=30, interval=0.5,
             message="the dead router's jobs after its lease expired")

    assert tree.files(tree.hot) == []
    assert Job.select().count() == n
    total_places = 0
    for job in Job.select():
        places = expected_places[f"{job.client_folder}/{job.file_name}"]
        total_places += places
        doc = json.loads((tree.store / job.client_folder / job.file_name).read_text())
        assert doc["JobSpecification"]["JobDetails"]["Title"] == f"job {int(job.file_name[:5])}"
        assert Delivery.select().where(Delivery.job == job).count() == places - 1
    assert Delivery.select().count() == total_places - n          # no duplicate deliveries rows
    # Every copy on disk is complete, and no temporary is left behind.
    for folder in [tree.store, tree.root / "dest"]:
        for path in folder.rglob("*"):
            assert not path.name.startswith("."), f"temporary left behind: {path}"
            if path.is_file():
                json.loads(path.read_text())
    for event in JobEvent.select():
        assert (event.from_state, event.to_state) in LEGAL
    if tree.engine == "sqlite":
        assert db.run_sql("PRAGMA integrity_check").fetchone()[0] == "ok"
