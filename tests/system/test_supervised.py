"""The real programs under a real supervisord, with this repository's supervisord.conf (docs/design.md#shape, docs/design.md#operating-it)."""

import os
import re
import shutil
import sys
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, job_document, wait_for
from pipeline.store.models import Heartbeat, Job

VENV_BIN = ROOT / ".venv" / "bin"


def supervisorctl(conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(conf), *args],
                          capture_output=True, text=True, timeout=30)


def all_running(conf: Path, expected: int) -> bool:
    lines = supervisorctl(conf, "status").stdout.splitlines()
    return len(lines) == expected and all(" RUNNING " in line for line in lines)


@pytest.fixture
def installation(tmp_path):
    """This repository's supervisord.conf beside a link to its bin/, so %(here)s is a fresh place."""
    here = tmp_path / "install"
    here.mkdir()
    shutil.copy(ROOT / "supervisord.conf", here / "supervisord.conf")
    os.symlink(ROOT / "bin", here / "bin")
    (here / "var" / "log").mkdir(parents=True)
    return here


def niceness(pid: str) -> int:
    """A process's nice value (the 19th field of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid.strip()}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[16])


def set_routers(conf: Path, n: int) -> None:
    """The router count is numprocs in [program:router]; an installation edits it there."""
    conf.write_text(re.sub(r"(?m)^numprocs = 2$", f"numprocs = {n}", conf.read_text(), count=1))


def start_supervisord(conf: Path, env: dict) -> subprocess.Popen:
    """supervisord as bin/start runs it (pipeline.supervise)."""
    return subprocess.Popen([str(VENV_BIN / "python"), "-m", "pipeline.supervise", "--nodaemon", "-c", str(conf)],
                            env=env, cwd=conf.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_supervisord_runs_every_program_and_files_get_routed(tree, db, installation):
    """`supervisord -c supervisord.conf` as it is: no PIPELINE_ROUTERS or other variable it needs."""
    conf = installation / "supervisord.conf"
    env = tree.env()
    env.pop("PIPELINE_ROUTERS", None)
    proc = start_supervisord(conf, env)
    try:
        wait_for(lambda: all_running(conf, 7), timeout=30, interval=0.3, message="7 programs RUNNING")
        status = supervisorctl(conf, "status").stdout
        for name in ("scanner", "watcher", "router:router_00", "router:router_01", "notifier", "reporter"):
            assert name in status
        for i, (client, category) in enumerate([("RANK", "CELTRA"), ("LOREAL", "X"), ("ACME", "Y")]):
            tree.drop(client, f"{i}.json", job_document(client, category))
        wait_for(lambda: Job.select().where(Job.state == "routed").count() == 3, message="3 routed jobs")
        assert (tree.dest("Celtra - Create_Rename - Project_Design File") / "0.json").exists()
        assert (tree.dest("CLIENT-STORES/LOREAL/IN") / "1.json").exists()
        assert (tree.store / "ACME" / "2.json").exists() and tree.files(tree.hot) == []
        assert {h.program for h in Heartbeat.select()} >= {"scanner", "watcher", "router_00", "router_01"}
        # Files waiting at start need the scanner and a router: those are started first.
        spawned = re.findall(r"spawned: '(\w+)'", (installation / "var" / "log" / "supervisord.log").read_text())
        assert spawned[:4] == ["scanner", "router_00", "router_01", "watcher"]
        # What comes after routing takes no CPU from it, its start included.
        nice = {name: niceness(supervisorctl(conf, "pid", name).stdout)
                for name in ("scanner", "router:router_00", "watcher", "notifier", "reporter", "dashboard")}
        assert {name for name, value in nice.items() if value > nice["scanner"]} == {"notifier", "reporter", "dashboard"}
        assert supervisorctl(conf, "stop", "router:*").returncode == 0
        assert "STOPPED" in supervisorctl(conf, "status", "router:router_00").stdout
        log = (installation / "var" / "log" / "router_00.log").read_text()
        assert "router_00 stopped" in log            # a graceful stop, not a kill
    finally:
        stop(proc)


def fresh_copy(tmp_path: Path) -> Path:
    """The repository's files in a folder of their own, its venv linked (already built)."""
    clone = tmp_path / "clone"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    untracked_new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT,
                                   capture_output=True, text=True, check=True).stdout.split()
    for name in tracked + untracked_new:
        if (ROOT / name).exists():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name, follow_symlinks=False)
    os.symlink(ROOT / ".venv", clone / ".venv")
    return clone


