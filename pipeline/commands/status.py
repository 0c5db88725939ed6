"""``bin/status``: the pipeline at a glance, and a health check (docs/design.md#operating-it).

Prints counts by state, the oldest waiting job per state, today's per-client counts, the last
scans, each program's heartbeat, the last errors and the last report; ``--json`` prints the same
for monitoring systems. Exit status: 0 healthy, 1 unhealthy (a program silent or missing, the hot folder missing, a job
stuck past ``alerts.stuck_after``, a report that cannot be sent), 69 database unusable, 78 bad
configuration. A client silent past its ``[[expect]]`` rule is shown as a warning.

``--nagios`` (docs/design.md#reports-and-alerts) prints one line with perfdata and exits as Nagios, Icinga and their
successors expect: 0 OK, 1 WARNING (a job stuck, a report not sent, a silence, the dashboard
silent or missing), 2 CRITICAL (a program silent or missing, the hot folder missing), 3 UNKNOWN
(database or configuration unusable, or the command line itself wrong).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

import peewee

from .. import cli, command
from ..convert import escape_control_characters
from ..health import SILENT_AFTER, UNKNOWN, VERDICTS, WARNING, gather
from ..states import STATES
from ..times import age_text, utc_text

EXIT_UNHEALTHY = 1


def render_nagios(status: dict[str, Any]) -> str:
    """One line for Nagios and its successors: state, what is wrong (or the backlog), perfdata."""
    counts = status["jobs_by_state"]
    said = status["problems"] + status["warnings"]
    summary = "; ".join(said) if said else (f"{status['jobs_waiting']} job(s) waiting, "
                                            f"{len(status['programs'])} program(s) beating")
    oldest = max(status["oldest_waiting_seconds"].values(), default=0)
    perf = [f"{state}={counts.get(state, 0)};;;0" for state in STATES]
    perf += [f"stuck={status['stuck_jobs']};;;0", f"silences={len(status['silences'])};;;0",
             f"oldest_waiting={_decimal(oldest)}s;;;0", f"programs={len(status['programs'])};;;0",
             f"paused={len(status['pauses'])};;;0"]
    return f"{_nagios_text(status['nagios'], summary)} | {' '.join(perf)}"


def _nagios_text(level: int, summary: str) -> str:
    """The part before the perfdata, on one line whatever the summary quotes (a file name with a
    line feed, an escape sequence): control characters escaped as in the logs, and '|', which
    would start the perfdata, written '/'."""
    return f"PIPELINE {VERDICTS[level]} - {escape_control_characters(summary).replace('|', '/')}"


def _decimal(seconds: float) -> str:
    """A perfdata number as a plain decimal: 1209600, never 1.2096e+06 (which monitors misread)."""
    return f"{seconds:.1f}".rstrip("0").rstrip(".")


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error of a Nagios check is UNKNOWN (3) on one line of stdout:
    argparse's own exit 2 would read as CRITICAL. Without --nagios, its usual message and exit 2."""

    nagios = False

    def error(self, message: str):
        if self.nagios:
            print(_nagios_text(UNKNOWN, f"usage error: {message} (see {self.prog} --help)"))
            raise SystemExit(UNKNOWN)
        super().error(message)


def _asks_for_nagios(argv: list[str]) -> bool:
    """Whether --nagios is among the options, spelled out or as the prefix argparse takes for it."""
    for arg in argv:
        if arg == "--":
            return False
        if len(arg) >= 3 and "--nagios".startswith(arg.partition("=")[0]):
            return True
    return False


