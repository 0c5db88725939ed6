"""Benchmarks of the performance targets (docs/design.md#performance), each next to a baseline measured in the same run.

    tools/bench [--n 5000] [--routers 2] [--quick] [--no-record]
    tools/bench --rules [--n 5000]       # only the backlog: the seeds' matrix, then 20 rules using every rule feature
    tools/bench --schema [--n 5000]      # only the backlog: without, then with a [[schema]] every job is checked against
    tools/bench --order [KEYS] [--n 5000]   # only the backlog: without, then with router.order_by over 1,000 keys
    tools/bench --flow [--n 5000]           # only the backlog: without, then with every flow-control key, none binding
    tools/bench --database URL [--n 5000]            # the PostgreSQL figures, against SQLite
    tools/bench --hosts 2 --database URL [--n 5000]  # 2 hosts x 2 routers against 1 host (root)
    tools/bench --latency 200            # only the latency at 200 (or 20) files/s, and the watcher's CPU per file
    tools/bench --first [RUNS]           # only the start: supervisord's start to the first routed, RUNS times, with the steps between
    tools/bench --table [--database URL] # the table of the hot path's targets, each row with its target (below)

Every figure is measured on a temporary tree with the real programs under a real supervisord,
using this repository's supervisord.conf, fsync on, leases on. Results are printed and appended to
BENCHMARKS.md with the date and the commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.server
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import CLIENTS, RICH_ROUTES, ROUTES, SCHEMA, PostgresSchema, document, drop, write_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT))
from pipeline import rules  # noqa: E402
from pipeline import config as config_module  # noqa: E402
from pipeline import store  # noqa: E402
from pipeline import validation  # noqa: E402
from pipeline.convert import DAYS  # noqa: E402


@dataclass
class Line:
    what: str
    figure: str
    baseline: str
    ratio: str
    target: str
    ok: bool | None = None


@dataclass
class Results:
    lines: list[Line] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        line = Line(*args, **kwargs)
        self.lines.append(line)
        mark = {True: "ok", False: "MISSED", None: ""}[line.ok]
        print(f"  {line.what}: {line.figure} | baseline {line.baseline} | ratio {line.ratio} | "
              f"target {line.target} {mark}", flush=True)


# --- a pipeline under supervisord on a temporary tree ----------------------------------------------

def router_count(conf: str) -> int:
    """numprocs of [program:router] in supervisord.conf's text (the only program with copies)."""
    return int(re.search(r"(?m)^numprocs = (\d+)$", conf).group(1))


