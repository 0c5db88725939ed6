"""Remote destinations: routes to sftp://, s3:// and smb:// deliver with the guarantees of local
copies (docs/design.md#remote-destinations).

The servers are real and run on 127.0.0.1 (tests/helpers/remote_servers.py): OpenSSH's sshd,
Samba's smbd, and moto's S3 server, an S3 emulator (not AWS). Each test starts its own and stops
it after; the faults are real too: a server killed and started again, a wrong password or key, a
host key that is not the one known, a full filesystem behind sshd, a name already taken.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from conftest import MATRIX, job_document, wait_for
from helpers.mounts import fill
from helpers.remote_servers import S3Emulator, Smbd, Sshd
from pipeline import config as config_module
from pipeline.jobs import Jobs
from pipeline.router import Router
from pipeline.scanner import Scanner
from pipeline.store.models import Delivery, Job

NAMES = ["a.json", "b.json", "c.json"]
pytestmark = pytest.mark.sqlite_only       # the files' side: the database does the same on both engines


class Place:
    """One remote destination under test: the [[route]] and [[remote]] tables that reach it, and
    a look at what it holds (temporaries included) without going through the pipeline's code."""
    kind: str
    label: str

    def tables(self, **remote) -> str:
        return f"""
[[route]]
name = "Partner"
clients = ["RANK"]
to = "{self.to}"
{self.remote(**remote)}"""

    def remote(self, **kw) -> str:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        raise NotImplementedError

    def put(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def marks(self) -> dict[str, object]:
        """What changes when a file is written again (an inode, an object's versions)."""
        raise NotImplementedError


class SftpPlace(Place):
    kind = "sftp"

    def __init__(self, root: Path):
        self.server = Sshd(root / "sshd")
        self.folder = root / "partner" / "in" / "RANK"
        self.to = self.server.url(root / "partner" / "in") + "/{ClientCode}"
        self.label = f"sftp://{self.server.user}@127.0.0.1:{self.server.port}"

    def remote(self, **kw) -> str:
        return self.server.remote(**kw)

    def names(self):
        return sorted(os.listdir(self.folder)) if self.folder.exists() else []

    def read(self, name):
        return (self.folder / name).read_bytes()

    def put(self, name, data):
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(data)

    def marks(self):
        return {n: os.stat(self.folder / n).st_ino for n in self.names()}


class SmbPlace(SftpPlace):
    kind = "smb"

    def __init__(self, root: Path):
        self.server = Smbd(root / "smbd", root / "share")
        self.folder = root / "share" / "in" / "RANK"
        self.to = self.server.url("/in") + "/{ClientCode}"
        self.label = f"smb://pipelinetest@127.0.0.1:{self.server.port}"

    def remote(self, **kw) -> str:
        return self.server.remote(**kw)


class S3Place(Place):
    kind = "s3"

    def __init__(self, root: Path):
        self.server = S3Emulator()
        self.bucket = f"jobs-{uuid.uuid4().hex[:12]}"
        self.s3 = self.server.client()
        self.s3.create_bucket(Bucket=self.bucket)
        # Versions show how often each object was written.
        self.s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        self.to = f"s3://{self.bucket}/in/{{ClientCode}}"
        self.label = f"s3://{self.bucket}"

    def remote(self, **kw) -> str:
        return self.server.remote(self.bucket, **kw)

    def names(self):
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="in/RANK/").get("Contents", [])
        return sorted(o["Key"][len("in/RANK/"):] for o in listed)

    def read(self, name):
        return self.s3.get_object(Bucket=self.bucket, Key=f"in/RANK/{name}")["Body"].read()

    def put(self, name, data):
        self.s3.put_object(Bucket=self.bucket, Key=f"in/RANK/{name}", Body=data)

    def marks(self):
        versions = self.s3.list_object_versions(Bucket=self.bucket, Prefix="in/RANK/").get("Versions", [])
        found: dict[str, list] = {}
        for v in versions:
            found.setdefault(v["Key"][len("in/RANK/"):], []).append(v["VersionId"])
        return {k: sorted(v) for k, v in found.items()}


PLACES = {"sftp": SftpPlace, "s3": S3Place, "smb": SmbPlace}


