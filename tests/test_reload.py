"""SIGHUP: a running program takes a changed configuration between steps, all of it or none of it
(docs/design.md#changing-the-configuration-live)."""

import shutil
import signal
import socket
import time

import pytest

from conftest import MATRIX, ROOT, job_document, wait_for
from helpers.api_server import HANG, ApiServer
from pipeline import config as config_module
from pipeline.heartbeat import Heartbeat, request_reload
from pipeline.web import app as web_app
from pipeline.reload import fingerprint, keep_restart_only

NEW_RANK = MATRIX.replace('to = "dest/Monday Rank"', 'to = "dest/Monday Rank NEW"')


def beats(db, prefix="router"):
    return db.run_sql("SELECT pid, config, config_since FROM heartbeats WHERE program LIKE ?",
                      (prefix + "%",)).fetchall()


def problems(db):
    return db.run_sql("SELECT file, problem, since FROM config_problems").fetchall()


def hup_until_logged(proc, tree, program, text, count=1):
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: tree.logs(program).count(text) >= count, timeout=30, message=f"{text!r} logged")


@pytest.fixture
def router(tree, db):
    proc = tree.spawn("router")
    wait_for(lambda: beats(db), message="the router's heartbeat")
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def route_one(tree, name, client="RANK", config=None):
    """A job for the running router, detected by a scanner run with ``config`` (a file beside)."""
    tree.age(tree.drop(client, name))
    tree.run("scanner", "--once", **({"PIPELINE_CONFIG": str(config)} if config else {}))


# -- the fingerprint --------------------------------------------------------------------------------

def test_the_fingerprint_names_the_effective_configuration(tmp_path):
    def of(text):
        path = tmp_path / "p.toml"
        path.write_text(text)
        return fingerprint(config_module.load(path))

    plain = of('[router]\nbatch_size = 50\n[[route]]\nname = "A"\nclients = ["RANK", "X"]\nto = "dest/a"\n')
    # Key order, comments, spacing, list order of a set, a default written out: the same configuration.
    assert of('# a comment\n[[route]]\nto = "dest/a"  # here\nclients = ["x", "RANK"]\nname = "A"\n'
              '[router]\nconflict = "replace"\nbatch_size   = 50\n') == plain
    assert of('[router]\nbatch_size = 51\n[[route]]\nname = "A"\nclients = ["RANK", "X"]\nto = "dest/a"\n') != plain
    assert of('[router]\nbatch_size = 50\n[[route]]\nname = "A"\nclients = ["RANK"]\nto = "dest/a"\n') != plain
    assert len(plain) == 12 and int(plain, 16) >= 0


def test_a_schema_file_changed_changes_the_fingerprint(tmp_path):
    schema = tmp_path / "job.schema.json"
    schema.write_text('{"type": "object"}')
    path = tmp_path / "p.toml"
    path.write_text('[[schema]]\nfile = "job.schema.json"\n')
    before = fingerprint(config_module.load(path))
    schema.write_text('{"type": "object", "required": ["JobSpecification"]}')
    assert fingerprint(config_module.load(path)) != before


