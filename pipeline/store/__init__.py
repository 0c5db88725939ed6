"""The storage seam (docs/design.md#several-hosts): the job table's database, whichever engine holds it.

``connect(location)`` gives an engine (``engine.Engine``); nothing outside this package knows which
one. SQLite (``sqlite.py``, with its DDL in ``sqlite.sql``, the package's copy of the top-level ``schema.sql``) is the default: one file on a local
disk, nothing to install. PostgreSQL (``postgres.py``, ``postgres.sql``) is for several hosts. ``models.py`` has the peewee models of the tables, for the tools and
reports; the hot path uses pre-written SQL through ``Engine.sql``.
"""

from __future__ import annotations

from pathlib import Path

from . import sqlite
from .engine import SAYS, DatabaseUnusable, Engine, LeaseLost, Trouble, retry_later

__all__ = ["SAYS", "DatabaseUnusable", "Engine", "LeaseLost", "Trouble", "check_location", "connect",
           "retry_later"]

# What ``paths.database`` starts with to name a PostgreSQL server rather than a SQLite file.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def connect(location: Path, *, create: bool = True, read_only: bool = False) -> Engine:
    """Open the database at ``location`` (``paths.database``), creating or upgrading its schema;
    with ``create=False`` a database that is not there is an error (the operators' tools).
    ``read_only``: an existing database, as it is (never upgraded), refusing every write."""
    if is_postgres(location):
        from . import postgres      # here: a SQLite site never needs this engine, nor psycopg2.errorcodes
        return postgres.connect(location, create=create and not read_only, read_only=read_only)
    return sqlite.connect(location, create=create and not read_only, read_only=read_only)


def is_postgres(location: Path | str) -> bool:
    return isinstance(location, str) and location.lower().startswith(POSTGRES_SCHEMES)


def check_location(location: Path) -> None:
    """Refuse, before anything starts, a place where the engine cannot work (DatabaseUnusable)."""
    if not is_postgres(location):
        sqlite.check_local(location)
