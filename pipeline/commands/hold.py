"""``bin/hold --id N``: hold a job that is not yet routed, for a person (docs/design.md#steering)."""

from __future__ import annotations

from .. import cli, steering


def main(argv: list[str] | None = None) -> int:
    argp = cli.steering_parser("hold", "Hold jobs not yet routed: they wait, held, until bin/release.")
    argp.add_argument("--id", metavar="N", type=int, action="append", dest="ids", required=True,
                      help="the job (repeat for several)")
    argp.add_argument("--reason", metavar="TEXT", help="why, for the audit trail")
    argp.add_argument("--dry-run", action="store_true", help="print what would be done and change nothing")
    args = argp.parse_args(argv)

    def act(config, steer: steering.Steering) -> int:
        chosen = steer.hold(args.ids, args.reason, dry_run=args.dry_run)
        cli.print_moved(chosen, "held", lambda job: "held", args.dry_run)
        return cli.EXIT_OK

    return cli.steer("hold", args, act)


if __name__ == "__main__":
    raise SystemExit(main())
