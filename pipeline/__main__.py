"""``hotfolder``: the one command of an installed pipeline; its subcommands are the ``bin/`` names.

``hotfolder router`` runs what ``bin/router`` runs in a checkout, with the same flags, output and
exit codes; ``python -m pipeline`` is the same command. Modules are imported by name only when
their subcommand runs, so ``hotfolder status`` does not load the router.
"""

from __future__ import annotations

import importlib
import os
import sys

from . import COMMAND_STYLE, __version__

# name: (module whose main(argv) runs it, what it does)
SUBCOMMANDS = {
    "init": ("pipeline.commands.init", "make a working site in a folder: configuration, supervisord, systemd"),
    "start": ("pipeline.commands.start", "check the site's configuration, then run every program under supervisord"),
    "status": ("pipeline.commands.status", "the pipeline at a glance; a health check (--json, --nagios)"),
    "check-config": ("pipeline.commands.check_config", "validate a configuration file and the places it names"),
    "reload": ("pipeline.commands.reload", "check the configuration, then have the running programs read it again"),
    "requeue": ("pipeline.commands.requeue", "put failed jobs back where they failed"),
    "pause": ("pipeline.commands.pause", "pause a destination, a client, routing or notification; list pauses"),
    "resume": ("pipeline.commands.resume", "end a pause: its jobs go on at once"),
    "hold": ("pipeline.commands.hold", "hold jobs not yet routed, for a person"),
    "release": ("pipeline.commands.release", "send held jobs on where they stopped"),
    "dismiss": ("pipeline.commands.dismiss", "close failed or held jobs a person has dealt with"),
    "redeliver": ("pipeline.commands.redeliver", "copy finished jobs again from their archive copy"),
    "route": ("pipeline.commands.route", "explain what the router would do with a file, touching nothing"),
    "report": ("pipeline.commands.report", "render a day's report, write it or send it"),
    "dashboard-user": ("pipeline.commands.dashboard_user", "add a dashboard user, or change one's password and role"),
    "backup": ("pipeline.commands.backup", "copy the job table to a file while the pipeline runs"),
    "scanner": ("pipeline.scanner", "program: startup and periodic scans of the hot folder"),
    "watcher": ("pipeline.watcher", "program: files into jobs within milliseconds"),
    "router": ("pipeline.router", "program: validate, archive, copy, clean up"),
    "notifier": ("pipeline.notifier", "program: POST each routed job to the API"),
    "reporter": ("pipeline.reporter", "program: the nightly report, alerts, retention"),
    "dashboard": ("pipeline.dashboard", "program: the web dashboard and /metrics"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: hotfolder COMMAND [ARGS]   (hotfolder COMMAND --help for its options)", "",
             "JSON hot-folder pipeline. Commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in SUBCOMMANDS.items()]
    lines += ["", "  --version     print the version"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ[COMMAND_STYLE] = "hotfolder"         # for this process and the programs it starts
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"hotfolder {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hotfolder: unknown command {name!r}; the commands are {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        return module.main(rest) or 0
    except BrokenPipeError:         # `hotfolder status | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
