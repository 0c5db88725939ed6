"""Configuration: one TOML file, validated once at the edge into plain frozen objects.

Lookup order: ``--config FILE``, else ``$PIPELINE_CONFIG``, else ``./pipeline.toml``, else the
built-in defaults, which keep everything under ``./var/``. Relative paths resolve against the
config file's folder (the working directory when there is none). Every error names the key.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from .convert import (DAYS, address, address_list, alert_urls, boolean, choice, color, control_character, done_suffix,
                      dotted_path, env_name, header_name, headers, host_names, listen_address, networks, non_negative_int,
                      non_negative_number, octal_mode, port, positive_int, positive_number, string, string_list, time_of_day, timezone,
                      url, weekdays, window)
from .remote import urls as remote_urls
from .rules import Route, RuleError, compile_route
from .schemas import Schema, SchemaProblem, compile_schema
from .store import POSTGRES_SCHEMES


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


# --- the configuration objects -----------------------------------------------------------------

@dataclass(frozen=True)
class Paths:
    hot_folder: Path
    store: Path
    failed: Path
    error_log: Path
    database: Path | str          # a file (SQLite), or a postgresql:// URL kept as it is written


@dataclass(frozen=True)
class Detect:
    min_file_age: float
    scan_interval: float
    observer: str
    slow_scan: float
    scan_timeout: float
    poll_interval: float          # seconds between two looks of the polling observer
    incomplete_grace: float = 30  # seconds a file whose JSON ends early may take to be complete (0: off)
    done_suffix: str = ""         # a job file is taken once NAME<suffix> stands beside it ("": off)


@dataclass(frozen=True)
class Router:
    batch_size: int
    lease: float
    max_file_bytes: int
    conflict: str
    max_attempts: int
    create_folders: bool
    file_mode: int
    dir_mode: int
    poll_interval: float
    threads: int                  # copies made at the same time by one router
    order_by: tuple[str, ...] = ()  # a dotted path: jobs of one value are routed in detection order (): off
    unmatched: str = "archive"    # a job no rule routes: archived only, held for a person, or failed


@dataclass(frozen=True)
class Api:
    endpoint: str
    timeout: float
    max_attempts: int
    backoff_cap: float
    max_retry_after: float        # seconds: a longer Retry-After is cut to this
    concurrency: int
    headers: Mapping[str, str]
    verify_tls: bool


@dataclass(frozen=True)
class Report:
    time: _dt.time
    timezone: str
    sender: str
    recipients: tuple[str, ...]
    title: str
    retention_days: int
    archive_retention_days: int   # 0: archive copies are kept forever (also failed_, error_log_)
    failed_retention_days: int
    error_log_retention_days: int
    brand_color: str              # header and table-header background
    accent_color: str             # title text on the header, card borders, activity bars
    footer: str
    highlight_destination: str    # deliveries with this name get their own column per client; "" hides it


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    starttls: bool
    username: str
    password_env: str
    timeout: float


@dataclass(frozen=True)
class Alerts:
    recipients: tuple[str, ...]
    min_interval: float
    stuck_after: float
    urls: tuple[str, ...]         # Apprise URLs or "env:NAME" (reporting/channels.py reads them at start)
    channel_timeout: float        # seconds one channel (or the email) may take to send one alert




@dataclass(frozen=True)
class Expect:
    """An ``[[expect]]`` rule: each client sends a file within ``within`` seconds of its window."""
    clients: tuple[str, ...]      # upper-cased: matching is case-insensitive
    within: float
    hours: tuple[int, int] | None   # minutes after local midnight: start, end (end <= start: overnight)
    days: frozenset[int]          # weekdays the window starts on, 0 = Monday

    @property
    def label(self) -> str:
        """The rule as text, e.g. "within 7200s 08:00-18:00 mon-fri"; also its identity in ``silences``."""
        return " ".join(filter(None, (f"within {self.within:g}s", self.hours_text, self.days_text)))

    @property
    def hours_text(self) -> str:
        if self.hours is None:
            return ""
        return "-".join(f"{m // 60:02d}:{m % 60:02d}" for m in self.hours)

    @property
    def days_text(self) -> str:
        if len(self.days) == 7:
            return ""
        return ",".join(DAYS[d] for d in sorted(self.days))


@dataclass(frozen=True)
class Dashboard:
    listen: tuple[str, int]       # host, port
    actions: bool                 # requeue from the browser
    password_env: str             # the variable holding the actions' password
    hosts: tuple[str, ...]        # Host header names answered besides the listen address (and loopback's)
    users_file: Path | None = None            # name:role:hash lines (dashboard-user add); None: no users
    trusted_user_header: str = ""             # a reverse proxy's header naming the logged-in user
    trusted_proxies: tuple = ()               # ip_network objects whose requests may carry that header
    read_requires_login: bool = False         # pages need a login too, not only actions


@dataclass(frozen=True)
class Database:
    max_clock_skew: float         # seconds a program's clock may differ from the database's


@dataclass(frozen=True)
class Logging:
    format: str                   # "text": one line per event; "json": one JSON object per line


@dataclass(frozen=True)
class Config:
    paths: Paths
    detect: Detect
    router: Router
    routes: tuple[Route, ...]
    api: Api
    report: Report
    smtp: Smtp
    alerts: Alerts
    dashboard: Dashboard
    database: Database
    logging: Logging = Logging(format="text")
    expect: tuple[Expect, ...] = ()
    schemas: tuple[Schema, ...] = ()
    remotes: tuple[remote_urls.Settings, ...] = ()   # [[remote]] tables
    source: Path | None = field(default=None, compare=False)  # the file it came from


# Each section: key -> (converter, default). Paths are converted separately (they resolve).
_SECTIONS: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "paths": {
        "hot_folder": (string, "var/hot"),
        "store": (string, "var/store"),
        "failed": (string, "var/failed"),
        "error_log": (string, "var/log/errors"),
        "database": (string, "var/pipeline.db"),
    },
    "detect": {
        "min_file_age": (non_negative_number, 1.0),
        "scan_interval": (positive_number, 60),
        "observer": (choice("inotify", "polling"), "inotify"),
        "slow_scan": (positive_number, 30),
        "scan_timeout": (positive_number, 120),
        "poll_interval": (positive_number, 1.0),
        "incomplete_grace": (non_negative_number, 30),
        "done_suffix": (done_suffix, ""),
    },
    "router": {
        "batch_size": (positive_int, 100),
        "lease": (positive_number, 60),
        "max_file_bytes": (positive_int, 52428800),
        "conflict": (choice("replace", "keep", "fail"), "replace"),
        "max_attempts": (non_negative_int, 0),
        "create_folders": (boolean, True),
        "file_mode": (octal_mode, "0664"),
        "dir_mode": (octal_mode, "0775"),
        "poll_interval": (positive_number, 0.01),
        "threads": (positive_int, 4),
        "order_by": (dotted_path, ""),
        "unmatched": (choice("archive", "hold", "fail"), "archive"),
    },
    "api": {
        "endpoint": (url, ""),
        "timeout": (positive_number, 10),
        "max_attempts": (positive_int, 5),
        "backoff_cap": (positive_number, 60),
        "max_retry_after": (positive_number, 600),
        "concurrency": (positive_int, 8),
        "headers": (headers, {}),
        "verify_tls": (boolean, True),
    },
    "report": {
        "time": (time_of_day, "00:00"),
        "timezone": (timezone, "Europe/London"),
        "sender": (address, ""),
        "recipients": (address_list, []),
        "title": (string, "JSON Workflow Daily Report"),
        "retention_days": (positive_int, 90),
        "archive_retention_days": (non_negative_int, 0),
        "failed_retention_days": (non_negative_int, 0),
        "error_log_retention_days": (non_negative_int, 0),
        "brand_color": (color, "#1f2937"),
        "accent_color": (color, "#3b82f6"),
        "footer": (string, "Sent by the hot-folder pipeline's reporter."),
        "highlight_destination": (string, "Celtra"),
    },
    "smtp": {
        "host": (string, ""),
        "port": (port, 587),
        "starttls": (boolean, True),
        "username": (address, ""),        # also the sender when report.sender is empty
        "password_env": (string, "SMTP_PASSWORD"),
        "timeout": (positive_number, 30),
    },
    "alerts": {
        "recipients": (address_list, []),
        "min_interval": (positive_number, 900),
        "stuck_after": (positive_number, 600),
        "urls": (alert_urls, []),
        "channel_timeout": (positive_number, 30),
    },
    "database": {
        "max_clock_skew": (positive_number, 2.0),
    },
    "dashboard": {
        "listen": (listen_address, "127.0.0.1:8750"),
        "actions": (boolean, False),
        "password_env": (env_name, "DASHBOARD_PASSWORD"),
        "hosts": (host_names, []),
        "users_file": (string, ""),
        "trusted_user_header": (header_name, ""),
        "trusted_proxies": (networks, []),
        "read_requires_login": (boolean, False),
    },
    "logging": {
        "format": (choice("text", "json"), "text"),
    },
}
_EXPECT_KEYS = {"clients", "within", "hours", "days"}
_ROUTE_KEYS = {"name", "to", "clients", "categories", "match", "files", "rename", "hold", "max_waiting", "hours", "days"}
_SCHEMA_KEYS = {"clients", "categories", "file"}


def find_config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    """The file the programs use, by the documented lookup order; None means defaults."""
    if explicit:
        return Path(explicit)
    if os.environ.get("PIPELINE_CONFIG"):
        return Path(os.environ["PIPELINE_CONFIG"])
    local = Path("pipeline.toml")
    return local if local.is_file() else None


def load(explicit: str | os.PathLike | None = None, paths_only: bool = False, base: Path | None = None) -> Config:
    """Find, read and validate the configuration. Raises ConfigError naming the key.

    ``paths_only``: the file's ``[paths]``, every other key at its default (what bin/status needs to
    find the database of programs that run on while a later edit of their file is invalid).
    ``base``: the folder its relative paths resolve against, instead of the file's own (a candidate
    file read as if it stood where the running one does)."""
    path = find_config_file(explicit)
    if path is None:
        return parse({}, base=Path.cwd())
    data = _read(path)
    if paths_only:
        data = {"paths": data.get("paths", {})}
    try:
        return parse(data, base=base or path.resolve().parent, source=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:     # tomllib decodes before it parses (a file cut mid-character)
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at byte {e.start}") from None
    return data


def parse(data: Mapping[str, Any], base: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML document. Relative paths resolve against ``base``."""
    unknown = sorted(set(data) - set(_SECTIONS) - {"route", "expect", "schema", "remote"})
    if unknown:
        raise ConfigError(f"[{unknown[0]}]: unknown section")
    values = {name: _section(name, data.get(name, {})) for name in _SECTIONS}

    def resolve(p: str) -> Path:
        return Path(os.path.normpath(base / Path(p).expanduser()))

    paths = Paths(**{k: database_location(v, resolve) if k == "database" else resolve(v)
                     for k, v in values["paths"].items()})
    for key in ("store", "failed"):
        if _inside(getattr(paths, key), paths.hot_folder):
            raise ConfigError(f"[paths] {key}: {getattr(paths, key)} lies inside the hot folder "
                              f"{paths.hot_folder}; it must be outside it")
    routes = _routes(data.get("route", []), values["report"]["timezone"], resolve)
    remotes = _remotes(data.get("remote", []), resolve)
    _check_remote_routes(routes, remotes)
    for route in routes:
        if route.remote is None and reaches(route, paths.hot_folder):
            raise ConfigError(f"[[route]] {route.name!r} to: {route.to} lies inside the hot folder"
                              if route.template is None else
                              f"[[route]] {route.name!r} to: a job could fill it to a folder in the hot "
                              f"folder {paths.hot_folder}; give it a base folder of its own")
    return Config(paths=paths, detect=Detect(**values["detect"]), router=Router(**values["router"]),
                  routes=routes, api=Api(**values["api"]), report=Report(**values["report"]),
                  smtp=Smtp(**values["smtp"]), alerts=Alerts(**values["alerts"]),
                  dashboard=_dashboard(values["dashboard"], resolve), database=Database(**values["database"]),
                  logging=Logging(**values["logging"]),
                  expect=_expectations(data.get("expect", [])), schemas=_schemas(data.get("schema", []), resolve),
                  remotes=remotes, source=source)


