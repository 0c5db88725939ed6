"""Steering the flow (docs/design.md#steering): pause and resume, hold and release, dismiss, jobs no
rule routes. In-process programs on a FakeClock for what the router and notifier do; the real
commands for what a person types. Both engines."""

import json

import pytest

from conftest import MATRIX, FakeClock, job_document, states, wait_for
from helpers.api_server import ApiServer
from pipeline import steering
from pipeline.jobs import Jobs
from pipeline.notifier import Notifier
from pipeline.reporting import alerts
from pipeline.router import Router
from pipeline.scanner import Scanner

HOLD_ROUTE = """
[[route]]
name = "Approval"
clients = ["LOREAL"]
hold = true
to = "dest/Approved"
"""


def scan_and_route(tree, db, clock) -> None:
    jobs = Jobs(db, "test:1", clock)
    Scanner(tree.config, jobs).scan("periodic", "periodic")
    Router(tree.config, jobs).run(once=True)


def job(db, name: str) -> dict:
    cursor = db.run_sql("SELECT id, state, attempts, waits_on, next_attempt_at, last_error FROM jobs "
                        "WHERE file_name = ?", (name,))
    return dict(zip([c[0] for c in cursor.description], cursor.fetchone()))


def events(db, job_id: int) -> list[tuple]:
    return db.run_sql("SELECT from_state, to_state, actor, detail FROM job_events WHERE job_id = ? ORDER BY id",
                      (job_id,)).fetchall()


def steered(db) -> list[tuple]:
    return db.run_sql("SELECT actor, action, target, detail FROM steering_events ORDER BY id").fetchall()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def ops(db, clock):
    return steering.Steering(db, "ops@host", clock)


def drop_aged(tree, client: str, name: str, **details):
    path = tree.drop(client, name, job_document(client, **details))
    tree.age(path)
    return path


# -- pause and resume ----------------------------------------------------------------------------

def test_a_paused_destinations_copy_waits_while_the_jobs_other_copies_go_on_and_follows_on_resume(tree, db, clock, ops):
    original = drop_aged(tree, "RANK", "both.json", category="CELTRA")    # Monday Rank and Celtra
    ops.pause("destination", "Celtra", reason="printer maintenance", route_names=[r.name for r in tree.config.routes])

    scan_and_route(tree, db, clock)

    waiting = job(db, "both.json")
    assert (tree.dest("Monday Rank") / "both.json").exists()
    assert not (tree.dest("Celtra - Create_Rename - Project_Design File") / "both.json").exists()
    assert original.exists(), "the original stays until every copy is made"
    assert waiting["state"] == "archived" and waiting["attempts"] == 0 and waiting["waits_on"] == "destination:Celtra"
    assert waiting["next_attempt_at"] >= clock() + steering.PARK - 1
    assert events(db, waiting["id"])[-1][3] == "waits: paused by ops@host: printer maintenance"
    clock.advance(86400)        # paused work is not stuck, however long it waits
    assert alerts.stuck(db, clock(), 60, notify=False)[0] == 0

    ops.resume("destination", "Celtra")
    assert job(db, "both.json")["next_attempt_at"] <= clock()
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)

    assert job(db, "both.json")["state"] == "routed"
    assert (tree.dest("Celtra - Create_Rename - Project_Design File") / "both.json").exists()
    assert not original.exists()
    assert db.run_sql("SELECT count(*) FROM deliveries").fetchone()[0] == 2
    assert [row[1:3] for row in steered(db)] == [("pause", "destination Celtra"), ("resume", "destination Celtra")]


def test_a_pause_with_an_end_ends_by_itself(tree, db, clock, ops):
    drop_aged(tree, "RANK", "later.json")
    ops.pause("destination", "Monday Rank", until=clock() + 120, route_names=["Monday Rank"])
    scan_and_route(tree, db, clock)
    assert job(db, "later.json")["next_attempt_at"] == clock() + 120

    clock.advance(60)
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    assert job(db, "later.json")["state"] == "archived"        # not due yet: claimed by nobody

    clock.advance(61)
    assert steering.Pauses.read(db, clock()).destination("Monday Rank") is None
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    assert job(db, "later.json")["state"] == "routed"
    assert (tree.dest("Monday Rank") / "later.json").exists()


