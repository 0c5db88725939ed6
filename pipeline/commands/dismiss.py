"""``bin/dismiss``: close failed or held jobs a person has dealt with (docs/design.md#steering).
Their files are left as they are; the reason and the actor go to the audit trail."""

from __future__ import annotations

from .. import cli, steering
from ..requeue import jobs_in, utc_time
from ..states import STEPS
from ..store.models import bind


def main(argv: list[str] | None = None) -> int:
    argp = cli.steering_parser("dismiss", "Close failed or held jobs a person has dealt with (final state "
                                          "dismissed); files are left as they are.")
    which = argp.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", metavar="N", type=int, action="append", dest="ids", help="this job (repeat for several)")
    which.add_argument("--failed", action="store_true", help="failed jobs (all, or those the filters choose)")
    which.add_argument("--held", action="store_true", help="held jobs (all, or those the filters choose)")
    argp.add_argument("--client", metavar="C", help="only this client folder (case-insensitive)")
    argp.add_argument("--step", choices=STEPS, help="only jobs that failed at this step")
    argp.add_argument("--since", metavar="T", type=utc_time,
                      help="only jobs that failed (were held) at or after T (ISO date or date and time, UTC)")
    argp.add_argument("--reason", metavar="TEXT", required=True, help="why they are closed (required)")
    argp.add_argument("--dry-run", action="store_true", help="print what would be done and change nothing")
    args = argp.parse_args(argv)
    if args.ids and (args.client or args.step or args.since is not None):
        argp.error("--client, --step and --since choose among --failed or --held jobs, not with --id")

    def act(config, steer: steering.Steering) -> int:
        bind(steer.db)
        ids = args.ids or [job.id for job in jobs_in(("failed",) if args.failed else ("held",),
                                                      client=args.client, step=args.step, since=args.since)]
        chosen = steer.dismiss(ids, args.reason, dry_run=args.dry_run)
        cli.print_moved(chosen, "dismissed", lambda job: "dismissed", args.dry_run)
        return cli.EXIT_OK

    return cli.steer("dismiss", args, act)


if __name__ == "__main__":
    raise SystemExit(main())