def database_location(value: str, resolve: Callable[[str], Path]) -> Path | str:
    """``paths.database``: a PostgreSQL URL as it is, or a SQLite file resolved as every path is.

    The URL may not carry a password: the TOML is read by everyone who may read the pipeline's
    configuration; libpq's PGPASSWORD, PGPASSFILE or ~/.pgpass (or ``?passfile=``) keep it apart.
    """
    if not value.lower().startswith(POSTGRES_SCHEMES):
        return resolve(value)
    try:
        parts = urlsplit(value)
        parts.port                  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        raise ConfigError(f"[paths] database: not a valid PostgreSQL URL ({e})") from None
    if parts.password is not None:
        raise ConfigError("[paths] database: the URL holds a password; put it in PGPASSWORD or a passfile "
                          "(~/.pgpass, or ?passfile= in the URL), never in the configuration")
    if not parts.hostname and "host=" not in parts.query or not parts.path.strip("/"):
        raise ConfigError("[paths] database: a PostgreSQL URL names a host and a database: "
                          "postgresql://user@host:5432/pipeline")
    return value


def _dashboard(values: dict[str, Any], resolve: Callable[[str], Path]) -> Dashboard:
    """[dashboard], its users file resolved, its ways of logging in consistent with each other."""
    values = values | {"users_file": resolve(values["users_file"]) if values["users_file"] else None}
    if values["trusted_user_header"] and not values["trusted_proxies"]:
        raise ConfigError("[dashboard] trusted_user_header: needs trusted_proxies, the addresses of the reverse "
                          "proxies allowed to set it (from anywhere else anyone could name any user)")
    logins = values["users_file"] or values["trusted_user_header"] or values["actions"]
    if values["read_requires_login"] and not logins:
        raise ConfigError("[dashboard] read_requires_login: nobody could log in; set users_file, "
                          "trusted_user_header or actions = true with a password")
    return Dashboard(**values)