def test_restart_only_keys_are_kept_and_named(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[dashboard]\nlisten = "127.0.0.1:9000"\n[router]\nbatch_size = 7\n')
    running = config_module.load(path)
    path.write_text('[paths]\nstore = "elsewhere"\n[dashboard]\nlisten = "127.0.0.1:9001"\nactions = true\n'
                    '[router]\nbatch_size = 8\n')
    applied, kept = keep_restart_only(running, config_module.load(path))
    assert kept == ["[paths] store", "[dashboard] listen"]
    assert applied.paths == running.paths and applied.dashboard.listen == ("127.0.0.1", 9000)
    assert applied.dashboard.actions is True and applied.router.batch_size == 8


def test_a_file_cut_inside_a_character_is_a_configuration_error(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes('[report]\ntitle = "Caf\u00e9"\n'.encode()[:-3])
    with pytest.raises(config_module.ConfigError, match="not valid TOML: not UTF-8 at byte"):
        config_module.load(path)


# -- a running program ------------------------------------------------------------------------------

def test_a_changed_route_applies_without_a_restart(tree, db, router):
    pid, before, _ = beats(db)[0]
    route_one(tree, "old.json")
    wait_for(lambda: (tree.dest("Monday Rank") / "old.json").exists(), message="routed the old way")
    tree.write_config(routes=NEW_RANK)
    hup_until_logged(router, tree, "router", "configuration reloaded from")
    wait_for(lambda: beats(db)[0][1] != before, message="the new fingerprint beaten")
    route_one(tree, "new.json")
    wait_for(lambda: (tree.dest("Monday Rank NEW") / "new.json").exists(), message="routed the new way")
    assert not (tree.dest("Monday Rank") / "new.json").exists()
    assert beats(db)[0][0] == pid == router.pid and router.poll() is None
    assert beats(db)[0][1] == fingerprint(config_module.load(tree.config_path))


def test_a_reload_requested_on_another_host_reaches_a_program_that_got_no_signal(tree, db, router):
    """bin/reload on one host HUPs that host's programs; the others find its request in the database
    at their next heartbeat. Here the router gets no signal at all, only the recorded request."""
    pid = beats(db)[0][0]
    tree.write_config(routes=NEW_RANK)
    request_reload(db, "ops@elsewhere")
    wait_for(lambda: "configuration reloaded from" in tree.logs("router"), timeout=30,
             message="the request seen at a heartbeat")
    route_one(tree, "new.json")
    wait_for(lambda: (tree.dest("Monday Rank NEW") / "new.json").exists(), message="routed the new way")
    assert beats(db)[0][0] == pid == router.pid and router.poll() is None
    assert db.run_sql("SELECT host, actor FROM config_reloads").fetchall() == [(socket.gethostname(), "ops@elsewhere")]


def test_a_heartbeat_asks_for_a_reload_only_for_a_request_newer_than_its_start(db):
    request_reload(db, "ops@host")              # before the program started: it read the file as it is
    beat = Heartbeat(db, "router_00")
    beat.beat(force=True)
    assert not beat.reload_asked
    request_reload(db, "ops@host")
    beat.beat(force=True)
    assert beat.reload_asked
    beat.reload_asked = False
    beat.beat(force=True)                       # the same request is not seen twice
    assert not beat.reload_asked


def test_a_key_that_needs_a_restart_is_kept_and_said_once(tree, db, router):
    tree.config_path.write_text(tree.config_path.read_text().replace('store = "store"', 'store = "store2"')
                                .replace('to = "dest/Monday Rank"', 'to = "dest/Monday Rank NEW"'))
    hup_until_logged(router, tree, "router", "configuration reloaded from")
    assert tree.logs("router").count("needs a restart") == 1
    assert "[paths] store" in tree.logs("router")
    route_one(tree, "a.json")
    wait_for(lambda: (tree.dest("Monday Rank NEW") / "a.json").exists(), message="the route changed")
    assert (tree.store / "RANK" / "a.json").exists()            # the archive did not move


BROKEN = {
    "a bad value": lambda text: text.replace("[router]\n", "[router]\nconflict = 'sometimes'\n"),
    "half-written (an editor's save)": lambda text: text[:text.index("[[route]]") + 30],
    "cut inside a character": lambda text: (text + '[report]\ntitle = "Caf\u00e9"\n').encode()[:-3],
    "unreadable": None,
}


@pytest.mark.parametrize("how", BROKEN)
def test_an_invalid_file_changes_nothing_and_is_recorded_until_fixed(tree, db, router, how):
    good = tree.config_path.read_text()
    (tree.root / "good.toml").write_text(good)
    before = beats(db)[0][1]
    if how == "unreadable":
        # chmod 000 does not stop root; a folder where the file was cannot be read by anyone.
        tree.config_path.unlink()
        tree.config_path.mkdir()
    else:
        broken = BROKEN[how](good)
        (tree.config_path.write_bytes if isinstance(broken, bytes) else tree.config_path.write_text)(broken)
    hup_until_logged(router, tree, "router", "configuration not reloaded, running on as before")
    line = next(l for l in tree.logs("router").splitlines() if "configuration not reloaded" in l)
    assert " ERROR " in line and str(tree.config_path) in line
    if how == "a bad value":
        assert "[router] conflict" in line
    wait_for(lambda: problems(db), message="the invalid file recorded")
    [(file, problem, since)] = problems(db)
    assert file == str(tree.config_path) and problem in line
    status = tree.run("status", check=False)
    if how in ("a bad value", "half-written (an editor's save)"):
        assert "the config on disk is invalid since " in status.stdout and problem in status.stdout
    else:       # not TOML at all: not even the database can be read from it
        assert status.returncode == 78 and problem in status.stderr
    # Given a file it can read, status finds what the router recorded (as the dashboard shows it).
    status = tree.run("status", check=False, PIPELINE_CONFIG=str(tree.root / "good.toml"))
    assert "the config on disk is invalid since " in status.stdout and problem in status.stdout

    # Nothing changed: the router routes by the rules it had, and says it runs what it ran.
    route_one(tree, "during.json", config=tree.root / "good.toml")
    wait_for(lambda: (tree.dest("Monday Rank") / "during.json").exists(), message="routed as before")
    assert beats(db)[0][1] == before and router.poll() is None

    if how == "unreadable":
        tree.config_path.rmdir()
    tree.config_path.write_text(good)
    hup_until_logged(router, tree, "router", "configuration reloaded from")
    wait_for(lambda: not problems(db), message="the problem cleared")
    assert "config on disk is invalid" not in tree.run("status", check=False).stdout


def test_a_hup_storm_reloads_a_few_times_and_loses_nothing(tree, db, router):
    for i in range(200):
        tree.drop(("RANK", "LOREAL")[i % 2], f"{i:03d}.json", job_document(("RANK", "LOREAL")[i % 2]))
    for path in tree.hot.rglob("*.json"):
        tree.age(path)
    tree.run("scanner", "--once")
    for _ in range(100):                    # 100 in a second
        router.send_signal(signal.SIGHUP)
        time.sleep(0.01)
    wait_for(lambda: db.run_sql("SELECT count(*) FROM jobs WHERE state = 'routed'").fetchone()[0] == 200,
             timeout=60, message="every job routed")
    wait_for(lambda: "configuration reloaded from" in tree.logs("router"), message="a reload")
    assert router.poll() is None
    reloads = tree.logs("router").count("configuration reloaded from")
    assert 1 <= reloads < 100
    assert " ERROR " not in tree.logs("router") and "Traceback" not in tree.logs("router")


def test_a_hup_during_a_batch_applies_after_the_batch(tree, db):
    """Each job goes by the old rules or by the new, never by some of both; no job is lost."""
    tree.write_config(router="batch_size = 50\nthreads = 1")
    for i in range(600):
        tree.drop("RANK", f"{i:03d}.json")
    for path in tree.hot.rglob("*.json"):
        tree.age(path)
    tree.run("scanner", "--once")
    proc = tree.spawn("router")
    try:
        wait_for(lambda: db.run_sql("SELECT count(*) FROM deliveries").fetchone()[0] >= 50, interval=0.005,
                 message="the router at work")
        tree.write_config(router="batch_size = 50\nthreads = 1", routes=NEW_RANK)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: db.run_sql("SELECT count(*) FROM jobs WHERE state = 'routed'").fetchone()[0] == 600,
                 timeout=120, message="every job routed")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    rows = db.run_sql("SELECT job_id, path, delivered_at FROM deliveries ORDER BY delivered_at").fetchall()
    by_job = {}
    for job_id, path, at in rows:
        by_job.setdefault(job_id, []).append(("NEW" in path, at))
    assert len(by_job) == 600 and all(len(d) == 1 for d in by_job.values())   # one destination each
    old = [at for [(new, at)] in by_job.values() if not new]
    new = [at for [(new, at)] in by_job.values() if new]
    assert old and new and max(old) <= min(new)         # the switch fell between two batches
    assert len(tree.files(tree.dest("Monday Rank"))) + len(tree.files(tree.dest("Monday Rank NEW"))) == 600


@pytest.mark.parametrize("program", ["scanner", "watcher", "notifier", "reporter", "dashboard"])
def test_every_program_reloads_on_hup(tree, db, program):
    proc = tree.spawn(program)
    try:
        wait_for(lambda: beats(db, program), message=f"the {program}'s heartbeat")
        before = beats(db, program)[0][1]
        tree.write_config(extra='[alerts]\nstuck_after = 1234\n')
        hup_until_logged(proc, tree, program, "configuration reloaded from")
        wait_for(lambda: beats(db, program)[0][1] != before, message="the new fingerprint")
        assert beats(db, program)[0][0] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_status_warns_when_programs_run_different_configurations(tree, db, router):
    scanner = tree.spawn("scanner")
    try:
        wait_for(lambda: beats(db, "scanner"), message="the scanner's heartbeat")
        assert "different configurations" not in tree.run("status", check=False).stdout
        tree.write_config(routes=NEW_RANK)
        hup_until_logged(router, tree, "router", "configuration reloaded from")
        wait_for(lambda: beats(db)[0][1] != beats(db, "scanner")[0][1], message="the router's new fingerprint")
        out = tree.run("status", check=False).stdout
        line = next(l for l in out.splitlines() if "different configurations" in l)
        assert beats(db)[0][1] in line and beats(db, "scanner")[0][1] in line and "since" in line
        hup_until_logged(scanner, tree, "scanner", "configuration reloaded from")
        wait_for(lambda: beats(db)[0][1] == beats(db, "scanner")[0][1], message="the scanner caught up")
        assert "different configurations" not in tree.run("status", check=False).stdout
    finally:
        scanner.send_signal(signal.SIGTERM)
        scanner.wait(30)


def test_a_reload_with_a_channel_whose_variable_is_unset_changes_nothing(tree, db):
    """What a program derives from the file may fail too (here the reporter's alert channel): the
    whole reload is refused, as for a bad key."""
    proc = tree.spawn("reporter")
    try:
        wait_for(lambda: beats(db, "reporter"), message="the reporter's heartbeat")
        before = beats(db, "reporter")[0][1]
        tree.write_config(extra='[alerts]\nurls = ["env:NO_SUCH_VARIABLE_29"]\n')
        hup_until_logged(proc, tree, "reporter", "configuration not reloaded")
        assert "NO_SUCH_VARIABLE_29" in tree.logs("reporter")
        wait_for(lambda: problems(db), message="recorded")
        assert beats(db, "reporter")[0][1] == before and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_the_dashboard_overview_warns_of_an_invalid_file(tree, db):
    beat = Heartbeat(db, "router_00", config="abc", config_file=str(tree.config_path))
    beat.config_invalid(str(tree.config_path), "pipeline.toml: [router] conflict: expected one of ...")
    beat.beat()
    page = web_app.create_app(tree.config, db).test_client().get("/").get_data(as_text=True)
    assert "Warning: the config on disk is invalid since " in page and "[router] conflict" in page
    beat.config_loaded("abc", str(tree.config_path))
    beat.beat()
    page = web_app.create_app(tree.config, db).test_client().get("/").get_data(as_text=True)
    assert "config on disk is invalid" not in page


def test_the_notifier_takes_new_api_settings_once_its_call_in_flight_ended(tree, db):
    api = ApiServer()
    api.script = [HANG]
    settings = f'[api]\nendpoint = "{api.url}"\nheaders = {{ X-Version = "%s" }}\n'
    try:
        tree.write_config(extra=settings % "1")
        route_one(tree, "first.json")
        tree.run("router", "--once")
        notifier = tree.spawn("notifier")
        try:
            wait_for(lambda: api.active == 1, message="the call in flight")
            tree.write_config(extra=settings % "2")
            hup_until_logged(notifier, tree, "notifier", "configuration reloaded from")
            route_one(tree, "second.json")
            tree.run("router", "--once")
            api.release.set()
            wait_for(lambda: db.run_sql("SELECT count(*) FROM jobs WHERE state = 'notified'").fetchone()[0] == 2,
                     message="both notified")
        finally:
            notifier.send_signal(signal.SIGTERM)
            notifier.wait(30)
    finally:
        api.close()
    # The call in flight kept the headers it started with; the next call has the new ones.
    assert [r.headers["X-Version"] for r in api.received] == ["1", "2"]


def test_bin_reload_refuses_a_bad_file_before_asking_supervisord(tree):
    shutil.copy(ROOT / "supervisord.conf", tree.root / "supervisord.conf")
    good = tree.config_path.read_text()
    tree.config_path.write_text(good.replace("[router]\n", "[router]\nconflict = 'sometimes'\n"))
    refused = tree.run("reload", "--site", str(tree.root), check=False)
    assert refused.returncode == 78 and "[router] conflict" in refused.stderr
    assert "nothing signalled" in refused.stderr and "supervisorctl" not in refused.stderr
    tree.config_path.write_text(good)
    alone = tree.run("reload", "--site", str(tree.root), check=False)      # no supervisord runs here
    assert alone.returncode == 1 and "is supervisord running" in alone.stderr


def test_bin_reload_needs_a_site(tree):
    proc = tree.run("reload", "--site", str(tree.root / "nowhere"), check=False)
    assert proc.returncode == 2 and "no supervisord.conf in" in proc.stderr
