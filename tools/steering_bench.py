"""Steering's costs and delays (docs/design.md#steering), measured with the real programs; prints figures.

    .venv/bin/python tools/steering_bench.py [--files N] [--rounds R] [--against REF]

1. backlog: ``bin/scanner --once`` then ``bin/router --once`` on N files, with the pauses table present
   and nothing paused, against the same run of REF's code (a git worktree of this repository, made
   under a temporary folder, run with this venv): rounds alternate, and the median of each is kept.
2. redelivery: every one of those N routed jobs re-delivered (``redelivery.request``), carried out by
   ``bin/router --once``, against the backlog's rate on the same files.
3. pause and resume to effect on a running ``bin/router``: resume of all routing to the first job
   routed, and pause of all routing during a backlog to the last job routed (the batch in flight).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import drop, write_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline import redelivery, steering, store  # noqa: E402


def site(root: Path, n: int) -> dict:
    """A site with N aged files in its hot folder; the environment that names its config."""
    config = write_config(root, "[detect]\nmin_file_age = 0.2\n")
    rng = random.Random(1)
    old = time.time() - 10
    for i in range(n):
        os.utime(drop(root / "hot", i, rng), (old, old))
    return dict(os.environ, PIPELINE_CONFIG=str(config))


def program(code: Path, name: str, env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", f"pipeline.{name}", *args], env=dict(env, PYTHONPATH=str(code)),
                   check=True, stderr=subprocess.DEVNULL, cwd=code)


def backlog(code: Path, n: int) -> tuple[float, Path, dict, tempfile.TemporaryDirectory]:
    """files/s of one router on N files with ``code``; the site is kept for what follows."""
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    env = site(root, n)
    program(code, "scanner", env, "--once")
    t0 = time.perf_counter()
    program(code, "router", env, "--once")
    return n / (time.perf_counter() - t0), root, env, tmp


def redeliver_all(root: Path, env: dict, n: int) -> float:
    """Re-deliveries/s of one router carrying out a request for every routed job of the site."""
    db = store.connect(root / "pipeline.db")
    try:
        ids = [row[0] for row in db.run_sql("SELECT id FROM jobs WHERE state = 'routed'").fetchall()]
        jobs = [redelivery.finished_job(db, i) for i in ids]
        redelivery.request(db, "bench@host", jobs, None, False, time.time())
    finally:
        db.close()
    t0 = time.perf_counter()
    program(ROOT, "router", env, "--once")
    seconds = time.perf_counter() - t0
    db = store.connect(root / "pipeline.db")
    try:
        left = db.run_sql("SELECT count(*) FROM redeliveries WHERE state <> 'done'").fetchone()[0]
    finally:
        db.close()
    assert left == 0, f"{left} re-deliveries not done"
    return len(ids) / seconds


def effect_delays(n: int) -> tuple[float, float]:
    """(resume to the first job routed, pause to the last job routed) with a running bin/router."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = site(root, n)
        db = store.connect(root / "pipeline.db")
        ops = steering.Steering(db, "bench@host")
        ops.pause("routing", reason="bench")
        program(ROOT, "scanner", env, "--once")
        router = subprocess.Popen([sys.executable, "-m", "pipeline.router"], env=env, cwd=ROOT,
                                  stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)           # started, idle on the pause
            assert db.run_sql("SELECT count(*) FROM jobs WHERE state = 'routed'").fetchone()[0] == 0
            resumed = time.time()
            ops.resume("routing")
            while (first := db.run_sql("SELECT min(routed_at) FROM jobs").fetchone()[0]) is None:
                time.sleep(0.002)
            time.sleep(0.5)         # in full flow
            paused = ops.pause("routing").created
            time.sleep(3)
            last = db.run_sql("SELECT max(routed_at) FROM jobs").fetchone()[0]
            left = db.run_sql("SELECT count(*) FROM jobs WHERE state = 'detected'").fetchone()[0]
            assert left, "the backlog ended before the pause: give more files"
        finally:
            router.terminate()
            router.wait(30)
            db.close()
        return first - resumed, max(last - paused, 0.0)


def main() -> None:
    argp = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    argp.add_argument("--files", type=int, default=5000)
    argp.add_argument("--rounds", type=int, default=3)
    argp.add_argument("--redeliver", type=int, default=10000, help="jobs re-delivered (0: skip)")
    argp.add_argument("--against", default="main", help="the git ref the backlog is compared with")
    args = argp.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "against"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.against],
                       check=True, capture_output=True)
        try:
            ours, theirs = [], []
            for _ in range(args.rounds):
                for code, rates in ((other, theirs), (ROOT, ours)):
                    rate, _, _, site_tmp = backlog(code, args.files)
                    site_tmp.cleanup()
                    rates.append(rate)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=True)
    print(f"backlog {args.files} files, one router, median of {args.rounds}: {args.against} "
          f"{statistics.median(theirs):.0f} files/s, this branch {statistics.median(ours):.0f} files/s "
          f"(pauses table present, nothing paused): ratio {statistics.median(ours) / statistics.median(theirs):.3f}")

    if args.redeliver:
        rate, root, env, site_tmp = backlog(ROOT, args.redeliver)
        try:
            again = redeliver_all(root, env, args.redeliver)
        finally:
            site_tmp.cleanup()
        print(f"redelivery of {args.redeliver} routed jobs: {again:.0f} jobs/s against the backlog's "
              f"{rate:.0f} files/s on the same files: ratio {again / rate:.3f}")

    resumes, pauses = zip(*(effect_delays(2000) for _ in range(args.rounds)))
    print(f"running bin/router, {args.rounds} runs: resume to the first job routed "
          f"{1000 * statistics.median(resumes):.0f} ms median, {1000 * max(resumes):.0f} ms max; pause to the "
          f"last job routed (the batch in flight) {1000 * statistics.median(pauses):.0f} ms median, "
          f"{1000 * max(pauses):.0f} ms max")


if __name__ == "__main__":
    main()
