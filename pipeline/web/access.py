"""Who is asking, and what they may do (docs/design.md#dashboard-users).

A request names its user in one of three ways, tried in this order:

- the reverse proxy's header (``dashboard.trusted_user_header``), believed only when the request
  comes straight from an address in ``dashboard.trusted_proxies``; the user's role is the one the
  users file gives that name, else ``viewer``;
- HTTP basic authentication with a user of ``dashboard.users_file`` and its password;
- HTTP basic authentication with any name and round 2's shared password (``dashboard.password_env``),
  which makes that name an operator, as before users existed.

Failed passwords are counted per address by ``logins.Throttle`` and logged. A verified password
is remembered (as a keyed digest, never as itself) so that argon2's deliberate slowness is paid
once per user and password, not on every page of someone who must log in to read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass

import flask
from werkzeug.exceptions import TooManyRequests

from . import logins
from ..config import Config
from ..users import NAME, UsersFile

log = logging.getLogger(__name__)

REMEMBERED = 1000          # verified passwords kept; past that the oldest are verified again


@dataclass(frozen=True)
class Identity:
    name: str
    role: str           # "viewer" or "operator"
    how: str            # "proxy", "users_file" or "password": said in the log, not in the audit trail

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class Access:
    def __init__(self, config: Config, shared_password: str | None, throttle: logins.Throttle):
        d = config.dashboard
        self.users = UsersFile(d.users_file) if d.users_file else None
        self.header = d.trusted_user_header
        self.proxies = d.trusted_proxies
        self.shared = shared_password
        self.read_requires_login = d.read_requires_login
        self.actions = d.actions
        self.throttle = throttle
        self._key = secrets.token_bytes(32)
        self._verified: dict[bytes, None] = {}

    def identify(self) -> Identity | None:
        """The request's user, None when it names none; aborts 401 on a wrong password, 429 while
        its address is throttled."""
        request = flask.request
        if self.header and self._from_proxy(request.remote_addr):
            named = request.headers.get(self.header)
            if named is not None:
                if not NAME.fullmatch(named):
                    flask.abort(400, f"the {self.header} header does not name a user (letters, digits and ._@-)")
                user = self.users.get(named) if self.users else None
                return Identity(named, user.role if user else "viewer", "proxy")
        auth = request.authorization
        if not auth or auth.type != "basic" or not auth.password or not (self.users or self.shared):
            return None          # a browser asks first without credentials: not a failure
        address = request.remote_addr or "unknown"
        wait = self.throttle.wait(address)
        if wait:         # the password is not even looked at: a guess made now tells nothing
            raise TooManyRequests(f"too many failed logins from {address}: try again in {wait}s", retry_after=wait)
        name = auth.username or ""
        found = self._check(name, auth.password)
        if found is None:
            failures = self.throttle.failed(address)
            log.warning("failed dashboard login from %s as user %r (%d in a row)", address, name[:64], failures)
            flask.abort(401, "the user name or password is wrong")
        self.throttle.succeeded(address)
        return found

    def _check(self, name: str, password: str) -> Identity | None:
        user = self.users.get(name) if self.users else None
        if user is not None:
            digest = hmac.new(self._key, f"{name}\0{user.hash}\0{password}".encode(), hashlib.sha256).digest()
            if digest in self._verified or user.verify(password):
                self._remember(digest)
                return Identity(name, user.role, "users_file")
            return None
        if self.shared is not None and hmac.compare_digest(password.encode(), self.shared.encode()):
            if not NAME.fullmatch(name):
                flask.abort(401, "a user name of letters, digits and ._@- (1 to 64) is needed; it goes in "
                                 "the audit trail")
            return Identity(name, "operator", "password")
        return None

    def _remember(self, digest: bytes) -> None:
        self._verified.pop(digest, None)
        self._verified[digest] = None
        while len(self._verified) > REMEMBERED:
            del self._verified[next(iter(self._verified))]

    def _from_proxy(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)

    def reader(self) -> Identity | None:
        """The user of a read, or abort 401 when reading needs a login and the request has none."""
        who = self.identify()
        if who is None and self.read_requires_login:
            flask.abort(401, "this dashboard needs a login to read")
        return who

    def operator(self) -> Identity:
        """The user of an action, or abort: 403 when actions are off or the user is a viewer, 401
        without a login."""
        if not self.actions:
            flask.abort(403, "actions are off (dashboard.actions = false)")
        who = self.identify()
        if who is None:
            flask.abort(401, "a login is needed for this")
        if not who.operator:
            flask.abort(403, f"{who.name} is a viewer: actions need the operator role")
        return who