class Pipeline:
    """This repository's supervisord.conf on a temporary tree (its bin/ linked); ``routers``, when
    given, replaces its router count (numprocs) in the copy."""

    def __init__(self, root: Path, config_extra: str = "", routers: int | None = None, routes: str = ROUTES,
                 database: str = "pipeline.db"):
        self.root = root
        self.config_path = write_config(root, config_extra, routes, database)
        self.config = config_module.load(self.config_path)
        (root / "bin").symlink_to(ROOT / "bin")
        conf = (ROOT / "supervisord.conf").read_text()
        if routers is not None:
            conf = re.sub(r"(?m)^numprocs = \d+$", f"numprocs = {routers}", conf)
        (root / "supervisord.conf").write_text(conf)
        (root / "var" / "log").mkdir(parents=True)
        store.connect(self.config.paths.database).close()     # the schema, before anyone polls
        self.proc: subprocess.Popen | None = None
        self.first_id = 0
        self._counting = None

    def mark_prefilled(self) -> None:
        with self.db() as conn:
            self.first_id = conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]

    def start(self) -> float:
        """supervisord started as bin/start starts it (after its bytecode step): the start time."""
        subprocess.run([str(VENV_BIN / "python"), "-m", "compileall", "-q", str(ROOT / "pipeline")],
                       stdout=subprocess.DEVNULL, check=True)
        env = dict(os.environ, PIPELINE_CONFIG=str(self.config_path))
        started = time.time()
        self.proc = subprocess.Popen([str(VENV_BIN / "python"), "-m", "pipeline.supervise", "--nodaemon", "-c",
                                      str(self.root / "supervisord.conf")], env=env, cwd=self.root,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return started

    def ctl(self, *args: str) -> str:
        return subprocess.run([str(VENV_BIN / "supervisorctl"), "-c", str(self.root / "supervisord.conf"), *args],
                              capture_output=True, text=True).stdout

    def wait_running(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = self.ctl("status").splitlines()
            if lines and all(" RUNNING " in line for line in lines):
                return
            time.sleep(0.2)
        raise SystemExit("the pipeline did not start: " + self.ctl("status"))

    def peak_rss(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) of each program, in MB."""
        out = {}
        for name in (line.split()[0] for line in self.ctl("status").splitlines() if line.strip()):
            pid = self.ctl("pid", name).strip()
            if pid.isdigit() and pid != "0":
                for status_line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if status_line.startswith("VmHWM:"):
                        out[name] = int(status_line.split()[1]) / 1024
        return out

    def stop(self) -> None:
        if self._counting is not None:
            self._counting.close()
            self._counting = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @contextlib.contextmanager
    def db(self):
        """The run's database through the storage seam (either engine): ``conn.execute(sql, params)``."""
        engine = store.connect(self.config.paths.database)
        try:
            yield _Statements(engine)
        finally:
            engine.close()

    def count(self, state: str) -> int:
        """Jobs in ``state`` among those this run created (a pre-filled table is not counted), on
        one connection kept for the run: a new one each time would be a new PostgreSQL backend
        started beside the pipeline it measures."""
        if self._counting is None:
            self._counting = store.connect(self.config.paths.database)
        return self._counting.run_sql("SELECT count(*) FROM jobs WHERE state = ? AND id > ?",
                                      (state, self.first_id)).fetchone()[0]

    def wait_count(self, state: str, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count(state) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {self.count(state)} of {n} jobs {state} after {timeout}s")
            # Not often: the count is the benchmark's own load on the database (on PostgreSQL a
            # scan of the jobs each time); the figures are the jobs' own times, not this poll's.
            time.sleep(0.1)


def pre_drop(hot: Path, n: int, seed: int = 1, keys: int = 0) -> list[Path]:
    rng = random.Random(seed)
    return [drop(hot, i, rng, keys) for i in range(n)]


def settle(seconds: float = 1.1) -> None:
    """Let a pre-dropped backlog age past min_file_age, as files dropped during downtime have."""
    time.sleep(seconds)


# --- the measurements ---------------------------------------------------------------------------

def baseline_loop(n: int, routes: str = ROUTES) -> float:
    """A plain Python loop doing the router's file work with fsync, no database: files/s."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = config_module.load(write_config(root, routes=routes))
        files = pre_drop(config.paths.hot_folder, n)
        t0 = time.perf_counter()
        _fsync_folders(_route_files(config, files))
        return n / (time.perf_counter() - t0)


def parallel_loop(n: int, writers: int = 8, routes: str = ROUTES) -> float:
    """The same loop split over ``writers`` processes: the disk's real durable-copy limit, as
    fsyncs from several writers share journal commits (the second baseline). Files/s."""
    import multiprocessing
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = config_module.load(write_config(root, routes=routes))
        files = pre_drop(config.paths.hot_folder, n)
        shares = [files[i::writers] for i in range(writers)]
        ctx = multiprocessing.get_context("fork")
        t0 = time.perf_counter()
        with ctx.Pool(writers) as pool:
            touched = set().union(*pool.starmap(_route_files, [(config, share) for share in shares]))
        _fsync_folders(touched)
        return n / (time.perf_counter() - t0)


def _route_files(config, files: list[Path]) -> set[Path]:
    """Read, parse, archive and copy each file with fsync, then unlink it: the folders touched."""
    touched = set()
    for path in files:
        data = path.read_bytes()
        document = json.loads(data)
        details = document["JobSpecification"]["JobDetails"]
        client = path.parent.name
        facts = rules.Facts(client=client, name=path.name, client_code=details["ClientCode"].upper(),
                            job_category=details["JobCategory"], studio_code=details.get("StudioCode"),
                            document=document, detected_at=time.time())
        targets = [config.paths.store / client / path.name] + [
            d.path for d in rules.destinations(config.routes, facts)]
        for target in targets:
            folder = target.parent
            folder.mkdir(parents=True, exist_ok=True)
            tmp_path = folder / f".{target.name}.{os.getpid()}.tmp"
            with open(tmp_path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, target)
            touched.add(folder)
        os.unlink(path)
        touched.add(path.parent)
    return touched


def _fsync_folders(folders) -> None:
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


LAST_RUN: dict[str, float] = {}        # what the last pipeline_backlog saw besides its throughput


class _Statements:
    def __init__(self, engine):
        self.execute = engine.run_sql


def pipeline_backlog(n: int, routers: int, finished_rows: int = 0, routes: str = ROUTES,
                     database: str = "pipeline.db", config_extra: str = "",
                     keys: int = 0) -> tuple[float, dict[str, float]]:
    """N files pre-dropped (with ``keys``, each with one of that many OrderNumbers), the whole
    supervised pipeline from start to the last routed: files/s."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Pipeline(Path(tmp), config_extra, routers=routers, routes=routes, database=database)
        if finished_rows:
            fill_finished(p.config.paths.database, finished_rows)
            p.mark_prefilled()
        pre_drop(p.config.paths.hot_folder, n, keys=keys)
        settle()
        try:
            started = p.start()
            p.wait_count("routed", n, timeout=600)
            with p.db() as conn:
                first, last = conn.execute("SELECT min(routed_at), max(routed_at) FROM jobs WHERE id > ?",
                                           (p.first_id,)).fetchone()
            rss = p.peak_rss()
        finally:
            p.stop()
        LAST_RUN["first routed"] = first - started
        return n / (last - started), rss


START_STEPS = ("programs spawned", "scanner ready", "first router ready", "startup scan begun", "first job committed",
               "first job archived", "first job routed")


def start_timeline(n: int, routers: int) -> dict[str, float]:
    """One start on a backlog of ``n`` files, until the first routed job: when each step of the way
    came, in seconds from supervisord's start. The spawns are from supervisord's log, a program
    ready (imported, configured, its database open) is its heartbeat's ``started_at``, the rest
    the scan's and the first job's own times."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Pipeline(Path(tmp), routers=routers)
        pre_drop(p.config.paths.hot_folder, n)
        settle()
        try:
            started = p.start()
            p.wait_count("routed", 1, timeout=60)
            with p.db() as conn:
                ready = dict(conn.execute("SELECT program, started_at FROM heartbeats").fetchall())
                scan, = conn.execute("SELECT min(started_at) FROM scans").fetchone()
                detected, routed = conn.execute("SELECT min(detected_at), min(routed_at) FROM jobs").fetchone()
                archived, = conn.execute("SELECT min(at) FROM job_events WHERE to_state = 'archived'").fetchone()
        finally:
            p.stop()
        log = (p.root / "var" / "log" / "supervisord.log").read_text()
    spawned = max(dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                  for stamp in re.findall(r"(?m)^(\S+ \S+) INFO spawned: ", log))
    routers_ready = [at for program, at in ready.items() if program.startswith("router")]
    times = (spawned, ready.get("scanner"), min(routers_ready, default=None), scan, detected, archived, routed)
    return {step: at - started for step, at in zip(START_STEPS, times) if at is not None}


def start_figures(runs: int, n: int, routers: int) -> Results:
    """``runs`` starts (start_timeline), each printed; the median of each step."""
    timelines = []
    for i in range(runs):
        timelines.append(start_timeline(n, routers))
        print(f"  start {i + 1}: " + ", ".join(f"{step} {at:.2f} s" for step, at in timelines[-1].items()), flush=True)
    results = Results()
    for step in START_STEPS:
        values = [t[step] for t in timelines if step in t]
        target = {"first job routed": "<= 0.5 s"}.get(step, "-")
        median = statistics.median(values)
        results.add(f"{step} after supervisord starts (median of {len(values)})", f"{median:.2f} s",
                    f"{min(values):.2f}-{max(values):.2f} s", "-", target,
                    median <= 0.5 if step == "first job routed" else None)
    return results


def largest_file_document(limit: int) -> bytes:
    """A valid job of just under ``limit`` bytes made of small objects, the parser's worst case
    for memory (each object and string a Python object of its own when loaded whole)."""
    head = b'{"JobSpecification": {"JobDetails": {"ClientCode": "RANK", "JobCategory": "PRODUCTION", ' \
           b'"StudioCode": "RANK_STUDIO", "Title": "largest allowed file"}, "Items": ['
    item = b'{"i": 1, "s": "ab"}, '
    count = (limit - len(head) - 64) // len(item)
    return head + item * count + b'{"i": 0}]}}'


def largest_file_peak(limit: int) -> tuple[int, float, float]:
    """The router's peak RSS routing one valid file of about router.max_file_bytes, against its
    peak on a small file in the same run: (file bytes, MB with the big file, MB with a small one)."""
    big = largest_file_document(limit)
    peaks = []
    for body in (largest_file_document(4096), big):
        with tempfile.TemporaryDirectory() as tmp:
            p = Pipeline(Path(tmp), routers=1)
            folder = p.config.paths.hot_folder / "RANK"
            folder.mkdir(parents=True)
            (folder / "large.json").write_bytes(body)
            settle()
            try:
                p.start()
                p.wait_count("routed", 1, timeout=300)
                peaks.append(max(mb for name, mb in p.peak_rss().items() if name.startswith("router")))
            finally:
                p.stop()
    return len(big), peaks[1], peaks[0]


# What differs between the engines in the scripts that fill a table: ``rows`` numbered rows (n.i),
# and random hex of 16 and 32 bytes.
_FILL_DIALECT = {
    "sqlite": {"numbers": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})",
               "hex16": "lower(hex(randomblob(16)))", "hex32": "lower(hex(randomblob(32)))"},
    "postgresql": {"numbers": "WITH n(i) AS (SELECT generate_series(1, {rows}))",
                   "hex16": "md5(random()::text)", "hex32": "md5(random()::text) || md5(random()::text)"},
}


def fill_dialect(database: Path | str, rows: int) -> dict[str, str]:
    """The pieces of a fill script for the engine of ``database``, numbering ``rows`` rows."""
    pieces = _FILL_DIALECT["postgresql" if store.is_postgres(database) else "sqlite"]
    return {**pieces, "numbers": pieces["numbers"].format(rows=rows)}


def run_script(database: Path | str, script: str) -> None:
    """Run a fill script (statements separated by ";") in one transaction, on either engine."""
    if not store.is_postgres(database):
        conn = sqlite3.connect(database)
        try:
            conn.executescript(f"BEGIN;\n{script};\nCOMMIT;")
        finally:
            conn.close()
        return
    import psycopg2
    conn = psycopg2.connect(database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(script)
        conn.autocommit = True
        conn.cursor().execute("VACUUM ANALYZE")         # what autovacuum does to a table that grew
    finally:
        conn.close()


def fill_finished(database: Path | str, rows: int) -> None:
    """A table of ``rows`` finished jobs over the last 90 days, with their audit rows and deliveries
    (in a SQLite file or a PostgreSQL database)."""
    now = time.time()
    sql = fill_dialect(database, rows)
    run_script(database, f"""
        {sql["numbers"]}
        INSERT INTO jobs (uuid, state, source_path, client_folder, file_name, size, mtime_ns, ctime_ns,
                          device, inode, sha256, client_code, job_category, detected_by, detected_at,
                          archived_at, routed_at, updated_at, next_attempt_at, archive_path)
        SELECT {sql["hex16"]}, 'routed', '/old/hot/C' || (i % 9) || '/' || i || '.json',
               'C' || (i % 9), i || '.json', 2000, ({now} - i * 7.7) * 1e9, ({now} - i * 7.7) * 1e9,
               1, 10000000 + i, {sql["hex32"]}, 'C' || (i % 9), 'PRODUCTION', 'realtime',
               {now} - i * 7.7, {now} - i * 7.7 + 0.01, {now} - i * 7.7 + 0.02, {now} - i * 7.7 + 0.02,
               {now} - i * 7.7 + 0.02, '/old/store/C' || (i % 9) || '/' || i || '.json'
        FROM n;
        INSERT INTO job_events (job_id, at, from_state, to_state, actor, detail)
        SELECT id, detected_at, NULL, 'detected', 'scanner:1', 'realtime' FROM jobs;
        INSERT INTO job_events (job_id, at, from_state, to_state, actor, detail)
        SELECT id, archived_at, 'detected', 'archived', 'router_00:1', archive_path FROM jobs;
        INSERT INTO job_events (job_id, at, from_state, to_state, actor, detail)
        SELECT id, routed_at, 'archived', 'routed', 'router_00:1', 'to X' FROM jobs;
        INSERT INTO deliveries (job_id, name, path, action, delivered_at)
        SELECT id, 'Dest', '/old/dest/' || file_name, 'written', routed_at FROM jobs""")


def dashboard_pages(rows: int) -> dict[str, float]:
    """Median milliseconds of the dashboard's heaviest pages on a table of ``rows`` finished jobs
    (the WSGI application itself, as waitress serves it, without the socket)."""
    from pipeline.web.app import create_app
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = config_module.load(write_config(Path(tmp)))
        db = store.connect(config.paths.database)
        fill_finished(config.paths.database, rows)
        client = create_app(config, db).test_client()
        for url in ("/", "/healthz", "/metrics", "/jobs?q=no-such-name", "/jobs?q=99", "/failed?client=C3"):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                client.get(url)
                times.append(time.perf_counter() - t0)
            out[url] = statistics.median(times) * 1000
        db.close()
    return out


def _cpu_seconds(pid: str) -> float:
    """CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(count: int, routers: int, rate: float = 20.0, database: str = "pipeline.db") -> list[float]:
    """Files dropped at ``rate``/s into an idle running pipeline: drop-to-routed seconds each."""
    os.sync()           # an earlier run's tens of thousands of files are on the disk, not in flight
    with tempfile.TemporaryDirectory() as tmp:
        p = Pipeline(Path(tmp), routers=routers, database=database)
        for client, _ in CLIENTS:                  # a real hot folder has its client folders
            (p.config.paths.hot_folder / client).mkdir(parents=True)
        try:
            p.start()
            p.wait_running()
            time.sleep(2)                          # let every program reach its idle loop
            watcher_cpu = _cpu_seconds(p.ctl("pid", "watcher").strip())
            rng = random.Random(2)
            dropped = {}
            next_at = time.monotonic()
            for i in range(count):
                next_at += 1 / rate
                time.sleep(max(0.0, next_at - time.monotonic()))
                path = drop(p.config.paths.hot_folder, i, rng)
                dropped[path.name] = time.time()   # the file is complete and in place from here
            p.wait_count("routed", count, timeout=120)
            LAST_RUN["watcher cpu"] = _cpu_seconds(p.ctl("pid", "watcher").strip()) - watcher_cpu
            with p.db() as conn:
                routed = dict(conn.execute("SELECT file_name, routed_at FROM jobs"))
                detected = dict(conn.execute("SELECT file_name, detected_at FROM jobs"))
                archived = dict(conn.execute("SELECT j.file_name, e.at FROM jobs j JOIN job_events e "
                                             "ON e.job_id = j.id AND e.to_state = 'archived'"))
        finally:
            p.stop()
        LAST_RUN["detected"] = sorted(detected[name] - at for name, at in dropped.items())
        # The router's part, split at the archived transition's time (its progress commit).
        LAST_RUN["to archived"] = sorted(archived[name] - detected[name] for name in dropped)
        LAST_RUN["to routed"] = sorted(routed[name] - archived[name] for name in dropped)
        return sorted(routed[name] - at for name, at in dropped.items())


class _Ok(http.server.BaseHTTPRequestHandler):
    """Answers every POST at once with 200, keeping the connection open."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True     # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def api_server() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def notifier_throughput(n: int) -> tuple[float, float]:
    """(bin/notifier jobs/s, a plain requests loop posting the same bodies: posts/s)."""
    server = api_server()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/jobs"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            config = write_config(root)
            pre_drop(root / "hot", n)
            settle()
            env = dict(os.environ, PIPELINE_CONFIG=str(config))
            for program in ("scanner", "router"):
                subprocess.run([ROOT / "bin" / program, "--once"], env=env, check=True, stderr=subprocess.DEVNULL)
            bodies = [p.read_bytes() for p in sorted((root / "store").rglob("*.json"))]
            loop = _plain_posts(endpoint, bodies, config_module.load(config).api.concurrency)
            write_config(root, f'[api]\nendpoint = "{endpoint}"\n')
            subprocess.run([ROOT / "bin" / "notifier", "--once"], env=env, check=True, stderr=subprocess.DEVNULL)
            with sqlite3.connect(root / "pipeline.db") as conn:
                done, first, last = conn.execute(
                    "SELECT count(*), min(notified_at), max(notified_at) FROM jobs WHERE state = 'notified'").fetchone()
            if done != n:
                raise SystemExit(f"only {done} of {n} jobs notified")
            # From the first notified job to the last: the program's own start is not throughput.
            return (n - 1) / (last - first), loop
    finally:
        server.shutdown()


def _plain_posts(endpoint: str, bodies: list[bytes], concurrency: int) -> float:
    """A plain requests loop: ``concurrency`` threads, a session each, posting ``bodies``: posts/s."""
    from concurrent.futures import ThreadPoolExecutor
    local = threading.local()

    def post(body: bytes) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        local.session.post(endpoint, data=body, headers={"Content-Type": "application/json"}, timeout=10)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies[:concurrency]))          # every session connected first, as the notifier's are
        t0 = time.perf_counter()
        list(pool.map(post, bodies))
        return len(bodies) / (time.perf_counter() - t0)


def report_render(day_jobs: int, other_jobs: int) -> tuple[float, float]:
    """(seconds to compute and render a day's report, seconds to merely load that day's rows into
    Python, the naive way the reporter avoids), on a table built by tools/report_bench.py."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, str(ROOT / "tools" / "report_bench.py"), "--jobs", str(day_jobs),
                              "--other", str(other_jobs), "--keep", tmp], capture_output=True, text=True, check=True)
        line = next(line for line in out.stdout.splitlines() if line.startswith("report for"))
        seconds = float(line.rsplit("= ", 1)[1].split("s")[0])
        with sqlite3.connect(Path(tmp) / "pipeline.db") as conn:
            start, end = conn.execute("SELECT min(detected_at), max(coalesce(routed_at, failed_at)) FROM jobs "
                                      "WHERE detected_at >= (SELECT max(detected_at) - 86400 FROM jobs)").fetchone()
            t0 = time.perf_counter()
            rows = conn.execute("SELECT * FROM jobs WHERE coalesce(routed_at, failed_at) BETWEEN ? AND ?",
                                (start, end)).fetchall()
            naive = time.perf_counter() - t0
        print(f"  ({line}; naive load: {len(rows):,} rows)", flush=True)
        return seconds, naive


def chaos(files: int) -> dict[str, str]:
    """tools/chaos's figures for a run of ``files`` files with a SIGKILL every 0.5 s."""
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "chaos.py"), "--files", str(files)],
                         capture_output=True, text=True)
    figures = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    figures["passed"] = str(out.returncode == 0)
    return figures


