"""``bin/route --explain FILE``: what the router would do with a file, touching nothing."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import cli, command
from ..config import ConfigError
from ..explain import explain


def main(argv: list[str] | None = None) -> int:
    argp = argparse.ArgumentParser(prog=command("route"), description="Explain what the router would do with a file, "
                                                                 "without touching anything.")
    argp.add_argument("--explain", metavar="FILE", required=True, help="the job file to explain")
    argp.add_argument("--config", metavar="FILE", help="configuration file (default: as the programs find it)")
    args = argp.parse_args(argv)
    try:
        config = cli.load_config(args.config)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return cli.EXIT_CONFIG
    if not os.path.lexists(args.explain):
        print(f"{args.explain}: no such file", file=sys.stderr)
        return cli.EXIT_USAGE
    print("\n".join(explain(config, Path(args.explain))))
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
