"""Remote destinations: each protocol's delivery rate against a plain loop, and the latency a
remote copy adds to a job (docs/design.md#remote-destinations).

    tools/remote-bench [--n 400] [--connections 4] [--kinds sftp,s3,smb] [--rounds 20]

For each protocol a real server runs on 127.0.0.1 (tests/helpers/remote_servers.py: OpenSSH's
sshd, Samba's smbd, moto's S3 server, an emulator, not AWS). Then:

* pipeline: N job files are scanned (not timed), then routed by the router (in this process, a
  real SQLite file, fsync on) with one rule sending every job to the remote; rate = N / time;
* N routers (--routers, default 2 as supervised): the same with that many router processes, each
  holding its share of the connections, so the remote sees as many as the plain loop makes;
* plain loop: the same N uploads with the same library and as many connections, one thread per
  connection, each copy made as the router makes it (temporary name, fsync, rename; S3: one put
  with its checksum), with no database and no archive; rate = N / time;
* naive loop, for information: the same library writing each file straight to its name (no
  temporary, no fsync, no checksum), what a script without the guarantees does;
* archive only: the same N jobs routed nowhere but the archive, the router's own pace on this
  machine (a bound for the pipeline's rate whatever the remote);
* latency: one job at a time, the router's time for a job with a remote copy less the time for
  a job archived only (median of --rounds), beside one bare upload.

Prints the figures; BENCHMARKS.md records them with the command.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))
from helpers.remote_servers import S3Emulator, Smbd, Sshd, SMB_PASSWORD  # noqa: E402
from pipeline import config as config_module, store  # noqa: E402
from pipeline.jobs import Jobs  # noqa: E402
from pipeline.remote import urls  # noqa: E402
from pipeline.remote.delivery import _connect  # noqa: E402
from pipeline.router import Router  # noqa: E402
from pipeline.scanner import Scanner  # noqa: E402
from pipeline.store.models import bind  # noqa: E402
from workload import document, write_config  # noqa: E402


class Remote:
    """A server, the route and [[remote]] table reaching it, and its remote's settings."""

    def __init__(self, kind: str, root: Path, connections: int):
        self.kind = kind
        if kind == "sftp":
            self.server = Sshd(root / "sshd", log_requests=False)
            self.to = self.server.url(root / "partner")
            self.table = lambda count: self.server.remote(connections=count)
        elif kind == "smb":
            self.server = Smbd(root / "smbd", root / "share")
            self.to = self.server.url("/in")
            self.table = lambda count: self.server.remote(connections=count)
        else:
            self.server = S3Emulator(process=True)
            bucket = f"bench-{random.randrange(1 << 30):x}"
            self.server.client().create_bucket(Bucket=bucket)
            self.to = f"s3://{bucket}/in"
            self.table = lambda count: self.server.remote(bucket, connections=count)
        self.connections = connections
        self.config = None

    def routes(self, folder: str, connections: int | None = None) -> str:
        """The route to ``folder`` on the remote, each router holding ``connections`` (default:
        all of them)."""
        table = self.table(connections or self.connections)
        return f'[[route]]\nname = "Remote"\nto = "{self.to}/{folder}"\n{table}'


def tree(root: Path, routes: str, files: int, seed: int) -> tuple[Router, Jobs]:
    """A pipeline in ``root`` with ``files`` job files scanned; its router, not yet run."""
    root.mkdir(parents=True)
    config = config_module.load(write_config(root, routes=routes))
    rng = random.Random(seed)
    for i in range(files):
        _drop(config.paths.hot_folder, i, rng)
    db = store.connect(config.paths.database)
    bind(db)
    jobs = Jobs(db, "bench:1")
    Scanner(config, jobs).scan("startup", "startup")
    return Router(config, jobs), jobs


def _drop(hot: Path, i: int, rng: random.Random) -> None:
    client, body = document(i, rng)
    (hot / client).mkdir(parents=True, exist_ok=True)
    path = hot / client / f"{5900000 + i}.json"
    path.write_bytes(body)
    old = time.time() - 60                      # settled: taken by the scan at once
    import os
    os.utime(path, (old, old))


