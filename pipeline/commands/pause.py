"""``bin/pause``: pause a destination, a client, all routing or notification; alone, list the pauses
in force (docs/design.md#steering). ``bin/resume`` ends one."""

from __future__ import annotations

from .. import cli, steering


def main(argv: list[str] | None = None) -> int:
    argp = cli.steering_parser("pause", "Pause a destination, a client, all routing or notification; "
                                        "without a target, list the pauses in force.")
    cli.add_pause_target(argp, "pause")
    end = argp.add_mutually_exclusive_group()
    end.add_argument("--for", metavar="DURATION", dest="for_", help="end by itself after this long (90s, 15m, 2h, 1d)")
    end.add_argument("--until", metavar="TIME", help="end by itself at this time (ISO, UTC unless it says)")
    argp.add_argument("--reason", metavar="TEXT", help="why, for the audit trail and bin/status")
    args = argp.parse_args(argv)

    def act(config, steer: steering.Steering) -> int:
        target = cli.pause_target(args)
        if target is None:
            if args.for_ or args.until or args.reason:
                raise steering.Refused("--for, --until and --reason need a target (--destination, --client, "
                                       "--routing or --notify)", steering.EX_USAGE)
            pauses = steer.in_force().all
            print("\n".join(p.line() for p in pauses) if pauses else "nothing is paused")
            return cli.EXIT_OK
        now = steer.clock()
        until = (now + steering.for_seconds(args.for_) if args.for_ else
                 steering.until_time(args.until, now) if args.until else None)
        pause = steer.pause(*target, until=until, reason=args.reason,
                            route_names=[r.name for r in config.routes])
        print(f"paused {pause.line()}")
        return cli.EXIT_OK

    return cli.steer("pause", args, act)


if __name__ == "__main__":
    raise SystemExit(main())
