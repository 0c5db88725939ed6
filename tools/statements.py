"""Statements the router sends the database per routed file: on PostgreSQL each is a round trip.

    .venv/bin/python tools/statements.py [N] [--database URL]

Routes a pre-scanned backlog of N files (default 500; the seeds' matrix, tools/workload.py) with the
router's ``--once`` run in this process, counting every statement it hands the driver (peewee's
``execute_sql``, transaction control included: BEGIN, SAVEPOINT, RELEASE, COMMIT), and prints them
per routed file, with the statements on job_events and deliveries apart. ``--database``: a
PostgreSQL URL (a fresh schema there, dropped afterwards); default a SQLite file.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peewee

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from workload import PostgresSchema, drop, write_config  # noqa: E402

from pipeline import router, store  # noqa: E402


def count_statements(run) -> collections.Counter:
    """What ``run()`` hands the driver: statements by their first words, and commits."""
    counts: collections.Counter = collections.Counter()
    execute_sql, commit = peewee.Database.execute_sql, peewee.Database.commit

    def counted_sql(db, sql, params=None, *args, **kwargs):
        words = sql.split()
        counts[" ".join(words[:3]) if words and words[0].upper() == "INSERT" else words[0].upper()] += 1
        return execute_sql(db, sql, params, *args, **kwargs)

    def counted_commit(db):
        counts["COMMIT"] += 1
        return commit(db)

    peewee.Database.execute_sql, peewee.Database.commit = counted_sql, counted_commit
    try:
        run()
    finally:
        peewee.Database.execute_sql, peewee.Database.commit = execute_sql, commit
    return counts


def routed_backlog(n: int, database: str) -> tuple[int, collections.Counter]:
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root, "[detect]\nmin_file_age = 0.2\n", database=database)
        old = time.time() - 10
        for i in range(n):
            os.utime(drop(root / "hot", i, rng), (old, old))
        os.environ.update(PIPELINE_CONFIG=str(config))
        subprocess.run([sys.executable, "-m", "pipeline.scanner", "--once"], cwd=HERE.parent, check=True,
                       stderr=subprocess.DEVNULL)
        with contextlib.chdir(root):
            counts = count_statements(lambda: router.main(["--once"]))
            db = store.connect(database if store.is_postgres(database) else root / database)
            routed = db.execute_sql("SELECT count(*) FROM jobs WHERE state = 'routed'").fetchone()[0]
            db.close()
        return routed, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=500)
    parser.add_argument("--database", help="a PostgreSQL URL (default: a SQLite file)")
    args = parser.parse_args()
    schema = PostgresSchema(args.database) if args.database else None
    try:
        routed, counts = routed_backlog(args.n, schema.url if schema else "pipeline.db")
    finally:
        if schema:
            schema.drop()
    engine = "PostgreSQL" if schema else "SQLite"
    total = sum(counts.values())
    print(f"{engine}: {total / routed:.2f} statements per routed file ({total} for {routed} files)")
    for what, count in counts.most_common():
        print(f"  {count / routed:6.2f}  {what}")


if __name__ == "__main__":
    main()
