"""``bin/route --explain FILE``: what the router would do with a file, touching nothing.
``bin/route --compare NEW.toml [--since 7d] [--list]``: where the routed jobs of a period went, and
where NEW's rules would have sent them (docs/design.md#changing-the-configuration-live)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .. import cli, command, config as config_module, replay, store
from ..config import ConfigError
from ..explain import explain
from ..times import utc_text


def _period(text: str) -> float:
    try:
        return replay.period(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    argp = argparse.ArgumentParser(prog=command("route"), description="Explain what the router would do with a file, "
                                   "or compare where the jobs of a period went with where other rules would "
                                   "send them; without touching anything.",
                                   epilog="exit status: 0 done; 2 usage; 69 database unusable; 78 a configuration "
                                          "is invalid")
    what = argp.add_mutually_exclusive_group(required=True)
    what.add_argument("--explain", metavar="FILE", help="the job file to explain")
    what.add_argument("--compare", metavar="NEW.toml", help="a candidate configuration whose rules to compare "
                      "(its relative paths resolve as the running file's do)")
    argp.add_argument("--since", metavar="PERIOD", type=_period, default=replay.period("7d"),
                      help="with --compare: the jobs detected in this last period, such as 12h, 7d, 2w (default 7d)")
    argp.add_argument("--list", action="store_true", help="with --compare: list each job that would change")
    argp.add_argument("--config", metavar="FILE", help="configuration file (default: as the programs find it)")
    args = argp.parse_args(argv)
    try:
        config = cli.load_config(args.config)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return cli.EXIT_CONFIG
    if args.compare:
        return _compare(config, args)
    if not os.path.lexists(args.explain):
        print(f"{args.explain}: no such file", file=sys.stderr)
        return cli.EXIT_USAGE
    print("\n".join(explain(config, Path(args.explain))))
    return cli.EXIT_OK


def _compare(config: config_module.Config, args: argparse.Namespace) -> int:
    base = config.source.resolve().parent if config.source else Path.cwd()
    if not os.path.isfile(args.compare):
        print(f"{args.compare}: no such file", file=sys.stderr)
        return cli.EXIT_USAGE
    try:
        candidate = config_module.load(args.compare, base=base)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return cli.EXIT_CONFIG
    try:
        db = store.connect(config.paths.database, read_only=True)
    except store.DatabaseUnusable as e:
        print(cli.unusable(e), file=sys.stderr)
        return cli.EXIT_DATABASE
    since = time.time() - args.since
    try:
        with db.snapshot():
            result = replay.compare(db, candidate.routes, since)
    finally:
        db.close()
    changed = len(result.changed)
    judged = result.jobs - sum(result.unknown.values())
    print(f"{result.jobs} routed job(s) detected since {utc_text(since)} UTC, compared with the rules of "
          f"{args.compare}: {changed} would change destination, {judged - changed} would not")
    for reason, n in sorted(result.unknown.items()):
        print(f"{n} could not be judged: {reason}")
    if result.by_destination:
        print()
        print("\n".join(replay.table(result)))
    if args.list and result.changed:
        print()
        print("\n".join(replay.listing(result.changed)))
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
