"""Retention of the files the pipeline leaves behind (docs/design.md#reports-and-alerts): archive
copies, FAILED files with their sidecars, and error-log files, each kept ``report.*_retention_days``
(0, the default: forever). The reporter runs it after the daily report, before it prunes jobs.

Only what the job table says is finished goes, and only the exact file a job recorded: its path in
the job's row, a regular file reached through real folders below the configured place, with the
size and mtime of the job's file (its copies keep both). A file the table does not know, a symbolic
link, or a file of the same name that is not the job's copy is never touched. A file is removed
(and its folder fsynced) before its job forgets it, so a crash in between leaves a job whose file
is already gone, which the next run takes as done; one that cannot be removed stays recorded, and
its job stays, until a later run removes it. Error-log files belong to no job: they go by the time
their name carries (when they were written for the failure), or else their mtime.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .failures import SIDECAR_SUFFIX
from .files import Folders, Identity, remove_copy, remove_exact
from .jobs import Jobs, RecordedFile, files_due

DAY = 86400.0
CHUNK = 500             # jobs read, and forgotten in one write transaction, at a time

# kind -> (its key in [report], what it is called in the log line, and in a job's event)
_KINDS = {"archive": ("archive_retention_days", "archive copies", "archive copy"),
          "failed": ("failed_retention_days", "FAILED files", "FAILED file")}


@dataclass
class Count:
    """What one retention did in one run, for its part of the log line."""
    label: str
    days: int
    removed: int = 0
    gone: int = 0           # already gone (removed by hand, or by a run that stopped before recording it)
    left: int = 0           # not the job's copy: never touched
    failed: int = 0         # could not be removed: tried again next run
    first_error: str = ""

    def could_not(self, path: str | Path, e: OSError) -> None:
        self.failed += 1
        self.first_error = self.first_error or f"{path}: {e.strerror or e}"

    def __str__(self) -> str:
        said = [f"{self.removed} removed"]
        if self.gone:
            said.append(f"{self.gone} already gone")
        if self.left:
            said.append(f"{self.left} left (not the job's copy)")
        if self.failed:
            said.append(f"{self.failed} could not be removed (first: {self.first_error})")
        return f"{self.label} older than {_days(self.days)}: {', '.join(said)}"


def prune_files(config: Config, jobs: Jobs, now: float) -> list[Count]:
    """Run every retention that is on; what each did (empty when all are off)."""
    r = config.report
    counts = []
    for kind, root in (("archive", config.paths.store), ("failed", config.paths.failed)):
        days = getattr(r, _KINDS[kind][0])
        if days:
            counts.append(_recorded(jobs, kind, root, days, now - days * DAY, Folders.made_as(config.router),
                                    routed_final=not config.api.endpoint))
    if r.error_log_retention_days:
        counts.append(_error_log(config.paths.error_log, r.error_log_retention_days,
                                 now - r.error_log_retention_days * DAY))
    return counts


def _recorded(jobs: Jobs, kind: str, root: Path, days: int, before: float, folders: Folders,
              routed_final: bool) -> Count:
    key, label, one = _KINDS[kind]
    count = Count(label, days)
    after = 0
    while True:
        due = files_due(jobs.db, kind, before, after, CHUNK, routed_final)
        done = []
        for f in due:
            try:
                outcome = _remove(kind, f, root)
            except OSError as e:
                count.could_not(f.path, e)      # still recorded: tried again next run
                continue
            setattr(count, outcome, getattr(count, outcome) + 1)     # removed, gone or left
            if outcome == "removed":
                folders.touched(Path(f.path).parent)
            done.append((f, _detail(one, f.path, outcome, days, key, kind)))
        # Removals made durable before the jobs forget the files: none may come back unknown.
        unsynced = folders.sync_each()
        done = [(f, d) for f, d in done if str(Path(f.path).parent) not in unsynced]
        if done:
            jobs.forget_files(kind, done)
        if len(due) < CHUNK:
            return count
        after = due[-1].id


def _remove(kind: str, f: RecordedFile, root: Path) -> str:
    """Remove one recorded file (with its sidecar, for a FAILED file): removed, gone or left."""
    if f.superseded:
        return "left"
    path = Path(f.path)
    outcome = remove_copy(path, root, f.size, f.mtime_ns)
    if kind == "failed" and outcome != "left":
        _remove_regular(path.with_name(path.name + SIDECAR_SUFFIX))
    return outcome


def _detail(one: str, path: str, outcome: str, days: int, key: str, kind: str) -> str:
    sidecar = " with its sidecar" if kind == "failed" else ""
    if outcome == "removed":
        return f"{one} {path} removed{sidecar}: older than {_days(days)} (report.{key})"
    if outcome == "gone":
        return f"{one} {path} was already gone (report.{key})"
    return f"{one} {path} not removed: what is there is not this job's copy (report.{key})"


def _days(n: int) -> str:
    return "1 day" if n == 1 else f"{n} days"


def _remove_regular(path: Path) -> bool:
    """Remove ``path`` if it is a regular file (never a link or a folder); False when it was not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and remove_exact(str(path), Identity.of(st))


def _error_log(folder: Path, days: int, before: float) -> Count:
    count = Count("error-log files", days)
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return count
    except OSError as e:
        count.could_not(folder, e)
        return count
    with entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(SIDECAR_SUFFIX):
                continue            # a temporary being written, or not an error-log file
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and _written_at(entry.name, st) < before:
                    remove_exact(entry.path, Identity.of(st))
                    count.removed += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                count.could_not(entry.path, e)
    return count


def _written_at(name: str, st: os.stat_result) -> float:
    """When an error-log file was written for its failure: the UTC time its name starts with
    (``20260715_101500_job7_...``, failures.error_log_record), else its mtime."""
    try:
        if name[15:16] == "_":
            return dt.datetime.strptime(name[:15], "%Y%m%d_%H%M%S").replace(tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        pass
    return st.st_mtime