@pytest.fixture(params=sorted(PLACES))
def place(request, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "emulator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator")
    monkeypatch.setenv("SMB_TEST_PASSWORD", "pipeline-smb-test")
    made = PLACES[request.param](tmp_path)
    yield made
    made.server.stop()


def known_hosts(tmp_path: Path, host: str) -> Path:
    """A known_hosts file naming ``host`` ("[name]:port") with a key no server here holds."""
    known = tmp_path / "known_hosts"
    known.write_text(f"{host} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    return known


def content(name: str) -> bytes:
    return json.dumps(job_document("RANK", Title=name)).encode()


def drop(tree, names=NAMES) -> None:
    for name in names:
        tree.age(tree.drop("RANK", name, content(name)))


def route_once(tree, db, clock, router: Router | None = None) -> Router:
    jobs = Jobs(db, "router:1", clock)
    Scanner(tree.config, jobs).scan("startup", "startup")
    router = router or Router(tree.config, jobs)
    router.run(once=True)
    return router


def test_a_route_to_each_kind_of_remote_delivers_every_copy_whole_beside_the_local_ones(tree, db, clock, place):
    tree.write_config(routes=MATRIX + place.tables())
    drop(tree)
    route_once(tree, db, clock)
    assert [j.state for j in Job.select()] == ["routed"] * 3
    assert place.names() == NAMES                                   # no temporary left
    assert all(place.read(n) == content(n) for n in NAMES)
    assert {n: len(v) if isinstance(v, list) else 1 for n, v in place.marks().items()} == {n: 1 for n in NAMES}
    recorded = sorted(d.path for d in Delivery.select().where(Delivery.name == "Partner"))
    assert recorded == [f"{place.to.replace('{ClientCode}', 'RANK')}/{n}" for n in NAMES]
    assert sorted(os.listdir(tree.dest("Monday Rank"))) == NAMES     # the local copies as ever


def test_a_batch_with_remote_copies_is_settled_after_the_next_is_read_when_idle_and_when_stopping(
        tree, db, clock, tmp_path):
    """The remote copies of one batch are made while the router reads and copies the next one: the
    batch is recorded after that (its jobs leased to the router meanwhile, nothing of them
    recorded), at the latest when there is no next batch, or when the router stops."""
    place = SftpPlace(tmp_path)
    try:
        tree.write_config(routes=place.tables(), router="batch_size = 2\n")
        names = [f"j{i}.json" for i in range(5)]
        drop(tree, names)
        jobs = Jobs(db, "router:1", clock)
        Scanner(tree.config, jobs).scan("startup", "startup")
        router = Router(tree.config, jobs)             # batches of 2

        def states():
            return [j.state for j in Job.select().order_by(Job.id)]

        assert router.run_batch() == 2
        assert states() == ["detected"] * 5, "the first batch waits on its uploads, nothing recorded"
        assert router.run_batch() == 2
        assert states() == ["routed"] * 2 + ["detected"] * 3, "settled after the next"
        router.drain()                                              # stopping
        assert states() == ["routed"] * 4 + ["detected"]
        assert router.run_batch() == 1
        assert states() == ["routed"] * 4 + ["detected"]
        router.step(clock())
        assert states() == ["routed"] * 5, "nothing more due: the batch left is settled at once"
        router.finish()
    finally:
        place.server.stop()
    assert place.names() == names
    assert not any((tree.hot / "RANK").iterdir()), "every original removed once its job was recorded"


def test_an_sftp_copy_is_written_aside_fsynced_and_renamed_over_its_name(tree, db, clock, tmp_path):
    sshd = SftpPlace(tmp_path)
    try:
        tree.write_config(routes=sshd.tables())
        drop(tree, ["a.json"])
        route_once(tree, db, clock)
        log = (tmp_path / "sshd" / "sftp.log").read_text()
    finally:
        sshd.server.stop()
    assert sshd.names() == ["a.json"]
    # sftp-server logs each request: the copy was opened under a temporary name, synced with the
    # server's fsync extension, and renamed over its name with posix-rename.
    opened = [line for line in log.splitlines() if "open \"" in line and ".a.json." in line]
    assert opened and ".tmp\"" in opened[0]
    assert "fsync" in log
    assert f"posix-rename old \"{sshd.folder}/.a.json." in log and f"new \"{sshd.folder}/a.json\"" in log


def test_an_s3_copy_carries_its_checksum(tree, db, clock, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "emulator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator")
    s3 = S3Place(tmp_path)
    try:
        tree.write_config(routes=s3.tables())
        drop(tree, ["a.json"])
        route_once(tree, db, clock)
        head = s3.s3.head_object(Bucket=s3.bucket, Key="in/RANK/a.json", ChecksumMode="ENABLED")
    finally:
        s3.server.stop()
    import base64
    import hashlib
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(content("a.json")).digest()).decode()