def postgres_figures(url: str, n: int, routers: int, drops: int) -> Results:
    """The targets on PostgreSQL: the backlog against SQLite in the same run, an idle worker's wake-up
    by a new job, and the drop-to-routed latency."""
    results = Results()
    print(f"backlog of {n} files on SQLite, then on PostgreSQL", flush=True)
    on_sqlite, on_postgres = both_engines_backlog(url, n, routers)
    results.add(f"backlog throughput on PostgreSQL, N={n}", f"{on_postgres:.0f} files/s",
                f"{on_sqlite:.0f} files/s (SQLite)", f"{on_postgres / on_sqlite:.2f}", ">= 0.90",
                on_postgres / on_sqlite >= 0.9)
    print("wake-up: an idle worker waiting on LISTEN, a job committed by another connection", flush=True)
    schema = PostgresSchema(url)
    try:
        wakes = wake_ups(schema.url, 200)
    finally:
        schema.drop()
    results.add("idle wake-up by a new job, p50", f"{percentile(wakes, 50) * 1000:.2f} ms",
                f"p99 {percentile(wakes, 99) * 1000:.2f} ms", "-", "<= 5 ms", percentile(wakes, 50) <= 0.005)
    print(f"latency: {drops} files dropped at 20/s into an idle pipeline, on SQLite, then on PostgreSQL", flush=True)
    lat_sqlite = latency(drops, routers)
    schema = PostgresSchema(url)
    try:
        lat_postgres = latency(drops, routers, database=schema.url)
    finally:
        schema.drop()
    for q in (50, 99):
        results.add(f"latency p{q} on PostgreSQL", f"{percentile(lat_postgres, q) * 1000:.1f} ms",
                    f"{percentile(lat_sqlite, q) * 1000:.1f} ms (SQLite)",
                    f"{percentile(lat_postgres, q) / percentile(lat_sqlite, q):.2f}", "-")
    return results


