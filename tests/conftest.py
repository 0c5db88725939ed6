"""Shared fixtures: a real database, real folders, real programs. Everything in tmp_path.

The ``tree`` fixture runs each test on both engines: a SQLite file in the tree, and a schema of its
own in a real PostgreSQL (``PIPELINE_TEST_POSTGRES``, the password from libpq's environment). A
test or module marked ``sqlite_only`` is about SQLite itself (its file, locks, pragmas). Without
a reachable PostgreSQL the PostgreSQL runs are skipped with the reason, unless
``PIPELINE_TEST_POSTGRES_REQUIRED=1`` (CI) makes that an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from pipeline import config as config_module
from pipeline import store
from pipeline.jobs import Jobs
from pipeline.store.models import Job, bind
from helpers.mounts import Tmpfs
from helpers.smtp_server import Inbox, free_port, start_server
from helpers.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "bin"

BASE_CONFIG = """
[paths]
hot_folder = "hot"
store = "store"
failed = "failed"
error_log = "log/errors"
database = "pipeline.db"
"""

MATRIX = """
[[route]]
name = "Monday Rank"
clients = ["RANK"]
to = "dest/Monday Rank"

[[route]]
name = "Monday RB"
clients = ["RECKITTBENCKISER"]
to = "dest/Monday RB"

[[route]]
name = "BISSELL-WRIKE/IN"
clients = ["BISSELL"]
to = "dest/CLIENT-STORES/BISSELL-WRIKE/IN"

[[route]]
name = "LOREAL/IN"
clients = ["LOREAL"]
to = "dest/CLIENT-STORES/LOREAL/IN"

[[route]]
name = "Celtra"
clients = ["CELTRA"]
to = "dest/Celtra - Create_Rename - Project_Design File"

[[route]]
name = "Celtra"
clients = ["CIBC", "OLIVER", "ADIDAS", "PAYPAL", "RECKITTBENCKISER", "BAYER", "3M", "RANK"]
categories = ["CELTRA"]
to = "dest/Celtra - Create_Rename - Project_Design File"
"""


def job_document(client: str, category: str = "PRODUCTION", **extra) -> dict:
    details = {"ClientCode": client, "JobCategory": category, "StudioCode": f"{client}_STUDIO",
               "Title": f"{client} campaign"}
    details.update(extra)
    return {"JobSpecification": {"JobDetails": details}}


class Tree:
    """A pipeline installation in a temporary folder: config, folders and database."""

    def __init__(self, root: Path, extra: str = "", database: str = "pipeline.db"):
        self.root = root
        self.config_path = root / "pipeline.toml"
        self.dashboard_port = free_port()
        self.database = database        # the paths.database value: a file name, or a PostgreSQL URL
        self.write_config(extra)

    @property
    def engine(self) -> str:
        return "postgresql" if self.database.startswith("postgresql://") else "sqlite"

    def write_config(self, extra: str = "", routes: str = MATRIX, router: str = "", detect: str = "") -> None:
        """Write and load pipeline.toml: base paths, [detect] and [router] lines, ``extra`` tables, ``routes``.

        Detection waits 0.3 s for stability and routers lease for 5 s unless the lines given say otherwise.
        """
        detect = "min_file_age = 0.3\nscan_interval = 1\n" * ("min_file_age" not in detect) + detect
        router = "lease = 5\n" * ("lease" not in router) + router
        if "[dashboard]" not in extra:        # a port of its own: supervised tests start the dashboard
            extra += f'\n[dashboard]\nlisten = "127.0.0.1:{self.dashboard_port}"\n'
        base = BASE_CONFIG.replace('database = "pipeline.db"', f'database = "{self.database}"')
        self.config_path.write_text(f"{base}\n[detect]\n{detect}\n[router]\n{router}\n{extra}\n{routes}")
        self.config = config_module.load(self.config_path)

    @property
    def hot(self) -> Path:
        return self.config.paths.hot_folder

    @property
    def store(self) -> Path:
        return self.config.paths.store

    @property
    def failed(self) -> Path:
        return self.config.paths.failed

    def dest(self, name: str) -> Path:
        return self.root / "dest" / name

    def drop(self, client: str, name: str, content: bytes | str | dict | None = None, *,
             folder: str | None = None, atomic: bool = True) -> Path:
        """Put a job file into the hot folder the way upstream does: written aside, renamed in."""
        if content is None:
            content = job_document(client)
        if isinstance(content, dict):
            content = json.dumps(content)
        if isinstance(content, str):
            content = content.encode("utf-8")
        target = self.hot / (folder or client) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if atomic:
            tmp = target.parent / f".{name}.part"
            tmp.write_bytes(content)
            os.replace(tmp, target)
        else:
            target.write_bytes(content)
        return target

    def age(self, path: Path, seconds: float = 60) -> None:
        """Make a file look written ``seconds`` ago (scans take files unchanged for min_file_age; a
        file cut short that new would be waited for, detect.incomplete_grace)."""
        t = time.time() - seconds
        os.utime(path, (t, t))

    def env(self, **extra) -> dict:
        env = dict(os.environ, PIPELINE_CONFIG=str(self.config_path))
        env.update(extra)
        return env

    def run(self, program: str, *args: str, check: bool = True, timeout: float = 60, **env) -> subprocess.CompletedProcess:
        """Run a real bin/ program against this tree."""
        proc = subprocess.run([str(BIN / program), *args], cwd=self.root, env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"bin/{program} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def spawn(self, program: str, *args: str, **env) -> subprocess.Popen:
        log = open(self.root / f"{program}.{time.monotonic_ns()}.log", "wb")
        return subprocess.Popen([str(BIN / program), *args], cwd=self.root, env=self.env(**env),
                                stdout=log, stderr=subprocess.STDOUT)

    def logs(self, program: str) -> str:
        """What the programs ``spawn`` started under that name have logged so far."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob(f"{program}.*.log")))

    def files(self, folder: Path) -> list[str]:
        """Files below ``folder`` as sorted relative paths, hidden temporaries included."""
        if not folder.exists():
            return []
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


