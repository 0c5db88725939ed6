"""``bin/requeue --failed``: the arguments, the loop over the chosen jobs, the summary line.
``requeue.py`` says where each job goes back and how a file returns safely."""

from __future__ import annotations

import os
import socket

from .. import cli
from ..jobs import Jobs
from ..requeue import Requeue, failed_jobs, utc_time
from ..states import STEPS
from ..store.models import bind


def main(argv: list[str] | None = None) -> int:
    argp = cli.parser("requeue", "Put failed jobs back where they failed, so that they are processed again.",
                      once=False)
    argp.add_argument("--failed", action="store_true", required=True,
                      help="requeue failed jobs (all of them, or those the options below choose)")
    argp.add_argument("--id", metavar="N", type=int, action="append", dest="ids",
                      help="only this job (repeat for several)")
    argp.add_argument("--client", metavar="C", help="only this client folder (case-insensitive)")
    argp.add_argument("--step", choices=STEPS, help="only jobs that failed at this step")
    argp.add_argument("--since", metavar="T", type=utc_time,
                      help="only jobs that failed at or after T (ISO date or date and time, UTC)")
    argp.add_argument("--dry-run", action="store_true", help="print what would be done and change nothing")
    args = argp.parse_args(argv)
    cli.setup_logging("requeue")
    config, db = cli.open_or_exit(args.config)
    try:
        bind(db)
        chosen = failed_jobs(args.ids, args.client, args.step, args.since)
        if not chosen:
            print("nothing to requeue")
            return cli.EXIT_OK
        requeue = Requeue(config, Jobs(db, f"requeue@{socket.gethostname()}:{os.getpid()}"), dry_run=args.dry_run)
        done = 0
        for job in chosen:
            ok, line = requeue.job(job)
            done += ok
            print(line)
        skipped = len(chosen) - done
        verb = "would requeue" if args.dry_run else "requeued"
        print(f"{verb} {done} of {len(chosen)} failed jobs" + (f", {skipped} skipped" if skipped else "")
              + (" (dry run: nothing changed)" if args.dry_run else ""))
    finally:
        db.close()
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