def both_engines_backlog(url: str, n: int, routers: int) -> tuple[float, float]:
    """The backlog on SQLite, then in a fresh schema of the PostgreSQL database at ``url``: files/s each."""
    on_sqlite, _ = pipeline_backlog(n, routers)
    schema = PostgresSchema(url)
    try:
        on_postgres, _ = pipeline_backlog(n, routers, database=schema.url)
    finally:
        schema.drop()
    return on_sqlite, on_postgres


def hosts_backlog(url: str, n: int, hosts: int) -> float:
    """N files pre-dropped into a shared folder, ``hosts`` hosts x 2 routers (tests/helpers/hosts.py: each
    host its namespaces and bindfs view) on one PostgreSQL: files/s from start to the last routed."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.hosts import Host, unavailable
    why = unavailable()
    if why:
        raise SystemExit(f"--hosts: {why}")
    schema = PostgresSchema(url)
    running = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            share, view = root / "share", root / "view"
            view.mkdir()
            for folder in ("hot", "store", "failed", "errors"):
                (share / folder).mkdir(parents=True)
            config = root / "pipeline.toml"
            config.write_text(f'[paths]\nhot_folder = "{view}/hot"\nstore = "{view}/store"\nfailed = "{view}/failed"\n'
                              f'error_log = "{view}/errors"\ndatabase = "{schema.url}"\n'
                              '[detect]\nobserver = "polling"\nmin_file_age = 0.3\n' + ROUTES.replace('to = "', f'to = "{view}/'))
            pre_drop(share / "hot", n)
            settle()
            started = time.time()
            for i in range(hosts):
                running.append(Host(f"bench{i + 1}", share, view, config,
                                    ["scanner", "watcher", "router=router_00", "router=router_01"], root))
            engine = store.connect(schema.url)
            try:
                deadline = time.monotonic() + 600
                while engine.run_sql("SELECT count(*) FROM jobs WHERE state = 'routed'").fetchone()[0] < n:
                    if time.monotonic() > deadline:
                        raise SystemExit("--hosts: the backlog was not routed within 600 s")
                    time.sleep(0.05)
                last = engine.run_sql("SELECT max(routed_at) FROM jobs").fetchone()[0]
            finally:
                engine.close()
            for host in running:
                host.kill()
            running = []
            return n / (last - started)
    finally:
        for host in running:
            host.kill()
        schema.drop()


def wake_ups(url: str, count: int) -> list[float]:
    """Seconds from the start of a job's creating transaction to the wake-up of a worker waiting on
    LISTEN, ``count`` times: the path an idle router takes (store.postgres: wait_for_work). The
    insert and its commit are inside the figure: a wake-up cannot come before the commit."""
    from pipeline.cli import Stopper
    from pipeline.hotfolder import Sighting
    from pipeline.jobs import Jobs
    waiter, writer = store.connect(url), store.connect(url)
    jobs, stopper = Jobs(writer, "bench:1"), Stopper()
    waiter.wait_for_work(stopper, 0, listen=True)
    out = []
    try:
        for i in range(count):
            woke: list[float] = []
            thread = threading.Thread(target=lambda: waiter.wait_for_work(stopper, 5, listen=True)
                                      and woke.append(time.perf_counter()))
            thread.start()
            time.sleep(0.02)                       # the waiter is in select() by now
            fake = types.SimpleNamespace(st_size=100, st_mtime_ns=i, st_ctime_ns=i, st_dev=1, st_ino=i + 1)
            created = time.perf_counter()        # the notification goes out as the commit returns
            jobs.create([Sighting(f"/bench/{i}.json", "BENCH", fake)], "realtime")
            thread.join(10)
            if woke:
                out.append(woke[0] - created)
    finally:
        stopper.request()
        waiter.close()
        writer.close()
    return out


LATENCY = {20: {50: 0.005, 95: None, 99: 0.015}, 200: {50: None, 99: 0.050}}   # files/s: {percentile: target}


def latency_figures(results: Results, rate: int, quick: bool, routers: int, per_file: float,
                    seconds: int | None = None) -> None:
    """Drop-to-routed latency at ``rate`` files/s (20: 300 files into an idle pipeline, 200: 60 s
    of load, or ``seconds`` of either), against the loop's time per file; and the watcher's part:
    drop to detected, and its CPU per file dropped (its idle turns included)."""
    count = {20: 60 if quick else 300, 200: 2000 if quick else 12_000}[rate]
    if seconds is not None and not quick:
        count = rate * seconds
    print(f"latency: {count} files dropped at {rate}/s into a running pipeline", flush=True)
    lat = latency(count, routers, rate=rate)
    for q, target in LATENCY[rate].items():
        v = percentile(lat, q)
        results.add(f"latency p{q} at {rate} files/s", f"{v * 1000:.1f} ms", f"{per_file:.1f} ms/file (loop)",
                    f"{v * 1000 / per_file:.1f}", f"<= {target * 1000:.0f} ms" if target else "-",
                    v <= target if target else None)
    results.add(f"latency max at {rate} files/s", f"{max(lat) * 1000:.1f} ms", f"{per_file:.1f} ms/file (loop)",
                f"{max(lat) * 1000 / per_file:.1f}", "-")
    detected = LAST_RUN["detected"]      # the watcher's part: drop to the job's creation
    for q in (50, 99):
        results.add(f"detection p{q} at {rate} files/s", f"{percentile(detected, q) * 1000:.1f} ms", "-", "-", "-")
    results.add(f"detection max at {rate} files/s", f"{max(detected) * 1000:.1f} ms", "-", "-", "-")
    for part, what in (("to archived", "detected to archived (wake-up, claim, read, copies, folder syncs)"),
                       ("to routed", "archived to routed (original removed, hot folder synced)")):
        values = LAST_RUN[part]
        results.add(f"{what} p50 at {rate} files/s", f"{percentile(values, 50) * 1000:.1f} ms",
                    f"p99 {percentile(values, 99) * 1000:.1f} ms", "-", "-")
    results.add(f"watcher CPU per file at {rate} files/s", f"{LAST_RUN['watcher cpu'] / count * 1000:.3f} ms",
                "-", "-", "-")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# --- the table of the hot path's targets ---------------------------------------------------------

TABLE_SIZES = (5000, 20_000)        # the backlogs the table measures against the 8-writer loop


def table_figures(routers: int, database: str | None, rounds: int, quick: bool) -> Results:
    """Each target of the hot path (docs/design.md#performance) once, with its target: the backlog
    against the 8-writer loop at 5,000 and 20,000 files (median of ``rounds`` rounds, each its own
    loop then the pipeline), supervisord's start to the first routed (median of 5 starts), the
    latency at 20 files/s and at 200 files/s for 30 s, and with ``database`` the PostgreSQL backlog
    against SQLite's in the same rounds."""
    results = Results()
    sizes = (1000,) if quick else TABLE_SIZES
    for n in sizes:
        print(f"backlog of {n} files: the 8-writer loop, then the pipeline, {rounds} rounds", flush=True)
        loops, got = [], []
        for _ in range(rounds):
            loops.append(parallel_loop(n))
            got.append(pipeline_backlog(n, routers)[0])
            print(f"  loop {loops[-1]:.0f} files/s, pipeline {got[-1]:.0f} files/s", flush=True)
        ratios = [g / loop for g, loop in zip(got, loops)]
        median = statistics.median(ratios)
        results.add(f"backlog against the 8-writer loop, N={n} (median of {rounds}; rounds "
                    + ", ".join(f"{r:.2f}" for r in ratios) + ")",
                    f"{statistics.median(got):.0f} files/s", f"{statistics.median(loops):.0f} files/s (8 processes)",
                    f"{median:.2f}", ">= 0.80", median >= 0.8)
    starts = 3 if quick else 5
    print(f"start: {starts} starts on a backlog of {sizes[0]} files", flush=True)
    first = [start_timeline(sizes[0], routers)["first job routed"] for _ in range(starts)]
    results.add(f"supervisord start to first routed (median of {starts})", f"{statistics.median(first):.2f} s",
                f"{min(first):.2f}-{max(first):.2f} s", "-", "<= 0.5 s", statistics.median(first) <= 0.5)
    per_file = 1000 / baseline_loop(sizes[0])
    latency_figures(results, 20, quick, routers, per_file)
    latency_figures(results, 200, quick, routers, per_file, seconds=30)
    if database is None:
        results.add("PostgreSQL backlog against SQLite", "not measured (give --database URL)", "-", "-", ">= 0.90")
        return results
    n = sizes[0]
    print(f"backlog of {n} files on SQLite, then on PostgreSQL, {rounds} rounds", flush=True)
    pairs = []
    for _ in range(rounds):
        pairs.append(both_engines_backlog(database, n, routers))
        print(f"  SQLite {pairs[-1][0]:.0f} files/s, PostgreSQL {pairs[-1][1]:.0f} files/s", flush=True)
    ratios = [pg / lite for lite, pg in pairs]
    median = statistics.median(ratios)
    results.add(f"PostgreSQL backlog against SQLite, N={n} (median of {rounds}; rounds "
                + ", ".join(f"{r:.2f}" for r in ratios) + ")",
                f"{statistics.median(pg for _, pg in pairs):.0f} files/s",
                f"{statistics.median(lite for lite, _ in pairs):.0f} files/s (SQLite)", f"{median:.2f}", ">= 0.90",
                median >= 0.9)
    return results


# --- main ---------------------------------------------------------------------------------------

def main() -> None:
    argp = argparse.ArgumentParser(prog="tools/bench", description=__doc__.splitlines()[0])
    argp.add_argument("--n", type=int, default=5000, help="backlog files (default 5000)")
    default_routers = router_count((ROOT / "supervisord.conf").read_text())
    argp.add_argument("--routers", type=int, default=default_routers,
                      help=f"router processes (default {default_routers}, supervisord.conf's numprocs)")
    argp.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a record")
    argp.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    argp.add_argument("--rules", action="store_true",
                      help="only the backlog, with the seeds' matrix and with 20 rules using every feature "
                           "of the rules (tools/workload.py RICH_ROUTES), each against its baseline loop")
    argp.add_argument("--schema", action="store_true",
                      help="only the backlog, without and with a [[schema]] (tools/workload.py SCHEMA) that "
                           "every job is checked against; the ratio of the two")
    argp.add_argument("--order", type=int, metavar="KEYS", nargs="?", const=1000,
                      help="only the backlog, without and with router.order_by over KEYS distinct values "
                           "(default 1000); the ratio of the two")
    argp.add_argument("--flow", action="store_true",
                      help="only the backlog, without and with every flow-control feature configured and none "
                           "binding (order_by over 1000 keys, each route's max_waiting, hours and days)")
    argp.add_argument("--database", metavar="URL",
                      help="a PostgreSQL database (postgresql://user@host/db, password from libpq's environment): "
                           "only the PostgreSQL figures, each run in a fresh schema of it")
    argp.add_argument("--hosts", type=int, metavar="N",
                      help="with --database: N hosts x 2 routers (namespaces, bindfs views, root) against 1 host")
    argp.add_argument("--large", type=int, default=50_000, metavar="N",
                      help="the second backlog, against the 8-writer loop and per file against --n "
                           "(default 50000; 0 leaves it out)")
    argp.add_argument("--no-million", action="store_true",
                      help="leave out the figures on a table of 1,000,000 finished jobs (building it "
                           "takes about 10 minutes on 2 cores) and the chaos run")
    argp.add_argument("--latency", type=int, choices=sorted(LATENCY), metavar="RATE",
                      help="only the latency at RATE files/s (20 or 200), and the watcher's CPU per file")
    argp.add_argument("--first", type=int, metavar="RUNS", nargs="?", const=5,
                      help="only the start: RUNS starts (default 5) on the --n backlog, from supervisord's start "
                           "to the first routed job, with the steps between; their medians")
    argp.add_argument("--table", action="store_true",
                      help="only the table of the hot path's targets, each row with its target: the backlog "
                           "against the 8-writer loop at 5,000 and 20,000 files, the first routed after "
                           "supervisord starts, the latency at 20 and at 200 files/s, and with --database "
                           "the PostgreSQL backlog against SQLite's")
    argp.add_argument("--rounds", type=int, default=3, help="with --table: rounds of each backlog (default 3)")
    args = argp.parse_args()
    n = 1000 if args.quick else args.n
    if args.table:
        results = table_figures(args.routers, args.database, args.rounds, args.quick)
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, f"--table{' --database postgresql://...' if args.database else ''}")
        return
    if args.first:
        results = start_figures(args.first, n, args.routers)
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, f"--first {args.first}")
        return
    if args.latency:
        results = Results()
        latency_figures(results, args.latency, args.quick, args.routers, 1000 / baseline_loop(n))
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, f"--latency {args.latency}")
        return
    if args.hosts:
        if not args.database:
            raise SystemExit("--hosts needs --database postgresql://... (the hosts share it)")
        results = Results()
        one, two = hosts_backlog(args.database, n, 1), hosts_backlog(args.database, n, args.hosts)
        results.add(f"{args.hosts} hosts x 2 routers, N={n}", f"{two:.0f} files/s", f"{one:.0f} files/s (1 host x 2 routers)",
                    f"{two / one:.2f}", ">= 1.30", two / one >= 1.3)
        if not args.no_record and not args.quick:
            record(results, n, 0, 2, f"--hosts {args.hosts} --database postgresql://...")
        return
    if args.database:
        results = postgres_figures(args.database, n, args.routers, 60 if args.quick else 300)
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, "--database postgresql://...")
        return
    if args.schema:
        results = schema_backlog(n, args.routers)
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, "--schema")
        return
    if args.order:
        results = order_backlog(n, args.routers, keys=args.order)
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, f"--order {args.order}")
        return
    if args.flow:
        results = flow_backlog(n, args.routers)
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, "--flow")
        return
    if args.rules:
        results = rules_backlog(n, args.routers)
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, "--rules")
        return
    finished = 100_000 if args.quick else 1_000_000
    results = Results()
    print(f"backlog of {n} files (baseline loop, then the supervised pipeline)", flush=True)
    base = baseline_loop(n)
    parallel = parallel_loop(n)
    empty, rss = pipeline_backlog(n, args.routers)
    first_routed = LAST_RUN["first routed"]
    results.add(f"backlog throughput, N={n}", f"{empty:.0f} files/s", f"{base:.0f} files/s",
                f"{empty / base:.2f}", ">= 0.50", empty / base >= 0.5)
    results.add(f"backlog against the 8-writer loop, N={n}", f"{empty:.0f} files/s",
                f"{parallel:.0f} files/s (8 processes)", f"{empty / parallel:.2f}", ">= 0.80", empty / parallel >= 0.8)
    results.add("first file routed after supervisord starts", f"{first_routed:.2f} s", "-", "-", "<= 0.5 s",
                first_routed <= 0.5)
    large = 0 if args.quick else args.large
    if large:
        print(f"backlog of {large} files (the 8-writer loop, then the supervised pipeline)", flush=True)
        parallel_large = parallel_loop(large)
        got, rss = pipeline_backlog(large, args.routers)
        results.add(f"backlog against the 8-writer loop, N={large}", f"{got:.0f} files/s",
                    f"{parallel_large:.0f} files/s (8 processes)", f"{got / parallel_large:.2f}", ">= 0.80",
                    got / parallel_large >= 0.8)
        results.add(f"time per file, N={large} against N={n}", f"{1000 / got:.2f} ms", f"{1000 / empty:.2f} ms",
                    f"{empty / got:.2f}", "<= 1.10", empty / got <= 1.1)

    for rate in LATENCY:
        latency_figures(results, rate, args.quick, args.routers, 1000 / base)

    jobs_n = 500 if args.quick else 2000
    print(f"notifier: {jobs_n} routed jobs against a local HTTP server answering at once", flush=True)
    notified, loop = notifier_throughput(jobs_n)
    results.add("notifier throughput", f"{notified:.0f} jobs/s", f"{loop:.0f} posts/s (plain requests loop, "
                f"{config_module.load(os.devnull).api.concurrency} threads)", f"{notified / loop:.2f}", ">= 0.80",
                notified / loop >= 0.8)

    if args.no_million:
        _memory_lines(results, rss)
        if not args.no_record and not args.quick:
            record(results, n, 0, args.routers, f"--large {large} --no-million" if large else "--no-million")
        return

    print(f"the same backlog on a table of {finished:,} finished jobs", flush=True)
    full, _ = pipeline_backlog(n, args.routers, finished_rows=finished)
    results.add(f"backlog on {finished:,} finished jobs", f"{full:.0f} files/s", f"{empty:.0f} files/s (empty table)",
                f"{full / empty:.2f}", ">= 0.90", full / empty >= 0.9)

    print(f"dashboard: its heaviest pages on a table of {finished:,} finished jobs", flush=True)
    for url, ms in dashboard_pages(finished).items():
        results.add(f"dashboard {url}", f"{ms:.0f} ms", "-", "-", "< 250 ms", ms < 250)

    day_jobs = 20_000 if args.quick else 100_000
    print(f"report: a day of {day_jobs:,} jobs in a table of {finished:,}", flush=True)
    seconds, naive = report_render(day_jobs, finished - day_jobs)
    results.add(f"report, a {day_jobs:,}-job day", f"{seconds:.2f} s", f"{naive:.2f} s (loading the day's rows)",
                f"{seconds / naive:.2f}", "< 5 s", seconds < 5)

    chaos_files = 300 if args.quick else 5000
    print(f"SIGKILL chaos: {chaos_files} files, a random program killed every 0.5 s", flush=True)
    c = chaos(chaos_files)
    kills = sum(int(n) for n in re.findall(r"\d+", c.get("SIGKILLs", "")))
    results.add(f"SIGKILL chaos, {chaos_files} files, {kills} kills",
                f"{c.get('files lost')} lost, {c.get('drops with two jobs')} duplicated, {c.get('jobs stuck')} stuck, "
                f"integrity {c.get('integrity_check')}", "-", "-", "0 / 0 / 0 / ok", c["passed"] == "True")

    limit = config_module.load(os.devnull).router.max_file_bytes      # the default
    print(f"memory: one valid job of router.max_file_bytes ({limit:,} bytes) made of small objects", flush=True)
    size, big_mb, small_mb = largest_file_peak(limit)
    ceiling = 4 * size / 2**20 + 60
    results.add(f"router peak RSS, one {size / 2**20:.0f} MiB job", f"{big_mb:.0f} MB",
                f"{small_mb:.0f} MB (a 4 KB job)", f"{big_mb / (size / 2**20):.1f} x file",
                f"< {ceiling:.0f} MB (4 x file + 60 MB)", big_mb < ceiling)

    _memory_lines(results, rss)
    if not args.no_record and not args.quick:
        record(results, n, finished, args.routers, f"--large {large}" if large != 50_000 else "")