def test_a_paused_client_is_detected_and_recorded_but_not_routed_while_others_flow(tree, db, clock, ops):
    rank = drop_aged(tree, "RANK", "r.json")
    drop_aged(tree, "LOREAL", "l.json")
    ops.pause("client", "rank", reason="contract on hold")

    scan_and_route(tree, db, clock)

    assert job(db, "l.json")["state"] == "routed"
    parked = job(db, "r.json")
    assert parked["state"] == "detected" and parked["waits_on"] == "client:RANK" and parked["attempts"] == 0
    assert rank.exists() and not list(tree.store.rglob("r.json"))

    ops.resume("client", "RANK")
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    assert job(db, "r.json")["state"] == "routed"


def test_while_routing_is_paused_nothing_is_claimed_and_detection_goes_on(tree, db, clock, ops):
    ops.pause("routing", reason="upgrade")
    drop_aged(tree, "RANK", "a.json")
    scan_and_route(tree, db, clock)
    a = job(db, "a.json")
    assert a["state"] == "detected" and a["waits_on"] is None
    assert db.run_sql("SELECT claims FROM jobs").fetchone() == (0,)
    assert alerts.stuck(db, clock() + 3600, 60, notify=False)[0] == 0

    assert [p.kind for p in ops.resume_all()] == ["routing"]
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    assert job(db, "a.json")["state"] == "routed"


def test_while_notification_is_paused_no_attempt_is_made_nor_spent(tree, db, clock, ops):
    api = ApiServer()
    try:
        tree.write_config(f'[api]\nendpoint = "{api.url}"\n')
        drop_aged(tree, "RANK", "n.json")
        scan_and_route(tree, db, clock)
        ops.pause("notification", reason="the API is being migrated")
        Notifier(tree.config, Jobs(db, "test:1", clock)).run(once=True)
        assert api.received == [] and job(db, "n.json")["attempts"] == 0 and job(db, "n.json")["state"] == "routed"
        assert alerts.stuck(db, clock() + 3600, 60, notify=True)[0] == 0

        ops.resume("notification")
        Notifier(tree.config, Jobs(db, "test:1", clock)).run(once=True)
        assert len(api.received) == 1 and job(db, "n.json")["state"] == "notified"
    finally:
        api.close()


def test_pausing_what_is_paused_replaces_its_end_and_the_list_says_who_and_why(db, clock, ops):
    ops.pause("client", "RANK", until=clock() + 60, reason="first")
    ops.pause("client", "RANK", reason="second")
    (pause,) = ops.in_force().all
    assert (pause.until, pause.reason, pause.actor) == (None, "second", "ops@host")
    assert pause.line().startswith("client RANK: paused by ops@host since ") and pause.line().endswith(
        "until resumed: second")


def test_bad_pause_and_resume_targets_are_refused_with_nothing_changed(db, ops):
    with pytest.raises(steering.Refused, match="no \\[\\[route\\]\\] is named 'Nope'") as e:
        ops.pause("destination", "Nope", route_names=["Monday Rank"])
    assert e.value.code == 64
    with pytest.raises(steering.Refused, match="client RANK is not paused") as e:
        ops.resume("client", "RANK")
    assert e.value.code == 65
    assert db.run_sql("SELECT count(*) FROM pauses").fetchone() == (0,) and steered(db) == []


# -- hold, release, dismiss, unmatched -----------------------------------------------------------

def test_a_hold_route_archives_then_holds_and_a_release_sends_it_on_without_holding_it_again(tree, db, clock, ops):
    tree.write_config(routes=HOLD_ROUTE)
    original = drop_aged(tree, "LOREAL", "proof.json")
    scan_and_route(tree, db, clock)

    held = job(db, "proof.json")
    assert held["state"] == "held" and original.exists() and not tree.dest("Approved").exists()
    assert list(tree.store.rglob("proof.json"))
    assert events(db, held["id"])[-1][:2] == ("archived", "held")
    assert alerts.stuck(db, clock() + 86400, 60, notify=False)[0] == 0

    (released,) = ops.release([held["id"]], "checked the proof")
    assert released.released_to == "archived"
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    assert job(db, "proof.json")["state"] == "routed" and (tree.dest("Approved") / "proof.json").exists()
    assert not original.exists()
    assert ("held", "archived", "ops@host", "release by ops@host: checked the proof") in events(db, held["id"])


