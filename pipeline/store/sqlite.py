"""The SQLite engine (the default): one file in WAL mode on a local disk, its pragmas, and its schema
from ``sqlite.sql`` beside this module."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import logging
import os
import sqlite3
import time
from pathlib import Path

import peewee

from .. import files
from . import wakeup
from .engine import DatabaseUnusable, Engine, ddl_script, newer_schema

log = logging.getLogger(__name__)

SCHEMA_VERSION = 16     # 4: error_log_outbox, 5: tallies, 6: alert_deliveries, silences,
                        # 7: heartbeats.clock_skew, 8: leaders, 9: heartbeats.config, config_problems,
                        # 10: steering (states held and dismissed, pauses, steering_events,
                        # redeliveries, redelivered; jobs.waits_on, released_at, dismissed_at),
                        # 11: remotes, 12: deliveries_name, 13: jobs.order_key, waits_after,
                        # 14: config_reloads, 15: places, 16: daily_figures
BUSY_TIMEOUT_MS = 5000
LOCK_POLL = 0.001       # seconds between two tries for the write lock (Database.begin)
WAKE_POLL = 0.25        # seconds an idle router or notifier woken by commits waits between looks
# A reader that stays long stops checkpoints from reaching the WAL's end, and the WAL grows; once it
# lets go, SQLite cuts the file back to this size at the next restart of the WAL instead of keeping
# it at its largest for ever, and bound_wal() truncates a WAL that is still larger.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

# Filesystems on which SQLite's WAL locking does not work (the database must be on a local disk).
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph",
                       "glusterfs", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "davfs", "fuse.davfs2"}


class _Savepoint(peewee._savepoint):
    def rollback(self, begin=True):
        if self.db.connection().in_transaction:     # see Database.rollback
            super().rollback(begin)


class Database(Engine, peewee.SqliteDatabase):
    """peewee's SqliteDatabase behind the seam, remembering which file it opened.

    On SQLITE_FULL and most I/O errors SQLite rolls the whole transaction back by itself; peewee's
    ROLLBACK (or ROLLBACK TO a savepoint) then fails with "no transaction is active" and that error
    hides the real one. Here a rollback with nothing left to roll back does nothing.
    """

    ID_LIST = "SELECT value FROM json_each(?)"
    ID_KEY_LIST = "SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS order_key FROM json_each(?)"
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.identity: tuple[int, int] | None = None     # (st_dev, st_ino) of the file at connect()
        self._watch: wakeup.WalWatch | None | bool = None  # False: inotify could not be had
        self._init_engine()
        # PostgreSQL's names for the scalar max and min (SQLite's max(a, b)), so that a statement
        # is written once for both engines; and floor(), which not every SQLite is built with.
        self.register_function(_greatest, "greatest", -1)
        self.register_function(_least, "least", -1)
        self.register_function(_floor, "floor", 1)

    def rollback(self):
        if self.is_closed() or self.connection().in_transaction:
            super().rollback()

    def _connect(self):
        # A connection opened later (another thread's, or one reopened after an error) must be to
        # the file the others have: opening a path whose file was deleted would create an empty
        # one there, beside the deleted one's -wal and -shm.
        check_file(self)
        return super()._connect()

    def savepoint(self):
        return _Savepoint(self)

    def begin(self, lock_type=None):
        """BEGIN IMMEDIATE, waiting for the write lock in steps of a millisecond.

        SQLite's own wait backs off to 100 ms between tries, so a program waiting behind a writer
        that commits and begins again at once (a startup scan inserting thousands of jobs) found
        the lock free only by chance and could wait out the whole run of transactions: the routers
        started on a backlog only once its scan was over. Tried every millisecond, the waiter gets
        the lock in the gap a writer leaves between two of its transactions (``give_way``)."""
        lock_type = lock_type or self._lock_type
        if lock_type != "IMMEDIATE":
            return super().begin(lock_type)
        cursor = self.cursor()
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        cursor.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    cursor.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.Error as e:
                    busy = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_BUSY
                    if not busy or time.monotonic() >= deadline:
                        with peewee.__exception_wrapper__:      # as peewee raises it: its own type
                            raise
                time.sleep(LOCK_POLL)
        finally:
            try:
                cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            except sqlite3.Error:
                pass            # the connection is failing: what BEGIN raised is what tells why
        # Every write checks that the path still names the file this process opened, holding the
        # write lock (so no write of another program can come between): a database file deleted
        # or replaced under the programs would otherwise take their writes, whole jobs' audit
        # trails, into a file nobody can open any more, until the next heartbeat noticed. One stat.
        try:
            check_file(self)
        except DatabaseUnusable:
            cursor.execute("ROLLBACK")
            raise

    @staticmethod
    def give_way() -> None:
        """Between two write transactions in a row: leave a waiting program its turn (``begin``)."""
        time.sleep(2 * LOCK_POLL)

    def snapshot(self):
        """A deferred transaction: one consistent read that never takes the write lock."""
        return self.atomic("DEFERRED")

    def wait_for_work(self, stopper, seconds: float, listen: bool = False) -> bool:
        """Woken by any program's commit (``wakeup.WalWatch``) when ``listen``; else a plain sleep."""
        if listen and self._watch is None:
            try:
                self._watch = wakeup.WalWatch.open(Path(self.database))
                self.IDLE_POLL = WAKE_POLL      # woken on commits: the poll is only a fallback
            except OSError as e:
                log.info("commits to %s cannot be watched (%s): idle programs poll", self.database, e)
                self._watch = False
            else:
                # A commit between the caller's last look and this watch woke nobody (at start: the
                # scanner's first jobs, while a router set up its first wait): one more look.
                return True
        if not (listen and self._watch) or stopper.requested:
            stopper.wait(seconds)
            return False
        return self._watch.wait(seconds)

    def close(self):
        if self._watch:
            self._watch.close()
        self._watch = None
        return super().close()

    def id_list(self, ids) -> str:
        return json.dumps(list(ids))

    def transient(self, error: BaseException) -> str | None:
        return transient(error)

    def check_alive(self) -> None:
        check_file(self)

    def tidy(self) -> None:
        bound_wal(self)

    def checkpoint(self) -> None:
        """Fold the WAL back into the database so it does not grow without bound."""
        self.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def backup(self, target: Path) -> None:
        """SQLite's online backup API: a consistent copy while the programs write, made under a
        temporary name beside ``target``, fsynced, then renamed over it."""
        if not target.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(target.parent))
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            copy = sqlite3.connect(partial)
            try:
                self.connection().backup(copy)
            except sqlite3.Error as e:          # the copy's disk full, say: one line, as for a file
                raise OSError(errno.EIO, str(e)) from None
            finally:
                copy.close()
            fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, target)
        finally:
            if os.path.lexists(partial):
                os.unlink(partial)
        files.fsync_dir(target.parent)

    def reopen_after(self, reason: str) -> None:
        """After a read-only file or an I/O error, close this thread's connection; peewee opens a
        new one (with the pragmas) at the next statement. SQLite keeps a connection opened read-only
        so after the file is writable again. After SQLITE_FULL the connection carries on once there
        is room (SQLite rolled the transaction back); closing it would even let the last one out
        delete the WAL and free room for a moment, and the trouble would come and go."""
        if reason in ("read-only", "I/O") and not self.in_transaction():
            self.close()


