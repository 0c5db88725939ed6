"""Another process that holds the database's write lock, for the tests of a locked database (docs/design.md#bad-input).

On PostgreSQL there is no one write lock: the holder locks the tables every program writes to, so
writers wait (PostgreSQL has no busy timeout; they carry on once it lets go)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Each holder keeps the lock for its seconds, or until a line on its stdin (Locker.release) says so.
_HOLDER = """
import select, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


_PG_HOLDER = """
import psycopg2, select, sys
conn = psycopg2.connect(sys.argv[1])
conn.cursor().execute("LOCK TABLE jobs, scans, heartbeats IN EXCLUSIVE MODE")
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
conn.commit()
print("released", flush=True)
"""


class Locker:
    """A separate process holding ``BEGIN EXCLUSIVE`` on ``database`` for ``seconds`` (or until ``release``).

    In WAL mode readers carry on; every writer waits for its busy timeout and then gets "database
    is locked". ``start`` returns once the lock is held.
    """

    def __init__(self, database: Path | str, seconds: float):
        self.database, self.seconds = database, seconds
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Locker":
        holder = _PG_HOLDER if str(self.database).startswith("postgresql://") else _HOLDER
        self.proc = subprocess.Popen([sys.executable, "-c", holder, str(self.database), str(self.seconds)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "locked":
            self.proc.kill()
            raise AssertionError(f"the lock holder did not get the lock: {line!r}")
        return self

    def release(self) -> None:
        """Let go now, before ``seconds`` are up."""
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()

    def wait(self) -> None:
        """Until the lock is released."""
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> "Locker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