def waiting() -> list[Job]:
    return list(Job.select().where(Job.state == "archived").order_by(Job.id))


def retry_all(router, clock) -> None:
    clock.now = max(j.next_attempt_at for j in waiting())
    router.run(once=True)


FIVE = [f"{c}.json" for c in "abcde"]


def test_a_remote_stopped_mid_batch_and_started_again_gets_each_copy_once_and_no_temporary(
        tree, db, clock, place, monkeypatch):
    tree.write_config(routes=MATRIX + place.tables(connections=1))      # one copy at a time, in order
    drop(tree, FIVE)
    jobs = Jobs(db, "router:1", clock)
    Scanner(tree.config, jobs).scan("startup", "startup")
    router = Router(tree.config, jobs)
    made, deliver = [], router.remotes.deliver

    def then_stop(*args, **kwargs):         # the server goes down right after the second copy
        result = deliver(*args, **kwargs)
        made.append(result)
        if len(made) == 2:
            place.server.stop()
        return result
    monkeypatch.setattr(router.remotes, "deliver", then_stop)
    router.run(once=True)

    # Two copies arrived; the three others wait on the remote, named in their reason; every local
    # copy was made all the same.
    assert Job.select().where(Job.state == "routed").count() == 2
    assert [j.attempts for j in waiting()] == [1, 1, 1]
    assert all(j.last_error.startswith(f"Partner: {place.label}") for j in waiting())
    assert sorted(os.listdir(tree.dest("Monday Rank"))) == FIVE

    # Down still: they wait again. Back: they flow, each copy once, the first two untouched.
    retry_all(router, clock)
    assert len(waiting()) == 3
    place.server.start()
    first = place.marks()
    assert sorted(first) == [n for n in FIVE if n not in {j.file_name for j in waiting()}]
    retry_all(router, clock)
    assert waiting() == [] and Job.select().where(Job.state == "routed").count() == 5
    assert place.names() == FIVE
    assert all(place.read(n) == content(n) for n in FIVE)
    marks = place.marks()
    assert {n: marks[n] for n in first} == first
    if place.kind == "s3":
        assert all(len(versions) == 1 for versions in marks.values())
    assert Delivery.select().where(Delivery.name == "Partner").count() == 5


@pytest.mark.parametrize("kind", ["sftp", "smb"])
def test_refused_credentials_hold_the_remote_copy_and_name_the_remote(tree, db, clock, tmp_path, monkeypatch, kind):
    place = PLACES[kind](tmp_path)
    try:
        if kind == "sftp":
            tables = place.tables(key=place.server.other_key)       # a key the server does not know
        else:
            monkeypatch.setenv("SMB_WRONG", "not-the-password")
            tables = place.tables(password_env="SMB_WRONG")
        tree.write_config(routes=MATRIX + tables)
        drop(tree, ["a.json"])
        route_once(tree, db, clock)
    finally:
        place.server.stop()
    [job] = waiting()
    assert job.last_error.startswith(f"Partner: {place.label}: credentials refused")
    assert os.listdir(tree.dest("Monday Rank")) == ["a.json"]
    assert place.names() == []


def test_an_sftp_host_whose_key_is_not_known_is_refused_at_start_and_a_changed_key_at_delivery(
        tree, db, clock, tmp_path):
    place = SftpPlace(tmp_path)
    try:
        unknown = tmp_path / "empty_known_hosts"
        unknown.write_text("")
        routes = MATRIX + place.tables(known_hosts=unknown)
        with pytest.raises(config_module.ConfigError) as refused:
            tree.write_config(routes=routes)
        assert f"the host key of {place.label} is not in {unknown}" in str(refused.value)
        proc = tree.run("check-config", check=False)
        assert proc.returncode == 78 and len(proc.stderr.strip().splitlines()) == 1
        assert place.label in proc.stderr

        # Known under that name, but not the server's key: no connection, the copy waits.
        changed = tmp_path / "changed_known_hosts"
        other = " ".join((place.server.root / "other_key.pub").read_text().split()[:2])
        changed.write_text(f"[127.0.0.1]:{place.server.port} {other}\n")
        tree.write_config(routes=MATRIX + place.tables(known_hosts=changed))
        drop(tree, ["a.json"])
        route_once(tree, db, clock)
    finally:
        place.server.stop()
    [job] = waiting()
    assert job.last_error == (f"Partner: {place.label}: the server's host key does not match the one in "
                              f"{changed} (not connected)")
    assert place.names() == []


