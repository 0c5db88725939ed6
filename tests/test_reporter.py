"""The reporter and bin/report against a real SMTP server (aiosmtpd on 127.0.0.1), time injected (docs/design.md#reports-and-alerts)."""

from __future__ import annotations

import datetime as dt
import html as html_module
import json
import logging
import re
import time

import pytest

from helpers import report_day
from helpers.smtp_server import Inbox, free_port, self_signed, start_server
from conftest import FakeClock
from pipeline import cli
from pipeline.jobs import Jobs
from pipeline.store.models import Alert, AlertDelivery, Job, Report
from pipeline.reporter import Reporter

UTC = dt.timezone.utc


def utc(*args) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


def mail_config(tree, port: int, extra: str = "", detect: str = "", smtp: str = "starttls = false\n") -> None:
    tree.write_config(detect=detect, extra=f"""
[report]
sender = "pipeline@example.com"
recipients = ["ops@example.com", "lead@example.com"]
{extra}
[smtp]
host = "127.0.0.1"
port = {port}
{smtp}""")


def reporter(tree, db, clock, stopper=None, sleep=None) -> Reporter:
    return Reporter(tree.config, db, "reporter:1", stopper, clock=clock, sleep=sleep)


def running_on(tree, db, day: dt.date = report_day.DAY) -> None:
    """A reporter ran during ``day``, so the day has its row (a new database starts with today)."""
    reporter(tree, db, FakeClock(report_day.london(day, 12))).run(once=True)


def parts(msg) -> tuple[str, str]:
    """(plain text, HTML) of a multipart/alternative message."""
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    return text, html


def rows(db) -> list[tuple]:
    return db.run_sql("SELECT day, state, sent_at, attempts FROM reports ORDER BY day").fetchall()


# -- the report's content -----------------------------------------------------------------------------

def test_the_email_shows_the_known_days_figures_in_both_parts(tree, db, clock, inbox):
    mail_config(tree, inbox.port, detect="min_file_age = 0.3\nscan_interval = 600\n")
    report_day.build(tree, Jobs(db, "test:1", clock), clock)
    clock.now = report_day.at(10)                    # on the day: its report is not due yet
    reporter(tree, db, clock).run(once=True)
    assert inbox.messages == []
    clock.now = report_day.END + 1
    reporter(tree, db, clock).run(once=True)

    [msg] = inbox.messages
    assert msg["Subject"] == "JSON Workflow Daily Report - 2026-07-15"
    assert msg["To"] == "ops@example.com, lead@example.com"
    assert msg["From"] == "pipeline@example.com"
    text, html = parts(msg)
    for line in ("Files processed:  7", "Errors:           2", "Success rate:     71.4%", "Uptime:           3.6%",
                 "Average processing time:        246 ms", "Drop-to-routed latency p50:     500 ms",
                 "Drop-to-routed latency p95:     3 h 20 min", "Detected by realtime:           5",
                 "Detected by startup scan:       1", "Detected by periodic scan:      1",
                 "Scans completed:                4", "Slow scans:                     1 (1 timed out)"):
        assert line in text, line
    assert _squeeze(text).count("RANK 3 3 1 0 PRODUCTION (2), CELTRA (1)") == 1
    assert "OLIVER 2 0 1 0 CELTRA (1), DIGITAL (1)" in _squeeze(text)
    assert "BISSELL 1 0 0 1 ORDER (1)" in _squeeze(text)
    assert "LOREAL 1 0 0 1 (none) (1)" in _squeeze(text)
    assert f"Monday Rank 3 files {tree.dest('Monday Rank')}/" in _squeeze(text)
    assert f"Celtra 2 files {tree.dest('Celtra')}/" in _squeeze(text)
    assert "09:00 2 " in _squeeze(text) and "12:00 0" in _squeeze(text) and "23:00 1 " in _squeeze(text)
    assert "14:10:00 BISSELL/f.json [route] " + report_day.OFFLINE in _squeeze(text)
    assert "11:05:00 LOREAL/e.json [validate] " + report_day.MISSING_CODE in _squeeze(text)

    cells = _cells(html)
    assert cells[0] == "JSON Workflow Daily Report Wednesday 15 July 2026 · Europe/London (24 hours) · uptime 3.6%"
    for row in (["7 Files processed", "2 Errors", "71.4% Success rate", "3.6% Uptime"],
                ["RANK", "3", "3", "1", "0", "PRODUCTION (2), CELTRA (1)"],
                ["OLIVER", "2", "0", "1", "0", "CELTRA (1), DIGITAL (1)"],
                ["Monday Rank", f"{tree.dest('Monday Rank')}/", "3"],
                ["14:10:00", "BISSELL", "f.json", "route", report_day.OFFLINE],
                ["Drop-to-routed latency, p95", "3 h 20 min"], ["Scans completed", "4"]):
        assert _contains_run(cells, row), row
    assert "Errors (last 2 of 2)" in _squeeze(_strip_tags(html))

    # The figures are kept with the day's row.
    report = Report.get(Report.day == "2026-07-15")
    assert (report.state, report.attempts, report.sent_at) == ("sent", 1, report_day.END + 1)
    assert json.loads(report.figures)["processed"] == 7


