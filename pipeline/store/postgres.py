"""The PostgreSQL engine (docs/design.md#several-hosts): one database that the programs of several hosts share.

What differs from SQLite, all of it here:

- writes are READ COMMITTED transactions; claims take their rows with ``FOR UPDATE SKIP LOCKED``
  (``claim``), so two workers never hold one row; what SQLite's single writer made safe by itself
  (the alerts' throttle) takes a transaction-scoped advisory lock (``serialize``);
- statements are written once with ``?`` and ``:name`` placeholders (``dialect`` turns them into
  psycopg2's), ``{id_list}`` is ``= ANY`` of an array;
- which errors pass by themselves: a lost connection (the server restarted, the connection
  killed, the network down) is "unreachable", a server that answers but turns the connection
  away (a password changed, the database dropped, every connection slot taken) is "refused": the
  connection is dropped and the next statement opens a new one; a serialization failure or a
  deadlock is "locked";
- waking up: a committed transaction that made work due says NOTIFY; idle routers and notifiers
  wait on LISTEN, with a fallback poll of about a second;
- the schema (``postgres.sql``), applied under an advisory lock so that programs starting together
  agree, with its version in ``pipeline_schema``.

The password never comes from the TOML: libpq reads PGPASSWORD, PGPASSFILE or ~/.pgpass.
"""

from __future__ import annotations

import logging
import re
import select
import shlex
import threading
import time

import peewee

from .engine import DatabaseUnusable, Engine, ddl_script, first_line, newer_schema
from .sqlite import SCHEMA_VERSION          # one version for both DDL files

try:
    import psycopg2
    import psycopg2.errorcodes
    import psycopg2.extensions
except ImportError:                 # the postgres extra is not installed
    psycopg2 = None

log = logging.getLogger(__name__)

CHANNEL = "pipeline_work"
APPLICATION_NAME = "hotfolder-pipeline"
IDLE_POLL = 1.0                 # seconds an idle router or notifier waits between two looks
CONNECT_TIMEOUT = 10            # seconds (libpq's connect_timeout) before a connect gives up
SCHEMA_LOCK = 0x70697065        # advisory lock key while the schema is applied ("pipe")

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
# SQLSTATE classes and codes that pass by themselves.
_LOCKED_CODES = {"40001", "40P01", "55P03"}         # serialization failure, deadlock, lock not available
_UNREACHABLE_CLASSES = ("08", "57")                 # connection exception, operator intervention
# Invalid authorization, a database that does not exist, too many connections.
_REFUSED_CODES = {"28000", "28P01", "3D000", "53300"}
# A connection turned away: the server's FATAL message, or libpq's own when the server asked for a
# password it was not given; and the words before the reason (the address, the marker).
_TURNED_AWAY = ("FATAL:", "fe_sendauth:")
_CONNECTION_FAILED = re.compile(r'^connection to server (?:at|on) .*? failed: (?:FATAL:\s+|fe_sendauth:\s+)?')


