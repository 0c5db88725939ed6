"""The router: validation, archive, routing rules, clean-up, waits and failures (docs/design.md#validation-and-routing, docs/design.md#file-operations)."""

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import job_document, states
from pipeline.hotfolder import HotFolder
from pipeline.failures import ERROR_LOG_KEYS
from pipeline.files import write_atomic, Folders, Modes
from pipeline.jobs import Jobs
from pipeline.states import MAX_CLAIMS, ROUTE_QUEUE
from pipeline.store.models import Delivery, Job
from pipeline.router import Router
from pipeline.scanner import Scanner

CELTRA = "Celtra - Create_Rename - Project_Design File"
RANK, RB = "Monday Rank", "Monday RB"
BISSELL, LOREAL = "CLIENT-STORES/BISSELL-WRIKE/IN", "CLIENT-STORES/LOREAL/IN"

# The seeds' routing matrix, row by row: (client, JobCategory, destination folders besides the archive).
MATRIX_ROWS = [
    ("RANK", "PRODUCTION", [RANK]),
    ("RANK", "CELTRA", [RANK, CELTRA]),                 # three places: archive, Monday Rank, Celtra
    ("RECKITTBENCKISER", "SOCIAL", [RB]),
    ("RECKITTBENCKISER", "CELTRA", [RB, CELTRA]),
    ("BISSELL", "ORDER", [BISSELL]),
    ("BISSELL", "CELTRA", [BISSELL]),                   # BISSELL is not Celtra-eligible
    ("LOREAL", "CAMPAIGN", [LOREAL]),
    ("LOREAL", "CELTRA", [LOREAL]),
    ("CELTRA", "ANYTHING", [CELTRA]),
    ("CIBC", "CELTRA", [CELTRA]),
    ("OLIVER", "CELTRA", [CELTRA]),
    ("ADIDAS", "CELTRA", [CELTRA]),
    ("PAYPAL", "CELTRA", [CELTRA]),
    ("BAYER", "CELTRA", [CELTRA]),
    ("3M", "CELTRA", [CELTRA]),
    ("CIBC", "DIGITAL", []),                            # eligible client, other category: archive only
    ("ACME", "CELTRA", []),                             # a client no rule names: archive only
    ("OLIVER", "celtra", [CELTRA]),                     # matching ignores case
]
ALL_DESTINATIONS = [RANK, RB, BISSELL, LOREAL, CELTRA]