def test_bin_hold_holds_a_detected_job_and_release_sends_it_back_to_detected(tree, db, clock, ops):
    drop_aged(tree, "RANK", "wait.json")
    Scanner(tree.config, Jobs(db, "test:1", clock)).scan("periodic", "periodic")
    job_id = job(db, "wait.json")["id"]
    ops.hold([job_id], "check the artwork first")
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    assert job(db, "wait.json")["state"] == "held"

    assert ops.release([job_id])[0].released_to == "detected"
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    assert job(db, "wait.json")["state"] == "routed"


def test_release_of_a_job_not_held_and_hold_of_a_routed_one_are_refused_with_nothing_changed(tree, db, clock, ops):
    drop_aged(tree, "RANK", "done.json")
    scan_and_route(tree, db, clock)
    job_id = job(db, "done.json")["id"]
    before = db.run_sql("SELECT * FROM jobs").fetchall(), db.run_sql("SELECT count(*) FROM job_events").fetchone()
    with pytest.raises(steering.Refused, match=f"job {job_id} RANK/done.json is routed, not held") as e:
        ops.release([job_id])
    assert e.value.code == 65
    with pytest.raises(steering.Refused, match="is routed, not detected or archived"):
        ops.hold([job_id])
    with pytest.raises(steering.Refused, match="job 999: no such job"):
        ops.dismiss([999], "gone")
    assert (db.run_sql("SELECT * FROM jobs").fetchall(),
            db.run_sql("SELECT count(*) FROM job_events").fetchone()) == before


def test_a_dismissed_failed_job_is_final_not_failed_and_says_who_and_why(tree, db, clock, ops):
    bad = tree.drop("RANK", "bad.json", b"{not json")
    tree.age(bad)
    scan_and_route(tree, db, clock)
    failed = job(db, "bad.json")
    assert failed["state"] == "failed"
    with pytest.raises(steering.Refused, match="--reason is required"):
        ops.dismiss([failed["id"]], " ")

    assert ops.dismiss([failed["id"]], "upstream fixed it", dry_run=True)[0].state == "failed"
    assert job(db, "bad.json")["state"] == "failed"

    ops.dismiss([failed["id"]], "upstream fixed it")
    assert states(db) == {"dismissed": 1}
    assert events(db, failed["id"])[-1] == ("failed", "dismissed", "ops@host", "dismiss by ops@host: upstream fixed it")
    assert list(tree.failed.rglob("*bad.json")), "files are left as they are"


@pytest.mark.parametrize("policy", ["archive", "hold", "fail"])
def test_router_unmatched_decides_what_becomes_of_a_job_no_rule_routes(tree, db, clock, policy):
    tree.write_config(router=f'unmatched = "{policy}"\n')
    drop_aged(tree, "NEWCLIENT", "x.json")
    scan_and_route(tree, db, clock)
    x = job(db, "x.json")
    assert x["state"] == {"archive": "routed", "hold": "held", "fail": "failed"}[policy]
    assert list(tree.store.rglob("x.json")), "archived whatever the policy"
    if policy != "archive":
        assert "no rule routes client NEWCLIENT (router.unmatched = " in (x["last_error"] or events(db, x["id"])[-1][3])


# -- the commands ----------------------------------------------------------------------------------