POSTGRES = os.environ.get("PIPELINE_TEST_POSTGRES", "postgresql://pipeline@127.0.0.1:5432/pipeline_test")
POSTGRES_REQUIRED = os.environ.get("PIPELINE_TEST_POSTGRES_REQUIRED") == "1"
POSTGRES_HOST, POSTGRES_PORT = urlsplit(POSTGRES).hostname, urlsplit(POSTGRES).port or 5432
_postgres_problem: list[str] = []       # why PostgreSQL cannot be used, found once per session


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: about SQLite itself; not run on PostgreSQL")
    config.addinivalue_line("markers", "postgresql_only: about PostgreSQL itself; not run on SQLite")


# Modules about the files' side (rules, paths, names, the watcher's events, the browser): the
# database does the same there on both engines, and the tests of the database side run on both
# already; so these run on SQLite only, which keeps the whole suite near ten minutes.
FILE_SIDE_MODULES = {"test_rules", "test_separation", "test_security", "test_explain", "test_detection",
                     "test_isolation", "test_dashboard_browser"}


def pytest_generate_tests(metafunc):
    """Every test that uses ``tree`` (or what is built on it) runs once per engine."""
    if "engine" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker
        file_side = metafunc.module.__name__ in FILE_SIDE_MODULES
        engines = ["sqlite"] if marked("sqlite_only") or file_side else ["postgresql"] if marked("postgresql_only") \
            else ["sqlite", "postgresql"]
        metafunc.parametrize("engine", engines, scope="function")


def _postgres_admin():
    """A connection to the test database, or a skip (an error in CI) saying why there is none."""
    import psycopg2
    deadline = time.monotonic() + 60
    while not _postgres_problem:
        try:
            return psycopg2.connect(POSTGRES, connect_timeout=3)
        except psycopg2.Error as e:
            # A server being restarted (test_postgres restarts it, and other runs on the same
            # machine may) is waited for; any other failure, or a restart that does not end,
            # is this run's answer for every PostgreSQL test.
            passing = any(s in str(e) for s in ("shutting down", "starting up", "Connection refused"))
            if not passing or time.monotonic() > deadline:
                _postgres_problem.append(" ".join(str(e).split()))
            else:
                time.sleep(0.5)
    message = f"PostgreSQL at {POSTGRES} unusable: {_postgres_problem[0]}"
    if POSTGRES_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def database(engine, tmp_path):
    """paths.database for this test: a SQLite file, or a URL to a fresh PostgreSQL schema."""
    if engine == "sqlite":
        yield "pipeline.db"
        return
    admin = _postgres_admin()
    admin.autocommit = True
    schema = f"t_{os.getpid()}_{uuid.uuid4().hex[:12]}"     # the pid: see _sweep_postgres_schemas
    admin.cursor().execute(f"CREATE SCHEMA {schema}")
    # The schema names the test's connections too, so that its clean-up ends its own and no others.
    yield f"{POSTGRES}?options={quote(f'-csearch_path={schema}')}&application_name={schema}"
    try:
        with admin.cursor() as cur:
            # The test's programs are gone, but a killed one's backend may still hold its locks.
            cur.execute("SET lock_timeout = '5s'")
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = %s", (schema,))
            cur.execute(f"DROP SCHEMA {schema} CASCADE")
    except Exception:           # noqa: BLE001 - left for the next session's sweep
        pass
    finally:
        admin.close()


