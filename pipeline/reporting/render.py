"""Turning figures into email bodies: jinja2 templates, autoescaped, with the CSS inlined.

Titles, job categories, file names and error reasons come from untrusted job files, so the HTML
templates are autoescaped. They are written with a ``<style>`` block for readability; css-inline
then moves every rule into ``style`` attributes and drops the block, because Gmail and Outlook
ignore or strip ``<style>`` elements.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

import css_inline
import jinja2

from .. import charts, command, trends
from ..config import Config
from ..times import duration

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("pipeline.reporting", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def number(value: int) -> str:
    return f"{value:,}"


def text_bar(count: int, largest: int, width: int = 40) -> str:
    """A bar of block characters for the plain-text part; any non-zero count shows at least one."""
    if not count or not largest:
        return ""
    return "\u2588" * max(1, round(width * count / largest))


_env.filters.update(seconds=duration, percent=percent, number=number, text_bar=text_bar)
_env.globals["command"] = command      # help text names the command the operator runs


def _branding(config: Config) -> dict:
    r = config.report
    return {"title": r.title, "brand": r.brand_color, "accent": r.accent_color, "footer": r.footer}


def _render(name: str, context: dict) -> tuple[str, str]:
    html = _inliner.inline(_env.get_template(f"{name}.html.j2").render(context))
    text = _env.get_template(f"{name}.txt.j2").render(context)
    return html, text


def _one_line(text: str) -> str:
    """Header values come from configuration: a stray newline must not become a new header."""
    return " ".join(text.split())


def report(figures: dict, config: Config) -> Rendered:
    """The daily report's subject, HTML and plain text."""
    day = dt.date.fromisoformat(figures["day"])
    zone = zoneinfo.ZoneInfo(config.report.timezone)
    silences = [{"client": s["client"], "rule": s["rule"],
                 "since": dt.datetime.fromtimestamp(s["last_seen"], zone).strftime("%Y-%m-%d %H:%M")
                 if s["last_seen"] else "none yet"} for s in figures.get("silences", [])]
    context = {"f": figures, "b": _branding(config), "day_label": f"{day:%A} {day.day} {day:%B %Y}",
               "silences": silences,
               "largest_hour": max((h["count"] for h in figures["hourly"]), default=0),
               "scan_interval": config.detect.scan_interval, "charts": _trend_charts(figures)}
    html, text = _render("report", context)
    return Rendered(_one_line(f"{config.report.title} - {figures['day']}"), html, text)


def _trend_charts(figures: dict) -> list:
    """The dashboard's trend charts for the report's day (none for figures kept before they existed)."""
    kept = figures.get("trends")
    if not kept:
        return []
    return charts.trend_charts(trends.from_figures(kept["hours"]), trends.from_figures(kept["days"]),
                               hours_title=figures["day"], days_title=f"14 days to {figures['day']}")


def alert(findings: dict, config: Config) -> Rendered:
    """An alert's subject, HTML and plain text (``findings`` from alerts.Findings.asdict)."""
    zone = zoneinfo.ZoneInfo(config.report.timezone)

    def local(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M:%S")

    context = {"a": findings, "b": _branding(config), "local": local, "timezone": config.report.timezone,
               "stuck_after": config.alerts.stuck_after}
    html, text = _render("alert", context)
    parts = []
    if findings["failed_total"]:
        parts.append(f"{findings['failed_total']} failed job{'s' * (findings['failed_total'] != 1)}")
    if findings["stuck_total"]:
        parts.append(f"{findings['stuck_total']} stuck job{'s' * (findings['stuck_total'] != 1)}")
    silent = [s["client"] for s in findings.get("silenced", []) if s["resumed_at"] is None]
    if silent:
        parts.append(f"no file from {', '.join(silent)}")
    back = [s["client"] for s in findings.get("resumed", []) + findings.get("silenced", []) if s["resumed_at"]]
    if back:
        parts.append(f"{', '.join(back)} resumed")
    strangers = len(findings.get("unmatched", []))     # their names are folder names: in the body only
    if strangers:
        parts.append(f"jobs from {strangers} client{'s' * (strangers != 1)} no rule names")
    paused = [p["target"] for p in findings.get("long_pauses", [])]
    if paused:
        parts.append(f"still paused: {', '.join(paused)}")
    return Rendered(_one_line(f"Alert: {' and '.join(parts)} - {config.report.title}"), html, text)
