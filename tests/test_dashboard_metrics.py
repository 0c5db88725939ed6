"""/metrics' round-3 families (docs/design.md#operating-it): the drop-to-routed histogram kept in
tallies (pruning never lowers it), the waiting jobs by destination and cause, and the Grafana
dashboard in docs/grafana/, whose every expression must name only metrics /metrics serves."""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, FakeClock
from helpers import report_day
from pipeline import jobs as jobs_module
from pipeline.jobs import Jobs
from pipeline.web import app as web_app
from test_dashboard import filled, route_everything  # noqa: F401 - a fixture

GRAFANA = ROOT / "docs" / "grafana"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "time", "max", "min", "count", "vector", "or",
                "and", "without", "avg", "le", "on", "ignoring", "offset"}


def scrape(tree, db) -> str:
    response = web_app.create_app(tree.config, db, environ={}).test_client().get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def samples(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def test_the_latency_histogram_counts_each_routing_in_its_bucket_and_survives_pruning(tree, db):
    clock = FakeClock(report_day.at(9))
    for i, waited in enumerate([0.05, 0.3, 0.3, 20, 5000]):
        report_day.put_job(tree, Jobs(db, "test:1", clock), clock, "RANK", f"{i}.json", drop=report_day.at(9),
                           detected=report_day.at(9, 0, 0.01), routed=report_day.at(9) + waited, to=("Monday Rank",))
    text = scrape(tree, db)
    buckets = {dict(k)["le"]: v for k, v in samples(text, "hotfolder_route_latency_seconds_bucket").items()}
    assert (buckets["0.1"], buckets["0.25"], buckets["0.5"], buckets["10"], buckets["30"], buckets["3600"],
            buckets["+Inf"]) == (1, 1, 3, 3, 4, 4, 5)
    assert samples(text, "hotfolder_route_latency_seconds_count") == {(): 5}
    assert samples(text, "hotfolder_route_latency_seconds_sum")[()] == 5020.65
    assert jobs_module.prune(db, report_day.at(9) + 10 ** 8) == 5
    assert scrape(tree, db) .count("hotfolder_route_latency_seconds_count 5.0") == 1


def test_waiting_jobs_are_counted_by_destination_and_cause(tree, db):
    tree.write_config(router="create_folders = false")
    tree.drop("RANK", "a.json")
    tree.drop("RANK", "b.json")
    tree.drop("LOREAL", "c.json")
    route_everything(tree, db)
    waiting = samples(scrape(tree, db), "hotfolder_waiting_jobs")
    assert waiting == {(("cause", "destination"), ("destination", "Monday Rank")): 2,
                       (("cause", "destination"), ("destination", "LOREAL/IN")): 1}


def expressions(dashboard: dict) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        found += [t["expr"] for t in panel.get("targets", [])]
        for inner in panel.get("panels", []):
            found += [t["expr"] for t in inner.get("targets", [])]
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: its words that are not functions, keywords, label
    names in by (...) or label values and durations."""
    bare = re.sub(r'"[^"]*"', "", expr)                       # label values
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    bare = re.sub(r"\{[^}]*\}", "", bare)                     # label matchers
    bare = re.sub(r"\[[^\]]*\]", "", bare)                    # ranges
    return {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare) if w not in PROMQL_WORDS}


def test_every_grafana_expression_names_only_metrics_that_metrics_serves(tree, db, filled):  # noqa: F811
    served = {s.name for f in text_string_to_metric_families(scrape(tree, db)) for s in f.samples}
    served |= {line.split()[2] for line in scrape(tree, db).splitlines() if line.startswith("# TYPE")}
    boards = sorted(GRAFANA.glob("*.json"))
    assert boards
    for board in boards:
        exprs = expressions(json.loads(board.read_text()))
        assert len(exprs) >= 10, board
        for expr in exprs:
            names = metric_names(expr)
            assert names and names <= served, (board.name, expr, names - served)
    assert metric_names('sum by (client) (rate(hotfolder_nope_total{outcome="x"}[5m]))') == {"hotfolder_nope_total"}