def test_untrusted_text_is_escaped_and_the_styles_are_inline(tree, db, clock, inbox):
    mail_config(tree, inbox.port, extra='title = "<script>alert(1)</script>"\nfooter = "Ops & <b>friends</b>"\n'
                                         'brand_color = "#000000"\naccent_color = "#FFC407"\n')
    j = Jobs(db, "test:1", clock)
    t = report_day.at(12)
    report_day.put_job(tree, j, clock, "RANK", "good.json", category="<img src=x onerror=alert(2)>",
                       drop=t, detected=t, routed=t + 1, to=("Monday Rank",))
    report_day.put_job(tree, j, clock, "RANK", "<i>x.json", drop=t, detected=t, failed=t + 2,
                       reason="<a href='http://evil'>click</a>")
    running_on(tree, db)
    clock.now = report_day.END
    reporter(tree, db, clock).run(once=True)

    [msg] = inbox.messages
    text, html = parts(msg)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html.lower() and "&lt;IMG SRC=X ONERROR=ALERT(2)&gt;" in html   # categories are upper-cased
    assert "<i>x" not in html and "&lt;i&gt;x.json" in html
    assert "<a href" not in html and "Ops &amp; &lt;b&gt;friends&lt;/b&gt;" in html
    assert "<style" not in html.lower()
    assert 'style="' in html and "background-color: #000000" in html and "color: #FFC407" in html
    assert html.count('style="') > 50
    assert msg["Subject"] == "<script>alert(1)</script> - 2026-07-15"     # a header is not HTML
    assert "<script>alert(1)</script>" in text


# -- when it is sent ------------------------------------------------------------------------------------

def run_until(tree, db, clock: FakeClock, until: float) -> list[float]:
    """Run the real loop with a sleep that only advances the clock, until ``until``."""
    stopper = cli.Stopper()
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if clock.now >= until:
            stopper.request()

    reporter(tree, db, clock, stopper, sleep).run()
    assert all(s >= 0 for s in sleeps)
    return sleeps


@pytest.mark.parametrize("start, until, sends", [
    # A normal night, then spring forward (the day of 29 March 2026 has 23 hours).
    (utc(2026, 3, 26, 12), utc(2026, 3, 30, 12), [
        ("2026-03-26", utc(2026, 3, 27, 0), 24), ("2026-03-27", utc(2026, 3, 28, 0), 24),
        ("2026-03-28", utc(2026, 3, 29, 0), 24), ("2026-03-29", utc(2026, 3, 29, 23), 23)]),
    # Fall back: 25 October 2026 has 25 hours; midnight moves from 23:00 to 00:00 UTC.
    (utc(2026, 10, 23, 12), utc(2026, 10, 27, 12), [
        ("2026-10-23", utc(2026, 10, 23, 23), 24), ("2026-10-24", utc(2026, 10, 24, 23), 24),
        ("2026-10-25", utc(2026, 10, 26, 0), 25), ("2026-10-26", utc(2026, 10, 27, 0), 24)]),
])
def test_the_report_goes_out_at_midnight_london_on_normal_and_daylight_saving_nights(tree, db, inbox, start,
                                                                                      until, sends):
    mail_config(tree, inbox.port)
    clock = FakeClock(start)
    run_until(tree, db, clock, until)
    done = [(r.day, r.sent_at, json.loads(r.figures)["hours"])
            for r in Report.select().where(Report.state == "sent").order_by(Report.day)]
    assert done == sends
    assert [m["Subject"][-10:] for m in inbox.messages] == [day for day, _, _ in sends]
    # The next day waits for its midnight.
    pending = Report.get(Report.state == "pending")
    assert pending.next_attempt_at > until