def _section(name: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}]: expected a table")
    spec = _SECTIONS[name]
    unknown = sorted(set(table) - set(spec))
    if unknown:
        raise ConfigError(f"[{name}] {unknown[0]}: unknown key")
    out = {}
    for key, (convert, default) in spec.items():
        try:
            out[key] = convert(table.get(key, default))
        except ValueError as e:
            raise ConfigError(f"[{name}] {key}: {e}") from None
    return out


def _array(name: str, tables: Any, keys: set[str]) -> list[tuple[str, dict]]:
    """The tables of ``[[name]]``, each with where it is ("[[route]] #2"), their keys checked."""
    if not isinstance(tables, list):
        raise ConfigError(f"[[{name}]]: expected an array of tables ([[{name}]])")
    found = []
    for i, table in enumerate(tables, 1):
        where = f"[[{name}]] #{i}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = sorted(set(table) - keys)
        if unknown:
            raise ConfigError(f"{where} {unknown[0]}: unknown key")
        found.append((where, table))
    return found


def _routes(tables: Any, timezone: str, resolve: Callable[[str], Path]) -> tuple[Route, ...]:
    routes = []
    for where, table in _array("route", tables, _ROUTE_KEYS):
        for key in ("name", "to"):
            if not isinstance(table.get(key), str) or not table[key].strip():
                raise ConfigError(f"{where} {key}: required, a non-empty string")
        # The name is recorded with every copy (PostgreSQL's text refuses NUL) and written in log lines.
        found = control_character(table["name"])
        if found:
            raise ConfigError(f"{where} name: contains the control character {found}")
        if "\0" in table["to"]:
            raise ConfigError(f"{where} to: a path cannot hold a NUL character (U+0000)")
        try:
            route = compile_route(table, timezone, resolve, string_list)
        except RuleError as e:
            raise ConfigError(f"{where} {e.key}: {e}") from None
        routes.append(_flow_control(where, table, route))
    return tuple(routes)


