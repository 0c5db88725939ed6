"""The pipeline's verdict, read in one snapshot: ``bin/status``, ``/healthz`` and ``/metrics`` share it.

``gather`` reads counts by state, the oldest waiting job per state, today's per-client counts, the
last scans, each program's heartbeat, the last errors, stuck jobs, the detecting host, the last
report and the clients silent past their ``[[expect]]`` rule, and grades what is wrong: a program
silent or missing, or the hot folder missing, is critical (2); a job stuck, a report not sent, a
silence, the dashboard silent or missing is a warning (1). ``bin/status --nagios`` exits with that
grade and ``/healthz`` answers it with ``http_status``: one verdict, however it is asked for.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import peewee

from . import rules, steering, waits
from .config import Config
from .remote import record as remote_record
from .reporting import alerts, expectations
from .states import NOTIFY_QUEUE, QUEUE_OF_STATE, ROUTE_QUEUE, WAITING_SINCE
from .times import utc_text

SILENT_AFTER = 30.0          # seconds without a heartbeat before a program counts as silent

# The grades, as Nagios plugins exit with them.
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
VERDICTS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}

# The dashboard serves people and monitors, not the files: without it nothing stops flowing, so
# its absence is a warning where a missing router is critical.
_GRADE_WHEN_GONE = {"dashboard": WARNING}


# Each count and minimum reads a partial queue index (states.py's queue conditions match them), not
# the whole table: on a million finished jobs a plain GROUP BY state takes a third of a second.
# The "+" stops SQLite from walking the time column's index in order looking for a matching state.
_SQL_OLDEST = {state: f"SELECT min(+{column}) FROM jobs WHERE {QUEUE_OF_STATE[state]} AND state = ?"
               for state, column in WAITING_SINCE.items()}
_SQL_COUNTS = (f"SELECT state, count(*) FROM jobs WHERE {ROUTE_QUEUE} GROUP BY state",
               f"SELECT 'routed', count(*) FROM jobs WHERE {NOTIFY_QUEUE}",
               "SELECT 'failed', count(*) FROM jobs WHERE state = 'failed'",
               "SELECT 'held', count(*) FROM jobs WHERE state = 'held'",            # partial indexes too
               "SELECT 'dismissed', count(*) FROM jobs WHERE state = 'dismissed'")


# Jobs held back behind an earlier job of their key (docs/design.md#order-per-key): how many, and
# the first of them with its cause. Both read the routers' partial queue index.
_SQL_IN_ORDER = (f"SELECT count(*) FROM jobs WHERE {ROUTE_QUEUE} AND waits_after IS NOT NULL",
                 f"SELECT id, client_folder AS client, file_name AS file, last_error AS cause FROM jobs "
                 f"WHERE {ROUTE_QUEUE} AND waits_after IS NOT NULL ORDER BY id LIMIT 1")


def in_order(db: peewee.Database) -> dict[str, Any] | None:
    """The jobs waiting in order: {"jobs": N, "first": {id, client, file, cause}}, None when none."""
    count = db.run_sql(_SQL_IN_ORDER[0]).fetchone()[0]
    return {"jobs": count, "first": _rows(db, _SQL_IN_ORDER[1])[0]} if count else None


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
    """The programs that must be beating: the notifier only with an API, the reporter only with SMTP;
    the dashboard always, as supervisord.conf runs it (bin/start with it) and nothing in the
    configuration turns it off: one left FATAL at start (actions on without a password) never beats."""
    programs = ["scanner", "watcher", "router", "dashboard"]
    if config.api.endpoint:
        programs.append("notifier")
    if config.smtp.host:
        programs.append("reporter")
    return programs


def waiting_states(config: Config) -> dict[str, str]:
    """The states whose jobs wait for a program, with the column saying since when: routed only
    with an API (without one it is final)."""
    return WAITING_SINCE if config.api.endpoint else {s: c for s, c in WAITING_SINCE.items() if s != "routed"}


def http_status(status: dict[str, Any]) -> int:
    """/healthz's status for a verdict: 200 while the files flow (OK, or WARNING with the problems
    and warnings in the body), 503 when something critical stops them or the state is unknown."""
    return 200 if status["nagios"] <= WARNING else 503


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
        waiting = waiting_states(config)
        for state, column in waiting.items():
            since = db.run_sql(_SQL_OLDEST[state], (state,)).fetchone()[0]
            if since is not None:
                oldest[state] = round(now - since, 1)
        today = _rows(db, "SELECT client_folder AS client, state, count(*) AS jobs FROM jobs WHERE detected_at >= ? "
                          "GROUP BY client_folder, state ORDER BY client_folder, state", (midnight.timestamp(),))
        scans = _rows(db, "SELECT kind, actor, started_at, finished_at - started_at AS seconds, files_seen, "
                          "jobs_created, slow, timed_out FROM scans ORDER BY started_at DESC LIMIT 5")
        beats = _rows(db, "SELECT program, host, pid, started_at, beat_at, clock_skew, config, config_since "
                          "FROM heartbeats ORDER BY program, host")
        config_problems = _rows(db, "SELECT host, file, problem, since FROM config_problems ORDER BY since")
        errors = _rows(db, "SELECT id, failed_at, client_folder AS client, file_name AS file, failed_step AS step, "
                           "last_error AS reason FROM jobs WHERE state = 'failed' ORDER BY failed_at DESC LIMIT 5")
        stuck_total, stuck = alerts.stuck(db, now, config.alerts.stuck_after, limit=5,
                                          notify=bool(config.api.endpoint))
        detector = _rows(db, "SELECT host, holder, since, lease_until FROM leaders WHERE role = 'detect'")
        report = _rows(db, "SELECT day, state, attempts, last_error, sent_at FROM reports "
                           "WHERE state != 'pending' OR attempts > 0 ORDER BY day DESC LIMIT 1")
        silences = expectations.current(db, config.expect, now, config.report.timezone)
        ordered = in_order(db)
        pauses = steering.Pauses.read(db, now).all
        parked = waits.parked(db)
        remotes = remote_record.latest(db)
    for scan in scans:
        scan["seconds"] = None if scan["seconds"] is None else round(scan["seconds"], 3)
    for beat in beats:
        beat["age"] = round(now - beat["beat_at"], 1)
    status = {"time": now, "database": str(config.paths.database), "jobs_by_state": by_state,
              "jobs_waiting": sum(by_state.get(state, 0) for state in waiting), "oldest_waiting_seconds": oldest,
              "today": today, "last_scans": scans, "programs": beats,
              "last_errors": errors, "stuck_jobs": stuck_total, "stuck": stuck,
              "last_report": report[0] if report else None, "silences": silences, "in_order": ordered,
              "pauses": [{"kind": p.kind, "name": p.name, "until": p.until, "reason": p.reason, "actor": p.actor,
                          "since": p.created} for p in pauses],
              "parked": [{"cause": g.cause, "destination": g.destination, "jobs": g.jobs, "since": g.since}
                         for g in sorted(parked, key=lambda g: (g.cause, g.destination))],
              "unmatched": unmatched_today(today, config),
              "detecting": detector[0] if detector and detector[0]["lease_until"] >= now else None,
              "remotes": remotes}
    graded = graded_problems(status, config)
    status["problems"] = [text for _, text in graded]
    status["config_problems"] = config_problems
    status["warnings"] = ([silence_text(s, tz) for s in silences] + [f"paused: {p.line()}" for p in pauses]
                          + unmatched_text(status["unmatched"]) + config_warnings(beats, config_problems))
    status["healthy"] = not status["problems"]
    status["nagios"] = max([level for level, _ in graded] + [WARNING] * bool(status["warnings"]) + [OK])
    status["verdict"] = VERDICTS[status["nagios"]]
    return status


def unusable(reason: str) -> dict[str, Any]:
    """The verdict when the database cannot be read: UNKNOWN to Nagios, one line saying why."""
    return {"healthy": False, "nagios": UNKNOWN, "verdict": VERDICTS[UNKNOWN], "problems": [reason], "warnings": []}


def graded_problems(status: dict[str, Any], config: Config) -> list[tuple[int, str]]:
    """Why the pipeline is unhealthy, one line each with its grade (CRITICAL or WARNING)."""
    found = []
    beats = status["programs"]
    for program in required_programs(config):
        if not any(_program(b["program"]) == program for b in beats):
            found.append((_GRADE_WHEN_GONE.get(program, CRITICAL), f"{program}: not running (no heartbeat)"))
    for beat in beats:
        if beat["age"] > SILENT_AFTER:
            found.append((_GRADE_WHEN_GONE.get(_program(beat["program"]), CRITICAL),
                          f"{beat['program']} (pid {beat['pid']} on {beat['host']}): silent for {beat['age']:.0f}s"))
        elif abs(beat["clock_skew"]) > config.database.max_clock_skew:
            found.append((CRITICAL, f"{beat['program']} (pid {beat['pid']} on {beat['host']}): its clock is "
                                    f"{beat['clock_skew']:+.1f}s off the database's (database.max_clock_skew "
                                    f"{config.database.max_clock_skew:g}s); run NTP on every host"))
    if not config.paths.hot_folder.is_dir():
        # The watcher waits for it to be there again; meanwhile nothing can be dropped or detected.
        found.append((CRITICAL, f"the hot folder {config.paths.hot_folder} is missing (deleted or moved away)"))
    if status["stuck_jobs"]:
        first = status["stuck"][0]
        found.append((WARNING, f"{status['stuck_jobs']} job(s) waiting longer than {config.alerts.stuck_after:g}s; "
                               f"the oldest: {first['client']}/{first['file']} ({first['state']}) "
                               f"{first['reason'] or ''}".rstrip()))
    report = status["last_report"]
    if report and report["state"] == "pending" and report["last_error"]:
        found.append((WARNING, f"the report for {report['day']} could not be sent ({report['attempts']} attempts): "
                               f"{report['last_error']}"))
    return found


def config_warnings(beats: list[dict], problems: list[dict]) -> list[str]:
    """A configuration file a reload found invalid (per host: each host reads its own), and
    programs running different configurations (docs/design.md#changing-the-configuration-live)."""
    hosts = {b["host"] for b in beats} | {p["host"] for p in problems}
    found = [f"the config on disk is invalid since {utc_text(p['since'])} UTC: {p['problem']}"
             + (f" (host {p['host']})" if len(hosts) > 1 else "") for p in problems]
    runs: dict[str, list[dict]] = {}
    for beat in beats:
        if beat["config"] and beat["age"] <= SILENT_AFTER:
            runs.setdefault(beat["config"], []).append(beat)
    if len(runs) > 1:
        found.append("programs run different configurations: " + "; ".join(
            f"{fingerprint} since {utc_text(min(b['config_since'] for b in group))} UTC by "
            + ", ".join(f"{b['program']}@{b['host']}" for b in group)
            for fingerprint, group in sorted(runs.items(), key=lambda r: min(b["config_since"] for b in r[1]))))
    return found


def _program(instance: str) -> str:
    """The program a heartbeat's name is an instance of: router_00 is a router."""
    return instance.partition("_")[0]


def unmatched_today(today: list[dict], config: Config) -> dict[str, int]:
    """Today's jobs of each client folder that no rule names (routed by no rule, whatever
    ``router.unmatched`` does with them)."""
    counts: dict[str, int] = {}
    for row in today:
        if not rules.names_client(config.routes, row["client"]):
            counts[row["client"]] = counts.get(row["client"], 0) + row["jobs"]
    return counts


def unmatched_text(unmatched: dict[str, int]) -> list[str]:
    """ "3 jobs today from clients no rule names: NEWCLIENT" (none: no line)."""
    if not unmatched:
        return []
    return [f"{sum(unmatched.values())} job(s) today from clients no rule names: {', '.join(sorted(unmatched))}"]


def silence_text(silence: dict, tz: zoneinfo.ZoneInfo) -> str:
    """ "no file from RANK since 2026-07-15 10:02; expected within 2 h on weekdays 08:00-18:00"."""
    since = (f"since {dt.datetime.fromtimestamp(silence['last_seen'], tz):%Y-%m-%d %H:%M}"
             if silence["last_seen"] else "yet")
    return f"no file from {silence['client']} {since}; {silence['expected']}"