def route_all(tree, db, clock=None):
    """Scan the hot folder and route everything due, in-process."""
    jobs = Jobs(db, "test-router:1", clock) if clock else Jobs(db, "test-router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)
    return jobs


def test_every_row_of_the_routing_matrix_with_the_real_programs(tree, db):
    names = {}
    for i, (client, category, _) in enumerate(MATRIX_ROWS):
        name = f"{590000 + i}.json"
        names[i] = name
        tree.drop(client, name, job_document(client, category))
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    assert tree.files(tree.hot) == []
    for i, (client, category, expected) in enumerate(MATRIX_ROWS):
        name = names[i]
        original = json.dumps(job_document(client, category)).encode()
        assert (tree.store / client / name).read_bytes() == original, f"{client}/{category} not archived"
        for dest in ALL_DESTINATIONS:
            target = tree.dest(dest) / name
            if dest in expected:
                assert target.read_bytes() == original, f"{client}/{category} missing in {dest}"
            else:
                assert not target.exists(), f"{client}/{category} wrongly copied to {dest}"
    db = db
    assert states(db) == {"routed": len(MATRIX_ROWS)}
    assert Delivery.select().count() == sum(len(e) for _, _, e in MATRIX_ROWS)


def test_copies_are_complete_with_configured_modes_and_no_temporaries(tree, db):
    tree.write_config(router='file_mode = "0640"\ndir_mode = "0750"')
    path = tree.drop("RANK", "a.json", job_document("RANK", "CELTRA"))
    mtime = os.stat(path).st_mtime_ns
    route_all(tree, db)
    for folder in (tree.store / "RANK", tree.dest(RANK), tree.dest(CELTRA)):
        assert os.listdir(folder) == ["a.json"]               # no hidden temporary left behind
        st = os.stat(folder / "a.json")
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_mtime_ns == mtime                         # copies keep the original's time
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750


def test_invalid_file_goes_to_failed_with_a_sidecar_and_the_rest_of_the_batch_is_routed(tree, db):
    tree.drop("RANK", "good.json")
    tree.drop("RANK", "bad.json", {"JobSpecification": {"JobDetails": {"ClientCode": "RANK"}}})
    route_all(tree, db)
    assert (tree.dest(RANK) / "good.json").exists()
    assert tree.files(tree.hot) == []
    [failed_name, sidecar_name] = sorted(os.listdir(tree.failed / "RANK"))
    assert failed_name.endswith("_bad.json") and sidecar_name == failed_name + ".error.json"
    assert len(failed_name) == len("20261122_184513_bad.json")
    sidecar = json.loads((tree.failed / "RANK" / sidecar_name).read_text())
    assert sidecar["reason"] == "missing JobSpecification.JobDetails.JobCategory"
    assert sidecar["step"] == "validate" and sidecar["file_name"] == "bad.json"
    bad = Job.get(Job.file_name == "bad.json")
    assert sidecar["job_id"] == bad.id and "attempts" in sidecar
    assert (bad.state, bad.failed_step, bad.last_error) == ("failed", "validate", sidecar["reason"])
    assert bad.failed_path == str(tree.failed / "RANK" / failed_name)
    assert not (tree.store / "RANK" / "bad.json").exists()
    [log_file] = os.listdir(tree.config.paths.error_log)
    entry = json.loads((tree.config.paths.error_log / log_file).read_text())
    assert tuple(entry) == ERROR_LOG_KEYS
    assert entry["error_message"] == sidecar["reason"] and entry["file_path"] == bad.failed_path


def test_failed_folder_uses_the_client_folder_even_when_clientcode_is_wrong(tree, db):
    tree.drop("RANK", "x.json", job_document("../../etc"))
    route_all(tree, db)
    [name, _] = sorted(os.listdir(tree.failed / "RANK"))
    job = Job.get()
    assert "not a safe folder name" in job.last_error
    assert not list(tree.root.glob("etc*"))


def test_oversized_file_fails_validation(tree, db):
    tree.write_config(router="max_file_bytes = 100")
    tree.drop("RANK", "big.json", job_document("RANK", Title="x" * 200))
    route_all(tree, db)
    job = Job.get()
    assert job.failed_step == "validate" and "over the limit of 100" in job.last_error


@pytest.mark.parametrize("mode, winner, action", [("replace", "new", "written"), ("keep", "old", "kept")])
def test_name_conflict_in_a_destination(tree, db, mode, winner, action):
    tree.write_config(router=f'conflict = "{mode}"')
    tree.dest(RANK).mkdir(parents=True)
    (tree.dest(RANK) / "a.json").write_text("old")
    tree.drop("RANK", "a.json")
    route_all(tree, db)
    content = (tree.dest(RANK) / "a.json").read_text()
    assert (content == "old") == (winner == "old")
    assert Delivery.get().action == action
    assert states(db) == {"routed": 1}


def test_name_conflict_with_conflict_fail_fails_the_job_at_route(tree, db):
    tree.write_config(router='conflict = "fail"')
    tree.dest(RANK).mkdir(parents=True)
    (tree.dest(RANK) / "a.json").write_text("old")
    tree.drop("RANK", "a.json")
    route_all(tree, db)
    job = Job.get()
    assert (job.state, job.failed_step) == ("failed", "route")
    assert "already in Monday Rank" in job.last_error
    assert (tree.dest(RANK) / "a.json").read_text() == "old"
    assert (tree.store / "RANK" / "a.json").exists()         # the data is kept in the archive
    assert tree.files(tree.hot) == []


def test_a_missing_destination_makes_the_job_wait_then_it_flows_by_itself(tree, db, clock):
    tree.write_config(router="create_folders = false")
    tree.dest(RANK).mkdir(parents=True)                     # Monday Rank is mounted, Celtra is not
    path = tree.drop("RANK", "a.json", job_document("RANK", "CELTRA"))
    jobs = route_all(tree, db, clock)
    job = Job.get()
    assert (job.state, job.attempts) == ("archived", 1)
    assert "Celtra" in job.last_error and "share not mounted" in job.last_error
    assert job.next_attempt_at == clock.now + 2
    assert path.exists() and (tree.store / "RANK" / "a.json").exists()
    assert not tree.dest(CELTRA).exists()                   # nothing written under the mount point
    first_copy = os.stat(tree.dest(RANK) / "a.json").st_ino
    router = Router(tree.config, jobs)
    router.run(once=True)                                   # not due yet: nothing happens
    assert Job.get().attempts == 1
    clock.advance(2)
    router.run(once=True)                                   # still missing: waits longer
    assert (Job.get().attempts, Job.get().next_attempt_at) == (2, clock.now + 4)
    tree.dest(CELTRA).mkdir(parents=True)                   # the share is back
    clock.advance(4)
    router.run(once=True)
    assert Job.get().state == "routed" and not path.exists()
    assert (tree.dest(CELTRA) / "a.json").exists()
    assert os.stat(tree.dest(RANK) / "a.json").st_ino == first_copy   # only the failed copy was retried
    assert Delivery.select().count() == 2


def test_place_retries_back_off_to_a_cap_of_60_seconds(tree, db, clock):
    tree.write_config(router="create_folders = false")
    tree.drop("RANK", "a.json")
    jobs = route_all(tree, db, clock)
    router = Router(tree.config, jobs)
    delays = [Job.get().next_attempt_at - clock.now]
    for _ in range(7):
        clock.advance(delays[-1])
        router.run(once=True)
        delays.append(Job.get().next_attempt_at - clock.now)
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]


