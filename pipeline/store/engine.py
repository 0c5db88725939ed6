"""What every database engine offers the programs, and what they share whatever the engine.

An engine is a peewee ``Database`` subclass mixing in ``Engine``. The programs only ever use:

- ``write()``: the write transaction (on SQLite ``BEGIN IMMEDIATE``), nested as savepoints;
- ``snapshot()``: a short read-only transaction whose reads agree with each other;
- ``sql(text)``: a statement written once for every engine (``?`` placeholders, ``{id_list}`` for
  "one of these ids", given its value by ``id_list(ids)``; ``{id_key_list}``, rows of an id and a
  text from one JSON array of pairs), in the engine's own dialect;
- ``transient(error)``: why an error may pass by itself ("locked", "full", "read-only", "I/O",
  "unreachable", "refused"), or None; ``describe(error)``: the database's own words for it, one line;
- ``check_alive()`` and ``tidy()`` at each heartbeat, ``checkpoint()`` after the nightly pruning;
- ``claim(...)``: lease the first due rows of a queue, never a row another worker holds;
- ``serialize(name)``: inside a write transaction, be the only writer of what ``name`` stands for
  (SQLite's one writer is so already);
- ``announce()`` in a transaction that made work due, and ``wait_for_work(stopper, seconds,
  listen)``: sleep until work may be there (a poll, or a wake-up);
- ``clock_skew()``: this host's clock against the database's;
- ``reopen_after(reason)``: what to do with the connection after a transient error.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache

log = logging.getLogger(__name__)

# The fewest parameters a SQLite build takes in one statement (999 before 3.32): a multi-row
# statement (``run_rows``) stays within it on every build, and on PostgreSQL too.
MAX_PARAMS = 999

SAYS = {"locked": "database busy past the timeout", "full": "database disk full",
        "read-only": "database read-only", "I/O": "database disk I/O error",
        "unreachable": "database unreachable", "refused": "database refused the connection"}


class DatabaseUnusable(Exception):
    """The database cannot be opened or used; the programs exit with EXIT_DATABASE.

    ``reason`` is set when the cause may pass by itself (a key of SAYS: a server not answering yet,
    a password being changed, a lock): a long-running program waits for it at start instead.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


class LeaseLost(Exception):
    """A claimed row (a job, a report, an alert) was taken over by another worker after its lease
    ran out; the work done under the old claim is not committed."""


class Engine:
    """The seam's interface, with what is the same on every engine."""

    ID_LIST: str        # each engine's way to say "one of these ids" in a statement
    ID_KEY_LIST: str    # rows (id, order_key) from one parameter: a JSON array of [id, key] pairs
    IDLE_POLL = 0.0         # the shortest idle wait worth it (an engine with wake-ups waits longer)

    def _init_engine(self) -> None:
        self.trouble = Trouble()

    def write(self):
        """The one way to start a write transaction (nested: a savepoint)."""
        return self.atomic()

    def snapshot(self):
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return _translate(type(self), text)

    def run_sql(self, text: str, params=()):
        """Execute a statement written for every engine (see ``sql``); returns the cursor."""
        return self.execute_sql(self.sql(text), params)

    def run_rows(self, head: str, rows: list[tuple], tail: str = "", before: tuple = (), after: tuple = ()) -> list:
        """Run ``head VALUES (?, ...), (?, ...) tail`` for ``rows`` (tuples of one width), in their
        order, in as few statements as MAX_PARAMS allows (a statement per row would be a round trip
        per row on PostgreSQL); ``before`` and ``after``: the parameters of ``head`` and ``tail``.
        Returns the statements' cursors."""
        if not rows:
            return []
        width = len(rows[0])
        per = (MAX_PARAMS - len(before) - len(after)) // width
        return [self.run_sql(_rows_statement(head, tail, width, len(chunk)),
                             [*before, *(v for row in chunk for v in row), *after])
                for chunk in (rows[start:start + per] for start in range(0, len(rows), per))]

    @classmethod
    def dialect(cls, text: str) -> str:
        """``text`` in this engine's dialect (called once per statement and engine, then cached)."""
        return text.replace("{id_list}", cls.ID_LIST).replace("{id_key_list}", cls.ID_KEY_LIST)

    def id_list(self, ids) -> object:
        raise NotImplementedError

    def claim(self, table: str, where: str, order: str, set_clause: str, returning: str,
              set_params: tuple, where_params: tuple, limit: int):
        """``UPDATE table SET set_clause`` on the first ``limit`` rows matching ``where`` by
        ``order``, returning ``returning`` of each: one statement, so under a single writer no
        other worker can take the same rows in between. The statement is built once per claim
        and engine (the routers claim every few milliseconds)."""
        text, set_first = _claim_statement(type(self), table, where, order, set_clause, returning)
        params = (*set_params, *where_params, limit) if set_first else (*where_params, limit, *set_params)
        return self.execute_sql(text, params)

    @classmethod
    def claim_statement(cls, table: str, where: str, order: str, set_clause: str,
                        returning: str) -> tuple[str, bool]:
        """The claim's text in this engine's dialect, and whether the SET parameters come first."""
        return (cls.dialect(f"UPDATE {table} SET {set_clause} WHERE id IN (SELECT id FROM {table} WHERE {where} "
                            f"ORDER BY {order} LIMIT ?) RETURNING {returning}"), True)

    def serialize(self, name: str) -> None:
        """One writer at a time already: nothing to take."""

    def announce(self) -> None:
        """Nobody listens: idle workers poll."""

    def give_way(self) -> None:
        """Between two write transactions in a row: nothing to do where writers lock rows, not
        the database."""

    def clock_skew(self, clock=None) -> float:
        """This host's clock minus the database's: here one host, one clock."""
        return 0.0

    def transient(self, error: BaseException) -> str | None:
        raise NotImplementedError

    def describe(self, error: BaseException) -> str:
        """The database's own reason for ``error``, on one line (what the logs quote)."""
        return first_line(error)

    def check_alive(self) -> None:
        """Raise DatabaseUnusable when carrying on would lose writes (checked at each heartbeat)."""

    def tidy(self) -> None:
        """Keep the engine's files bounded; called about once a minute by each program."""

    def checkpoint(self) -> None:
        """The nightly housekeeping after retention pruning."""

    def reopen_after(self, reason: str) -> None:
        """After a transient error: drop the connection when the engine needs a fresh one."""

    def backup(self, target) -> str | None:
        """Copy the whole database to ``target`` while the programs run, or return the command
        that does it for this engine (a server's own dump tool)."""
        raise NotImplementedError

    def wait_for_work(self, stopper, seconds: float, listen: bool = False) -> bool:
        """Sleep up to ``seconds`` or until stopped; True when woken because work may have come
        (``listen``: the caller wants that; an engine without wake-ups never is)."""
        stopper.wait(seconds)
        return False