def _greatest(*values):
    present = [v for v in values if v is not None]      # as PostgreSQL: NULLs are left out
    return max(present) if present else None


def _floor(value):
    return None if value is None else math.floor(value)


def _least(*values):
    present = [v for v in values if v is not None]
    return min(present) if present else None


def connect(path: Path, *, create: bool = True, read_only: bool = False) -> Database:
    """Open the database, applying the schema when it is new or older than this code.

    Every transaction that ``db.atomic()`` starts is ``BEGIN IMMEDIATE``: a deferred
    transaction that reads and then writes fails with "database is locked" at once.
    """
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _create_file(path)
    elif not path.exists():
        raise DatabaseUnusable(f"{path}: no such database")
    db = Database(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        lock_type="IMMEDIATE",
        # busy_timeout first: the journal_mode change itself may have to wait for a lock.
        pragmas=[("busy_timeout", BUSY_TIMEOUT_MS), ("journal_mode", "wal"),
                 ("synchronous", "normal"), ("foreign_keys", "on"),
                 ("journal_size_limit", JOURNAL_SIZE_LIMIT)] + [("query_only", 1)] * read_only,
    )
    try:
        db.connect()
        db.identity = _identity(path)
        version = db.execute_sql("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION and not read_only:
            apply_schema(db)
    except (sqlite3.DatabaseError, peewee.DatabaseError, OSError) as e:
        db.close()
        raise DatabaseUnusable(f"{path}: {e}", reason=transient(e)) from None
    if version > SCHEMA_VERSION:
        db.close()
        raise newer_schema(path, version, SCHEMA_VERSION)
    return db


def _create_file(path: Path) -> None:
    """Create an empty database file where there is none, without the ``-wal`` and ``-shm`` a
    deleted one left at its path.

    SQLite finds those two by the database's name. When the file was deleted under running
    programs, theirs are still there and still in use by them: a new file opened beside them would
    share their write-ahead log's index with a database that no longer exists (reads fail with
    "disk I/O error", or worse, pages of the old database appear in the new). They belong to no
    file at the path any more, so they are removed first (SQLite itself drops a WAL it finds
    beside an empty database); the programs still holding them keep them open until they exit.
    Starts creating at once take turns (a lock on the folder), so that one never removes what
    another has just begun to use.
    """
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if path.exists():
            return                              # another program created it meanwhile
        stale = [f"{path}{suffix}" for suffix in ("-wal", "-shm") if os.path.exists(f"{path}{suffix}")]
        for name in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        if stale:
            log.warning("database file %s is missing: creating a new one, without the -wal and -shm "
                        "its deleted predecessor left", path)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))   # SQLite's own mode
    finally:
        os.close(folder)                        # and the lock with it