@pytest.mark.parametrize("problem", ["full", "read-only"])
def test_a_full_or_read_only_filesystem_behind_sshd_holds_the_copy_until_it_is_back(
        tree, db, clock, tmp_path, tmpfs, problem):
    place = SftpPlace(tmp_path)
    try:
        tmpfs.mount(place.folder, size="64k")
        if problem == "full":
            filler = fill(place.folder)
            bring_back = filler.unlink
        else:
            tmpfs.read_only(place.folder)
            bring_back = lambda: tmpfs.read_only(place.folder, False)      # noqa: E731
        tree.write_config(routes=MATRIX + place.tables())
        # Larger than the room a filled tmpfs leaves (less than the 4 KiB fill writes at a time).
        tree.age(tree.drop("RANK", "a.json", big := json.dumps(job_document("RANK", Title="x" * 8192)).encode()))
        router = route_once(tree, db, clock)
        [job] = waiting()
        assert job.last_error.startswith(f"Partner: {place.label}{place.folder}/a.json: ")
        assert place.names() == (["filler.bin"] if problem == "full" else [])   # nothing half-written left
        assert os.listdir(tree.dest("Monday Rank")) == ["a.json"]          # its other copy is made
        bring_back()
        retry_all(router, clock)
    finally:
        place.server.stop()
    assert waiting() == [] and place.names() == ["a.json"] and place.read("a.json") == big


def test_with_conflict_keep_a_file_already_on_the_remote_is_kept(tree, db, clock, place):
    place.put("a.json", b"theirs")
    before = place.marks()
    tree.write_config(routes=MATRIX + place.tables(), router='conflict = "keep"')
    drop(tree, ["a.json", "b.json"])
    route_once(tree, db, clock)
    assert [j.state for j in Job.select()] == ["routed", "routed"]
    assert place.names() == ["a.json", "b.json"]
    assert place.read("a.json") == b"theirs" and place.read("b.json") == content("b.json")
    assert place.marks()["a.json"] == before["a.json"]              # not written over, not even once
    actions = {Path(d.path).name: d.action for d in Delivery.select().where(Delivery.name == "Partner")}
    assert actions == {"a.json": "kept", "b.json": "written"}


def test_a_router_killed_mid_upload_leaves_no_temporary_and_the_next_one_delivers_once(tree, db, tmp_path):
    place = SftpPlace(tmp_path)
    try:
        tree.write_config(routes=place.tables())
        big = json.dumps(job_document("RANK", Title="x" * (12 << 20))).encode()    # a second or more to upload
        tree.age(tree.drop("RANK", "big.json", big))
        tree.run("scanner", "--once")
        router = tree.spawn("router")
        try:
            wait_for(lambda: any(n.startswith(".big.json.") for n in place.names()), timeout=60,
                     message="the upload to start")
        finally:
            router.kill()                                           # SIGKILL, mid-upload
            router.wait(10)
        assert place.names() != ["big.json"]
        # Once the lease of the killed router has run out, the next one takes the job, clears the
        # temporary left behind and delivers the copy.
        wait_for(lambda: tree.run("router", "--once") and Job.get().state == "routed", timeout=60,
                 message="the next router to finish the job")
    finally:
        place.server.stop()
    assert place.names() == ["big.json"] and place.read("big.json") == big
    assert Delivery.select().count() == 1


# --- the configuration: checked at start, without connecting ---------------------------------------

def parse(routes: list[dict], remotes: list[dict] | None = None, base: Path = Path("/srv")):
    return config_module.parse({"route": routes, "remote": remotes or []}, base=base)