def _memory_lines(results: Results, rss: dict[str, float]) -> None:
    """Each program's peak RSS through the largest backlog run."""
    for program, mb in sorted(rss.items()):
        results.add(f"peak RSS {program}", f"{mb:.1f} MB", "-", "-", "< 60 MB", mb < 60)


def decision_time(routes: str, jobs: int = 2000) -> float:
    """Microseconds per job of the routing decision alone (rules.destinations), in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        config = config_module.load(write_config(Path(tmp), routes=routes))
    keep = validation.wanted(rules.paths_named(config.routes))
    rng = random.Random(3)
    facts = []
    for i in range(jobs):
        client, body = document(i, rng)
        details = validation.parse(body, client, keep)
        facts.append(rules.Facts.of(details, client, f"{5900000 + i}.json", time.time()))
    t0 = time.perf_counter()
    for f in facts:
        rules.destinations(config.routes, f)
    return (time.perf_counter() - t0) / jobs * 1e6


def rules_backlog(n: int, routers: int) -> Results:
    """The backlog with today's matrix, then with RICH_ROUTES, each against its own baseline loop
    (which makes the same copies), and the routing decision's own time per job for both."""
    results = Results()
    figures = {}
    for label, routes in (("seeds' matrix, 6 rules", ROUTES), ("20 rules, every rule feature", RICH_ROUTES)):
        print(f"backlog of {n} files, {label}", flush=True)
        base = baseline_loop(n, routes)
        got, _ = pipeline_backlog(n, routers, routes=routes)
        figures[label] = got / base
        results.add(f"backlog, {label}", f"{got:.0f} files/s", f"{base:.0f} files/s (loop, same copies)",
                    f"{got / base:.2f}", ">= 0.50", got / base >= 0.5)
        us = decision_time(routes)
        results.add(f"routing decision, {label}", f"{us:.1f} us/job", "-", "-", "-")
    matrix, rich = figures.values()
    results.add("backlog ratio, 20 rules against the matrix", f"{rich:.2f} vs {matrix:.2f}", "-",
                f"{rich / matrix:.2f}", ">= 0.90", rich / matrix >= 0.9)
    return results


