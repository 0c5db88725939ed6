"""``bin/status``: the pipeline at a glance, and a health check (SPEC §9).

Prints counts by state, the oldest waiting job per state, today's per-client counts, the last
scans, each program's heartbeat, the last errors and the last report; ``--json`` prints the same
for monitoring systems. Exit status: 0 healthy, 1 unhealthy (a program silent or missing, the hot folder missing, a job
stuck past ``alerts.stuck_after``, a report that cannot be sent), 69 database unusable, 78 bad
configuration. A client silent past its ``[[expect]]`` rule is shown as a warning.

``--nagios`` (SPEC §17) prints one line with perfdata and exits as Nagios, Icinga and their
successors expect: 0 OK, 1 WARNING (a job stuck, a report not sent, a silence), 2 CRITICAL (a
program silent or missing, the hot folder missing), 3 UNKNOWN (database or configuration unusable).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import sys
import time
import zoneinfo
from typing import Any

import peewee

from .. import cli
from ..config import Config
from ..jobs import NOTIFY_QUEUE, QUEUE_OF_STATE, ROUTE_QUEUE, STATES, WAITING_SINCE
from ..reporting import alerts, expectations

EXIT_UNHEALTHY = 1
NAGIOS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
SILENT_AFTER = 30.0          # seconds without a heartbeat before a program counts as silent


# Each count and minimum reads a partial queue index (jobs.py's queue conditions match them), not
# the whole table: on a million finished jobs a plain GROUP BY state takes a third of a second.
# The "+" stops SQLite from walking the time column's index in order looking for a matching state.
_SQL_OLDEST = {state: f"SELECT min(+{column}) FROM jobs WHERE {QUEUE_OF_STATE[state]} AND state = ?"
               for state, column in WAITING_SINCE.items()}
_SQL_COUNTS = (f"SELECT state, count(*) FROM jobs WHERE {ROUTE_QUEUE} GROUP BY state",
               f"SELECT 'routed', count(*) FROM jobs WHERE {NOTIFY_QUEUE}",
               "SELECT 'failed', count(*) FROM jobs WHERE state = 'failed'")


def counts_by_state(db: peewee.Database) -> dict[str, int]:
    """Jobs in each state; notified is what the others leave of the table's count."""
    counts = {}
    for sql in _SQL_COUNTS:
        counts.update((state, n) for state, n in db.run_sql(sql).fetchall() if n)
    notified = db.run_sql("SELECT count(*) FROM jobs").fetchone()[0] - sum(counts.values())
    if notified:
        counts["notified"] = notified
    return counts


def required_programs(config: Config) -> list[str]:
    """The programs that must be beating: the notifier only with an API, the reporter only with SMTP."""
    programs = ["scanner", "watcher", "router"]
    if config.api.endpoint:
        programs.append("notifier")
    if config.smtp.host:
        programs.append("reporter")
    return programs