def test_the_readme_start_command_works_from_a_fresh_copy(tmp_path):
    """bin/start on built-in defaults: venv (here linked, already built), database, supervisord in front."""
    clone = fresh_copy(tmp_path)
    readme = (clone / "README.md").read_text().splitlines()
    start = next(line.strip().strip("`") for line in readme[:15] if "bin/start" in line).split()[0]
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_CONFIG"}
    proc = subprocess.Popen([str(clone / start)], cwd=clone, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        conf = clone / "supervisord.conf"
        wait_for(lambda: all_running(conf, 7), timeout=30, interval=0.3, message="the pipeline to start")
        target = clone / "var" / "hot" / "RANK" / "1.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(str(job_document("RANK")).replace("'", '"'))
        wait_for(lambda: (clone / "var" / "store" / "RANK" / "1.json").exists(), message="the file archived")
        assert (clone / "var" / "pipeline.db").exists()
    finally:
        code = stop(proc, signal.SIGINT)                 # Ctrl-C stops everything
    assert code == 0
    assert not (clone / "var" / "supervisor.sock").exists() or supervisorctl(conf, "status").returncode != 0


@pytest.mark.postgresql_only
def test_a_database_not_answering_when_the_pipeline_starts_is_waited_for_and_nothing_goes_fatal(tree, db, tmp_path, proxy):
    """A power cut: the file server boots before the database host. bin/start starts the pipeline
    anyway; every program waits, saying why once, and supervisord keeps it RUNNING (never FATAL
    after startretries); once the database answers, files flow."""
    tree.database = proxy.url(tree.database)
    tree.write_config()
    clone = fresh_copy(tmp_path)
    conf = clone / "supervisord.conf"
    err = tmp_path / "start.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen([str(clone / "bin" / "start")], cwd=clone, env=tree.env(), stdout=subprocess.DEVNULL,
                                stderr=out)
    try:
        wait_for(lambda: all_running(conf, 7), timeout=60, interval=0.3, message="7 programs RUNNING")
        time.sleep(8)                   # long past startsecs and the retries a failing start gets
        assert all_running(conf, 7), supervisorctl(conf, "status").stdout
        down = tree.run("status", check=False)
        assert down.returncode == 69 and "database unreachable: " in down.stderr, down.stderr
        proxy.open()
        tree.drop("RANK", "1.json", job_document("RANK"))
        wait_for(lambda: (tree.dest("Monday Rank") / "1.json").exists(), timeout=90, message="the file routed")
        assert all_running(conf, 7), supervisorctl(conf, "status").stdout
    finally:
        code = stop(proc, signal.SIGINT)
    assert code == 0
    assert "bin/start: starting anyway; the programs wait for the database" in err.read_text()
    for log in sorted((clone / "var" / "log").glob("*_*.log")) + [clone / "var" / "log" / f"{p}.log" for p in (
            "scanner", "watcher", "notifier", "reporter", "dashboard")]:
        text = log.read_text()
        assert text.count("database unreachable: ") == 1 and "waiting for it before starting" in text, (log, text)
        assert "Traceback" not in text, (log, text)


