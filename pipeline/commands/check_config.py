"""``bin/check-config [FILE]``: validate a configuration file and the places it names
(docs/design.md#configuration)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import cli, command, config as config_module, files, flow, separation, store, users
from ..config import Config, ConfigError
from ..api import resolve_headers
from ..remote import urls as remote_urls
from ..reporting import channels


def _writable_place(path: Path) -> str | None:
    """None when ``path`` is a writable folder or can be created; else why not."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def _check_server(url: str, problems: list[str], notes: list[str], unavailable: list[str]) -> None:
    """A PostgreSQL database: the server answers, and the role may use the database. A server that
    does not answer or turns the connection away (``reason``) is no fault of the file: the
    programs wait for it."""
    try:
        store.connect(url, create=False).close()
    except store.DatabaseUnusable as e:
        if "no pipeline tables" in str(e):
            notes.append("[paths] database: no pipeline tables yet; the first program to start creates them")
        elif e.reason:
            unavailable.append(cli.unusable(e))
        else:
            problems.append(f"[paths] database: {e}")


def check(config: Config) -> tuple[list[str], list[str], list[str]]:
    """(problems, notes, unavailable): problems in the configuration stop the pipeline from
    working; notes are worth knowing; ``unavailable`` says why the database cannot be used now,
    when that may pass by itself (the programs wait for it)."""
    problems, notes, unavailable = [], [], []
    try:
        store.check_location(config.paths.database)
    except store.DatabaseUnusable as e:
        problems.append(f"[paths] database: {e}")
    p = config.paths
    local = not store.is_postgres(p.database)
    if not local:
        _check_server(p.database, problems, notes, unavailable)
    for key in ("hot_folder", "store", "failed", "error_log", "database")[:5 if local else 4]:
        where = getattr(p, key)
        reason = _writable_place(where.parent if key == "database" else where)
        if reason:
            problems.append(f"[paths] {key}: {reason}")
    problems += separation.problems(config)
    if why := files.unstable_inodes(config.paths.hot_folder):
        problems.append(f"[paths] hot_folder: {why}")
    problems += remote_urls.problems(config.routes, config.remotes)
    for route in config.routes:
        if route.remote is not None:
            notes.append(f"route {route.name!r}: copies go to {route.remote.label}{route.to} (not connected to "
                         "by this check)")
        elif not route.to.is_dir():
            if config.router.create_folders:
                notes.append(f"route {route.name!r}: {route.to} does not exist yet; it will be created")
            else:
                notes.append(f"route {route.name!r}: {route.to} is missing (share not mounted?); jobs for it "
                             "will wait until it is there (router.create_folders = false)")
        if route.hold:
            notes.append(f"route {route.name!r}: hold = true: its jobs are archived, then held for bin/release")
        if route.max_waiting is not None:
            held = flow.count_files(route.to, route.max_waiting) if route.template is None else None
            notes.append(f"route {route.name!r}: max_waiting = {route.max_waiting}: its copies wait while its folder "
                         "holds that many job files" + (f" (it holds {held} now)" if held is not None else ""))
        if route.hours is not None or route.days is not None:
            notes.append(f"route {route.name!r}: copies go only in its hours {route.window_text} "
                         f"({config.report.timezone}); outside them they wait")
    unmatched = {"archive": "archived only", "hold": "held for bin/release", "fail": "failed at route"}
    if not config.routes:
        notes.append(f"no [[route]] rules: every file is {unmatched[config.router.unmatched]}")
    elif config.router.unmatched != "archive":
        notes.append(f"[router] unmatched = {config.router.unmatched!r}: a job no rule routes is "
                     f"{unmatched[config.router.unmatched]}")
    if config.router.order_by:
        notes.append(f"[router] order_by {'.'.join(config.router.order_by)}: jobs with the same value are routed in "
                     "the order they were detected; a job without it is unordered")
    if not config.api.endpoint:
        notes.append("[api] endpoint is empty: routed is the final state, nothing is POSTed")
    for name, value in config.api.headers.items():
        if value.startswith("env:") and value[4:] not in os.environ:
            notes.append(f"[api] headers {name}: environment variable {value[4:]} is not set")
        else:
            try:
                resolve_headers({name: value})      # what the notifier refuses at start
            except ConfigError as e:
                problems.append(str(e))
    for i, value in enumerate(config.alerts.urls, 1):
        if value.startswith("env:") and value[4:] not in os.environ:
            notes.append(f"[alerts] urls #{i}: environment variable {value[4:]} is not set")
            continue
        try:
            channels.resolve_one(i, value)          # what the reporter refuses at start
        except ConfigError as e:
            problems.append(str(e))
    if config.dashboard.users_file:
        try:
            users.load(config.dashboard.users_file)
        except users.UsersError as e:
            problems.append(f"[dashboard] users_file: {e}")
    if config.smtp.host and config.smtp.username and config.smtp.password_env not in os.environ:
        notes.append(f"[smtp] password_env: environment variable {config.smtp.password_env} is not set")
    return problems, notes, unavailable


def main(argv: list[str] | None = None) -> int:
    argp = argparse.ArgumentParser(prog=command("check-config"), description="Validate a configuration file and the "
                                                                        "places it names.",
                                   epilog="exit status: 0 valid; 78 the configuration is invalid; 69 it is valid but "
                                          "its database cannot be used now (a server not answering or refusing "
                                          "the connection: the programs wait for it)")
    argp.add_argument("file", nargs="?", metavar="FILE", help="the file to check (or use --config)")
    argp.add_argument("--config", metavar="FILE", help="the file to check")
    args = argp.parse_args(argv)
    path = args.file or args.config
    try:
        config = config_module.load(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return cli.EXIT_CONFIG
    problems, notes, unavailable = check(config)
    source = config.source or "built-in defaults"
    for line in notes:
        print(f"note: {line}")
    for line in problems:
        print(f"error: {source}: {line}", file=sys.stderr)
    for line in unavailable:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        return cli.EXIT_CONFIG
    if unavailable:             # the file is right; the server is not there yet (EX_UNAVAILABLE)
        return cli.EXIT_DATABASE
    print(f"ok: {source}: hot folder {config.paths.hot_folder}, {len(config.routes)} routing rules, "
          f"database {config.paths.database}")
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
