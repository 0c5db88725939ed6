"""Expected arrivals (docs/design.md#reports-and-alerts): [[expect]] rules with an injected clock across a window's start and
end, a weekend and both daylight-saving changes in Europe/London; the alerts go to a real HTTP
server standing in for a webhook channel. Also bin/status (and --nagios) and the daily report."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from helpers import report_day
from helpers.api_server import ApiServer
from helpers.smtp_server import free_port
from conftest import FakeClock
from pipeline import cli
from pipeline.config import ConfigError
from pipeline.heartbeat import Heartbeat
from pipeline.jobs import Jobs
from pipeline.reporter import Reporter
from pipeline.reporting import figures
from pipeline.reporting.figures import Day
from pipeline.store.models import Silence

LONDON = report_day.LONDON
WEEKDAYS = 'days = ["mon", "tue", "wed", "thu", "fri"]\n'


@pytest.fixture
def hook():
    server = ApiServer()
    yield server
    server.close()


def london(y, m, d, hh, mm=0) -> float:
    return dt.datetime(y, m, d, hh, mm, tzinfo=LONDON).timestamp()


def utc(*args) -> float:
    return dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()


def expect(tree, monkeypatch, hook, rule: str, extra: str = "") -> None:
    port = hook.url.split(":")[2].split("/")[0]
    monkeypatch.setenv("ALERT_HOOK", f"json://127.0.0.1:{port}/hook")
    tree.write_config(extra=f'[alerts]\nurls = ["env:ALERT_HOOK"]\nmin_interval = 60\n{extra}\n[[expect]]\n{rule}')


def arrive(tree, db, client: str, at: float, name: str | None = None) -> None:
    clock = FakeClock(at)
    report_day.put_job(tree, Jobs(db, "test:1", clock), clock, client, name or f"{client}-{at:.0f}.json",
                       drop=at, detected=at, routed=at + 1, to=("Monday Rank",))


def said(hook: ApiServer) -> list[str]:
    return [json.loads(r.body)["message"] for r in hook.received]


def at_times(tree, db, hook, times) -> list[int]:
    """How many alerts the webhook had after a reporter ran at each of ``times``."""
    counts = []
    for t in times:
        Reporter(tree.config, db, "reporter:1", clock=FakeClock(t)).run(once=True)
        counts.append(len(hook.received))
    return counts


def test_one_alert_when_a_client_falls_silent_in_its_window_and_one_when_it_resumes(tree, db, hook, monkeypatch):
    expect(tree, monkeypatch, hook, f'clients = ["rank"]\nwithin = 7200\nhours = "08:00-18:00"\n{WEEKDAYS}')
    arrive(tree, db, "RANK", report_day.at(10, 2))               # Wednesday 15 July 2026, 10:02
    assert at_times(tree, db, hook, [report_day.at(11), report_day.at(12, 1)]) == [0, 0]
    assert at_times(tree, db, hook, [report_day.at(12, 3), report_day.at(12, 30), report_day.at(13)]) == [1, 1, 1]
    [message] = said(hook)
    assert "no file from RANK since 2026-07-15 10:02:00; expected within 2 h on weekdays 08:00-18:00" in message
    assert json.loads(hook.received[0].body)["title"].startswith("Alert: no file from RANK")
    [silence] = Silence.select()
    assert (silence.due_at, silence.resumed_at) == (report_day.at(12, 2), None)

    arrive(tree, db, "Rank", report_day.at(13, 10))              # matching is case-insensitive
    assert at_times(tree, db, hook, [report_day.at(13, 11), report_day.at(14), report_day.at(15)]) == [2, 2, 2]
    assert "RANK resumed: a file at 2026-07-15 13:10:00, the first since 2026-07-15 10:02:00" in said(hook)[1]
    assert Silence.get().resumed_at == report_day.at(13, 10)


def test_nothing_is_expected_outside_the_window_and_each_window_starts_afresh(tree, db, hook, monkeypatch):
    expect(tree, monkeypatch, hook, f'clients = ["RANK"]\nwithin = 7200\nhours = "08:00-18:00"\n{WEEKDAYS}')
    arrive(tree, db, "RANK", report_day.at(17))                  # due 19:00, after the window's end
    thursday = report_day.DAY + dt.timedelta(days=1)
    evening = [report_day.at(18, 30), report_day.at(23), report_day.london(thursday, 7, 59)]
    # The file of the evening before does not count for the morning: 2 h from 08:00.
    morning = [report_day.london(thursday, 9, 59), report_day.london(thursday, 10, 0, 1)]
    assert at_times(tree, db, hook, evening + morning) == [0, 0, 0, 0, 1]
    assert Silence.get().due_at == report_day.london(thursday, 10)


def test_a_weekend_is_not_a_silence_and_monday_morning_is(tree, db, hook, monkeypatch):
    expect(tree, monkeypatch, hook, f'clients = ["RANK"]\nwithin = 3600\nhours = "08:00-18:00"\n{WEEKDAYS}')
    arrive(tree, db, "RANK", london(2026, 7, 17, 17, 30))        # Friday
    weekend = [london(2026, 7, 17, 19), london(2026, 7, 18, 9), london(2026, 7, 18, 15), london(2026, 7, 19, 12),
               london(2026, 7, 20, 8, 59)]
    assert at_times(tree, db, hook, weekend + [london(2026, 7, 20, 9, 1)]) == [0, 0, 0, 0, 0, 1]
    assert "no file from RANK since 2026-07-17 17:30:00" in said(hook)[0]


@pytest.mark.parametrize("day, before, due", [
    # Spring forward, Sunday 29 March 2026: 08:00 is BST, 07:00 UTC; the file is due at 08:00 UTC.
    ((2026, 3, 29), utc(2026, 3, 29, 7, 59), utc(2026, 3, 29, 8)),
    # Fall back, Sunday 25 October 2026: 08:00 is GMT again, 08:00 UTC; due at 09:00 UTC.
    ((2026, 10, 25), utc(2026, 10, 25, 8, 59), utc(2026, 10, 25, 9)),
])
def test_windows_keep_their_wall_clock_hours_across_both_daylight_saving_changes(tree, db, hook, monkeypatch,
                                                                                 day, before, due):
    expect(tree, monkeypatch, hook, 'clients = ["RANK"]\nwithin = 3600\nhours = "08:00-18:00"\n')
    eve = dt.date(*day) - dt.timedelta(days=1)
    arrive(tree, db, "RANK", report_day.london(eve, 17, 30))      # due after that window closed
    assert at_times(tree, db, hook, [report_day.london(eve, 20), before, due]) == [0, 0, 1]
    assert Silence.get().due_at == due


def test_an_overnight_window_across_the_spring_change(tree, db, hook, monkeypatch):
    expect(tree, monkeypatch, hook, 'clients = ["LOREAL"]\nwithin = 3600\nhours = "22:00-06:00"\n')
    arrive(tree, db, "LOREAL", utc(2026, 3, 28, 23, 30))          # 23:30 GMT on Saturday
    # Due 00:30 UTC; the window runs to 06:00 BST (05:00 UTC), a night of seven hours.
    assert at_times(tree, db, hook, [utc(2026, 3, 29, 0, 29), utc(2026, 3, 29, 0, 31)]) == [0, 1]
    arrive(tree, db, "LOREAL", utc(2026, 3, 29, 4, 15))         # due 05:15 UTC, after the window's end
    assert at_times(tree, db, hook, [utc(2026, 3, 29, 4, 30), utc(2026, 3, 29, 5, 30)]) == [2, 2]


def test_a_rule_naming_a_client_never_seen_is_valid_and_alerts_once(tree, db, hook, monkeypatch):
    expect(tree, monkeypatch, hook, f'clients = ["NEWCO"]\nwithin = 3600\nhours = "08:00-18:00"\n')
    arrive(tree, db, "RANK", report_day.at(7))                   # the pipeline is in use
    assert at_times(tree, db, hook, [report_day.at(8, 59), report_day.at(9, 1), report_day.at(17)]) == [0, 1, 1]
    assert "no file from NEWCO yet; expected within 1 h 08:00-18:00" in said(hook)[0]


def test_two_reporters_record_and_say_each_silence_once(tree, db, hook, monkeypatch):
    expect(tree, monkeypatch, hook, 'clients = ["RANK"]\nwithin = 600\n')
    arrive(tree, db, "RANK", report_day.at(10))
    for actor in ("reporter:1", "reporter:2"):
        Reporter(tree.config, db, actor, clock=FakeClock(report_day.at(11))).run(once=True)
    assert len(hook.received) == 1 and Silence.select().count() == 1


def test_silences_without_any_alert_destination_are_still_recorded(tree, db):
    tree.write_config(extra='[[expect]]\nclients = ["RANK"]\nwithin = 600\n')
    arrive(tree, db, "RANK", report_day.at(10))
    Reporter(tree.config, db, "reporter:1", clock=FakeClock(report_day.at(11))).run(once=True)
    assert [(s.client, s.opened_alert) for s in Silence.select()] == [("RANK", None)]


def test_the_daily_report_lists_the_clients_silent_at_its_end(tree, db, monkeypatch, hook):
    expect(tree, monkeypatch, hook, 'clients = ["RANK"]\nwithin = 600\n')
    arrive(tree, db, "RANK", report_day.at(10))
    reporter = Reporter(tree.config, db, "reporter:1", clock=FakeClock(report_day.at(11)))
    reporter.run(once=True)
    text = tree.run("report", "--date", report_day.DAY.isoformat(), "--fresh").stdout
    assert "SILENT CLIENTS" in text and "RANK  last file 2026-07-15 10:00  (within 600s)" in text
    numbers = figures.of_day(db, tree.config, Day.of(report_day.DAY - dt.timedelta(days=1), "Europe/London"),
                             report_day.at(11))
    assert numbers["silences"] == []                             # the day before: nobody was silent


# -- bin/status ---------------------------------------------------------------------------------------

def status(tree, *args):
    proc = tree.run("status", *args, check=False)
    return proc.returncode, proc.stdout


def silent_rank(tree, db, beat=True):
    tree.hot.mkdir(parents=True, exist_ok=True)
    tree.write_config(extra='[[expect]]\nclients = ["RANK"]\nwithin = 60\n')
    arrive(tree, db, "RANK", time.time() - 7200)
    if beat:
        for name in ("scanner", "watcher", "router_00", "dashboard"):
            Heartbeat(db, name).beat(force=True)


def test_bin_status_shows_a_silence_as_a_warning(tree, db):
    silent_rank(tree, db)
    code, out = status(tree)
    assert code == 0 and "HEALTHY" in out                        # a silence is a warning, not unhealthy
    assert "WARNING   no file from RANK since " in out and "; expected within 1 min" in out
    data = json.loads(status(tree, "--json")[1])
    assert data["silences"][0]["client"] == "RANK" and data["warnings"]


def test_nagios_says_warning_for_a_silence_with_perfdata(tree, db):
    silent_rank(tree, db)
    code, out = status(tree, "--nagios")
    assert code == 1 and len(out.splitlines()) == 1
    summary, perf = out.strip().split(" | ")
    assert summary.startswith("PIPELINE WARNING - no file from RANK since ")
    assert "routed=1;;;0" in perf.split() and "silences=1;;;0" in perf.split() and "stuck=0;;;0" in perf.split()


def test_nagios_ok_critical_and_unknown(tree, db):
    tree.hot.mkdir(parents=True, exist_ok=True)
    for name in ("scanner", "watcher", "router_00", "dashboard"):
        Heartbeat(db, name).beat(force=True)
    code, out = status(tree, "--nagios")
    assert code == 0 and out.startswith("PIPELINE OK - 0 job(s) waiting, 4 program(s) beating | ")
    db.execute_sql("DELETE FROM heartbeats WHERE program = 'router_00'")
    code, out = status(tree, "--nagios")
    assert code == 2 and out.startswith("PIPELINE CRITICAL - router: not running (no heartbeat)")
    if tree.engine == "sqlite":
        tree.config.paths.database.unlink()
    else:                                       # a server that does not answer
        tree.database = f"postgresql://pipeline@127.0.0.1:{free_port()}/pipeline"
        tree.write_config()
    code, out = status(tree, "--nagios")
    said = "database unusable" if tree.engine == "sqlite" else "database unreachable"
    assert code == 3 and out.startswith(f"PIPELINE UNKNOWN - {said}: ")
    tree.config_path.write_text("[[expect]]\nclients = [\"RANK\"]\nwithin = 60\nhours = \"9-5\"\n")
    code, out = status(tree, "--nagios")
    assert code == 3 and out.startswith("PIPELINE UNKNOWN - configuration error: ") and "[[expect]] #1 hours" in out


# -- bad rules ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, message", [
    ('within = 60\n', "[[expect]] #1 clients: required"),
    ('clients = ["RANK"]\n', "[[expect]] #1 within: required"),
    ('clients = []\nwithin = 60\n', "[[expect]] #1 clients: an empty list expects nothing"),
    ('clients = "RANK"\nwithin = 60\n', "[[expect]] #1 clients: expected a list of non-empty strings"),
    ('clients = ["RANK"]\nwithin = 0\n', "[[expect]] #1 within: expected a finite number above 0, got 0"),
    ('clients = ["RANK"]\nwithin = nan\n', "[[expect]] #1 within: expected a finite number above 0"),
    ('clients = ["RANK"]\nwithin = "2h"\n', "[[expect]] #1 within: expected a finite number above 0"),
    ('clients = ["RANK"]\nwithin = 60\nhours = "8-18"\n', '[[expect]] #1 hours: expected a window such as "08:00-18:00"'),
    ('clients = ["RANK"]\nwithin = 60\nhours = "08:00-25:00"\n', "[[expect]] #1 hours: expected a window"),
    ('clients = ["RANK"]\nwithin = 60\nhours = "08:60-18:00"\n', "[[expect]] #1 hours: expected a window"),
    ('clients = ["RANK"]\nwithin = 60\nhours = "08:00-08:00"\n', "[[expect]] #1 hours: the window '08:00-08:00' is empty"),
    ('clients = ["RANK"]\nwithin = 60\nhours = 8\n', "[[expect]] #1 hours: expected a string"),
    ('clients = ["RANK"]\nwithin = 60\ndays = []\n', "[[expect]] #1 days: expected a non-empty list of days"),
    ('clients = ["RANK"]\nwithin = 60\ndays = ["monday"]\n', "[[expect]] #1 days: expected days among mon, tue"),
    ('clients = ["RANK"]\nwithin = 60\ndays = "mon"\n', "[[expect]] #1 days: expected a non-empty list"),
    ('clients = ["RANK"]\nwithin = 36001\nhours = "08:00-18:00"\n',
     "[[expect]] #1 within: 36001 seconds is longer than the window 08:00-18:00 (36000 seconds)"),
    ('clients = ["RANK"]\nwithin = 60\nhour = "08:00-18:00"\n', "[[expect]] #1 hour: unknown key"),
])
def test_a_bad_rule_is_a_config_error_naming_the_key(tree, rule, message):
    with pytest.raises(ConfigError) as e:
        tree.write_config(extra=f"[[expect]]\n{rule}")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_bad_window_stops_the_reporter_with_one_line_and_exit_78(tree):
    tree.config_path.write_text('[[expect]]\nclients = ["RANK"]\nwithin = 60\nhours = "18:00"\n')
    proc = tree.run("reporter", "--once", check=False)
    assert proc.returncode == cli.EXIT_CONFIG
    [line] = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert "[[expect]] #1 hours: expected a window such as" in line
    proc = tree.run("check-config", str(tree.config_path), check=False)
    assert proc.returncode == cli.EXIT_CONFIG and "[[expect]] #1 hours" in proc.stderr


def test_good_rules_are_accepted(tree):
    tree.write_config(extra='[[expect]]\nclients = ["RANK", "oliver"]\nwithin = 7200\nhours = "22:00-06:00"\n'
                            'days = ["Sat", "sun"]\n[[expect]]\nclients = ["X"]\nwithin = 60\nhours = "00:00-24:00"\n')
    first, second = tree.config.expect
    assert first.clients == ("RANK", "OLIVER") and first.hours == (1320, 360) and first.days == {5, 6}
    assert first.label == "within 7200s 22:00-06:00 sat,sun" and second.hours is None