def test_report_time_is_honoured_in_its_time_zone(tree, db, inbox):
    mail_config(tree, inbox.port, extra='time = "07:30"\ntimezone = "America/New_York"\n')
    clock = FakeClock(utc(2026, 3, 7, 18))                # 13:00 in New York, the day before the change
    run_until(tree, db, clock, utc(2026, 3, 10, 18))
    assert [(r.day, r.sent_at) for r in Report.select().where(Report.state == "sent").order_by(Report.day)] == [
        ("2026-03-07", utc(2026, 3, 8, 11, 30)),           # 07:30 EDT, the morning clocks sprang forward
        ("2026-03-08", utc(2026, 3, 9, 11, 30)),
        ("2026-03-09", utc(2026, 3, 10, 11, 30))]


def test_a_report_missed_while_down_is_sent_once_on_start(tree, db, inbox):
    mail_config(tree, inbox.port)
    clock = FakeClock(report_day.london(dt.date(2026, 2, 5), 20))
    reporter(tree, db, clock).run(once=True)             # running on the 5th: nothing due yet
    assert inbox.messages == []
    clock.now = report_day.london(dt.date(2026, 2, 6), 9)   # down over midnight, started at 09:00
    reporter(tree, db, clock).run(once=True)
    assert [m["Subject"] for m in inbox.messages] == ["JSON Workflow Daily Report - 2026-02-05"]
    clock.advance(60)
    reporter(tree, db, clock).run(once=True)             # started again: nothing to send
    assert len(inbox.messages) == 1
    assert rows(db) == [("2026-02-05", "sent", report_day.london(dt.date(2026, 2, 6), 9), 1),
                        ("2026-02-06", "pending", None, 0)]


def test_two_reporters_started_together_send_a_missed_report_once(tree, db, inbox):
    mail_config(tree, inbox.port)
    # Yesterday (in London, by the real clock) had a reporter running: its report is overdue now.
    reporter(tree, db, FakeClock(time.time() - 86400)).run(once=True)
    assert len(Report.select()) == 1
    procs = [tree.spawn("reporter", "--once") for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert len(inbox.messages) == 1                      # each send completes before its program exits
    assert Report.select().where(Report.state == "sent").count() == 1


# -- SMTP down, STARTTLS and login ----------------------------------------------------------------------

def test_smtp_down_is_logged_recorded_and_retried_later(tree, db, caplog):
    port = free_port()                                   # nothing listens there
    mail_config(tree, port)
    running_on(tree, db, dt.date(2026, 2, 5))
    day_after = report_day.london(dt.date(2026, 2, 6), 0, 0, 5)
    clock = FakeClock(day_after)
    with caplog.at_level(logging.INFO):
        reporter(tree, db, clock).run(once=True)
    report = Report.get(Report.day == "2026-02-05")
    assert (report.state, report.attempts, report.sent_at) == ("pending", 1, None)
    assert f"127.0.0.1:{port} unreachable" in report.last_error and "refused" in report.last_error
    assert report.next_attempt_at == day_after + 60
    assert json.loads(report.figures)["day"] == "2026-02-05"
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith("report for 2026-02-05 not sent (attempt 1): SMTP server 127.0.0.1:")

    clock.advance(30)
    reporter(tree, db, clock).run(once=True)             # not due again yet: not tried
    assert Report.get(Report.day == "2026-02-05").attempts == 1

    # The loop keeps trying with growing delays, and never crashes.
    run_until(tree, db, clock, day_after + 3 * 3600)
    report = Report.get(Report.day == "2026-02-05")
    assert report.state == "pending" and report.attempts == 8
    assert report.next_attempt_at == day_after + 60 + 120 + 240 + 480 + 960 + 1920 + 3600 + 3600   # capped

    inbox = Inbox()
    controller = start_server(inbox, port)               # the server is back
    try:
        clock.now = report.next_attempt_at
        reporter(tree, db, clock).run(once=True)
    finally:
        controller.stop()
    assert [m["Subject"][-10:] for m in inbox.messages] == ["2026-02-05"]
    report = Report.get(Report.day == "2026-02-05")
    assert (report.state, report.attempts, report.last_error, report.sent_at) == ("sent", 9, None, clock.now)


@pytest.fixture
def tls_inbox(tmp_path, monkeypatch):
    """An SMTP server that requires STARTTLS and a login, with a self-signed certificate we trust."""
    cert, context = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))       # what an operator does for a private CA
    box = Inbox(password="s3cret-Pa55")
    box.port = free_port()
    controller = start_server(box, box.port, tls_context=context, require_starttls=True,
                              authenticator=box.authenticate, auth_required=True)
    yield box
    controller.stop()