def _flow_control(where: str, table: dict, route: Route) -> Route:
    """``max_waiting``, ``hours`` and ``days`` of a route (docs/design.md#flow-control); hours and
    days read as ``[[expect]]`` reads them."""
    values = {}
    for key, convert in (("max_waiting", positive_int), ("hours", window), ("days", weekdays)):
        if key in table:
            try:
                values[key] = convert(table[key])
            except ValueError as e:
                raise ConfigError(f"{where} {key}: {e}") from None
    if "max_waiting" in values and route.remote is not None:
        raise ConfigError(f"{where} max_waiting: counts the files of a local folder only; "
                          f"{route.remote.label} is remote")
    return dataclasses.replace(route, **values) if values else route


def _remotes(tables: Any, resolve: Callable[[str], Path]) -> tuple[remote_urls.Settings, ...]:
    """``[[remote]]`` tables (docs/design.md#remote-destinations): one per remote, none repeated."""
    found: list[remote_urls.Settings] = []
    convert = {"env_name": env_name, "url": url, "string": string, "positive_int": positive_int}
    for where, table in _array("remote", tables, remote_urls.KEYS):
        try:
            settings = remote_urls.settings(where, table, resolve, convert)
        except remote_urls.KeyedError as e:
            raise ConfigError(f"{where} {e.key}: {e}") from None
        if any(other.where == settings.where for other in found):
            raise ConfigError(f"{where} url: {settings.where.label} has a [[remote]] table already")
        found.append(settings)
    return tuple(found)