def schema_backlog(n: int, routers: int, rounds: int = 4) -> Results:
    """The backlog without a schema and with workload.SCHEMA applying to every job (each job parsed
    whole and checked), in ``rounds`` rounds after a warm-up run that is not counted: the best of
    each, and the median of the rounds' ratios (on a shared machine one run may meet another's load).

    The first backlog of a session ran 1,400-1,500 files/s where every later one, either kind, ran
    900-1,100 (in four sessions, whatever ran first), so it is run once and thrown
    away; and the order alternates (with first in every other round) so a drift favours neither."""
    results = Results()
    runs: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        schema = Path(tmp) / "job.schema.json"
        schema.write_text(json.dumps(SCHEMA))
        kinds = [("without", ""), ("with", f'[[schema]]\nfile = "{schema}"\n')]
        print(f"warm-up backlog of {n} files, not counted", flush=True)
        print(f"  {pipeline_backlog(n, routers)[0]:.0f} files/s", flush=True)
        for round_ in range(rounds):
            for label, extra in (kinds if round_ % 2 == 0 else kinds[::-1]):
                print(f"backlog of {n} files, {label} a schema", flush=True)
                got, _ = pipeline_backlog(n, routers, config_extra=extra)
                runs[label].append(got)
                print(f"  {got:.0f} files/s", flush=True)
    without, with_ = max(runs["without"]), max(runs["with"])
    results.add("backlog, a [[schema]] checking every job (best of each)", f"{with_:.0f} files/s",
                f"{without:.0f} files/s (no schema)", f"{with_ / without:.2f}", ">= 0.90", with_ / without >= 0.9)
    ratios = [w / o for w, o in zip(runs["with"], runs["without"])]
    median = statistics.median(ratios)
    results.add("backlog, a [[schema]] checking every job (median of rounds)",
                ", ".join(f"{r:.2f}" for r in ratios), "-", f"{median:.2f}", ">= 0.90", median >= 0.9)
    us = schema_time()
    results.add("schema check alone (parse whole + validate)", f"{us:.0f} us/job", "-", "-", "-")
    return results


