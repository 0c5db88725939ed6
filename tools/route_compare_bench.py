"""Time ``bin/route --compare`` on a big week: N routed jobs (100,000 by default) and their deliveries.

    .venv/bin/python tools/route_compare_bench.py [--jobs 100000] [--rounds 3] [--keep DIR]

The jobs are written straight into a fresh SQLite database (the schema the programs apply), spread
over the last six days with the seeds' client mix, each with the deliveries the seeds' routing
matrix gives it (``rules.destinations``, as the router decides): what the pipeline would have left.
The candidate file moves one rule, removes one and adds one. The figure is the whole command, its
Python start included, as an operator runs it (best and median of the rounds).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline import config as config_module, rules, store  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
from report_bench import CLIENTS, CONFIG  # noqa: E402  (the seeds' clients and routing matrix)

# Against CONFIG: "Monday Rank" moved, "BISSELL-WRIKE/IN" removed, "ACME" added.
CANDIDATE = (CONFIG.replace('to = "/data/PRODUCTION/SYNC/MAKE/Monday Rank"', 'to = "/data/PRODUCTION/SYNC/MAKE/Rank 2"')
             .replace('[[route]]\nname = "BISSELL-WRIKE/IN"\nclients = ["BISSELL"]\n'
                      'to = "/data/PRODUCTION/CLIENT-STORES/BISSELL-WRIKE/IN"\n', "")
             + '[[route]]\nname = "ACME"\nclients = ["ACME"]\nto = "/data/PRODUCTION/CLIENT-STORES/ACME/IN"\n')

_SQL_JOB = """INSERT INTO jobs (id, uuid, state, source_path, client_folder, file_name, size, mtime_ns, ctime_ns,
device, inode, sha256, client_code, job_category, studio_code, title, detected_by, detected_at, archived_at,
routed_at, updated_at, next_attempt_at, archive_path) VALUES (?, ?, 'routed', ?, ?, ?, 2000, 0, 0, 1, ?, ?, ?, ?, ?,
?, 'realtime', ?, ?, ?, ?, ?, ?)"""
_SQL_DELIVERY = "INSERT INTO deliveries (job_id, name, path, action, delivered_at) VALUES (?, ?, ?, 'written', ?)"


def build(folder: Path, n: int) -> Path:
    """The database and the two files in ``folder``; returns the candidate's path."""
    (folder / "pipeline.toml").write_text(CONFIG)
    (folder / "candidate.toml").write_text(CANDIDATE)
    config = config_module.load(folder / "pipeline.toml")
    db = store.connect(config.paths.database)
    rng = random.Random(29)
    weights = [w for _, w, _ in CLIENTS]
    now = time.time()
    jobs, deliveries = [], []
    for i in range(1, n + 1):
        client, _, categories = rng.choices(CLIENTS, weights)[0]
        category = rng.choices(list(categories), list(categories.values()))[0]
        name, at = f"job{i:07d}.json", now - rng.uniform(60, 6 * 86400)
        jobs.append((i, str(uuid.UUID(int=i)), f"/data/PRODUCTION/JSON/{client}/{name}", client, name, i, f"{i:064x}",
                     client, category, f"{client}_STUDIO", "a title", at, at + 0.1, at + 0.2, at + 0.2, at + 0.2,
                     str(config.paths.store / client / name)))
        for d in rules.destinations(config.routes, rules.Facts.plain(client, category, name)):
            deliveries.append((i, d.name, str(d.path), at + 0.2))
    with db.write():
        for start in range(0, len(jobs), 5000):
            db.connection().executemany(_SQL_JOB, jobs[start:start + 5000])
        db.connection().executemany(_SQL_DELIVERY, deliveries)
    db.close()
    print(f"{n:,} routed jobs, {len(deliveries):,} deliveries in {config.paths.database}")
    return folder / "candidate.toml"


def main() -> int:
    argp = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    argp.add_argument("--jobs", type=int, default=100_000)
    argp.add_argument("--rounds", type=int, default=3)
    argp.add_argument("--keep", metavar="DIR", help="build in DIR and leave it there")
    args = argp.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="route-compare-"))
    folder.mkdir(parents=True, exist_ok=True)
    candidate = build(folder, args.jobs)
    command = [str(ROOT / "bin" / "route"), "--config", str(folder / "pipeline.toml"), "--compare", str(candidate),
               "--since", "7d"]
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
    print(done.stdout.rstrip())
    print(f"route --compare on {args.jobs:,} jobs: best {min(times):.2f} s, median {statistics.median(times):.2f} s "
          f"of {args.rounds} rounds (target: under 10 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
