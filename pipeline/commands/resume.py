"""``bin/resume``: end a pause (docs/design.md#steering); the work it held is due at once."""

from __future__ import annotations

from .. import cli, steering


def main(argv: list[str] | None = None) -> int:
    argp = cli.steering_parser("resume", "End a pause: its jobs go on at once.")
    cli.add_pause_target(argp, "resume")
    argp.add_argument("--all", action="store_true", help="end every pause in force")
    args = argp.parse_args(argv)

    def act(config, steer: steering.Steering) -> int:
        target = cli.pause_target(args)
        if (target is None) == (not args.all):
            raise steering.Refused("say what to resume: --destination NAME, --client C, --routing, --notify "
                                   "or --all", steering.EX_USAGE)
        if args.all:
            ended = steer.resume_all()
            print("\n".join(f"resumed {p.line()}" for p in ended) if ended else "nothing was paused")
            return cli.EXIT_OK
        pause = steer.resume(*target, route_names=[r.name for r in config.routes])
        print(f"resumed {pause.line()}")
        return cli.EXIT_OK

    return cli.steer("resume", args, act)


if __name__ == "__main__":
    raise SystemExit(main())
