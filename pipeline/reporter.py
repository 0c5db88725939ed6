"""The reporter: the nightly report, alerts, expected arrivals, retention and the WAL checkpoint
(docs/design.md#reports-and-alerts, docs/design.md#operating-it).

No cron: it sleeps until ``report.time`` in ``report.timezone`` (zoneinfo, so the nights the
clocks change are handled) and sends the report of the day that just ended. Every day it runs
has a row in ``reports`` created ahead of time, so a report missed while the reporter was down
is simply overdue when it starts again, and is sent then, once (reporting/ledger.py says how).

After a day's report is sent (or recorded, when mail is not configured) it prunes jobs older than
``report.retention_days`` and checkpoints the WAL. Between reports, every ALERT_POLL seconds, it
checks the ``[[expect]]`` rules (recording silences) and, when alerts go somewhere (email or
``[alerts] urls`` channels), raises and delivers alerts.

Time and sleep are injected (``clock``, ``sleep``), so tests run a night, or a daylight-saving
change, in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from functools import partial
from typing import Callable

from . import cli, jobs, retention, store
from .config import Config
from .program import Program
from .times import utc_text
from .reporting import alerts, channels, expectations, figures, ledger, mail, render
from .reporting.figures import Day

log = logging.getLogger(__name__)

ALERT_POLL = 15.0        # seconds between looks for new failures
IDLE_WAKE = 3600.0       # wake at least this often even with nothing due (a clock set forward)

_SQL_PRUNE_SCANS = "DELETE FROM scans WHERE started_at < ?"
_SQL_PRUNE_ALERTS = "DELETE FROM alerts WHERE at < ?"
_SQL_PRUNE_SILENCES = "DELETE FROM silences WHERE resumed_at < ?"


class Reporter(Program):
    def __init__(self, config: Config, db: store.Engine, actor: str, stopper: cli.Stopper | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] | None = None):
        self.config = config
        self.db = db
        self.actor = actor
        self.stopper = stopper or cli.Stopper()
        self.clock = clock
        self.injected_sleep = sleep
        self.reports_off, self.email_off, self.channels, self.alerts_off = self._derived(config)

    @staticmethod
    def _derived(config: Config) -> tuple:
        """Why reports / alerts cannot be mailed (None: they can), the alert channels, and why no
        alert can go out at all. ConfigError (a channel's variable unset): exit 78 at start."""
        reports_off = mail.configured(config.smtp, config.report.recipients, "[report] recipients")
        email_off = mail.configured(config.smtp, config.alerts.recipients, "[alerts] recipients")
        found = {c.key: c for c in channels.resolve(config.alerts.urls)}
        return reports_off, email_off, found, email_off if not found else None

    def configure(self, config: Config) -> None:
        """Report, alert and expectation settings are read where they are used; the mail and
        channels derived from them change with them."""
        derived = self._derived(config)
        self.config = config
        self.reports_off, self.email_off, self.channels, self.alerts_off = derived
        self.start()            # says again what it will send, and when

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        r = self.config.report
        if self.reports_off:
            log.warning("reports will be recorded but not sent: %s", self.reports_off)
        if self.alerts_off:
            log.info("alerts are not configured: %s", self.alerts_off)
        for channel in self.channels.values():
            log.info("alerts also go to %s", channel.label)
        log.info("daily report at %s %s", r.time.strftime("%H:%M"), r.timezone)

    def step(self, now: float) -> float:
        """Send what is due; then sleep until the next thing is."""
        self.tick()
        return max(self.next_wake() - self.clock(), 0.0) if not self.once else math.inf

    def tick(self) -> None:
        """One round: the expectations, schedule the days, send the due reports, maintain, then alerts."""
        if self.config.expect:
            self.expectations(self.clock())
        self.schedule(self.clock())
        done = 0
        while not self.stopper.requested:
            claim = ledger.claim_due(self.db, self.actor, self.clock())
            if claim is None:
                break
            try:
                done += self.handle(claim)
            except store.LeaseLost as e:
                log.warning("report for %s: %s", claim.day, e)
        if done:
            self.maintain(self.clock())
        if not self.alerts_off:
            self.alert(self.clock())
        self.deliver(self.clock())

    def next_wake(self) -> float:
        """When something may be due: the next report, the next look for failures, or IDLE_WAKE."""
        now = self.clock()
        wake = min(ledger.next_due(self.db) or now + IDLE_WAKE, now + IDLE_WAKE)
        if not self.alerts_off or self.config.expect:
            wake = min(wake, now + ALERT_POLL)
        return wake

    # -- daily reports ----------------------------------------------------------------------------

    def schedule(self, now: float) -> None:
        """Create the rows of the days up to the one whose report comes next.

        That day is today, or yesterday while its report is not yet due (``report.time`` after
        midnight). A new database starts with it; a reporter that was down fills the gap since the
        last row (at most ``retention_days`` back: older jobs are gone anyway).
        """
        r = self.config.report
        current = Day.containing(now, r.timezone)
        yesterday = Day.of(current.date - dt.timedelta(days=1), r.timezone)
        if yesterday.due_at(r.time) > now:
            current = yesterday
        latest = ledger.latest_day(self.db)
        first = current.date if latest is None else latest + dt.timedelta(days=1)
        first = max(first, current.date - dt.timedelta(days=r.retention_days))
        days = []
        while first <= current.date:
            days.append((first, Day.of(first, r.timezone).due_at(r.time)))
            first += dt.timedelta(days=1)
        if days:
            ledger.schedule(self.db, days, now)

    def handle(self, claim: ledger.Claim) -> int:
        """Compute (once), render and send a claimed report; 1 when it is done, 0 when it will retry."""
        r = self.config.report
        numbers = claim.figures
        if numbers is None:
            numbers = figures.of_day(self.db, self.config, Day.of(claim.day, r.timezone), self.clock())
            ledger.save_figures(self.db, claim, numbers)
        if self.reports_off:
            ledger.recorded(self.db, claim, f"not sent: {self.reports_off}")
            log.warning("report for %s recorded, not sent: %s (%d processed, %d errors)",
                        claim.day, self.reports_off, numbers["processed"], numbers["errors"])
            return 1
        msg = mail.build(render.report(numbers, self.config), mail.sender(self.config), r.recipients, self.clock())
        try:
            mail.send(self.config.smtp, msg)
        except mail.MailError as e:
            retry_at = ledger.failed(self.db, claim, str(e), self.clock())
            log.error("report for %s not sent (attempt %d): %s; trying again at %s", claim.day,
                      claim.attempts + 1, e, utc_text(retry_at) + "Z")
            return 0
        ledger.sent(self.db, claim, r.recipients, self.clock())
        log.info("report for %s sent to %s: %d processed, %d errors", claim.day, ", ".join(r.recipients),
                 numbers["processed"], numbers["errors"])
        return 1

    def maintain(self, now: float) -> None:
        """Retention (the files past their retentions; then jobs, scans, alerts and ended silences
        older than retention_days), then a WAL checkpoint."""
        r = self.config.report
        counts = retention.prune_files(self.config, jobs.Jobs(self.db, self.actor, self.clock), now)
        if counts:
            log.log(logging.WARNING if any(c.failed for c in counts) else logging.INFO,
                    "file retention: %s", "; ".join(map(str, counts)))
        days = r.retention_days
        cutoff = now - days * 86400
        # Files first: a job still recording a file its retention is to remove is kept meanwhile.
        pruned = jobs.prune(self.db, cutoff, keep_archives=bool(r.archive_retention_days),
                            keep_failed=bool(r.failed_retention_days))
        with self.db.write():
            scans = self.db.run_sql(_SQL_PRUNE_SCANS, (cutoff,)).rowcount
            self.db.run_sql(_SQL_PRUNE_ALERTS, (cutoff,))
            self.db.run_sql(_SQL_PRUNE_SILENCES, (cutoff,))
        log.info("retention: pruned %d jobs and %d scans older than %d days", pruned, scans, days)
        try:
            self.db.checkpoint()
        except Exception as e:
            if self.db.transient(e) is None:
                raise
            log.warning("WAL checkpoint skipped, the database stayed busy (%s); SQLite's own "
                        "checkpoints carry on meanwhile", e)

    # -- expectations and alerts ----------------------------------------------------------------

    def expectations(self, now: float) -> None:
        """Record the silences that began or ended (each alert says them once)."""
        opened, resumed = expectations.check(self.db, self.config.expect, now, self.config.report.timezone)
        if opened or resumed:
            log.warning("expected arrivals: %d client(s) fell silent, %d resumed", opened, resumed)

    def destinations(self) -> list[tuple[str, str]]:
        """Where an alert goes: (key, label) of the email and of each channel."""
        email = [] if self.email_off else [("email", ", ".join(self.config.alerts.recipients))]
        return email + [(c.key, c.label) for c in self.channels.values()]

    def alert(self, now: float) -> None:
        """Raise an alert when there is something new to say and the interval allows."""
        claimed = alerts.claim(self.db, self.actor, now, self.config.alerts, self.destinations(),
                               notify=bool(self.config.api.endpoint), rules=self.config.expect,
                               routes=self.config.routes)
        if claimed is not None:
            log.info("alert %d raised: %s", claimed[0], claimed[1].summary())

    def deliver(self, now: float) -> None:
        """Send every delivery that is due, side by side, each bounded by alerts.channel_timeout."""
        timeout = self.config.alerts.channel_timeout
        due = alerts.claim_deliveries(self.db, now, alerts.LEASE + timeout)
        if not due:
            return
        outcomes = channels.concurrently({str(d.id): partial(self.send, d) for d in due}, timeout)
        for d in due:
            error = outcomes[str(d.id)]
            if error is None:
                alerts.delivered(self.db, d, self.clock())
                log.warning("alert sent to %s: %s", d.label, d.findings.summary())
                continue
            retry_at = alerts.not_delivered(self.db, d, error, self.clock())
            again = f"trying again in {retry_at - self.clock():.0f}s" if retry_at else "given up"
            log.error("alert (%s) not sent to %s (attempt %d): %s; %s", d.findings.summary(), d.label,
                      d.attempts + 1, error, again)

    def send(self, delivery: alerts.Delivery) -> None:
        """Send one delivery (in its own thread); raises with the reason when it did not go."""
        rendered = render.alert(delivery.findings.asdict(), self.config)
        if delivery.destination == "email":
            if self.email_off:
                raise mail.MailError(f"email is no longer configured: {self.email_off}")
            mail.send(self.config.smtp, mail.build(rendered, mail.sender(self.config), self.config.alerts.recipients,
                                                   self.clock()))
            return
        channel = self.channels.get(delivery.destination)
        if channel is None:
            raise channels.ChannelError("this channel is no longer in [alerts] urls")
        channels.send(channel, rendered.subject, rendered.text, self.config.alerts.channel_timeout)


def main(argv: list[str] | None = None) -> int:
    return cli.serve("reporter", "Send the daily report at report.time, failure alerts, and prune old jobs.",
                     lambda ctx: Reporter(ctx.config, ctx.db, ctx.actor, ctx.stopper), argv)


if __name__ == "__main__":
    raise SystemExit(main())