def test_place_attempt_limit_fails_the_job_when_configured(tree, db, clock):
    tree.write_config(router="create_folders = false\nmax_attempts = 2")
    tree.drop("RANK", "a.json")
    jobs = route_all(tree, db, clock)
    clock.advance(2)
    Router(tree.config, jobs).run(once=True)
    job = Job.get()
    assert (job.state, job.failed_step, job.attempts) == ("failed", "route", 2)
    assert "gave up after 2 attempts" in job.last_error
    assert (tree.store / "RANK" / "a.json").exists()


def test_an_unwritable_archive_makes_the_job_wait_with_the_file_in_the_hot_folder(tree, db, clock):
    tree.store.parent.mkdir(parents=True, exist_ok=True)
    tree.store.write_text("a file where the archive folder should be")
    path = tree.drop("RANK", "a.json")
    route_all(tree, db, clock)
    job = Job.get()
    assert (job.state, job.attempts) == ("detected", 1)
    assert "cannot write the archive copy" in job.last_error
    assert path.exists()
    assert tree.files(tree.dest(RANK)) == []        # no destination copy without the archive one
    tree.store.unlink()
    clock.advance(2)
    Router(tree.config, Jobs(db, "r:2", clock)).run(once=True)
    assert Job.get().state == "routed" and not path.exists()


def _detect(tree, jobs, path):
    return jobs.create([HotFolder(tree.hot).sighting(str(path))], "realtime")


def test_a_file_replaced_before_it_was_read_is_not_touched_and_becomes_its_own_job(tree, db):
    jobs = Jobs(db, "t:1")
    path = tree.drop("RANK", "a.json", job_document("RANK", Title="first"))
    [first] = _detect(tree, jobs, path)
    tree.drop("RANK", "a.json", job_document("RANK", Title="second"))    # replaced (new inode)
    Router(tree.config, jobs).run(once=True)
    job = Job.get_by_id(first)
    assert (job.state, job.failed_step) == ("failed", "detect")
    assert "replaced by another file" in job.last_error
    assert json.loads(path.read_text())["JobSpecification"]["JobDetails"]["Title"] == "second"
    tree.age(path)
    route_all(tree, db)
    assert states(db) == {"failed": 1, "routed": 1}
    stored = json.loads((tree.store / "RANK" / "a.json").read_text())
    assert stored["JobSpecification"]["JobDetails"]["Title"] == "second"