def test_starttls_and_login_with_the_password_from_the_environment(tree, db, tls_inbox, monkeypatch, caplog):
    mail_config(tree, tls_inbox.port, smtp='starttls = true\nusername = "pipeline"\npassword_env = "TEST_SMTP_PW"\n')
    monkeypatch.setenv("TEST_SMTP_PW", "s3cret-Pa55")
    running_on(tree, db)
    clock = FakeClock(report_day.END + 1)
    reporter(tree, db, clock).run(once=True)
    assert tls_inbox.logins == [("pipeline", "s3cret-Pa55")]
    assert len(tls_inbox.messages) == 1

    # A wrong password: refused, recorded, retried later; the password is never written anywhere.
    monkeypatch.setenv("TEST_SMTP_PW", "wrong-Pa55word")
    clock.now = report_day.END + 86400 + 1
    with caplog.at_level(logging.DEBUG):
        reporter(tree, db, clock).run(once=True)
    report = Report.get(Report.day == "2026-07-16")
    assert report.state == "pending" and "refused the login of 'pipeline'" in report.last_error
    assert "wrong-Pa55word" not in caplog.text + report.last_error
    assert len(tls_inbox.messages) == 1


def test_plain_smtp_to_a_server_that_requires_starttls_is_refused_clearly(tree, db, tls_inbox):
    mail_config(tree, tls_inbox.port)                    # starttls = false
    running_on(tree, db)
    reporter(tree, db, FakeClock(report_day.END + 1)).run(once=True)
    report = Report.get(Report.day == "2026-07-15")
    assert report.state == "pending" and "530" in report.last_error and "STARTTLS" in report.last_error


# -- not configured, retention ---------------------------------------------------------------------------

def test_without_smtp_the_day_is_recorded_not_sent(tree, db, clock, caplog):
    report_day.build(tree, Jobs(db, "test:1", clock), clock)
    running_on(tree, db)
    clock.now = report_day.END + 1
    with caplog.at_level(logging.INFO):
        reporter(tree, db, clock).run(once=True)
    report = Report.get(Report.day == "2026-07-15")
    assert (report.state, report.sent_at, report.last_error) == ("recorded", None, "not sent: [smtp] host is empty")
    assert json.loads(report.figures)["processed"] == 7
    assert "reports will be recorded but not sent: [smtp] host is empty" in caplog.text
    assert "alerts are not configured: [smtp] host is empty" in caplog.text
    assert Alert.select().count() == 0


def test_old_jobs_are_pruned_after_the_report_and_the_figures_survive(tree, db, clock, inbox):
    mail_config(tree, inbox.port, extra="retention_days = 2\n")
    report_day.build(tree, Jobs(db, "test:1", clock), clock)
    running_on(tree, db)
    clock.now = report_day.END + 1
    reporter(tree, db, clock).run(once=True)
    assert Job.select().count() == 11                    # all younger than 2 days
    clock.now = report_day.END + 3 * 86400 + 1
    reporter(tree, db, clock).run(once=True)             # sends the 16th, 17th and 18th, then prunes
    assert len(inbox.messages) == 4
    assert [j.file_name for j in Job.select()] == ["j.json"]        # the job in flight stays
    assert db.run_sql("SELECT count(*) FROM scans").fetchone()[0] == 0
    # bin/report shows the pruned day from the figures kept with its report.
    out = tree.root / "day.html"
    tree.run("report", "--date", "2026-07-15", "--preview", str(out), "--text", str(tree.root / "day.txt"))
    assert "Files processed:  7" in (tree.root / "day.txt").read_text()
    assert _contains_run(_cells(out.read_text()), ["7 Files processed", "2 Errors"])
    fresh = tree.run("report", "--date", "2026-07-15", "--fresh").stdout
    assert "Files processed:  0" in fresh


