"""Chaos run: the whole pipeline under supervisord, a random program SIGKILLed every 0.5 s.

    tools/chaos [--files 5000] [--kill-every 0.5] [--invalid 0.02] [--timeout 600] [--database URL]

Drops the files (mixed clients and categories, a few invalid) while a local API server fails
some requests, kills a random RUNNING program every interval, then waits for quiescence and
checks that nothing was lost: every file is in the archive and exactly its rule's destinations
(or in FAILED with a reason when invalid), the hot folder is empty, no job is stuck, no drop has
two jobs, every audit history is a legal path through the state machine, and SQLite's
integrity check passes (``--database URL``: the same on PostgreSQL). Prints the figures; exits 1 on any loss.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Pipeline  # noqa: E402
from workload import PostgresSchema, document  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline import rules, store  # noqa: E402

PROGRAMS = ("scanner", "watcher", "router:router_00", "router:router_01", "notifier")
TRANSITIONS = {(None, "detected"), ("detected", "archived"), ("archived", "routed"), ("routed", "notified"),
               ("detected", "failed"), ("archived", "failed"), ("routed", "failed"),
               ("detected", "detected"), ("archived", "archived"), ("routed", "routed")}
FINAL = {"notified", "failed"}


class FlakyApi(http.server.BaseHTTPRequestHandler):
    """Fails about one request in five (500, 503 or 429 with Retry-After: 1), answers the rest."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    received: Counter = Counter()
    lock = threading.Lock()
    rng = random.Random(7)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            self.received[self.headers.get("Idempotency-Key")] += 1
            roll = self.rng.random()
        status, extra = (200, {})
        if roll < 0.10:
            status = 500
        elif roll < 0.15:
            status = 503
        elif roll < 0.20:
            status, extra = 429, {"Retry-After": "1"}
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A killed notifier resets its connection: expected here, not worth a traceback."""


def drop_all(hot: Path, count: int, invalid: float, done: threading.Event, record: dict) -> None:
    """Drop ``count`` files, as upstream does (written aside, renamed in), about 500 a second."""
    rng = random.Random(3)
    for i in range(count):
        client, body = document(i, rng)
        bad = rng.random() < invalid
        if bad:
            body = body[: len(body) // 2]                 # a truncated file: invalid JSON
        folder = hot / client
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{6000000 + i}.json"
        tmp = folder / f".{name}.part"
        tmp.write_bytes(body)
        os.replace(tmp, folder / name)
        record[f"{client}/{name}"] = (body, bad)
        if i % 50 == 49:
            time.sleep(0.1)
    done.set()


def killer(pipeline: Pipeline, every: float, stop: threading.Event, kills: Counter) -> None:
    rng = random.Random(5)
    while not stop.wait(every):
        name = rng.choice(PROGRAMS)
        # Only a RUNNING program (past supervisord's startsecs): killing one that is still starting
        # counts as a failed start, and three of those leave it FATAL, as they should.
        if " RUNNING " not in pipeline.ctl("status", name):
            continue
        pid = pipeline.ctl("pid", name).strip()
        if pid.isdigit() and pid != "0":
            try:
                os.kill(int(pid), signal.SIGKILL)
                kills[name] += 1
            except ProcessLookupError:
                pass


def quiet(pipeline: Pipeline, expected: int) -> bool:
    with pipeline.db() as conn:
        total, final = conn.execute("SELECT count(*), sum(CASE WHEN state IN ('notified', 'failed') THEN 1 ELSE 0 END) FROM jobs").fetchone()
    hot_left = any(p.suffix == ".json" for p in pipeline.config.paths.hot_folder.rglob("*"))
    return total >= expected and final == total and not hot_left


def check(pipeline: Pipeline, dropped: dict, received: Counter) -> tuple[dict, list[str]]:
    """Figures and problems: every rule of the chaos run's contract."""
    with pipeline.db() as conn:
        return _check(pipeline, conn, dropped, received)


