"""``bin/redeliver``: copy finished jobs again from their archive copy (docs/design.md#steering).
The command checks each job and records a request; the routers carry the requests out."""

from __future__ import annotations

import sys

from .. import cli, command, redelivery, steering
from ..requeue import jobs_in, utc_time
from ..store.models import bind


def main(argv: list[str] | None = None) -> int:
    argp = cli.steering_parser("redeliver", "Copy finished jobs (routed or notified) again from their archive "
                                            "copy, to every destination their rules choose or to one.")
    which = argp.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", metavar="N", type=int, action="append", dest="ids", help="this job (repeat for several)")
    which.add_argument("--client", metavar="C", help="the finished jobs of this client folder (case-insensitive)")
    argp.add_argument("--since", metavar="T", type=utc_time, help="only jobs routed at or after T (ISO, UTC)")
    argp.add_argument("--until", metavar="T", type=utc_time, help="only jobs routed before T (ISO, UTC)")
    argp.add_argument("--destination", "--to", metavar="NAME", dest="only",
                      help="only to this [[route]] name (default: every destination its rules choose)")
    argp.add_argument("--notify", action="store_true", help="POST it again too, with a fresh Idempotency-Key")
    argp.add_argument("--dry-run", action="store_true", help="print each job and the paths it would write")
    args = argp.parse_args(argv)

    def act(config, steer: steering.Steering) -> int:
        if args.only is not None and args.only not in {r.name for r in config.routes}:
            raise steering.Refused(f"--destination: no [[route]] is named {args.only!r}", steering.EX_USAGE)
        if args.notify and not config.api.endpoint:
            raise steering.Refused("--notify: no api.endpoint is configured", steering.EX_USAGE)
        bind(steer.db)
        ids = args.ids or [j.id for j in jobs_in(("routed", "notified"), client=args.client)
                           if (args.since is None or j.routed_at >= args.since)
                           and (args.until is None or j.routed_at < args.until)]
        chosen, refused = [], 0
        for job_id in ids:
            try:
                job, targets = redelivery.plan(steer.db, config, job_id, args.only)
            except steering.Refused as e:
                print(f"{command('redeliver')}: {e}", file=sys.stderr)
                refused += 1
                continue
            chosen.append(job)
            if args.dry_run:
                print(f"{job.label}: " + (", ".join(str(t.path) for t in targets) or "no destination"))
        if not args.dry_run and chosen:
            redelivery.request(steer.db, steer.actor, chosen, args.only, args.notify, steer.clock())
        if not chosen and not args.dry_run and refused:
            return steering.EX_DATAERR          # said on stderr, one line a job; nothing recorded
        print(f"{'would request' if args.dry_run else 'requested'} {len(chosen)} re-delivery(ies)"
              + (f", {refused} job(s) refused" if refused else "")
              + (" (dry run: nothing changed)" if args.dry_run else "; the routers carry them out"))
        return steering.EX_DATAERR if refused else cli.EXIT_OK

    return cli.steer("redeliver", args, act)


if __name__ == "__main__":
    raise SystemExit(main())