class Database(Engine, peewee.PostgresqlDatabase):
    """peewee's PostgresqlDatabase behind the seam."""

    ID_LIST = "SELECT unnest(CAST(? AS BIGINT[]))"
    ID_KEY_LIST = ("SELECT CAST(e ->> 0 AS BIGINT) AS id, e ->> 1 AS order_key "
                   "FROM json_array_elements(CAST(? AS json)) AS e")
    IDLE_POLL = IDLE_POLL

    def __init__(self, url: str, **kwargs):
        if "application_name=" not in url:      # the URL's own name wins (pg_stat_activity shows it)
            kwargs["application_name"] = APPLICATION_NAME
        super().__init__(url, connect_timeout=CONNECT_TIMEOUT,
                         # TCP keepalives: a server that vanished (a host or the network down) is
                         # noticed within about a minute instead of the kernel's two hours.
                         keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                         **kwargs)
        self._init_engine()
        self._listener = None
        self._listener_lock = threading.Lock()

    def backup(self, target) -> str:
        """A server's backup is its own tool's: the pg_dump line (the password from libpq's
        environment, as the programs take it)."""
        return f"pg_dump --format=custom --file={shlex.quote(str(target))} {shlex.quote(self.database)}"

    read_only = False           # every connection's transactions read-only, for the server itself

    def _connect(self):
        conn = super()._connect()
        if self.read_only:
            conn.set_session(readonly=True)
        # sum() of integers is numeric in PostgreSQL: Decimal in Python, where SQLite gives int.
        psycopg2.extensions.register_type(_NUMERIC_AS_NUMBER, conn)
        # The programs' statements are short. JIT compiles a plan whose estimated cost is high, and
        # a join on ranges (the charts' buckets) is estimated a hundred times too high: on a million
        # jobs the overview's hourly chart took 0.3 s of compiling for 10 ms of work.
        with conn.cursor() as cur:
            cur.execute("SET jit = off")
        return conn

    @classmethod
    def dialect(cls, text: str) -> str:
        text = super().dialect(text).replace("%", "%%")
        text = _NAMED.sub(r"%(\1)s", text).replace("?", "%s")
        return text.replace("json_array(", "json_build_array(")

    # -- transactions ------------------------------------------------------------------------------

    def snapshot(self):
        return _Snapshot(self)

    def serialize(self, name: str) -> None:
        """Inside a write transaction: wait for, and hold until it ends, the lock called ``name``."""
        self.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))

    @classmethod
    def claim_statement(cls, table: str, where: str, order: str, set_clause: str,
                        returning: str) -> tuple[str, bool]:
        qualified = ", ".join(f"{table}.{c.strip()}" for c in returning.split(","))
        return (cls.dialect(f"WITH c AS MATERIALIZED (SELECT id FROM {table} WHERE {where} ORDER BY {order} "
                            f"LIMIT ? FOR UPDATE SKIP LOCKED) "
                            f"UPDATE {table} SET {set_clause} FROM c WHERE {table}.id = c.id RETURNING {qualified}"),
                False)

    def id_list(self, ids) -> list[int]:
        return list(ids)

    def rollback(self):
        # After a lost connection there is nothing to roll back, and trying hides the real error.
        if not self.is_closed() and self.connection().closed:
            return
        super().rollback()

    # -- errors ------------------------------------------------------------------------------------

    def transient(self, error: BaseException) -> str | None:
        return transient(error)

    def describe(self, error: BaseException) -> str:
        return describe(error)

    def reopen_after(self, reason: str) -> None:
        if reason in ("unreachable", "refused"):
            self._drop_connection()

    def _drop_connection(self) -> None:
        """Forget this thread's connection, whatever state it is in: peewee opens a new one (and
        reconnects) at the next statement. peewee itself never reconnects PostgreSQL."""
        state = self._state
        conn = state.conn
        state.reset()
        state.closed = True
        if conn is not None:
            try:
                conn.close()
            except Exception:       # noqa: BLE001 - a broken connection may fail to close
                pass
        self._close_listener()

    # -- wake-ups ----------------------------------------------------------------------------------

    def announce(self) -> None:
        """Inside a write transaction that made work due: wake the idle workers when it commits.
        PostgreSQL sends one notification per transaction, however many times this is said."""
        self.execute_sql(f"NOTIFY {CHANNEL}")

    def wait_for_work(self, stopper, seconds: float, listen: bool = False) -> bool:
        if not listen:
            stopper.wait(seconds)
            return False
        try:
            listening = self._listener is not None and not self._listener.closed
            conn = self._listening()
            if not listening:
                # A NOTIFY sent between the caller's last look and this LISTEN (at start, or after
                # the connection broke) reached nobody: one more look.
                return True
            if conn.notifies:
                conn.notifies.clear()
                return True
            ready, _, _ = select.select([conn], [], [], max(seconds, 0))
            if ready:
                conn.poll()
                woke = bool(conn.notifies)
                conn.notifies.clear()
                return woke
            return False
        except (psycopg2.Error, OSError, ValueError):
            # The listening connection broke (a restart): poll meanwhile; the next wait opens anew.
            with self._listener_lock:
                self._listener = None
            stopper.wait(min(seconds, IDLE_POLL))
            return False

    def _listening(self):
        with self._listener_lock:
            if self._listener is None or self._listener.closed:
                conn = psycopg2.connect(self.database, **self.connect_params)
                conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
                conn.cursor().execute(f"LISTEN {CHANNEL}")
                self._listener = conn
            return self._listener

    # -- clocks ------------------------------------------------------------------------------------

    def clock_skew(self, clock=time.time) -> float:
        """This host's clock minus the database server's, in seconds (docs/design.md#several-hosts), taken at
        the middle of the round trip."""
        before = clock()
        server = self.execute_sql("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0]
        return (before + clock()) / 2 - float(server)

    def close(self):
        self._close_listener()
        return super().close()

    def _close_listener(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                try:
                    self._listener.close()
                except Exception:   # noqa: BLE001 - a broken connection may fail to close
                    pass
                self._listener = None


def _number(value: str | None, cursor):
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else float(value)


_NUMERIC_AS_NUMBER = (psycopg2.extensions.new_type(psycopg2.extensions.DECIMAL.values, "NUMERIC_AS_NUMBER", _number)
                      if psycopg2 is not None else None)


class _Snapshot:
    """A REPEATABLE READ, READ ONLY transaction: every read in it sees the same moment. Inside a
    transaction already open it is a savepoint of that one (which already sees one moment)."""

    def __init__(self, db: Database):
        self.db = db
        self._ctx = None

    def __enter__(self):
        outer = self.db.in_transaction()
        self._ctx = self.db.atomic()
        self._ctx.__enter__()
        if not outer:
            self.db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def transient(error: BaseException) -> str | None:
    """"unreachable" for a lost connection or a server that does not answer, "refused" for one that
    answers and turns the connection away (a password, a database that is not there, no connection
    slot left), "locked" for a serialization failure, a deadlock or a lock not available; None for
    anything else. The whole chain is looked at."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if psycopg2 is not None and isinstance(error, psycopg2.Error):
            code = error.pgcode or ""
            if code in _LOCKED_CODES:
                return "locked"
            if code in _REFUSED_CODES:
                return "refused"
            if code.startswith(_UNREACHABLE_CLASSES) or isinstance(error, psycopg2.InterfaceError):
                return "unreachable"
            if isinstance(error, psycopg2.OperationalError) and not code:
                # No SQLSTATE: the connection itself failed. psycopg2 gives none for a connection the
                # server turned away either, but libpq's message says so then.
                return "refused" if any(m in str(error) for m in _TURNED_AWAY) else "unreachable"
        if isinstance(error, peewee.InterfaceError) and "closed" in str(error):
            return "unreachable"
        error = error.__cause__ or error.__context__
    return None


def schema_script() -> str:
    """The text of postgres.sql."""
    return ddl_script("postgres.sql")


def connect(url: str, *, create: bool = True, read_only: bool = False) -> Database:
    """Open the database, applying the schema when it is new or older than this code. With
    ``create=False`` a database without the pipeline's tables is an error (the operators' tools)."""
    if psycopg2 is None:
        raise DatabaseUnusable("paths.database is a PostgreSQL URL but its driver is not installed: "
                               "pip install 'hotfolder-pipeline[postgres]'")
    db = Database(url)
    db.read_only = read_only
    try:
        db.connect()
        version = _version(db)
        if version is None and not create:
            raise DatabaseUnusable(f"{url}: no pipeline tables in this database")
        if (version is None or version < SCHEMA_VERSION) and not read_only:
            apply_schema(db)

    except (psycopg2.Error, peewee.DatabaseError, peewee.InterfaceError) as e:
        db.close()
        raise DatabaseUnusable(f"{url}: {describe(e)}", reason=transient(e)) from None
    if version is not None and version > SCHEMA_VERSION:
        db.close()
        raise newer_schema(url, version, SCHEMA_VERSION)
    return db


def _version(db: Database) -> int | None:
    row = db.execute_sql("SELECT to_regclass('pipeline_schema')").fetchone()
    if row[0] is None:
        return None
    row = db.execute_sql("SELECT max(version) FROM pipeline_schema").fetchone()
    return row[0]


def apply_schema(db: Database) -> None:
    """Create what is missing, in one transaction under an advisory lock so concurrent starts agree."""
    with db.atomic():
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        db.execute_sql(schema_script())
        db.execute_sql("DELETE FROM pipeline_schema")
        db.execute_sql("INSERT INTO pipeline_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
    log.info("database schema version %d ready in %s", SCHEMA_VERSION, db.database)


def describe(error: BaseException) -> str:
    """The server's own reason on one line: for a connection it turned away, its message without
    libpq's preamble (``password authentication failed for user "pipeline"``); else the
    first line of the error (libpq adds hints on the lines after)."""
    line = first_line(error)
    return _CONNECTION_FAILED.sub("", line) if any(m in line for m in _TURNED_AWAY) else line