def test_bin_pause_resume_and_the_list_with_real_output(tree, db):
    assert tree.run("pause").stdout == "nothing is paused\n"
    out = tree.run("pause", "--destination", "Monday Rank", "--for", "2h", "--reason", "printer maintenance",
                   "--actor", "alice@desk").stdout
    assert out.startswith("paused destination 'Monday Rank': paused by alice@desk since ") and \
        out.rstrip().endswith("UTC: printer maintenance")
    tree.run("pause", "--notify")
    listed = tree.run("pause").stdout.splitlines()
    assert [line.split(":")[0] for line in listed] == ["destination 'Monday Rank'", "notification"]
    assert tree.run("resume", "--notify").stdout.startswith("resumed notification: paused by ")
    assert tree.run("resume", "--all").stdout.startswith("resumed destination 'Monday Rank'")
    assert tree.run("pause").stdout == "nothing is paused\n"
    actor = steered(db)[0][0]
    assert actor == "alice@desk" and "@" in steered(db)[1][0]      # the login name at this host by default


@pytest.mark.parametrize("command, args, code, says", [
    ("pause", ["--destination", "Nope"], 64, "no [[route]] is named 'Nope'"),
    ("pause", ["--client", "RANK", "--for", "soon"], 64, "--for: expected a duration"),
    ("pause", ["--routing", "--until", "2001-01-01"], 64, "--until: 2001-01-01 is not in the future"),
    ("pause", ["--reason", "why"], 64, "need a target"),
    ("resume", ["--routing"], 65, "routing is not paused"),
    ("resume", [], 64, "say what to resume"),
    ("release", ["--id", "1"], 65, "job 1: no such job"),
    ("dismiss", ["--failed"], 64, "the following arguments are required: --reason"),
    ("dismiss", ["--id", "1", "--client", "X", "--reason", "r"], 64, "not with --id"),
    ("hold", [], 64, "the following arguments are required: --id"),
])
def test_bad_input_to_the_commands_is_one_line_and_changes_nothing(tree, db, command, args, code, says):
    proc = tree.run(command, *args, check=False)
    assert proc.returncode == code, proc.stderr
    assert says in proc.stderr and len(proc.stderr.splitlines()) == 1 and proc.stdout == ""
    assert db.run_sql("SELECT count(*) FROM pauses").fetchone() == (0,) and steered(db) == []


def test_bin_dismiss_with_requeues_filters_and_dry_run(tree, db, clock):
    for name in ("a.json", "b.json"):
        tree.age(tree.drop("RANK", name, b"[1"))
    tree.age(tree.drop("LOREAL", "c.json", b"[1"))
    tree.write_config(detect="incomplete_grace = 0\n")
    scan_and_route(tree, db, clock)
    assert states(db) == {"failed": 3}

    dry = tree.run("dismiss", "--failed", "--client", "rank", "--reason", "resent upstream", "--dry-run").stdout
    assert dry.splitlines()[-1] == "would have dismissed 2 job(s) (dry run: nothing changed)"
    assert states(db) == {"failed": 3}
    out = tree.run("dismiss", "--failed", "--client", "rank", "--step", "validate", "--reason", "resent upstream")
    assert out.stdout.splitlines()[0].endswith("RANK/a.json: failed -> dismissed")
    assert states(db) == {"failed": 1, "dismissed": 2}
    status = tree.run("status", "--json", check=False).stdout
    assert '"dismissed": 2' in status and '"failed": 1' in status


def test_bin_hold_and_bin_release_by_client(tree, db, clock):
    tree.age(tree.drop("RANK", "h.json"))
    Scanner(tree.config, Jobs(db, "test:1", clock)).scan("periodic", "periodic")
    job_id = job(db, "h.json")["id"]
    assert tree.run("hold", "--id", str(job_id), "--reason", "wait for the client").stdout.splitlines() == [
        f"job {job_id} RANK/h.json: detected -> held", "held 1 job(s)"]
    assert tree.run("release", "--client", "RANK", "--dry-run").stdout.splitlines()[0].endswith("held -> detected (dry run)")
    assert job(db, "h.json")["state"] == "held"
    tree.run("release", "--all")
    assert job(db, "h.json")["state"] == "detected"


# -- shown by bin/status, /metrics and the dashboard --------------------------------------------------

