"""A router or a host that stops for longer than its lease (SIGSTOP, a paused VM, a process stuck
on a hung network mount) and then resumes must not touch the files of the jobs it no longer holds:
no copy published into the archive or a destination, no original removed, no file moved to FAILED,
and no job made twice by a detector that lost its leadership meanwhile. And a job never replaces
a copy that a job of the same name detected after it has already made.

The first tests freeze an in-process router at a chosen point of its batch (everything else real:
files, folders, database, the second router); the last ones freeze real processes with SIGSTOP.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import shlex
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, job_document, wait_for
from pipeline import config as config_module
from pipeline.jobs import Jobs
from pipeline.states import ROUTE_QUEUE
from pipeline.router import Router
from pipeline.scanner import Scanner
from pipeline.store.models import Delivery, Job, JobEvent

LEASE = 5                   # the tree's router.lease (conftest's Tree)
RANK, CELTRA = "Monday Rank", "Celtra - Create_Rename - Project_Design File"
LEGAL = {(None, "detected"), ("detected", "archived"), ("archived", "routed"), ("detected", "failed"),
         ("archived", "failed"), ("detected", "detected"), ("archived", "archived")}


def version(n: int, client: str = "RANK", category: str = "PRODUCTION") -> bytes:
    """A job file's content; each version a different size, so no two are taken for one file."""
    return json.dumps(job_document(client, category, Title="version " + "v" * n)).encode()


