"""``bin/reload``: check the configuration file, then have every running program read it again
(docs/design.md#changing-the-configuration-live).

The file is checked exactly as ``bin/check-config`` checks it; a file with an error exits 78 with
the reason and signals nothing. A valid one is signalled to every program supervisord runs (SIGHUP
through ``supervisorctl signal HUP all``): each applies it between two of its steps, without a
restart. The request is also recorded in the database, where the programs of the other hosts (a
shared file, several hosts on PostgreSQL) find it at their next heartbeat and read their file too. This is the documented way to apply a change, and the systemd unit's ExecReload;
``supervisorctl reload`` restarts everything instead, and a bad file then stops every program.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .. import cli, command, heartbeat, steering
from . import check_config

EXIT_NOT_RUNNING = 1        # supervisord does not answer: nothing was signalled


def supervisorctl(conf: Path, *args: str) -> subprocess.CompletedProcess:
    """supervisord's own client, with this installation's Python (``supervisorctl`` need not be on PATH)."""
    return subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
                          capture_output=True, text=True, timeout=60)


def main(argv: list[str] | None = None) -> int:
    argp = argparse.ArgumentParser(prog=command("reload"), description="Check the configuration file, then "
                                   "signal every running program to read it again (no restart).",
                                   epilog="exit status: 0 signalled; 78 the file is invalid (nothing signalled); "
                                          "1 supervisord is not running or a program could not be signalled")
    argp.add_argument("--site", metavar="DIR", default=".", help="the folder of supervisord.conf and "
                      "pipeline.toml (default: this folder)")
    argp.add_argument("--config", metavar="FILE", help="the file the programs read (default: $PIPELINE_CONFIG, "
                      "else the site's pipeline.toml)")
    args = argp.parse_args(argv)
    site = Path(os.path.abspath(args.site))
    conf = site / "supervisord.conf"
    if not conf.is_file():
        print(f"{command('reload')}: no supervisord.conf in {site}", file=sys.stderr)
        return cli.EXIT_USAGE
    os.chdir(site)                  # the file is found as the programs find it under supervisord
    code = check_config.main([args.config] if args.config else [])
    if code == cli.EXIT_CONFIG:
        print(f"{command('reload')}: the configuration has an error: nothing signalled, the programs run on "
              "as they are", file=sys.stderr)
        return code
    told = tell_every_host(args.config)
    done = supervisorctl(conf, "signal", "HUP", "all")
    lines = (done.stdout + done.stderr).strip()
    if lines:
        print(lines)
    if done.returncode != 0:
        print(f"{command('reload')}: supervisorctl signal HUP all exited {done.returncode} (is supervisord running "
              f"with {conf}?); what it names was not signalled", file=sys.stderr)
        return EXIT_NOT_RUNNING
    print(f"{command('reload')}: every running program reads the configuration again between two of its steps"
          f"{told}; {command('status')} shows the fingerprint each runs")
    return cli.EXIT_OK


def tell_every_host(config_path: str | None) -> str:
    """Record the request in the database, where the programs of every host find it at their next
    heartbeat (a HUP reaches this host's only); says how far it reached, for the last line."""
    try:
        _, db = cli.open_existing(config_path)
    except cli.ToolError as e:
        print(f"{command('reload')}: other hosts are not told: {e}", file=sys.stderr)
        return " (this host's)"
    try:
        heartbeat.request_reload(db, steering.actor())
    except Exception as e:
        if db.transient(e) is None:
            raise
        print(f"{command('reload')}: other hosts are not told: the database cannot be written ({db.describe(e)})",
              file=sys.stderr)
        return " (this host's)"
    finally:
        db.close()
    return f", and those of other hosts within {heartbeat.INTERVAL:g} s"


if __name__ == "__main__":
    raise SystemExit(main())
