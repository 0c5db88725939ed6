"""A database server that cannot be used: not answering yet at start (the file server booted before
the database host), a password that no longer works, a database that is not there.

The long-running programs wait, saying why once in the server's own words; the operators' tools
exit 69 with that reason; 78 is only ever a bad configuration. The server is reached through a
loopback proxy of the test's own (``helpers.tcp_proxy``), or with a wrong password or database
name in the test's environment: the shared server itself is never stopped or changed.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import psycopg2
import pytest

from conftest import POSTGRES, end_connections, job_document, wait_for
from pipeline import store
from pipeline.store import postgres

pytestmark = pytest.mark.postgresql_only

WRONG = "not-the-password"
DENIED = 'password authentication failed for user "pipeline"'


def through(tree, proxy) -> None:
    """The tree's programs reach the database through ``proxy`` (closed until the test opens it)."""
    tree.database = proxy.url(tree.database)
    tree.write_config()


def drop(tree, name: str):
    path = tree.drop("RANK", name, job_document("RANK"))
    tree.age(path)
    return path


def routed(tree, name: str) -> bool:
    return (tree.dest("Monday Rank") / name).exists()


def stop(*procs) -> list[int]:
    for p in procs:
        p.terminate()
    return [p.wait(30) for p in procs]


def lines(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


# -- not answering at start -----------------------------------------------------------------------

def test_programs_started_before_the_database_answers_wait_say_why_once_and_work_once_it_does(tree, db, proxy):
    through(tree, proxy)
    drop(tree, "first.json")
    programs = {name: tree.spawn(name) for name in ("scanner", "router")}
    try:
        for name in programs:
            wait_for(lambda: "database unreachable" in tree.logs(name), message=f"the {name} to say why it waits")
        time.sleep(3)                       # several tries, none of them another line
        assert [p.poll() for p in programs.values()] == [None, None], tree.logs("router")
        proxy.open()
        wait_for(lambda: routed(tree, "first.json"), timeout=60, message="the file routed once the database answers")
    finally:
        codes = stop(*programs.values())
    assert codes == [0, 0]
    for name in programs:
        log = tree.logs(name)
        said = lines(log, "database unreachable")
        assert len(said) == 1, log
        assert f'port {proxy.port} failed: Connection refused; waiting for it before starting' in said[0], said
        assert "database usable after" in log and "Traceback" not in log, log


def test_once_against_a_server_that_does_not_answer_exits_69_at_once(tree, proxy):
    through(tree, proxy)
    proc = tree.run("router", "--once", check=False)
    assert proc.returncode == 69, proc.stderr
    said = lines(proc.stderr, " ERROR ")
    assert len(said) == 1 and "database unreachable: " in said[0] and "Connection refused" in said[0], proc.stderr


def test_check_config_exits_69_not_78_for_a_server_that_does_not_answer(tree, proxy):
    through(tree, proxy)
    proc = tree.run("check-config", check=False)
    assert proc.returncode == 69, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: database unreachable: ") and "Connection refused" in errors[0]
    proxy.open()
    assert tree.run("check-config").returncode == 0
    # A configuration error is still 78, whether the server answers or not.
    tree.config_path.write_text(tree.config_path.read_text().replace("[router]\n", "[router]\nbatch_size = -5\n"))
    for state in ("open", "closed"):
        proc = tree.run("check-config", check=False)
        assert proc.returncode == 78 and "[router] batch_size" in proc.stderr, (state, proc.stderr)
        proxy.close()


# -- the server's own reason ----------------------------------------------------------------------

def test_a_wrong_password_is_said_in_the_servers_words_by_the_programs_status_and_check_config(tree, db):
    router = tree.spawn("router", PGPASSWORD=WRONG)
    try:
        wait_for(lambda: DENIED in tree.logs("router"), message="the router to say why it waits")
        time.sleep(2)
        assert router.poll() is None, tree.logs("router")
        for tool in ("status", "check-config"):
            proc = tree.run(tool, check=False, PGPASSWORD=WRONG)
            assert proc.returncode == 69, proc.stderr
            said = proc.stderr.strip().splitlines()
            assert len(said) == 1 and "database refused the connection: " in said[0] and DENIED in said[0], said
            assert WRONG not in proc.stdout + proc.stderr
    finally:
        assert stop(router) == [0]
    log = tree.logs("router")
    said = lines(log, "database refused the connection")
    assert len(said) == 1 and DENIED in said[0], log
    assert "unreachable" not in log and WRONG not in log and "Traceback" not in log, log


def test_a_database_that_does_not_exist_is_said_in_the_servers_words(tree):
    name = f"pipeline_missing_{uuid.uuid4().hex[:8]}"
    tree.database = tree.database.replace(POSTGRES, f"{POSTGRES.rsplit('/', 1)[0]}/{name}")
    tree.write_config()
    missing = f'database "{name}" does not exist'
    router = tree.spawn("router")
    try:
        wait_for(lambda: missing in tree.logs("router"), message="the router to say why it waits")
        proc = tree.run("status", check=False)
        assert proc.returncode == 69 and "database refused the connection: " in proc.stderr, proc.stderr
        assert missing in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        assert stop(router) == [0]
    said = lines(tree.logs("router"), missing)
    assert len(said) == 1 and "database refused the connection" in said[0], said


def test_a_password_changed_under_a_running_program_is_said_once_in_the_servers_words_and_waited_out(tree, db, tmp_path):
    """The password in a passfile (libpq reads it at each connection), changed while the router runs."""
    passfile = tmp_path / "pgpass"
    right = f"*:*:*:pipeline:{os.environ.get('PGPASSWORD', '')}\n"
    passfile.write_text(right)
    passfile.chmod(0o600)
    router = tree.spawn("router", PGPASSWORD="", PGPASSFILE=str(passfile))
    try:
        wait_for(lambda: db.run_sql("SELECT count(*) FROM heartbeats").fetchone()[0] == 1,
                 message="the router's first heartbeat")
        passfile.write_text(f"*:*:*:pipeline:{WRONG}\n")
        end_connections(db)
        wait_for(lambda: DENIED in tree.logs("router"), message="the router to say the password is refused")
        time.sleep(3)                       # tries every few seconds, each refused: no further line
        passfile.write_text(right)
        drop(tree, "after.json")
        tree.run("scanner", "--once")
        wait_for(lambda: routed(tree, "after.json"), timeout=30, message="the file routed with the password back")
    finally:
        assert stop(router) == [0]
    log = tree.logs("router")
    said = lines(log, DENIED)
    assert len(said) == 1 and f"database refused the connection ({DENIED}); " in said[0], log
    assert "Traceback" not in log and WRONG not in log, log


def test_the_reason_of_a_connection_turned_away_and_of_one_that_found_no_server(database, proxy):
    """``transient`` and ``describe`` on the errors libpq really gives."""
    found = {}
    for case, url, password in [("password", database, WRONG),
                                ("no password", database, ""),
                                ("no server", proxy.url(database), None)]:
        env = {"PGPASSWORD": password} if password is not None else {}
        saved = {k: os.environ.get(k) for k in ("PGPASSWORD", "PGPASSFILE")}
        os.environ.update(env, PGPASSFILE=os.devnull)
        try:
            with pytest.raises(psycopg2.OperationalError) as e:
                psycopg2.connect(url, connect_timeout=5)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        found[case] = (postgres.transient(e.value), postgres.describe(e.value))
    assert found == {
        "password": ("refused", DENIED),
        "no password": ("refused", "no password supplied"),
        "no server": ("unreachable", f'connection to server at "127.0.0.1", port {proxy.port} failed: Connection refused'),
    }


def test_trouble_is_said_again_only_when_the_databases_reason_changes(caplog):
    trouble = store.Trouble()
    with caplog.at_level(logging.WARNING):
        for detail in ["server closed the connection unexpectedly"] + ["Connection refused"] * 3:
            trouble.met("unreachable", detail, "trying again")
        for _ in range(3):
            trouble.met("refused", DENIED, "trying again")
    said = [r.getMessage() for r in caplog.records]
    assert [line.split(";")[0] for line in said] == [
        "database unreachable (server closed the connection unexpectedly)",
        "database unreachable (Connection refused)",
        f"database refused the connection ({DENIED})"]
