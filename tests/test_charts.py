"""Charts drawn on the server as SVG (docs/design.md#charts): axes, labels, gaps, escaping; the
overview and the daily report draw the same ones from the same figures."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from helpers import report_day
from pipeline import charts, trends
from pipeline.reporting import figures, render
from pipeline.web import app as web_app

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('x')</script>&\"é"


def parsed(svg) -> ET.Element:
    """The chart as XML: it must be well-formed, whatever its labels hold."""
    return ET.fromstring(str(svg))


def marks(root: ET.Element) -> list[tuple]:
    """Each bar's and point's place and title."""
    return [(m.get("y") or m.get("cy"), m.find(f"{SVG}title").text)
            for m in root.iter() if m.tag in (f"{SVG}rect", f"{SVG}circle") and m.find(f"{SVG}title") is not None]


def texts(root: ET.Element) -> list[str]:
    return [t.text for t in root.iter(f"{SVG}text")]


@pytest.mark.parametrize("value, top", [(0, 1), (0.3, 0.5), (1, 1), (7, 10), (11, 20), (240, 250), (1001, 2000)])
def test_the_y_axis_ends_at_a_round_number_at_or_above_the_largest_value(value, top):
    assert charts.nice_top(value) == pytest.approx(top)


def test_bars_have_a_title_a_y_axis_spread_x_labels_and_a_value_per_bar():
    labels = [f"{h:02d}:00" for h in range(24)]
    root = parsed(charts.bars(list(range(24)), labels, "Routed per hour"))
    said = texts(root)
    assert said[0] == "Routed per hour"
    assert ["0", "12.5", "25"] == said[1:4]                         # 0, half and the round top
    shown = [t for t in said if t.endswith(":00")]
    assert shown[0] == "00:00" and 4 <= len(shown) <= charts.MAX_LABELS
    bars = list(root.iter(f"{SVG}rect"))
    assert len(bars) == 24 and bars[23].find(f"{SVG}title").text == "23:00: 23 jobs"
    assert float(bars[0].get("height")) == 0 and float(bars[23].get("height")) > float(bars[1].get("height"))


def test_lines_break_where_a_bucket_has_no_value_and_carry_a_legend():
    root = parsed(charts.lines([("p50", [1, 2, None, 4]), ("p95", [None, None, None, None])],
                               ["a", "b", "c", "d"], "Latency"))
    lines = list(root.iter(f"{SVG}polyline"))
    assert [len(p.get("points").split()) for p in lines] == [2, 1]       # a gap at c; p95 has none
    assert {"p50", "p95"} <= set(texts(root))
    assert [c.find(f"{SVG}title").text for c in root.iter(f"{SVG}circle")] == ["p50 a: 1 s", "p50 b: 2 s", "p50 d: 4 s"]
    assert "5 s" in texts(root)                                      # the round top above 4 s


def test_hostile_labels_and_titles_stay_escaped_in_every_chart():
    drawn = [charts.bars([1], [HOSTILE], HOSTILE, unit=HOSTILE), charts.lines([(HOSTILE, [1.0])], [HOSTILE], HOSTILE),
             charts.spark([1, 2], HOSTILE)]
    for svg in drawn:
        assert "<script>" not in str(svg)
        root = parsed(svg)
        assert root.find(f"{SVG}title").text == HOSTILE               # the text itself, once unescaped


def test_the_overview_shows_the_four_trend_charts(tree, db):
    report_day.routed_at(tree, db, [(9, 10), (10, 20)])
    now = report_day.at(11, 30)
    page = web_app.create_app(tree.config, db, environ={}, clock=lambda: now).test_client().get("/")
    body = page.get_data(as_text=True)
    for title in ("Routed per hour, last 24 h", "Drop to routed per hour, last 24 h", "Routed per day, last 14 days",
                  "Drop to routed per day, last 14 days"):
        assert f'aria-label="{title}"' in body
    assert "09:00: 1 jobs" in body and "07-15: 2 jobs" in body and "p95 10:00: 2.0 min" in body
    assert "<script" not in body


def test_the_daily_report_draws_the_dashboards_charts_from_its_own_figures(tree, db):
    report_day.routed_at(tree, db, [(9, 10), (10, 20)])
    day = figures.Day.of(report_day.DAY, "Europe/London")
    numbers = figures.of_day(db, tree.config, day, report_day.at(23, 59))
    assert [b["jobs"] for b in numbers["trends"]["hours"]][9:11] == [1, 1] and len(numbers["trends"]["days"]) == 14
    dashboard = charts.trend_charts(trends.from_figures(numbers["trends"]["hours"]),
                                    trends.from_figures(numbers["trends"]["days"]))
    rendered = render.report(numbers, tree.config)
    assert rendered.html.count("<svg") == 4
    drawn = re.findall(r"<svg.*?</svg>", rendered.html, re.S)
    for mine, theirs in zip(drawn, dashboard):          # the same bars and points, under the report's titles
        assert marks(parsed(mine)) == marks(parsed(theirs)) and marks(parsed(mine))
    assert "THE LAST 14 DAYS" in rendered.text and "07-15         2   2 min / 2 min" in rendered.text
    del numbers["trends"]                                       # figures kept before charts existed
    assert "<svg" not in render.report(numbers, tree.config).html


def test_the_dashboard_measures_the_ended_days_ahead_so_the_first_overview_reads_only_today(tree, db):
    report_day.routed_at(tree, db, [(9, 10)])
    now = report_day.at(11, 30) + 86400                    # the routed day has ended
    app = web_app.create_app(tree.config, db, environ={}, clock=lambda: now)
    app.extensions["hotfolder_warm_up"]()
    db.run_sql("DELETE FROM jobs")                         # what was measured is kept; today is read again
    body = app.test_client().get("/").get_data(as_text=True)
    assert "07-15: 1 jobs" in body and "07-16: 0 jobs" in body