def _check(pipeline: Pipeline, conn, dropped: dict, received: Counter) -> tuple[dict, list[str]]:
    cfg = pipeline.config
    problems: list[str] = []
    jobs = conn.execute("SELECT id, uuid, state, client_folder, file_name, failed_step, last_error FROM jobs").fetchall()
    per_drop = Counter(f"{j[3]}/{j[4]}" for j in jobs)
    doubles = [k for k, n in per_drop.items() if n > 1]
    if doubles:
        problems.append(f"{len(doubles)} drops have two jobs or more, e.g. {doubles[:3]}")
    missing = [k for k in dropped if k not in per_drop]
    if missing:
        problems.append(f"{len(missing)} dropped files have no job, e.g. {missing[:3]}")
    stuck = [j for j in jobs if j[2] not in FINAL]
    if stuck:
        problems.append(f"{len(stuck)} jobs are not finished, e.g. {stuck[:3]}")
    if any(p.suffix == ".json" for p in cfg.paths.hot_folder.rglob("*")):
        problems.append("files are left in the hot folder")
    lost = wrong_places = 0
    for job_id, uuid, state, client, name, step, error in jobs:
        body, bad = dropped.get(f"{client}/{name}", (None, None))
        if body is None:
            continue
        archived = cfg.paths.store / client / name
        if bad:
            failed = list((cfg.paths.failed / client).glob(f"*_{name}"))
            if state != "failed" or step != "validate" or len(failed) != 1 or not error:
                lost += 1
                problems.append(f"invalid {client}/{name}: state {state} at {step}, {len(failed)} in FAILED")
            elif not Path(str(failed[0]) + ".error.json").exists():
                problems.append(f"invalid {client}/{name}: no .error.json beside it in FAILED")
            continue
        if not archived.exists() or archived.read_bytes() != body:
            lost += 1
            problems.append(f"{client}/{name}: not in the archive as dropped")
            continue
        details = json.loads(body)["JobSpecification"]["JobDetails"]
        expected = {d.folder for d in rules.destinations(
            cfg.routes, rules.Facts.plain(details["ClientCode"], details["JobCategory"]))}
        for route in cfg.routes:
            present = (route.to / name).exists()
            if present != (route.to in expected):
                wrong_places += 1
                problems.append(f"{client}/{name}: {'in' if present else 'missing from'} {route.to}")
            elif present and (route.to / name).read_bytes() != body:
                wrong_places += 1
                problems.append(f"{client}/{name}: the copy in {route.to} differs")
        if state != "notified":
            problems.append(f"{client}/{name}: {state} at {step} ({error}) instead of notified")
        elif received[uuid] == 0:
            problems.append(f"{client}/{name}: notified, but the API never received its key")
    history = defaultdict(list)
    for job_id, from_state, to_state in conn.execute(
            "SELECT job_id, from_state, to_state FROM job_events ORDER BY job_id, id"):
        history[job_id].append((from_state, to_state))
    illegal = 0
    for job_id, events in history.items():
        previous = None
        for from_state, to_state in events:
            if from_state != previous or (from_state, to_state) not in TRANSITIONS:
                illegal += 1
                problems.append(f"job {job_id}: illegal history {events}")
                break
            previous = to_state
    integrity = (conn.execute("PRAGMA integrity_check").fetchone()[0]
                 if not store.is_postgres(cfg.paths.database) else "ok")      # PostgreSQL checks its own pages
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    duplicates = conn.execute("SELECT count(*) FROM (SELECT job_id, path FROM deliveries "
                              "GROUP BY job_id, path HAVING count(*) > 1) AS d").fetchone()[0]
    figures = {
        "files dropped": len(dropped),
        "invalid files dropped": sum(bad for _, bad in dropped.values()),
        "jobs": len(jobs),
        "by state": dict(Counter(j[2] for j in jobs)),
        "files lost": lost + len(missing),
        "files in a wrong place": wrong_places,
        "drops with two jobs": len(doubles),
        "jobs stuck": len(stuck),
        "illegal histories": illegal,
        "duplicate deliveries": duplicates,
        "API posts": sum(received.values()),
        "API posts repeating a key (retries after 5xx/429 or a kill; the receiver dedups by Idempotency-Key)": sum(n - 1 for n in received.values() if n > 1),
        "integrity_check": integrity,
    }
    return figures, problems


def main() -> int:
    argp = argparse.ArgumentParser(prog="tools/chaos", description=__doc__.splitlines()[0])
    argp.add_argument("--files", type=int, default=5000)
    argp.add_argument("--kill-every", type=float, default=0.5, help="seconds between kills")
    argp.add_argument("--invalid", type=float, default=0.02, help="share of invalid files")
    argp.add_argument("--timeout", type=float, default=600, help="seconds to wait for quiescence")
    argp.add_argument("--database", metavar="URL", help="a PostgreSQL database to run on (a fresh schema in it); "
                                                        "default: a SQLite file in the run's folder")
    args = argp.parse_args()
    schema = PostgresSchema(args.database) if args.database else None
    try:
        return run(args, schema.url if schema else "pipeline.db")
    finally:
        if schema:
            schema.drop()


def run(args, database: str) -> int:

    server = QuietServer(("127.0.0.1", 0), FlakyApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/jobs"
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = Pipeline(Path(tmp), "[detect]\nmin_file_age = 0.3\nscan_interval = 5\n"
                                       "[router]\nlease = 5\n"
                                       f'[api]\nendpoint = "{endpoint}"\nbackoff_cap = 2\nmax_attempts = 30\n'
                                       "timeout = 5\n", database=database)
        dropped: dict = {}
        kills: Counter = Counter()
        dropping_done, stop_killing = threading.Event(), threading.Event()
        started = time.monotonic()
        pipeline.start()
        try:
            pipeline.wait_running()
            threading.Thread(target=drop_all, args=(pipeline.config.paths.hot_folder, args.files, args.invalid,
                                                    dropping_done, dropped), daemon=True).start()
            chaos = threading.Thread(target=killer, args=(pipeline, args.kill_every, stop_killing, kills), daemon=True)
            chaos.start()
            dropping_done.wait()
            time.sleep(2)                                   # keep killing while the last files flow
            stop_killing.set()
            chaos.join()
            deadline = time.monotonic() + args.timeout
            while not quiet(pipeline, len(dropped)) and time.monotonic() < deadline:
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            figures, problems = check(pipeline, dropped, FlakyApi.received)
        finally:
            pipeline.stop()
            server.shutdown()
    figures["SIGKILLs"] = dict(kills)
    figures["seconds"] = round(elapsed, 1)
    for key, value in figures.items():
        print(f"{key}: {value}")
    for problem in problems[:30]:
        print(f"PROBLEM: {problem}")
    print("chaos: PASSED, nothing lost" if not problems else f"chaos: FAILED, {len(problems)} problems")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
