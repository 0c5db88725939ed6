"""``/metrics``: the job table in Prometheus' text format (docs/design.md#operating-it).

Gauges are read from the table at each scrape; counters come from ``tallies``, which the
transitions bump in their own transactions and pruning never touches, so a counter never goes
down. Times are timestamps, not ages (an age is ``time() - metric`` in PromQL, and a timestamp
stays true between scrapes). No label names a file: a label per file would be a series per job.
"""

from __future__ import annotations

import json
from typing import Callable, Iterator

import peewee
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import CollectorRegistry

from .. import __version__
from .. import health, waits
from ..jobs import ROUTE_LATENCY_BUCKETS
from ..states import STATES
from ..config import Config

# tallies.name -> (metric name without _total, help, label names in the order jobs.py writes them)
COUNTERS = {
    "finished": ("hotfolder_jobs_finished", "Jobs that reached an outcome: routed (delivered), notified "
                 "(the API accepted it), failed or dismissed (by a person); a notified job has counted once "
                 "as routed before",
                 ("client", "outcome")),
    "deliveries": ("hotfolder_deliveries", "Copies committed to a destination, by route name", ("destination",)),
    "notify_attempts": ("hotfolder_notify_attempts", "Calls to the API, by result: accepted, retried or failed",
                        ("result",)),
}


def tallies(db: peewee.Database) -> dict[str, dict[tuple[str, ...], int]]:
    """Each counter's value by its label values."""
    out: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in COUNTERS}
    for name, labels, value in db.run_sql("SELECT name, labels, value FROM tallies"):
        if name in out:
            key = tuple(str(v) for v in json.loads(labels))
            out[name][key] = out[name].get(key, 0) + value
    return out


def last_scans(db: peewee.Database) -> dict[str, float]:
    """When the last scan of each kind started."""
    return dict(db.run_sql("SELECT kind, max(started_at) FROM scans GROUP BY kind").fetchall())


def latency_tallies(db: peewee.Database) -> tuple[list[tuple[str, int]], float]:
    """The drop-to-routed histogram: cumulative (upper bound, count) pairs ending with +Inf, and
    the sum in seconds."""
    per_bucket: dict[str, int] = {}
    total_ms = 0
    for name, labels, value in db.run_sql("SELECT name, labels, value FROM tallies "
                                          "WHERE name IN ('route_latency', 'route_latency_ms')"):
        if name == "route_latency_ms":
            total_ms += value
        else:
            le = str(json.loads(labels)[0])
            per_bucket[le] = per_bucket.get(le, 0) + value
    running, buckets = 0, []
    for le in [f"{b:g}" for b in ROUTE_LATENCY_BUCKETS] + ["+Inf"]:
        running += per_bucket.get(le, 0)
        buckets.append((le, running))
    return buckets, total_ms / 1000


def read(db: peewee.Database, config: Config, now: float) -> tuple[dict, dict, dict, dict]:
    """Everything /metrics shows, in one read snapshot: bin/status's document, tallies, scans, and
    the latency histogram and the waiting jobs by cause."""
    names = list(dict.fromkeys(route.name for route in config.routes))
    with db.snapshot():
        more = {"latency": latency_tallies(db), "waiting": waits.waiting(db, names, notify=bool(config.api.endpoint))}
        return health.gather(db, config, now), tallies(db), last_scans(db), more


class Collector:
    """Builds every family from what ``read`` returns, read together."""

    def __init__(self, snapshot: Callable[[], tuple[dict, dict, dict, dict]]):
        self.snapshot = snapshot

    def collect(self) -> Iterator:
        status, counts, scans_by_kind, more = self.snapshot()
        jobs = GaugeMetricFamily("hotfolder_jobs", "Jobs in the table by state", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], status["jobs_by_state"].get(state, 0))
        yield jobs
        oldest = GaugeMetricFamily("hotfolder_oldest_waiting_seconds",
                                   "How long the oldest job of each waiting state has waited", labels=["state"])
        for state, seconds in status["oldest_waiting_seconds"].items():
            oldest.add_metric([state], seconds)
        yield oldest
        yield GaugeMetricFamily("hotfolder_stuck_jobs", "Jobs waiting longer than alerts.stuck_after",
                                value=status["stuck_jobs"])
        paused = GaugeMetricFamily("hotfolder_paused", "1 for each pause in force: a destination (route name), a "
                                   "client, routing or notification (name empty)", labels=["kind", "name"])
        for pause in status["pauses"]:
            paused.add_metric([pause["kind"], pause["name"]], 1)
        yield paused
        for name, (metric, help_text, labels) in COUNTERS.items():
            family = CounterMetricFamily(metric, help_text, labels=list(labels))
            for values, value in sorted(counts[name].items()):
                if len(values) == len(labels):
                    family.add_metric(list(values), value)
            yield family
        beats = GaugeMetricFamily("hotfolder_program_last_heartbeat_timestamp_seconds",
                                  "When each program last beat", labels=["program", "host"])
        for beat in status["programs"]:
            beats.add_metric([beat["program"], beat["host"]], beat["beat_at"])
        yield beats
        scans = GaugeMetricFamily("hotfolder_last_scan_timestamp_seconds",
                                  "When the last scan of each kind started", labels=["kind"])
        for kind, started in sorted(scans_by_kind.items()):
            scans.add_metric([kind], started)
        yield scans
        report = GaugeMetricFamily("hotfolder_report_last_sent_timestamp_seconds", "When the last daily report went out")
        if status["last_report"] and status["last_report"]["sent_at"]:
            report.add_metric([], status["last_report"]["sent_at"])
        yield report
        buckets, seconds = more["latency"]
        yield HistogramMetricFamily("hotfolder_route_latency_seconds", "Drop to routed: from the file's last write "
                                    "to its routing, per routing", buckets=buckets, sum_value=seconds)
        waiting = GaugeMetricFamily("hotfolder_waiting_jobs", "Jobs waiting to be tried again, by what they wait on "
                                    "(destination: the route whose place failed; archive; place; api; paused; full: max_waiting; "
                                    "window: outside its hours)",
                                    labels=["destination", "cause"])
        for group in more["waiting"]:
            waiting.add_metric([group.destination, group.cause], group.jobs)
        yield waiting
        yield GaugeMetricFamily("hotfolder_healthy", "1 when bin/status calls the pipeline healthy, else 0",
                                value=int(status["healthy"]))
        yield InfoMetricFamily("hotfolder_build", "The running release", value={"version": __version__})


def registry(snapshot: Callable[[], tuple[dict, dict, dict, dict]]) -> CollectorRegistry:
    """A registry holding only the pipeline's families (no process metrics of the dashboard)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(snapshot))
    return reg