def compared_backlog(n: int, routers: int, kinds: list[tuple[str, str, str]], what: str,
                     keys: int = 0, rounds: int = 3) -> tuple[list[float], list[float]]:
    """The backlog under two configurations, ``kinds`` = [(label, config_extra, routes)] (the
    baseline first), as schema_backlog measures (a warm-up not counted, rounds in alternating
    order): ([best of the baseline, best of the other], the rounds' ratios), for add_compared."""
    runs: dict[str, list[float]] = {label: [] for label, _, _ in kinds}
    print(f"warm-up backlog of {n} files, not counted", flush=True)
    print(f"  {pipeline_backlog(n, routers, keys=keys)[0]:.0f} files/s", flush=True)
    for round_ in range(rounds):
        for label, extra, routes in (kinds if round_ % 2 == 0 else kinds[::-1]):
            print(f"backlog of {n} files, {label} {what}", flush=True)
            got, _ = pipeline_backlog(n, routers, config_extra=extra, routes=routes, keys=keys)
            runs[label].append(got)
            print(f"  {got:.0f} files/s", flush=True)
    (base, _, _), (other, _, _) = kinds
    return [max(runs[base]), max(runs[other])], [w / o for w, o in zip(runs[other], runs[base])]


def add_compared(results: Results, what: str, baseline: str, best: list[float], ratios: list[float]) -> None:
    """Two rows for compared_backlog's figures against a >= 0.90 target: best of each, median of rounds."""
    without, with_ = best
    results.add(f"backlog, {what} (best of each)", f"{with_:.0f} files/s", f"{without:.0f} files/s ({baseline})",
                f"{with_ / without:.2f}", ">= 0.90", with_ / without >= 0.9)
    median = statistics.median(ratios)
    results.add(f"backlog, {what} (median of rounds)", ", ".join(f"{r:.2f}" for r in ratios), "-",
                f"{median:.2f}", ">= 0.90", median >= 0.9)


