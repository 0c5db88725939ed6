"""Peewee models of the tables (``sqlite.sql`` beside this module), for the command-line tools and reports.

The DDL is the source of truth; ``tests/test_schema.py`` fails when these drift from it.
The hot path (claims and transitions) uses pre-written SQL in ``jobs.py`` instead.
"""

from __future__ import annotations

import peewee

database_proxy = peewee.DatabaseProxy()


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class Job(BaseModel):
    uuid = peewee.TextField(unique=True)
    state = peewee.TextField()
    source_path = peewee.TextField()
    client_folder = peewee.TextField()
    file_name = peewee.TextField()
    size = peewee.IntegerField()
    mtime_ns = peewee.IntegerField()
    ctime_ns = peewee.IntegerField()
    device = peewee.IntegerField()
    inode = peewee.IntegerField()
    sha256 = peewee.TextField(null=True)
    client_code = peewee.TextField(null=True)
    job_category = peewee.TextField(null=True)
    studio_code = peewee.TextField(null=True)
    title = peewee.TextField(null=True)
    detected_by = peewee.TextField()
    detected_at = peewee.FloatField()
    archived_at = peewee.FloatField(null=True)
    routed_at = peewee.FloatField(null=True)
    notified_at = peewee.FloatField(null=True)
    failed_at = peewee.FloatField(null=True)
    updated_at = peewee.FloatField()
    attempts = peewee.IntegerField(default=0)
    claims = peewee.IntegerField(default=0)
    next_attempt_at = peewee.FloatField()
    lease_owner = peewee.TextField(null=True)
    lease_token = peewee.TextField(null=True)
    last_error = peewee.TextField(null=True)
    failed_step = peewee.TextField(null=True)
    archive_path = peewee.TextField(null=True)
    failed_path = peewee.TextField(null=True)
    order_key = peewee.TextField(null=True)
    waits_after = peewee.IntegerField(null=True)
    waits_on = peewee.TextField(null=True)
    released_at = peewee.FloatField(null=True)
    dismissed_at = peewee.FloatField(null=True)

    class Meta:
        table_name = "jobs"


class JobEvent(BaseModel):
    job = peewee.ForeignKeyField(Job, backref="events", column_name="job_id", on_delete="CASCADE")
    at = peewee.FloatField()
    from_state = peewee.TextField(null=True)
    to_state = peewee.TextField()
    actor = peewee.TextField()
    detail = peewee.TextField(null=True)

    class Meta:
        table_name = "job_events"


class Delivery(BaseModel):
    job = peewee.ForeignKeyField(Job, backref="deliveries", column_name="job_id", on_delete="CASCADE")
    name = peewee.TextField()
    path = peewee.TextField()
    action = peewee.TextField()
    delivered_at = peewee.FloatField()

    class Meta:
        table_name = "deliveries"


class Scan(BaseModel):
    kind = peewee.TextField()
    actor = peewee.TextField()
    started_at = peewee.FloatField()
    finished_at = peewee.FloatField(null=True)
    files_seen = peewee.IntegerField(default=0)
    jobs_created = peewee.IntegerField(default=0)
    slow = peewee.IntegerField(default=0)
    timed_out = peewee.IntegerField(default=0)

    class Meta:
        table_name = "scans"


class Leader(BaseModel):
    role = peewee.TextField(primary_key=True)
    host = peewee.TextField()
    holder = peewee.TextField()
    since = peewee.FloatField()
    lease_until = peewee.FloatField()

    class Meta:
        table_name = "leaders"


class ConfigProblem(BaseModel):
    host = peewee.TextField()
    file = peewee.TextField()
    problem = peewee.TextField()
    since = peewee.FloatField()
    seen_at = peewee.FloatField()

    class Meta:
        table_name = "config_problems"
        primary_key = peewee.CompositeKey("host", "file")


class ConfigReload(BaseModel):
    requested_at = peewee.FloatField()
    host = peewee.TextField()
    actor = peewee.TextField()

    class Meta:
        table_name = "config_reloads"


class DailyFigures(BaseModel):
    """An ended day's chart figures, kept once measured (pipeline/trends.py)."""
    zone = peewee.TextField()
    day = peewee.TextField()
    jobs = peewee.IntegerField()
    p50 = peewee.FloatField(null=True)
    p95 = peewee.FloatField(null=True)
    measured_at = peewee.FloatField()

    class Meta:
        table_name = "daily_figures"
        primary_key = peewee.CompositeKey("zone", "day")


class RemoteSeen(BaseModel):
    """A remote destination's last success and last error, as the routers saw them."""
    remote = peewee.TextField(primary_key=True)
    last_success = peewee.FloatField(null=True)
    last_error = peewee.TextField(null=True)
    last_error_at = peewee.FloatField(null=True)

    class Meta:
        table_name = "remotes"


class Place(BaseModel):
    """Places a router's batch has taken in a folder with a max_waiting (docs/design.md#flow-control)."""
    folder = peewee.TextField()
    owner = peewee.TextField()
    taken = peewee.IntegerField()
    until = peewee.FloatField()

    class Meta:
        table_name = "places"
        primary_key = peewee.CompositeKey("folder", "owner")


