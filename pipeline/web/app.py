"""The dashboard's web application (docs/design.md#operating-it): pages rendered on the server, read-only by default.

Everything a page shows comes from ``health.gather`` (the overview, /healthz, /metrics share
``bin/status``'s verdict), ``browse`` (search, a job's story) and ``route`` (what routing
would do now). Job files are untrusted: every template is autoescaped, the CSP allows no script
and no inline style, and files named by the job table are read only inside their folders.

Requeue from the browser exists only with ``dashboard.actions = true`` and a way to log in
(``access``: the users file, a trusted proxy's header, round 2's shared password): POST only, an
operator, the Origin (or Referer) of this very site and a CSRF token from one of its forms; it runs
``requeue.Requeue`` as ``bin/requeue`` does, with an audit actor that names the user.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import time
import zoneinfo
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

import flask
from markupsafe import Markup, escape
import peewee
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import ServiceUnavailable

from . import access, clients, destinations, logins, metrics, params, queries, steer
from .. import charts, explain, health, store, times, trends, waits
from ..config import Config, ConfigError
from ..jobs import Jobs
from ..requeue import Requeue, failed_jobs
from ..states import STATES, STEPS
from ..store.models import bind

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5
# A Host header: a name or an IPv6 address in brackets, and an optional port.
_HOST = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+))(?::[0-9]{1,5})?")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

_HEADERS = {
    # No script at all, styles only from our own stylesheet, nothing framed, forms only to us.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class _Flask(flask.Flask):
    def select_jinja_autoescape(self, filename: str) -> bool:
        return True          # every template, whatever its name: titles and names come from job files


def password(config: Config, environ: Mapping[str, str]) -> str | None:
    """Round 2's shared password, or None when actions are off or it is not set. Actions on with
    no way to log in (no password, no users file, no proxy header) is a config error."""
    d = config.dashboard
    if not d.actions:
        return None
    secret = environ.get(d.password_env, "")
    if not secret and not (d.users_file or d.trusted_user_header):
        raise ConfigError(f"[dashboard] actions = true needs a password in the environment variable "
                          f"{d.password_env} (dashboard.password_env), or dashboard.users_file")
    return secret or None


def create_app(config: Config, db: peewee.Database, *, clock: Callable[[], float] = time.time,
               environ: Mapping[str, str] = os.environ) -> flask.Flask:
    app = _Flask(__name__, static_folder="static", template_folder="templates")
    app.url_map.converters["job"] = params.JobId
    app.json.sort_keys = False
    app.jinja_env.filters["breakable"] = breakable
    secret = password(config, environ)
    csrf = hmac.new(secrets.token_bytes(32), b"requeue", hashlib.sha256).hexdigest()   # per process
    host = socket.gethostname()
    bind(db)

    hosts = answered_hosts(config)
    throttle = logins.Throttle(clock)
    users = access.Access(config, secret, throttle)
    zone = config.report.timezone

    @app.before_request
    def _check_host():
        # DNS rebinding: a page of any site can point its own name at this address and read the
        # answers, so only the names the dashboard is reached by are answered. A request without a
        # Host header comes from no browser, which always sends one.
        given = flask.request.environ.get("HTTP_HOST")
        if given is not None and _host_name(given) not in hosts:
            shown = repr(given[:100])
            flask.abort(400, f"the Host header {shown} is not a name of this dashboard: add it to "
                             f"[dashboard] hosts to reach it by that name")

    @app.before_request
    def _login():
        # Every page but the stylesheet and icon: with read_requires_login even /metrics and
        # /healthz want a login (Prometheus and most checkers can send one).
        if flask.request.endpoint != "static":
            flask.g.user = users.reader()

    @app.before_request
    def _connect():
        db.connect(reuse_if_open=True)

    @app.teardown_request
    def _close(_exc):
        if not db.is_closed():
            db.close()

    @app.after_request
    def _secure(response):
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.context_processor
    def _common():
        return {"actions": config.dashboard.actions, "user": flask.g.get("user"), "csrf": csrf,
                "clock": times.utc_text, "age": times.age_text, "size": _size, "refresh": None, "host": host,
                "charts": charts}

    def page(template: str, **values):
        return flask.render_template(template, **values)

    @app.get("/")
    def overview():
        now = clock()
        days = trends.daily(db, now, zone)          # ended days kept once measured: a write of their own
        with db.snapshot():
            s = health.gather(db, config, now)
            hours = trends.hourly(db, now, zone)
        return page("overview.html", status=s, hours=hours, days=days, now=now, refresh=REFRESH_SECONDS,
                    states=STATES, paused=steer.paused(db, now))

    @app.get("/healthz")
    def healthz():
        s = health.gather(db, config, clock())
        s["host"] = host
        return flask.jsonify(s), health.http_status(s)

    @app.get("/metrics")
    def metrics_page():
        body = generate_latest(metrics.registry(lambda: metrics.read(db, config, clock())))
        return flask.Response(body, content_type=CONTENT_TYPE_LATEST)

    @app.get("/jobs")
    def jobs():
        search = params.search(flask.request.args)
        found, more = queries.search(db, search)
        return page("jobs.html", search=search, found=found, more=more,
                    states=STATES, steps=STEPS, title="Jobs", path="/jobs")

    @app.get("/failed")
    def failed():
        search = params.search(flask.request.args, state="failed")
        found, more = queries.search(db, search, time_column="failed_at")
        return page("jobs.html", search=search, found=found, more=more,
                    states=None, steps=STEPS, title="Failed", path="/failed")

    @app.get("/waiting")
    def waiting():
        notify = bool(config.api.endpoint)
        names = [route.name for route in config.routes]
        with db.snapshot():
            groups = waits.waiting(db, names, notify)
            found = queries.waiting(db, notify=notify)
        by_cause: dict[tuple[str, str], list[dict]] = {}
        for j in found:
            keys = [waits.parked_cause(j["waits_on"])] if j["waits_on"] else \
                waits.causes_of(j["state"], j["last_error"], names)
            for key in keys:
                by_cause.setdefault(key, []).append(j)
        return page("waiting.html", groups=groups, by_cause=by_cause, causes=waits.CAUSES, now=clock(),
                    title="Waiting")

    @app.get("/jobs/<job:job_id>")
    def job(job_id: int):
        told = queries.story(db, job_id)
        if told is None:
            flask.abort(404)
        row = told["job"]
        archived, where = _content(row, config, queries.SHOWN_BYTES)
        sidecar = queries.read_inside(row["failed_path"] and row["failed_path"] + ".error.json",
                                     config.paths.failed, queries.SHOWN_BYTES)
        # explain's first lines describe the file's place, which is the archive or FAILED here, not the hot folder.
        routing = [line for line in explain.explain(config, Path(where))
                   if not line.startswith(("file:", "client:", "note:"))] if where else None
        return page("job.html", told=told, job=row, archived=_text(archived), content_path=where,
                    sidecar=_text(sidecar), routing=routing, api=bool(config.api.endpoint), now=clock(),
                    route_names=list(dict.fromkeys(r.name for r in config.routes)))

    @app.get("/jobs/<job:job_id>/archived")
    def archived(job_id: int):
        told = queries.story(db, job_id)
        found = told and _content(told["job"], config, config.router.max_file_bytes)[0]
        if not found:
            flask.abort(404)
        return flask.Response(found[0], content_type="application/json", headers={
            "Content-Disposition": f"attachment; filename=job-{job_id}.json"})

    @app.get("/destinations")
    def destinations_page():
        now = clock()
        return page("destinations.html", found=destinations.figures(db, config, now), now=now,
                    paused=steer.paused(db, now), title="Destinations")

    @app.get("/clients")
    def clients_page():
        now = clock()
        return page("clients.html", found=clients.figures(db, config, now), now=now, states=STATES,
                    paused=steer.paused(db, now), tz=zoneinfo.ZoneInfo(config.report.timezone), title="Clients")

    def act() -> str:
        """Guard an action (an operator, from a form of this site) and name its audit actor."""
        user = users.operator().name
        _same_site(csrf)
        return f"dashboard@{host}:{os.getpid()}:{user}"

    @app.post("/requeue")
    def requeue():
        actor = act()
        form = params.requeue_form(flask.request.form)
        chosen = failed_jobs(list(form.ids) or None, form.client or None, form.step or None, form.since)
        doer = Requeue(config, Jobs(db, actor, clock), dry_run=not form.confirmed)
        lines = [doer.job(j)[1] for j in chosen]
        if form.confirmed:
            log.info("%s requeued %d job(s) from the dashboard", actor, len(chosen))
        return page("requeue.html", lines=lines, confirmed=form.confirmed, ids=form.ids, client=form.client,
                    step=form.step, since=form.since_text, title="Requeue")

    steer.register(app, config, db, clock, act, page)

    def warm_up() -> None:
        """Measure (and keep) the charts' ended days no program has kept yet before anyone asks: on
        a million jobs that is most of a second, which the first visitor would otherwise wait for."""
        try:
            db.connect(reuse_if_open=True)
            trends.daily(db, clock(), zone)
        except (peewee.DatabaseError, peewee.InterfaceError) as e:
            log.info("charts not measured ahead (the first overview will): %s", e)
        finally:
            if not db.is_closed():
                db.close()

    app.extensions["hotfolder_warm_up"] = warm_up

    @app.errorhandler(400)
    @app.errorhandler(401)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(429)
    def _error(e):
        response = flask.make_response(page("error.html", error=e, title=e.name), e.code)
        if e.code == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="hotfolder dashboard", charset="UTF-8"'
        if e.code == 429:
            response.headers["Retry-After"] = str(e.retry_after)
        return response

    @app.errorhandler(peewee.DatabaseError)
    @app.errorhandler(peewee.InterfaceError)
    def _database(e):
        # PostgreSQL down, the tables gone, SQLite locked past its timeout: a monitor and a person
        # get a 503 that says so in one line, not a 500 with a traceback in the log. The next
        # request connects again (the connection is closed after every request).
        said = f"{store.SAYS.get(db.transient(e), 'database unusable')}: {' '.join(str(e).split())}"
        if flask.request.path == "/healthz":
            verdict = health.unusable(said)
            return flask.jsonify(verdict | {"host": host}), health.http_status(verdict)
        if flask.request.path == "/metrics":
            return flask.Response(said + "\n", 503, content_type="text/plain; charset=utf-8")
        return page("error.html", error=ServiceUnavailable(said), title=said.partition(":")[0]), 503

    return app


def answered_hosts(config: Config) -> frozenset[str]:
    """The names the dashboard answers to: its listen address, ``dashboard.hosts``, and the
    loopback names when it listens on loopback (a wildcard address listens there too)."""
    listen = _normal(config.dashboard.listen[0])
    names = {listen, *config.dashboard.hosts}
    if _on_loopback(listen):
        names |= LOOPBACK_NAMES
    return frozenset(names)


def _on_loopback(host: str) -> bool:
    """Whether listening on ``host`` listens on loopback: a loopback or a wildcard address."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _normal(name: str) -> str:
    """A host name as names compare: lower case, an IP address in its one written form."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _host_name(header: str) -> str | None:
    """The name in a Host header without its port, or None when it is not a Host header."""
    found = _HOST.fullmatch(header)
    return _normal(found.group(1) or found.group(2)) if found else None


def _same_site(csrf: str) -> None:
    """Abort unless the request comes from a form of this dashboard: 403 from another site (the
    Origin, else the Referer), 400 without this process's CSRF token."""
    request = flask.request
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or urlsplit(origin).netloc != request.host:
        flask.abort(403, "this action must come from a page of this dashboard (Origin check)")
    if not hmac.compare_digest(request.form.get("csrf", ""), csrf):
        flask.abort(400, "the form's CSRF token is missing or stale: reload the page and try again")


def _content(row: dict, config: Config, limit: int) -> tuple[tuple[bytes, int] | None, str | None]:
    """A job's file wherever it lies now, read inside its folder: the archived copy, else the
    one in FAILED (a job that failed before it was archived); with its path."""
    for path, folder in ((row["archive_path"], config.paths.store), (row["failed_path"], config.paths.failed)):
        found = queries.read_inside(path, folder, limit)
        if found:
            return found, path
    return None, None


_SEPARATORS = re.compile(r"([/_.,;=&+\-]+)")


def breakable(text: object) -> Markup:
    """A long file name or path, escaped, with a line-break opportunity after each run of separators
    (/ _ . - and the like): on a phone it wraps between its words, not every few characters."""
    if text is None:
        return Markup("")
    parts = _SEPARATORS.split(str(text))
    return Markup("").join(escape(part) + (Markup("<wbr>") if i % 2 else Markup("")) for i, part in enumerate(parts))


def _text(found: tuple[bytes, int] | None) -> dict | None:
    if found is None:
        return None
    data, size = found
    return {"text": data.decode("utf-8", errors="replace"), "size": size, "cut": size > len(data)}


def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 1024 * 1024 else f"{n / 2**20:.1f} MiB"