def _run_alive(schema: str) -> bool:
    pid = schema.split("_")[1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@pytest.fixture(scope="session", autouse=True)
def _sweep_postgres_schemas():
    """Schemas left by an interrupted run are dropped once per session; those of a test run still
    going on (its pid in the name, alive) are left to it."""
    try:
        import psycopg2
        conn = psycopg2.connect(POSTGRES, connect_timeout=3)
    except Exception:           # noqa: BLE001 - no PostgreSQL here: nothing to sweep
        yield
        return
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'")
        for (name,) in cur.fetchall():
            if _run_alive(name):
                continue
            try:
                cur.execute(f"DROP SCHEMA {name} CASCADE")
            except psycopg2.Error:
                pass
    conn.close()
    yield


@pytest.fixture
def tree(tmp_path, database) -> Tree:
    return Tree(tmp_path, database=database)


@pytest.fixture
def proxy():
    """A loopback proxy to the test's PostgreSQL (helpers.tcp_proxy), closed until the test opens it:
    the database host down and back, without touching the server other tests share."""
    p = TcpProxy((POSTGRES_HOST, POSTGRES_PORT))
    yield p
    p.stop()


def end_connections(db) -> int:
    """pg_terminate_backend on every connection of this test's programs (not the test's own); how many."""
    import psycopg2
    mine, name = db.execute_sql("SELECT pg_backend_pid(), current_setting('application_name')").fetchone()
    admin = psycopg2.connect(POSTGRES)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = %s AND pid <> %s", (name, mine))
        ended = cur.fetchone()[0]
    admin.close()
    return ended


@pytest.fixture
def tmpfs():
    """Small real filesystems (mounts.Tmpfs), all unmounted at the end of the test."""
    mounts = Tmpfs()
    yield mounts
    mounts.unmount_all()


@pytest.fixture
def inbox():
    """A real SMTP server on 127.0.0.1 keeping what it receives (its port as ``inbox.port``)."""
    box = Inbox()
    box.port = free_port()
    controller = start_server(box, box.port)
    yield box
    controller.stop()


@pytest.fixture
def db(tree):
    database = store.connect(tree.config.paths.database)
    bind(database)
    yield database
    database.close()


@pytest.fixture
def jobs(db) -> Jobs:
    return Jobs(db, "test:1")


@contextlib.contextmanager
def growing(path: Path, head: bytes = b"", tail: bytes = b"", every: float = 0.03):
    """A file open for writing that gains a space every ``every`` seconds for as long as the block
    runs; ``tail`` is written last, then it is closed. (Spaces keep JSON valid after a "{".)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    with open(path, "wb") as f:
        f.write(head)
        f.flush()

        def writer():
            while not stop.is_set():
                f.write(b" ")
                f.flush()
                time.sleep(every)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            yield path
        finally:
            stop.set()
            thread.join()
        f.write(tail)


class FakeClock:
    """Injected time: advances only when told to."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def states(db) -> dict[str, int]:
    """Job counts by state."""
    return {row[0]: row[1] for row in db.run_sql("SELECT state, count(*) FROM jobs GROUP BY state")}


def wait_for(predicate, timeout: float = 20, interval: float = 0.05, message: str = "condition"):
    """Poll until ``predicate()`` is truthy; the test's own patience, not a timed assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def all_jobs(db) -> list[Job]:
    return list(Job.select().order_by(Job.id))