# -- alerts ----------------------------------------------------------------------------------------------

ALERTS = '[alerts]\nrecipients = ["oncall@example.com"]\nmin_interval = 900\nstuck_after = 600\n'


def alert_config(tree, port):
    tree.write_config(extra=f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\n{ALERTS}')


def alerts_sent(inbox):
    return [m for m in inbox.messages if m["Subject"].startswith("Alert")]


def test_failures_are_alerted_at_most_once_per_interval(tree, db, clock, inbox):
    alert_config(tree, inbox.port)
    j = Jobs(db, "test:1", clock)
    t0 = report_day.at(12)
    report_day.put_job(tree, j, clock, "RANK", "one.json", drop=t0, detected=t0, failed=t0 + 1,
                       reason=report_day.MISSING_CODE)
    clock.now = t0 + 2
    reporter(tree, db, clock).run(once=True)
    [first] = alerts_sent(inbox)
    assert first["To"] == "oncall@example.com"
    assert first["Subject"] == "Alert: 1 failed job - JSON Workflow Daily Report"
    text, html = parts(first)
    assert "RANK/one.json  [validate]  " + report_day.MISSING_CODE in text and "one.json" in html

    report_day.put_job(tree, j, clock, "LOREAL", "two.json", drop=t0 + 10, detected=t0 + 10, failed=t0 + 11)
    report_day.put_job(tree, j, clock, "LOREAL", "three.json", drop=t0 + 10, detected=t0 + 10, failed=t0 + 12)
    clock.now = t0 + 300
    reporter(tree, db, clock).run(once=True)
    assert len(alerts_sent(inbox)) == 1                  # within min_interval
    clock.now = t0 + 2 + 900
    reporter(tree, db, clock).run(once=True)
    second = alerts_sent(inbox)[1]
    assert second["Subject"].startswith("Alert: 2 failed jobs")
    text, _ = parts(second)
    assert "two.json" in text and "three.json" in text and "one.json" not in text
    clock.advance(3600)
    reporter(tree, db, clock).run(once=True)
    assert len(alerts_sent(inbox)) == 2                  # nothing new
    assert [(a.state, a.failures) for a in Alert.select().order_by(Alert.id)] == [("sent", 1), ("sent", 2)]


def test_a_stuck_job_is_alerted_once_when_it_crosses_stuck_after(tree, db, clock, inbox):
    alert_config(tree, inbox.port)
    j = Jobs(db, "test:1", clock)
    t0 = report_day.at(12)
    report_day.put_job(tree, j, clock, "CIBC", "slow.json", drop=t0, detected=t0, archived=t0 + 1)
    clock.now = t0 + 300
    reporter(tree, db, clock).run(once=True)
    assert alerts_sent(inbox) == []
    clock.now = t0 + 601
    reporter(tree, db, clock).run(once=True)
    [alert] = alerts_sent(inbox)
    assert alert["Subject"].startswith("Alert: 1 stuck job")
    text, _ = parts(alert)
    assert "1 JOB WAITING longer than 10 min" in text and "CIBC/slow.json  [archived]" in text
    clock.now = t0 + 601 + 901
    reporter(tree, db, clock).run(once=True)
    assert len(alerts_sent(inbox)) == 1                  # still stuck, but not newly


def test_a_routed_job_not_notified_within_stuck_after_is_alerted_when_an_api_is_configured(tree, db, clock, inbox):
    j = Jobs(db, "test:1", clock)
    t0 = report_day.at(12)
    report_day.put_job(tree, j, clock, "CIBC", "late.json", drop=t0, detected=t0, archived=t0 + 1, routed=t0 + 2)
    clock.now = t0 + 2 + 601
    alert_config(tree, inbox.port)
    reporter(tree, db, clock).run(once=True)
    assert alerts_sent(inbox) == []                      # no API: routed is the final state
    tree.write_config(extra=f'[smtp]\nhost = "127.0.0.1"\nport = {inbox.port}\nstarttls = false\n{ALERTS}'
                            '[api]\nendpoint = "http://127.0.0.1:9/jobs"\n')
    reporter(tree, db, clock).run(once=True)
    [alert] = alerts_sent(inbox)
    assert alert["Subject"].startswith("Alert: 1 stuck job")
    text, html = parts(alert)
    assert ("CIBC/late.json  [routed]  routed but not yet notified (no attempt recorded)") in text
    assert "routed but not yet notified" in html


def test_an_alert_that_cannot_be_sent_is_recorded_and_retried(tree, db, clock, caplog):
    port = free_port()
    alert_config(tree, port)
    j = Jobs(db, "test:1", clock)
    t0 = report_day.at(12)
    report_day.put_job(tree, j, clock, "RANK", "one.json", drop=t0, detected=t0, failed=t0 + 1)
    clock.now = t0 + 2
    reporter(tree, db, clock).run(once=True)
    [alert] = Alert.select()
    assert alert.state == "failed" and "unreachable" in alert.error
    assert "alert (1 failed, 0 stuck) not sent" in caplog.text
    inbox = Inbox()
    controller = start_server(inbox, port)
    try:
        clock.advance(60)
        reporter(tree, db, clock).run(once=True)
        assert alerts_sent(inbox) == []                  # retried after alerts.RETRY, not at once
        clock.advance(61)
        reporter(tree, db, clock).run(once=True)
    finally:
        controller.stop()
    [sent] = alerts_sent(inbox)
    assert "one.json" in parts(sent)[0]
    # The same alert, delivered on its second attempt: not a second alert.
    assert [a.state for a in Alert.select().order_by(Alert.id)] == ["sent"]
    [delivery] = AlertDelivery.select()
    assert (delivery.destination, delivery.state, delivery.attempts) == ("email", "sent", 2)


# -- the commands -------------------------------------------------------------------------------------------

def test_commands_have_help(tree):
    out = tree.run("report", "--help").stdout
    for option in ("--date", "--preview", "--send", "--text", "--config"):
        assert option in out
    assert "--once" in tree.run("reporter", "--help").stdout


def test_bin_report_previews_without_smtp_and_refuses_to_send_without_it(tree, db, clock):
    report_day.build(tree, Jobs(db, "test:1", clock), clock)
    out = tree.root / "preview.html"
    tree.run("report", "--date", "2026-07-15", "--preview", str(out))
    html = out.read_text()
    assert "<style" not in html and _contains_run(_cells(html), ["7 Files processed", "2 Errors"])
    proc = tree.run("report", "--date", "2026-07-15", "--send", check=False)
    assert proc.returncode == cli.EXIT_CONFIG and "cannot send: [smtp] host is empty" in proc.stderr
    proc = tree.run("report", "--date", "15/07/2026", check=False)
    assert proc.returncode == cli.EXIT_USAGE and "YYYY-MM-DD" in proc.stderr


def test_bin_report_send_records_the_day_so_the_reporter_does_not_send_it_again(tree, db, clock, inbox):
    mail_config(tree, inbox.port)
    report_day.build(tree, Jobs(db, "test:1", clock), clock)
    running_on(tree, db)
    tree.run("report", "--date", "2026-07-15", "--send")
    [msg] = inbox.messages
    assert "Files processed:  7" in parts(msg)[0]
    clock.now = report_day.END + 1
    reporter(tree, db, clock).run(once=True)
    assert len(inbox.messages) == 1
    assert Report.get(Report.day == "2026-07-15").state == "sent"


def test_bin_report_send_with_smtp_down_exits_75(tree, db):
    mail_config(tree, free_port())
    proc = tree.run("report", "--date", "2026-07-15", "--send", check=False)
    assert proc.returncode == 75 and "not sent: SMTP server 127.0.0.1:" in proc.stderr


def test_a_day_routed_by_the_real_pipeline_is_reported(tree, db):
    tree.drop("RANK", "1.json")
    tree.drop("RANK", "2.json", {"JobSpecification": {"JobDetails": {"ClientCode": "RANK", "JobCategory": "CELTRA"}}})
    tree.drop("LOREAL", "3.json", "{not json")
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    when = db.run_sql("SELECT coalesce(routed_at, failed_at) FROM jobs").fetchall()
    days = {dt.datetime.fromtimestamp(t, report_day.LONDON).date().isoformat() for (t,) in when}
    assert len(days) == 1, "routed across midnight: run the test again"
    text = tree.run("report", "--date", days.pop()).stdout
    assert "Files processed:  3" in text and "Errors:           1" in text
    assert "RANK 2 2 1 0 CELTRA (1), PRODUCTION (1)" in _squeeze(text)   # ties by name
    assert "LOREAL 1 0 0 1 (none) (1)" in _squeeze(text)
    assert "Detected by startup scan:       3" in text


# -- helpers -----------------------------------------------------------------------------------------------

def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _strip_tags(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html).replace("&nbsp;", " ")


def _cells(html: str) -> list[str]:
    """The text of every innermost table cell, in order (HTML entities decoded)."""
    cells = []
    for match in re.finditer(r"<(td|th)\b[^>]*>((?:(?!<t[dh]\b).)*?)</\1>", html, re.S):
        text = _squeeze(html_module.unescape(_strip_tags(match.group(2))))
        if text:
            cells.append(text)
    return cells


def _contains_run(cells: list[str], run: list[str]) -> bool:
    return any(cells[i:i + len(run)] == run for i in range(len(cells)))


def test_a_client_no_rule_names_raises_one_alert_at_its_first_job_of_a_day(tree, db, clock, inbox):
    alert_config(tree, inbox.port)
    j = Jobs(db, "test:1", clock)
    t0 = report_day.at(12)
    report_day.put_job(tree, j, clock, "NEWCLIENT", "a.json", drop=t0, detected=t0, routed=t0 + 1)
    report_day.put_job(tree, j, clock, "RANK", "r.json", drop=t0, detected=t0, routed=t0 + 1)
    clock.now = t0 + 2
    reporter(tree, db, clock).run(once=True)
    [first] = alerts_sent(inbox)
    assert first["Subject"] == "Alert: jobs from 1 client no rule names - JSON Workflow Daily Report"
    text, html = parts(first)
    assert "NEWCLIENT: 1 job since" in text and "RANK" not in text and "NEWCLIENT" in html

    report_day.put_job(tree, j, clock, "NEWCLIENT", "b.json", drop=t0 + 1000, detected=t0 + 1000, routed=t0 + 1001)
    clock.now = t0 + 2000
    reporter(tree, db, clock).run(once=True)
    assert len(alerts_sent(inbox)) == 1              # its first job of the day was said already
    report_day.put_job(tree, j, clock, "NEWCLIENT", "c.json", drop=t0 + 86400, detected=t0 + 86400,
                       routed=t0 + 86401)
    clock.now = t0 + 86402
    reporter(tree, db, clock).run(once=True)
    assert len(alerts_sent(inbox)) == 2              # the next day, once more


def test_a_pause_still_in_force_after_stuck_after_is_said_once_in_an_alert(tree, db, clock, inbox):
    from pipeline import steering
    alert_config(tree, inbox.port)
    t0 = report_day.at(12)
    clock.now = t0
    steering.Steering(db, "ops@host", clock).pause("destination", "Monday Rank", reason="printer maintenance",
                                                   route_names=["Monday Rank"])
    clock.now = t0 + 60
    reporter(tree, db, clock).run(once=True)
    assert alerts_sent(inbox) == []                   # not yet past alerts.stuck_after
    clock.now = t0 + tree.config.alerts.stuck_after + 60
    reporter(tree, db, clock).run(once=True)
    [said] = inbox.messages     # (a long subject is folded after "Subject:": compared without the fold)
    assert said["Subject"].strip() == "Alert: still paused: destination Monday Rank - JSON Workflow Daily Report"
    text, _ = parts(said)
    assert "destination Monday Rank: paused by ops@host: printer maintenance, since" in text
    clock.advance(7200)
    reporter(tree, db, clock).run(once=True)
    assert len(inbox.messages) == 1                   # once
