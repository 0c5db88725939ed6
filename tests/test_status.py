"""bin/status: what it shows, and its exit code as a health check (docs/design.md#operating-it)."""

import json
import os
import re
import time

import pytest

from helpers.smtp_server import free_port
from pipeline.heartbeat import Heartbeat
from pipeline.jobs import Jobs
from pipeline.router import Router
from pipeline.scanner import Scanner


@pytest.fixture(autouse=True)
def hot_folder(tree):
    """These tests stand in for the running programs, and the watcher makes the hot folder at start."""
    tree.hot.mkdir(parents=True, exist_ok=True)


def beat_all(db, programs=("scanner", "watcher", "router_00", "router_01", "dashboard"), at=None):
    for name in programs:
        Heartbeat(db, name, clock=(lambda: at) if at else time.time).beat(force=True)


def status(tree, *args):
    proc = tree.run("status", *args, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_healthy_idle_pipeline_exits_zero(tree, db):
    tree.drop("RANK", "a.json")
    jobs = Jobs(db, "t:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)
    beat_all(db)
    code, out, _ = status(tree)
    assert code == 0, out
    assert "HEALTHY" in out and "routed 1" in out and "RANK" in out
    for program in ("scanner", "watcher", "router_00", "router_01"):
        assert program in out


def test_json_carries_the_same_figures(tree, db):
    tree.drop("RANK", "bad.json", "{not json")
    jobs = Jobs(db, "t:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)
    beat_all(db)
    code, out, _ = status(tree, "--json")
    data = json.loads(out)
    assert code == 0 and data["healthy"] is True and data["problems"] == []
    assert data["jobs_by_state"] == {"failed": 1}
    assert data["last_errors"][0]["step"] == "validate"
    assert {p["program"] for p in data["programs"]} == {"scanner", "watcher", "router_00", "router_01", "dashboard"}
    assert data["last_scans"][0]["kind"] == "startup"


def test_no_router_running_is_unhealthy(tree, db):
    beat_all(db, ("scanner", "watcher"))
    code, out, _ = status(tree)
    assert code == 1
    assert "PROBLEM   router: not running (no heartbeat)" in out


def test_a_silent_program_is_unhealthy(tree, db):
    beat_all(db, ("scanner", "watcher", "router_00", "dashboard"))
    beat_all(db, ("router_01",), at=time.time() - 45)          # died without retiring its heartbeat
    code, out, _ = status(tree)
    assert code == 1
    # 45 s, and the moments bin/status took to start on a busy machine.
    assert int(re.search(r"router_01 \(pid \d+ on \S+\): silent for (\d+)s", out).group(1)) >= 45


def test_a_job_waiting_past_stuck_after_is_unhealthy(tree, db):
    tree.write_config(extra="[alerts]\nstuck_after = 1\n")
    jobs = Jobs(db, "t:1", clock=lambda: time.time() - 5)      # detected five seconds ago
    tree.drop("RANK", "a.json")
    Scanner(tree.config, jobs).scan("startup", "startup")
    beat_all(db)
    code, out, _ = status(tree)
    assert code == 1
    assert "1 job(s) waiting longer than 1s; the oldest: RANK/a.json (detected)" in out


def test_a_job_routed_but_not_notified_past_stuck_after_is_unhealthy_with_an_api(tree, db):
    tree.write_config(extra="[alerts]\nstuck_after = 1\n")
    jobs = Jobs(db, "t:1", clock=lambda: time.time() - 5)      # detected and routed five seconds ago
    tree.drop("RANK", "a.json")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)
    beat_all(db, ("scanner", "watcher", "router_00", "notifier", "dashboard"))
    assert status(tree)[0] == 0                                 # no API: routed is the final state
    tree.write_config(extra='[api]\nendpoint = "http://127.0.0.1:9/jobs"\n[alerts]\nstuck_after = 1\n')
    code, out, _ = status(tree)
    assert code == 1
    assert ("1 job(s) waiting longer than 1s; the oldest: RANK/a.json (routed) routed but not yet notified "
            "(no attempt recorded)") in out
    data = json.loads(status(tree, "--json")[1])
    assert data["stuck_jobs"] == 1 and data["stuck"][0]["state"] == "routed"


def test_the_notifier_is_required_only_with_an_api(tree, db):
    beat_all(db)
    assert status(tree)[0] == 0
    tree.write_config(extra='[api]\nendpoint = "http://127.0.0.1:9/jobs"\n')
    code, out, _ = status(tree)
    assert code == 1 and "notifier: not running" in out


@pytest.mark.sqlite_only
def test_an_unusable_database_exits_69(tree):
    tree.config.paths.database.write_bytes(b"garbage, not a database" * 100)
    code, out, err = status(tree)
    assert code == 69 and "database unusable" in err


@pytest.mark.sqlite_only
def test_a_missing_database_exits_69(tree):
    code, _, err = status(tree)
    assert code == 69 and "no such database" in err
    assert not os.path.exists(tree.config.paths.database)       # status never creates one


@pytest.mark.postgresql_only
def test_a_postgresql_database_without_the_pipeline_tables_exits_69(tree):
    code, _, err = status(tree)
    assert code == 69 and "no pipeline tables in this database" in err


@pytest.mark.sqlite_only
def test_an_unreachable_postgresql_server_exits_69_with_one_line(tree):
    tree.database = f"postgresql://pipeline@127.0.0.1:{free_port()}/pipeline"      # nothing listens there
    tree.write_config()
    code, _, err = status(tree)
    assert code == 69 and "database unreachable: " in err and "Connection refused" in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_hot_folder_is_unhealthy(tree, db):
    beat_all(db)
    assert status(tree)[0] == 0
    tree.hot.rename(tree.root / "hot.old")
    code, out, _ = status(tree)
    assert code == 1 and "hot folder" in out and "missing" in out, out


# -- the Nagios check ----------------------------------------------------------------------------------

def _stuck(tree, db, name: str, ago: float = 5) -> None:
    """A job detected ``ago`` seconds ago and never routed, past a stuck_after of 1 s."""
    tree.write_config(extra="[alerts]\nstuck_after = 1\n")
    tree.drop("RANK", name)
    Scanner(tree.config, Jobs(db, "t:1", clock=lambda: time.time() - ago)).scan("startup", "startup")


def test_nagios_output_is_one_line_whatever_a_file_name_holds(tree, db):
    _stuck(tree, db, "line\nfeed|pipe\x1b[2J.json")
    beat_all(db)
    code, out, _ = status(tree, "--nagios")
    assert code == 1 and out.endswith("\n") and out.count("\n") == 1, out
    summary, perf = out.rstrip("\n").split(" | ")                 # the one "|": perfdata follows
    assert summary.startswith("PIPELINE WARNING - 1 job(s) waiting longer than 1s")
    assert "RANK/line\\nfeed/pipe\\x1b[2J.json" in summary and "\x1b" not in out
    tree.config_path.write_text('[paths]\n"bad\\u001b[2Jkey|x" = 1\n')      # the UNKNOWN line too
    code, out, _ = status(tree, "--nagios")
    assert code == 3 and out.count("\n") == 1 and "|" not in out and "\x1b" not in out, out
    assert "[paths] bad\\x1b[2Jkey/x: unknown key" in out


def test_nagios_perfdata_numbers_are_plain_decimals(tree, db):
    _stuck(tree, db, "old.json", ago=14 * 86400)                  # a fortnight: 1209600 s
    beat_all(db)
    code, out, _ = status(tree, "--nagios")
    oldest = re.search(r" oldest_waiting=([^;]*);;;0", out).group(1)
    assert re.fullmatch(r"12096\d\d(\.\d)?s", oldest), out
    assert "e+" not in out.split(" | ")[1]


@pytest.mark.parametrize("args", [("--nagios", "--bogus"), ("--bogus", "--nagios"), ("--nag", "--json"),
                                  ("--nagios", "--config"), ("--nagios=yes",)])
def test_a_usage_error_of_a_nagios_check_is_unknown_on_one_line(tree, args):
    code, out, err = status(tree, *args)
    assert code == 3 and out.count("\n") == 1 and out.startswith("PIPELINE UNKNOWN - usage error: "), (out, err)
    assert "|" not in out


@pytest.mark.parametrize("args", [("--bogus",), ("--json", "--bogus"), ("--config",)])
def test_a_usage_error_of_bin_status_keeps_exit_2(tree, args):
    code, out, err = status(tree, *args)
    assert code == 2 and out == "" and "usage: bin/status" in err


def test_nagios_counts_as_waiting_only_what_waits(tree, db):
    for i in range(7):
        tree.drop("RANK", f"{i}.json")
    jobs = Jobs(db, "t:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)
    beat_all(db)
    code, out, _ = status(tree, "--nagios")                     # no API: routed is final
    assert code == 0 and out.startswith("PIPELINE OK - 0 job(s) waiting, 5 program(s) beating | ")
    assert "routed=7;;;0" in out
    tree.write_config(extra='[api]\nendpoint = "http://127.0.0.1:9/jobs"\n')
    assert json.loads(status(tree, "--json")[1])["jobs_waiting"] == 7      # now they wait for the API


def test_a_dashboard_that_never_started_or_went_silent_is_a_warning(tree, db):
    beat_all(db, ("scanner", "watcher", "router_00", "router_01"))
    tree.write_config(f'[dashboard]\nlisten = "127.0.0.1:{tree.dashboard_port}"\nactions = true\n')
    fatal = tree.run("dashboard", check=False, timeout=30, DASHBOARD_PASSWORD="")     # supervisord: FATAL
    assert fatal.returncode == 78
    code, out, _ = status(tree)
    assert code == 1 and "PROBLEM   dashboard: not running (no heartbeat)" in out
    code, out, _ = status(tree, "--nagios")
    assert code == 1 and out.startswith("PIPELINE WARNING - dashboard: not running (no heartbeat) | ")
    beat_all(db, ("dashboard",), at=time.time() - 45)              # died without retiring its heartbeat
    code, out, _ = status(tree, "--nagios")
    assert code == 1 and re.match(r"PIPELINE WARNING - dashboard \(pid \d+ on \S+\): silent for \d+s \| ", out)
    beat_all(db, ("dashboard",))
    assert status(tree, "--nagios")[0] == 0 and status(tree)[0] == 0


def test_each_remotes_last_success_and_last_error_are_kept_apart_and_shown(tree, db):
    """What routers saw of their remotes (docs/design.md#remote-destinations): a later success
    keeps the last error, a later error keeps the last success."""
    from pipeline.remote import record
    from pipeline.remote.delivery import Seen
    record.write(db, {"sftp://press@files:2222": Seen(success_at=1_800_000_000.0),
                      "s3://jobs": Seen(error="s3://jobs/a.json: unreachable", error_at=1_800_000_001.0)})
    record.write(db, {"sftp://press@files:2222": Seen(error="sftp://press@files:2222: credentials refused",
                                                      error_at=1_800_000_002.0),
                      "s3://jobs": Seen(success_at=1_800_000_003.0)})
    assert record.latest(db) == [
        {"remote": "s3://jobs", "last_success": 1_800_000_003.0, "last_error": "s3://jobs/a.json: unreachable",
         "last_error_at": 1_800_000_001.0},
        {"remote": "sftp://press@files:2222", "last_success": 1_800_000_000.0,
         "last_error": "sftp://press@files:2222: credentials refused", "last_error_at": 1_800_000_002.0}]
    beat_all(db)
    _, out, _ = status(tree)
    assert ("remote    s3://jobs: last success 2027-01-15 08:00:03; last error 2027-01-15 08:00:01: "
            "s3://jobs/a.json: unreachable") in out
    assert json.loads(status(tree, "--json")[1])["remotes"][1]["remote"] == "sftp://press@files:2222"