def test_a_file_replaced_after_archiving_is_not_deleted_by_the_old_job(tree, db, clock):
    tree.write_config(router="create_folders = false")
    jobs = Jobs(db, "t:1", clock)
    path = tree.drop("RANK", "a.json", job_document("RANK", Title="first"))
    [first] = _detect(tree, jobs, path)
    Router(tree.config, jobs).run(once=True)                # archived; Monday Rank is missing: waits
    assert Job.get_by_id(first).state == "archived"
    tree.drop("RANK", "a.json", job_document("RANK", Title="second"))
    tree.dest(RANK).mkdir(parents=True)
    clock.advance(2)
    Router(tree.config, jobs).run(once=True)
    assert Job.get_by_id(first).state == "routed"
    assert json.loads(path.read_text())["JobSpecification"]["JobDetails"]["Title"] == "second"


def test_a_file_that_vanished_fails_at_detect_with_a_clear_reason(tree, db):
    jobs = Jobs(db, "t:1")
    path = tree.drop("RANK", "a.json")
    _detect(tree, jobs, path)
    path.unlink()
    Router(tree.config, jobs).run(once=True)
    job = Job.get()
    assert (job.state, job.failed_step) == ("failed", "detect")
    assert job.last_error == "file disappeared from the hot folder before it could be read"


def test_resumes_from_the_archive_when_a_crash_came_after_the_original_was_removed(tree, db):
    jobs = Jobs(db, "t:1")
    path = tree.drop("RANK", "a.json")
    _detect(tree, jobs, path)
    # A router archived and copied, removed the original, and died before committing.
    st = os.stat(path)
    write_atomic(tree.store / "RANK" / "a.json", path.read_bytes(), Folders(Modes()), mtime_ns=st.st_mtime_ns)
    path.unlink()
    Router(tree.config, jobs).run(once=True)
    assert Job.get().state == "routed"
    assert (tree.dest(RANK) / "a.json").exists()


def test_a_job_that_crashes_its_worker_every_time_fails_after_five_claims(tree, db, clock):
    jobs = Jobs(db, "t:1", clock)
    path = tree.drop("RANK", "a.json")
    _detect(tree, jobs, path)
    for _ in range(MAX_CLAIMS):
        jobs.claim(ROUTE_QUEUE, 10, lease=5)                # claimed, then the worker "died"
        clock.advance(6)
    Router(tree.config, jobs).run(once=True)
    job = Job.get()
    assert (job.state, job.failed_step) == ("failed", "validate")
    assert "claimed 5 times without finishing" in job.last_error
    assert not path.exists() and len(os.listdir(tree.failed / "RANK")) == 2


def test_a_graceful_stop_releases_the_unprocessed_jobs_at_once(tree, db):
    from pipeline.cli import Stopper
    jobs = Jobs(db, "t:1")
    for i in range(5):
        _detect(tree, jobs, tree.drop("RANK", f"{i}.json"))
    stopper = Stopper()
    stopper.request()
    Router(tree.config, jobs, stopper).run_batch()
    assert states(db) == {"detected": 5}
    assert Job.select().where(Job.lease_token.is_null(False)).count() == 0
    assert [j.claims for j in jobs.claim(ROUTE_QUEUE, 10, 5).jobs] == [1] * 5


def test_audit_trail_tells_the_whole_story(tree, db):
    tree.drop("RANK", "a.json", job_document("RANK", "CELTRA"))
    route_all(tree, db)
    rows = db.run_sql("SELECT from_state, to_state, detail FROM job_history").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("-", "detected"), ("detected", "archived"), ("archived", "routed")]
    assert rows[2][2] == "to Monday Rank, Celtra; original removed"


