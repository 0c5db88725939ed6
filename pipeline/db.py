"""The database: one SQLite file in WAL mode, its pragmas, and its schema from ``pipeline/schema.sql``."""

from __future__ import annotations

import importlib.resources
import logging
import sqlite3
from pathlib import Path

import peewee

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4      # 4: error_log_outbox
BUSY_TIMEOUT_MS = 5000

# Filesystems on which SQLite's WAL locking does not work (§4: the database must be local).
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph",
                       "glusterfs", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "davfs", "fuse.davfs2"}


class DatabaseUnusable(Exception):
    """The database cannot be opened or used; the programs exit with EXIT_DATABASE."""


def connect(path: Path, *, create: bool = True) -> peewee.SqliteDatabase:
    """Open the database, applying the schema when it is new or older than this code.

    Every transaction that ``db.atomic()`` starts is ``BEGIN IMMEDIATE`` (§14): a deferred
    transaction that reads and then writes fails with "database is locked" at once.
    """
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise DatabaseUnusable(f"{path}: no such database")
    db = peewee.SqliteDatabase(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        lock_type="IMMEDIATE",
        # busy_timeout first: the journal_mode change itself may have to wait for a lock.
        pragmas=[("busy_timeout", BUSY_TIMEOUT_MS), ("journal_mode", "wal"),
                 ("synchronous", "normal"), ("foreign_keys", "on")],
    )
    try:
        db.connect()
        if db.execute_sql("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            apply_schema(db)
    except (sqlite3.DatabaseError, peewee.DatabaseError, OSError) as e:
        db.close()
        raise DatabaseUnusable(f"{path}: {e}") from None
    return db


def schema_script() -> str:
    """The text of schema.sql, package data beside this module (so an installed copy has it too)."""
    return importlib.resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


def apply_schema(db: peewee.SqliteDatabase) -> None:
    """Create what is missing, in one immediate transaction so concurrent starts agree."""
    script = schema_script()
    conn = db.connection()
    conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
    log.info("database schema version %d ready in %s", SCHEMA_VERSION, db.database)


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem holding ``path`` (its nearest existing ancestor), from mountinfo."""
    path = path.resolve()
    while not path.exists():
        path = path.parent
    best, fstype = "", "unknown"
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mount_point = left.split()[4].replace("\\040", " ")
                if (str(path) == mount_point or str(path).startswith(mount_point.rstrip("/") + "/")) \
                        and len(mount_point) >= len(best):
                    best, fstype = mount_point, right.split()[0]
    except OSError:
        pass
    return fstype


def check_local(path: Path, mountinfo: str = "/proc/self/mountinfo") -> None:
    """Refuse a database on a network filesystem, where WAL's shared memory does not work."""
    fstype = filesystem_type(path, mountinfo)
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse.") and fstype != "fuse.overlayfs":
        raise DatabaseUnusable(f"{path}: lies on a {fstype} network filesystem; SQLite in WAL mode "
                               "needs a local disk")


def checkpoint(db: peewee.SqliteDatabase) -> None:
    """Fold the WAL back into the database so it does not grow without bound."""
    db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def is_locked(error: BaseException) -> bool:
    """SQLite's 'database is locked' / 'busy': another process held the lock past the busy timeout."""
    return isinstance(error, peewee.OperationalError) and ("locked" in str(error) or "busy" in str(error))