def test_pauses_and_clients_no_rule_names_are_warnings_in_status_nagios_metrics_and_the_overview(tree, db, clock):
    from prometheus_client.parser import text_string_to_metric_families
    from pipeline.web import app as web_app

    tree.age(tree.drop("NEWCLIENT", "n1.json"))
    tree.age(tree.drop("NEWCLIENT", "n2.json"))
    Scanner(tree.config, Jobs(db, "test:1")).scan("periodic", "periodic")
    tree.run("pause", "--destination", "Monday Rank", "--reason", "printer maintenance")

    nagios = tree.run("status", "--nagios", check=False)
    assert nagios.stdout.startswith("PIPELINE ") and "paused=1;;;0" in nagios.stdout
    assert "paused: destination 'Monday Rank': paused by " in nagios.stdout
    assert "2 job(s) today from clients no rule names: NEWCLIENT" in nagios.stdout
    text = tree.run("status", check=False).stdout
    assert "WARNING   paused: destination 'Monday Rank'" in text

    page = web_app.create_app(tree.config, db, environ={}).test_client()
    overview = page.get("/").get_data(as_text=True)
    assert "paused: destination &#39;Monday Rank&#39;: paused by " in overview
    assert "2 job(s) today from clients no rule names: NEWCLIENT" in overview
    families = {f.name: f for f in text_string_to_metric_families(page.get("/metrics").get_data(as_text=True))}
    assert [(s.labels, s.value) for s in families["hotfolder_paused"].samples] == [
        ({"kind": "destination", "name": "Monday Rank"}, 1.0)]

    tree.run("resume", "--destination", "Monday Rank")
    assert "paused" not in tree.run("status", "--nagios", check=False).stdout.split("|")[0]


# -- re-delivery -----------------------------------------------------------------------------------

def routed_job(tree, db, clock, name: str = "again.json", **details) -> int:
    drop_aged(tree, "RANK", name, **details)
    scan_and_route(tree, db, clock)
    assert job(db, name)["state"] == "routed"
    return job(db, name)["id"]


def redeliveries(db) -> list[tuple]:
    return db.run_sql("SELECT job_id, destination, state, last_error FROM redeliveries ORDER BY id").fetchall()


def test_bin_redeliver_records_a_request_and_a_router_copies_again_from_the_archive(tree, db, clock):
    job_id = routed_job(tree, db, clock, category="CELTRA")
    rank, celtra = tree.dest("Monday Rank") / "again.json", tree.dest("Celtra - Create_Rename - Project_Design File") / "again.json"
    rank.unlink()
    celtra.unlink()

    dry = tree.run("redeliver", "--id", str(job_id), "--dry-run").stdout.splitlines()
    assert dry == [f"job {job_id} RANK/again.json: {rank}, {celtra}",
                   "would request 1 re-delivery(ies) (dry run: nothing changed)"]
    assert redeliveries(db) == []
    out = tree.run("redeliver", "--id", str(job_id), "--to", "Monday Rank", "--actor", "bob@desk").stdout
    assert out == "requested 1 re-delivery(ies); the routers carry them out\n"
    assert redeliveries(db) == [(job_id, "Monday Rank", "pending", None)]

    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)

    assert rank.exists() and not celtra.exists()
    assert redeliveries(db) == [(job_id, "Monday Rank", "done", None)]
    assert db.run_sql("SELECT name, path FROM redelivered").fetchall() == [("Monday Rank", str(rank))]
    trail = [e[3] for e in events(db, job_id)]
    assert "re-delivery 1 requested by bob@desk: to 'Monday Rank'" in trail and "re-delivery 1 done: Monday Rank" in trail
    assert job(db, "again.json")["state"] == "routed"


@pytest.mark.parametrize("harm, says", [("missing", "is missing"), ("altered", "was altered")])
def test_a_redelivery_whose_archive_copy_is_missing_or_altered_is_refused_and_changes_nothing(tree, db, clock,
                                                                                             harm, says):
    job_id = routed_job(tree, db, clock)
    archive = next(tree.store.rglob("again.json"))
    if harm == "missing":
        archive.unlink()
    else:
        archive.write_bytes(archive.read_bytes().replace(b"RANK campaign", b"RANK campaigN"))
    proc = tree.run("redeliver", "--id", str(job_id), check=False)
    assert proc.returncode == 65 and says in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert proc.stdout == "" and redeliveries(db) == []