@lru_cache(maxsize=None)
def _translate(engine: type, text: str) -> str:
    return engine.dialect(text)


@lru_cache(maxsize=None)
def _rows_statement(head: str, tail: str, width: int, count: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([row] * count)} {tail}"


@lru_cache(maxsize=None)
def _claim_statement(engine: type, *parts: str) -> tuple[str, bool]:
    return engine.claim_statement(*parts)


def ddl_script(name: str) -> str:
    """The text of ``name`` (an engine's DDL file), package data beside these modules (so an
    installed copy has it too)."""
    # Imported here: importlib.resources loads tempfile, shutil and the compression modules, and
    # only a new or older database needs its DDL, never the start of a program on a current one.
    import importlib.resources
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def newer_schema(location, found: int, known: int) -> DatabaseUnusable:
    """A database that a newer release upgraded is not this release's to write: its tables may
    mean more than this code knows."""
    return DatabaseUnusable(f"{location}: its schema is version {found}, from a newer release (this one knows "
                            f"up to {known}); run that release, or restore the backup taken before the upgrade")


def retry_later(db: Engine, error: BaseException, then: str, once: bool = False) -> bool:
    """A program met ``error``: True when it is transient (logged once, see Trouble) and the work
    should be tried again after a pause; False when it is not the database's passing trouble.

    With ``once`` a full, read-only or failing disk raises DatabaseUnusable (exit 69): there is no
    later to wait for. A lock is still waited out, as it always was.
    """
    reason = db.transient(error)
    if reason is None:
        return False
    if once and reason != "locked":
        raise DatabaseUnusable(f"{db.database}: {SAYS[reason]} ({db.describe(error)})") from None
    db.trouble.met(reason, db.describe(error), then)
    db.reopen_after(reason)
    return True


def first_line(error: BaseException) -> str:
    """The first line of an error's message (drivers add hints on further lines), or its type."""
    lines = str(error).strip().splitlines()
    return " ".join(lines[0].split()) if lines else type(error).__name__


class Trouble:
    """How the database is doing as this process sees it, so that trouble is logged once when it
    starts, once when the database's own reason for it changes (a server that refused connections
    now refuses the password), and once when it ends; not once per retry (every loop and the
    heartbeat share it)."""

    # A nearly full disk lets a small write (a heartbeat) through between two larger ones that
    # fail: the trouble is over only once writes have gone through this long without a failure.
    QUIET = 10.0

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.reason: str | None = None
        self.detail: str | None = None
        self.since = self.last = 0.0
        self._lock = threading.Lock()

    def met(self, reason: str, detail: str, then: str) -> None:
        """Trouble for ``reason`` (a key of SAYS), ``detail`` being the database's own words."""
        with self._lock:
            self.last = self.clock()
            if (self.reason, self.detail) == (reason, detail):
                return
            if self.reason is None:
                self.since = self.last
            self.reason, self.detail = reason, detail
        until = "" if reason == "locked" else "; waiting until it can be written again"
        log.warning("%s (%s); %s%s", SAYS[reason], detail, then, until)

    def cleared(self) -> None:
        """A write went through: the trouble, if any, is over once it stays away for QUIET seconds."""
        with self._lock:
            now = self.clock()
            if self.reason is None or now - self.last < self.QUIET:
                return
            reason, self.reason, self.detail = self.reason, None, None
        log.info("database writable again after %.0fs (it was: %s)", now - self.since, SAYS[reason])
