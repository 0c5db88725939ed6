"""Times as people and files read them: ISO stamps, UTC text, ages and durations. A leaf."""

import datetime as dt


def iso(ts: float) -> str:
    """ISO 8601 in UTC with milliseconds, as sidecars and error-log records carry it."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")


def utc_text(ts: float | None) -> str:
    """``2024-05-01 13:30:00`` in UTC, or ``-`` for no time."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def age_text(seconds: float) -> str:
    """A short age for tables: 42s, 17m, 3.5h."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def duration(value: float | None) -> str:
    """A duration for people: 85 ms, 1.24 s, 3 min 5 s, 2 h 10 min."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s"
    if value < 3600:
        return f"{int(value // 60)} min" + (f" {int(value % 60)} s" if int(value % 60) else "")
    return f"{int(value // 3600)} h" + (f" {int(value % 3600 // 60)} min" if int(value % 3600 // 60) else "")