_ADDED_COLUMNS = [("heartbeats", "clock_skew", "REAL NOT NULL DEFAULT 0"),
                  # Order per key: NULL for every job of before, as for a job not read yet.
                  ("jobs", "order_key", "TEXT"), ("jobs", "waits_after", "INTEGER"),
                  # Steering: nothing waits on a person, nothing released or dismissed before.
                  ("jobs", "waits_on", "TEXT"), ("jobs", "released_at", "REAL"), ("jobs", "dismissed_at", "REAL"),
                  # The config a program runs (reload): none recorded before.
                  ("heartbeats", "config", "TEXT NOT NULL DEFAULT ''"),
                  ("heartbeats", "config_since", "REAL NOT NULL DEFAULT 0")]

# States a job's CHECK has gained since its table was first created, after the last one it had then.
_JOBS_STATES_BEFORE = "'notified', 'failed'))"
_JOBS_STATES_NOW = "'notified', 'failed', 'held', 'dismissed'))"


def schema_script() -> str:
    """The text of sqlite.sql."""
    return ddl_script("sqlite.sql")


def widen_state_check(conn: sqlite3.Connection) -> None:
    """Let an older jobs table take the states added since (held, dismissed).

    SQLite cannot alter a CHECK constraint; widening one changes nothing stored, so the table's
    text in sqlite_master is rewritten (SQLite's documented way for such changes, with the schema
    cookie bumped so every connection, this one and other programs', reads the new text)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()
        if sql and "'held'" not in sql[0] and _JOBS_STATES_BEFORE in sql[0]:
            cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'jobs'",
                         (sql[0].replace(_JOBS_STATES_BEFORE, _JOBS_STATES_NOW, 1),))
            conn.execute(f"PRAGMA schema_version = {cookie + 1}")
            conn.execute("PRAGMA writable_schema = OFF")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def apply_schema(db: Database) -> None:
    """Create what is missing, in one immediate transaction so concurrent starts agree."""
    script = schema_script()
    conn = db.connection()
    widen_state_check(conn)
    # Columns added to a table of an earlier version (CREATE TABLE IF NOT EXISTS leaves it be). Two
    # programs starting together may both add one: the second finds it there and goes again.
    added = "".join(f"ALTER TABLE {table} ADD COLUMN {column} {ddl};\n" for table, column, ddl in _ADDED_COLUMNS
                    if (present := {r[1] for r in conn.execute(f"PRAGMA table_info({table})")})
                    and column not in present)
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{added}{script}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
    except sqlite3.OperationalError as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if "duplicate column" not in str(e):
            raise
        apply_schema(db)
        return
    log.info("database schema version %d ready in %s", SCHEMA_VERSION, db.database)


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem holding ``path`` (its nearest existing ancestor), from mountinfo."""
    return files.mount_of(path, mountinfo)[0]