def test_a_resumed_job_clears_the_temporaries_its_dead_owner_left(tree, db, clock):
    jobs = Jobs(db, "t:1", clock)
    _detect(tree, jobs, tree.drop("RANK", "a.json"))
    jobs.claim(ROUTE_QUEUE, 10, lease=5)                    # the first owner died mid-copy ...
    tree.dest(RANK).mkdir(parents=True)
    left = tree.dest(RANK) / ".a.json.0123456789ab.tmp"
    left.write_text('{"half": ')
    other = tree.dest(RANK) / ".b.json.0123456789ab.tmp"     # another file's: not ours to remove
    other.write_text("{}")
    clock.advance(6)
    Router(tree.config, jobs).run(once=True)
    assert Job.get().state == "routed"
    assert sorted(os.listdir(tree.dest(RANK))) == [".b.json.0123456789ab.tmp", "a.json"]


# -- copies in threads (router.threads), small first batches ---------------------------------------

def test_copies_renamed_alike_land_in_claim_order_whatever_the_threads(tree, db):
    """Jobs of one batch that write the same path are staged at the same time but published in
    claim order, as one thread would: the later job's copy is the one left, every time."""
    tree.write_config(router="threads = 8", routes="""
[[route]]
name = "One name"
clients = ["RANK"]
to = "dest/one"
rename = "{ClientCode}.json"
""")
    for i in range(40):
        tree.drop("RANK", f"{i:03}.json", job_document("RANK", Title=f"job {i:03}"))
        os.utime(tree.hot / "RANK" / f"{i:03}.json", ns=(10**18 + i, 10**18 + i))   # claim order = name order
    route_all(tree, db)
    assert states(db) == {"routed": 40}
    last = Job.select().order_by(Job.id.desc()).get()
    kept = json.loads((tree.root / "dest" / "one" / "RANK.json").read_text())
    assert kept["JobSpecification"]["JobDetails"]["Title"] == "job 039" and last.file_name == "039.json"
    assert len(list((tree.store / "RANK").iterdir())) == 40            # the archive copies are all there


def test_a_jobs_copies_are_staged_at_the_same_time_and_published_archive_first(tree, db, monkeypatch):
    """One job's three copies (archive, Monday Rank, Celtra) are written and fsynced together:
    each waits at a barrier the other two must reach. They appear archive first all the same."""
    import threading
    from pipeline import router as router_module
    together = threading.Barrier(3, timeout=20)
    stage, publish, published = router_module.stage, router_module.publish, []

    def staged(target, *args, **kwargs):
        together.wait()                             # serial staging would break the barrier
        return stage(target, *args, **kwargs)

    monkeypatch.setattr(router_module, "stage", staged)
    monkeypatch.setattr(router_module, "publish",
                        lambda tmp, target, *a, **k: published.append(target.parent.name) or publish(tmp, target, *a, **k))
    tree.drop("RANK", "a.json", job_document("RANK", "CELTRA"))
    route_all(tree, db)
    assert states(db) == {"routed": 1}
    assert published == ["RANK", RANK, CELTRA]     # the archive's client folder, then the rules' order
    assert tree.files(tree.dest(RANK)) == ["a.json"] and tree.files(tree.dest(CELTRA)) == ["a.json"]


def test_the_archive_folder_and_the_destination_folders_are_synced_at_the_same_time(tree, db, monkeypatch):
    """After publishing, the archive's folder and a destination's folder are fsynced together
    (each waits at a barrier the other must reach), not the archive's group first."""
    import threading
    from pipeline import files
    together = threading.Barrier(2, timeout=10)
    fsync_dir, synced = files.fsync_dir, []

    def fsync_dir_together(folder):
        if Path(folder) in (tree.store / "RANK", tree.dest(RANK)):
            together.wait()                         # one after the other would break the barrier
            synced.append(Path(folder))
        fsync_dir(folder)

    monkeypatch.setattr(files, "fsync_dir", fsync_dir_together)
    tree.drop("RANK", "a.json", job_document("RANK"))
    route_all(tree, db)
    assert states(db) == {"routed": 1}
    assert sorted(synced) == sorted([tree.store / "RANK", tree.dest(RANK)])