def test_a_remote_url_gives_the_remote_and_the_path_placeholders_included(tmp_path):
    known = known_hosts(tmp_path, "[files.example.com]:2222")
    cfg = parse([{"name": "P", "to": "sftp://press@files.example.com:2222/in/{ClientCode}/{date:%Y}"},
                 {"name": "B", "to": "s3://print-jobs/incoming"},
                 {"name": "W", "to": "smb://fs01/PREPRESS/Jobs In"}],
                [{"url": "sftp://press@files.example.com:2222", "known_hosts": str(known), "key_file": "id_ed25519",
                  "max_connections": 2},
                 {"url": "s3://print-jobs", "endpoint_url": "https://s3.example.com", "region": "eu-west-1"},
                 {"url": "smb://fs01", "password_env": "SMB_PASSWORD", "domain": "CORP"}], base=tmp_path)
    sftp, s3, smb = cfg.routes
    assert (sftp.remote.label, str(sftp.template.base), sftp.template is not None) == (
        "sftp://press@files.example.com:2222", "/in", True)
    assert (s3.remote.label, str(s3.to)) == ("s3://print-jobs", "/incoming")
    assert (smb.remote.label, str(smb.to)) == ("smb://fs01", "/PREPRESS/Jobs In")
    assert [r.max_connections for r in cfg.remotes] == [2, 4, 4]
    assert cfg.remotes[0].key_file == tmp_path / "id_ed25519"


@pytest.mark.parametrize("to, why", [
    ("sftp://press:hunter2@files.example.com/in", "the URL holds a password"),
    ("ftp://files.example.com/in", "ftp:// is not a destination the router knows"),
    ("s3://print-jobs:9000/in", "an s3:// URL names a bucket, no user or port"),
    ("s3://Print_Jobs/in", "is not an S3 bucket name"),
    ("smb://fs01", "an smb:// URL names its share first"),
    ("smb://fs01/{ClientCode}/in", "an smb:// URL names its share first"),
    ("sftp://files.example.com/in/../etc", "'..' is not allowed"),
    ("s3://print-jobs/in?X-Amz-Signature=abc", "takes no query"),
])
def test_a_bad_remote_url_is_refused_at_start_naming_the_key(to, why):
    with pytest.raises(config_module.ConfigError) as refused:
        parse([{"name": "P", "to": to}])
    assert str(refused.value).startswith("[[route]] #1 to: ") and why in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("table, why", [
    ({"url": "sftp://files.example.com/in"}, "url: 'sftp://files.example.com/in': names a remote, no path"),
    ({"url": "s3://print-jobs", "password_env": "X"}, "password_env: does not apply to a s3:// remote"),
    ({"url": "smb://fs01", "known_hosts": "k"}, "known_hosts: does not apply to a smb:// remote"),
    ({"url": "smb://fs01", "max_connections": 0}, "max_connections: "),
    ({"url": "smb://fs01", "password_env": "not a name"}, "password_env: expected the name of an environment"),
    ({"password_env": "X"}, "url: required"),
    ({"url": "smb://fs01", "port": 445}, "port: unknown key"),
])
def test_a_bad_remote_table_is_refused_naming_its_key(table, why):
    with pytest.raises(config_module.ConfigError) as refused:
        parse([], [table])
    assert str(refused.value).startswith("[[remote]] #1 ") and why in str(refused.value)


def test_check_config_names_missing_credentials_without_connecting(tree, tmp_path):
    known = known_hosts(tmp_path, "[127.0.0.1]:1")
    tree.write_config(routes=f"""
[[route]]
name = "Partner"
to = "sftp://press@127.0.0.1:1/in"
[[route]]
name = "Share"
to = "smb://127.0.0.1:2/jobs/in"
[[remote]]
url = "sftp://127.0.0.1:1"
key_file = "{tmp_path / 'no_such_key'}"
known_hosts = "{known}"
[[remote]]
url = "smb://127.0.0.1:2"
password_env = "PIPELINE_TEST_UNSET_PASSWORD"
""")
    proc = tree.run("check-config", check=False)
    assert proc.returncode == 78
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].endswith(f"[[remote]] sftp://press@127.0.0.1:1 key_file: {tmp_path / 'no_such_key'} cannot be read")
    assert errors[1].endswith("[[remote]] smb://127.0.0.1:2 password_env: the variable "
                              "PIPELINE_TEST_UNSET_PASSWORD is not set")
    assert "note: route 'Partner': copies go to sftp://press@127.0.0.1:1/in (not connected to by this check)" \
        in proc.stdout
    (tmp_path / "no_such_key").write_text("a key")
    proc = tree.run("check-config", check=False, PIPELINE_TEST_UNSET_PASSWORD="set")
    assert proc.returncode == 0, proc.stderr