def check_local(path: Path, mountinfo: str = "/proc/self/mountinfo") -> None:
    """Refuse a database on a network filesystem, where WAL's shared memory does not work."""
    fstype = filesystem_type(path, mountinfo)
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse.") and fstype != "fuse.overlayfs":
        raise DatabaseUnusable(f"{path}: lies on a {fstype} network filesystem; SQLite in WAL mode "
                               "needs a local disk")


def bound_wal(db: Database) -> None:
    """The checkpoint that does not wait for the nightly one (the heartbeat calls it every minute).

    PASSIVE never waits for anyone. A WAL past JOURNAL_SIZE_LIMIT (a long reader held it back) is
    truncated instead, with the busy timeout off: while a reader is still in the way SQLite answers
    "busy" at once and the next call tries again, so the program's own loop never stalls on it.
    """
    try:
        size = os.path.getsize(f"{db.database}-wal")
    except OSError:
        return                  # no WAL yet (or a moment between two connections)
    if size <= JOURNAL_SIZE_LIMIT:
        db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")
        return
    db.execute_sql("PRAGMA busy_timeout = 0")
    try:
        db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.execute_sql(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


# -- the file under the programs ------------------------------------------------------------------

def _identity(path: Path | str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def check_file(db: Database) -> None:
    """Raise DatabaseUnusable when the path no longer names the file this process opened.

    A database deleted or renamed over under running programs would otherwise go on taking their
    writes into a file nobody can open any more: every record from then on is lost. Exiting lets
    supervisord start them again on the file that is there now. One stat: checked at every write
    transaction (``Database.begin``), every new connection and every heartbeat.
    """
    if db.identity is None:
        return
    try:
        now = _identity(db.database)
    except (FileNotFoundError, NotADirectoryError):
        now = None
    except OSError:
        return                  # cannot tell (EIO, EACCES): the writes themselves will say more
    if now != db.identity:
        what = "deleted" if now is None else "replaced"
        raise DatabaseUnusable(f"database file {db.database} was {what}; exiting so supervisord "
                               "restarts on the real one")


# -- trouble that passes by itself ----------------------------------------------------------------

_TRANSIENT_CODES = {sqlite3.SQLITE_BUSY: "locked", sqlite3.SQLITE_LOCKED: "locked",
                    sqlite3.SQLITE_FULL: "full", sqlite3.SQLITE_READONLY: "read-only",
                    sqlite3.SQLITE_IOERR: "I/O", sqlite3.SQLITE_CANTOPEN: "I/O"}
# SQLite's own messages, for an error that reached us without its code.
_TRANSIENT_TEXTS = {"database is locked": "locked", "database is busy": "locked",
                    "database or disk is full": "full", "readonly database": "read-only",
                    "disk I/O error": "I/O", "unable to open database file": "I/O"}


def transient(error: BaseException) -> str | None:
    """Why the database refused, when the cause can pass by itself: "locked" (another process held
    the lock past the busy timeout), "full" (SQLITE_FULL), "read-only" (SQLITE_READONLY: the file,
    its folder or the filesystem), "I/O" (SQLITE_IOERR, SQLITE_CANTOPEN). None for anything else.

    The whole exception chain is looked at: peewee re-raises SQLite's error as its own, and an
    error met while rolling back carries the one that caused it as its context.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (sqlite3.Error, peewee.DatabaseError)):
            code = getattr(error, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _TRANSIENT_CODES:
                return _TRANSIENT_CODES[code & 0xFF]
            for text, reason in _TRANSIENT_TEXTS.items():
                if text in str(error):
                    return reason
        error = error.__cause__ or error.__context__
    return None
