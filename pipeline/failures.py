"""What a failure leaves behind for people: the FAILED name, its sidecar, and the error log file."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from .files import Folders, fit_name, write_atomic
from .jobs import Claimed

SIDECAR_SUFFIX = ".error.json"   # NAME.error.json beside a FAILED file; error log files end so too

# Exactly these keys, in this order (SPEC §7): monitoring tools parse them.
ERROR_LOG_KEYS = ("timestamp", "file_name", "file_path", "error_message", "retry_count",
                  "first_detected", "processing_duration")


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")


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
                  folders: Folders) -> None:
    """NAME.error.json beside a FAILED file, so a person at the share sees why without the database."""
    body = {"file_name": job.file_name, "client_folder": job.client_folder, "step": step,
            "reason": reason, "attempts": attempts, "job_id": job.id, "job_uuid": job.uuid,
            "source_path": job.source_path, "failed_at": iso(now),
            "requeue": f"bin/requeue --failed --id {job.id}"}
    write_atomic(path.with_name(path.name + SIDECAR_SUFFIX), _dump(body), folders)


def write_error_log(folder: Path, job: Claimed, reason: str, retry_count: int, file_path: str,
                    now: float, folders: Folders) -> Path:
    """One JSON file per failure in paths.error_log, with exactly ERROR_LOG_KEYS."""
    values = (iso(now), job.file_name, file_path, reason, retry_count, iso(job.detected_at),
              round(now - job.detected_at, 3))
    stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y%m%d_%H%M%S")
    path = folder / (fit_name(f"{stamp}_job{job.id}_{job.file_name}", len(SIDECAR_SUFFIX)) + SIDECAR_SUFFIX)
    write_atomic(path, _dump(dict(zip(ERROR_LOG_KEYS, values))), folders)
    return path


def _dump(body: dict) -> bytes:
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