def test_a_redelivery_to_a_remote_destination_is_refused_and_its_folders_still_can_be_chosen(tree, db, clock):
    """Re-delivery writes with the local folders only: a rule that now sends the job to a remote is
    named and refused (exit 65, nothing recorded) rather than written to a local folder of that path."""
    job_id = routed_job(tree, db, clock, category="CELTRA")
    tree.write_config(routes=MATRIX.replace('to = "dest/Monday Rank"', 'to = "s3://print-jobs/in"'),
                      extra='[[remote]]\nurl = "s3://print-jobs"\nendpoint_url = "http://127.0.0.1:9"\n')
    proc = tree.run("redeliver", "--id", str(job_id), check=False)
    assert proc.returncode == 65 and proc.stdout == "" and redeliveries(db) == []
    assert proc.stderr.strip().endswith("re-delivery to a remote destination is not supported (Monday Rank); "
                                        "--destination NAME re-delivers to one of its folders")
    tree.run("redeliver", "--id", str(job_id), "--to", "Celtra")
    assert redeliveries(db) == [(job_id, "Celtra", "pending", None)]


def test_redeliver_notify_posts_again_with_a_fresh_idempotency_key(tree, db, clock):
    api = ApiServer()
    try:
        tree.write_config(f'[api]\nendpoint = "{api.url}"\n')
        job_id = routed_job(tree, db, clock)
        Notifier(tree.config, Jobs(db, "test:1", clock)).run(once=True)
        assert job(db, "again.json")["state"] == "notified"
        tree.run("redeliver", "--client", "rank", "--notify")
        Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
        assert job(db, "again.json")["state"] == "routed"
        Notifier(tree.config, Jobs(db, "test:1", clock)).run(once=True)
        assert job(db, "again.json")["state"] == "notified"
        keys = api.keys()
        assert len(keys) == 2 and keys[0] != keys[1]
        assert api.received[0].body == api.received[1].body
    finally:
        api.close()
    assert redeliveries(db) == [(job_id, None, "done", None)]


def test_a_router_dead_mid_redelivery_leaves_the_request_to_another_which_finishes_it_once(tree, db, clock, monkeypatch):
    from pipeline import redelivery
    job_id = routed_job(tree, db, clock)
    copy = tree.dest("Monday Rank") / "again.json"
    copy.unlink()
    tree.run("redeliver", "--id", str(job_id))

    def die(self, token, requests):       # the copies made, then killed before recording anything
        raise KeyboardInterrupt("SIGKILL")
    with monkeypatch.context() as m:
        m.setattr(redelivery.Redeliverer, "_record", die)
        with pytest.raises(KeyboardInterrupt):
            Router(tree.config, Jobs(db, "router_00@a:1", clock)).run(once=True)
    assert copy.exists() and redeliveries(db) == [(job_id, None, "pending", None)]

    Router(tree.config, Jobs(db, "router_01@b:2", clock)).run(once=True)      # its lease is still running
    assert redeliveries(db)[0][2] == "pending"
    clock.advance(tree.config.router.lease + 1)
    Router(tree.config, Jobs(db, "router_01@b:2", clock)).run(once=True)
    Router(tree.config, Jobs(db, "router_01@b:2", clock)).run(once=True)
    assert redeliveries(db) == [(job_id, None, "done", None)]
    assert [e[3] for e in events(db, job_id)].count("re-delivery 1 done: Monday Rank") == 1
    assert db.run_sql("SELECT count(*) FROM redelivered").fetchone() == (1,)
    assert not [p for p in tree.dest("Monday Rank").iterdir() if p.name.startswith(".")], "no temporary left"


