"""What a failure leaves behind for people: the FAILED name, its sidecar, and the error log file."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from . import command
from .files import Folders, fit_name, write_atomic
from .times import iso

if TYPE_CHECKING:
    from . import store
    from .jobs import Claimed

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".error.json"   # NAME.error.json beside a FAILED file; error log files end so too

# Exactly these keys, in this order (docs/design.md#notification): monitoring tools parse them.
ERROR_LOG_KEYS = ("timestamp", "file_name", "file_path", "error_message", "retry_count",
                  "first_detected", "processing_duration")


_SQL_PENDING = "SELECT id, name, record FROM error_log_outbox ORDER BY id LIMIT ?"
_SQL_WRITTEN = "DELETE FROM error_log_outbox WHERE id IN ({id_list})"


def failed_path(failed_root: Path, client_folder: str, file_name: str, now: float, job_id: int | None = None) -> Path:
    """FAILED/{CLIENT}/{YYYYmmdd_HHMMSS}_{name} (shortened to fit beside its sidecar), with the job
    id added if that name is taken."""
    stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y%m%d_%H%M%S")
    folder = failed_root / client_folder
    path = folder / fit_name(f"{stamp}_{file_name}", len(SIDECAR_SUFFIX))
    if job_id is not None and os.path.lexists(path):
        path = folder / fit_name(f"{stamp}_{job_id}_{file_name}", len(SIDECAR_SUFFIX))
    return path


def write_sidecar(path: Path, job: Claimed, step: str, reason: str, attempts: int, now: float,
                  folders: Folders, errors: Sequence[str] = ()) -> None:
    """NAME.error.json beside a FAILED file, so a person at the share sees why without the database.
    ``errors``: every error of a ``[[schema]]`` the job broke (``reason`` is the first)."""
    body = {"file_name": job.file_name, "client_folder": job.client_folder, "step": step,
            "reason": reason, "attempts": attempts, "job_id": job.id, "job_uuid": job.uuid,
            "source_path": job.source_path, "failed_at": iso(now),
            "requeue": f"{command('requeue')} --failed --id {job.id}"}
    if errors:
        body["schema_errors"] = list(errors)
    write_atomic(path.with_name(path.name + SIDECAR_SUFFIX), _dump(body), folders)


def error_log_record(job: Claimed, reason: str, retry_count: int, file_path: str, now: float) -> tuple[str, str]:
    """The name in paths.error_log and the JSON text of one failure's record, with exactly ERROR_LOG_KEYS."""
    values = (iso(now), job.file_name, file_path, reason, retry_count, iso(job.detected_at),
              round(now - job.detected_at, 3))
    stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y%m%d_%H%M%S")
    name = fit_name(f"{stamp}_job{job.id}_{job.file_name}", len(SIDECAR_SUFFIX)) + SIDECAR_SUFFIX
    return name, _dump(dict(zip(ERROR_LOG_KEYS, values))).decode("utf-8")


class ErrorLog:
    """Writes the error-log records that failures committed (``Jobs.failed``) into paths.error_log,
    and takes them out of the outbox table.

    A record leaves the database only once its file is written and its folder fsynced; when the
    disk refuses, the records stay and are tried again ``retry`` seconds later. Two programs
    writing the same record write the same file under the same name: nothing is duplicated.
    """
    CHUNK = 100

    def __init__(self, folder: Path, db: store.Engine, folders: Folders, retry: float = 30.0):
        self.folder = folder
        self.db = db
        self.folders = folders
        self.retry = retry
        self.pending = True             # records a previous run left behind
        self.retry_at = 0.0

    def flush(self, new: bool = False) -> None:
        """Write what is waiting; ``new``: failures were just committed."""
        self.pending = self.pending or new
        if not self.pending or time.monotonic() < self.retry_at:
            return
        rows = list(self.db.run_sql(_SQL_PENDING, (self.CHUNK,)))
        written = []
        try:
            for record_id, name, record in rows:
                write_atomic(self.folder / name, record.encode("utf-8"), self.folders)
                written.append(record_id)
            self.folders.sync()
        except OSError as e:
            self.folders.forget(self.folder)
            written = []                # not durable until the folder is synced: written again later
            self.retry_at = time.monotonic() + self.retry
            log.warning("cannot write to the error log %s: %s; %d record(s) kept in the database, "
                        "trying again in %gs", self.folder, e.strerror or e, len(rows), self.retry)
        if written:
            with self.db.write():
                self.db.run_sql(_SQL_WRITTEN, (self.db.id_list(written),))
        self.pending = len(rows) == self.CHUNK or len(written) < len(rows)


def _dump(body: dict) -> bytes:
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
