"""The dashboard's users file (docs/design.md#dashboard-users): one user a line, ``name:role:hash``.

The hash is argon2id through argon2-cffi (its PHC string holds the salt and the cost, so a line
verifies on its own and old lines keep working when the cost is raised). Roles: ``viewer`` reads,
``operator`` also acts. Blank lines and lines starting with ``#`` are ignored. The file is
written whole to a temporary file and renamed over the old one, readable by its owner only: a
reader never sees half a file, and the hashes are not for everyone's eyes.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import argon2

ROLES = ("viewer", "operator")
NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")      # what may stand in an audit actor
_HASHER = argon2.PasswordHasher()

log = logging.getLogger(__name__)


class UsersError(Exception):
    """The users file cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    hash: str

    def verify(self, password: str) -> bool:
        try:
            return _HASHER.verify(self.hash, password)
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def parse(text: str, where: str) -> dict[str, User]:
    """The users of a file's text; ``where`` names it in errors."""
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        role, _, hashed = rest.partition(":")
        if not NAME.fullmatch(name):
            raise UsersError(f"{where}:{number}: expected name:role:hash with a name of letters, digits "
                             f"and ._@- (1 to 64)")
        if role not in ROLES:
            raise UsersError(f"{where}:{number}: user {name!r} has role {role[:20]!r}; expected one of "
                             f"{', '.join(ROLES)}")
        if not hashed.startswith("$argon2"):
            raise UsersError(f"{where}:{number}: user {name!r} has no argon2 hash (write the line with "
                             f"dashboard-user add)")
        if name in users:
            raise UsersError(f"{where}:{number}: user {name!r} is listed twice")
        users[name] = User(name, role, hashed)
    return users


def load(path: Path) -> dict[str, User]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsersError(f"{path}: no such users file (dashboard.users_file)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsersError(f"{path}: cannot read the users file: {getattr(e, 'strerror', None) or e}") from None
    return parse(text, str(path))


def write(path: Path, users: dict[str, User]) -> None:
    """Replace the file with ``users``, atomically, mode 0600."""
    lines = "".join(f"{u.name}:{u.role}:{u.hash}\n" for u in users.values())
    fd, temporary = tempfile.mkstemp(prefix=".users-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class UsersFile:
    """The users of a file, read again whenever the file changes, so that a user added with
    ``dashboard-user add`` can log in without restarting the dashboard."""

    def __init__(self, path: Path):
        self.path = path
        self._seen: tuple | None = None
        self._users: dict[str, User] = {}

    def get(self, name: str) -> User | None:
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        if seen != self._seen:
            # A file gone or broken after start logs nobody in rather than keeping stale users.
            try:
                self._users = load(self.path)
            except UsersError as e:
                log.error("%s: nobody can log in with a password of the users file", e)
                self._users = {}
            self._seen = seen
        return self._users.get(name)