def _rows(db: peewee.SqliteDatabase, sql: str, params: tuple = ()) -> list[dict]:
    cursor = db.run_sql(sql, params)
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def gather(db: peewee.SqliteDatabase, config: Config, now: float) -> dict[str, Any]:
    """Everything bin/status shows, read in one snapshot, with the problems found."""
    tz = zoneinfo.ZoneInfo(config.report.timezone)
    midnight = dt.datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    with db.snapshot():          # one read snapshot: the figures agree with each other
        by_state = counts_by_state(db)
        oldest = {}
        # Routed waits for the notifier only when an API is configured; otherwise it is final.
        waiting = WAITING_SINCE if config.api.endpoint else {s: c for s, c in WAITING_SINCE.items() if s != "routed"}
        for state, column in waiting.items():
            since = db.run_sql(_SQL_OLDEST[state], (state,)).fetchone()[0]
            if since is not None:
                oldest[state] = round(now - since, 1)
        today = _rows(db, "SELECT client_folder AS client, state, count(*) AS jobs FROM jobs WHERE detected_at >= ? "
                          "GROUP BY client_folder, state ORDER BY client_folder, state", (midnight.timestamp(),))
        scans = _rows(db, "SELECT kind, actor, started_at, finished_at - started_at AS seconds, files_seen, "
                          "jobs_created, slow, timed_out FROM scans ORDER BY started_at DESC LIMIT 5")
        beats = _rows(db, "SELECT program, host, pid, started_at, beat_at, clock_skew FROM heartbeats "
                          "ORDER BY program, host")
        errors = _rows(db, "SELECT id, failed_at, client_folder AS client, file_name AS file, failed_step AS step, "
                           "last_error AS reason FROM jobs WHERE state = 'failed' ORDER BY failed_at DESC LIMIT 5")
        stuck_total, stuck = alerts.stuck(db, now, config.alerts.stuck_after, limit=5,
                                          notify=bool(config.api.endpoint))
        detector = _rows(db, "SELECT host, holder, since, lease_until FROM leaders WHERE role = 'detect'")
        report = _rows(db, "SELECT day, state, attempts, last_error, sent_at FROM reports "
                           "WHERE state != 'pending' OR attempts > 0 ORDER BY day DESC LIMIT 1")
        silences = expectations.current(db, config.expect, now, config.report.timezone)
    for scan in scans:
        scan["seconds"] = None if scan["seconds"] is None else round(scan["seconds"], 3)
    for beat in beats:
        beat["age"] = round(now - beat["beat_at"], 1)
    status = {"time": now, "database": str(config.paths.database), "jobs_by_state": by_state,
              "oldest_waiting_seconds": oldest, "today": today, "last_scans": scans, "programs": beats,
              "last_errors": errors, "stuck_jobs": stuck_total, "stuck": stuck,
              "last_report": report[0] if report else None, "silences": silences,
              "detecting": detector[0] if detector and detector[0]["lease_until"] >= now else None}
    graded = graded_problems(status, config)
    status["problems"] = [text for _, text in graded]
    status["warnings"] = [silence_text(s, tz) for s in silences]
    status["healthy"] = not status["problems"]
    status["nagios"] = max([level for level, _ in graded] + [1] * bool(silences) + [0])
    return status


def graded_problems(status: dict[str, Any], config: Config) -> list[tuple[int, str]]:
    """Why the pipeline is unhealthy, one line each with its Nagios level (2 critical, 1 warning)."""
    found = []
    beats = status["programs"]
    for program in required_programs(config):
        mine = [b for b in beats if b["program"] == program or b["program"].startswith(program + "_")]
        if not mine:
            found.append((2, f"{program}: not running (no heartbeat)"))
    for beat in beats:
        if beat["age"] > SILENT_AFTER:
            found.append((2, f"{beat['program']} (pid {beat['pid']} on {beat['host']}): silent for {beat['age']:.0f}s"))
        elif abs(beat["clock_skew"]) > config.database.max_clock_skew:
            found.append((2, f"{beat['program']} (pid {beat['pid']} on {beat['host']}): its clock is "
                             f"{beat['clock_skew']:+.1f}s off the database's (database.max_clock_skew "
                             f"{config.database.max_clock_skew:g}s); run NTP on every host"))
    if not config.paths.hot_folder.is_dir():
        # The watcher waits for it to be there again; meanwhile nothing can be dropped or detected.
        found.append((2, f"the hot folder {config.paths.hot_folder} is missing (deleted or moved away)"))
    if status["stuck_jobs"]:
        first = status["stuck"][0]
        found.append((1, f"{status['stuck_jobs']} job(s) waiting longer than {config.alerts.stuck_after:g}s; the "
                         f"oldest: {first['client']}/{first['file']} ({first['state']}) {first['reason'] or ''}".rstrip()))
    report = status["last_report"]
    if report and report["state"] == "pending" and report["last_error"]:
        found.append((1, f"the report for {report['day']} could not be sent ({report['attempts']} attempts): "
                         f"{report['last_error']}"))
    return found