def test_status_is_healthy_when_idle_and_not_when_the_router_is_stopped_with_work_waiting(tree, db, installation):
    conf = installation / "supervisord.conf"
    set_routers(conf, 3)
    proc = start_supervisord(conf, tree.env())
    try:
        wait_for(lambda: all_running(conf, 8), timeout=30, interval=0.3, message="8 programs RUNNING")
        assert "router:router_02" in supervisorctl(conf, "status").stdout      # numprocs as edited
        wait_for(lambda: tree.run("status", check=False).returncode == 0, message="a healthy idle pipeline")
        assert supervisorctl(conf, "stop", "router:*").returncode == 0
        tree.drop("RANK", "waiting.json")
        wait_for(lambda: Job.select().count() == 1, message="the job detected")
        proc_status = tree.run("status", check=False)
        assert proc_status.returncode == 1
        assert "router: not running (no heartbeat)" in proc_status.stdout
        assert supervisorctl(conf, "start", "router:*").returncode == 0
        wait_for(lambda: Job.get().state == "routed", message="the waiting job routed")
    finally:
        stop(proc)


def test_stop_all_during_a_busy_run_leaves_nothing_half_done(tree, db, installation):
    from helpers.api_server import ApiServer
    api = ApiServer()
    tree.write_config(extra=f'[api]\nendpoint = "{api.url}"\n')
    n = 800
    for i in range(n):
        tree.age(tree.drop(("RANK", "BISSELL")[i % 2], f"{i:04d}.json", job_document(("RANK", "BISSELL")[i % 2], "CELTRA")))
    conf = installation / "supervisord.conf"
    proc = start_supervisord(conf, tree.env())
    try:
        wait_for(lambda: Job.select().where(Job.state == "notified").count() >= 50, interval=0.01,
                 message="the pipeline busy")
        assert supervisorctl(conf, "stop", "all").returncode == 0
        assert "RUNNING" not in supervisorctl(conf, "status").stdout
        # Every job is in a committed state that matches the files, and none is held by a lease.
        assert Job.select().where(Job.lease_token.is_null(False)).count() == 0
        jobs = list(Job.select())
        assert any(j.state != "notified" for j in jobs), "the run finished before the stop: nothing tested"
        for job in jobs:
            source = tree.hot / job.client_folder / job.file_name
            archived = tree.store / job.client_folder / job.file_name
            if job.state == "detected":
                assert source.exists()
            else:
                assert archived.exists() and job.state in ("archived", "routed", "notified")
            if job.state in ("routed", "notified"):
                assert not source.exists()
        assert supervisorctl(conf, "start", "all").returncode == 0
        wait_for(lambda: Job.select().where(Job.state == "notified").count() == n, timeout=60,
                 message="every job notified after start all")
        assert tree.files(tree.hot) == []
        assert len(set(api.keys())) == n
    finally:
        stop(proc)
        api.close()


def test_the_benchmark_chooses_its_router_count_in_its_copy_of_the_conf(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert bench.router_count((ROOT / "supervisord.conf").read_text()) == 2
    for routers, root in ((4, tmp_path / "four"), (None, tmp_path / "default")):
        root.mkdir()
        bench.Pipeline(root, routers=routers)
        assert bench.router_count((root / "supervisord.conf").read_text()) == (routers or 2)
    assert (ROOT / "supervisord.conf").read_text().count("numprocs = 2") == 1        # the original untouched


def test_supervise_starts_the_programs_without_supervisords_first_second(monkeypatch):
    """supervisord 4.3.0 spawns after a first poll that waits 1 s; pipeline.supervise makes that one
    poll not wait (Supervisor's own later fix) and leaves every other poll's timeout as it is."""
    from supervisor import poller
    from pipeline import supervise
    timeouts = []
    monkeypatch.setattr(poller.Poller, "poll", lambda self, timeout: timeouts.append(timeout) or ([], []))
    p = supervise._FirstPollAtOnce.__new__(supervise._FirstPollAtOnce)
    for _ in range(3):
        p.poll(1)
    assert timeouts == [0, 1, 1]