def pipeline_rate(remote: Remote | None, root: Path, n: int, connections: int) -> float:
    """Jobs a second, its connections open already (as the plain loop's are, and as a running
    router's are after its first batch). Without ``remote``: archived only, the router's own pace."""
    routes = remote.routes("pipeline") if remote else ""
    router, jobs = tree(root / ("pipeline" if remote else "archive-only"), routes, 2 * connections, seed=1)
    _route_all(router)
    rng = random.Random(11)
    for i in range(2 * connections, 2 * connections + n):
        _drop(router.config.paths.hot_folder, i, rng)
    Scanner(router.config, jobs).scan("periodic", "periodic")
    started = time.perf_counter()
    _route_all(router)
    elapsed = time.perf_counter() - started
    router.finish()
    return n / elapsed


def routers_rate(remote: Remote, root: Path, n: int, connections: int, routers: int) -> float:
    """Jobs a second with ``routers`` router processes (a supervised pipeline runs 2) sharing the
    connections: each has ``connections // routers`` of them, so the remote sees as many as the
    plain loop makes. Each router opens its connections during the run (about one SSH or SMB
    handshake per connection: the figure is a little below a running router's)."""
    routes = remote.routes("routers", max(connections // routers, 1))
    router, jobs = tree(root / "routers", routes, 2 * connections, seed=1)
    _route_all(router)                  # the folder made, as in pipeline_rate
    router.finish()
    rng = random.Random(11)
    for i in range(2 * connections, 2 * connections + n):
        _drop(router.config.paths.hot_folder, i, rng)
    Scanner(router.config, jobs).scan("periodic", "periodic")
    config, forked = router.config, multiprocessing.get_context("fork")
    ready, go = forked.Barrier(routers + 1), forked.Event()

    def route(number: int) -> None:
        db = store.connect(config.paths.database)
        bind(db)
        own = Router(config, Jobs(db, f"bench:{number}"))
        ready.wait()
        go.wait()
        _route_all(own)
        own.finish()

    processes = [forked.Process(target=route, args=(k + 2,)) for k in range(routers)]
    for p in processes:
        p.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    for p in processes:
        p.join()
    elapsed = time.perf_counter() - started
    routed = jobs.db.run_sql("SELECT count(*) FROM jobs WHERE state = 'routed'").fetchone()[0]
    if routed != n + 2 * connections:
        raise SystemExit(f"{routers} routers routed {routed} of {n + 2 * connections} jobs")
    return n / elapsed


def _route_all(router: Router) -> None:
    """Batches until none is left, as a running router does (run(once=True) would also close
    the router's connections at its end)."""
    while router.run_batch():
        pass


def loop_rate(remote: Remote, n: int, connections: int, folder: str, naive: bool) -> float:
    """The same uploads with the same library, ``connections`` threads, no pipeline around them."""
    where, path = urls.split(remote.to)
    config = config_module.parse({"remote": _tables(remote)}, base=Path.cwd())
    settings = urls.settings_for(where, config.remotes)
    rng = random.Random(2)
    bodies = [document(i, rng)[1] for i in range(n)]
    conns = [_connect(where, settings, True, 0o775) for _ in range(connections)]
    target = f"{path}/{folder}"
    conns[0].put(target, "warm", b"{}", hashlib.sha256(b"{}").hexdigest(), True)   # the folder made

    def work(k: int) -> None:
        conn = conns[k]
        for i in range(k, n, connections):
            name = f"{5900000 + i}.json"
            if naive:
                _naive(remote.kind, conn, target, name, bodies[i])
            else:
                conn.put(target, name, bodies[i], hashlib.sha256(bodies[i]).hexdigest(), True)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return n / elapsed


def _naive(kind: str, conn, folder: str, name: str, body: bytes) -> None:
    if kind == "sftp":
        with conn.sftp.open(f"{folder}/{name}", "wb") as f:
            f.write(body)
    elif kind == "s3":
        conn.s3.put_object(Bucket=conn.where.host, Key=f"{folder.strip('/')}/{name}", Body=body)
    else:
        import smbclient
        with smbclient.open_file(conn._unc(f"{folder}/{name}"), mode="wb", **conn.options) as f:
            f.write(body)


def _tables(remote: Remote) -> list[dict]:
    import tomllib
    return tomllib.loads(remote.table(remote.connections))["remote"]


def latency(remote: Remote, root: Path, rounds: int) -> tuple[float, float]:
    """Median ms a job takes the router with a remote copy, less archived only; and a bare upload."""
    times = {}
    for kind, routes in (("remote", remote.routes("latency")), ("archive only", "")):
        router, jobs = tree(root / f"latency-{kind.replace(' ', '-')}", routes, 0, seed=3)
        hot, rng, taken = router.config.paths.hot_folder, random.Random(4), []
        for i in range(rounds + 1):
            _drop(hot, i, rng)
            Scanner(router.config, jobs).scan("periodic", "periodic")
            started = time.perf_counter()
            _route_all(router)
            taken.append(time.perf_counter() - started)
        router.finish()
        times[kind] = statistics.median(taken[1:]) * 1000       # the first opens the connection
    where, path = urls.split(remote.to)
    config = config_module.parse({"remote": _tables(remote)}, base=Path.cwd())
    conn = _connect(where, urls.settings_for(where, config.remotes), True, 0o775)
    body = document(0, random.Random(5))[1]
    bare = []
    for i in range(rounds + 1):
        started = time.perf_counter()
        conn.put(f"{path}/bare", f"{i}.json", body, hashlib.sha256(body).hexdigest(), True)
        bare.append(time.perf_counter() - started)
    conn.close()
    return times["remote"] - times["archive only"], statistics.median(bare[1:]) * 1000


def main() -> int:
    argp = argparse.ArgumentParser(prog="tools/remote-bench", description=__doc__.splitlines()[0])
    argp.add_argument("--n", type=int, default=400, help="job files per run (default 400)")
    argp.add_argument("--connections", type=int, default=4, help="max_connections of each remote (default 4)")
    argp.add_argument("--kinds", default="sftp,s3,smb", help="protocols to measure (default sftp,s3,smb)")
    argp.add_argument("--rounds", type=int, default=20, help="single jobs for the latency (default 20)")
    argp.add_argument("--routers", type=int, default=2,
                      help="router processes for the second pipeline figure, sharing the connections (default 2)")
    args = argp.parse_args()
    import os
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "emulator")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "emulator")
    os.environ.setdefault("SMB_TEST_PASSWORD", SMB_PASSWORD)
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        own = pipeline_rate(None, Path(tmp), args.n, args.connections)
    print(f"archive only (no remote copy): {own:.0f} jobs/s")
    print(f"{'protocol':<8}{'pipeline/s':>12}{'plain loop/s':>14}{'ratio':>8}"
          f"{f'{args.routers} routers/s':>14}{'ratio':>8}{'naive loop/s':>14}{'added ms/job':>14}{'upload ms':>11}")
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory(prefix=f"remote-bench-{kind}-") as tmp:
            remote = Remote(kind, Path(tmp), args.connections)
            try:
                plain = loop_rate(remote, args.n, args.connections, "plain", naive=False)
                piped = pipeline_rate(remote, Path(tmp), args.n, args.connections)
                shared = routers_rate(remote, Path(tmp), args.n, args.connections, args.routers)
                naive = loop_rate(remote, args.n, args.connections, "naive", naive=True)
                added, bare = latency(remote, Path(tmp), args.rounds)
            finally:
                remote.server.stop()
        print(f"{kind:<8}{piped:>12.0f}{plain:>14.0f}{piped / plain:>8.2f}{shared:>14.0f}{shared / plain:>8.2f}"
              f"{naive:>14.0f}{added:>14.1f}{bare:>11.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
