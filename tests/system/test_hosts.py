"""Several hosts sharing one hot folder and one PostgreSQL (docs/design.md#several-hosts), each host a set of
namespaces with its own bindfs view of the shared folder (tests/helpers/hosts.py says how)."""

from __future__ import annotations

import json
import os
import time

import pytest

from conftest import job_document, wait_for
from helpers.hosts import Host, shared_site, unavailable
from pipeline.files import unstable_inodes

pytestmark = pytest.mark.postgresql_only

PROGRAMS = ["scanner", "watcher", "router=router_00", "router=router_01"]


@pytest.fixture
def shared(tree, database):
    """The shared folder, the same path every host mounts its view of it at, and the config they
    all run (polling: no host's inotify sees another's writes)."""
    why = unavailable()
    if why:
        pytest.skip(why)
    share, view, config = shared_site(tree.root, database)
    hosts: list[Host] = []
    yield share, view, config, hosts
    for host in hosts:
        host.kill()


def _drop(share, first: int, count: int) -> None:
    """Files written aside and renamed in, as upstream drops them, and old enough to be taken."""
    body = json.dumps(job_document("RANK")).encode()
    old = time.time() - 30
    for i in range(first, first + count):
        path = share / "hot" / "RANK" / f"{i:05d}.json"
        aside = path.with_name(f".{path.name}.part")
        aside.write_bytes(body)
        os.utime(aside, (old, old))
        os.rename(aside, path)


def _outcome(db) -> dict:
    jobs, routed = db.run_sql("SELECT count(*), count(CASE WHEN state = 'routed' THEN 1 END) FROM jobs").fetchone()
    twice = db.run_sql("""SELECT count(*) FROM (SELECT job_id FROM job_events WHERE to_state IN ('archived', 'routed')
                          GROUP BY job_id, to_state HAVING count(*) > 1) AS t""").fetchone()[0]
    stuck = db.run_sql("SELECT count(*) FROM jobs WHERE state IN ('detected', 'archived')").fetchone()[0]
    return {"jobs": jobs, "routed": routed, "done twice": twice, "stuck": stuck}


def _routing_hosts(db) -> set[str]:
    actors = [r[0] for r in db.run_sql("SELECT DISTINCT actor FROM job_events WHERE to_state = 'routed'")]
    return {actor.split("@")[1].split(":")[0] for actor in actors}


def test_two_hosts_route_one_backlog_each_file_exactly_once_with_both_hosts_routers_working(tree, db, shared):
    share, view, config, hosts = shared
    n = 1500
    _drop(share, 0, n)
    hosts += [Host(f"host{i}", share, view, config, PROGRAMS, tree.root) for i in (1, 2)]
    wait_for(lambda: _outcome(db)["routed"] == n, timeout=240, interval=0.5, message="the backlog routed")
    assert _outcome(db) == {"jobs": n, "routed": n, "done twice": 0, "stuck": 0}
    assert _routing_hosts(db) == {"host1", "host2"}
    assert len(os.listdir(share / "dest" / "Rank")) == n and os.listdir(share / "hot" / "RANK") == []
    # The devices differ between the views (the identity bug's trigger), and no job was refused.
    devices = {row[0] for row in db.run_sql("SELECT DISTINCT device FROM jobs")}
    assert os.stat(share).st_dev not in devices
    for host in hosts:
        assert "replaced by another file" not in host.log() and "Traceback" not in host.log()
    leader = db.run_sql("SELECT host FROM leaders WHERE role = 'detect'").fetchone()[0]
    standing_by = {"host1", "host2"} - {leader}
    assert "standing by: host" in next(h for h in hosts if h.name in standing_by).log()
    status = tree.run("status", "--config", str(config), check=False).stdout
    assert f"detection {leader} (since" in status and "host1" in status and "host2" in status
    only = tree.run("status", "--config", str(config), "--host", "host2", check=False).stdout
    programs = [line for line in only.splitlines() if line.startswith(("router_", "scanner", "watcher"))]
    assert len(programs) == 4 and all(" host2 " in line for line in programs)


def test_the_detecting_host_killed_whole_mid_backlog_the_other_takes_over_and_nothing_is_lost(tree, db, shared):
    share, view, config, hosts = shared
    hosts += [Host("host1", share, view, config, PROGRAMS, tree.root)]
    wait_for(lambda: db.run_sql("SELECT host FROM leaders").fetchone(), message="host1 detecting")
    hosts += [Host("host2", share, view, config, PROGRAMS, tree.root)]
    wait_for(lambda: "standing by" in hosts[1].log(), message="host2 standing by")
    _drop(share, 0, 1500)
    wait_for(lambda: _outcome(db)["routed"] >= 300, timeout=120, message="routing under way on both hosts")
    hosts[0].kill()                                     # mid-backlog: its routers hold leased batches
    _drop(share, 1500, 200)                             # dropped after: only host2 can detect them
    wait_for(lambda: _outcome(db)["routed"] == 1700, timeout=240, interval=0.5,
             message="host2 finishing the backlog, the dead host's leased jobs included")
    odd = db.run_sql("SELECT id, state, failed_step, last_error, detected_by, source_path FROM jobs "
                     "WHERE state <> 'routed'").fetchall()
    assert _outcome(db) == {"jobs": 1700, "routed": 1700, "done twice": 0, "stuck": 0}, odd
    assert db.run_sql("SELECT host FROM leaders WHERE role = 'detect'").fetchone()[0] == "host2"
    assert "taking over detection" in hosts[1].log()
    assert len(os.listdir(share / "dest" / "Rank")) == 1700 and os.listdir(share / "hot" / "RANK") == []


@pytest.mark.sqlite_only
def test_an_smb_share_with_noserverino_is_refused_naming_the_reason(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/hot rw,relatime shared:20 - cifs //files/hot rw,vers=3.1.1,noserverino,cache=strict\n"
        "41 22 0:51 / /mnt/ok rw,relatime shared:21 - cifs //files/ok rw,vers=3.1.1,serverino\n")
    (tmp_path / "mnt").mkdir()
    why = unstable_inodes(tmp_path / "mnt", str(mountinfo))
    assert why is None
    assert "noserverino" in unstable_inodes("/mnt/hot/RANK", str(mountinfo))
    assert unstable_inodes("/mnt/ok", str(mountinfo)) is None
