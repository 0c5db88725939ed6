"""Time the daily report for a big day: build it in a temporary database, then compute and render it.

    .venv/bin/python tools/report_bench.py [--jobs 100000] [--other 0] [--keep DIR]

The day's jobs go through the real transitions (pipeline/jobs.py: create, claim, archived,
delivered, routed or failed) with an injected clock that places each one in the day, so the
table looks like one the pipeline wrote: a working-hours peak, the seeds' clients and routing
matrix, about 1% failures, a periodic scan every minute. ``--other N`` adds N more jobs over the
30 days before, to time the report against a bigger table (the report's target is a 1,000,000-job table). ``--keep
DIR`` builds in DIR and leaves it there with a pipeline.toml, for bin/report --preview.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import config as config_module, rules, scanner, store  # noqa: E402
from pipeline.reporting import render  # noqa: E402
from pipeline.hotfolder import Sighting  # noqa: E402
from pipeline.jobs import Archived, Jobs  # noqa: E402
from pipeline.states import ROUTE_QUEUE  # noqa: E402
from pipeline.reporting.figures import Day, figures  # noqa: E402

DAY = dt.date(2026, 2, 6)
ZONE = "Europe/London"
CHUNK = 500
NUMBERS = itertools.count(5_900_001)   # job numbers, also the fake inodes

# (client, weight, categories with weights): roughly the seed report's mix.
CLIENTS = [("RANK", 45, {"PRODUCTION": 5, "CELTRA": 1}), ("LOREAL", 15, {"CAMPAIGN": 1}),
           ("BISSELL", 10, {"ORDER": 1}), ("RECKITTBENCKISER", 8, {"SOCIAL": 5, "CELTRA": 1}),
           ("OLIVER", 6, {"CELTRA": 1, "DIGITAL": 1}), ("CIBC", 5, {"DIGITAL": 3, "CELTRA": 1}),
           ("CELTRA", 4, {"CELTRA": 1}), ("ADIDAS", 4, {"PRINT": 2, "CELTRA": 1}), ("ACME", 3, {"PRINT": 1})]

CONFIG = """
[paths]
hot_folder = "/data/PRODUCTION/JSON"
store = "store"
failed = "failed"
error_log = "log/errors"
database = "pipeline.db"

[report]
timezone = "Europe/London"

[[route]]
name = "Monday Rank"
clients = ["RANK"]
to = "/data/PRODUCTION/SYNC/MAKE/Monday Rank"
[[route]]
name = "Monday RB"
clients = ["RECKITTBENCKISER"]
to = "/data/PRODUCTION/SYNC/MAKE/Monday RB"
[[route]]
name = "BISSELL-WRIKE/IN"
clients = ["BISSELL"]
to = "/data/PRODUCTION/CLIENT-STORES/BISSELL-WRIKE/IN"
[[route]]
name = "LOREAL/IN"
clients = ["LOREAL"]
to = "/data/PRODUCTION/CLIENT-STORES/LOREAL/IN"
[[route]]
name = "Celtra"
clients = ["CELTRA"]
to = "/data/PRODUCTION/SYNC/MAKE/Celtra - Create_Rename - Project_Design File"
[[route]]
name = "Celtra"
clients = ["CIBC", "OLIVER", "ADIDAS", "PAYPAL", "RECKITTBENCKISER", "BAYER", "3M", "RANK"]
categories = ["CELTRA"]
to = "/data/PRODUCTION/SYNC/MAKE/Celtra - Create_Rename - Project_Design File"
"""

REASONS = [("validate", "missing JobSpecification.JobDetails.ClientCode"),
           ("validate", "not valid JSON: Expecting ',' delimiter at line 14 column 5"),
           ("validate", "JobSpecification.JobDetails.JobCategory is empty"),
           ("validate", "file is 61,204,113 bytes, over the limit of 52,428,800 (router.max_file_bytes)")]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drop_times(day: Day, n: int, rng: random.Random) -> list[float]:
    """``n`` drop times in the day, busiest from 09:00 to 17:00 like a studio's."""
    def weight(hour: float) -> float:
        return 0.15 + math.exp(-((hour - 13) / 3.2) ** 2)
    hours = day.hours
    weights = [weight(h) for h in range(hours)]
    chosen = rng.choices(range(hours), weights=weights, k=n)
    # Kept clear of midnight, so every job's outcome falls in the day (a periodic scan may take a minute).
    return sorted(min(day.start + 3600 * h + rng.random() * 3600, day.end - 120) for h in chosen)


