"""``hotfolder backup FILE``: the job table copied to FILE while the pipeline runs (SQLite's online
backup), or, on PostgreSQL, the ``pg_dump`` line that does it. Take one before an upgrade."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import cli, command


def main(argv: list[str] | None = None) -> int:
    argp = argparse.ArgumentParser(prog=command("backup"), description="Copy the job table to FILE while the "
                                   "pipeline runs (on PostgreSQL: print the pg_dump line that does it).")
    argp.add_argument("file", metavar="FILE", help="where the copy goes")
    argp.add_argument("--config", metavar="FILE", help="configuration file (default: as the programs find it)")
    argp.add_argument("--force", action="store_true", help="replace FILE when it exists")
    args = argp.parse_args(argv)
    target = Path(os.path.abspath(args.file))
    if os.path.lexists(target) and not args.force:
        print(f"{command('backup')}: {target} exists; --force replaces it", file=sys.stderr)
        return cli.EXIT_USAGE
    config, db = cli.open_or_exit(args.config)
    try:
        if os.path.abspath(str(config.paths.database)) == str(target):
            print(f"{command('backup')}: {target} is the database itself", file=sys.stderr)
            return cli.EXIT_USAGE
        todo = db.backup(target)
    except OSError as e:
        print(f"{command('backup')}: cannot write {target}: {e.strerror or e}", file=sys.stderr)
        return cli.EXIT_ERROR
    finally:
        db.close()
    if todo:
        print(f"the database is on a PostgreSQL server; back it up with its own tool:\n  {todo}")
    else:
        print(f"backed up {config.paths.database} to {target} ({target.stat().st_size:,} bytes)")
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
