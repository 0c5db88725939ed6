"""Time the dashboard's round-3 pages (the overview, /destinations, /clients, /waiting) on a big job table.

    .venv/bin/python tools/dashboard_bench.py [--jobs 1000000] [--rounds 5] [--database URL]

The table is tools/bench.py's: ``--jobs`` finished jobs over the last 90 days (one every 7.7 s,
about 11,000 a day) with their audit rows and a delivery each to "Dest", plus 300 jobs waiting on
"Dest"'s place and 100 failed at routing today. The configuration routes to "Dest" and four more
destinations and expects two clients, one of them silent. Pages go through the WSGI application
as waitress serves it, without the socket. The overview's first request is timed once in an
application on a table whose ended days no program has kept yet (it measures and keeps them, as
a dashboard's first start on a restored table would), then each page's first request in a fresh
application (the ordinary start: days kept), then the median of ``--rounds`` more.
``--database postgresql://...``: the same on PostgreSQL, in a schema of its own dropped afterwards
(password from libpq's environment, PGPASSWORD).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import fill_dialect, fill_finished, run_script  # noqa: E402
from workload import ROUTES, PostgresSchema, write_config  # noqa: E402
from pipeline import config as config_module, store  # noqa: E402
from pipeline.web.app import create_app  # noqa: E402

PAGES = ("/", "/destinations", "/clients", "/waiting")
EXTRA = """
[[route]]
name = "Dest"
to = "dest/Dest"

[[expect]]
clients = ["C1", "SILENT"]
within = 600
"""


def add_waiting_and_failed(database, waiting: int, failed: int) -> None:
    """Jobs waiting on Dest's place (as the router leaves them) and jobs failed at routing today."""
    now = time.time()
    sql = fill_dialect(database, waiting + failed)
    run_script(database, f"""
        {sql["numbers"]}
        INSERT INTO jobs (uuid, state, source_path, client_folder, file_name, size, mtime_ns, ctime_ns,
                          device, inode, detected_by, detected_at, archived_at, updated_at, next_attempt_at,
                          attempts, last_error, failed_at, failed_step)
        SELECT {sql["hex16"]}, CASE WHEN i <= {waiting} THEN 'archived' ELSE 'failed' END,
               '/hot/C' || (i % 9) || '/w' || i || '.json', 'C' || (i % 9), 'w' || i || '.json', 2000,
               ({now} - i) * 1e9, ({now} - i) * 1e9, 1, 90000000 + i, 'realtime', {now} - i, {now} - i + 0.01,
               {now}, {now} + 60, 3,
               CASE WHEN i <= {waiting} THEN 'Dest: No such file or directory (/dest/Dest)'
                    ELSE 'Dest: Permission denied (/dest/Dest)' END,
               CASE WHEN i <= {waiting} THEN NULL ELSE {now} - i END,
               CASE WHEN i <= {waiting} THEN NULL ELSE 'route' END
        FROM n""")


def timed(client, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    status = client.get(url).status_code
    return (time.perf_counter() - t0) * 1000, status


def pages(config, rounds: int) -> None:
    """The table above, on the database of ``config`` (built and filled already)."""
    db = store.connect(config.paths.database)
    try:
        cold, _ = timed(create_app(config, db).test_client(), "/")
        print(f"{'/ (days not kept)':<18} {cold:9.0f}")
        client = create_app(config, db).test_client()
        print(f"{'page':<18} {'first':>9} {'median':>9}  (ms, {rounds} rounds)")
        for url in PAGES:
            first, status = timed(client, url)
            times = [timed(client, url)[0] for _ in range(rounds)]
            print(f"{url:<18} {first:9.0f} {statistics.median(times):9.0f}" + (f"  HTTP {status}" if status != 200 else ""))
    finally:
        db.close()


def main() -> None:
    argp = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    argp.add_argument("--jobs", type=int, default=1_000_000, help="finished jobs in the table (default 1,000,000)")
    argp.add_argument("--rounds", type=int, default=5, help="timed requests per page after the first (default 5)")
    argp.add_argument("--database", metavar="URL",
                      help="a PostgreSQL database (postgresql://user@host/db) instead of a SQLite file")
    args = argp.parse_args()
    schema = PostgresSchema(args.database) if args.database else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = config_module.load(write_config(Path(tmp), routes=ROUTES + EXTRA,
                                                     database=schema.url if schema else "pipeline.db"))
            store.connect(config.paths.database).close()        # the schema
            t0 = time.perf_counter()
            fill_finished(config.paths.database, args.jobs)
            add_waiting_and_failed(config.paths.database, 300, 100)
            print(f"table: {args.jobs:,} finished jobs + 400 waiting or failed "
                  f"({'PostgreSQL' if schema else 'SQLite'}), built in {time.perf_counter() - t0:.0f} s")
            pages(config, args.rounds)
    finally:
        if schema:
            schema.drop()


if __name__ == "__main__":
    main()