class Arrivals:
    """What a downstream consumer watching a folder sees arrive: inotify's renames and links into
    it, counted by name (hidden temporaries left out). Read with ``counts()``."""

    IN_CREATE, IN_MOVED_TO, IN_Q_OVERFLOW = 0x100, 0x80, 0x4000

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(folder), self.IN_CREATE | self.IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"cannot watch {folder}")
        self.seen: collections.Counter = collections.Counter()
        self.temporaries = 0            # hidden files created: copies being staged

    def counts(self) -> collections.Counter:
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.seen
            offset = 0
            while offset < len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, offset)
                name = buf[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if mask & self.IN_Q_OVERFLOW:
                    raise AssertionError("inotify queue overflowed: arrivals were not all counted")
                if name.startswith("."):
                    self.temporaries += bool(mask & self.IN_CREATE)
                else:
                    self.seen[name] += 1

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def arrivals():
    opened = []

    def watch(folder: Path) -> Arrivals:
        opened.append(Arrivals(folder))
        return opened[-1]
    yield watch
    for a in opened:
        a.close()


def job(name: str, client: str = "RANK") -> Job:
    return Job.get((Job.file_name == name) & (Job.client_folder == client))


def events(job_id: int) -> list[tuple]:
    return [(e.from_state, e.to_state, e.actor) for e in JobEvent.select().where(JobEvent.job == job_id)
            .order_by(JobEvent.id)]


def deliveries(job_id: int) -> list[tuple]:
    return [(d.name, d.path, d.action) for d in Delivery.select().where(Delivery.job == job_id)]


def hidden(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob(".*")]


def detect(tree, jobs: Jobs) -> None:
    Scanner(tree.config, jobs).scan("periodic", "periodic")


def at_first_call(router: Router, method: str, then):
    """Make ``router.<method>`` run ``then()`` once, on its first call, before doing its work:
    the router is frozen at that point while ``then`` runs."""
    real = getattr(router, method)
    done = []

    def frozen(*args, **kwargs):
        if not done:
            done.append(True)
            then()
        return real(*args, **kwargs)
    setattr(router, method, frozen)
    return done


# -- one router frozen mid-batch, in process -------------------------------------------------------

def test_a_router_frozen_after_reading_past_its_lease_publishes_nothing_when_it_resumes(tree, db, clock, arrivals):
    """It read the job and was about to write its copies when it froze; meanwhile another router
    routed the job, then a newer file of that name: the newer content stays everywhere."""
    tree.age(tree.drop("RANK", "a.json", version(1)))
    detect(tree, Jobs(db, "scanner@test:1", clock))
    first = job("a.json").id
    dest = arrivals(tree.dest(RANK))
    a = Router(tree.config, Jobs(db, "router_00@test:2", clock))
    other = Jobs(db, "router_01@test:3", clock)

    def meanwhile():
        clock.advance(LEASE + 1)                            # frozen past its lease
        Router(tree.config, other).run(once=True)           # the job routed by another router
        assert Job.get_by_id(first).state == "routed"
        tree.age(tree.drop("RANK", "a.json", version(2)))   # then a newer file of the same name
        detect(tree, Jobs(db, "scanner@test:1", clock))
        Router(tree.config, other).run(once=True)
    frozen = at_first_call(a, "_planned", meanwhile)
    assert a.run_batch() == 1 and frozen

    second = Job.select().order_by(Job.id.desc()).get().id
    assert second != first
    assert (tree.store / "RANK" / "a.json").read_bytes() == version(2)
    assert (tree.dest(RANK) / "a.json").read_bytes() == version(2)
    assert dest.counts() == {"a.json": 2}                   # once per job: the stale router added none
    assert len(deliveries(first)) == len(deliveries(second)) == 1
    for job_id in (first, second):
        assert [e[:2] for e in events(job_id)] == [(None, "detected"), ("detected", "archived"),
                                                    ("archived", "routed")]
        assert all(not actor.startswith("router_00") for _, _, actor in events(job_id))
    assert Job.get_by_id(first).claims == 0 and Job.get_by_id(second).state == "routed"
    assert tree.files(tree.hot) == [] and hidden(tree.store, tree.root / "dest") == []


def test_a_router_frozen_after_its_last_lease_check_publishes_nothing_while_another_holds_the_job(
        tree, db, clock, arrivals):
    """Frozen with its copies written under temporary names, about to rename them, past its lease:
    another router holds the job now. Nothing appears until that one publishes, once."""
    original = tree.drop("RANK", "a.json", version(1, category="CELTRA"))
    tree.age(original)
    detect(tree, Jobs(db, "scanner@test:1", clock))
    first = job("a.json").id
    dest = arrivals(tree.dest(RANK))
    a = Router(tree.config, Jobs(db, "router_00@test:2", clock))
    other = Jobs(db, "router_01@test:3", clock)
    held = []

    def meanwhile():
        clock.advance(LEASE + 1)
        held.append(other.claim(ROUTE_QUEUE, 10, LEASE))    # taken by a router that has not published yet
        assert [j.id for j in held[0].jobs] == [first]
    at_first_call(a, "_deliver", meanwhile)
    assert a.run_batch() == 1 and held

    assert not (tree.store / "RANK").exists() or os.listdir(tree.store / "RANK") == []
    assert not (tree.dest(RANK) / "a.json").exists() and not (tree.dest(CELTRA) / "a.json").exists()
    assert hidden(tree.store, tree.root / "dest") == []     # its temporaries discarded
    assert original.exists()
    row = Job.get_by_id(first)
    assert (row.state, row.lease_token) == ("detected", held[0].token)
    assert [e[1] for e in events(first)] == ["detected"]

    clock.advance(LEASE + 1)                                # the other router died too: a third one
    Router(tree.config, Jobs(db, "router_02@test:4", clock)).run(once=True)
    assert Job.get_by_id(first).state == "routed" and not original.exists()
    assert dest.counts() == {"a.json": 1}
    assert (tree.dest(CELTRA) / "a.json").read_bytes() == version(1, category="CELTRA")


def test_a_batch_with_its_lease_long_to_run_is_checked_by_a_read_and_a_job_taken_from_it_is_not_published(
        tree, db, clock, arrivals):
    """Right before publishing, with most of the lease left, the router only reads which jobs it
    still holds (its leases are not extended: no write transaction on the way of every batch),
    and that read sees a job another worker holds now: nothing of it is published."""
    for name in ("a.json", "b.json"):
        tree.age(tree.drop("RANK", name, version(1)))
    detect(tree, Jobs(db, "scanner@test:1", clock))
    dest = arrivals(tree.dest(RANK))
    a = Router(tree.config, Jobs(db, "router_00@test:2", clock))
    leases = {}

    def meanwhile():
        leases.update({row.file_name: row.next_attempt_at for row in Job.select()})
        Job.update(lease_token="taken-by-another").where(Job.file_name == "b.json").execute()
    at_first_call(a.jobs, "check", meanwhile)
    assert a.run_batch() == 2 and leases

    a_row, b_row = job("a.json"), job("b.json")
    assert a_row.state == "routed" and (tree.dest(RANK) / "a.json").exists()
    assert dest.counts() == {"a.json": 1}
    assert not (tree.store / "RANK" / "b.json").exists() and not (tree.dest(RANK) / "b.json").exists()
    assert (b_row.state, b_row.lease_token, b_row.next_attempt_at) == ("detected", "taken-by-another", leases["b.json"])
    assert hidden(tree.store, tree.root / "dest") == []


def test_a_router_frozen_before_clean_up_past_its_lease_leaves_the_originals_to_the_new_owner(tree, db, clock):
    """Its copies committed, it froze before removing the originals (and moving an invalid file to
    FAILED); another router holds the jobs now: the stale one removes and moves nothing."""
    good = tree.drop("RANK", "a.json", version(1))
    bad = tree.drop("RANK", "bad.json", b"{not json")
    for path in (good, bad):
        tree.age(path)
    detect(tree, Jobs(db, "scanner@test:1", clock))
    a = Router(tree.config, Jobs(db, "router_00@test:2", clock))
    other = Jobs(db, "router_01@test:3", clock)
    held = []

    def meanwhile():
        clock.advance(LEASE + 1)
        held.append(other.claim(ROUTE_QUEUE, 10, LEASE))
        assert len(held[0].jobs) == 2
    at_first_call(a, "_clean_up", meanwhile)
    assert a.run_batch() == 2 and held

    assert good.exists() and bad.exists()
    assert tree.files(tree.failed) == []
    assert job("a.json").state == "archived" and job("bad.json").state == "detected"
    assert {j.lease_token for j in Job.select()} == {held[0].token}
    assert not JobEvent.select().where(JobEvent.to_state.in_(["routed", "failed"])).exists()

    clock.advance(LEASE + 1)
    Router(tree.config, Jobs(db, "router_02@test:4", clock)).run(once=True)
    assert job("a.json").state == "routed" and not good.exists()
    assert (job("bad.json").state, job("bad.json").failed_step) == ("failed", "validate")
    assert not bad.exists() and len(tree.files(tree.failed / "RANK")) == 2     # the file and its reason
    for j in Job.select():
        assert all(actor.split("@")[0] in ("scanner", "router_00", "router_02") for _, _, actor in events(j.id))
        assert [e for e in events(j.id) if e[1] in ("routed", "failed")][0][2].startswith("router_02")


def test_copies_a_router_published_before_it_stopped_are_not_published_again_by_the_next_owner(
        tree, db, clock, arrivals):
    """It published the job's copies and stopped (killed, or frozen past its lease) before
    recording them: the router that takes the job over records them, and renames nothing into
    the archive or a destination again. A consumer of the folder receives the file once."""
    original = tree.drop("RANK", "a.json", version(1, category="CELTRA"))
    tree.age(original)
    detect(tree, Jobs(db, "scanner@test:1", clock))
    seen = {folder: arrivals(folder) for folder in (tree.store / "RANK", tree.dest(RANK), tree.dest(CELTRA))}
    a = Router(tree.config, Jobs(db, "router_00@test:2", clock))

    class Stopped(Exception):
        pass

    def stopped(*args):
        raise Stopped("stopped right after publishing, before recording anything")
    a._commit_progress = stopped
    with pytest.raises(Stopped):
        a.run_batch()
    a.finish()
    assert all(folder.counts() == {"a.json": 1} for folder in seen.values())
    assert job("a.json").state == "detected"

    clock.advance(LEASE + 1)
    Router(tree.config, Jobs(db, "router_01@test:3", clock)).run(once=True)
    first = job("a.json")
    assert first.state == "routed" and not original.exists()
    assert all(folder.counts() == {"a.json": 1} for folder in seen.values())    # not renamed in again
    assert sorted(deliveries(first.id)) == [("Celtra", str(tree.dest(CELTRA) / "a.json"), "written"),
                                            (RANK, str(tree.dest(RANK) / "a.json"), "written")]
    assert first.archive_path == str(tree.store / "RANK" / "a.json")
    assert (tree.store / "RANK" / "a.json").read_bytes() == version(1, category="CELTRA")
    assert hidden(tree.store, tree.root / "dest") == []


# -- a newer job of the same name already made the copy -----------------------------------------------

def test_an_older_job_read_before_its_file_was_replaced_does_not_put_its_copies_over_the_newer_jobs(
        tree, db, clock, arrivals):
    """The file was replaced by a newer one after the router read it; the newer file's job was
    routed by another router first. The older job still holds its lease, but its content is not
    published over the newer: it fails at archive, saying why."""
    tree.age(tree.drop("RANK", "a.json", version(1)))
    detect(tree, Jobs(db, "scanner@test:1", clock))
    first = job("a.json").id
    dest = arrivals(tree.dest(RANK))
    a = Router(tree.config, Jobs(db, "router_00@test:2", clock))

    def meanwhile():
        tree.age(tree.drop("RANK", "a.json", version(2)))   # replaced: a new file, a new job
        detect(tree, Jobs(db, "scanner@test:1", clock))
        Router(tree.config, Jobs(db, "router_01@test:3", clock)).run(once=True)
    at_first_call(a, "_planned", meanwhile)
    assert a.run_batch() == 1

    second = Job.select().order_by(Job.id.desc()).get()
    assert second.id != first and second.state == "routed"
    assert (tree.store / "RANK" / "a.json").read_bytes() == version(2)
    assert (tree.dest(RANK) / "a.json").read_bytes() == version(2)
    assert dest.counts() == {"a.json": 1}
    older = Job.get_by_id(first)
    assert (older.state, older.failed_step) == ("failed", "archive")
    assert f"a newer job of the same name (job {second.id})" in older.last_error
    assert deliveries(first) == [] and len(deliveries(second)) == 1
    assert tree.files(tree.hot) == [] and hidden(tree.store, tree.root / "dest") == []


def test_a_destination_copy_made_by_a_newer_job_of_the_same_name_is_kept(tree, db, clock):
    """Two clients' files of one name both go to Celtra. The older job was held up (by a slow
    router) until the newer one had been routed: Celtra keeps the newer job's file."""
    rank = tree.drop("RANK", "x.json", version(1, "RANK", "CELTRA"))
    tree.age(rank)
    detect(tree, Jobs(db, "scanner@test:1", clock))
    oliver = tree.drop("OLIVER", "x.json", version(2, "OLIVER", "CELTRA"))
    tree.age(oliver)
    detect(tree, Jobs(db, "scanner@test:1", clock))
    older, newer = job("x.json", "RANK").id, job("x.json", "OLIVER").id
    assert older < newer
    slow = Jobs(db, "router_02@test:4", clock).claim(ROUTE_QUEUE, 1, LEASE)
    assert [j.id for j in slow.jobs] == [older]
    Router(tree.config, Jobs(db, "router_00@test:2", clock)).run(once=True)
    assert Job.get_by_id(newer).state == "routed"

    clock.advance(LEASE + 1)                                # the slow router died: its job comes due
    Router(tree.config, Jobs(db, "router_01@test:3", clock)).run(once=True)
    assert Job.get_by_id(older).state == "routed"
    assert (tree.dest(CELTRA) / "x.json").read_bytes() == version(2, "OLIVER", "CELTRA")
    assert (tree.dest(RANK) / "x.json").read_bytes() == version(1, "RANK", "CELTRA")
    assert sorted(deliveries(older)) == [("Celtra", str(tree.dest(CELTRA) / "x.json"), "kept"),
                                         (RANK, str(tree.dest(RANK) / "x.json"), "written")]
    assert events(older)[-1][:2] == ("archived", "routed")
    assert JobEvent.select().where(JobEvent.job == older, JobEvent.to_state == "routed").get().detail == \
        "to Monday Rank, Celtra (kept existing); original removed"


# -- real processes -----------------------------------------------------------------------------------

def _stuck_in_fuse(pid: int) -> bool:
    """Whether a thread of ``pid`` waits for a FUSE daemon's answer."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if "request_wait_answer" in (task / "wchan").read_text() or "fuse" in (task / "wchan").read_text():
                return True
        except OSError:
            continue
    return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def test_a_real_router_stuck_on_a_hung_mount_past_its_lease_publishes_nothing_when_it_resumes(tree, db, arrivals):
    """bin/router, in a mount namespace of its own where the archive and destination are a FUSE
    view (bindfs) of the shared folder: the view hangs (its daemon stopped) while the router
    writes the job's copies, and the router is frozen (SIGSTOP) past its lease. Another router
    routes the job, then a newer file of that name. The view comes back, the router resumes
    (SIGCONT): it publishes nothing, removes nothing, and says it lost the job."""
    from helpers.hosts import unavailable
    why = unavailable()
    if why:
        pytest.skip(why)
    share, hidden_view = tree.root / "share", tree.root / "underneath"
    for folder in (share / "store", share / "dest" / "Rank", hidden_view):
        folder.mkdir(parents=True, exist_ok=True)
    tree.config_path.write_text(f'''
[paths]
hot_folder = "hot"
store = "share/store"
failed = "failed"
error_log = "log/errors"
database = "{tree.database}"
[detect]
min_file_age = 0.3
[router]
lease = 2
[dashboard]
listen = "127.0.0.1:{tree.dashboard_port}"
[[route]]
name = "Rank"
clients = ["RANK"]
to = "share/dest/Rank"
''')
    tree.config = config_module.load(tree.config_path)
    dest = arrivals(share / "dest" / "Rank")
    log_path = tree.root / "stale-router.log"
    q = shlex.quote
    script = "\n".join([
        "set -e",
        f"mount --bind {q(str(share))} {q(str(hidden_view))}",
        f"bindfs -f -o nonempty {q(str(hidden_view))} {q(str(share))} >>{q(str(log_path))} 2>&1 &",
        "echo $!",
        f"i=0; until mountpoint -q {q(str(share))}; do i=$((i+1)); [ $i -lt 200 ]; sleep 0.05; done",
        f"exec {q(str(BIN / 'router'))} >>{q(str(log_path))} 2>&1",
    ])
    stale = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                             cwd=tree.root, env=tree.env(SUPERVISOR_PROCESS_NAME="router_00"),
                             stdout=subprocess.PIPE, text=True)
    view = int(stale.stdout.readline())
    try:
        wait_for(lambda: db.run_sql("SELECT 1 FROM heartbeats WHERE program LIKE 'router%'").fetchone(),
                 message="the router started")
        _signal(view, signal.SIGSTOP)                       # the mount hangs
        tree.age(tree.drop("RANK", "a.json", version(1)))
        detect(tree, Jobs(db, "scanner@test:1"))
        first = job("a.json").id
        wait_for(lambda: Job.get_by_id(first).lease_owner and _stuck_in_fuse(stale.pid),
                 message="the router writing the job's copies on the hung mount")
        _signal(stale.pid, signal.SIGSTOP)                  # and the router freezes

        # Another router (here, where the share is a plain folder) takes the job once the lease
        # has run out, and routes it; then a newer file of the same name.
        wait_for(lambda: tree.run("router", "--once") and Job.get_by_id(first).state == "routed",
                 interval=0.5, message="the job routed by another router")
        tree.age(tree.drop("RANK", "a.json", version(2)))
        tree.run("scanner", "--once")
        tree.run("router", "--once")
        second = Job.select().order_by(Job.id.desc()).get()
        assert second.id != first and second.state == "routed"

        _signal(view, signal.SIGCONT)                       # the mount is back
        _signal(stale.pid, signal.SIGCONT)                  # and the router resumes
        wait_for(lambda: "lease lost to another router" in log_path.read_text(errors="replace"),
                 message="the resumed router noticing it lost the job")
        wait_for(lambda: not hidden(share), message="its temporaries gone")
        stale.send_signal(signal.SIGTERM)
        assert stale.wait(30) == 0
    finally:
        _signal(view, signal.SIGCONT)
        _signal(stale.pid, signal.SIGCONT)
        if stale.poll() is None:
            stale.kill()
            stale.wait(30)
        _signal(view, signal.SIGTERM)

    assert (share / "store" / "RANK" / "a.json").read_bytes() == version(2)
    assert (share / "dest" / "Rank" / "a.json").read_bytes() == version(2)
    assert dest.counts() == {"a.json": 2}                   # each job's copy arrived once
    assert len(deliveries(first)) == len(deliveries(second.id)) == 1
    for job_id in (first, second.id):
        assert [e[:2] for e in events(job_id)] == [(None, "detected"), ("detected", "archived"),
                                                    ("archived", "routed")]
        assert not [actor for _, _, actor in events(job_id) if actor.startswith("router_00")]
    assert tree.files(tree.hot) == [] and hidden(share) == []
    assert "Traceback" not in log_path.read_text(errors="replace")


# -- detection: a detector frozen past its leadership ---------------------------------------------------

def test_a_detector_frozen_with_sightings_in_hand_past_its_leadership_makes_no_second_job(tree, db, clock):
    """Host 1's scanner listed the hot folder, then froze past the detection lease. Host 2 took
    detection over and recorded the files (one routed and gone since, one waiting for a router,
    and one a file of the same name dropped again). Host 1 resumes and makes jobs of what it
    listed before it froze: none is made twice; then it sees it no longer detects."""
    from pipeline.leadership import LEASE as DETECTION_LEASE, Leadership

    def leadership(host: str) -> Leadership:
        lead = Leadership(db, "scanner", clock=clock)
        lead.host = host
        return lead

    for name in ("routed.json", "waiting.json", "again.json"):
        tree.age(tree.drop("RANK", name, version(1)))
    first, second = leadership("host1"), leadership("host2")
    assert first.held() and not second.held()
    host1 = Scanner(tree.config, Jobs(db, "scanner@host1:1", clock))
    listed, _ = host1.hot.list()                            # then host 1 freezes
    assert len(listed) == 3

    clock.advance(DETECTION_LEASE + 1)
    assert second.held()                                    # host 2 takes detection over
    host2 = Jobs(db, "scanner@host2:2", clock)
    Scanner(tree.config, host2).scan("rescan", "periodic")
    assert Job.select().count() == 3
    Job.update(next_attempt_at=clock.now + 3600).where(Job.file_name == "waiting.json").execute()
    Router(tree.config, Jobs(db, "router_00@host2:3", clock)).run(once=True)
    assert job("routed.json").state == "routed" and job("waiting.json").state == "detected"
    tree.age(tree.drop("RANK", "again.json", version(2)))   # dropped again: a new appearance
    Scanner(tree.config, host2).scan("periodic", "periodic")
    assert Job.select().count() == 4

    assert host1._create(listed, "periodic") == 0           # host 1 resumes with its listing
    assert Job.select().count() == 4
    assert sorted(j.file_name for j in Job.select()) == ["again.json", "again.json", "routed.json", "waiting.json"]
    assert not first.held()                                 # and it stands by from now on


def _host_programs(host) -> list[int]:
    """The processes of a host's programs: every process of its PID namespace but its first one
    and its bindfs (the shared folder's server, which does not freeze with a host)."""
    children = collections.defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[parent].append(int(stat.parent.name))
    found, todo = [], [pid for init in children[host.proc.pid] for pid in children[init]]
    while todo:
        pid = todo.pop()
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "bindfs":
                continue
        except OSError:
            continue
        found.append(pid)
        todo += children[pid]
    return found


def _drop_files(share: Path, client: str, first: int, count: int) -> None:
    """Files written aside and renamed in, as upstream drops them, and old enough to be taken."""
    body = json.dumps(job_document(client)).encode()
    old = time.time() - 30
    for i in range(first, first + count):
        path = share / "hot" / client / f"{i:05d}.json"
        aside = path.with_name(f".{path.name}.part")
        aside.write_bytes(body)
        os.utime(aside, (old, old))
        os.rename(aside, path)


def _routed(db, client: str = "RANK") -> int:
    return db.run_sql("SELECT count(*) FROM jobs WHERE state = 'routed' AND client_folder = ?", (client,)).fetchone()[0]


FROZEN = 25.0       # seconds the detecting host stays frozen: past the detection lease (15 s)


@pytest.mark.postgresql_only
def test_a_detecting_host_frozen_past_the_detection_lease_delivers_nothing_twice_and_makes_no_job_twice(
        tree, db, database, arrivals):
    """Two hosts (tests/helpers/hosts.py) on one PostgreSQL. The detecting host is frozen whole (SIGSTOP
    of every program; a paused VM) while its routers write a batch's copies, for longer than the
    detection lease. The other host takes detection and the frozen host's jobs over and routes
    everything; then the frozen host resumes. A consumer of the destination receives each file
    once, every file is one job, and the resumed host stands by."""
    from urllib.parse import quote

    from helpers.hosts import Host, shared_site, unavailable
    why = unavailable()
    if why:
        pytest.skip(why)
    # A frozen host's open transaction would keep its locks until the host resumes: as the README
    # advises for several hosts, the server ends such a session (the host reconnects on resuming).
    url = database.replace("options=", "options=" + quote("-cidle_in_transaction_session_timeout=3000 "), 1)
    # dest/Acme is not there: ACME's jobs wait, their files stay in the hot folder.
    share, view, config = shared_site(tree.root, url, clients=("RANK", "ACME"), router="create_folders = false",
                                      routes='[[route]]\nname = "Acme"\nclients = ["ACME"]\nto = "{view}/dest/Acme"')
    programs = ["scanner", "watcher", "router=router_00", "router=router_01"]
    dest = arrivals(share / "dest" / "Rank")
    hosts: list[Host] = []
    frozen: list[int] = []
    try:
        hosts.append(Host("host1", share, view, config, programs, tree.root))
        wait_for(lambda: db.run_sql("SELECT host FROM leaders WHERE role = 'detect'").fetchone(),
                 message="host1 detecting")
        _drop_files(share, "RANK", 0, 600)
        wait_for(lambda: _routed(db) >= 100, timeout=120, message="host1 routing")
        _drop_files(share, "ACME", 0, 20)                   # being detected by host1 as it freezes
        frozen = _host_programs(hosts[0])
        assert len(frozen) == 4
        dest.counts()
        staged = dest.temporaries
        wait_for(lambda: dest.counts() is not None and dest.temporaries > staged, interval=0.001,
                 message="host1 writing a batch's copies")
        for pid in frozen:
            _signal(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()

        hosts.append(Host("host2", share, view, config, programs, tree.root))
        _drop_files(share, "RANK", 600, 200)               # only host2 can detect these
        wait_for(lambda: _routed(db) == 800, timeout=240, interval=0.5,
                 message="host2 routing everything, the frozen host's leased jobs included")
        wait_for(lambda: time.monotonic() - frozen_at > FROZEN, timeout=FROZEN + 1, interval=0.5,
                 message="the detection lease long over")
        assert db.run_sql("SELECT host FROM leaders WHERE role = 'detect'").fetchone()[0] == "host2"
        resumed_at = time.time()
        for pid in frozen:
            _signal(pid, signal.SIGCONT)
        frozen = []
        wait_for(lambda: hosts[0].log().count("standing by: host host2") >= 2, timeout=60,
                 message="host1's scanner and watcher standing by")
        wait_for(lambda: db.run_sql("SELECT count(*) FROM heartbeats WHERE host = 'host1' AND beat_at > ?",
                                    (resumed_at,)).fetchone()[0] == 4, timeout=60,
                 message="host1's programs going on")
        _drop_files(share, "RANK", 800, 20)                # both hosts' routers at work again
        wait_for(lambda: _routed(db) == 820, timeout=120, interval=0.5, message="the last files routed")
    finally:
        for pid in frozen:
            _signal(pid, signal.SIGCONT)
        for host in hosts:
            host.kill()

    names = {f"{i:05d}.json" for i in range(820)}
    assert dest.counts() == {name: 1 for name in names}     # each file arrived once downstream
    assert set(os.listdir(share / "dest" / "Rank")) == names and os.listdir(share / "hot" / "RANK") == []
    per_file = db.run_sql("SELECT client_folder, file_name, count(*) FROM jobs GROUP BY client_folder, file_name"
                          ).fetchall()
    assert len(per_file) == 840 and {count for _, _, count in per_file} == {1}      # one job per file
    twice = db.run_sql("""SELECT count(*) FROM (SELECT job_id FROM job_events
                          WHERE to_state IN ('archived', 'routed') AND from_state <> to_state
                          GROUP BY job_id, to_state HAVING count(*) > 1) AS t""").fetchone()[0]
    assert twice == 0
    assert db.run_sql("SELECT count(*) FROM deliveries").fetchone()[0] == 820
    assert len(os.listdir(share / "hot" / "ACME")) == 20    # waiting for their destination, as they should
    assert "taking over detection" in hosts[1].log()
    for host in hosts:
        assert "Traceback" not in host.log()
