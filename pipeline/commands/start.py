"""``hotfolder start``: check a site's configuration, then run its programs under supervisord in
the foreground (Ctrl-C or SIGTERM stops them all). ``bin/start`` does the same for a checkout."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import cli, command, supervise
from . import check_config


def main(argv: list[str] | None = None) -> int:
    argp = argparse.ArgumentParser(prog=command("start"), description="Check the site's configuration, then run "
                                   "every program under supervisord in the foreground.")
    argp.add_argument("--site", metavar="DIR", default=".", help="the site's folder (default: this folder), "
                      f"as {command('init')} made it")
    args, rest = argp.parse_known_args(argv)        # the rest goes to supervisord (-e debug, ...)
    site = Path(os.path.abspath(args.site))
    conf = site / "supervisord.conf"
    if not conf.is_file():
        print(f"{command('start')}: no supervisord.conf in {site}; make a site with {command('init')} DIR",
              file=sys.stderr)
        return cli.EXIT_USAGE
    os.chdir(site)                  # the programs find ./pipeline.toml as they do under supervisord
    code = check_config.main([str(site / "pipeline.toml")] if (site / "pipeline.toml").exists() else [])
    if code != cli.EXIT_OK:
        return code
    (site / "var" / "log").mkdir(parents=True, exist_ok=True)
    supervise.main(["--nodaemon", "-c", str(conf), *rest])
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
