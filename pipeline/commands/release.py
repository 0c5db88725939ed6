"""``bin/release``: send held jobs on where they stopped (docs/design.md#steering)."""

from __future__ import annotations

from .. import cli, steering
from ..requeue import jobs_in
from ..store.models import bind


def main(argv: list[str] | None = None) -> int:
    argp = cli.steering_parser("release", "Send held jobs on where they stopped.")
    which = argp.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", metavar="N", type=int, action="append", dest="ids", help="this job (repeat for several)")
    which.add_argument("--client", metavar="C", help="every held job of this client folder (case-insensitive)")
    which.add_argument("--all", action="store_true", help="every held job")
    argp.add_argument("--reason", metavar="TEXT", help="why, for the audit trail")
    argp.add_argument("--dry-run", action="store_true", help="print what would be done and change nothing")
    args = argp.parse_args(argv)

    def act(config, steer: steering.Steering) -> int:
        bind(steer.db)
        ids = args.ids or [job.id for job in jobs_in(("held",), client=args.client)]
        chosen = steer.release(ids, args.reason, dry_run=args.dry_run)
        cli.print_moved(chosen, "released", lambda job: job.released_to, args.dry_run)
        return cli.EXIT_OK

    return cli.steer("release", args, act)


if __name__ == "__main__":
    raise SystemExit(main())