def _check_remote_routes(routes: tuple[Route, ...], remotes: tuple[remote_urls.Settings, ...]) -> None:
    """What can be known of a remote route without connecting: its library is installed, and an
    SFTP host's key is in the known_hosts file its table names (host keys are always verified)."""
    for i, route in enumerate(routes, 1):
        if route.remote is None:
            continue
        where = f"[[route]] #{i} to"
        problem = remote_urls.missing_library(route.remote.scheme)
        if problem:
            raise ConfigError(f"{where}: {problem}")
        if route.remote.scheme != "sftp":
            continue
        keys = remote_urls.settings_for(route.remote, remotes).host_keys
        try:
            known = remote_urls.known_host(keys, route.remote.host, route.remote.port)
        except OSError as e:
            raise ConfigError(f"{where}: cannot read the known_hosts file {keys}: {e.strerror}") from None
        if not known:
            raise ConfigError(f"{where}: the host key of {route.remote.label} is not in {keys}; add it "
                              "(ssh-keyscan, after checking its fingerprint) or name a known_hosts file in "
                              "its [[remote]] table")


def _schemas(tables: Any, resolve: Callable[[str], Path]) -> tuple[Schema, ...]:
    """``[[schema]]`` tables, each file read and compiled now: a job never meets a broken schema."""
    compiled = []
    for where, table in _array("schema", tables, _SCHEMA_KEYS):
        if not isinstance(table.get("file"), str) or not table["file"].strip():
            raise ConfigError(f"{where} file: required, a non-empty string (a JSON Schema file)")
        lists = {}
        for key in ("clients", "categories"):
            try:
                lists[key] = string_list(table[key]) if key in table else None
            except ValueError as e:
                raise ConfigError(f"{where} {key}: {e}") from None
            if lists[key] == ():
                raise ConfigError(f"{where} {key}: an empty list applies to nothing; leave the key out to "
                                  "apply to every value")
        try:
            compiled.append(compile_schema(where, table["file"], resolve(table["file"]), **lists))
        except SchemaProblem as e:
            raise ConfigError(f"{where} file: {table['file']}: {e}") from None
    return tuple(compiled)


def _expectations(tables: Any) -> tuple[Expect, ...]:
    rules = []
    for where, table in _array("expect", tables, _EXPECT_KEYS):
        for key in ("clients", "within"):
            if key not in table:
                raise ConfigError(f"{where} {key}: required")
        values = {}
        for key, convert, default in (("clients", string_list, None), ("within", positive_number, None),
                                      ("hours", window, "00:00-24:00"), ("days", weekdays, list(DAYS))):
            try:
                values[key] = convert(table.get(key, default))
            except ValueError as e:
                raise ConfigError(f"{where} {key}: {e}") from None
        if not values["clients"]:
            raise ConfigError(f"{where} clients: an empty list expects nothing")
        hours = values["hours"]
        if hours is not None:
            length = (hours[1] - hours[0]) % 1440 or 1440
            if values["within"] > length * 60:
                raise ConfigError(f"{where} within: {values['within']:g} seconds is longer than the window "
                                  f"{table['hours']} ({length * 60} seconds), so it could never be reached")
        rules.append(Expect(clients=tuple(c.upper() for c in values["clients"]), within=values["within"],
                            hours=hours, days=values["days"]))
    return tuple(rules)


def reaches(route: Route, folder: Path) -> bool:
    """Whether a copy made by ``route`` could land in ``folder`` or below it."""
    if route.template is not None:
        return route.template.may_reach(folder)
    return _inside(route.to, folder)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
