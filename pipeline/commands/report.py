"""``bin/report``: render a day's report without waiting for the reporter, and send it if asked.

The figures are the ones recorded when the day's report was made (they survive retention), or
computed now from the table for a day not reported yet (``--fresh`` always computes them).
Without ``--preview``, ``--text`` or ``--send`` the plain-text part goes to standard output.

Exit codes: those of every program (pipeline/cli.py), plus 75 when ``--send`` could not hand the
message to the SMTP server (temporary: try again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path

from .. import cli
from ..reporting import figures, ledger, mail, render
from ..reporting.figures import Day

log = logging.getLogger(__name__)

EXIT_NOT_SENT = 75   # sysexits EX_TEMPFAIL


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("report", "Render a day's report (as the nightly email shows it) and optionally send it.",
                   once=False)
    p.add_argument("--date", type=_date, metavar="YYYY-MM-DD",
                   help="the day, in report.timezone (default: yesterday)")
    p.add_argument("--preview", type=Path, metavar="FILE.html", help="write the HTML part to this file")
    p.add_argument("--text", type=Path, metavar="FILE.txt", help="write the plain-text part to this file")
    p.add_argument("--send", action="store_true",
                   help="send it to report.recipients now (the reporter will not send that day again)")
    p.add_argument("--fresh", action="store_true",
                   help="compute the figures from the table even when the day's report recorded them")
    return p


def run(ctx: cli.Context) -> int:
    args, cfg = ctx.args, ctx.config
    now = time.time()
    date = args.date or Day.containing(now, cfg.report.timezone).date - dt.timedelta(days=1)
    numbers = None if args.fresh else ledger.stored_figures(ctx.db, date)
    if numbers is None:
        numbers = figures.of_day(ctx.db, cfg, Day.of(date, cfg.report.timezone), now)
    rendered = render.report(numbers, cfg)
    if args.preview:
        args.preview.write_text(rendered.html, encoding="utf-8")
        log.info("report for %s written to %s", date, args.preview)
    if args.text:
        args.text.write_text(rendered.text, encoding="utf-8")
        log.info("plain-text report for %s written to %s", date, args.text)
    if not (args.preview or args.text or args.send):
        sys.stdout.write(rendered.text)
    if args.send:
        why = mail.configured(cfg.smtp, cfg.report.recipients, "[report] recipients")
        if why:
            log.error("cannot send: %s", why)
            return cli.EXIT_CONFIG
        try:
            mail.send(cfg.smtp, mail.build(rendered, mail.sender(cfg), cfg.report.recipients, now))
        except mail.MailError as e:
            log.error("report for %s not sent: %s", date, e)
            return EXIT_NOT_SENT
        ledger.sent_by_hand(ctx.db, date, numbers, cfg.report.recipients, ctx.actor, time.time())
        log.info("report for %s sent to %s", date, ", ".join(cfg.report.recipients))
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return cli.run_program("report", build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
