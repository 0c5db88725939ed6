"""``bin/route --explain FILE``: what the router would do with a file, touching nothing."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import cli, failures, rules
from .config import Config, ConfigError
from .detect import eligible_name
from .validation import Invalid, parse, too_large


def explain(config: Config, path: Path) -> list[str]:
    """Lines describing the file's fate: validation, archive, destinations, clean-up."""
    path = Path(os.path.abspath(path))
    client = path.parent.name
    lines = [f"file:        {path}", f"client:      {client} (its folder)"]
    hot = config.paths.hot_folder
    if path.parent.parent != hot:
        lines.append(f"note:        not in a client folder of the hot folder {hot}; the scanner would not see it")
    if not eligible_name(path.name):
        lines.append("note:        the name is not one the pipeline picks up (it must end in .json and "
                     "not be hidden or temporary)")
    if path.is_symlink():
        return lines + ["outcome:     ignored: symbolic links are never followed"]
    failed = failures.failed_path(config.paths.failed, client, path.name, time.time())
    try:
        size = path.stat().st_size
        if size > config.router.max_file_bytes:
            raise too_large(size, config.router.max_file_bytes)
        details = parse(path.read_bytes(), client)
    except Invalid as e:
        return lines + [f"outcome:     fails validation: {e}",
                        f"moved to:    {failed} (with {failed.name}.error.json beside it)"]
    except OSError as e:
        return lines + [f"outcome:     cannot be read: {e.strerror}"]
    lines += [f"ClientCode:  {details.client_code}", f"JobCategory: {details.job_category}",
              f"archive:     {config.paths.store / client / path.name}"]
    chosen = rules.destinations(config.routes, details.client_code, details.job_category)
    for dest in chosen:
        lines.append(f"route:       {dest.name}: {dest.folder / path.name}")
    if not chosen:
        lines.append("route:       none (no rule matches: archived only)")
    lines.append("then:        removed from the hot folder"
                 + ("; POSTed to " + config.api.endpoint if config.api.endpoint else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    argp = argparse.ArgumentParser(prog="bin/route", description="Explain what the router would do with a file, "
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