def test_a_full_batch_is_recorded_and_cleaned_up_while_the_next_batchs_copies_are_written(tree, db, monkeypatch):
    """In a backlog (a batch came back full) the router does not wait for a batch's commits and
    removals before writing the next batch's copies: the batch is settled while they are being
    written. Its copies are published first, and nothing is lost at the end."""
    import threading
    from pipeline import router as router_module
    tree.write_config(router="batch_size = 2")
    names = [f"{i}.json" for i in range(4)]
    for name in names:
        tree.drop("RANK", name, job_document("RANK"))
    jobs = Jobs(db, "test-router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    router = Router(tree.config, jobs)
    settled, second_batch, seen_while_staging = threading.Event(), threading.Event(), []
    settle, stage = router._settle, router_module.stage

    def settle_and_say(batch):
        settle(batch)
        settled.set()

    def staged(target, *args, **kwargs):
        if second_batch.is_set():                   # the second batch's copies wait for the first's settling
            seen_while_staging.append(settled.wait(timeout=10))
        return stage(target, *args, **kwargs)

    monkeypatch.setattr(router, "_settle", settle_and_say)
    monkeypatch.setattr(router_module, "stage", staged)
    assert router.run_batch() == 2
    assert states(db) == {"detected": 4}, "the full batch is not settled yet"
    assert len(tree.files(tree.dest(RANK))) == 2, "its copies are published"
    second_batch.set()
    assert router.run_batch() == 2
    assert seen_while_staging and all(seen_while_staging)
    assert states(db) == {"routed": 2, "detected": 2}
    assert router.run_batch() == 0                  # nothing more due: the last batch is settled
    assert states(db) == {"routed": 4}
    assert tree.files(tree.hot / "RANK") == [] and tree.files(tree.dest(RANK)) == names


def test_a_backlog_is_claimed_in_batches_doubling_from_eight(tree, db, monkeypatch):
    tree.write_config(router="batch_size = 50")
    for i in range(130):
        tree.drop("ACME", f"{i:03}.json")
    jobs = Jobs(db, "test-router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    sizes = []
    claim = jobs.claim
    monkeypatch.setattr(jobs, "claim", lambda queue, limit, lease: sizes.append(limit) or claim(queue, limit, lease))
    Router(tree.config, jobs).run(once=True)
    assert states(db) == {"routed": 130}
    assert sizes[:5] == [8, 16, 32, 50, 50]       # 8+16+32+50 = 106, then 24 of 50: the ramp starts again
    assert sizes[5:] == [8]                        # the empty claim that ends --once



def test_a_batch_records_each_kind_of_step_in_one_statement_for_all_its_jobs(tree, db, monkeypatch):
    """On PostgreSQL each statement is a round trip: a batch of 8 routed jobs (the first claim)
    costs one statement per kind of step, not one per job and copy."""
    for i in range(8):
        tree.drop("RANK", f"{i}.json", job_document("RANK", "CELTRA"))       # two copies each
    jobs = Jobs(db, "test-router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    seen, execute_sql = [], db.execute_sql

    def counted(sql, params=None, *args, **kwargs):
        seen.append(" ".join(sql.split()[:6]))
        return execute_sql(sql, params, *args, **kwargs)
    monkeypatch.setattr(db, "execute_sql", counted)
    Router(tree.config, jobs).run(once=True)
    assert states(db) == {"routed": 8} and Delivery.select().count() == 16
    assert seen.count("UPDATE jobs SET state = 'archived',") == 1
    assert seen.count("INSERT INTO deliveries (job_id, name, path,") == 1
    assert seen.count("UPDATE jobs SET state = 'routed',") == 1
    assert seen.count("INSERT INTO job_events (job_id, at, from_state,") == 2     # the batch's two transactions