# --- each remote's last success and last error: bin/status and the dashboard -------------------------

def test_status_and_the_dashboard_show_each_remotes_last_success_and_last_error(tree, db, clock, tmp_path):
    from test_dashboard import client_for
    place = SftpPlace(tmp_path)
    try:
        tree.write_config(routes=MATRIX + place.tables())
        drop(tree, ["a.json"])
        router = route_once(tree, db, clock)
        place.server.stop()
        drop(tree, ["b.json"])
        route_once(tree, db, clock, router)
    finally:
        place.server.stop()
    [waits] = waiting()
    status = json.loads(tree.run("status", "--json", check=False).stdout)
    [seen] = status["remotes"]
    assert seen["remote"] == place.label and seen["last_success"] and seen["last_error"] in waits.last_error
    text = tree.run("status", check=False).stdout
    [line] = [line for line in text.splitlines() if line.startswith("remote ")]
    assert line.startswith(f"remote    {place.label}: last success ") and "; last error " in line
    page = client_for(tree, db).get("/").get_data(as_text=True)
    assert "Remote destinations" in page and place.label in page and seen["last_error"][:40] in page


def test_route_explain_shows_where_on_the_remote_a_copy_would_go(tree, tmp_path):
    known = known_hosts(tmp_path, "[files.example.com]:2222")
    tree.write_config(routes=f"""
[[route]]
name = "Partner"
clients = ["RANK"]
to = "sftp://press@files.example.com:2222/in/{{ClientCode}}"
[[remote]]
url = "sftp://files.example.com:2222"
known_hosts = "{known}"
""")
    path = tree.drop("RANK", "a.json")
    out = tree.run("route", "--explain", str(path)).stdout
    assert "rule 1:      Partner: matches: sftp://press@files.example.com:2222/in/RANK/a.json" in out
    assert "route:       Partner: sftp://press@files.example.com:2222/in/RANK/a.json" in out


def test_a_connection_cut_mid_write_leaves_a_temporary_that_the_retry_clears(tree, db, clock, tmp_path):
    import threading
    place = SftpPlace(tmp_path)
    try:
        tree.write_config(routes=place.tables())
        big = json.dumps(job_document("RANK", Title="x" * (12 << 20))).encode()
        tree.age(tree.drop("RANK", "big.json", big))

        def stop_mid_write():
            wait_for(lambda: any(n.startswith(".big.json.") for n in place.names()), timeout=60,
                     interval=0.01, message="the upload to start")
            place.server.stop()
        stopper = threading.Thread(target=stop_mid_write)
        stopper.start()
        router = route_once(tree, db, clock)
        stopper.join()
        [job] = waiting()
        assert job.last_error.startswith(f"Partner: {place.label}")
        assert [n for n in place.names() if n.startswith(".big.json.")]      # the server went first
        place.server.start()
        retry_all(router, clock)
    finally:
        place.server.stop()
    assert waiting() == [] and place.names() == ["big.json"] and place.read("big.json") == big


def test_a_reload_that_adds_a_remote_makes_the_routers_pools_anew(tree, db, clock, tmp_path, monkeypatch):
    """A running router given a configuration with another [[remote]] (bin/reload) delivers there
    with the new table's settings, not the pools it started with."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "emulator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator")
    first, second = S3Place(tmp_path), S3Place(tmp_path)
    try:
        tree.write_config(routes=MATRIX + first.tables())
        drop(tree, ["a.json"])
        router = route_once(tree, db, clock)
        assert first.names() == ["a.json"]
        # The second bucket is served by a table of its own (its own endpoint): a pool made at start
        # knows nothing of it and would go to AWS's own endpoint.
        tree.write_config(routes=MATRIX + second.tables())
        router.configure(tree.config)
        drop(tree, ["b.json"])
        route_once(tree, db, clock, router)
        assert second.names() == ["b.json"] and first.names() == ["a.json"]
        assert [j.state for j in Job.select().order_by(Job.id)] == ["routed", "routed"]
    finally:
        first.server.stop()
        second.server.stop()