ORDER_BY = '[router]\norder_by = "JobSpecification.JobDetails.OrderNumber"\n'


def order_backlog(n: int, routers: int, keys: int = 1000) -> Results:
    """The backlog with router.order_by on an OrderNumber taking ``keys`` values against the same
    files without order_by."""
    results = Results()
    kinds = [("without", "", ROUTES), ("with", ORDER_BY, ROUTES)]
    best, ratios = compared_backlog(n, routers, kinds, "order_by", keys=keys)
    add_compared(results, f"router.order_by over {keys} keys", "no order_by", best, ratios)
    us = order_time(keys)
    results.add("the ordering statements alone (Jobs.order and hand_on, batches of 100)",
                f"{us:.0f} us/job", "-", "-", "-")
    return results


def unbinding_routes(n: int) -> str:
    """ROUTES with every flow-control key on every route, set so that none binds in a backlog of
    ``n``: a max_waiting above what a folder can hold, hours round the clock, every day."""
    keys = f'max_waiting = {2 * n}\nhours = "00:00-24:00"\ndays = {json.dumps(list(DAYS))}\n'
    return ROUTES.replace('\nto = ', '\n' + keys + 'to = ')


def flow_backlog(n: int, routers: int, keys: int = 1000) -> Results:
    """The backlog with every flow-control feature configured and none binding (order_by over
    ``keys`` values, each route's max_waiting, hours and days) against the same files without."""
    results = Results()
    kinds = [("without", "", ROUTES), ("with", ORDER_BY, unbinding_routes(n))]
    best, ratios = compared_backlog(n, routers, kinds, "flow control", keys=keys)
    add_compared(results, "every flow-control feature, none binding", "none configured", best, ratios)
    return results


def order_time(keys: int, jobs: int = 5000, batch: int = 100) -> float:
    """Microseconds per job of ``Jobs.order`` and ``Jobs.hand_on`` in this process, on a SQLite table
    of ``jobs`` detected jobs over ``keys`` keys, claimed, keyed and settled ``batch`` at a time as a
    router does."""
    from pipeline.jobs import Jobs
    from pipeline.states import ROUTE_QUEUE
    with tempfile.TemporaryDirectory() as tmp:
        db = store.connect(Path(tmp) / "order.db")
        table = Jobs(db, "bench@order:1")
        with db.write():
            for i in range(jobs):
                db.run_sql("INSERT INTO jobs (uuid, state, source_path, client_folder, file_name, size, mtime_ns, "
                           "ctime_ns, device, inode, detected_by, detected_at, updated_at, next_attempt_at) "
                           "VALUES (?, 'detected', ?, 'RANK', ?, 1, ?, ?, 1, ?, 'startup', 0, 0, 0)",
                           (f"u{i}", f"/hot/RANK/{i}.json", f"{i}.json", i, i, i))
        spent = 0.0
        while True:
            claimed = table.claim(ROUTE_QUEUE, batch, 60)
            if not claimed.jobs:
                break
            t0 = time.perf_counter()
            table.order(claimed.token, [(j.id, f"on{j.id % keys:05d}") for j in claimed.jobs])
            spent += time.perf_counter() - t0
            with db.write():        # routed, as the batch would be
                db.run_sql("UPDATE jobs SET state = 'routed', lease_token = NULL WHERE lease_token = ?",
                           (claimed.token,))
            t0 = time.perf_counter()
            table.hand_on([j.id for j in claimed.jobs])
            spent += time.perf_counter() - t0
        db.close()
    return spent / jobs * 1e6


def schema_time(jobs: int = 2000) -> float:
    """Microseconds per job of parsing whole and checking against workload.SCHEMA, in this process."""
    from pipeline import schemas
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.schema.json"
        path.write_text(json.dumps(SCHEMA))
        schema = schemas.compile_schema("[[schema]] #1", path.name, path)
    bodies = [document(i, rng) for i in range(jobs)]
    t0 = time.perf_counter()
    for client, body in bodies:
        schemas.parse_job(body, client, validation.wanted([]), (schema,))
    return (time.perf_counter() - t0) / jobs * 1e6


def record(results: Results, n: int, finished: int, routers: int, flags: str = "") -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())     # the machine's load as the run ends (1/5/15 min)
    lines = [f"\n## {when}, commit {commit}{' (with uncommitted changes)' if dirty else ''}\n",
             f"`tools/bench --n {n} --routers {routers}{' ' + flags if flags else ''}` on {os.cpu_count()} cores, "
             f"load {load}" + (f"; {finished:,}-row table.\n" if finished else ".\n"),
             "| what | figure | baseline | ratio | target | |", "| --- | --- | --- | --- | --- | --- |"]
    for line in results.lines:
        mark = {True: "ok", False: "**missed**", None: ""}[line.ok]
        lines.append(f"| {line.what} | {line.figure} | {line.baseline} | {line.ratio} | {line.target} | {mark} |")
    path = ROOT / "BENCHMARKS.md"
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