def test_a_router_process_sigkilled_mid_redelivery_leaves_the_rest_to_the_next_which_does_each_once(tree, db):
    """The real thing: bin/router carrying out 600 requests, SIGKILLed between two of its batches
    of requests; the next router finishes the requests left once their lease has run out, and
    every request ends done once, its copy recorded once and whole, no temporary left."""
    jobs = Jobs(db, "test:1")           # the real clock: the routers below are real processes
    for i in range(600):
        tree.age(tree.drop("RANK", f"r{i:03}.json", job_document("RANK", Title=f"again {i}")))
    Scanner(tree.config, jobs).scan("periodic", "periodic")
    Router(tree.config, jobs).run(once=True)
    rank = tree.dest("Monday Rank")
    for copy in rank.iterdir():
        copy.unlink()
    tree.run("redeliver", "--client", "RANK", "--to", "Monday Rank")
    done = lambda: db.run_sql("SELECT count(*) FROM redeliveries WHERE state = 'done'").fetchone()[0]

    router = tree.spawn("router")
    try:
        wait_for(lambda: done() > 0, timeout=60, message="the first requests to be done")
    finally:
        router.kill()                   # SIGKILL
        router.wait(10)
    assert 0 < done() < 600, "killed between two batches of requests"

    wait_for(lambda: tree.run("router", "--once") and done() == 600, timeout=90,
             message="the next router to finish the requests left")
    assert db.run_sql("SELECT count(*), count(DISTINCT redelivery_id) FROM redelivered").fetchone() == (600, 600)
    finished = db.run_sql("SELECT count(*) FROM job_events WHERE detail LIKE 're-delivery % done: Monday Rank'")
    assert finished.fetchone() == (600,)
    names = sorted(p.name for p in rank.iterdir())
    assert names == [f"r{i:03}.json" for i in range(600)], "every copy there, no temporary left"
    assert json.loads((rank / "r599.json").read_text())["JobSpecification"]["JobDetails"]["Title"] == "again 599"


def test_a_redelivery_to_a_paused_destination_waits_for_the_resume_without_an_attempt(tree, db, clock, ops):
    job_id = routed_job(tree, db, clock)
    ops.pause("destination", "Monday Rank", route_names=["Monday Rank"])
    tree.run("redeliver", "--id", str(job_id))
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    row = db.run_sql("SELECT state, attempts, last_error FROM redeliveries").fetchone()
    assert row[:2] == ("pending", 0) and "paused by ops@host" in row[2]
    ops.resume("destination", "Monday Rank")          # due at once
    Router(tree.config, Jobs(db, "test:1", clock)).run(once=True)
    assert redeliveries(db)[0][2] == "done"


def test_dismissed_jobs_are_pruned_like_other_finished_jobs(tree, db, clock, ops):
    from pipeline.jobs import prune
    tree.age(tree.drop("RANK", "bad.json", b"{not json"))
    tree.write_config(detect="incomplete_grace = 0\n")
    scan_and_route(tree, db, clock)
    ops.dismiss([job(db, "bad.json")["id"]], "dealt with")
    assert prune(db, before=clock() + 1) == 1
    assert states(db) == {}


def test_check_config_and_route_explain_say_what_hold_and_unmatched_do(tree):
    tree.write_config(router='unmatched = "fail"\n', routes=HOLD_ROUTE)
    notes = tree.run("check-config").stdout
    assert "route 'Approval': hold = true: its jobs are archived, then held for bin/release" in notes
    assert "[router] unmatched = 'fail': a job no rule routes is failed at route" in notes
    held = tree.drop("LOREAL", "p.json")
    assert "outcome:     held for a person ([[route]] 'Approval' has hold = true)" in tree.run(
        "route", "--explain", str(held)).stdout
    other = tree.drop("RANK", "r.json")
    assert "outcome:     fails at route (no rule matches; router.unmatched = fail)" in tree.run(
        "route", "--explain", str(other)).stdout


def test_the_daily_report_counts_the_jobs_dismissed_that_day(tree, db, clock, ops):
    from pipeline.reporting import figures
    from pipeline.reporting.figures import Day
    tree.age(tree.drop("RANK", "bad.json", b"{not json"))
    tree.write_config(detect="incomplete_grace = 0\n")
    scan_and_route(tree, db, clock)
    ops.dismiss([job(db, "bad.json")["id"]], "dealt with")
    numbers = figures.figures(db, Day.containing(clock(), "UTC"), highlight="", scan_interval=60, now=clock())
    assert numbers["dismissed"] == 1 and numbers["errors"] == 0