def silence_text(silence: dict, tz: zoneinfo.ZoneInfo) -> str:
    """ "no file from RANK since 2026-07-15 10:02; expected within 2 h on weekdays 08:00-18:00"."""
    since = (f"since {dt.datetime.fromtimestamp(silence['last_seen'], tz):%Y-%m-%d %H:%M}"
             if silence["last_seen"] else "yet")
    return f"no file from {silence['client']} {since}; {silence['expected']}"


def render_nagios(status: dict[str, Any]) -> str:
    """One line for Nagios and its successors: state, what is wrong (or the backlog), perfdata."""
    counts = status["jobs_by_state"]
    said = status["problems"] + status["warnings"]
    waiting = sum(counts.get(s, 0) for s in ("detected", "archived", "routed"))
    summary = "; ".join(said) if said else f"{waiting} job(s) waiting, {len(status['programs'])} program(s) beating"
    oldest = max(status["oldest_waiting_seconds"].values(), default=0)
    perf = [f"{state}={counts.get(state, 0)};;;0" for state in STATES]
    perf += [f"stuck={status['stuck_jobs']};;;0", f"silences={len(status['silences'])};;;0",
             f"oldest_waiting={oldest:g}s;;;0", f"programs={len(status['programs'])};;;0"]
    return f"PIPELINE {NAGIOS[status['nagios']]} - {summary.replace('|', '/')} | {' '.join(perf)}"


def utc_text(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_text(status: dict[str, Any]) -> str:
    """The compact human table."""
    out = [f"pipeline status at {utc_text(status['time'])} UTC: {'HEALTHY' if status['healthy'] else 'UNHEALTHY'}",
           f"database: {status['database']}", ""]
    counts = status["jobs_by_state"]
    out.append("jobs      " + "  ".join(f"{s} {counts.get(s, 0)}" for s in
                                        STATES))
    waiting = status["oldest_waiting_seconds"]
    out.append("waiting   " + ("  ".join(f"oldest {s} {age_text(a)}" for s, a in waiting.items()) or "nothing waiting"))
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
    out.append(f"{'program':<20}{'pid':>8}  {'host':<16}{'up':>8}{'beat':>8}")
    for b in status["programs"]:
        flag = "  SILENT" if b["age"] > SILENT_AFTER else ""
        out.append(f"{b['program'][:19]:<20}{b['pid']:>8}  {b['host'][:15]:<16}{age_text(status['time'] - b['started_at']):>8}"
                   f"{age_text(b['age']) + ' ago':>8}{flag}")
    if not status["programs"]:
        out.append("(no program is running)")
    out.append("")
    for scan in status["last_scans"][:3]:
        out.append(f"scan      {utc_text(scan['started_at'])} {scan['kind']:<8} {scan['files_seen']} seen, "
                   f"{scan['jobs_created']} new, {scan['seconds'] or 0:.2f}s{' SLOW' if scan['slow'] else ''}")
    for error in status["last_errors"]:
        out.append(f"error     {utc_text(error['failed_at'])} {error['client']}/{error['file']} at {error['step']}: "
                   f"{error['reason']}")
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
    argp = argparse.ArgumentParser(prog="bin/status", description="Show the pipeline's state; exit non-zero when "
                                                                  "it is unhealthy (a health check).")
    argp.add_argument("--config", metavar="FILE", help="configuration file (default: as the programs find it)")
    output = argp.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON for monitoring systems")
    argp.add_argument("--host", metavar="NAME", help="show only the programs of this host (several hosts, SPEC §15)")
    output.add_argument("--nagios", action="store_true",
                        help="one line with perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (a Nagios plugin)")
    args = argp.parse_args(argv)
    try:
        config, db = cli.open_existing(args.config)
    except cli.ToolError as e:
        return _unusable(args.nagios, str(e), e.code)
    try:
        status = gather(db, config, time.time())
    except peewee.DatabaseError as e:
        return _unusable(args.nagios, f"database unusable: {e}", cli.EXIT_DATABASE)
    finally:
        db.close()
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
        print(f"PIPELINE UNKNOWN - {' '.join(message.split())}")
        return 3
    print(f"UNHEALTHY: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