def build(db, cfg, day: Day, n: int, rng: random.Random, failure_rate: float = 0.008) -> None:
    """Put ``n`` jobs through the real transitions, each at its own time in ``day``."""
    clock = Clock()
    jobs = Jobs(db, "report_bench:1", clock)
    names = [c[0] for c in CLIENTS]
    weights = [c[1] for c in CLIENTS]
    times = drop_times(day, n, rng)
    for first in range(0, n, CHUNK):
        plans = []
        with jobs.transaction():
            for drop in times[first:first + CHUNK]:
                number = next(NUMBERS)
                client = rng.choices(names, weights)[0]
                cats = CLIENTS[names.index(client)][2]
                category = rng.choices(list(cats), list(cats.values()))[0]
                st = SimpleNamespace(st_size=rng.randint(1000, 3000), st_mtime_ns=int(drop * 1e9),
                                     st_ctime_ns=int(drop * 1e9), st_dev=1, st_ino=number)
                path = f"/data/PRODUCTION/JSON/{client}/{number}.json"
                by = rng.choices(["realtime", "periodic", "startup"], [97, 2.5, 0.5])[0]
                clock.now = drop + (rng.uniform(0.003, 0.03) if by == "realtime" else rng.uniform(1, 60))
                jobs.create([Sighting(path, client, st)], by)
                plans.append((client, category, clock.now))
        clock.now = times[-1] + 3600
        batch = jobs.claim(ROUTE_QUEUE, CHUNK, 60)
        with jobs.transaction():
            for job, (client, category, detected) in zip(batch.jobs, plans):
                clock.now = detected + rng.uniform(0.002, 0.01)
                if rng.random() < failure_rate:
                    step, reason = rng.choice(REASONS)
                    jobs.failed(batch.token, job, step, reason)
                    continue
                jobs.archived(batch.token, [Archived(job.id, "0" * 64, client, category, f"{client}_STUDIO",
                                                     f"Job {job.file_name}",
                                                     f"{cfg.paths.store}/{client}/{job.file_name}")])
                clock.now += rng.uniform(0.005, 0.06)
                targets = rules.destinations(cfg.routes, rules.Facts.plain(client, category))
                jobs.delivered(batch.token, [(job.id, dest.name, str(dest.folder / job.file_name), "written")
                                             for dest in targets])
                jobs.routed(batch.token, [(job.id, "bench")])


def scans(db, day: Day, interval: float = 60) -> None:
    """A periodic scan every ``interval`` seconds, a few slow ones, and a gap of 20 minutes."""
    t = day.start + 5
    while t < day.end:
        if not (day.start + 3 * 3600 <= t < day.start + 3 * 3600 + 1200):     # a restart at 03:00
            scan_id = scanner.scan_started(db, "periodic", "scanner:1", t)
            slow = int(t) % 50_000 < 60
            scanner.scan_finished(db, scan_id, t + (35 if slow else 0.05), 0, 0, slow, False)
        t += interval


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100_000, help="jobs processed on the day (default 100000)")
    p.add_argument("--other", type=int, default=0, help="jobs on the 30 days before (default 0)")
    p.add_argument("--keep", type=Path, metavar="DIR", help="build in DIR and keep it")
    args = p.parse_args()
    rng = random.Random(6)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        (root / "pipeline.toml").write_text(CONFIG)
        cfg = config_module.load(root / "pipeline.toml")
        db = store.connect(cfg.paths.database)
        day = Day.of(DAY, ZONE)
        t0 = time.perf_counter()
        for k in range(30):
            if args.other:
                build(db, cfg, Day.of(DAY - dt.timedelta(days=30 - k), ZONE), args.other // 30, rng)
        build(db, cfg, day, args.jobs, rng)
        scans(db, day)
        total = db.execute_sql("SELECT count(*) FROM jobs").fetchone()[0]
        print(f"built {total:,} jobs ({args.jobs:,} on {DAY}) through the transitions in "
              f"{time.perf_counter() - t0:.1f}s")
        db.close()
        db = store.connect(cfg.paths.database)       # a fresh connection, as the reporter has
        t0 = time.perf_counter()
        numbers = figures(db, day, highlight=cfg.report.highlight_destination,
                          scan_interval=cfg.detect.scan_interval)
        t1 = time.perf_counter()
        rendered = render.report(numbers, cfg)
        t2 = time.perf_counter()
        db.close()
        print(f"report for {DAY}: {numbers['processed']:,} processed, {numbers['errors']:,} errors; "
              f"figures {t1 - t0:.3f}s + render {t2 - t1:.3f}s = {t2 - t0:.3f}s "
              f"(HTML {len(rendered.html):,} bytes, text {len(rendered.text):,} bytes)")
        if args.keep:
            print(f"kept in {root}: bin/report --config {root / 'pipeline.toml'} --date {DAY} --preview report.html")


if __name__ == "__main__":
    main()
