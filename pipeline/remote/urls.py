"""Where remote copies go: a route's ``sftp://``, ``s3://`` or ``smb://`` URL, and the ``[[remote]]``
table that gives its credentials (docs/design.md#remote-destinations).

Everything here is checked when the configuration is loaded, without connecting: the URL's shape,
that no secret stands in it, which table serves it, and for SFTP that the host's key is known.
Nothing here imports a protocol's library; a site that delivers only to folders needs none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import unquote

DEFAULT_PORTS = {"sftp": 22, "s3": None, "smb": 445}
LIBRARIES = {"sftp": "paramiko", "s3": "boto3", "smb": "smbclient"}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_USER = re.compile(r"[A-Za-z0-9._-]+")
KEYS = {"url", "password_env", "key_file", "known_hosts", "endpoint_url", "region", "domain", "max_connections"}
_KEYS_OF = {"sftp": {"password_env", "key_file", "known_hosts"},
            "s3": {"endpoint_url", "region"},
            "smb": {"password_env", "domain"}}


def is_remote(text: str) -> bool:
    """Whether a route's ``to`` is a URL rather than a folder."""
    return _SCHEME.match(text) is not None


@dataclass(frozen=True)
class Where:
    """A remote: a scheme, a host (an S3 bucket), its port and user. What a route's URL and a
    ``[[remote]]`` table both name; ``label`` names it in records, logs and alerts (no secret)."""
    scheme: str
    host: str
    port: int | None
    user: str | None = None

    @property
    def label(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port not in (None, DEFAULT_PORTS[self.scheme]) else ""
        return f"{self.scheme}://{user}{self.host}{port}"

    def serves(self, other: "Where") -> bool:
        """Whether a table naming this remote serves a route's URL naming ``other``."""
        return ((self.scheme, self.host.lower(), self.port) == (other.scheme, other.host.lower(), other.port)
                and (self.user is None or self.user == other.user))


def split(text: str) -> tuple[Where, str]:
    """A remote URL as its remote and its path ("/" when none). Raises ValueError saying why."""
    found = _SCHEME.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a URL")
    scheme = found.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{scheme}:// is not a destination the router knows (sftp://, s3:// or smb://)")
    rest = text[found.end():]
    if "?" in rest or "#" in rest:
        raise ValueError(f"{text!r}: a destination URL takes no query or fragment (credentials go in "
                         "a [[remote]] table)")
    netloc, slash, path = rest.partition("/")
    user, at, hostport = netloc.rpartition("@")
    if ":" in user:
        raise ValueError("the URL holds a password; name the variable holding it with password_env in a "
                         "[[remote]] table, never in the configuration")
    if at and not _USER.fullmatch(unquote(user)):
        raise ValueError(f"{text!r}: {user!r} is not a user name")
    host, port = hostport, None
    if re.fullmatch(r".*:[0-9]+", hostport) and not hostport.endswith("]"):
        host, _, number = hostport.rpartition(":")
        port = int(number)
        if not 0 < port < 65536:
            raise ValueError(f"{text!r}: port {port} is out of range")
    if scheme == "s3":
        if at or port is not None:
            raise ValueError(f"{text!r}: an s3:// URL names a bucket, no user or port (s3://bucket/prefix)")
        if not _BUCKET.fullmatch(host):
            raise ValueError(f"{text!r}: {host!r} is not an S3 bucket name")
    elif not _HOST.fullmatch(host):
        raise ValueError(f"{text!r}: {host!r} is not a host name")
    where = Where(scheme, host, DEFAULT_PORTS[scheme] if port is None else port, unquote(user) if at else None)
    return where, "/" + path if slash else "/"


def check_path(where: Where, path: str) -> None:
    """Refuse a remote path that climbs (``..``), and an SMB URL that names no share."""
    levels = [p for p in path.split("/") if p]
    if ".." in levels:
        raise ValueError(f"{where.label}{path}: '..' is not allowed in a destination URL")
    if where.scheme == "smb" and (not levels or "{" in levels[0]):
        raise ValueError(f"{where.label}{path}: an smb:// URL names its share first, literally "
                         "(smb://server/share/folder)")


@dataclass(frozen=True)
class Settings:
    """A ``[[remote]]`` table: how to reach one remote. Secrets are named, never held."""
    where: Where
    password_env: str = ""
    key_file: Path | None = None
    known_hosts: Path | None = None
    endpoint_url: str = ""
    region: str = ""
    domain: str = ""
    max_connections: int = 4

    @property
    def host_keys(self) -> Path:
        return self.known_hosts or Path.home() / ".ssh" / "known_hosts"


def settings(where_key: str, table: Mapping[str, Any], resolve: Callable[[str], Path],
             convert: Mapping[str, Callable[[Any], Any]]) -> Settings:
    """A checked ``[[remote]]`` table; raises KeyedError naming the key. ``convert`` gives the
    converters of the config's other sections (env_name, positive_int, url, string)."""
    if not isinstance(table.get("url"), str):
        raise KeyedError("url", 'required: the remote it serves, such as "sftp://user@host:22"')
    try:
        where, path = split(table["url"])
    except ValueError as e:
        raise KeyedError("url", str(e)) from None
    if path != "/":
        raise KeyedError("url", f"{table['url']!r}: names a remote, no path (the routes give the paths)")
    if where.scheme == "s3" and not table["url"].rstrip("/").endswith(where.host):
        raise KeyedError("url", f"{table['url']!r}: expected s3://bucket")
    wrong = sorted(set(table) - {"url", "max_connections"} - _KEYS_OF[where.scheme])
    if wrong:
        raise KeyedError(wrong[0], f"does not apply to a {where.scheme}:// remote")
    values: dict[str, Any] = {}
    for key, kind in (("password_env", "env_name"), ("endpoint_url", "url"), ("region", "string"),
                      ("domain", "string"), ("max_connections", "positive_int")):
        if key in table:
            try:
                values[key] = convert[kind](table[key])
            except ValueError as e:
                raise KeyedError(key, str(e)) from None
    for key in ("key_file", "known_hosts"):
        if key in table:
            if not isinstance(table[key], str) or not table[key]:
                raise KeyedError(key, "expected a file name")
            values[key] = resolve(table[key])
    return Settings(where, **values)


class KeyedError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def settings_for(where: Where, tables: tuple[Settings, ...]) -> Settings:
    """The table serving ``where`` (one naming its user before one that names none), else the
    defaults: AWS's credential chain for S3, ~/.ssh for SFTP."""
    serving = [t for t in tables if t.where.serves(where)]
    serving.sort(key=lambda t: t.where.user is None)
    return serving[0] if serving else Settings(where)


def missing_library(scheme: str) -> str | None:
    """Why a ``scheme`` destination cannot be used here (its library is not installed), or None."""
    if importlib.util.find_spec(LIBRARIES[scheme]) is None:
        return (f"{scheme}:// destinations need the library {LIBRARIES[scheme]}: install the remote extra "
                "(pip install 'hotfolder-pipeline[remote]')")
    return None


def known_host(known_hosts: Path, host: str, port: int) -> bool:
    """Whether ``known_hosts`` (OpenSSH's format, hashed names included) holds a key for the host.
    Raises OSError when the file cannot be read."""
    name = host if port == 22 else f"[{host}]:{port}"
    for line in known_hosts.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if len(fields) < 3 or line.startswith("#") or fields[0].startswith("@revoked"):
            continue
        if fields[0].startswith("@"):       # @cert-authority
            fields = fields[1:]
        for pattern in fields[0].split(","):
            if pattern.startswith("|1|"):
                salt, _, digest = pattern[3:].partition("|")
                try:
                    mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
                    if hmac.compare_digest(mac, base64.b64decode(digest)):
                        return True
                except ValueError:
                    continue
            elif pattern.lower() == name.lower():
                return True
    return False


def problems(routes, tables: tuple[Settings, ...]) -> list[str]:
    """What bin/check-config can tell of the remote routes' credentials without connecting: the
    variables they name are set, the key files readable. (Host keys are checked at load.)"""
    found = []
    for where in sorted({r.remote for r in routes if r.remote is not None}, key=lambda w: w.label):
        settings = settings_for(where, tables)
        if settings.password_env and settings.password_env not in os.environ:
            found.append(f"[[remote]] {where.label} password_env: the variable {settings.password_env} is not set")
        if settings.key_file is not None and not os.access(settings.key_file, os.R_OK):
            found.append(f"[[remote]] {where.label} key_file: {settings.key_file} cannot be read")
    return found