class Heartbeat(BaseModel):
    program = peewee.TextField()
    host = peewee.TextField()
    pid = peewee.IntegerField()
    started_at = peewee.FloatField()
    beat_at = peewee.FloatField()
    clock_skew = peewee.FloatField(default=0)
    config = peewee.TextField(default="")
    config_since = peewee.FloatField(default=0)

    class Meta:
        table_name = "heartbeats"
        primary_key = peewee.CompositeKey("program", "host")


class Report(BaseModel):
    kind = peewee.TextField()
    day = peewee.TextField()
    state = peewee.TextField(default="pending")
    created_at = peewee.FloatField()
    next_attempt_at = peewee.FloatField()
    claimed_by = peewee.TextField(null=True)
    claimed_at = peewee.FloatField(null=True)
    lease_token = peewee.TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)
    sent_at = peewee.FloatField(null=True)
    recipients = peewee.TextField(null=True)
    figures = peewee.TextField(null=True)

    class Meta:
        table_name = "reports"
        indexes = ((("kind", "day"), True),)


class Alert(BaseModel):
    at = peewee.FloatField()
    actor = peewee.TextField()
    state = peewee.TextField()
    covered_until = peewee.FloatField()
    failures = peewee.IntegerField()
    stuck = peewee.IntegerField()
    recipients = peewee.TextField()
    sent_at = peewee.FloatField(null=True)
    error = peewee.TextField(null=True)

    class Meta:
        table_name = "alerts"


class AlertDelivery(BaseModel):
    alert_id = peewee.IntegerField()
    destination = peewee.TextField()
    label = peewee.TextField()
    state = peewee.TextField()
    attempts = peewee.IntegerField()
    next_attempt_at = peewee.FloatField()
    lease_token = peewee.TextField(null=True)
    last_error = peewee.TextField(null=True)
    sent_at = peewee.FloatField(null=True)
    findings = peewee.TextField()

    class Meta:
        table_name = "alert_deliveries"


class Silence(BaseModel):
    rule = peewee.TextField()
    client = peewee.TextField()
    last_seen = peewee.FloatField(null=True)
    due_at = peewee.FloatField()
    opened_at = peewee.FloatField()
    resumed_at = peewee.FloatField(null=True)
    opened_alert = peewee.IntegerField(null=True)
    resumed_alert = peewee.IntegerField(null=True)

    class Meta:
        table_name = "silences"


class ErrorLogRecord(BaseModel):
    job_id = peewee.IntegerField()
    name = peewee.TextField()
    record = peewee.TextField()

    class Meta:
        table_name = "error_log_outbox"


class Tally(BaseModel):
    name = peewee.TextField()
    labels = peewee.TextField()
    value = peewee.IntegerField()

    class Meta:
        table_name = "tallies"
        primary_key = peewee.CompositeKey("name", "labels")
        without_rowid = True


class Pause(BaseModel):
    kind = peewee.TextField()
    name = peewee.TextField()
    until = peewee.FloatField(null=True)
    reason = peewee.TextField(null=True)
    actor = peewee.TextField()
    created = peewee.FloatField()

    class Meta:
        table_name = "pauses"


class SteeringEvent(BaseModel):
    at = peewee.FloatField()
    actor = peewee.TextField()
    action = peewee.TextField()
    target = peewee.TextField()
    detail = peewee.TextField(null=True)

    class Meta:
        table_name = "steering_events"


class Redelivery(BaseModel):
    job = peewee.ForeignKeyField(Job, backref="redeliveries", column_name="job_id", on_delete="CASCADE")
    destination = peewee.TextField(null=True)
    notify = peewee.IntegerField(default=0)
    state = peewee.TextField(default="pending")
    actor = peewee.TextField()
    requested_at = peewee.FloatField()
    next_attempt_at = peewee.FloatField()
    lease_owner = peewee.TextField(null=True)
    lease_token = peewee.TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    claims = peewee.IntegerField(default=0)
    last_error = peewee.TextField(null=True)
    done_at = peewee.FloatField(null=True)

    class Meta:
        table_name = "redeliveries"


class Redelivered(BaseModel):
    redelivery = peewee.ForeignKeyField(Redelivery, backref="copies", column_name="redelivery_id",
                                        on_delete="CASCADE")
    name = peewee.TextField()
    path = peewee.TextField()
    delivered_at = peewee.FloatField()

    class Meta:
        table_name = "redelivered"


MODELS = (Job, JobEvent, Delivery, Scan, Heartbeat, ConfigProblem, ConfigReload, DailyFigures, Leader, RemoteSeen, Place, Report, Alert, AlertDelivery,
          Silence, ErrorLogRecord, Tally, Pause, SteeringEvent, Redelivery, Redelivered)


def bind(db: peewee.Database) -> None:
    """Point the models at an open database."""
    database_proxy.initialize(db)