def render_text(status: dict[str, Any]) -> str:
    """The compact human table."""
    out = [f"pipeline status at {utc_text(status['time'])} UTC: {'HEALTHY' if status['healthy'] else 'UNHEALTHY'}",
           f"database: {status['database']}", ""]
    counts = status["jobs_by_state"]
    out.append("jobs      " + "  ".join(f"{s} {counts.get(s, 0)}" for s in
                                        STATES))
    waiting = status["oldest_waiting_seconds"]
    out.append("waiting   " + ("  ".join(f"oldest {s} {age_text(a)}" for s, a in waiting.items()) or "nothing waiting"))
    if status.get("in_order"):
        first = status["in_order"]["first"]
        out.append(f"in order  {status['in_order']['jobs']} job(s) wait for an earlier job of their key; "
                   f"the first: {first['client']}/{first['file']} (job {first['id']}): {first['cause']}")
    for group in status.get("parked", []):      # paused, full (max_waiting), outside a route's hours
        what = f"{group['destination']} {group['cause']}" if group["destination"] else group["cause"]
        out.append(f"parked    {what}: {group['jobs']} job(s) wait, the oldest since {utc_text(group['since'])} UTC")
    out.append("")
    if status["today"]:
        clients: dict[str, dict[str, int]] = {}
        for row in status["today"]:
            clients.setdefault(row["client"], {})[row["state"]] = row["jobs"]
        out.append(f"{'today':<20}{'detected':>9}{'archived':>9}{'routed':>9}{'notified':>9}{'failed':>8}")
        for client, c in clients.items():
            out.append(f"{client[:19]:<20}" + "".join(f"{c.get(s, 0):>9}" for s in ("detected", "archived", "routed",
                                                                                     "notified")) + f"{c.get('failed', 0):>8}")
    else:
        out.append("today     no jobs yet")
    out.append("")
    detecting = status["detecting"]
    out.append(f"detection {detecting['host']} (since {utc_text(detecting['since'])})" if detecting else
               "detection no host holds it (its lease ran out, or no scanner or watcher ran yet)")
    out.append(f"{'program':<20}{'pid':>8}  {'host':<16}{'up':>8}{'beat':>8}  {'config':<12}{'since':>8}")
    for b in status["programs"]:
        flag = "  SILENT" if b["age"] > SILENT_AFTER else ""
        config = f"  {b['config'] or '-':<12}{age_text(status['time'] - b['config_since']):>8}" if b["config"] else "  -"
        out.append(f"{b['program'][:19]:<20}{b['pid']:>8}  {b['host'][:15]:<16}{age_text(status['time'] - b['started_at']):>8}"
                   f"{age_text(b['age']) + ' ago':>8}{config}{flag}")
    if not status["programs"]:
        out.append("(no program is running)")
    out.append("")
    for scan in status["last_scans"][:3]:
        out.append(f"scan      {utc_text(scan['started_at'])} {scan['kind']:<8} {scan['files_seen']} seen, "
                   f"{scan['jobs_created']} new, {scan['seconds'] or 0:.2f}s{' SLOW' if scan['slow'] else ''}")
    for error in status["last_errors"]:
        out.append(f"error     {utc_text(error['failed_at'])} {error['client']}/{error['file']} at {error['step']}: "
                   f"{error['reason']}")
    for remote in status.get("remotes", []):
        ok = f"last success {utc_text(remote['last_success'])}" if remote["last_success"] else "no success yet"
        error = (f"; last error {utc_text(remote['last_error_at'])}: {remote['last_error']}"
                 if remote["last_error"] else "")
        out.append(escape_control_characters(f"remote    {remote['remote']}: {ok}{error}"))
    report = status["last_report"]
    if report:
        how = f"sent {utc_text(report['sent_at'])}" if report["state"] == "sent" else report["state"]
        out.append(f"report    {report['day']}: {how}" + (f" ({report['last_error']})" if report["last_error"] else ""))
    if status["problems"] or status["warnings"]:
        out.append("")
        out += [f"PROBLEM   {p}" for p in status["problems"]]
        out += [f"WARNING   {w}" for w in status["warnings"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argp = _Parser(prog=command("status"), description="Show the pipeline's state; exit non-zero when "
                                                  "it is unhealthy (a health check).")
    argp.add_argument("--config", metavar="FILE", help="configuration file (default: as the programs find it)")
    output = argp.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON for monitoring systems")
    argp.add_argument("--host", metavar="NAME", help="show only the programs of this host (several hosts)")
    output.add_argument("--nagios", action="store_true",
                        help="one line with perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a Nagios plugin)")
    argp.nagios = _asks_for_nagios(sys.argv[1:] if argv is None else argv)
    args = argp.parse_args(argv)
    invalid = None          # the file's problem, when the programs run on a configuration read before
    try:
        config, db = cli.open_existing(args.config)
    except cli.ToolError as e:
        if e.code != cli.EXIT_CONFIG:
            return _unusable(args.nagios, str(e), e.code)
        try:
            config, db = cli.open_existing(args.config, paths_only=True)
        except cli.ToolError:
            return _unusable(args.nagios, str(e), e.code)
        invalid = str(e).removeprefix("configuration error: ")
    try:
        status = gather(db, config, time.time())
    except peewee.DatabaseError as e:
        return _unusable(args.nagios, f"database unusable: {e}", cli.EXIT_DATABASE)
    finally:
        db.close()
    if invalid and not any(p["problem"] == invalid for p in status["config_problems"]):
        status["warnings"].append(f"the config on disk is invalid (no program has been asked to reload it): "
                                  f"{invalid}; shown with its [paths] only")
        status["nagios"] = max(status["nagios"], WARNING)
    status["host"] = socket.gethostname()
    if args.host:
        status["programs"] = [b for b in status["programs"] if b["host"] == args.host]
    if args.nagios:
        print(render_nagios(status))
        return status["nagios"]
    print(json.dumps(status, indent=2) if args.json else render_text(status))
    return cli.EXIT_OK if status["healthy"] else EXIT_UNHEALTHY


def _unusable(nagios: bool, message: str, code: int) -> int:
    """The database or configuration cannot be used: UNKNOWN (3) to Nagios, else ``code``."""
    if nagios:
        print(_nagios_text(UNKNOWN, " ".join(message.split())))       # the driver's lines joined
        return UNKNOWN
    print(f"UNHEALTHY: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
