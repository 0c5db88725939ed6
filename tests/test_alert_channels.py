"""Alert channels through Apprise (docs/design.md#reports-and-alerts): real HTTP servers on 127.0.0.1 stand in for the chat
and webhook services (Apprise ``json://`` posts to them), aiosmtpd for the email; time injected."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from helpers import report_day
from helpers.api_server import HANG, ApiServer, closed_port
from conftest import FakeClock
from pipeline import cli
from pipeline.config import ConfigError
from pipeline.jobs import Jobs
from pipeline.reporter import Reporter
from pipeline.reporting import alerts
from pipeline.store.models import Alert, AlertDelivery

SECRET = "Zq8sEcReT0kenValue"


@pytest.fixture
def hooks():
    servers = [ApiServer(), ApiServer()]
    yield servers
    for server in servers:
        server.close()


def hook_url(server: ApiServer, token: str = SECRET) -> str:
    port = server.url.split(":")[2].split("/")[0]
    return f"json://127.0.0.1:{port}/hooks/{token}"


def configure(tree, monkeypatch, inbox_port: int | None, urls: dict[str, str], extra: str = "") -> None:
    """Alerts to the given channels (each read from its environment variable) and, with a port, email."""
    for name, url in urls.items():
        monkeypatch.setenv(name, url)
    listed = ", ".join(f'"env:{name}"' for name in urls)
    email = (f'[smtp]\nhost = "127.0.0.1"\nport = {inbox_port}\nstarttls = false\n' if inbox_port else "")
    recipients = 'recipients = ["oncall@example.com"]\n' if inbox_port else ""
    tree.write_config(extra=f"{email}[alerts]\n{recipients}urls = [{listed}]\nchannel_timeout = 2\n{extra}")


def fail_one(tree, db, clock, name="one.json") -> None:
    t = clock.now
    report_day.put_job(tree, Jobs(db, "test:1", clock), clock, "RANK", name, drop=t, detected=t, failed=t + 1,
                       reason=report_day.MISSING_CODE)
    clock.advance(2)


def run(tree, db, clock) -> None:
    Reporter(tree.config, db, "reporter:1", clock=clock).run(once=True)


def posted(server: ApiServer) -> list[dict]:
    return [json.loads(r.body) for r in server.received]


def test_a_failure_reaches_every_channel_and_the_email(tree, db, inbox, hooks, monkeypatch):
    configure(tree, monkeypatch, inbox.port, {"ALERT_HOOK_A": hook_url(hooks[0]), "ALERT_HOOK_B": hook_url(hooks[1])})
    clock = FakeClock(report_day.at(12))
    fail_one(tree, db, clock)
    run(tree, db, clock)
    [mail] = [m for m in inbox.messages if m["Subject"].startswith("Alert")]
    for server in hooks:
        [body] = posted(server)
        assert body["title"] == mail["Subject"] == "Alert: 1 failed job - JSON Workflow Daily Report"
        assert "RANK/one.json  [validate]" in body["message"]
        assert server.received[0].path == f"/hooks/{SECRET}"
    assert sorted(d.state for d in AlertDelivery.select()) == ["sent"] * 3
    run(tree, db, clock)                                   # nothing new: nothing more
    assert [len(s.received) for s in hooks] == [1, 1]


def test_channels_keep_the_email_throttle(tree, db, hooks, monkeypatch):
    configure(tree, monkeypatch, None, {"ALERT_HOOK": hook_url(hooks[0])}, "min_interval = 900\n")
    clock = FakeClock(report_day.at(12))
    fail_one(tree, db, clock, "one.json")
    run(tree, db, clock)
    fail_one(tree, db, clock, "two.json")
    clock.advance(300)
    run(tree, db, clock)
    assert len(hooks[0].received) == 1                    # within min_interval
    clock.advance(600)
    run(tree, db, clock)
    first, second = posted(hooks[0])
    assert "one.json" in first["message"] and "two.json" in second["message"] and "one.json" not in second["message"]


def test_a_channel_that_is_down_is_retried_and_logged_and_the_others_are_not_held_up(tree, db, inbox, hooks,
                                                                                        monkeypatch, caplog):
    down = closed_port()
    configure(tree, monkeypatch, inbox.port, {"ALERT_DOWN": f"json://127.0.0.1:{down}/hooks/{SECRET}",
                                              "ALERT_HOOK": hook_url(hooks[0])})
    clock = FakeClock(report_day.at(12))
    fail_one(tree, db, clock)
    with caplog.at_level(logging.DEBUG):
        run(tree, db, clock)
    assert len(hooks[0].received) == 1 and len(inbox.messages) == 1
    failed = AlertDelivery.get(AlertDelivery.state == "pending")
    assert failed.attempts == 1 and failed.label.startswith("ALERT_DOWN json://127.0.0.1")
    assert "Connection error" in failed.last_error
    assert failed.next_attempt_at == clock.now + alerts.RETRY
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith("alert (1 failed, 0 stuck) not sent to ALERT_DOWN json://127.0.0.1:")
    assert "(attempt 1)" in line and "trying again in 120s" in line
    assert Alert.get().state == "sent"                     # the others have it

    # The retry goes to the failed channel alone; the others are not sent it twice.
    clock.advance(alerts.RETRY)
    run(tree, db, clock)
    assert AlertDelivery.get(AlertDelivery.id == failed.id).attempts == 2
    assert len(hooks[0].received) == 1 and len(inbox.messages) == 1


def test_a_channel_that_answers_500_is_retried_until_it_takes_the_alert(tree, db, hooks, monkeypatch):
    configure(tree, monkeypatch, None, {"ALERT_HOOK": hook_url(hooks[0])})
    hooks[0].script = [500, 503]
    clock = FakeClock(report_day.at(12))
    fail_one(tree, db, clock)
    run(tree, db, clock)
    assert Alert.get().state == "failed"                   # nobody has it yet
    clock.advance(alerts.RETRY)
    run(tree, db, clock)
    clock.advance(2 * alerts.RETRY)
    run(tree, db, clock)
    assert len(hooks[0].received) == 3
    [delivery] = AlertDelivery.select()
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("sent", 3, None)
    assert Alert.get().state == "sent"


def test_a_delivery_is_given_up_after_max_attempts(tree, db, monkeypatch):
    configure(tree, monkeypatch, None, {"ALERT_DOWN": f"json://127.0.0.1:{closed_port()}/x"})
    clock = FakeClock(report_day.at(12))
    fail_one(tree, db, clock)
    for _ in range(alerts.MAX_ATTEMPTS + 2):
        run(tree, db, clock)
        clock.advance(alerts.RETRY_CAP)
    [delivery] = AlertDelivery.select()
    assert (delivery.state, delivery.attempts) == ("failed", alerts.MAX_ATTEMPTS)


def test_a_slow_channel_does_not_delay_the_others(tree, db, inbox, hooks, monkeypatch):
    configure(tree, monkeypatch, inbox.port, {"ALERT_SLOW": hook_url(hooks[0]), "ALERT_HOOK": hook_url(hooks[1])})
    hooks[0].script = [HANG]                               # holds the request until released
    clock = FakeClock(report_day.at(12))
    fail_one(tree, db, clock)
    try:
        run(tree, db, clock)                               # returns after channel_timeout, the slow one held
        assert not hooks[0].release.is_set()
        assert len(hooks[1].received) == 1 and len(inbox.messages) == 1
        slow = AlertDelivery.get(AlertDelivery.label.startswith("ALERT_SLOW"))
        assert slow.state == "pending" and slow.attempts == 1
        assert slow.last_error and len(hooks[0].received) == 1     # it was asked, and gave no answer in time
    finally:
        hooks[0].release.set()


def test_secrets_in_channel_urls_never_reach_a_log_or_the_database(tree, db, monkeypatch, caplog):
    down = closed_port()
    configure(tree, monkeypatch, None, {"ALERT_DOWN": f"json://ops:{SECRET}x@127.0.0.1:{down}/hooks/{SECRET}",
                                        "ALERT_SLACK": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"})
    clock = FakeClock(report_day.at(12))
    fail_one(tree, db, clock)
    with caplog.at_level(logging.DEBUG):
        run(tree, db, clock)
    stored = " ".join(f"{d.label} {d.last_error} {d.findings}" for d in AlertDelivery.select())
    stored += " ".join(str(a.error) for a in Alert.select())
    for secret in (SECRET, "T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ"):
        assert secret not in caplog.text and secret not in stored
    assert "not sent to ALERT_DOWN json://" in caplog.text and "ALERT_SLACK slack://T...2" in stored


def test_the_reporter_program_sends_to_a_channel_under_once(tree, db, hooks):
    tree.write_config(extra='[alerts]\nurls = ["env:ALERT_HOOK"]\n')
    clock = FakeClock(time.time() - 10)              # the program runs on the real clock
    fail_one(tree, db, clock)
    tree.run("reporter", "--once", ALERT_HOOK=hook_url(hooks[0]))
    [body] = posted(hooks[0])
    assert "RANK/one.json" in body["message"]


@pytest.mark.parametrize("urls, env, message", [
    ('["env:ALERT_NOT_SET"]', {}, "[alerts] urls #1: the environment variable ALERT_NOT_SET is not set"),
    ('["env:ALERT_BAD"]', {"ALERT_BAD": f"nosuchservice://{SECRET}"},
     "[alerts] urls #1: the environment variable ALERT_BAD does not hold a URL Apprise can send to"),
    (f'["json://127.0.0.1/x", "nosuchservice://{SECRET}"]', {}, "[alerts] urls #2: it does not hold a URL Apprise"),
])
def test_a_channel_that_cannot_be_used_stops_the_reporter_with_exit_78_naming_the_entry(tree, urls, env, message):
    tree.write_config(extra=f"[alerts]\nurls = {urls}\n")
    proc = tree.run("reporter", "--once", check=False, **env)
    assert proc.returncode == cli.EXIT_CONFIG
    [line] = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert message in line and SECRET not in proc.stderr


@pytest.mark.parametrize("value, message", [
    ('"env:ALERT_URL"', "[alerts] urls: expected a list of non-empty strings"),
    ('["env:1BAD"]', "[alerts] urls: expected the name of an environment variable, got '1BAD'"),
    (f'["{SECRET}"]', '[alerts] urls: entry #1 is neither "env:NAME" nor a URL'),
    (f'["json://h/{SECRET}\\n"]', "[alerts] urls: entry #1 contains the control character U+000A"),
    ("[1]", "[alerts] urls: expected a list of non-empty strings"),
])
def test_bad_alert_urls_are_config_errors_that_do_not_show_the_value(tree, value, message):
    tree.config_path.write_text(f"[alerts]\nurls = {value}\n")
    with pytest.raises(ConfigError) as e:
        tree.write_config(extra=f"[alerts]\nurls = {value}\n")
    assert message in str(e.value) and SECRET not in str(e.value) and "\n" not in str(e.value)


def test_channel_timeout_must_be_a_positive_number(tree):
    with pytest.raises(ConfigError, match=r"\[alerts\] channel_timeout: expected a finite number above 0"):
        tree.write_config(extra="[alerts]\nchannel_timeout = 0\n")


def test_a_send_that_hangs_past_channel_timeout_is_given_up_while_the_others_complete():
    from pipeline.reporting import channels
    held = threading.Event()
    done = []
    try:
        results = channels.concurrently({"hangs": lambda: held.wait(60), "quick": lambda: done.append(1),
                                         "fails": lambda: 1 / 0}, timeout=0.2)
        assert not held.is_set()
    finally:
        held.set()
    assert results == {"hangs": "no answer within 0.2s", "quick": None, "fails": "division by zero"}
    assert done == [1]


def test_check_config_notes_an_unset_channel_variable_and_refuses_an_unknown_url(tree):
    tree.config_path.write_text(f'[alerts]\nurls = ["env:ALERT_UNSET_HOOK", "nosuchservice://{SECRET}"]\n')
    proc = tree.run("check-config", str(tree.config_path), check=False)
    assert proc.returncode == cli.EXIT_CONFIG
    assert "note: [alerts] urls #1: environment variable ALERT_UNSET_HOOK is not set" in proc.stdout
    assert "[alerts] urls #2: it does not hold a URL Apprise can send to" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
