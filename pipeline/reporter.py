"""The reporter: the nightly report, failure alerts, retention and the WAL checkpoint (SPEC §8, §9).

No cron: it sleeps until ``report.time`` in ``report.timezone`` (zoneinfo, so the nights the
clocks change are handled) and sends the report of the day that just ended. Every day it runs
has a row in ``reports`` created ahead of time, so a report missed while the reporter was down
is simply overdue when it starts again, and is sent then, once (reporting/ledger.py says how).

After a day's report is sent (or recorded, when mail is not configured) it prunes jobs older than
``report.retention_days`` and checkpoints the WAL. Between reports it looks for new failures every
ALERT_POLL seconds when alerts are configured.

Time and sleep are injected (``clock``, ``sleep``), so tests run a night, or a daylight-saving
change, in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import socket
import time
from typing import Callable

from . import cli, jobs, store
from . import heartbeat as heartbeat_module
from .config import Config
from .program import Program
from .reporting import alerts, ledger, mail, render
from .reporting.figures import Day, figures as day_figures

log = logging.getLogger(__name__)

ALERT_POLL = 15.0        # seconds between looks for new failures
IDLE_WAKE = 3600.0       # wake at least this often even with nothing due (a clock set forward)

_SQL_PRUNE_SCANS = "DELETE FROM scans WHERE started_at < ?"
_SQL_PRUNE_ALERTS = "DELETE FROM alerts WHERE at < ?"


class Reporter(Program):
    def __init__(self, config: Config, db: store.Engine, actor: str, stopper: cli.Stopper | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] | None = None):
        self.config = config
        self.db = db
        self.actor = actor
        self.stopper = stopper or cli.Stopper()
        self.clock = clock
        self._sleep = sleep
        # Why reports / alerts cannot be mailed (None: they can).
        self.reports_off = mail.configured(config.smtp, config.report.recipients, "[report] recipients")
        self.alerts_off = mail.configured(config.smtp, config.alerts.recipients, "[alerts] recipients")

    @property
    def sender(self) -> str:
        return self.config.report.sender or self.config.smtp.username or f"hotfolder-pipeline@{socket.getfqdn()}"

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        r = self.config.report
        if self.reports_off:
            log.warning("reports will be recorded but not sent: %s", self.reports_off)
        if self.alerts_off:
            log.info("alerts are not configured: %s", self.alerts_off)
        log.info("daily report at %s %s", r.time.strftime("%H:%M"), r.timezone)

    def step(self, now: float) -> float:
        """Send what is due; then sleep until the next thing is."""
        self.tick()
        return max(self.next_wake() - self.clock(), 0.0) if not self.once else math.inf

    def tick(self) -> None:
        """One round: schedule the days, send the due reports, maintain, then alerts."""
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

    def next_wake(self) -> float:
        """When something may be due: the next report, the next look for failures, or IDLE_WAKE."""
        now = self.clock()
        wake = min(ledger.next_due(self.db) or now + IDLE_WAKE, now + IDLE_WAKE)
        if not self.alerts_off:
            wake = min(wake, now + ALERT_POLL)
        return wake

    def sleep(self, seconds: float, heartbeat) -> None:
        """Sleep on the (injected) wall clock, so a stop or a clock change is seen; tests give a
        ``sleep`` that only moves their clock."""
        if self._sleep:
            self._sleep(seconds)
            return
        deadline = self.clock() + seconds
        while not self.stopper.requested and self.clock() < deadline:
            super().sleep(min(deadline - self.clock(), heartbeat_module.INTERVAL), heartbeat)

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
            numbers = self.figures(Day.of(claim.day, r.timezone))
            ledger.save_figures(self.db, claim, numbers)
        if self.reports_off:
            ledger.recorded(self.db, claim, f"not sent: {self.reports_off}")
            log.warning("report for %s recorded, not sent: %s (%d processed, %d errors)",
                        claim.day, self.reports_off, numbers["processed"], numbers["errors"])
            return 1
        msg = mail.build(render.report(numbers, self.config), self.sender, r.recipients, self.clock())
        try:
            mail.send(self.config.smtp, msg)
        except mail.MailError as e:
            retry_at = ledger.failed(self.db, claim, str(e), self.clock())
            log.error("report for %s not sent (attempt %d): %s; trying again at %s", claim.day,
                      claim.attempts + 1, e, _utc(retry_at))
            return 0
        ledger.sent(self.db, claim, r.recipients, self.clock())
        log.info("report for %s sent to %s: %d processed, %d errors", claim.day, ", ".join(r.recipients),
                 numbers["processed"], numbers["errors"])
        return 1

    def figures(self, day: Day) -> dict:
        """The day's figures with this configuration (bin/report uses the same)."""
        return day_figures(self.db, day, highlight=self.config.report.highlight_destination,
                       scan_interval=self.config.detect.scan_interval, now=self.clock())

    def maintain(self, now: float) -> None:
        """Retention (jobs, scans and alerts older than retention_days), then a WAL checkpoint."""
        days = self.config.report.retention_days
        cutoff = now - days * 86400
        pruned = jobs.prune(self.db, cutoff)
        with self.db.write():
            scans = self.db.run_sql(_SQL_PRUNE_SCANS, (cutoff,)).rowcount
            self.db.run_sql(_SQL_PRUNE_ALERTS, (cutoff,))
        log.info("retention: pruned %d jobs and %d scans older than %d days", pruned, scans, days)
        try:
            self.db.checkpoint()
        except Exception as e:
            if self.db.transient(e) is None:
                raise
            log.warning("WAL checkpoint skipped, the database stayed busy (%s); SQLite's own "
                        "checkpoints carry on meanwhile", e)

    # -- alerts -----------------------------------------------------------------------------------

    def alert(self, now: float) -> None:
        """Send an alert when there are new failures or newly stuck jobs and the interval allows."""
        claimed = alerts.claim(self.db, self.actor, now, self.config.alerts, notify=bool(self.config.api.endpoint))
        if claimed is None:
            return
        alert_id, found = claimed
        recipients = self.config.alerts.recipients
        msg = mail.build(render.alert(found.asdict(), self.config), self.sender, recipients, self.clock())
        try:
            mail.send(self.config.smtp, msg)
        except mail.MailError as e:
            alerts.failed(self.db, alert_id, str(e))
            log.error("alert (%d failed, %d stuck) not sent: %s; trying again in %.0fs", found.failed_total,
                      found.stuck_total, e, min(alerts.RETRY, self.config.alerts.min_interval))
            return
        alerts.sent(self.db, alert_id, self.clock())
        log.warning("alert sent to %s: %d failed, %d stuck", ", ".join(recipients), found.failed_total,
                    found.stuck_total)


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def main(argv: list[str] | None = None) -> int:
    return cli.serve("reporter", "Send the daily report at report.time, failure alerts, and prune old jobs.",
                     lambda ctx: Reporter(ctx.config, ctx.db, ctx.actor, ctx.stopper), argv)


if __name__ == "__main__":
    raise SystemExit(main())
