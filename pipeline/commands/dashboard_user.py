"""``bin/dashboard-user add NAME``: write a user's line in ``dashboard.users_file``
(docs/design.md#dashboard-users), creating the file, or replacing the user's password and role.

The password is read from the terminal twice, or with ``--password-stdin`` as the first line of
standard input (for scripts; never as an argument, where ``ps`` would show it).
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from .. import cli
from ..config import ConfigError, load
from ..users import NAME, ROLES, User, UsersError, hash_password, load as load_users, write

EXIT_DATA = 65
MIN_LENGTH = 8


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsersError("the two passwords differ; nothing written")
    return first


def main(argv: list[str] | None = None) -> int:
    argp = cli.parser("dashboard-user", "Add a user of the dashboard, or change one's password and role.",
                      once=False)
    argp.add_argument("action", choices=["add"], help="add (or replace) a user")
    argp.add_argument("name", help="the user's name (letters, digits and ._@-, 1 to 64): it goes in the "
                                   "audit trail")
    argp.add_argument("--role", choices=ROLES, default="viewer",
                      help="viewer reads; operator also acts (default viewer)")
    argp.add_argument("--password-stdin", action="store_true", help="read the password from standard input's first line")
    args = argp.parse_args(argv)
    if not NAME.fullmatch(args.name):
        argp.error(f"name {args.name[:80]!r}: letters, digits and ._@- (1 to 64)")
    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"dashboard-user: {e}", file=sys.stderr)
        return cli.EXIT_CONFIG
    path: Path | None = config.dashboard.users_file
    if path is None:
        print("dashboard-user: [dashboard] users_file is not set: name the file there first", file=sys.stderr)
        return cli.EXIT_CONFIG
    try:
        users = load_users(path) if path.exists() else {}
        password = _password(args.password_stdin)
        if len(password) < MIN_LENGTH:
            raise UsersError(f"the password is shorter than {MIN_LENGTH} characters; nothing written")
        known = args.name in users
        users[args.name] = User(args.name, args.role, hash_password(password))
        write(path, users)
    except UsersError as e:
        print(f"dashboard-user: {e}", file=sys.stderr)
        return EXIT_DATA
    except OSError as e:
        print(f"dashboard-user: cannot write {path}: {e.strerror}", file=sys.stderr)
        return cli.EXIT_CONFIG
    print(f"{'changed' if known else 'added'} {args.role} {args.name} in {path}")
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
